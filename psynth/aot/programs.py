"""The functions psynth runs on a pod, built from shapes only and lowered for a mesh of
compile-only devices: the train step (`train.step.jit_train_step`, what `Trainer` runs), the
synthesizer's cache prefill (`synthesis.synthesize.first_logits`) and a decode step
(`synthesis.generate.decode_step`, what `Engine` runs). No weight is ever materialized: the
model is built under `nnx.eval_shape` and every argument is a `jax.ShapeDtypeStruct` carrying
the sharding the running code gives that array (`psynth.sharding`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from psynth import sharding
from psynth.aot import report
from psynth.model.config import ModelConfig
from psynth.model.stacking import unstack_layers
from psynth.model.transformer import Transformer, init_cache
from psynth.synthesis.generate import bucket, decode_step
from psynth.synthesis.synthesize import first_logits
from psynth.train import batch as batch_lib
from psynth.train import step as step_lib
from psynth.train.settings import TrainSettings
from psynth.train.trainer import build_synthesizer

FUNCTIONS = ("train", "prefill", "decode")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Shapes to compile for. Train step: `train.batch_size` examples (`grad_accum`
  micro-batches) of `branches` worker rows of `worker_row_tokens` after a
  `prefix_tokens` shared prefix, and a `synth_row_tokens` synthesizer row (prompt + target).
  Synthesis: `synth_batch` examples of `branches` branch caches of `branch_tokens` slots, a
  `synth_prompt_tokens` prompt, `new_tokens` to decode, on a `synth_data` x `synth_tensor`
  mesh (-1: the chips the other axis leaves)."""
  prefix_tokens: int = 64
  worker_row_tokens: int = 160
  synth_row_tokens: int = 128
  synth_batch: int = 1
  branches: int = 3
  branch_tokens: int = 64
  synth_prompt_tokens: int = 64
  new_tokens: int = 48
  synth_data: int = 1
  synth_tensor: int = -1


@dataclasses.dataclass
class Program:
  """One function ready to lower: its jitted callable, abstract arguments, and mesh."""
  name: str
  fn: Callable
  args: tuple
  kwargs: dict
  mesh: Any
  rules: tuple = sharding.DEFAULT_RULES


def _placed(x, sh) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)


def placed_state(state: nnx.State, mesh, rules) -> nnx.State:
  """An abstract NNX state whose arrays carry the shardings `shard_params` gives them."""
  is_var = lambda x: isinstance(x, nnx.Variable)
  place = lambda v: v.replace(_placed(v.get_value(), sharding.variable_sharding(v, mesh, rules)))
  return jax.tree.map(place, state, is_leaf=is_var)


def placed_cache(cache, mesh, rules):
  """An abstract KVCache laid out as `shard_cache` lays it out."""
  return jax.tree.map(_placed, cache, sharding.cache_shardings(cache, mesh, rules))


def _replicated(mesh, shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def check_divisible(tree, what: str) -> None:
  """Every sharded dimension must split evenly over its mesh axes: say which array does not
  (e.g. heads that do not divide the tensor axis) before XLA says it less clearly."""
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    sh = getattr(x, "sharding", None)
    if not isinstance(sh, NamedSharding):
      continue
    for dim, (size, axes) in enumerate(zip(x.shape, tuple(sh.spec) + (None,) * x.ndim)):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      n = math.prod(sh.mesh.shape[a] for a in axes)
      if size % n:
        raise ValueError(
            f"{what}: {jax.tree_util.keystr(path)} has {size} along dimension {dim}, which the "
            f"mesh axes {axes} ({n} devices; mesh {dict(sh.mesh.shape)}) do not divide: the "
            "tensor axis must divide the heads and KV heads, data x fsdp the batch rows")


def train_program(mc: ModelConfig, settings: TrainSettings, sizes: Sizes, devices) -> Program:
  """The train step exactly as `Trainer` jits it, on `settings.mesh` over `devices`."""
  t, m = settings.train, settings.mesh
  mesh = sharding.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)
  rules = sharding.DEFAULT_RULES
  if t.batch_size % t.grad_accum:
    raise ValueError(f"train.batch_size={t.batch_size} is not a multiple of "
                     f"train.grad_accum={t.grad_accum}")
  synth = nnx.eval_shape(lambda: build_synthesizer(Transformer(mc, rngs=nnx.Rngs(0)), settings))
  split = step_lib.Split.of(synth)
  tx, _ = step_lib.make_optimizer(t)
  step, sh = step_lib.jit_train_step(split, tx, mesh, rules, mode=settings.synthesis.mode,
                                     kl_weight=float(t.kl_weight),
                                     scan=bool(settings.model.scan_layers), remat=bool(t.remat))
  trainable = jax.tree.map(_placed, split.trainable, sh.trainable)
  frozen = placed_state(split.frozen, mesh, rules)
  opt = jax.tree.map(_placed, jax.eval_shape(tx.init, trainable), sh.opt)
  accum, micro = int(t.grad_accum), t.batch_size // t.grad_accum
  tt = sizes.synth_row_tokens + sizes.branches * sizes.worker_row_tokens
  shapes = batch_lib.layout(micro, sizes.branches, sizes.prefix_tokens,
                            sizes.worker_row_tokens, sizes.synth_row_tokens,
                            tt if t.kl_weight > 0 else None)
  batch = {k: jax.ShapeDtypeStruct((accum, *s), d, sharding=step_lib.batch_sharding(
      mesh, rules, len(s) + 1)) for k, (s, d) in shapes.items()}
  args = (trainable, frozen, opt, batch)
  check_divisible(dict(trainable=trainable, frozen=frozen, batch=batch), "train step")
  return Program("train", step, args, {}, mesh, rules)


