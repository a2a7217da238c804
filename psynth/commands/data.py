"""`python -m psynth data --config.data.out_dir=DIR [--config.data.limit_per_source=50]`.

Builds DIR/train.jsonl and DIR/val.jsonl (inputs and gold targets) from the benchmark files,
then DIR/val.branches.jsonl and DIR/train.branches.jsonl (worker outputs, text answers,
distill targets; fixed-branch examples need no decoding). A rerun continues an interrupted
generation. Settings: `cfg.data`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from psynth.data.branches import generate_branches, load_examples
from psynth.data.build import DEFAULT_BUILDERS, build_dataset
from psynth.loading import load

log = logging.getLogger(__name__)


def main(cfg, args: list[str] = ()) -> dict:
  """Builds, then generates; returns {split: {builder/kind: count}}."""
  d = cfg.data
  out = Path(d.out_dir)
  counts = build_dataset(d.data_dir or None, out, num_branches=d.num_branches, seed=d.seed,
                         limit_per_source=d.limit_per_source, val_fraction=d.val_fraction,
                         max_branch_words=d.max_branch_words,
                         distill_fraction=d.distill_fraction,
                         documented_fraction=d.documented_fraction,
                         builders=tuple(d.builders) or DEFAULT_BUILDERS)
  for split, c in counts.items():
    log.info("%s: %d examples %s", split, sum(c.values()), c)
  if d.generate:
    loaded = load(cfg.model.name, dtype=cfg.model.dtype, attention=cfg.model.attention)
    for split in ("val", "train"):
      generate_branches(loaded, load_examples(out / f"{split}.jsonl"),
                        out / f"{split}.branches.jsonl",
                        worker_max_new_tokens=d.worker_max_new_tokens,
                        max_new_tokens=d.max_new_tokens, batch_examples=d.batch_examples)
  return counts
