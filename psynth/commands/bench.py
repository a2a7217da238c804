"""`python -m psynth bench prefill|ttft|throughput|precision [--out F] [--json F] [--plot F]`:
prefill and TTFT against HF transformers, batched against one-at-a-time synthesis, bfloat16
against float32; sizes in `cfg.bench`."""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from psynth.bench import precision, prefill, throughput, ttft
from psynth.commands.common import synth_adapter
from psynth.loading import load

_OUT = flags.DEFINE_string("out", None, "Also write the report (markdown) to this file.")
_JSON = flags.DEFINE_string("json", None, "ttft, throughput, precision: also write JSON here.")
_PLOT = flags.DEFINE_string("plot", None, "ttft: also draw the table as a PNG here.")
BENCHMARKS = ("prefill", "ttft", "throughput", "precision")


def main(cfg, args: list[str]) -> None:
  what = args[0] if args else "prefill"
  if what not in BENCHMARKS:
    raise app.UsageError(f"unknown benchmark {what!r}; available: {', '.join(BENCHMARKS)}")
  b, m = cfg.bench, cfg.model
  if what == "throughput":
    loaded = load(m.name, dtype=m.dtype, adapter=synth_adapter(m.name))
    result = throughput.run(loaded, b.throughput_examples, b.throughput_branches,
                            b.throughput_batch, b.throughput_answer_tokens, b.throughput_runs,
                            cfg.data.data_dir or None)
    report = throughput.report(result)
    if _JSON.value:
      throughput.write_json(result, _JSON.value)
  elif what == "precision":
    result = precision.run(load, m.name, synth_adapter(m.name), b.precision_examples,
                           b.throughput_branches, root=cfg.data.data_dir or None)
    report = precision.report(result)
    if _JSON.value:
      precision.write_json(result, _JSON.value)
  elif what == "prefill":
    report = prefill.run(load(m.name, dtype=m.dtype), tuple(b.prefill_lengths), b.runs,
                         b.decode_prompt, b.decode_tokens)
  else:
    loaded = load(m.name, dtype=m.dtype)
    rows = ttft.run(loaded, tuple(b.ttft_branches), tuple(b.ttft_branch_tokens), b.runs)
    report = ttft.report(rows, loaded, b.runs)
    if _JSON.value:
      ttft.write_json(rows, _JSON.value)
    if _PLOT.value:
      ttft.plot(rows, _PLOT.value)
  print(report)
  if _OUT.value:
    Path(_OUT.value).write_text(report)
