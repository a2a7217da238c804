"""`affine` (the reference form): four scalars per (branch, layer), shared by all KV heads.

features `[log1p(|o_i|), log1p(N), layer/(L-1)]` -> Linear(3,32) -> SiLU -> Linear(32,4) ->
a_k = 1 + 0.1 tanh(r0), b_k = 0.1 tanh(r1), a_v, b_v; K' = a_k K + b_k, V' = a_v V + b_v.
260 parameters; `convert/reference_release.py` reads and writes the reference's file of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psynth.cache.mappers.base import CacheMapper, bounded, features, mlp, mlp_params, register


@register
class Affine(CacheMapper):
  kind = "affine"

  def __init__(self, num_layers: int, num_kv_heads: int, *, rngs: nnx.Rngs):
    super().__init__(num_layers, num_kv_heads)
    mlp_params(self, 4, rngs)

  def coefficients(self, lengths_BxN: jax.Array) -> jax.Array:
    r = mlp(self, features(lengths_BxN, self.num_layers))[..., None]  # [B, N, L, 4, 1]
    return jnp.broadcast_to(bounded(r), r.shape[:-1] + (self.num_kv_heads,))
