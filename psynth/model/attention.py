"""Attention behind one signature, the implementation picked by name (`ModelConfig.attention`).

    out_BxTxHxE = impl(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS)

Every implementation computes the same thing: grouped-query attention (the G = H // K query
heads of kv head k read k's slots); query t sees slot s iff `kv_valid[s]` and
`kv_pos[s] <= q_pos[t]`, so slots need no order (merged branches all start at position 0);
softmax in float32. A query that sees no slot (a padding query, position < 0) gets a finite
value that differs between implementations and that nothing reads.

- "blocked": on CPU, C++ kernels (`cpu_kernel.py`: a decode step, a flash-style prefill);
  elsewhere (a mesh, a TPU, no compiler) a streaming softmax in jnp loops tuned for XLA on CPU.
  The default.
- "reference": one plain masked softmax; the yardstick of the tests.
- "pallas_tpu": a flash-style Pallas TPU kernel (`attention_pallas.py`), run per shard on a
  mesh, differentiated through "blocked"; "pallas_tpu_interpret" runs the same kernel in
  Pallas' TPU interpret mode (any backend; slow, for tests).
- "dot_product": `jax.nn.dot_product_attention` with a boolean mask (XLA on any backend).

Einsum letters: b batch, t query tokens, s slots, h heads, k kv heads, g query heads per kv
head, e head_dim.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from psynth.model import attention_pallas, cpu_kernel
from psynth.sharding import logical_spec

# The score of a hidden slot: finite, so a fully masked (padding) row stays NaN-free.
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)

ATTN_BLOCK = 256  # query rows per chunk and own keys per block (results/cpu_design_notes.md)
CACHE_BLOCK = 256  # cache slots per block
# Query x key pairs (per head) up to which one plain masked softmax beats the blocked loops.
DIRECT_SCORES = 1 << 19


def visible_BxTxS(q_pos_BxT, kv_pos_BxS, kv_valid_BxS):
  """Which slots each query sees: valid ones at a position <= its own."""
  return kv_valid_BxS[:, None, :] & (kv_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None])


def reference(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS):
  """One masked float32 softmax over all slots: every score is materialised."""
  B, T, H, E = q_BxTxHxE.shape
  K = k_BxSxKxE.shape[2]
  q = (q_BxTxHxE * jnp.asarray(E ** -0.5, q_BxTxHxE.dtype)).reshape(B, T, K, H // K, E)
  s = jnp.einsum("btkge,bske->bkgts", q, k_BxSxKxE.astype(q.dtype),
                 preferred_element_type=jnp.float32)
  visible = visible_BxTxS(q_pos_BxT, kv_pos_BxS, kv_valid_BxS)
  p = jax.nn.softmax(jnp.where(visible[:, None, None], s, _NEG), axis=-1)
  out = jnp.einsum("bkgts,bske->btkge", p.astype(q.dtype), v_BxSxKxE.astype(q.dtype),
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype).reshape(B, T, H, E)


def dot_product(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS):
  """`jax.nn.dot_product_attention` (GQA native) with the visibility as a boolean mask.

  Its XLA path takes any mask. Its cuDNN flash path takes only causal and length masks, which
  a merged branch cache (positions out of order, holes) is not, so JAX picks XLA here.
  """
  visible = visible_BxTxS(q_pos_BxT, kv_pos_BxS, kv_valid_BxS)
  return jax.nn.dot_product_attention(q_BxTxHxE, k_BxSxKxE.astype(q_BxTxHxE.dtype),
                                      v_BxSxKxE.astype(q_BxTxHxE.dtype),
                                      mask=visible[:, None])


# ----------------------------------------------------------------------------- blocked (CPU)


def _scores(q_c, k_blk, kv_pos, kv_valid, q_pos_c, G):
  """Masked float32 scores `[B, K, G*C, n]` of a query chunk against a block of n keys."""
  B, K, GC, _ = q_c.shape
  s = jnp.einsum("bkme,bkse->bkms", q_c, k_blk, preferred_element_type=jnp.float32)
  visible = visible_BxTxS(q_pos_c, kv_pos, kv_valid)  # [B, C, n]
  s = jnp.where(visible[:, None, None], s.reshape(B, K, G, GC // G, -1), _NEG)
  return s.reshape(B, K, GC, -1)


def _online_update(carry, s, v_blk):
  """One block of the streaming softmax: running max m, denominator l, output acc (float32)."""
  m, l, acc = carry
  m_new = jnp.maximum(m, s.max(-1, keepdims=True))
  p = jnp.exp(s - m_new)
  corr = jnp.exp(m - m_new)
  acc = acc * corr + jnp.einsum("bkms,bkse->bkme", p.astype(v_blk.dtype), v_blk,
                                preferred_element_type=jnp.float32)
  return m_new, l * corr + p.sum(-1, keepdims=True), acc


def _pad_axis(x, axis, size, value=0):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value) if size > x.shape[axis] else x


def _to_bkse(x):  # [B, S, K, E] -> [B, K, S, E]
  return x.transpose(0, 2, 1, 3)


def _direct_attention(q_BxKxGxTxE, pos_BxT, own, cache):
  """Attention of a few queries (decode, a short prompt) in one masked softmax, no loops.

  The cache's scores and the own tokens' scores are two matmuls sharing one max and one
  denominator, so the cache is never concatenated with (or padded to) anything: at T ~ 80
  the blocked path below spent more on copying the cache into blocks than on the math.
  """
  B, K, G, T, E = q_BxKxGxTxE.shape
  q = q_BxKxGxTxE.reshape(B, K, G * T, E)
  parts = []
  if own is not None:
    parts.append((_to_bkse(own[0]), _to_bkse(own[1]), pos_BxT, pos_BxT >= 0))
  if cache is not None:
    k_c, v_c, pos_c, valid_c = cache
    parts.append((_to_bkse(k_c).astype(q.dtype), _to_bkse(v_c).astype(q.dtype), pos_c, valid_c))
  scores = [_scores(q, k, kv_pos, kv_valid, pos_BxT, G) for k, _, kv_pos, kv_valid in parts]
  m = functools.reduce(jnp.maximum, [s.max(-1, keepdims=True) for s in scores])
  probs = [jnp.exp(s - m) for s in scores]
  l = functools.reduce(jnp.add, [p.sum(-1, keepdims=True) for p in probs])
  acc = functools.reduce(jnp.add, [
      jnp.einsum("bkms,bkse->bkme", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
      for p, (_, v, _, _) in zip(probs, parts)])
  return (acc / l).astype(q.dtype).reshape(B, K, G, T, E)


def _decode_attention(q_BxTxHxE, pos_BxT, own, cache):
  """Attention of one query token per row (a decode step) over its own K/V and the cache.

  The per-head form above needs the cache as [B, K, S, E]: a copy of every layer's K and V
  each step, then many small matmuls. Here one matmul scores all query heads of a row against
  every (slot, kv head) pair, straight from the cache's [B, S, K, E] layout; a strided slice
  keeps the pairs of matching heads (K times the score FLOPs, K = 3 on the default model, and
  still about 3x faster at 64 rows x 512 slots: results/cpu_design_notes.md). The output is a
  multiply-reduce over slots, which reads V once in its own layout. A row's scores over the
  cache and over its own token share one max and one denominator.
  """
  B, T, H, E = q_BxTxHxE.shape
  k_c, v_c, pos_c, valid_c = cache
  S, K = k_c.shape[1], k_c.shape[2]
  G = H // K
  f32 = jnp.float32
  q_BxKxTxGxE = q_BxTxHxE.reshape(B, T, K, G, E).transpose(0, 2, 1, 3, 4)
  s = jnp.einsum("bne,bme->bnm", k_c.astype(q_BxTxHxE.dtype).reshape(B, S * K, E),
                 q_BxKxTxGxE.reshape(B, K * T * G, E), preferred_element_type=f32)
  s_BxSxKxTxG = s.reshape(B, S, K * K, T, G)[:, :, ::K + 1]
  seen_BxSxT = visible_BxTxS(pos_BxT, pos_c, valid_c).transpose(0, 2, 1)
  s_BxSxKxTxG = jnp.where(seen_BxSxT[:, :, None, :, None], s_BxSxKxTxG, _NEG)
  k_o, v_o = own
  s_o = jnp.einsum("bjke,bktge->bjktg", k_o.astype(q_BxTxHxE.dtype), q_BxKxTxGxE,
                   preferred_element_type=f32)
  seen_o = visible_BxTxS(pos_BxT, pos_BxT, pos_BxT >= 0).transpose(0, 2, 1)
  s_o = jnp.where(seen_o[:, :, None, :, None], s_o, _NEG)
  m = jnp.maximum(s_BxSxKxTxG.max(1), s_o.max(1))  # [B, K, T, G]
  p = jnp.exp(s_BxSxKxTxG - m[:, None])
  p_o = jnp.exp(s_o - m[:, None])
  l = p.sum(1) + p_o.sum(1)
  out = (p.reshape(B, S, K, T * G, 1) * v_c[:, :, :, None, :].astype(f32)).sum(1)
  out = out.reshape(B, K, T, G, E) + jnp.einsum("bjktg,bjke->bktge", p_o, v_o.astype(f32))
  out = (out / l[..., None]).astype(q_BxTxHxE.dtype)
  return out.transpose(0, 2, 1, 3, 4).reshape(B, T, H, E)


def blocked_split(q_BxTxHxE, pos_BxT, own=None, cache=None) -> jax.Array:
  """The "blocked" implementation with this call's own tokens kept apart from the cache.

  `own = (k [B,T,K,E], v)`: the queries' own tokens (in order: token i may see tokens <= i);
  `cache = (k [B,S,K,E], v, positions [B,S], valid [B,S])`: slots written before. Neither is
  concatenated with the other (on CPU that copy cost more than the math). One streaming
  float32 softmax runs over blocks of both. On CPU, without a mesh, C++ kernels compute it
  (`cpu_kernel.py`; gradients through the jnp code below); elsewhere, or without a compiler,
  the jnp code: loops, not unrolled code, where query chunk i visits own-key blocks 0..i only
  (the masked upper triangle of a prefill is never computed) and skips cache blocks with no
  visible slot; compile time does not grow with the length.
  """
  E = q_BxTxHxE.shape[-1]
  q = q_BxTxHxE * jnp.asarray(E ** -0.5, q_BxTxHxE.dtype)
  # Not under a mesh: XLA cannot partition a custom call (it would gather every operand).
  if (own is not None and jax.sharding.get_abstract_mesh().empty
      and cpu_kernel.applies(q, own, cache)):
    # The kernels on CPU; the jnp code when lowered for another platform (a TPU AOT compile).
    return jax.lax.platform_dependent(q, pos_BxT, own, cache, cpu=_cpu_kernel,
                                      default=_jnp_split)
  return _jnp_split(q, pos_BxT, own, cache)


@jax.custom_vjp
def _cpu_kernel(q_BxTxHxE, pos_BxT, own, cache):
  """The C++ kernel for this call (q scaled), differentiated through `_jnp_split`."""
  if q_BxTxHxE.shape[1] == 1 and cache is not None:
    return cpu_kernel.decode_attention(q_BxTxHxE, pos_BxT, own, cache)
  return cpu_kernel.prefill_attention(q_BxTxHxE, pos_BxT, own, cache)


def _cpu_kernel_fwd(q, pos, own, cache):
  return _cpu_kernel(q, pos, own, cache), (q, pos, own, cache)


def _cpu_kernel_bwd(res, g_BxTxHxE):
  q, pos, own, cache = res
  floats = (q, own, None if cache is None else cache[:2])
  rebuild = lambda q, own, kv: _jnp_split(q, pos, own, None if kv is None else (*kv, *cache[2:]))
  _, vjp = jax.vjp(rebuild, *floats)
  d_q, d_own, d_kv = vjp(g_BxTxHxE)
  return d_q, None, d_own, None if cache is None else (*d_kv, None, None)


_cpu_kernel.defvjp(_cpu_kernel_fwd, _cpu_kernel_bwd)


def _jnp_split(q, pos_BxT, own=None, cache=None) -> jax.Array:
  """`blocked_split` in jnp: q `[B, T, H, E]` already scaled."""
  B, T, H, E = q.shape
  K = (own if own is not None else cache)[0].shape[2]
  G = H // K
  S = 0 if cache is None else cache[0].shape[1]
  n_own = 0 if own is None else T
  # A decode step. Not under a mesh: merging slots with kv heads there would gather a cache
  # that is sharded over kv heads.
  if T == 1 and own is not None and cache is not None and jax.sharding.get_abstract_mesh().empty:
    return _decode_attention(q, pos_BxT, own, cache)
  # [B, K, G, T, E]: the G query heads sharing a KV head form one matmul with it.
  q = q.reshape(B, T, K, G, E)
  q = q.transpose(0, 2, 3, 1, 4)
  if T * (n_own + S) <= DIRECT_SCORES:
    out = _direct_attention(q, pos_BxT, own, cache)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, E)
  return _blocked_loops(q, pos_BxT, own, cache)[:, :T]


def _blocked_loops(q, pos_BxT, own, cache):
  """`blocked_split`'s streaming loops: q `[B, K, G, T, E]` (scaled) -> `[B, Tp, H, E]`, the
  queries padded to whole chunks."""
  B, K, G, T, E = q.shape
  H, C = K * G, min(ATTN_BLOCK, T)
  S = 0 if cache is None else cache[0].shape[1]
  Tp = -(-T // C) * C
  nq = Tp // C
  q = _pad_axis(q, 3, Tp)
  pos = _pad_axis(pos_BxT, 1, Tp, -1)
  if own is not None:
    k, v = _pad_axis(_to_bkse(own[0]), 2, Tp), _pad_axis(_to_bkse(own[1]), 2, Tp)
    valid = pos >= 0
  if cache is not None:
    k_c, v_c, pos_c, valid_c = cache
    CB = min(CACHE_BLOCK, S)
    Sp = -(-S // CB) * CB
    k_c = _pad_axis(_to_bkse(k_c).astype(q.dtype), 2, Sp)
    v_c = _pad_axis(_to_bkse(v_c).astype(q.dtype), 2, Sp)
    pos_c, valid_c = _pad_axis(pos_c, 1, Sp), _pad_axis(valid_c, 1, Sp, False)
  cut = lambda x, i, n, axis: jax.lax.dynamic_slice_in_dim(x, i * n, n, axis=axis)

  def chunk(i):
    q_c = cut(q, i, C, 3).reshape(B, K, G * C, E)
    q_pos = cut(pos, i, C, 1)

    def own_block(j, carry):
      s = _scores(q_c, cut(k, j, C, 2), cut(pos, j, C, 1), cut(valid, j, C, 1), q_pos, G)
      return _online_update(carry, s, cut(v, j, C, 2))

    carry = (jnp.full((B, K, G * C, 1), _NEG, jnp.float32),
             jnp.zeros((B, K, G * C, 1), jnp.float32), jnp.zeros((B, K, G * C, E), jnp.float32))
    if own is not None:
      # Static bounds (a scan: reverse-mode differentiable, for training); the blocks after
      # this query chunk are skipped by the cond, never computed.
      carry = jax.lax.fori_loop(
          0, nq, lambda j, c: jax.lax.cond(j <= i, lambda c: own_block(j, c), lambda c: c, c),
          carry)
    if cache is not None:

      def cache_block(j, carry):
        blk_pos, blk_valid = cut(pos_c, j, CB, 1), cut(valid_c, j, CB, 1)

        def update(c):
          s = _scores(q_c, cut(k_c, j, CB, 2), blk_pos, blk_valid, q_pos, G)
          return _online_update(c, s, cut(v_c, j, CB, 2))

        # Decide on the cheap mask first: an empty or future-only block costs no matmul.
        seen = visible_BxTxS(q_pos, blk_pos, blk_valid).any()
        return jax.lax.cond(seen, update, lambda c: c, carry)

      carry = jax.lax.fori_loop(0, Sp // CB, cache_block, carry)
    _, l, acc = carry
    # l >= 1 once any block ran (the row's max scores exp(0)); a chunk that saw no block at
    # all (padding queries without own tokens) has acc = 0 and gets 0, not 0/0.
    return (acc / jnp.maximum(l, 1.0)).astype(q.dtype).reshape(B, K, G, C, E)

  out = jax.lax.map(chunk, jnp.arange(nq))  # [nq, B, K, G, C, E]
  return out.transpose(1, 0, 4, 2, 3, 5).reshape(B, Tp, H, E)


def blocked(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS):
  """The "blocked" implementation behind the common signature: every slot is a cache slot."""
  return blocked_split(q_BxTxHxE, q_pos_BxT,
                       cache=(k_BxSxKxE, v_BxSxKxE, kv_pos_BxS, kv_valid_BxS))


def _blocked_grad(kernel):
  """`kernel` forward, with gradients through "blocked" (recomputed): the Pallas kernel has no
  reverse mode, and the blocked loops' backward keeps memory bounded (for training)."""

  @jax.custom_vjp
  def run(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS):
    return kernel(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS)

  def forward(*args):
    return run(*args), args

  def backward(args, g_BxTxHxE):
    q, k, v, q_pos, kv_pos, kv_valid = args
    _, vjp = jax.vjp(lambda q, k, v: blocked(q, k, v, q_pos, kv_pos, kv_valid), q, k, v)
    return (*vjp(g_BxTxHxE), None, None, None)

  run.defvjp(forward, backward)
  return run


