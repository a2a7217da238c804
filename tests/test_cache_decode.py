"""The explicit cache: prefill then one-token decodes equals one forward over everything."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import padded_batch
from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig
from psynth.model.transformer import forward, init_cache


@pytest.mark.parametrize("name", ["llama_gqa", "qwen3"])
def test_prefill_then_decode_equals_full_forward(name, tiny_checkpoint):
  path, _ = tiny_checkpoint(name)
  cfg = ModelConfig.from_hf(path)
  model = load_params(cfg, path)
  T, k = 11, 6
  tokens, _, positions = padded_batch(cfg.vocab_size, [T + k, T + k])
  full, _ = forward(model, tokens, positions, init_cache(cfg, 2, 32))

  # Prefill T tokens padded to a 16-token bucket, then decode k tokens one at a time.
  pre_tok = np.zeros((2, 16), np.int32)
  pre_pos = np.full((2, 16), -1, np.int32)
  pre_tok[:, :T], pre_pos[:, :T] = tokens[:, :T], positions[:, :T]
  logits, cache = forward(model, pre_tok, pre_pos, init_cache(cfg, 2, 32))
  steps = [np.asarray(logits[:, :T])]
  for i in range(T, T + k):
    logits, cache = forward(model, tokens[:, i:i + 1], positions[:, i:i + 1], cache)
    steps.append(np.asarray(logits))
  stepped = np.concatenate(steps, axis=1)
  diff = np.abs(stepped - np.asarray(full)).max()
  assert diff <= 1e-4, diff
  assert int(cache.end) == 16 + k
  assert np.asarray(cache.valid).sum() == 2 * (T + k)


def test_decode_on_a_per_layer_cache_equals_the_stacked_cache(tiny_checkpoint):
  """The decode loop's storage (`KVCache.per_layer`) gives the stacked cache's logits and
  K/V (to 1e-6), and converts back to the stacked form."""
  path, _ = tiny_checkpoint("llama_gqa")
  cfg = ModelConfig.from_hf(path)
  model = load_params(cfg, path)
  tokens, _, positions = padded_batch(cfg.vocab_size, [14, 9])
  _, stacked = forward(model, tokens[:, :8], positions[:, :8], init_cache(cfg, 2, 32))
  split = stacked.per_layer()
  assert split.is_per_layer and len(split.k) == cfg.num_layers
  assert split.k[0].shape == (2, 32, cfg.num_kv_heads, cfg.head_dim)
  assert (split.num_layers, split.batch, split.slots) == (stacked.num_layers, 2, 32)
  for i in range(8, 14):
    a, stacked = forward(model, tokens[:, i:i + 1], positions[:, i:i + 1], stacked)
    b, split = forward(model, tokens[:, i:i + 1], positions[:, i:i + 1], split)
    assert split.is_per_layer
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6
  back = split.stacked()
  for x, y in [(back.k, stacked.k), (back.v, stacked.v), (back.valid, stacked.valid),
               (back.positions, stacked.positions), (back.end, stacked.end)]:
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match="stacked"):
    forward(model, tokens[:, :1], positions[:, :1], split, scan=True)


def test_bf16_runs_close_to_fp32(tiny_checkpoint):
  path, _ = tiny_checkpoint("llama_gqa")
  tokens, _, positions = padded_batch(128, [20])
  out = {}
  for dt in ("float32", "bfloat16"):
    cfg = ModelConfig.from_hf(path, dtype=dt, param_dtype=dt)
    model = load_params(cfg, path)
    assert model.embed[...].dtype == jnp.dtype(dt)
    logits, cache = forward(model, tokens, positions, init_cache(cfg, 1, 32))
    assert cache.k.dtype == jnp.dtype(dt) and logits.dtype == jnp.float32
    out[dt] = np.asarray(logits)
  assert np.abs(out["float32"] - out["bfloat16"]).max() < 0.1
  assert (out["float32"].argmax(-1) == out["bfloat16"].argmax(-1)).mean() > 0.9


def test_bf16_model_keeps_lora_in_fp32_and_stays_close(tiny_checkpoint):
  """bf16 weights and activations, LoRA parameters in fp32 (cast at use): the precision
  benchmark's logits, LoRA on, stay close to fp32's."""
  from types import SimpleNamespace

  from flax import nnx

  from psynth.bench import precision
  from psynth.model.lora import add_lora

  path, _ = tiny_checkpoint("llama_gqa")
  rows = [list(range(3, 23)), list(range(40, 52))]
  out = {}
  for dt in ("float32", "bfloat16"):
    cfg = ModelConfig.from_hf(path, dtype=dt, param_dtype=dt)
    model = add_lora(load_params(cfg, path), rank=4, rngs=nnx.Rngs(0))
    for blk in model.layers:  # a trained-looking adapter: B nonzero
      blk.attn.q.lora_b.set_value(jnp.full(blk.attn.q.lora_b.shape, 0.05))
    lora = nnx.state(model, nnx.LoRAParam)
    assert {x.dtype for x in jax.tree.leaves(lora)} == {jnp.dtype("float32")}
    assert model.layers[0].attn.q.kernel[...].dtype == jnp.dtype(dt)
    out[dt] = precision._logits(SimpleNamespace(model=model, config=cfg), rows, lora=True)
  r = precision.compare_logits(out["float32"], out["bfloat16"], lora=True)
  assert r.tokens == 32 and 0 < r.max_abs_diff < 0.1 and r.argmax_agreement > 0.9
