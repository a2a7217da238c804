"""GAIA (validation) from a local copy; it is gated on the hub and not available offline.

A copy is found from `--gaia_dir` or $PSYNTH_GAIA: DIR/metadata.jsonl or
DIR/2023/validation/metadata.jsonl (the hub layout), attachments next to it. Without one the
task raises `TaskUnavailable` and the run skips it. Workers sample the whole question (text
attachments are pasted in, up to a budget; others are named only: workers have no tools).
Scored with GAIA's own quasi-exact match (numbers, comma lists, normalized strings).
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

from psynth.data.chunks import truncate_words
from psynth.eval.readers import checked, records
from psynth.eval.short_answer import extract_short_answer
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task, TaskUnavailable, work_orders

ENV_VAR = "PSYNTH_GAIA"
LAYOUTS = ("metadata.jsonl", "2023/validation/metadata.jsonl")
FIELDS = ("task_id", "Question", "Final answer")
TEXT_SUFFIXES = (".txt", ".csv", ".json", ".jsonld", ".md", ".py", ".xml", ".tsv")
GATED = ("GAIA is gated (gaia-benchmark/GAIA on the Hugging Face hub needs an accepted licence "
         "and a login) and is not available offline, so the gaia task is skipped. To run it, "
         "pass a local copy of its validation split with --gaia_dir=DIR or $PSYNTH_GAIA=DIR "
         f"(DIR/{LAYOUTS[0]} or DIR/{LAYOUTS[1]}).")
REPLY = ("Give only the final answer: a number, a few words, or a comma-separated list, "
         "after \"Final answer:\".")


def metadata_file(gaia_dir: str = "") -> Path:
  """The metadata.jsonl of the local GAIA copy; TaskUnavailable when none is configured."""
  where = gaia_dir or os.environ.get(ENV_VAR, "")
  if not where:
    raise TaskUnavailable(GATED)
  root = Path(where).expanduser()
  for rel in LAYOUTS:
    if (root / rel).is_file():
      return root / rel
  raise FileNotFoundError(f"GAIA directory {root} has no {' or '.join(LAYOUTS)}; pass the folder "
                          "of the validation split (with metadata.jsonl and its attachments)")


def _attachment(folder: Path, name: str, max_words: int) -> str:
  if not name:
    return ""
  path = folder / name
  if path.suffix.lower() in TEXT_SUFFIXES and path.is_file():
    text = path.read_text(encoding="utf-8", errors="replace")
    return f"\n\nAttached file {name}:\n{truncate_words(text, max_words)}"
  return f"\n\n(An attached file, {name}, cannot be read here.)"


def gaia(opts: BuildOptions) -> list[Item]:
  path = metadata_file(opts.gaia_dir)
  recs = checked(records(path), FIELDS, path)
  budget = opts.max_branch_words * opts.num_branches
  items = []
  for r in recs:
    attached = _attachment(path.parent, r.get("file_name") or "", budget)
    items.append(Item(r["task_id"], f"{r['Question'].strip()}{attached}\n\n{REPLY}",
                      work_orders(opts.num_branches), str(r["Final answer"])))
  return items


def _float(s: str) -> float | None:
  try:
    return float(s)
  except ValueError:
    return None


def _number(s: str) -> float | None:
  """A reply's number: "$1,932", "50%" and " 7 " count; GAIA's golds are plain (`_float`)."""
  return _float(re.sub(r"[$%,\s]", "", s))


def _norm(s: str, punctuation: bool = True) -> str:
  s = re.sub(r"\s", "", s).lower()
  return s.translate(str.maketrans("", "", string.punctuation)) if punctuation else s


def gaia_match(answer: str | None, gold: str) -> bool:
  """GAIA's scorer: a numeric gold needs the same number; a gold with , or ; the same list
  (element-wise); otherwise the same string up to case, spaces and punctuation."""
  if answer is None:
    return False
  if _float(gold) is not None:
    return _number(answer) == _float(gold)
  if any(c in gold for c in ",;"):
    golds, got = re.split(r"[,;]", gold), re.split(r"[,;]", answer)
    return len(golds) == len(got) and all(
        _number(a) == _float(g) if _float(g) is not None else _norm(a, False) == _norm(g, False)
        for a, g in zip(got, golds))
  return _norm(answer) == _norm(gold)


def score_gaia(reply: str, item: Item) -> Score:
  got = extract_short_answer(reply)
  return Score(got, gaia_match(got, item.gold))


TASKS = (Task("gaia", "sample", gaia, score_gaia, answer_format=REPLY),)
