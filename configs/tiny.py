"""Tiny config for tests: a 2-layer random model with the default tokenizer; seconds per run.

    python -m psynth train --config=configs/tiny.py --config.workdir=/tmp/tiny --config.train.steps=5
"""

import ml_collections

from psynth import config_files


def get_config() -> ml_collections.ConfigDict:
  c = config_files.load("smollm2_135m")
  c.workdir = "runs/tiny"
  c.model.name = "tiny-random"
  c.lora.rank, c.lora.alpha = 4, 8.0
  c.data.out_dir = "runs/data/tiny"
  c.data.update(limit_per_source=5, worker_max_new_tokens=8, max_new_tokens=8)
  c.data.max_branch_tokens, c.data.max_target_tokens = 32, 24
  c.synthesis.worker_max_new_tokens, c.synthesis.max_new_tokens = 8, 8
  c.train.update(steps=20, batch_size=2, lr=1e-2, warmup_steps=2, eval_every=10, save_every=10,
                 val_accuracy_examples=4, val_batch=4)
  # Compile for 4 chips: synthesis rows over 2, KV heads over 2 (the tiny model has 2).
  c.compile.update(topology="v5e:2x2", synth_data=2, synth_tensor=2, synth_batch=2,
                   prefix_tokens=16, worker_row_tokens=48, synth_row_tokens=32,
                   branch_tokens=32, synth_prompt_tokens=16, new_tokens=8)
  return c
