"""Reference scale: Qwen3-14B, LoRA 16/32 on q/k/v/o, lr 1e-4, 3 workers (the paper's setting).

For a TPU pod (see launch/tpu_pod.sh); here only its shapes are checked, with jax.eval_shape
(tests/test_train.py). `hf_config` holds the checkpoint's config.json fields for that check.

    python -m psynth train --config=configs/qwen3_14b.py --config.workdir=gs://BUCKET/run
"""

import ml_collections

from psynth import config_files


def get_config() -> ml_collections.ConfigDict:
  c = config_files.load("smollm2_135m")
  c.workdir = "runs/qwen3_14b"
  c.model.name, c.model.dtype = "Qwen/Qwen3-14B", "bfloat16"
  c.hf_config = ml_collections.ConfigDict(dict(
      architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=5120,
      intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
      num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
      rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
      attention_bias=False))
  c.lora.rank, c.lora.alpha = 16, 32.0
  c.data.out_dir = "runs/data/qwen3_14b"
  c.data.max_branch_tokens, c.data.max_target_tokens = 1024, 512
  c.train.update(steps=2000, batch_size=64, grad_accum=4, lr=1e-4, warmup_steps=100,
                 eval_every=200, save_every=200, scan_layers=True, remat=True)
  # A v5p-64-like pod: 4-way tensor parallel inside a host, the rest data x fsdp.
  c.mesh.update(data=-1, fsdp=8, tensor=4)
  c.dist.auto = True
  return c
