"""`python -m psynth train --config.workdir=DIR [--config.train.steps=N]`: start-up (several
processes if `cfg.dist` says so), the data of `cfg.data.out_dir`, the trainer, and a summary
at the end. The adapter is written to DIR/adapter (the best by val accuracy: DIR/best_adapter).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

from psynth import sharding
from psynth.loading import load
from psynth.train.data import training_data
from psynth.train.settings import TrainSettings
from psynth.train.trainer import History, Trainer

log = logging.getLogger(__name__)


def main(cfg, args: list[str] = ()) -> tuple[Trainer, History]:
  """Trains as `cfg` says; returns the trainer and its history."""
  d = cfg.dist
  sharding.init_distributed(d.coordinator, d.num_processes, d.process_id, d.auto)
  log.info("process %d of %d, %d devices (%d local)", jax.process_index(), jax.process_count(),
           jax.device_count(), jax.local_device_count())
  train, val = training_data(cfg.data.out_dir)
  loaded = load(cfg.model.name, dtype=cfg.model.dtype, attention=cfg.model.attention)
  trainer = Trainer(loaded, TrainSettings.from_config(cfg))
  hist = trainer.fit(train, val)
  adapter = trainer.save_adapter(Path(cfg.workdir) / "adapter")
  if jax.process_index() == 0:
    print(summary(hist, cfg.train.steps, cfg.workdir, adapter))
  return trainer, hist


def summary(hist: History, steps: int, workdir: str, adapter) -> str:
  first, last = (hist.steps[0], hist.steps[-1]) if hist.steps else ("-", "-")
  lines = [f"steps {first}..{last} of {steps}; workdir {workdir}"]
  if hist.losses:
    lines.append(f"train loss: first {hist.losses[0]:.4f}, last {hist.losses[-1]:.4f}")
  if hist.step_s:
    lines.append(f"step time median {np.median(hist.step_s):.3f} s, "
                 f"{np.median(hist.tokens_per_s):.0f} tokens/s (first step of each shape incl. "
                 f"compile: {hist.compile_s:.1f} s)")
  if hist.naive_eval is not None and hist.eval:
    lines.append(f"held-out loss: naive cache path {hist.naive_eval:.4f}, trained "
                 f"{hist.eval[-1][1]:.4f} (step {hist.eval[-1][0]}); text synthesis "
                 f"{hist.text_eval:.4f}")
  lines.append(f"adapter (LoRA + mapper): {adapter}")
  return "\n".join(lines)
