"""Reference scale: Qwen3-14B, LoRA 16/32 on q/k/v/o, lr 1e-4, 3 workers (the paper's setting).

For a TPU pod (see launch/tpu_pod.sh); here its shapes are checked with jax.eval_shape
(tests/test_train.py) and its functions compiled for TPU pods without a TPU (results in
results/tpu_compile.md). `hf_config` holds the checkpoint's config.json fields for both.

    python -m psynth train --config=configs/qwen3_14b.py --config.workdir=gs://BUCKET/run
    python -m psynth compile --config=configs/qwen3_14b.py --config.compile.functions=train
"""

import ml_collections

from psynth import config_files


def get_config() -> ml_collections.ConfigDict:
  c = config_files.load("smollm2_135m")
  c.workdir = "runs/qwen3_14b"
  c.model.update(name="Qwen/Qwen3-14B", dtype="bfloat16", scan_layers=True)
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
                 eval_every=200, save_every=200, remat=True)
  # A v5p-64-like pod: 4-way tensor parallel inside a host, the rest data x fsdp.
  c.mesh.update(data=-1, fsdp=8, tensor=4)
  c.dist.auto = True
  # `python -m psynth compile`: the train step on v5p-64 as above (3 branches x 1024-slot
  # worker rows, a 640-token synthesizer row); synthesis: 3 branches x 2048 tokens, all chips
  # on the tensor axis (--config.compile.topology=v5e-8 --config.compile.functions=prefill,decode).
  c.compile.update(topology="v5p-64", prefix_tokens=128, worker_row_tokens=1024,
                   synth_row_tokens=640, branches=3, branch_tokens=2048, synth_prompt_tokens=128,
                   new_tokens=512)
  return c
