"""What an evaluation's results depend on, typed. Built once from the config at the command
line (`EvalSettings.from_config(cfg)`); DIR/run.json keeps it, and a rerun into the same DIR
must match it, so saved branches and predictions are never mixed across settings."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  model: str = "smollm2-135m-instruct"
  dtype: str = "float32"
  num_branches: int = 3  # workers per example (the reference uses 3)
  worker_max_new_tokens: int = 64
  max_new_tokens: int = 48  # the synthesizer's (and single's) answer budget, greedy
  worker_temperature: float = 0.7  # "sample" tasks only; "chunk" workers are greedy
  worker_top_p: float = 0.95
  mode: str = "shared_start"  # branch position mode of the cache methods
  max_branch_words: int = 120  # one evidence chunk ("chunk" tasks)
  seed: int = 0
  batch: int = 16  # examples per batched call (workers, then each method)
  data_dir: str = ""  # "" = $PSYNTH_DATA or ../shared/data
  # A training file (`python -m psynth data`'s train.jsonl): its source questions are left out
  # of every task, so a trained adapter is never scored on what it learned from.
  held_out_from: str = ""

  @classmethod
  def from_config(cls, cfg: Any, **overrides) -> "EvalSettings":
    """From a psynth config: the model, the synthesis lengths and mode, the seed and the data
    directory; then `cfg.eval`'s fields of the same names; then `overrides`. Absent fields
    keep the defaults above."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
      raise ValueError(f"unknown eval setting(s) {unknown}; accepted: {sorted(known)}")
    section = lambda name: cfg.get(name) or {}
    model, synthesis, data = section("model"), section("synthesis"), section("data")
    found = dict(model=model.get("name"), dtype=model.get("dtype"), seed=cfg.get("seed"),
                 data_dir=data.get("data_dir"),
                 worker_max_new_tokens=synthesis.get("worker_max_new_tokens"),
                 max_new_tokens=synthesis.get("max_new_tokens"), mode=synthesis.get("mode"))
    values = {k: v for k, v in found.items() if v is not None}
    values.update({k: v for k, v in section("eval").items() if k in known})
    values.update(overrides)
    return cls(**values)
