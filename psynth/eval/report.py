"""Predictions -> `summary.json`, `paired.json`, `results.md`, `results.png`; `merge_main`
combines the shards' files.

summary.json: task -> method -> {accuracy, ci_low, ci_high, n, ttft_s} (Wilson 95% interval;
mean TTFT in seconds), plus `ttft_ratio_to_text` when `text` ran and `f1` for open-answer QA.
paired.json: for psynth - text and psynth - naive (when they ran), the mean paired difference
in accuracy on the same examples with a paired-bootstrap 95% interval, per task and pooled
over every task of the run. It covers every prediction under DIR, whichever run or shard
wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

from psynth import atomic
from psynth.eval import records
from psynth.eval.intervals import bootstrap_interval, wilson_interval
from psynth.eval.methods import METHODS



def method_stats(recs: list[dict]) -> dict:
  """Accuracy with its Wilson 95% interval, n and mean TTFT of one task x method."""
  n = len(recs)
  hits = sum(bool(r["correct"]) for r in recs)
  low, high = wilson_interval(hits, n)
  out = {"accuracy": hits / n, "ci_low": low, "ci_high": high, "n": n,
         "ttft_s": sum(r["ttft_s"] for r in recs) / n}
  f1 = [r["f1"] for r in recs if r.get("f1") is not None]
  if f1:
    out["f1"] = sum(f1) / len(f1)
  return out


def _method_order(methods) -> list[str]:
  return sorted(methods, key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))


def summarize(preds: dict[str, dict[str, list[dict]]]) -> dict:
  """task -> method -> stats, for predictions grouped as task -> method -> records."""
  summary = {}
  for task, by_method in preds.items():
    rows = {m: method_stats(by_method[m]) for m in _method_order(by_method) if by_method[m]}
    text = rows.get("text", {}).get("ttft_s")
    for stats in rows.values():
      if text:
        stats["ttft_ratio_to_text"] = stats["ttft_s"] / text
    if rows:
      summary[task] = rows
  return summary


PAIRS = (("psynth", "text"), ("psynth", "naive"))
POOLED = "pooled"


def _diff_stats(diffs: list[float]) -> dict:
  low, high = bootstrap_interval(diffs)
  return {"diff": sum(diffs) / len(diffs), "ci_low": low, "ci_high": high, "n": len(diffs)}


def paired(preds: dict[str, dict[str, list[dict]]]) -> dict:
  """"a-b" -> task (and "pooled") -> the mean paired accuracy difference with its 95% interval
  (percentile bootstrap over examples), on the examples both methods answered."""
  out = {}
  for a, b in PAIRS:
    rows, pooled = {}, []
    for task, by_method in preds.items():
      if not by_method.get(a) or not by_method.get(b):
        continue
      other = {r["id"]: bool(r["correct"]) for r in by_method[b]}
      diffs = [float(bool(r["correct"])) - float(other[r["id"]]) for r in by_method[a]
               if r["id"] in other]
      if diffs:
        rows[task] = _diff_stats(diffs)
        pooled += diffs
    if rows:
      rows[POOLED] = _diff_stats(pooled)
      out[f"{a}-{b}"] = rows
  return out


def paired_markdown(pairs: dict) -> str:
  if not pairs:
    return ""
  lines = ["| difference | task | n | accuracy difference (95% CI) |", "|---|---|---:|---|"]
  for name, rows in pairs.items():
    for task, d in rows.items():
      lines.append(f"| {name.replace('-', ' - ')} | {task} | {d['n']} | {100 * d['diff']:+.1f} "
                   f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] |")
  lines += ["", "Paired on the same examples (and the same branches); interval: percentile "
                "bootstrap over examples, 2,000 resamples. Pooled: every example of every task "
                "above."]
  return "\n".join(lines) + "\n"


def plot(summary: dict, path: str | Path) -> None:
  """Accuracy with its interval per task and method; beside it, TTFT as a ratio to text."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  tasks = list(summary)
  methods = _method_order({m for rows in summary.values() for m in rows})
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
  width = 0.8 / len(methods)
  for i, m in enumerate(methods):
    xs = np.arange(len(tasks)) + (i - (len(methods) - 1) / 2) * width
    acc = [100 * summary[t][m]["accuracy"] if m in summary[t] else np.nan for t in tasks]
    err = [[100 * (summary[t][m]["accuracy"] - summary[t][m]["ci_low"]) if m in summary[t]
            else 0 for t in tasks],
           [100 * (summary[t][m]["ci_high"] - summary[t][m]["accuracy"]) if m in summary[t]
            else 0 for t in tasks]]
    ax.bar(xs, acc, width, yerr=err, capsize=2, label=m)
    ratio = [summary[t][m].get("ttft_ratio_to_text", np.nan) if m in summary[t] else np.nan
             for t in tasks]
    bx.bar(xs, ratio, width, label=m)
  for a, title, ylabel in ((ax, "Accuracy (Wilson 95% interval)", "accuracy (%)"),
                           (bx, "Time to first token, relative to text", "TTFT / text TTFT")):
    a.set_xticks(np.arange(len(tasks)), tasks, rotation=20)
    a.set_title(title)
    a.set_ylabel(ylabel)
  bx.axhline(1.0, color="grey", lw=0.8)
  ax.legend(ncol=len(methods), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown(summary: dict, skipped: dict[str, str] | None = None) -> str:
  lines = ["| task | method | n | accuracy (95% CI) | F1 | mean TTFT | TTFT / text |",
           "|---|---|---:|---|---:|---:|---:|"]
  for task, rows in summary.items():
    for method, s in rows.items():
      f1 = f"{100 * s['f1']:.1f}" if "f1" in s else ""
      ratio = f"{s['ttft_ratio_to_text']:.2f}x" if "ttft_ratio_to_text" in s else "n/a"
      lines.append(f"| {task} | {method} | {s['n']} | {100 * s['accuracy']:.1f}% "
                   f"[{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}] | {f1} | "
                   f"{1000 * s['ttft_s']:.0f} ms | {ratio} |")
  lines += ["", "Accuracy with a Wilson 95% interval; F1: SQuAD token F1 (open-answer QA). TTFT: "
                "mean time to the first answer token (single: from its prompt; synthesis: from "
                "ready branches, workers not included), compilation excluded."]
  for task, why in (skipped or {}).items():
    lines += ["", f"Skipped {task}: {why}"]
  return "\n".join(lines) + "\n"


def _write_jsonl(path: Path, recs: list[dict]) -> None:
  atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))


