"""RoPE frequencies of each supported variant (default, linear, llama3, yarn).

The rotations themselves live in `psynth.model.rotary`, shared with cache re-encoding.
"""

from __future__ import annotations

import math

import numpy as np

from psynth.model.config import RopeConfig


def inv_freq_and_scale(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
  """Inverse frequencies `[head_dim // 2]` (float32) and the cos/sin scale of `rope`.

  Arithmetic follows `transformers`' float32 formulas step for step, so the tables agree
  with HF to the last bit rather than merely to rounding.
  """
  base = rope.theta
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  pos_freqs = np.power(np.float32(base), exponents, dtype=np.float32)
  inv_freq = (np.float32(1.0) / pos_freqs).astype(np.float32)
  scale = 1.0
  if rope.rope_type == "default":
    pass
  elif rope.rope_type == "linear":
    inv_freq = inv_freq / np.float32(rope.factor)
  elif rope.rope_type == "llama3":
    inv_freq = _llama3(inv_freq, rope)
  elif rope.rope_type == "yarn":
    inv_freq, scale = _yarn(pos_freqs, rope, head_dim)
  else:
    raise ValueError(f"Unsupported rope_type={rope.rope_type!r}")
  return inv_freq.astype(np.float32), float(scale)


def _llama3(inv_freq: np.ndarray, rope: RopeConfig) -> np.ndarray:
  factor = rope.factor
  old_len = rope.original_max_position_embeddings
  low_wavelen = old_len / rope.low_freq_factor
  high_wavelen = old_len / rope.high_freq_factor
  wavelen = np.float32(2 * math.pi) / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq)
  smooth = (np.float32(old_len) / wavelen - np.float32(rope.low_freq_factor)) / np.float32(
      rope.high_freq_factor - rope.low_freq_factor)
  smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
  is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _yarn(pos_freqs: np.ndarray, rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
  factor, base, dim = rope.factor, rope.theta, head_dim
  scale = rope.attention_factor
  if scale is None:
    scale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

  def correction_dim(num_rotations):
    old_len = rope.original_max_position_embeddings
    return (dim * math.log(old_len / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

  low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
  if rope.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoids a division by zero in the ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / np.float32(high - low), 0, 1)
  extrapolation = np.float32(1) - ramp.astype(np.float32)
  inv_extra = np.float32(1.0) / pos_freqs
  inv_inter = np.float32(1.0) / (np.float32(factor) * pos_freqs)
  return inv_inter * (1 - extrapolation) + inv_extra * extrapolation, scale