def _synth_model(mc: ModelConfig, settings: TrainSettings):
  """The synthesizer (LoRA on) and its mapper, as shapes; one `Block` per layer, as `load`
  gives it to `Engine` (`model.scan_layers` is for training)."""
  def build():
    synth = build_synthesizer(Transformer(mc, rngs=nnx.Rngs(0)), settings)
    unstack_layers(synth.model)
    return synth

  synth = nnx.eval_shape(build)
  return synth.model, synth.mapper


def synth_mesh(sizes: Sizes, devices):
  data = sizes.synth_data
  tensor = sizes.synth_tensor if sizes.synth_tensor != -1 else len(devices) // max(data, 1)
  return sharding.make_mesh(data, 1, tensor, devices=devices)


def prefill_program(mc: ModelConfig, settings: TrainSettings, sizes: Sizes, devices) -> Program:
  """The synthesizer's cache prefill: its prompt on the merged, re-encoded, mapped branches."""
  mesh, rules = synth_mesh(sizes, devices), sharding.DEFAULT_RULES
  model, mapper = _synth_model(mc, settings)
  graphdef, state = nnx.split(model)
  m_graphdef, m_state = nnx.split(mapper) if mapper is not None else (None, None)
  B, N, S, T = sizes.synth_batch, sizes.branches, sizes.branch_tokens, sizes.synth_prompt_tokens
  branches = placed_cache(jax.eval_shape(lambda: init_cache(mc, B * N, S)), mesh, rules)
  i32 = lambda *shape: _replicated(mesh, shape, jnp.int32)
  rows = sharding.logical_spec(("batch", None), rules, mesh)
  tok = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=NamedSharding(mesh, rows))
  args = (graphdef, placed_state(state, mesh, rules), m_graphdef,
          None if m_state is None else placed_state(m_state, mesh, rules), branches, None,
          i32(B, N), i32(B, N), None, tok, tok)
  check_divisible(dict(params=args[1], branches=branches, tokens=tok), "synthesizer prefill")
  return Program("prefill", first_logits, args, dict(lora=True), mesh, rules)


def decode_program(mc: ModelConfig, settings: TrainSettings, sizes: Sizes, devices) -> Program:
  """One decode step of the synthesizer on the merged cache (branches, prompt, new tokens)."""
  mesh, rules = synth_mesh(sizes, devices), sharding.DEFAULT_RULES
  model, _ = _synth_model(mc, settings)
  graphdef, state = nnx.split(model)
  B = sizes.synth_batch
  slots = sizes.branches * sizes.branch_tokens + bucket(sizes.synth_prompt_tokens) + bucket(
      sizes.new_tokens)
  # Stored per layer, as `Engine.decode_from` decodes.
  cache = placed_cache(jax.eval_shape(lambda: init_cache(mc, B, slots).per_layer()), mesh, rules)
  rows = NamedSharding(mesh, sharding.logical_spec(("batch", None), rules, mesh))
  tok = jax.ShapeDtypeStruct((B, 1), jnp.int32, sharding=rows)
  key = jax.eval_shape(lambda: jax.random.key(0))
  f32 = _replicated(mesh, (), jnp.float32)
  args = (placed_state(state, mesh, rules), tok, tok, cache,
          _replicated(mesh, key.shape, key.dtype), f32, f32)
  check_divisible(dict(params=args[0], cache=cache, tokens=tok), "decode step")
  return Program("decode", decode_step(graphdef), args, dict(greedy=True, lora=True), mesh,
                 rules)


BUILDERS = dict(train=train_program, prefill=prefill_program, decode=decode_program)


def compile_program(p: Program, hbm_bytes: int) -> report.Row:
  """Lowers and compiles `p` for its mesh; a compile the TPU compiler refuses for memory is
  a Row with the error, anything else raises."""
  t0 = time.perf_counter()
  with sharding.use_mesh(p.mesh, p.rules):
    lowered = p.fn.lower(*p.args, **p.kwargs)
  try:
    compiled = lowered.compile()
  except Exception as e:  # jax raises JaxRuntimeError; only memory refusals are a result
    if "RESOURCE_EXHAUSTED" not in str(e) and "hbm" not in str(e).lower():
      raise
    return report.refused(p.name, e, time.perf_counter() - t0, hbm_bytes)
  return report.measure(p.name, compiled, time.perf_counter() - t0, hbm_bytes)
