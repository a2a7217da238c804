"""What one ahead-of-time compile tells: per-device memory against the chip's HBM, XLA's FLOPs
and bytes, compile time; as a table, as JSON, and as the shortfall of whatever does not fit.

XLA's numbers are per device (one chip's share of the sharded program). `cost_analysis`
counts a loop body once (a `lax.scan` over layers or micro-batches is not multiplied out).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from psynth.aot.topology import GIB


@dataclasses.dataclass(frozen=True)
class Row:
  function: str  # train, prefill, decode
  compile_s: float
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int  # outputs that reuse a (donated) argument's buffer
  peak_bytes: int
  flops: float
  bytes_accessed: float
  optimal_s: float  # XLA's own time estimate (0 when it gives none)
  hbm_bytes: int  # the budget: the chip's HBM (or a smaller one asked for)
  error: str = ""  # the compiler's refusal (e.g. RESOURCE_EXHAUSTED), if any

  @property
  def fits(self) -> bool:
    return not self.error and self.peak_bytes <= self.hbm_bytes

  @property
  def shortfall_bytes(self) -> int:
    return max(self.peak_bytes - self.hbm_bytes, 0)


def measure(function: str, compiled, compile_s: float, hbm_bytes: int) -> Row:
  """A Row from a `jax.stages.Compiled`."""
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  args, out, temp, alias = (int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                            int(m.temp_size_in_bytes), int(m.alias_size_in_bytes))
  # Live at once at worst: arguments, outputs not aliased to them, temporaries, the code.
  peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  peak = max(peak, args + out - alias + temp + int(m.generated_code_size_in_bytes))
  return Row(function, compile_s, args, out, temp, alias, peak, float(cost.get("flops", 0.0)),
             float(cost.get("bytes accessed", 0.0)), float(cost.get("optimal_seconds", 0.0)),
             hbm_bytes)


def refused(function: str, error: Exception, compile_s: float, hbm_bytes: int) -> Row:
  """A Row for a compile the TPU compiler refused; the peak is read from its message when it
  says how much it needed ("Used 101.2G of 95.74G hbm", "the total memory required for HLO
  temporaries (16.40G) exceeds")."""
  text = str(error)
  used = (re.search(r"Used ([0-9.]+)([KMGT])? of", text)
          or re.search(r"memory required for [^(]*\(([0-9.]+)([KMGT])?\) exceeds", text))
  scale = {None: 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
  peak = int(float(used.group(1)) * scale[used.group(2)]) if used else 0
  first = next((ln for ln in text.splitlines() if ln.strip()), text)[:400]
  return Row(function, compile_s, 0, 0, 0, 0, peak, 0.0, 0.0, 0.0, hbm_bytes, error=first)


def _gib(n: float) -> str:
  return f"{n / GIB:.2f}"


def _size(n: float) -> str:
  """Bytes for a table cell: GiB for a real model, MiB for a test one."""
  return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.2f} MiB"


def table(rows: list[Row], header: str) -> str:
  lines = [header, "", "| function | compile s | arguments | temporaries | output | peak | "
           "HBM | peak/HBM | TFLOP | GB accessed | XLA est. s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    est = f"{r.optimal_s:.3g}" if r.optimal_s > 0 else "-"
    lines.append(
        f"| {r.function} | {r.compile_s:.1f} | {_size(r.argument_bytes)} | "
        f"{_size(r.temp_bytes)} | {_size(r.output_bytes)} | {_size(r.peak_bytes)} | "
        f"{_size(r.hbm_bytes)} | {r.peak_bytes / r.hbm_bytes:.1%} | {r.flops / 1e12:.4g} | "
        f"{r.bytes_accessed / 1e9:.4g} | {est} |")
  for r in rows:
    if r.error:
      lines.append(f"\n{r.function}: the compiler refused it: {r.error}")
  return "\n".join(lines)


def failures(rows: list[Row]) -> list[str]:
  """One line per function that does not fit, naming it and the shortfall."""
  out = []
  for r in rows:
    if r.fits:
      continue
    short = (f"needs {_gib(r.peak_bytes)} GiB per device, {_gib(r.shortfall_bytes)} GiB more "
             f"than the {_gib(r.hbm_bytes)} GiB of HBM" if r.peak_bytes else r.error)
    out.append(f"{r.function} does not fit: {short}")
  return out


def write_json(rows: list[Row], context: dict, path: str | Path) -> None:
  data = dict(context, functions=[dict(dataclasses.asdict(r), fits=r.fits,
                                       shortfall_bytes=r.shortfall_bytes) for r in rows])
  Path(path).write_text(json.dumps(data, indent=1) + "\n")
