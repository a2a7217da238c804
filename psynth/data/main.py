"""The data command: build train/val examples from the benchmark files, then generate branches.

    python -m psynth data --config=configs/smollm2_135m.py --config.data.out_dir=DIR

Writes DIR/train.jsonl and DIR/val.jsonl (inputs and gold targets), then
DIR/val.branches.jsonl and DIR/train.branches.jsonl (worker outputs, text answers, distill
targets). Rerunning continues an interrupted generation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ml_collections

from psynth.data.build import DEFAULT_BUILDERS, build_dataset

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
  """The `cfg.data` section (see the README for what each field does)."""
  return ml_collections.ConfigDict(dict(
      data_dir="",  # "" -> $PSYNTH_DATA, else ../shared/data next to the repository
      out_dir="data",  # train.jsonl, val.jsonl, *.branches.jsonl
      builders=DEFAULT_BUILDERS,  # build.BUILDERS has more (dbot_context), by name
      n_branches=3,
      seed=0,
      limit_per_source=200,  # records per builder; 0 = all
      val_fraction=0.1,
      max_words=120,  # per branch input
      distill_fraction=0.25,
      generate=True,  # False: build the example files only
      worker_tokens=48,
      answer_tokens=32,
      batch_examples=4,
  ))


def main(cfg: ml_collections.ConfigDict) -> dict:
  """Builds, then generates; needs cfg.data (above) and, to generate, cfg.model.name/dtype."""
  d = cfg.data
  out = Path(d.out_dir)
  counts = build_dataset(d.data_dir or None, out, n_branches=d.n_branches, seed=d.seed,
                         limit_per_source=d.limit_per_source, val_fraction=d.val_fraction,
                         max_words=d.max_words, distill_fraction=d.distill_fraction,
                         builders=tuple(d.builders))
  for split, c in counts.items():
    log.info("%s: %d examples %s", split, sum(c.values()), c)
  if d.generate:
    import psynth
    from psynth.data.branches import generate_branches, load_examples

    loaded = psynth.load(cfg.model.name, dtype=cfg.model.dtype)
    for split in ("val", "train"):
      generate_branches(loaded, load_examples(out / f"{split}.jsonl"),
                        out / f"{split}.branches.jsonl", worker_tokens=d.worker_tokens,
                        answer_tokens=d.answer_tokens, batch_examples=d.batch_examples)
  return counts
