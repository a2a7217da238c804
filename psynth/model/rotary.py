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


def _rotate(x, cos, sin):
  """HF's x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1], written per half: the
  same float ops in the same order (so bit-identical), but one concatenate of results instead
  of one of inputs, which XLA on CPU runs faster (results/cpu_design_notes.md)."""
  h = x.shape[-1] // 2
  x1, x2, c, s = x[..., :h], x[..., h:], cos[..., :h], sin[..., :h]
  return jnp.concatenate([x1 * c + (-x2) * s, x2 * c + x1 * s], axis=-1)


def apply_rope(x_BxTxNxE: jax.Array, cos_BxTxE: jax.Array, sin_BxTxE: jax.Array) -> jax.Array:
  """Rotates every head of `x` by its token's (cos, sin); the result has x's dtype.

  cos/sin are cast to x's dtype first, as HF does, so bf16 models round where HF rounds.
  """
  cos = cos_BxTxE[:, :, None, :].astype(x_BxTxNxE.dtype)
  sin = sin_BxTxE[:, :, None, :].astype(x_BxTxNxE.dtype)
  return _rotate(x_BxTxNxE, cos, sin)


def rerotate(k_xSxKxE: jax.Array, delta_xS: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Moves keys rotated to position p to position p + delta (any leading dims), in float32.

  Rotations compose, so one rotation by `delta` does it. It is a pure rotation (no yarn
  scale: the keys carry that already). `delta_xS` has k's leading dims without heads/dim.
  """
  return rotate(k_xSxKxE, *cos_sin(delta_xS, inv_freq))


def rotate(k_xSxKxE: jax.Array, cos_xSxE: jax.Array, sin_xSxE: jax.Array) -> jax.Array:
  """Keys rotated by a precomputed float32 (cos, sin) table (the same for every KV head)."""
  cos, sin = cos_xSxE[..., None, :], sin_xSxE[..., None, :]  # broadcast over kv heads
  return _rotate(k_xSxKxE.astype(jnp.float32), cos, sin).astype(k_xSxKxE.dtype)
