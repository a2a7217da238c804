"""Shared fixtures: tiny random HF models built in-process (no download)."""

from __future__ import annotations

import os

# Mesh tests need several devices; every test sees the same 8 simulated CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Tests run on CPU; libtpu (installed for `psynth compile`) is loaded only by the compile tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
import torch

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0)

# name -> (transformers config class name, overrides). Heads: MHA 4/4, GQA 4/2, MQA 4/1.
TINY_MODELS = {
    "llama_mha": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama_gqa": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama_mqa": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=1,
                                      attention_bias=True, tie_word_embeddings=True)),
    "llama3_rope": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64))),
    "linear_rope": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0))),
    "yarn_rope": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=128))),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32)),
}


def make_hf_model(name: str, seed: int = 0):
  import transformers
  cls_name, overrides = TINY_MODELS[name]
  kw = dict(TINY, **overrides)
  if "rope_parameters" in kw:
    kw.pop("rope_theta")
  config = getattr(transformers, cls_name)(**kw)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  # Norm weights are ones at init; random ones make the parity test see every scale.
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "norm" in n or n.endswith("bias"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in n else 0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """name -> (HF checkpoint dir, HF torch model); each built and saved once per session."""
  made = {}

  def get(name: str):
    if name not in made:
      model = make_hf_model(name)
      path = tmp_path_factory.mktemp(name)
      model.save_pretrained(path)
      made[name] = (path, model)
    return made[name]

  return get


def padded_batch(vocab: int, lengths, seed=0):
  """Random tokens `[B, T]`, attention mask (right padding) and psynth positions (-1 = pad)."""
  T = max(lengths)
  rng = np.random.RandomState(seed)
  tokens = rng.randint(0, vocab, (len(lengths), T)).astype(np.int32)
  mask = np.arange(T)[None] < np.asarray(lengths)[:, None]
  positions = np.where(mask, np.arange(T)[None], -1).astype(np.int32)
  return tokens, mask, positions


def run_programs(programs, limits, workers: int = 2):
  """`sandbox.run_program` over many programs, `workers` at a time, results in input order."""
  import concurrent.futures

  from psynth.eval.sandbox import run_program
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # threads only wait on children
    return list(pool.map(lambda p: run_program(p, limits), programs))


def tiny_synthesizer(path):
  """A tiny model (checkpoint `path`) with a LoRA and a per-head mapper that both change
  answers: (model, mapper)."""
  import jax.numpy as jnp
  from flax import nnx
  from psynth.cache import mappers
  from psynth.convert.hf_checkpoint import load_params
  from psynth.model.config import ModelConfig
  from psynth.model.lora import add_lora
  model = add_lora(load_params(ModelConfig.from_hf(path), path), rank=4, alpha=8,
                   rngs=nnx.Rngs(0))
  for blk in model.layers:
    blk.attn.v.lora_b.set_value(jnp.full_like(blk.attn.v.lora_b[...], 0.05))
  cfg = model.config
  mapper = mappers.make("per_head", cfg.num_layers, cfg.num_kv_heads, rngs=nnx.Rngs(1))
  mapper.w2.set_value(jnp.full_like(mapper.w2[...], 0.3))
  return model, mapper
