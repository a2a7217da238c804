"""bfloat16 against float32 on the same model: logits and greedy synthesis.

    python -m psynth bench precision [--json F] [--out F]

The model is loaded twice, parameters and activations in float32 and in bfloat16 (the
accelerator setting: norm statistics and softmax accumulate in float32; the LoRA and the
cache mapper stay float32 and are cast at use). Measured on the `facts` evaluation task's
first `examples` items (branch texts pasted before the question):
- teacher-forced logits of every prompt token, with the LoRA off (the base model, workers)
  and on (the synthesizer): max and mean absolute difference, the float32 logits' standard
  deviation for scale, and how often the arg-max token agrees;
- greedy synthesis by every method, batched: the share of replies identical in both dtypes
  and each dtype's accuracy (the task's own scoring).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx

from psynth.bench.throughput import facts_items
from psynth.bench.timing import markdown_table
from psynth.eval.tasks import TASKS
from psynth.model.transformer import forward, init_cache
from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.pipeline import fan_out_batch, synthesize_batch

METHODS = ("text", "naive", "psynth")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class LogitRow:
  lora: bool
  tokens: int  # prompt tokens compared
  max_abs_diff: float
  max_at_position: int  # where in its prompt the largest difference sits
  token_max_median: float  # per token, the largest difference over the vocabulary: median
  token_max_p99: float  # ... and 99th percentile
  mean_abs_diff: float
  float32_std: float  # spread of the float32 logits, for scale
  argmax_agreement: float


@dataclasses.dataclass
class SynthRow:
  method: str
  identical_fraction: float  # replies equal in both dtypes
  accuracy: dict[str, float]  # dtype -> share correct


@dataclasses.dataclass
class Result:
  model: str
  examples: int
  branches: int
  logits: list[LogitRow]
  synthesis: list[SynthRow]


def _prompts(items, tokenizer, max_tokens: int) -> list[list[int]]:
  texts = ["\n\n".join(it.branches) + "\n\n" + it.question for it in items]
  return [tokenizer(t)["input_ids"][:max_tokens] for t in texts]


def _logits(loaded, rows: list[list[int]], lora: bool, batch: int = 8):
  """Teacher-forced float32 logits of each row's tokens: one `[len, V]` array per row."""
  graphdef, state = nnx.split(loaded.model)
  step = jax.jit(lambda state, t, p, c: forward(nnx.merge(graphdef, state), t, p, c,
                                                attend_cache=False, lora=lora)[0])
  T = max(map(len, rows))
  out = []
  for k in range(0, len(rows), batch):
    chunk = rows[k:k + batch]
    tokens = np.zeros((batch, T), np.int32)  # the last chunk padded: one compiled shape
    positions = np.full((batch, T), -1, np.int32)
    for b, r in enumerate(chunk):
      tokens[b, :len(r)], positions[b, :len(r)] = r, np.arange(len(r))
    logits = np.asarray(step(state, tokens, positions, init_cache(loaded.config, batch, T)),
                        np.float32)
    out += [logits[b, :len(r)] for b, r in enumerate(chunk)]
  return out


def compare_logits(a: list[np.ndarray], b: list[np.ndarray], lora: bool) -> LogitRow:
  """float32 logits `a` against bfloat16 logits `b`, row by row (`[len, V]` each)."""
  worst, total, count, agree, moments, at = [], 0.0, 0, 0, np.zeros(3), 0
  for x, y in zip(a, b):
    diff = np.abs(x - y)
    per_token = diff.max(-1)
    if not worst or per_token.max() > max(w.max() for w in worst):
      at = int(per_token.argmax())
    worst.append(per_token)
    total, count = total + float(diff.sum()), count + diff.size
    agree += int((x.argmax(-1) == y.argmax(-1)).sum())
    moments += (x.size, float(x.sum()), float((x.astype(np.float64) ** 2).sum()))
  per_token = np.concatenate(worst)
  n, s1, s2 = moments
  return LogitRow(lora, len(per_token), float(per_token.max()), at,
                  float(np.median(per_token)), float(np.quantile(per_token, 0.99)),
                  total / count, float(np.sqrt(s2 / n - (s1 / n) ** 2)), agree / len(per_token))


def run(load: Callable, name: str, adapter, examples: int = 32, branches: int = 3,
        answer_tokens: int = 32, max_prompt_tokens: int = 384, root=None) -> Result:
  """`load(name, dtype=..., adapter=...)` builds each model in turn (one lives at a time)."""
  task = TASKS["facts"]
  items = facts_items(examples, branches, root)
  questions, outputs = [it.question for it in items], [list(it.branches) for it in items]
  logits: dict[tuple[str, bool], list[np.ndarray]] = {}
  replies: dict[tuple[str, str], list[str]] = {}
  for dtype in DTYPES:
    loaded = load(name, dtype=dtype, adapter=adapter)
    rows = _prompts(items, loaded.tokenizer, max_prompt_tokens)
    for lora in (False, True):
      logits[dtype, lora] = _logits(loaded, rows, lora)
    br = fan_out_batch(loaded, questions, outputs=outputs)
    for m in METHODS:
      replies[dtype, m] = [r.answer for r in synthesize_batch(
          loaded, questions, method=m, prepared=br,
          sampling=SamplingConfig(max_new_tokens=answer_tokens))]
    del loaded
  logit_rows = [compare_logits(logits["float32", lora], logits["bfloat16", lora], lora)
                for lora in (False, True)]
  synth_rows = []
  for m in METHODS:
    a, b = replies["float32", m], replies["bfloat16", m]
    acc = {d: float(np.mean([task.score(r, it).correct for r, it in zip(replies[d, m], items)]))
           for d in DTYPES}
    synth_rows.append(SynthRow(m, float(np.mean([x == y for x, y in zip(a, b)])), acc))
  return Result(name, len(items), branches, logit_rows, synth_rows)


def report(r: Result) -> str:
  logit_table = markdown_table(
      ["LoRA", "prompt tokens", "max abs diff (at position)", "per-token max: median",
       "per-token max: p99", "mean abs diff", "float32 logit std", "same arg-max"],
      [["on (synthesizer)" if x.lora else "off (base)", str(x.tokens),
        f"{x.max_abs_diff:.3f} ({x.max_at_position})", f"{x.token_max_median:.3f}",
        f"{x.token_max_p99:.3f}", f"{x.mean_abs_diff:.4f}", f"{x.float32_std:.2f}",
        f"{x.argmax_agreement:.4f}"] for x in r.logits])
  synth_table = markdown_table(
      ["method", "identical replies", "accuracy float32", "accuracy bfloat16"],
      [[x.method, f"{x.identical_fraction:.3f}", f"{x.accuracy['float32']:.3f}",
        f"{x.accuracy['bfloat16']:.3f}"] for x in r.synthesis])
  return (f"{r.model}: bfloat16 vs float32 on {r.examples} `facts` examples "
          f"({r.branches} branches each)\n\nteacher-forced logits of the prompts:\n\n"
          f"{logit_table}\n\ngreedy synthesis, batched:\n\n{synth_table}\n")


def write_json(r: Result, path: str | Path) -> None:
  Path(path).write_text(json.dumps(dataclasses.asdict(r), indent=1) + "\n")
