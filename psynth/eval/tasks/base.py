"""What an evaluation task is: its items (question, N worker inputs, gold) and how to score a reply.

Three ways to form the N branches (`Task.branching`):
  "sample"  every worker gets the whole problem and works it out; they differ because they
            sample (temperature, a per-example seed). Math, multiple choice, code, GAIA.
  "chunk"   worker i reads evidence chunk i only (paragraphs, passages, alerts / metrics);
            the answer needs what several of them read. HotpotQA, MuSiQue, ARC, D-Bot.
  "fixed"   no worker runs: `Item.branches` are the finished branch outputs themselves
            (evidence texts; encode them as `fan_out(loaded, question, outputs=branches)`,
            with "" inputs). Made-up facts, StrategyQA, ARC-Easy passages (`evidence.py`).
Workers see `prompts.worker(question, branch input)`, the synthesizer `question`, and
`single` (no workers) the question with `context`: all the evidence at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from psynth.synthesis.prompts import DEFAULT_SYSTEM

BRANCHINGS = ("sample", "chunk", "fixed")
SCORE_BY = ("reply", "likelihood")
# The branch input of a "sample" worker: the problem is already in its question.
WORK_IT_OUT = ("There is no document: the problem above is the whole task. Work it out "
               "yourself, step by step, and state your final answer.")


@dataclasses.dataclass(frozen=True)
class Item:
  id: str
  question: str  # asked of workers and synthesizer alike; ends with the answer format wanted
  # worker inputs (one evidence chunk each, or N work orders); "fixed": the branch outputs
  branches: tuple[str, ...]
  gold: Any  # JSON-able: what the task's `score` compares the reply with
  context: str = ""  # what `single` reads besides the question ("" for "sample" tasks)


@dataclasses.dataclass(frozen=True)
class Score:
  extracted: str | None  # the answer found in the reply (None: none found)
  correct: bool
  f1: float | None = None  # token F1, for open-answer QA


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  root: Path  # the benchmark data directory
  num_branches: int
  max_branch_words: int  # budget of one evidence chunk ("chunk" tasks)
  seed: int = 0  # for choices shuffles and distractor picks
  gaia_dir: str = ""


class TaskUnavailable(Exception):
  """A task whose data cannot be had here (GAIA offline): it is skipped, with this message."""


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  branching: str  # one of BRANCHINGS
  build: Callable[[BuildOptions], list[Item]]
  score: Callable[[str, Item], Score]
  system: str = DEFAULT_SYSTEM
  # The answer form the question ends with ("Answer with the letter ..."), repeated as the
  # synthesizer's last instruction; None: free text ("in one or two sentences").
  answer_format: str | None = None
  # Its items are training questions too (`psynth.data` builds examples from the same records):
  # it measures pipeline fidelity, not generalisation, unless run with `held_out_from`.
  overlaps_training: bool = False
  # "reply": each method generates a reply, which `score` reads; "likelihood": no generation,
  # each of `gold["options"]` is scored as the reply's start (`methods.option_replies`) and the
  # reply is the best one's letter (multiple choice the way small models are measured).
  score_by: str = "reply"

  def __post_init__(self):
    if self.branching not in BRANCHINGS:
      raise ValueError(f"task {self.name}: branching={self.branching!r}; expected one of "
                       f"{BRANCHINGS}")
    if self.score_by not in SCORE_BY:
      raise ValueError(f"task {self.name}: score_by={self.score_by!r}; expected one of "
                       f"{SCORE_BY}")


def work_orders(n: int) -> tuple[str, ...]:
  """The branch inputs of a "sample" task: the same work order for each of the n workers."""
  if n < 1:
    raise ValueError(f"num_branches={n}; need at least one worker")
  return (WORK_IT_OUT,) * n
