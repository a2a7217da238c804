"""Layers run as one lax.scan over stacked weights: the same numbers as the unrolled loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig
from psynth.model.lora import add_lora
from psynth.model.transformer import forward, init_cache


@pytest.mark.parametrize("name", ["llama_gqa", "qwen3"])
def test_scanned_layers_equal_unrolled_logits_cache_and_grads(name, tiny_checkpoint):
  path, _ = tiny_checkpoint(name)
  model = add_lora(load_params(ModelConfig.from_hf(path), path), rank=4, alpha=8,
                   rngs=nnx.Rngs(0))
  for blk in model.layers:
    blk.attn.q.lora_b.set_value(jnp.full_like(blk.attn.q.lora_b[...], 0.02))
  graphdef, lora_state, rest = nnx.split(model, nnx.LoRAParam, ...)
  rng = np.random.RandomState(0)
  prompt = jnp.asarray(rng.randint(0, 128, (2, 9)), jnp.int32)
  pos = jnp.asarray(np.where(np.arange(9)[None] < np.array([[9], [6]]), np.arange(9), -1),
                    jnp.int32)
  more = jnp.asarray(rng.randint(0, 128, (2, 4)), jnp.int32)

  def run(lora_state, scan, remat):
    m = nnx.merge(graphdef, lora_state, rest)
    _, cache = forward(m, prompt, pos, init_cache(m.config, 2, 13), attend_cache=False,
                       scan=scan)
    logits, cache = forward(m, more, jnp.arange(9, 13, dtype=jnp.int32)[None].repeat(2, 0),
                            cache, lora=True, scan=scan, remat=remat)
    return (logits ** 2).mean(), (logits, cache.k)

  grad = lambda scan, remat: jax.grad(run, has_aux=True)(lora_state, scan, remat)
  (g0, (l0, k0)), (g1, (l1, k1)) = grad(False, False), grad(True, True)
  assert np.abs(np.asarray(l0) - np.asarray(l1)).max() <= 1e-5
  assert np.abs(np.asarray(k0) - np.asarray(k1)).max() <= 1e-5
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6 + 1e-4 * np.abs(np.asarray(a)).max()
  assert max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(g0)) > 0


def test_scan_layers_is_one_model_setting_the_large_config_turns_on():
  from psynth import config_files
  from psynth.train.settings import TrainSettings

  big, small = (TrainSettings.from_config(config_files.load(n)) for n in ("qwen3_14b", "tiny"))
  assert big.model.scan_layers and big.train.remat and not small.model.scan_layers
  assert "scan_layers" not in config_files.load("qwen3_14b").train


@pytest.mark.parametrize("name", ["llama_gqa", "qwen3"])
def test_layers_stored_stacked_equal_unrolled_and_unstack_exactly(name, tiny_checkpoint):
  """`model.scan_layers`: the layers kept as one stacked Block (what the trainer runs)."""
  from psynth.model.stacking import stack_layers, unstack_layers

  path, _ = tiny_checkpoint(name)
  model = add_lora(load_params(ModelConfig.from_hf(path), path), rank=4, alpha=8,
                   rngs=nnx.Rngs(0))
  for blk in model.layers:
    blk.attn.v.lora_b.set_value(jnp.full_like(blk.attn.v.lora_b[...], 0.02))
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  rng = np.random.RandomState(1)
  tokens = jnp.asarray(rng.randint(0, 128, (2, 7)), jnp.int32)
  pos = jnp.asarray(np.where(np.arange(7)[None] < np.array([[7], [4]]), np.arange(7), -1),
                    jnp.int32)

  def run(m):
    logits, cache = forward(m, tokens, pos, init_cache(m.config, 2, 8), lora=True)
    return np.asarray(logits), np.asarray(cache.k)

  unrolled = run(model)
  stack_layers(model)
  assert model.layers.attn.q.kernel.shape[0] == model.config.num_layers
  assert model.layers.attn.q.kernel.get_metadata()["logical_axes"][0] == "layers"
  stacked = run(model)
  for a, b in zip(unrolled, stacked):
    assert np.abs(a - b).max() <= 1e-5
  unstack_layers(model)
  after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
