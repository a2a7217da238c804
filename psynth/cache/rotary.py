"""Rotations in the HF split-half RoPE layout, in float32: the math both the model and cache
re-encoding need. Frequencies come from the caller (the model knows its RoPE variant;
`psynth.model.rope.inv_freq_and_scale`), so this file needs nothing from the model.

Angles are an elementwise float32 product of positions and inverse frequencies, as in
`transformers`, so positions in the thousands keep full float32 accuracy (never a
low-precision matmul).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cos_sin(positions: jax.Array, inv_freq: jax.Array, scale: float = 1.0):
  """cos, sin `[*positions.shape, head_dim]` float32 for integer `positions`."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x_BxTxNxE: jax.Array, cos_BxTxE: jax.Array, sin_BxTxE: jax.Array) -> jax.Array:
  """Rotates every head of `x` by its token's (cos, sin); the result has x's dtype.

  cos/sin are cast to x's dtype first, as HF does, so bf16 models round where HF rounds.
  """
  cos = cos_BxTxE[:, :, None, :].astype(x_BxTxNxE.dtype)
  sin = sin_BxTxE[:, :, None, :].astype(x_BxTxNxE.dtype)
  return x_BxTxNxE * cos + rotate_half(x_BxTxNxE) * sin


def rerotate(k_xSxKxE: jax.Array, delta_xS: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Moves keys rotated to position p to position p + delta (any leading dims), in float32.

  Rotations compose, so one rotation by `delta` does it. It is a pure rotation (no yarn
  scale: the keys carry that already). `delta_xS` has k's leading dims without heads/dim.
  """
  cos, sin = cos_sin(delta_xS, inv_freq)
  cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over kv heads
  k32 = k_xSxKxE.astype(jnp.float32)
  return (k32 * cos + rotate_half(k32) * sin).astype(k_xSxKxE.dtype)