def merge_main(output_dir: str | Path) -> dict:
  """Combines every shard's predictions under DIR into predictions/{task}/{method}.jsonl
  (one record per example, in the task's order), summary.json and results.md."""
  out = Path(output_dir)
  pred_dir = out / "predictions"
  if not pred_dir.is_dir():
    raise FileNotFoundError(f"{out} has no predictions/ folder; run `python -m psynth eval "
                            f"--config.eval.output_dir={out} ...` (every shard) before merging")
  preds: dict[str, dict[str, list[dict]]] = {}
  for task_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
    methods = {p.name.split(".shard-")[0] for p in task_dir.glob(records.SHARD_GLOB)}
    for method in _method_order(methods):
      by_id = {}
      for r in records.read_shards(task_dir, method):
        by_id.setdefault(r["id"], r)  # the same example from two shardings: the first
      recs = sorted(by_id.values(), key=lambda r: r["index"])
      _write_jsonl(task_dir / f"{method}.jsonl", recs)
      preds.setdefault(task_dir.name, {})[method] = recs
  summary = summarize(preds)
  pairs = paired(preds)
  skipped_file = out / "skipped.json"
  skipped = json.loads(skipped_file.read_text()) if skipped_file.is_file() else {}
  records.write_json(out / "summary.json", summary)
  records.write_json(out / "paired.json", pairs)
  text = markdown(summary, skipped)
  if pairs:
    text += "\n" + paired_markdown(pairs)
  atomic.write_text(out / "results.md", text)
  if summary:
    plot(summary, out / "results.png")
  return summary
