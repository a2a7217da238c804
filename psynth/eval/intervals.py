"""95% (or other) confidence intervals for an accuracy: Wilson score and seeded bootstrap."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
  """Wilson score interval for `successes` out of `n`; sound at 0/n and n/n too."""
  if n <= 0:
    raise ValueError(f"n={n}; an accuracy interval needs at least one example")
  if not 0 <= successes <= n:
    raise ValueError(f"successes={successes} for n={n}; expected 0 <= successes <= n")
  if not 0 < level < 1:
    raise ValueError(f"level={level}; expected a probability in (0, 1), e.g. 0.95")
  z = NormalDist().inv_cdf(0.5 + level / 2)
  p = successes / n
  denom = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # The bounds at 0/n and n/n are exactly 0 and 1; floating point would leave ~1e-17.
  low = 0.0 if successes == 0 else max(0.0, center - half)
  high = 1.0 if successes == n else min(1.0, center + half)
  return low, high


def bootstrap_interval(scores, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of per-example `scores` (0/1, F1 in [0, 1], or
  paired differences in [-1, 1])."""
  scores_N = np.asarray(scores, dtype=np.float64).reshape(-1)
  if scores_N.size == 0:
    raise ValueError("scores is empty; an accuracy interval needs at least one example")
  if not 0 < level < 1:
    raise ValueError(f"level={level}; expected a probability in (0, 1), e.g. 0.95")
  if resamples < 1:
    raise ValueError(f"resamples={resamples}; need at least 1")
  rng = np.random.default_rng(seed)
  means_R = np.concatenate([  # in chunks: resamples x N indices can be large
      scores_N[rng.integers(0, scores_N.size, size=(min(256, resamples - i), scores_N.size))]
      .mean(axis=1) for i in range(0, resamples, 256)])
  alpha = (1 - level) / 2
  low, high = np.quantile(means_R, [alpha, 1 - alpha])
  return float(low), float(high)
