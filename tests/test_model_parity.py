"""psynth logits equal HF transformers logits for tiny random models of every supported kind."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import TINY_MODELS, padded_batch
from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig
from psynth.model.transformer import forward, init_cache


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_logits_match_hf_with_padding(name, tiny_checkpoint):
  path, hf = tiny_checkpoint(name)
  cfg = ModelConfig.from_hf(path)
  model = load_params(cfg, path)
  # Long enough (and rope theta small enough) that every rope variant's scaling matters.
  tokens, mask, positions = padded_batch(cfg.vocab_size, [150, 97, 1])
  with torch.no_grad():
    ref = hf(torch.tensor(tokens, dtype=torch.long),
             attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  logits, cache = forward(model, jnp.asarray(tokens), jnp.asarray(positions),
                          init_cache(cfg, 3, 160))
  diff = np.abs(np.asarray(logits) - ref)[mask]
  assert diff.max() <= 1e-4, diff.max()
  assert np.asarray(cache.valid[:, :150]).sum() == 150 + 97 + 1
  assert int(cache.end) == 150


def test_last_only_logits_are_each_rows_last_token(tiny_checkpoint):
  path, _ = tiny_checkpoint("llama_gqa")
  cfg = ModelConfig.from_hf(path)
  model = load_params(cfg, path)
  lengths = [9, 4]
  tokens, mask, positions = padded_batch(cfg.vocab_size, lengths)
  full, _ = forward(model, tokens, positions, init_cache(cfg, 2, 16))
  last, _ = forward(model, tokens, positions, init_cache(cfg, 2, 16), last_only=True)
  assert last.shape == (2, 1, cfg.vocab_size)
  for b, n in enumerate(lengths):
    np.testing.assert_array_equal(np.asarray(last[b, 0]), np.asarray(full[b, n - 1]))
