"""`tiny-random`: a 2-layer random Llama with the default model's tokenizer, for fast tests.

It speaks no language, but it has the real tokenizer and chat template, so every pipeline
(workers, cache synthesis, training, export) runs end to end on it in seconds. Built once
with `transformers` (seeded, so identical everywhere) next to the default model.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

from psynth.atomic import atomic_dir
from psynth.convert.default_model import ensure_default_model
from psynth.paths import cache_root

TINY_MODEL = "tiny-random"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json", "chat_template.jinja")
# Shapes: GQA (4 query heads, 2 KV heads), the default model's vocab and rope theta.
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


def ensure_tiny_model() -> Path:
  """The tiny model's HF checkpoint directory, built on first use."""
  target = cache_root() / TINY_MODEL
  if (target / "model.safetensors").is_file():
    return target
  source = ensure_default_model()
  target.parent.mkdir(parents=True, exist_ok=True)
  with open(target.parent / f".{TINY_MODEL}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if (target / "model.safetensors").is_file():
      return target
    import torch
    import transformers

    vocab = transformers.AutoConfig.from_pretrained(source).vocab_size
    config = transformers.LlamaConfig(vocab_size=vocab, **TINY_SHAPE)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    # With HF's 0.02 init a 64-wide tied embedding caps every logit near +-1.3: no prediction
    # could be confident and a loss could hardly halve. 0.5 gives logits room to move.
    with torch.no_grad():
      torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.5)
    with atomic_dir(target) as tmp:
      model.save_pretrained(tmp, safe_serialization=True)
      for name in _TOKENIZER_FILES:
        if (source / name).is_file():
          shutil.copy(source / name, tmp / name)
  return target
