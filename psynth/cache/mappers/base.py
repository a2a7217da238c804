"""What every cache mapper shares: its parameter type, its input features, the registry.

A mapper calibrates each branch's re-encoded K/V before the merge. One class per kind
(`affine.py`, `per_head.py`), registered by name with `@register`; the config picks it
(`mapper.kind`) through `mappers.make`. A kind defines:
- its parameters, all of type `MapperParam` (training selects them with the nnx filter
  `train.step.TRAINABLE`; the backbone's `nnx.Param`s stay frozen), zero in the last layer so
  a fresh mapper is the identity;
- `coefficients(lengths_BxN) -> [B, N, L, C, K]`: C numbers per (branch, layer, KV head);
- `apply(k, v, valid, c)`: one layer's (or every layer's) branch K/V calibrated by them.
The eager merge (training, decode cache) and the lazy per-layer prefill both call these two
(`cache/reencode.py`), so a new kind is one class in one file.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

REGISTRY: dict[str, type["CacheMapper"]] = {}
HIDDEN = 32  # the reference's width


class MapperParam(nnx.Param):
  """A cache-mapper parameter (trainable; the backbone's `nnx.Param`s are not)."""


def register(cls: type["CacheMapper"]) -> type["CacheMapper"]:
  if cls.kind in REGISTRY or cls.kind == "none":
    raise ValueError(f"mapper kind {cls.kind!r} is already taken")
  REGISTRY[cls.kind] = cls
  return cls


class CacheMapper(nnx.Module):
  """Base class: the model shape it was made for, and the affine calibration most kinds use."""

  kind: ClassVar[str]

  def __init__(self, num_layers: int, num_kv_heads: int):
    self.num_layers, self.num_kv_heads = num_layers, num_kv_heads

  def coefficients(self, lengths_BxN: jax.Array) -> jax.Array:
    raise NotImplementedError

  def apply(self, k, v, valid, c):
    """K' = a_k K + b_k, V' = a_v V + b_v on valid slots, with (a_k, b_k, a_v, b_v) = c's
    four coefficients. k, v `[..., R, S, K, E]`; valid `[R, S]`; c `[..., R, 4, K]`."""
    a_k, b_k, a_v, b_v = (c[..., i, None, :, None] for i in range(4))  # [..., R, 1, K, 1]
    return calibrate(k, v, valid, (a_k, b_k, a_v, b_v))

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


def mlp_params(module: CacheMapper, out: int, rngs: nnx.Rngs) -> None:
  """Linear(3, HIDDEN) -> SiLU -> Linear(HIDDEN, out) as w1, b1, w2, b2 (w2 = 0: identity)."""
  init = jax.nn.initializers.lecun_normal()
  module.w1 = MapperParam(init(rngs.params(), (3, HIDDEN), jnp.float32))
  module.b1 = MapperParam(jnp.zeros((HIDDEN,), jnp.float32))
  module.w2 = MapperParam(jnp.zeros((HIDDEN, out), jnp.float32))
  module.b2 = MapperParam(jnp.zeros((out,), jnp.float32))


def mlp(module: CacheMapper, x: jax.Array) -> jax.Array:
  return jax.nn.silu(x @ module.w1[...] + module.b1[...]) @ module.w2[...] + module.b2[...]


def bounded(r_xCxK: jax.Array) -> jax.Array:
  """Raw outputs (a_k, b_k, a_v, b_v on axis -2) -> 1 + 0.1 tanh for scales, 0.1 tanh for
  shifts: within 10% of the identity, as the reference bounds them."""
  t = 0.1 * jnp.tanh(r_xCxK)
  return t + jnp.array([1.0, 0.0, 1.0, 0.0])[:, None]


def calibrate(k, v, valid, coefs):
  """K' = a_k K + b_k, V' = a_v V + b_v (float32) on valid slots; `coefs` = (a_k, b_k, a_v,
  b_v) and `valid` broadcast against k/v `[..., S, K, E]` (valid without K, E)."""
  a_k, b_k, a_v, b_v = coefs
  valid = valid[..., None, None]
  k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)
  return (jnp.where(valid, a_k * k32 + b_k, k32).astype(k.dtype),
          jnp.where(valid, a_v * v32 + b_v, v32).astype(v.dtype))
