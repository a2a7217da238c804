"""The embedded default (SmolLM2-135M-Instruct, from the PyPI wheel's GGUF) against HF transformers."""

import numpy as np
import pytest
import torch

import psynth
from psynth.synthesis import chat
from psynth.synthesis.generate import SamplingConfig

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each is prime.",
]


@pytest.fixture(scope="module")
def default():
  from transformers import AutoModelForCausalLM
  loaded = psynth.load()
  torch.set_num_threads(2)
  hf = AutoModelForCausalLM.from_pretrained(str(loaded.path), dtype=torch.float32).eval()
  return loaded, hf


def test_config_is_smollm2_135m(default):
  cfg = default[0].config
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.intermediate_size, cfg.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
  assert cfg.tie_word_embeddings and cfg.rope.theta == 100000.0


def test_logits_match_hf_on_three_prompts(default):
  loaded, hf = default
  ids = [chat.encode(loaded.tokenizer, p) for p in PROMPTS]
  T = max(map(len, ids))
  tokens = np.zeros((3, T), np.int32)
  mask = np.zeros((3, T), bool)
  for b, row in enumerate(ids):
    tokens[b, :len(row)], mask[b, :len(row)] = row, True
  positions = np.where(mask, np.arange(T)[None], -1).astype(np.int32)
  logits, _ = psynth.forward(loaded.model, tokens, positions, psynth.init_cache(loaded.config, 3, T))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens).long(), attention_mask=torch.tensor(mask).long()).logits.numpy()
  diff = np.abs(np.asarray(logits) - ref)[mask]
  print(f"max abs logit diff vs HF over {mask.sum()} tokens: {diff.max():.2e}")
  assert diff.max() <= 1e-3


def test_32_greedy_tokens_equal_hf(default):
  loaded, hf = default
  for prompt in PROMPTS[:2]:
    ids = chat.encode(loaded.tokenizer, prompt)
    # No stop tokens: exactly 32 tokens on both sides, even past an end-of-turn.
    got = loaded.engine.generate([ids], SamplingConfig(max_new_tokens=32)).tokens[0]
    ref = list(ids)
    with torch.no_grad():
      for _ in range(32):
        ref.append(int(hf(torch.tensor([ref])).logits[0, -1].argmax()))
    assert got == ref[len(ids):], (got, ref[len(ids):])


def test_answers_a_chat_question(default):
  answer = psynth.generate(default[0], "What is the capital of France?", max_new_tokens=24)
  print(answer)
  assert "Paris" in answer
