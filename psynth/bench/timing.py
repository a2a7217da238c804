"""Honest wall-clock timing: compile (first call) apart, then the median of warm runs."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  first_s: float  # the first call: compile + one run for jitted code
  runs_s: tuple[float, ...]  # warm runs

  @property
  def median_s(self) -> float:
    return statistics.median(self.runs_s)


def _once(fn: Callable[[], Any]) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def time_interleaved(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, Timing]:
  """Calls each fn once cold, then `runs` rounds of one warm call each, interleaved.

  Interleaving gives every contender the same share of a noisy machine's slow moments, so
  their ratio is fair even when absolute times drift. Each call waits for its results.
  """
  if runs < 1:
    raise ValueError(f"runs={runs}; need at least 1 warm run")
  first = {name: _once(fn) for name, fn in fns.items()}
  warm: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      warm[name].append(_once(fn))
  return {name: Timing(first[name], tuple(warm[name])) for name in fns}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)
