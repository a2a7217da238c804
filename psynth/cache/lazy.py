"""Branch caches re-encoded and mapped lazily, one layer at a time, as attention reads them.

The eager path (`ops.reposition` -> `mapper.apply` -> `ops.merge_rows` -> `ops.extend`)
rewrites every layer's keys and values before the synthesizer's prefill starts: for 4
branches of 512 tokens on SmolLM2 that is ~100 MB of fresh memory, written and read again,
each pass. Here the merged cache is the branches' own arrays reshaped (no copy), and the
prefill rotates and calibrates one layer's slice in that layer's turn
(`forward(cache_view=...)`). The numbers are the eager path's; the merged cache that
decoding needs is built after the first token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from psynth.cache import mapper as mapper_lib
from psynth.cache import ops, rotary
from psynth.cache.kv_cache import KVCache


def merged_view(branches: KVCache, starts_N: jax.Array, inv_freq: jax.Array,
                coefs: jax.Array | None = None, prefix: KVCache | None = None):
  """(cache, view) for `forward(..., cache, cache_view=view, write=False)`.

  branches: N branch rows (`[L, N, S, K, E]`); starts_N: each branch's new first position;
  coefs: the mapper's `[4, 1, N, L, K]` coefficients (`mapper.coefficients`), or None;
  prefix: one row of slots to put before the branches untouched (after_prefix mode).
  `cache` is one row: [prefix slots] + N*S branch slots at their new positions.
  """
  L, N, S, K, E = branches.k.shape
  delta_NxS = ops.position_delta(branches, starts_N)
  cos, sin = rotary.cos_sin(delta_NxS, inv_freq)  # [N, S, E], one table for every layer
  merged = ops.merge_rows(branches.replace(positions=branches.positions + delta_NxS), N)
  P = 0
  if prefix is not None:
    P = prefix.slots
    merged = ops.concat_slots(prefix, merged)

  def view(layer: int, k_1xSxKxE, v_1xSxKxE):
    k = rotary.rotate(k_1xSxKxE[:, P:].reshape(N, S, K, E), cos, sin)
    v = v_1xSxKxE[:, P:].reshape(N, S, K, E)
    if coefs is not None:  # [4, 1, N, L, K] -> this layer's [4, N, 1, K, 1]
      k, v = mapper_lib.calibrate(k, v, branches.valid, coefs[:, 0, :, layer][:, :, None, :, None])

    def join(whole, rows):  # the prefix slots untouched, then the N branches as one row
      rows = rows.reshape(1, N * S, K, E)
      return jnp.concatenate([whole[:, :P], rows], axis=1) if P else rows

    return join(k_1xSxKxE, k), join(v_1xSxKxE, v)

  return merged, view
