"""Fixed-branch examples in the form a real fan-out leaves: a worker read a document and wrote
its notes.

A fixed example's branches are evidence encoded as finished outputs after a worker prompt with
no document (`branch_inputs` are ""). A worker that read a document leaves a cache whose notes
also attended to that document, and an adapter trained only on the first form does worse on
the second (the built-in demo: `tests/test_shipped_adapter.py`). A documented copy gives every
branch a document: its evidence text with real sentences around it (on each side with
probability 1/2, 8-24 words), and keeps the evidence as the worker's notes, the extract a
worker writes ("write down what it says that helps answer the question"). Nothing else
changes: same question, target, answers, group (so the split keeps a copy with its original).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from psynth.data import seeds
from psynth.data.example import Example
from psynth.data.fixed import MIN_FILL_WORDS, real_text

CONTEXT_WORDS = (MIN_FILL_WORDS, 24)  # real text before / after the evidence, when there is some


def document(evidence: str, docs: Sequence[Sequence[str]], rng: random.Random) -> str:
  """`evidence` with 0-24 words of real text (whole sentences) before and after it."""
  parts = [evidence]
  for side in (0, 1):
    if rng.random() < 0.5:
      context = " ".join(real_text(docs, rng.randint(*CONTEXT_WORDS), rng))
      parts.insert(0 if side == 0 else len(parts), context)
  return " ".join(parts)


def documented_copy(ex: Example, docs: Sequence[Sequence[str]], rng: random.Random) -> Example:
  """`ex` (fixed) as notes written after reading documents: id "{id}/documented"."""
  if not ex.meta.get("fixed") or ex.branch_outputs is None:
    raise ValueError(f"example {ex.id!r} is not a fixed-branch example; only those have "
                     "finished evidence to turn into documents")
  inputs = [document(o, docs, rng) for o in ex.branch_outputs]
  return dataclasses.replace(ex, id=f"{ex.id}/documented", branch_inputs=inputs,
                             branch_outputs=list(ex.branch_outputs),
                             meta=dict(ex.meta, documented=True))


def documented_copies(examples: Sequence[Example], fraction: float, seed: int,
                      docs: Sequence[Sequence[str]]) -> list[Example]:
  """Documented copies of a seeded `fraction` of the fixed examples (per example, so a copy
  does not change when the other examples do)."""
  return [documented_copy(ex, docs, seeds.rng(seed, "documented", ex.id)) for ex in examples
          if ex.meta.get("fixed") and seeds.hash01(seed, "documented", ex.id) < fraction]
