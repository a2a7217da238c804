"""Pure functions on `KVCache`: cut out a branch, move it in position, tile, merge, extend.

None of these knows about the model: RoPE enters only as the inverse frequencies the caller
passes to `reposition`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from psynth.model.kv_cache import KVCache
from psynth.model.rotary import rerotate


def take_slots(cache: KVCache, start: int, length: int) -> KVCache:
  """Slots [start, start + length) of every row, as a cache of `length` slots (all written)."""
  if start < 0 or length < 1 or start + length > cache.slots:
    raise ValueError(f"slots [{start}, {start + length}) are outside a {cache.slots}-slot cache")
  cut = lambda a, axis: jax.lax.slice_in_dim(a, start, start + length, axis=axis)
  return cache.replace(k=cut(cache.k, 2), v=cut(cache.v, 2), positions=cut(cache.positions, 1),
                       valid=cut(cache.valid, 1), end=jnp.int32(length))


def reposition(cache: KVCache, new_start_B: jax.Array, inv_freq: jax.Array) -> KVCache:
  """Moves each row's tokens so that its first valid slot sits at `new_start_B[b]`.

  Keys are re-rotated by the per-row delta (float32, values untouched); positions shift by
  the same delta, so relative order inside a row is kept. Invalid slots are left alone.
  """
  delta_BxS = position_delta(cache, new_start_B)
  # One rotation table [B, S, E] serves every layer (broadcast, not recomputed per layer).
  return cache.replace(k=rerotate(cache.k, delta_BxS[None], inv_freq),
                       positions=cache.positions + delta_BxS)


def position_delta(cache: KVCache, new_start_B: jax.Array) -> jax.Array:
  """`[B, S]` int32: how far each valid slot moves so its row starts at `new_start_B[b]`."""
  first = jnp.min(jnp.where(cache.valid, cache.positions, jnp.iinfo(jnp.int32).max), axis=1)
  delta_B = jnp.asarray(new_start_B, jnp.int32) - first
  return jnp.where(cache.valid, delta_B[:, None], 0)


def first_rows(cache: KVCache, n: int) -> KVCache:
  """Rows [0, n) of every array (padding rows of a batch dropped)."""
  if n == cache.batch:
    return cache
  return cache.replace(k=cache.k[:, :n], v=cache.v[:, :n], positions=cache.positions[:n],
                       valid=cache.valid[:n])


def tile_rows(cache: KVCache, n: int) -> KVCache:
  """Repeats every row n times (row b -> rows b*n .. b*n+n-1): one prefix, n workers."""
  rep = lambda a, axis: jnp.repeat(a, n, axis=axis)
  return cache.replace(k=rep(cache.k, 1), v=rep(cache.v, 1), positions=rep(cache.positions, 0),
                       valid=rep(cache.valid, 0))


def merge_rows(cache: KVCache, n: int) -> KVCache:
  """Concatenates each group of n consecutive rows into one row: `[L, B*n, S]` -> `[L, B, n*S]`.

  Branch j of task b (row b*n + j) lands in slots [j*S, (j+1)*S) of row b, each branch once;
  padding stays invalid. Positions are kept: attention reads them, not slot order.
  """
  L, BN, S, K, E = cache.k.shape
  if BN % n:
    raise ValueError(f"{BN} rows cannot be merged in groups of n={n}")
  B = BN // n
  kv = lambda a: a.reshape(L, B, n * S, K, E)
  return cache.replace(k=kv(cache.k), v=kv(cache.v), positions=cache.positions.reshape(B, n * S),
                       valid=cache.valid.reshape(B, n * S), end=jnp.int32(n * S))


def extend(cache: KVCache, extra: int) -> KVCache:
  """Appends `extra` empty slots to every row (room for a prompt and its answer)."""
  pad5 = [(0, 0), (0, 0), (0, extra), (0, 0), (0, 0)]
  return cache.replace(k=jnp.pad(cache.k, pad5), v=jnp.pad(cache.v, pad5),
                       positions=jnp.pad(cache.positions, [(0, 0), (0, extra)]),
                       valid=jnp.pad(cache.valid, [(0, 0), (0, extra)]))


def truncate(cache: KVCache, n: int) -> KVCache:
  """Keeps only the first n slots valid (a cached prefix cut to the part another prompt shares)."""
  keep = jnp.arange(cache.slots) < n
  return cache.replace(valid=cache.valid & keep[None, :], end=jnp.int32(min(n, cache.slots)))


def pack_slots(cache: KVCache, slots: int) -> KVCache:
  """Each row's valid slots moved to its front (in their order), the cache cut to `slots`
  slots. A batch's merged cache pads every branch to the batch's longest; packed, decoding
  reads only what a row holds. Every row must have at most `slots` valid slots."""
  order_BxS = jnp.argsort((~cache.valid).astype(jnp.int8), axis=1, stable=True)[:, :slots]
  kv = lambda a: jnp.take_along_axis(a, order_BxS[None, :, :, None, None], axis=2)
  return cache.replace(k=kv(cache.k), v=kv(cache.v),
                       positions=jnp.take_along_axis(cache.positions, order_BxS, axis=1),
                       valid=jnp.take_along_axis(cache.valid, order_BxS, axis=1),
                       end=jnp.int32(slots))


def concat_slots(a: KVCache, b: KVCache) -> KVCache:
  """a's slots, then b's (same batch): e.g. a real shared prefix before merged branches."""
  cat = lambda x, y, axis: jnp.concatenate([x, y], axis=axis)
  return a.replace(k=cat(a.k, b.k, 2), v=cat(a.v, b.v, 2),
                   positions=cat(a.positions, b.positions, 1), valid=cat(a.valid, b.valid, 1),
                   end=jnp.int32(a.slots + b.slots))


def concat_rows(caches: list[KVCache]) -> KVCache:
  """The rows of every cache, in turn (same slots; `end` of the first)."""
  cat = lambda name, axis: jnp.concatenate([getattr(c, name) for c in caches], axis=axis)
  return caches[0].replace(k=cat("k", 1), v=cat("v", 1), positions=cat("positions", 0),
                           valid=cat("valid", 0))


def gather_rows(cache: KVCache, rows_R) -> KVCache:
  """Rows `rows_R` of the cache, in that order; a row index of -1 gives an empty row (no
  valid slot): how a batch pads examples that have fewer branches than the widest."""
  rows = jnp.asarray(rows_R, jnp.int32)
  at = jnp.maximum(rows, 0)
  take = lambda a, axis: jnp.take(a, at, axis=axis)
  if cache.is_per_layer:  # each layer's [B, S, K, E] on its own
    k, v = tuple(take(x, 0) for x in cache.k), tuple(take(x, 0) for x in cache.v)
  else:
    k, v = take(cache.k, 1), take(cache.v, 1)
  return cache.replace(k=k, v=v, positions=take(cache.positions, 0),
                       valid=take(cache.valid, 0) & (rows >= 0)[:, None])
