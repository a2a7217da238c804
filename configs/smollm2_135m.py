"""Default config: the embedded SmolLM2-135M-Instruct, runs on a 2-core laptop.

    python -m psynth generate --config=configs/smollm2_135m.py --config.sampling.temperature=0.7
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # "smollm2-135m-instruct" (embedded, no hub), an HF checkpoint dir, a .gguf file or a hub id.
  c.model = ml_collections.ConfigDict(dict(name="smollm2-135m-instruct", dtype="float32"))
  c.sampling = ml_collections.ConfigDict(
      dict(max_new_tokens=128, temperature=0.0, top_p=1.0, seed=0))
  c.synthesis = ml_collections.ConfigDict(dict(
      mode="shared_start", worker_max_new_tokens=64, max_new_tokens=48))
  c.bench = ml_collections.ConfigDict(dict(
      prefill_lengths=(256, 1024, 2048), runs=5, decode_prompt=256, decode_tokens=64,
      ttft_branches=(2, 4, 8), ttft_branch_tokens=(128, 512, 1024)))
  return c
