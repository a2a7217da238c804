"""The C++ attention kernels (XLA FFI custom calls on CPU: a decode step, a prefill) equal the
reference and the jnp path; a row's result does not depend on its batch or padding; gradients
equal the reference's; without a compiler the model falls back to XLA; lowered for TPU, the
model keeps XLA's form."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psynth.convert.hf_checkpoint import load_params
from psynth.model import attention as attn
from psynth.model import cpu_kernel
from psynth.model.config import ModelConfig
from psynth.model.transformer import forward, init_cache

TOL = 1e-5
DECODE, PREFILL = "psynth_decode_attention", "psynth_prefill_attention"
pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="no C++ compiler here")


def _step(B, S, H, K, E, seed=0):
  """Scaled queries [B,1,H,E], own K/V, and a cache with positions out of order and repeated
  (merged branches), a fifth of the slots invalid; row 0 is padding (position -1), row 1
  sees none of its cache slots (its own token only)."""
  rng = np.random.RandomState(seed)
  q = rng.randn(B, 1, H, E).astype(np.float32) * E ** -0.5
  k, v = rng.randn(2, B, S, K, E).astype(np.float32)
  own_k, own_v = rng.randn(2, B, 1, K, E).astype(np.float32)
  slot_pos = rng.randint(0, 40, (B, S)).astype(np.int32)
  valid = rng.rand(B, S) > 0.2
  pos = rng.randint(20, 45, (B, 1)).astype(np.int32)
  pos[0], pos[1] = -1, 2
  slot_pos[1] = 30
  j = lambda *xs: tuple(map(jnp.asarray, xs))
  return j(q, pos), j(own_k, own_v), j(k, v, slot_pos, valid)


def _reference(qp, own, cache):
  q, pos = qp
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)
  E = q.shape[-1]
  return np.asarray(attn.reference(q / E ** -0.5, cat(cache[0], own[0]), cat(cache[1], own[1]),
                                   pos, cat(cache[2], pos), cat(cache[3], pos >= 0)))


@pytest.mark.parametrize("shape", [(8, 37, 6, 3, 16), (5, 300, 9, 3, 64), (4, 20, 4, 1, 8)],
                         ids=["gqa", "default_model_heads", "mqa"])
def test_kernel_equals_reference(shape):
  qp, own, cache = _step(*shape)
  out = np.asarray(jax.jit(cpu_kernel.decode_attention)(*qp, own, cache))
  ref = _reference(qp, own, cache)
  assert np.abs(out - ref)[1:].max() <= TOL  # row 1 reads its own token only
  assert np.abs(out[1] - own[1][1].repeat(shape[2] // shape[3], axis=1)).max() <= TOL
  assert (out[0] == 0).all()  # the padding row: zeros, read by nobody


def test_blocked_decode_runs_the_kernel_and_equals_xla():
  qp, own, cache = _step(6, 50, 6, 3, 16)
  step = jax.jit(lambda q, pos, own, cache: attn.blocked_split(q, pos, own, cache))
  hlo = step.lower(*qp, own, cache).as_text()
  assert hlo.count(DECODE) == 1
  E = qp[0].shape[-1]
  xla = attn._decode_attention(qp[0] * E ** -0.5, qp[1], own, cache)
  diff = np.abs(np.asarray(step(*qp, own, cache)) - np.asarray(xla))[1:].max()
  assert diff <= TOL, diff


def test_a_row_does_not_depend_on_its_batch_or_padding_slots():
  # Unseen slots are skipped, not masked: padding a row's cache or batching it with other
  # rows leaves its output bit for bit the same.
  qp, own, cache = _step(8, 40, 6, 3, 16)
  run = jax.jit(cpu_kernel.decode_attention)
  full = np.asarray(run(*qp, own, cache))
  pad = lambda x, fill: jnp.concatenate([x, jnp.full((4, 24) + x.shape[2:], fill, x.dtype)], 1)
  rows = lambda xs: tuple(x[4:] for x in xs)
  k, v, slot_pos, valid = rows(cache)
  padded = (pad(k, 7.0), pad(v, -3.0), pad(slot_pos, 0), pad(valid, False))
  part = np.asarray(run(*rows(qp), rows(own), padded))
  np.testing.assert_array_equal(part, full[4:])


def test_tiny_model_logits_with_and_without_the_kernels(tiny_checkpoint, monkeypatch):
  """Prefill 4 rows of different lengths, then two decode steps: the logits through the
  kernels equal XLA's path to float32 rounding, and so do the greedy tokens."""
  path, _ = tiny_checkpoint("llama_gqa")
  model = load_params(ModelConfig.from_hf(path), path)
  graphdef, state = nnx.split(model)
  rng = np.random.RandomState(0)
  lengths = np.array([9, 4, 7, 1])
  tokens = rng.randint(0, 128, (4, 9)).astype(np.int32)
  positions = np.where(np.arange(9)[None] < lengths[:, None], np.arange(9)[None], -1)

  def run():
    @jax.jit  # a new function per call: traced again, with the kernel or without
    def steps(state, tokens, positions):
      m = nnx.merge(graphdef, state)
      logits, cache = forward(m, tokens, positions, init_cache(m.config, 4, 16))
      out, pos = [], jnp.asarray(lengths)[:, None]
      tok = jnp.take_along_axis(logits, pos[:, :, None] - 1, axis=1)[:, :, 0].argmax(-1)
      for _ in range(2):
        logits, cache = forward(m, tok[:, None], pos, cache.per_layer())
        out.append(logits[:, 0])
        tok, pos = logits[:, 0].argmax(-1), pos + 1
      return jnp.stack(out, 1)

    return steps, np.asarray(steps(state, tokens, positions.astype(np.int32)))

  steps, with_kernel = run()
  hlo = steps.lower(state, tokens, positions.astype(np.int32)).as_text()
  assert DECODE in hlo and PREFILL in hlo
  monkeypatch.setattr(cpu_kernel, "available", lambda: False)
  _, without = run()
  assert np.abs(with_kernel - without).max() <= TOL
  np.testing.assert_array_equal(with_kernel.argmax(-1), without.argmax(-1))


