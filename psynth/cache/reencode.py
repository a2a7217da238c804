"""Branch caches -> one merged cache per example: re-encode positions, calibrate, merge.

The one place this chain lives; inference, batched inference, training and the benchmarks
all call it. Branch caches come as rows `[L, B*N, S, ...]`: row b*N + j is branch j of
example b (an example with fewer than N branches has empty rows: no valid slot, length 0).

Per layer, the transform is: rotate each branch's keys by its position delta (values
untouched), then calibrate them with the mapper (`mappers/`: its coefficients per branch,
layer and KV head, and how its kind applies them). It is
written once (`transform`) and applied either
- eagerly to every layer at once (`merge`): differentiable, what training and the decode
  cache use; or
- lazily, one layer at a time as the synthesizer's prefill reads it (`lazy_merge`), so no
  re-encoded copy of the whole cache exists before the first token.
Both merge the N branch rows of an example into one row of N*S slots by a reshape: the
slots keep their absolute positions, which is all attention reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from psynth.cache import ops
from psynth.cache.mappers import CacheMapper
from psynth.model import rotary
from psynth.model.kv_cache import KVCache

MODES = ("shared_start", "after_prefix", "sequential")


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"position mode {mode!r} unknown; choose from {MODES}")


def branch_starts(lengths_xN, mode: str, prefix_len: int = 0):
  """Start position of every branch `[..., N]` and of the synthesizer prompt `[...]`.

  shared_start: every branch at 0 (the reference setting); after_prefix: every branch at
  `prefix_len`, after a real shared prefix; sequential: branch i where branch i-1 ended.
  `lengths_xN`: numpy (inference, on the host) or traced (training); the result is alike.
  """
  check_mode(mode)
  xp = np if isinstance(lengths_xN, np.ndarray) else jnp
  if mode == "shared_start":
    return xp.zeros_like(lengths_xN), lengths_xN.max(axis=-1)
  if mode == "after_prefix":
    return xp.full_like(lengths_xN, prefix_len), prefix_len + lengths_xN.max(axis=-1)
  ends = xp.cumsum(lengths_xN, axis=-1)
  return ends - lengths_xN, ends[..., -1]


def transform(k, v, valid_RxS, cos_RxSxE, sin_RxSxE, mapper: CacheMapper | None = None,
              coefs=None):
  """One layer's (`k, v [R, S, K, E]`) or every layer's (`[L, R, S, K, E]`) branch K/V,
  re-encoded by the (cos, sin) of each slot's delta, then calibrated by `mapper` with its
  coefficients in row form (`[(L,) R, C, K]`, `_rows_coefs`); no mapper: not calibrated."""
  k = rotary.rotate(k, cos_RxSxE, sin_RxSxE)
  if mapper is not None:
    k, v = mapper.apply(k, v, valid_RxS, coefs)
  return k, v


def _setup(branches: KVCache, starts_BxN, inv_freq):
  """(delta-shifted positions `[R, S]`, cos, sin `[R, S, E]`) for every branch row."""
  delta_RxS = ops.position_delta(branches, jnp.reshape(starts_BxN, (-1,)))
  cos, sin = rotary.cos_sin(delta_RxS, inv_freq)  # one table serves every layer
  return branches.positions + delta_RxS, cos, sin


def _rows_coefs(mapper: CacheMapper | None, lengths_BxN):
  """The mapper's coefficients `[B, N, L, C, K]` in row form `[L, B*N, C, K]` (or None)."""
  if mapper is None:
    return None
  c = mapper.coefficients(jnp.asarray(lengths_BxN))
  B, N, L = c.shape[:3]
  return jnp.moveaxis(c.reshape(B * N, L, *c.shape[3:]), 1, 0)


def merge(branches: KVCache, starts_BxN, inv_freq, mapper: CacheMapper | None = None,
          lengths_BxN=None) -> KVCache:
  """Eager: `[L, B*N, S]` branch rows -> a `[L, B, N*S]` merged cache (all layers at once).

  `starts_BxN`: each branch's new first position (`branch_starts`); `mapper` (or None) with
  the branch lengths `[B, N]` its features read (0 for the empty rows padding an example).
  """
  N = jnp.shape(starts_BxN)[-1]
  positions, cos, sin = _setup(branches, starts_BxN, inv_freq)
  k, v = transform(branches.k, branches.v, branches.valid, cos, sin, mapper,
                   _rows_coefs(mapper, lengths_BxN))
  return ops.merge_rows(branches.replace(k=k, v=v, positions=positions), N)


def lazy_merge(branches: KVCache, starts_BxN, inv_freq, mapper: CacheMapper | None = None,
               lengths_BxN=None, prefix: KVCache | None = None):
  """Lazy: (cache, view) for `forward(..., cache, cache_view=view, write=False)`.

  `cache` is B rows of [prefix slots] + N*S branch slots at their new positions, the
  branches' own arrays reshaped (no copy); `view(layer, k, v)` re-encodes and calibrates
  that layer's branch slots as attention reads them. `prefix`: B rows of slots to put
  before the branches untouched (after_prefix mode). The numbers are `merge`'s.
  """
  L, R, S, K, E = branches.k.shape
  B, N = jnp.shape(starts_BxN)
  positions, cos, sin = _setup(branches, starts_BxN, inv_freq)
  merged = ops.merge_rows(branches.replace(positions=positions), N)
  P = 0
  if prefix is not None:
    P = prefix.slots
    merged = ops.concat_slots(prefix, merged)
  rows_coefs = _rows_coefs(mapper, lengths_BxN)

  def view(layer: int, k_BxSxKxE, v_BxSxKxE):
    rows = lambda a: a[:, P:].reshape(R, S, K, E)
    c = None if rows_coefs is None else rows_coefs[layer]
    k, v = transform(rows(k_BxSxKxE), rows(v_BxSxKxE), branches.valid, cos, sin, mapper, c)

    def join(whole, rows):  # the prefix slots untouched, then each example's N branches
      rows = rows.reshape(B, N * S, K, E)
      return jnp.concatenate([whole[:, :P], rows], axis=1) if P else rows

    return join(k_BxSxKxE, k), join(v_BxSxKxE, v)

  return merged, view
