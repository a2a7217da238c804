"""`per_head`: the affine features and network, but its own (a_k, b_k, a_v, b_v) for every KV
head: Linear(3,32) -> SiLU -> Linear(32, 4 * kv_heads)."""

from __future__ import annotations

import jax
from flax import nnx

from psynth.cache.mappers.base import CacheMapper, bounded, features, mlp, mlp_params, register


@register
class PerHead(CacheMapper):
  kind = "per_head"

  def __init__(self, num_layers: int, num_kv_heads: int, *, rngs: nnx.Rngs):
    super().__init__(num_layers, num_kv_heads)
    mlp_params(self, 4 * num_kv_heads, rngs)

  def coefficients(self, lengths_BxN: jax.Array) -> jax.Array:
    r = mlp(self, features(lengths_BxN, self.num_layers))
    return bounded(r.reshape(*r.shape[:-1], 4, self.num_kv_heads))  # [B, N, L, 4, K]
