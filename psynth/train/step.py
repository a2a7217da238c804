"""The train step: gradients for the LoRA and the mapper only, AdamW, one jitted function.

What trains is chosen by parameter *type* in one place (`TRAINABLE`): `nnx.LoRAParam` (the
synthesizer adapter) and `MapperParam` (the cache mapper). The backbone's `nnx.Param`s are
split off as `frozen`: an argument of the step, never an output, so they stay bit-identical.
The trainable parameters and the optimizer state are plain nested dicts of arrays (what
Orbax saves); `TrainState.merge` puts them back into the NNX graph inside the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from psynth.cache.mappers import CacheMapper, MapperParam
from psynth.model.transformer import Transformer
from psynth.sharding import logical_spec
from psynth.train import loss as loss_lib

TRAINABLE = nnx.Any(nnx.LoRAParam, MapperParam)


class Synthesizer(nnx.Module):
  """The frozen base model with its LoRA adapter, and the cache mapper."""

  def __init__(self, model: Transformer, mapper: CacheMapper | None):
    self.model = model
    self.mapper = mapper


@dataclasses.dataclass(frozen=True)
class Split:
  """A `Synthesizer` taken apart: static graph, trainable params (pure dict), frozen state."""

  graphdef: Any
  treedef: Any  # of the trainable nnx.State (Variables as nodes)
  trainable: dict  # pure nested dict of arrays
  frozen: nnx.State
  trainable_axes: dict  # same tree: logical axis names (tuple) per array

  @classmethod
  def of(cls, synth: Synthesizer) -> "Split":
    graphdef, trainable, frozen = nnx.split(synth, TRAINABLE, ...)
    if not jax.tree.leaves(trainable):
      raise ValueError("nothing to train: the model has no LoRA and there is no mapper")
    is_var = lambda x: isinstance(x, nnx.Variable)
    axes = jax.tree.map(lambda v: tuple(v.get_metadata().get("logical_axes", (None,) * v.ndim)),
                        trainable, is_leaf=is_var)
    return cls(graphdef, jax.tree.structure(trainable), nnx.to_pure_dict(trainable), frozen,
               nnx.to_pure_dict(axes))

  def merge(self, trainable: dict, frozen: nnx.State | None = None) -> Synthesizer:
    state = jax.tree.unflatten(self.treedef, jax.tree.leaves(trainable))
    return nnx.merge(self.graphdef, state, self.frozen if frozen is None else frozen)


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
  """AdamW with linear warm-up then cosine decay, after global-norm gradient clipping."""
  c = train_cfg
  if c.steps < 1:
    raise ValueError(f"train.steps={c.steps}; must be >= 1")
  warmup = min(int(c.warmup_steps), max(int(c.steps) - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=c.lr, warmup_steps=warmup, decay_steps=max(int(c.steps), warmup + 1),
      end_value=c.lr * c.final_lr_fraction)
  tx = optax.chain(optax.clip_by_global_norm(c.grad_clip),
                   optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=c.weight_decay))
  return tx, schedule


def make_train_step(split: Split, tx: optax.GradientTransformation, *, mode: str,
                    kl_weight: float, scan: bool = False, remat: bool = False) -> Callable:
  """`step(trainable, frozen, opt_state, batch) -> (trainable, opt_state, metrics)`.

  `batch` arrays are `[accum, micro_batch, ...]`: micro-batches run in a scan, summing
  gradients and loss sums; the update divides by the target-token count of the whole batch,
  so the result does not depend on how the batch was split.
  """

  def sums(trainable, frozen, mb):
    synth = split.merge(trainable, frozen)
    t = loss_lib.compute(synth.model, synth.mapper, mb, mode=mode, kl=kl_weight > 0, scan=scan,
                         remat=remat)
    return t["ce"] + kl_weight * t["kl"], t

  grad_fn = jax.value_and_grad(sums, has_aux=True)

  def step(trainable, frozen, opt_state, batch):
    def micro(acc, mb):
      (_, t), g = grad_fn(trainable, frozen, mb)
      return jax.tree.map(jnp.add, acc, (g, t)), None

    zero_t = dict(ce=jnp.zeros(()), kl=jnp.zeros(()), tokens=jnp.zeros(()))
    zeros = (jax.tree.map(jnp.zeros_like, trainable), zero_t)
    (g, t), _ = jax.lax.scan(micro, zeros, batch)
    n = jnp.maximum(t["tokens"], 1.0)
    grads = jax.tree.map(lambda x: x / n, g)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    ce = t["ce"] / n
    metrics = dict(loss=ce + kl_weight * t["kl"] / n, ce=ce, kl=t["kl"] / n,
                   perplexity=jnp.exp(ce), grad_norm=optax.global_norm(grads), tokens=t["tokens"])
    return trainable, opt_state, metrics

  return step


def make_eval_step(split: Split, *, mode: str, lora: bool = True, use_mapper: bool = True,
                   scan: bool = False):
  """`eval(trainable, frozen, batch) -> {ce, tokens}` sums (one micro-batch, no accumulation).

  `lora=False, use_mapper=False` is the naive cache path: the untrained baseline.
  """

  def evaluate(trainable, frozen, batch):
    synth = split.merge(trainable, frozen)
    t = loss_lib.compute(synth.model, synth.mapper if use_mapper else None, batch, mode=mode,
                         lora=lora, scan=scan)
    return dict(ce=t["ce"], tokens=t["tokens"])

  return evaluate


def make_text_eval_step(split: Split, scan: bool = False):
  """`eval(trainable, frozen, batch) -> {ce, tokens}` of the *text* synthesizer: the base model
  reading the branch texts in its prompt (`synth_*` rows hold that prompt ++ the target).
  The reference point the cache path is trained to reach."""

  def evaluate(trainable, frozen, batch):
    model = split.merge(trainable, frozen).model
    logits = loss_lib.text_logits(model, batch["synth_tokens"], batch["synth_positions"],
                                  scan=scan)
    t = loss_lib.loss_terms(logits, batch)
    return dict(ce=t["ce"], tokens=t["tokens"])

  return evaluate


@dataclasses.dataclass(frozen=True)
class StepShardings:
  """Where the train step's state lives: the trainable dict, the frozen state, the optimizer
  state (its moments laid out like the trainable parameters, its counters replicated)."""

  trainable: dict
  frozen: nnx.State
  opt: Any


def jit_train_step(split: Split, tx: optax.GradientTransformation, mesh, rules, *, mode: str,
                   kl_weight: float, scan: bool = False,
                   remat: bool = False) -> tuple[Callable, StepShardings]:
  """The train step jitted for `mesh` (trainable and optimizer state donated), and the
  shardings its state must have. `split` may hold arrays or only shapes
  (`nnx.eval_shape`): the trainer runs the step, `psynth.aot` compiles it for a pod."""
  tr_sh, fr_sh = shardings(split, mesh, rules)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), split.trainable)
  opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, abstract), tr_sh,
                                 transform_non_params=lambda _: replicated(mesh))
  step = make_train_step(split, tx, mode=mode, kl_weight=kl_weight, scan=scan, remat=remat)
  jitted = jax.jit(step, in_shardings=(tr_sh, fr_sh, opt_sh, None),
                   out_shardings=(tr_sh, opt_sh, replicated(mesh)), donate_argnums=(0, 2))
  return jitted, StepShardings(tr_sh, fr_sh, opt_sh)


def shardings(split: Split, mesh, rules) -> tuple[dict, nnx.State]:
  """NamedShardings for the trainable dict and the frozen state, from their logical axes."""
  named = lambda axes: NamedSharding(mesh, logical_spec(axes, rules, mesh))
  trainable = jax.tree.map(named, split.trainable_axes, is_leaf=lambda x: isinstance(x, tuple))
  is_var = lambda x: isinstance(x, nnx.Variable)
  frozen = jax.tree.map(
      lambda v: named(tuple(v.get_metadata().get("logical_axes", (None,) * v.ndim))),
      split.frozen, is_leaf=is_var)
  return trainable, frozen


def batch_sharding(mesh, rules, ndim: int, accum: bool = True) -> NamedSharding:
  """Batch rows over the data axes, the rest replicated; `accum`: arrays are
  `[accum, micro_batch, ...]` (rows on axis 1), else `[batch, ...]`."""
  axes = (None, "batch") if accum else ("batch",)
  spec = logical_spec(axes + (None,) * (ndim - len(axes)), rules, mesh)
  return NamedSharding(mesh, spec)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
