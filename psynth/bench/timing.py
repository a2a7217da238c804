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


def time_calls(fn: Callable[[], Any], runs: int) -> Timing:
  """Calls `fn` once cold, then `runs` times warm; each call waits for its device results."""
  if runs < 1:
    raise ValueError(f"runs={runs}; need at least 1 warm run")

  def one() -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0

  first = one()
  return Timing(first, tuple(one() for _ in range(runs)))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)
