"""`python -m psynth train`: start-up, data, the trainer, and a summary at the end."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

from psynth import sharding
from psynth.data.branches import load_examples
from psynth.data.example import Example

log = logging.getLogger(__name__)


def training_data(cfg) -> tuple[list[Example], list[Example]]:
  """train/val examples with generated branches from `cfg.data.out_dir`."""
  out = Path(cfg.data.out_dir)
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


def run(cfg):
  """Trains as `cfg` says; returns the trainer and its history."""
  import psynth
  from psynth.train.trainer import Trainer

  d = cfg.dist
  sharding.init_distributed(d.coordinator, d.num_processes, d.process_id, d.auto)
  log.info("process %d of %d, %d devices (%d local)", jax.process_index(), jax.process_count(),
           jax.device_count(), jax.local_device_count())
  train, val = training_data(cfg)
  loaded = psynth.load(cfg.model.name, dtype=cfg.model.dtype)
  trainer = Trainer(loaded, cfg)
  hist = trainer.fit(train, val)
  adapter = trainer.save_adapter(Path(cfg.workdir) / "adapter")
  if jax.process_index() == 0:
    lines = [f"steps {hist.steps[0] if hist.steps else '-'}..{hist.steps[-1] if hist.steps else '-'}"
             f" of {cfg.train.steps}; workdir {cfg.workdir}"]
    if hist.losses:
      lines.append(f"train loss: first {hist.losses[0]:.4f}, last {hist.losses[-1]:.4f}")
    if hist.step_s:
      lines.append(f"step time median {np.median(hist.step_s):.3f} s, "
                   f"{np.median(hist.tokens_per_s):.0f} tokens/s (first step of each shape incl. compile: "
                   f"{hist.compile_s:.1f} s)")
    if hist.naive_eval is not None and hist.eval:
      lines.append(f"held-out loss: naive cache path {hist.naive_eval:.4f}, trained "
                   f"{hist.eval[-1][1]:.4f} (step {hist.eval[-1][0]}); text synthesis "
                   f"{hist.text_eval:.4f}")
    lines.append(f"adapter (LoRA + mapper): {adapter}")
    print("\n".join(lines))
  return trainer, hist