def test_without_a_compiler_decode_falls_back_to_xla(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("PSYNTH_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "no-such-compiler")
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-compiler'"):
    cpu_kernel.build()
  cpu_kernel.available.cache_clear()
  try:
    with caplog.at_level(logging.WARNING, logger="psynth.model.cpu_kernel"):
      assert not cpu_kernel.available()
    assert "XLA computes attention instead" in caplog.text
    qp, own, cache = _step(6, 30, 6, 3, 16)
    step = jax.jit(lambda q, pos, own, cache: attn.blocked_split(q, pos, own, cache))
    assert DECODE not in step.lower(*qp, own, cache).as_text()
    q, k, v, pos, *_ = _prefill(2, 40, 0, 4, 2, 16)
    assert PREFILL not in step.lower(q, pos, (k, v), None).as_text()
  finally:
    cpu_kernel.available.cache_clear()
  assert not list(tmp_path.glob("kernels/*.so")), "a failed build leaves no library behind"


def test_a_built_kernel_is_reused(tmp_path, monkeypatch):
  monkeypatch.setenv("PSYNTH_CACHE", str(tmp_path))
  first = cpu_kernel.build()
  stamp = first.stat().st_mtime_ns
  assert cpu_kernel.build() == first and first.stat().st_mtime_ns == stamp
  assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporaries left


def test_lowered_for_tpu_the_decode_step_keeps_xla():
  # The kernel is CPU-only: compiling ahead of time for TPU takes XLA's form of the step.
  pytest.importorskip("libtpu")
  from jax.experimental import topologies

  device = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices[0]
  on_tpu = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                          sharding=jax.sharding.SingleDeviceSharding(device))
  step = jax.jit(lambda q, pos, own, cache: attn.blocked_split(q, pos, own, cache))
  qp, own, cache = jax.tree.map(on_tpu, _step(8, 64, 6, 3, 16))
  assert DECODE not in step.lower(*qp, own, cache).compile().as_text()
  q, k, v, pos, k_c, v_c, pos_c, valid_c = jax.tree.map(on_tpu, _prefill(2, 40, 30, 4, 2, 16))
  compiled = step.lower(q, pos, (k, v), (k_c, v_c, pos_c, valid_c)).compile()
  assert PREFILL not in compiled.as_text()


def _prefill(B, T, S, H, K, E, seed=0):
  """Queries with their own K/V (rows of different lengths, right padding: position -1) on top
  of a cache with positions out of order and repeated, a fifth of the slots invalid."""
  rng = np.random.RandomState(seed)
  q = rng.randn(B, T, H, E).astype(np.float32)
  k, v = rng.randn(2, B, T, K, E).astype(np.float32)
  lengths = np.maximum(T - 7 * np.arange(B), 1)
  start = S // 2
  pos = np.where(np.arange(T)[None] < lengths[:, None], start + np.arange(T)[None], -1)
  k_c, v_c = rng.randn(2, B, S, K, E).astype(np.float32)
  pos_c = rng.randint(0, start + 1, (B, S)).astype(np.int32)
  valid_c = rng.rand(B, S) > 0.2
  return tuple(map(jnp.asarray, (q, k, v, pos.astype(np.int32), k_c, v_c, pos_c, valid_c)))


@pytest.mark.parametrize("shape", [(3, 100, 0, 4, 2, 16), (2, 70, 150, 6, 3, 64),
                                   (2, 33, 65, 4, 1, 32), (2, 40, 10, 4, 2, 128)],
                         ids=["no_cache", "cache_default_heads", "mqa", "head_dim_128"])
def test_prefill_kernel_equals_reference(shape):
  q, k, v, pos, k_c, v_c, pos_c, valid_c = _prefill(*shape)
  cache = (k_c, v_c, pos_c, valid_c) if shape[2] else None
  E = shape[-1]
  out = np.asarray(jax.jit(cpu_kernel.prefill_attention)(q * E ** -0.5, pos, (k, v), cache))
  cat = lambda a, b: jnp.concatenate([a, b], axis=1) if cache else b
  ref = np.asarray(attn.reference(q, cat(k_c, k), cat(v_c, v), pos, cat(pos_c, pos),
                                  cat(valid_c, pos >= 0)))
  real = np.asarray(pos >= 0)
  assert not real.all(), "the inputs should hold padding queries"
  assert np.abs(out - ref)[real].max() <= TOL
  assert (out[~real] == 0).all()


def test_prefill_rows_do_not_depend_on_batch_or_padding():
  q, k, v, pos, k_c, v_c, pos_c, valid_c = _prefill(4, 90, 70, 6, 3, 16)
  run = jax.jit(cpu_kernel.prefill_attention)
  full = np.asarray(run(q, pos, (k, v), (k_c, v_c, pos_c, valid_c)))
  pad = lambda x, fill: jnp.concatenate([x[2:], jnp.full((2, 50) + x.shape[2:], fill, x.dtype)], 1)
  part = run(q[2:], pos[2:], (k[2:], v[2:]),
             (pad(k_c, 3.0), pad(v_c, -1.0), pad(pos_c, 0), pad(valid_c, False)))
  np.testing.assert_array_equal(np.asarray(part), full[2:])


def test_gradients_through_the_kernels_equal_reference():
  # Training differentiates attention: forward by the kernel, backward by the jnp path.
  q, k, v, pos, k_c, v_c, pos_c, valid_c = _prefill(2, 40, 30, 4, 2, 16)
  real = (pos >= 0)[:, :, None, None]
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)

  def loss(fn):
    return lambda q, k, v, k_c, v_c: (jnp.where(real, fn(q, k, v, k_c, v_c), 0) ** 2).sum()

  blocked = lambda q, k, v, k_c, v_c: attn.blocked_split(q, pos, (k, v), (k_c, v_c, pos_c, valid_c))
  ref = lambda q, k, v, k_c, v_c: attn.reference(q, cat(k_c, k), cat(v_c, v), pos,
                                                 cat(pos_c, pos), cat(valid_c, pos >= 0))
  args = (q, k, v, k_c, v_c)
  assert PREFILL in jax.jit(jax.grad(loss(blocked))).lower(*args).as_text()
  got = jax.jit(jax.grad(loss(blocked), argnums=range(5)))(*args)
  want = jax.grad(loss(ref), argnums=range(5))(*args)
  for a, b in zip(got, want):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-4
