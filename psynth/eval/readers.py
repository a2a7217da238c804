"""Readers for the benchmark files `psynth.data.sources` does not cover: MATH-500, AIME 2024,
MMLU-STEM, PIQA, GPQA-Diamond (from its password zip, in memory), HumanEval, MBPP and MBPP+.

Plain json/csv parsing rather than the `datasets` json builder: MBPP+'s test inputs mix types
across records, which Arrow cannot type, and GPQA must never reach the disk decrypted (the
builder would cache it as Arrow files). Each reader returns the official records as dicts,
after checking that every record has the fields the tasks use.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Sequence

from psynth.data.sources import data_dir

# Published with the data (see its README): it keeps the questions out of web crawls, it is
# no secret. The plaintext must stay in memory.
GPQA_ZIP, GPQA_MEMBER = "gpqa/gpqa_diamond.zip", "gpqa_diamond.csv"
GPQA_PASSWORD = b"deserted-untie-orchid"
GPQA_FIELDS = ("Record ID", "Question", "Correct Answer", "Incorrect Answer 1",
               "Incorrect Answer 2", "Incorrect Answer 3")
MBPP_FILES = {  # variant -> (file, fields the tasks use)
    "sanitized": ("mbpp/sanitized-mbpp.json", ("task_id", "prompt", "test_list")),
    "plus": ("mbpp/mbppplus_v0.1.0.json", ("task_id", "prompt", "entry_point", "assertion")),
}
MBPP_TEST_IDS = range(11, 511)  # the official test split of MBPP (task ids 11..510)


def records(path: Path) -> list[dict]:
  """The records of a JSON-lines or JSON-array file (optionally .gz)."""
  if not path.is_file():
    siblings = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
    raise FileNotFoundError(f"{path} does not exist; {path.parent} holds {siblings or 'nothing'}")
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt", encoding="utf-8") as f:
    text = f.read()
  if text.lstrip().startswith("["):
    return json.loads(text)
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def checked(recs: list[dict], fields: Sequence[str], where: str | Path) -> list[dict]:
  """`recs` unchanged, after checking each has every field in `fields` (not null)."""
  for i, r in enumerate(recs):
    missing = [f for f in fields if r.get(f) is None]
    if missing:
      raise ValueError(f"{where}: record {i} lacks {missing}; the official schema has "
                       f"{list(fields)}")
  return recs


def _read(root, rel: str, fields: Sequence[str]) -> list[dict]:
  path = data_dir(root) / rel
  return checked(records(path), fields, path)


def read_math500(root=None) -> list[dict]:
  return _read(root, "math500/test.jsonl", ("unique_id", "problem", "answer"))


def read_aime24(root=None) -> list[dict]:
  return _read(root, "aime24/test.jsonl", ("id", "problem", "answer"))


def read_mmlu_stem(root=None) -> list[dict]:
  return _read(root, "mmlu_stem/test.jsonl", ("question", "choices", "answer"))


def read_piqa(root=None) -> list[dict]:
  """PIQA validation: goal, sol1, sol2 and its `label` (0 or 1) from the aligned labels file."""
  recs = _read(root, "piqa/valid.jsonl", ("goal", "sol1", "sol2"))
  path = data_dir(root) / "piqa/valid-labels.lst"
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; PIQA's labels come in a separate file")
  labels = [l.strip() for l in path.read_text().splitlines() if l.strip()]
  if len(labels) != len(recs) or set(labels) - {"0", "1"}:
    raise ValueError(f"{path}: {len(labels)} labels (values {sorted(set(labels))}) for "
                     f"{len(recs)} records; expected one 0 or 1 per record")
  return [{**r, "label": int(l)} for r, l in zip(recs, labels)]


def read_humaneval(root=None) -> list[dict]:
  return _read(root, "humaneval/HumanEval.jsonl.gz", ("task_id", "prompt", "entry_point", "test"))


def read_mbpp(variant: str = "sanitized", root=None) -> list[dict]:
  """MBPP sanitized (its test split: 257 of 427) or MBPP+ v0.1.0 (all 399)."""
  if variant not in MBPP_FILES:
    raise ValueError(f"mbpp variant {variant!r} unknown; choose from {sorted(MBPP_FILES)}")
  rel, fields = MBPP_FILES[variant]
  recs = _read(root, rel, fields)
  return [r for r in recs if r["task_id"] in MBPP_TEST_IDS] if variant == "sanitized" else recs


def read_gpqa_diamond(root=None) -> list[dict]:
  """GPQA-Diamond's 198 rows, decrypted and parsed in memory (nothing is written out)."""
  path = data_dir(root) / GPQA_ZIP
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; expected the password zip of GPQA-Diamond")
  with zipfile.ZipFile(path) as z:
    if GPQA_MEMBER not in z.namelist():
      raise ValueError(f"{path} holds {z.namelist()}; expected {GPQA_MEMBER!r}")
    text = z.read(GPQA_MEMBER, pwd=GPQA_PASSWORD).decode("utf-8")
  return checked(list(csv.DictReader(io.StringIO(text))), GPQA_FIELDS, f"{path}:{GPQA_MEMBER}")
