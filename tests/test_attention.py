"""Every attention implementation equals the plain reference (fp32, <= 1e-5), alone and in the
model; the Pallas TPU kernel runs in Pallas' TPU interpret mode."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import padded_batch
from psynth import sharding
from psynth.convert.hf_checkpoint import load_params
from psynth.model import attention as attn
from psynth.model import attention_pallas
from psynth.model.config import ModelConfig
from psynth.model.transformer import Transformer, forward, init_cache

TOL = 1e-5
# Small blocks, so a few slots already make several query and kv blocks (and skipped ones).
SMALL_PALLAS = functools.partial(attention_pallas.flash_attention, mask_value=attn._NEG,
                                 interpret=True, block_q=4, block_kv=128)


def _inputs(B, T, S, H, K, E, seed=0):
  """Random q/k/v; cache positions out of order with repeats (merged branches all start at
  0), a fifth of the slots invalid, the last query of row 0 padding, and row 1's first query
  at a position below every slot (seen by nothing, yet not padding)."""
  rng = np.random.RandomState(seed)
  q = rng.randn(B, T, H, E).astype(np.float32)
  k, v = rng.randn(2, B, S, K, E).astype(np.float32)
  kv_pos = rng.randint(1, 24, (B, S)).astype(np.int32)
  kv_valid = rng.rand(B, S) > 0.2
  q_pos = np.sort(rng.randint(1, 24, (B, T)), axis=1).astype(np.int32)
  q_pos[0, -1] = -1
  if B > 1:
    q_pos[1, 0] = 0
  return tuple(map(jnp.asarray, (q, k, v, q_pos, kv_pos, kv_valid)))


def _check(out, args):
  """Max abs diff to the reference over the queries that see a slot; all rows finite."""
  out, ref = np.asarray(out), np.asarray(attn.reference(*args))
  seen = np.asarray(attn.visible_BxTxS(*args[3:]).any(-1))
  assert not seen.all(), "the inputs should hold a query that sees nothing"
  assert np.isfinite(out).all()
  diff = np.abs(out - ref)[seen].max()
  assert diff <= TOL, diff
  return diff


SHAPES = {  # B, T, S, H, K, E
    "decode": (3, 1, 37, 4, 2, 16),  # three rows: a padding query, a blind one, a real one
    "prefill": (2, 9, 300, 4, 2, 16),
    "mqa": (2, 6, 130, 3, 1, 8),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["blocked", "dot_product", "pallas_tpu_interpret"])
def test_implementation_equals_reference(name, shape):
  args = _inputs(*SHAPES[shape])
  _check(attn.get(name)(*args), args)


@pytest.mark.parametrize("shape", SHAPES)
def test_pallas_with_small_blocks_equals_reference(shape):
  # 37 slots: one block; 130 and 300 slots: 2 and 3 blocks of 128, the last one padded.
  args = _inputs(*SHAPES[shape])
  _check(SMALL_PALLAS(*args), args)


def test_pallas_skips_blocks_nobody_sees_and_stays_exact():
  q, k, v, q_pos, kv_pos, kv_valid = _inputs(2, 9, 300, 4, 2, 16)
  # Slots 128..255 (kv block 1) lie in the future of every query; row 1's query block 1
  # (tokens 4..7) is all padding.
  kv_pos = kv_pos.at[:, 128:256].set(1000)
  q_pos = q_pos.at[1, 4:8].set(-1)
  args = (q, k, v, q_pos, kv_pos, kv_valid)
  _check(SMALL_PALLAS(*args), args)

  # The kernel's table for these blocks (4 tokens x G=2 heads, 128 slots): [B, nq=3, nk=3].
  hidden = attention_pallas._HIDDEN
  key = jnp.pad(jnp.where(kv_valid, kv_pos, hidden), ((0, 0), (0, 84)), constant_values=hidden)
  rows = jnp.pad(q_pos, ((0, 0), (0, 3)), constant_values=-1).reshape(2, 3, 1, 4)
  fetch = attention_pallas._fetch_table(jnp.tile(rows, (1, 1, 2, 1)).reshape(2, 3, 8),
                                        key.reshape(2, 3, 128).min(-1))
  fetch = np.asarray(fetch).reshape(2, 3, 3)
  seen = np.asarray(attn.visible_BxTxS(jnp.pad(q_pos, ((0, 0), (0, 3)), constant_values=-1),
                                       *args[4:]))
  seen = np.pad(seen, ((0, 0), (0, 0), (0, 84))).reshape(2, 3, 4, 3, 128).any((2, 4))
  assert not seen[:, :, 1].any() and not seen[1, 1].any()
  # A step computes iff its block has a visible slot (a query block that sees nothing computes
  # block 0 only); a skipped step names a computed block, so nothing new is fetched.
  want = seen | (~seen.any(-1, keepdims=True) & (np.arange(3) == 0))
  np.testing.assert_array_equal(fetch == np.arange(3), want)
  assert np.take_along_axis(want, fetch, axis=2).all()


def test_blocked_loops_equal_reference(monkeypatch):
  # Tiny blocks and no direct path: the streaming loops run over several chunks and blocks.
  monkeypatch.setattr(attn, "DIRECT_SCORES", 0)
  monkeypatch.setattr(attn, "ATTN_BLOCK", 4)
  monkeypatch.setattr(attn, "CACHE_BLOCK", 8)
  args = _inputs(*SHAPES["prefill"])
  _check(attn.blocked(*args), args)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("name", sorted(set(attn.IMPLEMENTATIONS) - {"pallas_tpu"}))
def test_attend_own_tokens_and_cache(name, direct, monkeypatch):
  """The model's call: own tokens (causal by position, padded) on top of a cache; "blocked"
  keeps them apart, the others concatenate; all equal the reference over both."""
  if not direct:
    monkeypatch.setattr(attn, "DIRECT_SCORES", 0)
    monkeypatch.setattr(attn, "ATTN_BLOCK", 4)
    monkeypatch.setattr(attn, "CACHE_BLOCK", 8)
  q, k_c, v_c, _, pos_c, valid_c = _inputs(2, 7, 21, 4, 2, 16)
  rng = np.random.RandomState(1)
  k, v = jnp.asarray(rng.randn(2, 2, 7, 2, 16), jnp.float32)
  pos = jnp.asarray([[30, 31, 32, 33, 34, 35, -1], [24, 25, 26, -1, -1, -1, -1]], jnp.int32)
  out = attn.attend(name, q, k, v, pos, (k_c, v_c, pos_c, valid_c))
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)
  _check(out, (q, cat(k_c, k), cat(v_c, v), pos, cat(pos_c, pos), cat(valid_c, pos >= 0)))


@pytest.mark.parametrize("name", sorted(set(attn.IMPLEMENTATIONS) - {"pallas_tpu"}))
def test_decode_step_over_own_token_and_cache(name):
  """One query per row ("blocked" takes its decode path): a row reading cache and own token,
  a row whose cache slots are all hidden (it reads its own token only), a padding row."""
  q, k_c, v_c, _, pos_c, valid_c = _inputs(3, 1, 37, 6, 3, 16)
  valid_c = valid_c.at[1].set(False)
  rng = np.random.RandomState(2)
  k, v = jnp.asarray(rng.randn(2, 3, 1, 3, 16), jnp.float32)
  pos = jnp.asarray([[40], [12], [-1]], jnp.int32)
  out = attn.attend(name, q, k, v, pos, (k_c, v_c, pos_c, valid_c))
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)
  args = (q, cat(k_c, k), cat(v_c, v), pos, cat(pos_c, pos), cat(valid_c, pos >= 0))
  out, ref = np.asarray(out), np.asarray(attn.reference(*args))
  assert np.isfinite(out).all()
  assert np.abs(out - ref)[:2].max() <= TOL


@pytest.mark.parametrize("name", ["blocked", "dot_product", "pallas_tpu_interpret"])
def test_gradients_equal_reference(name):
  # Training differentiates attention; the Pallas kernel's backward is "blocked"'s.
  q, k, v, *rest = _inputs(2, 3, 40, 4, 2, 8)
  seen = attn.visible_BxTxS(*rest).any(-1)[:, :, None, None]
  loss = lambda impl: lambda q, k, v: (jnp.where(seen, impl(q, k, v, *rest), 0) ** 2).sum()
  grads = jax.jit(jax.grad(loss(attn.get(name)), argnums=(0, 1, 2)))(q, k, v)
  for got, want in zip(grads, jax.grad(loss(attn.reference), argnums=(0, 1, 2))(q, k, v)):
    assert np.abs(np.asarray(got) - np.asarray(want)).max() <= TOL


def test_pallas_on_a_mesh_runs_per_shard():
  # XLA cannot partition a Mosaic kernel: on a mesh each device runs it on its rows and kv
  # heads (4 rows over data=2, 2 kv heads over tensor=2).
  args = _inputs(4, 5, 130, 4, 2, 16)
  with sharding.use_mesh(sharding.make_mesh(data=2, tensor=2, devices=jax.devices()[:4])):
    out = jax.jit(attn.get("pallas_tpu_interpret"))(*args)
  _check(out, args)


def test_pallas_kernel_compiles_for_tpu_in_the_model():
  # XLA's TPU compiler runs without a TPU (libtpu, compile-only devices): the tiny model's
  # forward with the kernel compiles, one Mosaic call per layer.
  pytest.importorskip("libtpu")
  from jax.experimental import topologies

  device = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices[0]
  on_tpu = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                          sharding=jax.sharding.SingleDeviceSharding(device))
  cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64,
                    attention="pallas_tpu")
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  cache = jax.eval_shape(lambda: init_cache(cfg, 2, 64))
  tokens = on_tpu(jax.ShapeDtypeStruct((2, 16), jnp.int32))
  logits = lambda state, tokens, cache: forward(nnx.merge(graphdef, state), tokens, tokens,
                                                cache)[0]
  compiled = jax.jit(logits).lower(jax.tree.map(on_tpu, state), tokens,
                                   jax.tree.map(on_tpu, cache)).compile()
  assert compiled.as_text().count("tpu_custom_call") == 2


def test_unknown_implementation_is_named():
  with pytest.raises(ValueError, match=r"attention='flash'.*'blocked'.*'pallas_tpu'"):
    attn.get("flash")
  with pytest.raises(ValueError, match="attention='flash'"):
    ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                num_kv_heads=1, head_dim=4, max_position_embeddings=8, attention="flash")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _model_calls(graphdef, state, calls):
  """Runs the (tokens, positions) calls in turn on one cache; the second one does not see the
  first (a second branch). One jit: the Pallas TPU interpreter's host callbacks deadlocked
  here behind eagerly dispatched ops."""
  model = nnx.merge(graphdef, state)
  cache = init_cache(model.config, 2, 32)
  out = []
  for i, (tokens, positions) in enumerate(calls):
    logits, cache = forward(model, tokens, positions, cache, attend_cache=i != 1)
    out.append(logits)
  return out


def test_model_logits_equal_across_implementations(tiny_checkpoint):
  """Prefill two padded rows, a second branch at the same positions (an out-of-order cache),
  a prompt on top, a decode step: the logits of every real token equal "blocked"'s."""
  path, _ = tiny_checkpoint("llama_gqa")
  first, _, pos1 = padded_batch(128, [9, 6], seed=0)
  second, _, pos2 = padded_batch(128, [5, 7], seed=1)
  prompt, _, pos3 = padded_batch(128, [4, 3], seed=2)
  calls = [(first, pos1), (second, pos2), (prompt, np.where(pos3 >= 0, pos3 + 9, -1)),
           (np.array([[7], [11]], np.int32), np.array([[13], [12]], np.int32))]
  real = np.concatenate([pos.reshape(-1) >= 0 for _, pos in calls])

  def run(name):
    graphdef, state = nnx.split(load_params(ModelConfig.from_hf(path, attention=name), path))
    out = _model_calls(graphdef, state, calls)
    return np.concatenate([np.asarray(x).reshape(-1, 128) for x in out])[real]

  base = run("blocked")
  for name in ("reference", "pallas_tpu_interpret", "dot_product"):
    diff = np.abs(run(name) - base).max()
    assert diff <= TOL, (name, diff)
