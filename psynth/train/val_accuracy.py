"""Validation answer accuracy while training: greedy synthesis of held-out examples, batched,
scored by whether the reply names every gold answer (as the evaluation's evidence tasks do).

The gold answers of an example are `meta["answers"]` (the data builders set them), else its
target without the final period. The best adapter so far and its accuracy are kept under
the workdir (`best_adapter/`, `best.json`), so a resumed run keeps comparing against it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from psynth import atomic
from psynth.data.example import Example
from psynth.eval.metrics import contains_answer
from psynth.loading import Loaded
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.pipeline import fan_out_batch, synthesize_batch
from psynth.train.batch import branch_bucket

BEST = "best.json"


def gold_answers(ex: Example) -> list[str]:
  return list(ex.meta.get("answers") or [ex.target.strip().rstrip(".")])


def score(reply: str, ex: Example) -> bool:
  return all(contains_answer(reply, g) for g in gold_answers(ex))


def inference_model(loaded: Loaded, model) -> Loaded:
  """`loaded` with `model` (the trainer's: base + LoRA) in place of its own."""
  return Loaded(model, loaded.tokenizer, loaded.config, loaded.path, loaded.eos_ids)


def replies(infer: Loaded, examples: Sequence[Example], method: str, adapter: Adapter | None,
            *, batch: int, branch_slots: int, max_new_tokens: int) -> list[str]:
  """Greedy replies of `method` to every example, `batch` examples at a time: grouped by
  branch bucket, the last batch of a group filled up with repeats, branch caches padded to
  `branch_slots`, so every call has one of a few shapes (compiled once each)."""
  groups: dict[int, list[int]] = {}
  for i, ex in enumerate(examples):
    groups.setdefault(branch_bucket(len(ex.branch_inputs)), []).append(i)
  out: dict[int, str] = {}
  for _, members in sorted(groups.items()):
    for k in range(0, len(members), batch):
      idx = members[k:k + batch]
      exs = [examples[i] for i in idx + [idx[-1]] * (batch - len(idx))]
      # Saved outputs, encoded after worker prompts on their inputs ("" for a fixed example's,
      # its document for a documented copy's), as training encodes them.
      br = fan_out_batch(infer, [ex.question for ex in exs], [ex.branch_inputs for ex in exs],
                         outputs=[ex.branch_outputs for ex in exs], min_branch_slots=branch_slots)
      res = synthesize_batch(infer, [ex.question for ex in exs], method=method, adapter=adapter,
                             prepared=br, sampling=SamplingConfig(max_new_tokens=max_new_tokens),
                             answer_format=[ex.meta.get("answer_format") for ex in exs])
      out.update({i: r.answer for i, r in zip(idx, res)})
  return [out[i] for i in range(len(examples))]


def accuracy(infer: Loaded, examples: Sequence[Example], method: str, mapper, *, batch: int,
             branch_slots: int, max_new_tokens: int) -> float:
  """Share of `examples` whose reply names every gold answer (`replies` for the arguments)."""
  adapter = Adapter(mapper, lora=True) if method == "psynth" else None
  got = replies(infer, examples, method, adapter, batch=int(batch),
                branch_slots=int(branch_slots), max_new_tokens=int(max_new_tokens))
  return sum(score(r, ex) for r, ex in zip(got, examples)) / max(len(examples), 1)


def read_best(workdir: str) -> tuple[int, float] | None:
  path = Path(workdir) / BEST
  if not path.exists():
    return None
  d = json.loads(path.read_text())
  return int(d["step"]), float(d["accuracy"])


def write_best(workdir: str, step: int, accuracy: float, loss: float) -> None:
  atomic.write_text(Path(workdir) / BEST, json.dumps(
      {"step": step, "accuracy": accuracy, "val_loss": loss}, indent=1) + "\n")


BASELINES = "baselines.json"


def baselines_key(model_name: str, signature: dict, val: Sequence[Example],
                  acc: Sequence[Example], settings: dict) -> str:
  """What the untrained baselines depend on: the base model, the val examples scored, and
  the lengths/mode they are scored with (not the adapter, which they do not use)."""
  blob = json.dumps([model_name, signature, [ex.id for ex in val], [ex.id for ex in acc],
                     settings], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_baselines(path: str | Path, key: str) -> dict[str, float] | None:
  """The baselines a run (this one before a restart, or another run on the same val data and
  base model: copy its file) measured, if they were measured under `key`."""
  path = Path(path)
  if not path.exists():
    return None
  d = json.loads(path.read_text())
  return d["scalars"] if d.get("key") == key else None


def write_baselines(path: str | Path, key: str, scalars: dict[str, float]) -> None:
  atomic.write_text(Path(path), json.dumps({"key": key, "scalars": scalars}, indent=1) + "\n")
