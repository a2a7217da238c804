"""Cache mappers: small networks that calibrate each branch cache before the merge.

All share the parameter type `MapperParam`, so training selects them by type
(`nnx.Optimizer(model, tx, wrt=(nnx.LoRAParam, MapperParam))`), and all are the identity at
initialisation (their last layer is zero).

- `affine` (the reference form): per (branch, layer) features
  `[log1p(|o_i|), log1p(N), layer/(L-1)]` -> Linear(3,32) -> SiLU -> Linear(32,4) -> four
  scalars a_k = 1 + 0.1 tanh(r0), b_k = 0.1 tanh(r1), a_v, b_v; K' = a_k K + b_k, V' = a_v V + b_v.
- `per_head`: the same features, but its own scale and shift for every KV head:
  Linear(3,32) -> SiLU -> Linear(32, 4*kv_heads), i.e. one (a_k, b_k, a_v, b_v) per KV head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psynth.cache.kv_cache import KVCache

MAPPER_KINDS = ("affine", "per_head")
_HIDDEN = 32


class MapperParam(nnx.Param):
  """A cache-mapper parameter (trainable; the backbone's `nnx.Param`s are not)."""


class CacheMapper(nnx.Module):

  def __init__(self, kind: str, num_layers: int, num_kv_heads: int, *, rngs: nnx.Rngs):
    if kind not in MAPPER_KINDS:
      raise ValueError(f"mapper kind={kind!r}; supported: {MAPPER_KINDS}")
    self.kind, self.num_layers, self.num_kv_heads = kind, num_layers, num_kv_heads
    out = 4 if kind == "affine" else 4 * num_kv_heads
    init = jax.nn.initializers.lecun_normal()
    self.w1 = MapperParam(init(rngs.params(), (3, _HIDDEN), jnp.float32))
    self.b1 = MapperParam(jnp.zeros((_HIDDEN,), jnp.float32))
    self.w2 = MapperParam(jnp.zeros((_HIDDEN, out), jnp.float32))  # zero: identity at init
    self.b2 = MapperParam(jnp.zeros((out,), jnp.float32))

  def shape_signature(self) -> dict:
    return {"kind": self.kind, "num_layers": self.num_layers, "num_kv_heads": self.num_kv_heads}


def features(lengths_BxN: jax.Array, num_layers: int) -> jax.Array:
  """`[B, N, L, 3]`: log1p(branch length), log1p(number of branches), layer fraction.

  A batch pads examples with fewer branches with empty (length 0) ones; the branch count
  of a row is its number of non-empty branches, so padding does not change a row's features.
  """
  B, N = lengths_BxN.shape
  layer = jnp.arange(num_layers, dtype=jnp.float32) / max(num_layers - 1, 1)
  f_len = jnp.log1p(lengths_BxN.astype(jnp.float32))[:, :, None]
  count_B = (lengths_BxN > 0).sum(-1).astype(jnp.float32)
  f_n = jnp.broadcast_to(jnp.log1p(count_B)[:, None, None], (B, N, 1))
  return jnp.stack(jnp.broadcast_arrays(f_len, f_n, layer[None, None, :]), axis=-1)


def coefficients(mapper: CacheMapper, lengths_BxN: jax.Array) -> jax.Array:
  """`[4, B, N, L, kv_heads]`: a_k, b_k, a_v, b_v for every branch, layer and KV head."""
  x = features(lengths_BxN, mapper.num_layers)
  r = jax.nn.silu(x @ mapper.w1[...] + mapper.b1[...]) @ mapper.w2[...] + mapper.b2[...]
  B, N, L, _ = r.shape
  r = r.reshape(B, N, L, 4, -1)  # affine: one value, broadcast over heads below
  r = jnp.broadcast_to(r, (B, N, L, 4, mapper.num_kv_heads)).transpose(3, 0, 1, 2, 4)
  t = 0.1 * jnp.tanh(r)
  return jnp.stack([1 + t[0], t[1], 1 + t[2], t[3]])




def calibrate(k, v, valid, coefs):
  """K' = a_k K + b_k, V' = a_v V + b_v (float32) on valid slots; `coefs` = (a_k, b_k, a_v,
  b_v) and `valid` broadcast against k/v `[..., S, K, E]` (valid without K, E)."""
  a_k, b_k, a_v, b_v = coefs
  valid = valid[..., None, None]
  k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)
  return (jnp.where(valid, a_k * k32 + b_k, k32).astype(k.dtype),
          jnp.where(valid, a_v * v32 + b_v, v32).astype(v.dtype))