def _per_shard(kernel):
  """`kernel` run by each device on its own shard when a mesh is active: XLA cannot partition
  a Mosaic kernel ("wrap the call in a shard_map"). Rows go over the batch axes and kv heads,
  with their query heads, over the tensor axis (each is independent of the others); an axis
  that does not divide its dimension is left out, that dimension replicated."""

  def run(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return kernel(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS)
    spec = tuple(logical_spec(("batch", "kv_heads")))
    spec += (None,) * (2 - len(spec))

    def fits(entry, size):
      names = (entry,) if isinstance(entry, str) else tuple(entry or ())
      return entry if size % math.prod(mesh.shape[a] for a in names) == 0 else None

    rows, heads = fits(spec[0], q_BxTxHxE.shape[0]), fits(spec[1], k_BxSxKxE.shape[2])
    x, pos = P(rows, None, heads, None), P(rows, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(x, x, x, pos, pos, pos), out_specs=x,
                         check_vma=False)(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT,
                                          kv_pos_BxS, kv_valid_BxS)

  return run


# ----------------------------------------------------------------------------- by name

IMPLEMENTATIONS = {
    "blocked": blocked,
    "reference": reference,
    "pallas_tpu": _per_shard(_blocked_grad(functools.partial(
        attention_pallas.flash_attention, mask_value=_NEG))),
    "pallas_tpu_interpret": _per_shard(_blocked_grad(functools.partial(
        attention_pallas.flash_attention, mask_value=_NEG, interpret=True))),
    "dot_product": dot_product,
}


def get(name: str):
  """The implementation called `name`."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention={name!r}; accepted: {sorted(IMPLEMENTATIONS)}")
  return IMPLEMENTATIONS[name]


def attend(name: str, q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, pos_BxT, cache=None) -> jax.Array:
  """A model call's attention: its queries over its own tokens and the cache's slots.

  `cache`: None or `(k [B,S,K,E], v, positions [B,S], valid [B,S])`. "blocked" keeps the two
  apart (see `blocked_split`); the others see them concatenated, cache first.
  """
  impl = get(name)
  if impl is blocked:
    return blocked_split(q_BxTxHxE, pos_BxT, (k_BxTxKxE, v_BxTxKxE), cache)
  k, v, kv_pos, kv_valid = k_BxTxKxE, v_BxTxKxE, pos_BxT, pos_BxT >= 0
  if cache is not None:
    cat = lambda c, own: jnp.concatenate([c.astype(own.dtype), own], axis=1)
    k, v = cat(cache[0], k), cat(cache[1], v)
    kv_pos, kv_valid = cat(cache[2], kv_pos), cat(cache[3], kv_valid)
  return impl(q_BxTxHxE, k, v, pos_BxT, kv_pos, kv_valid)
