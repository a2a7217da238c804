"""A flash-style Pallas TPU kernel for `attention.py`'s signature, mask computed in the kernel.

Branch caches need a mask no library kernel takes: a slot is seen iff it is valid and its
position is <= the query's, with positions in any order (merged branches all start at 0).
So the kernel reads positions, not a mask: per slot a key (its position, or int32 max when
invalid) and per query row its position; `key <= position` is the mask.

Grid (batch, kv head, query block, kv block); the last axis is the sequential one, carrying
the online softmax (max m, denominator l, output acc, all float32) in VMEM scratch. GQA: the
G query heads of one kv head are the rows of one matmul with its keys (rows g * BQ + t). A
kv block no query of the query block can see is skipped: a table computed outside the kernel
(scalar-prefetched to SMEM) gives, per grid step, the kv block to fetch; a skipped step
names the block already in VMEM, so it costs neither a DMA nor a matmul.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

BLOCK_Q = 128  # query tokens per block (times G query heads: the rows of one matmul)
# Slots per kv block: a multiple of 128 (TPU lanes), as the slot keys' block is a row.
BLOCK_KV = 512
_HIDDEN = jnp.iinfo(jnp.int32).max  # the key of an invalid slot: above every position


def _kernel(fetch_ref, q_pos_ref, kv_key_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, acc_ref,
            *, mask_value):
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  nq, nk = pl.num_programs(2), pl.num_programs(3)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, mask_value, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(fetch_ref[(b * nq + i) * nk + j] == j)  # see _fetch_table
  def _update():
    s_RxN = jax.lax.dot_general(q_ref[...], k_ref[...], (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
    visible_RxN = kv_key_ref[...] <= q_pos_ref[...]  # [1, N] vs [R, 1]
    s_RxN = jnp.where(visible_RxN, s_RxN, mask_value)
    m_prev = m_ref[...]
    m_new = jnp.maximum(m_prev, s_RxN.max(axis=1, keepdims=True))
    p_RxN = jnp.exp(s_RxN - m_new)
    corr = jnp.exp(m_prev - m_new)
    l_ref[...] = l_ref[...] * corr + p_RxN.sum(axis=1, keepdims=True)
    v = v_ref[...]
    acc_ref[...] = acc_ref[...] * corr + jnp.dot(p_RxN.astype(v.dtype), v,
                                                 preferred_element_type=jnp.float32)
    m_ref[...] = m_new

  @pl.when(j == nk - 1)
  def _store():
    o_ref[...] = (acc_ref[...] / l_ref[...]).astype(o_ref.dtype)


def _fetch_table(q_pos_BxNQxR, kv_key_BxNK):
  """`[B * nq * nk]` int32: which kv block grid step (b, i, j) reads; == j iff it computes.

  Step j computes iff its block has a slot some query of block i sees (min key <= max
  position). A skipped step names the last block that computed (so Pallas, seeing the same
  block index, fetches nothing), or before any, the first that will. A query block that sees
  no slot at all computes block 0, so every row's denominator is >= 1 (never 0/0).
  """
  nk = kv_key_BxNK.shape[1]
  runs = kv_key_BxNK[:, None, :] <= q_pos_BxNQxR.max(axis=2)[:, :, None]  # [B, nq, nk]
  j = jnp.arange(nk, dtype=jnp.int32)
  last = jax.lax.cummax(jnp.where(runs, j, -1), axis=2)
  first = jnp.argmax(runs, axis=2).astype(jnp.int32)[:, :, None]
  return jnp.where(last < 0, first, last).reshape(-1)


def _pad_to(x, axis, size, value):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


@functools.partial(jax.jit, static_argnames=("mask_value", "interpret", "block_q", "block_kv"))
def flash_attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS, *,
                    mask_value: float, interpret: bool = False, block_q: int = BLOCK_Q,
                    block_kv: int = BLOCK_KV):
  """`attention.py`'s signature on the Pallas TPU kernel; `interpret=True` runs it anywhere
  (Pallas' TPU interpreter: slow, for tests on CPU; keep the caller inside one jit, as its
  host callbacks deadlocked on CPU behind eagerly dispatched ops)."""
  B, T, H, E = q_BxTxHxE.shape
  S, K = k_BxSxKxE.shape[1:3]
  G = H // K
  dtype = q_BxTxHxE.dtype
  # One block when it fits (a block may span a whole axis of any length); else padded.
  BQ = T if T <= block_q else block_q
  BK = S if S <= block_kv else block_kv
  Tp, Sp = -(-T // BQ) * BQ, -(-S // BK) * BK
  nq, nk, R = Tp // BQ, Sp // BK, G * BQ

  q = (q_BxTxHxE * jnp.asarray(E ** -0.5, dtype)).reshape(B, T, K, G, E)
  q = _pad_to(q, 1, Tp, 0).reshape(B, nq, BQ, K, G, E)
  q_BxKxNQxRxE = q.transpose(0, 3, 1, 4, 2, 5).reshape(B, K, nq, R, E)
  q_pos = _pad_to(q_pos_BxT.astype(jnp.int32), 1, Tp, -1).reshape(B, nq, 1, BQ)
  q_pos_BxNQxR = jnp.broadcast_to(q_pos, (B, nq, G, BQ)).reshape(B, nq, R)
  kv_key = jnp.where(kv_valid_BxS, kv_pos_BxS.astype(jnp.int32), _HIDDEN)
  kv_key_BxSp = _pad_to(kv_key, 1, Sp, _HIDDEN)
  to_bkse = lambda x: _pad_to(x.astype(dtype).transpose(0, 2, 1, 3), 2, Sp, 0)
  fetch = _fetch_table(q_pos_BxNQxR, kv_key_BxSp.reshape(B, nk, BK).min(axis=2))

  q_map = lambda b, k, i, j, fetch: (b, k, i, 0, 0)
  kv_map = lambda b, k, i, j, fetch: (b, k, fetch[(b * nq + i) * nk + j], 0)
  out = pl.pallas_call(
      functools.partial(_kernel, mask_value=mask_value),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1,
          grid=(B, K, nq, nk),
          in_specs=[
              pl.BlockSpec((None, None, R, 1), lambda b, k, i, j, fetch: (b, i, 0, 0)),
              pl.BlockSpec((None, 1, BK),
                           lambda b, k, i, j, fetch: (b, 0, fetch[(b * nq + i) * nk + j])),
              pl.BlockSpec((None, None, None, R, E), q_map),
              pl.BlockSpec((None, None, BK, E), kv_map),
              pl.BlockSpec((None, None, BK, E), kv_map),
          ],
          out_specs=pl.BlockSpec((None, None, None, R, E), q_map),
          scratch_shapes=[pltpu.VMEM((R, 1), jnp.float32), pltpu.VMEM((R, 1), jnp.float32),
                          pltpu.VMEM((R, E), jnp.float32)],
      ),
      out_shape=jax.ShapeDtypeStruct((B, K, nq, R, E), dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=pltpu.InterpretParams() if interpret else False,
  )(fetch, q_pos_BxNQxR[..., None], kv_key_BxSp[:, None, :], q_BxKxNQxRxE,
    to_bkse(k_BxSxKxE), to_bkse(v_BxSxKxE))
  out = out.reshape(B, K, nq, G, BQ, E).transpose(0, 2, 4, 1, 3, 5).reshape(B, Tp, H, E)
  return out[:, :T]
