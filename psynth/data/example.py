"""A training/evaluation example for one fan-out step, and its on-disk form (one JSON line).

Data builders make `Example`s without worker outputs; branch generation fills
`branch_outputs` (and `text_answer`, what the text-concatenation synthesizer said) once with
the base model and saves them, so training re-encodes saved branches and never regenerates.
Fixed-branch examples (`meta["fixed"]`, see `fixed.py`) come with their outputs already set.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

KINDS = ("context", "aggregation", "distill")


def is_empty_branch(text: str) -> bool:
  """A branch output with nothing to encode: training tokenizes the stripped text, so an output
  of whitespace only gives it no token at all (even if the worker's tokens decoded to spaces
  or newlines)."""
  return text.strip() == ""


@dataclasses.dataclass
class Example:
  id: str  # unique across the whole data set, e.g. "hotpotqa/5a8b57f2/context"
  kind: str  # one of KINDS
  source: str  # the benchmark it came from ("hotpotqa", "gsm8k", "procedural", ...)
  question: str  # what the synthesizer is asked (also shown to every worker)
  branch_inputs: list[str]  # what worker i reads (an evidence chunk, a candidate, a sub-task)
  target: str  # the synthesizer's teacher-forced target text ("" until set for `distill`)
  branch_outputs: list[str] | None = None  # worker i's text (filled by branch generation)
  text_answer: str | None = None  # the text synthesizer's answer on the same branches
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"example {self.id!r}: kind={self.kind!r}; expected one of {KINDS}")
    if not self.branch_inputs:
      raise ValueError(f"example {self.id!r} has no branch inputs; needs at least one")
    if self.branch_outputs is not None and len(self.branch_outputs) != len(self.branch_inputs):
      raise ValueError(f"example {self.id!r}: {len(self.branch_outputs)} branch outputs for "
                       f"{len(self.branch_inputs)} branch inputs")

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

  @classmethod
  def from_dict(cls, d: dict, where: str = "") -> "Example":
    required = ("id", "kind", "source", "question", "branch_inputs", "target")
    missing = [k for k in required if k not in d]
    if missing:
      raise ValueError(f"{where or 'record'} is missing field(s) {missing}; an example needs "
                       f"{list(required)} (optional: branch_outputs, text_answer, meta)")
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})
