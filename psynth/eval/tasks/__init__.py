"""Every evaluation task by name; see `base` for what a task is."""

from __future__ import annotations

from psynth.eval.tasks import choice, coding, dbot, evidence, gaia, maths, multihop
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task, TaskUnavailable

TASKS: dict[str, Task] = {t.name: t for m in (maths, choice, coding, multihop, dbot, evidence, gaia)
                          for t in m.TASKS}


def get_tasks(names) -> list[Task]:
  """Tasks for a comma-separated string or a list of names, in the order given."""
  if isinstance(names, str):
    names = [n for n in names.split(",") if n.strip()]
  names = [n.strip() for n in names]
  unknown = [n for n in names if n not in TASKS]
  if unknown or not names:
    raise ValueError(f"tasks {unknown or names!r} unknown; choose from {sorted(TASKS)}")
  return [TASKS[n] for n in dict.fromkeys(names)]


__all__ = ["TASKS", "BuildOptions", "Item", "Score", "Task", "TaskUnavailable", "get_tasks"]
