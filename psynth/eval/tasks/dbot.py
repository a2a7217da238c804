"""Database diagnosis (D-Bot): root-cause classification of the 62 cases with alerts and metric
series. Worker 0 reads the alerts, the others the metric series round-robin
(`real_tasks.dbot_context`); the description/command fields, which name the injected anomaly,
are never read (`sources.read_dbot` drops them). The reply's first named option must be the
case's label set."""

from __future__ import annotations

from psynth.data import real_tasks
from psynth.data.sources import read_dbot
from psynth.eval import answers
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task

ROOT_CAUSE = "Answer with the root cause only."


def score_dbot(reply: str, item: Item) -> Score:
  """gold: {"answer": the label set as one option, "options": every option}."""
  got = answers.extract_label(reply, item.gold["options"])
  return Score(got, got == item.gold["answer"])


def dbot(opts: BuildOptions) -> list[Item]:
  cases = read_dbot(opts.root)
  options = real_tasks.dbot_options(cases)
  items = []
  for case in cases:
    ex = real_tasks.dbot_context(case, options, opts.num_branches, opts.max_branch_words)
    items.append(Item(case.id, f"{ex.question} {ROOT_CAUSE}",
                      tuple(ex.branch_inputs), {"answer": ex.target, "options": options},
                      "\n\n".join(ex.branch_inputs)))
  return items


TASKS = (Task("dbot", "chunk", dbot, score_dbot, answer_format=ROOT_CAUSE),)
