"""The training data a run reads: `python -m psynth data`'s {train,val}.branches.jsonl."""

from __future__ import annotations

from pathlib import Path

from psynth.data.branches import load_examples
from psynth.data.example import Example


def training_data(out_dir: str | Path) -> tuple[list[Example], list[Example]]:
  """train/val examples with their branches from `out_dir` (`cfg.data.out_dir`)."""
  out = Path(out_dir)
  if not (out / "train.branches.jsonl").is_file():
    raise FileNotFoundError(
        f"no training data in {out} (train.branches.jsonl, val.branches.jsonl); build it with "
        f"`python -m psynth data --config=...` or point --config.data.out_dir at it")
  train = load_examples(out / "train.branches.jsonl")
  val = load_examples(out / "val.branches.jsonl") if (out / "val.branches.jsonl").is_file() else []
  for ex in train + val:
    if ex.branch_outputs is None:
      raise ValueError(f"example {ex.id!r} in {out} has no branch_outputs; run branch "
                       "generation (python -m psynth data) first")
  return train, val
