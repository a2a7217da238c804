"""The HF-transformers Parallel-Synthesis baseline (psynth.bench.hf_reference) on tiny random models.

Exactness references, all independent of `rerotate`:
  * 1-layer models: a layer's pre-RoPE K/V depend on its token only, so a branch cache computed
    after ANY worker prompt, re-rotated, is exactly the cache of a plain forward over the outputs at
    the target positions -> compare with ONE plain forward with explicit `position_ids`.
  * 2-layer models: the same workers re-run by HF itself with `position_ids` shifted so `o_i` lands
    directly at its target start (RoPE attention depends on relative positions only, so every
    hidden state is unchanged while keys are rotated by HF's own forward at the target positions).
Weights use a large init range so attention is peaked and a wrong sign, a wrong delta or a
forgotten `attention_scaling` moves the logits by far more than the tolerance.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import transformers

from conftest import TINY, TINY_MODELS
from psynth.bench import hf_reference as ref

ROPES = ["llama_gqa", "llama3_rope", "yarn_rope", "linear_rope", "qwen3"]
TOL = 1e-4
PREFIX = 20


@functools.lru_cache(maxsize=None)
def _model(name: str, layers: int = 2):
  cls_name, overrides = TINY_MODELS[name]
  kw = dict(TINY, **overrides, num_hidden_layers=layers, initializer_range=0.2)
  if "rope_parameters" in kw:
    kw.pop("rope_theta")
  torch.manual_seed(0)
  config = getattr(transformers, cls_name)(**kw)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "norm" in n:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  return model


def _tokens(n: int, seed: int) -> list[int]:
  return np.random.RandomState(seed).randint(0, 128, n).tolist()


def _forward(model, ids: list[int], positions: list[int], cache=None, past: int = 0):
  """One HF forward with explicit positions and an all-ones mask; float32 last logits."""
  with torch.inference_mode():
    out = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]),
                attention_mask=torch.ones(1, past + len(ids), dtype=torch.long),
                past_key_values=cache, use_cache=cache is not None, logits_to_keep=1)
  return out.logits[0, -1].float()


def _check(got: tuple[int, torch.Tensor], want: torch.Tensor) -> float:
  token, logits = got
  diff = float((logits - want).abs().max())
  assert diff <= TOL, diff
  assert token == int(want.argmax())
  return diff


# Two branches: worker prompts of 3 and 6 tokens, outputs of 5 and 8, synthesizer prompt of 4.
# Expected positions (branch 1, branch 2, synthesizer prompt) per mode, written out by hand.
N1, N2, S = 5, 8, 4
POSITIONS = {
    "shared_start": (range(0, N1), range(0, N2), range(8, 8 + S)),
    "sequential": (range(0, N1), range(N1, N1 + N2), range(13, 13 + S)),
    "after_prefix": (range(PREFIX, PREFIX + N1), range(PREFIX, PREFIX + N2),
                     range(PREFIX + 8, PREFIX + 8 + S)),
}


def _two_branches():
  prompts = [_tokens(3, 1), _tokens(6, 2)]
  outs = [_tokens(N1, 3), _tokens(N2, 4)]
  return prompts, outs, _tokens(S, 5)


@pytest.mark.parametrize("name", ROPES)
def test_single_branch_sequential_equals_plain_prefill(name):
  """1 layer, worker prompt of 5 tokens -> delta = -5; equals a plain prefill of o_1 ++ synth."""
  model = _model(name, layers=1)
  out, synth = _tokens(7, 11), _tokens(4, 12)
  branches = ref.branch_caches(model, [_tokens(5, 10)], [out])
  assert branches[0].prompt_len == 5 and branches[0].length == 7
  assert branches[0].keys[0].shape == (1, model.config.num_key_value_heads, 7,
                                       model.config.head_dim)
  got = ref.cache_first_token(model, branches, synth, mode="sequential")
  _, want = ref.text_first_token(model, out + synth)
  print(f"{name} single-branch sequential max|diff| = {_check(got, want):.2e}")


@pytest.mark.parametrize("name", ROPES)
def test_single_branch_after_prefix_multilayer(name):
  """2 layers, empty worker prompt, moved to start 37 (delta = +37): RoPE is relative, so this
  equals a plain prefill of o_1 ++ synth at positions 0.."""
  model = _model(name)
  out, synth = _tokens(7, 21), _tokens(4, 22)
  branches = ref.branch_caches(model, [[]], [out])
  got = ref.cache_first_token(model, branches, synth, mode="after_prefix", prefix_len=37)
  _, want = ref.text_first_token(model, out + synth)
  print(f"{name} single-branch after_prefix max|diff| = {_check(got, want):.2e}")


@pytest.mark.parametrize("mode", sorted(POSITIONS))
@pytest.mark.parametrize("name", ROPES)
def test_two_branches_equal_one_forward(name, mode):
  """1 layer: merged cache + prompt == one forward over o_1 ++ o_2 ++ synth at the mode's positions."""
  model = _model(name, layers=1)
  prompts, outs, synth = _two_branches()
  got = ref.cache_first_token(model, ref.branch_caches(model, prompts, outs), synth, mode=mode,
                              prefix_len=PREFIX)
  pos = [p for r in POSITIONS[mode] for p in r]
  want = _forward(model, outs[0] + outs[1] + synth, pos)
  print(f"{name} {mode} two-branch max|diff| = {_check(got, want):.2e}")


@pytest.mark.parametrize("mode", sorted(POSITIONS))
@pytest.mark.parametrize("name", ["llama_gqa", "yarn_rope", "qwen3"])
def test_two_branches_equal_shifted_workers(name, mode):
  """2 layers: equals workers run by HF at shifted positions (o_i directly at its target start)."""
  model = _model(name)
  prompts, outs, synth = _two_branches()
  got = ref.cache_first_token(model, ref.branch_caches(model, prompts, outs), synth, mode=mode,
                              prefix_len=PREFIX)
  cache = transformers.DynamicCache(config=model.config)
  layers = [([], []) for _ in range(model.config.num_hidden_layers)]
  for prompt, out, target in zip(prompts, outs, POSITIONS[mode][:2]):
    p = len(prompt)
    worker = transformers.DynamicCache(config=model.config)
    _forward(model, prompt + out, list(range(target[0] - p, target[0] + len(out))), worker)
    for (ks, vs), layer in zip(layers, worker.layers):
      ks.append(layer.keys[:, :, p:])
      vs.append(layer.values[:, :, p:])
  for i, (ks, vs) in enumerate(layers):
    cache.update(torch.cat(ks, dim=-2), torch.cat(vs, dim=-2), i)
  want = _forward(model, synth, list(POSITIONS[mode][2]), cache, past=N1 + N2)
  print(f"{name} {mode} two-branch 2-layer max|diff| = {_check(got, want):.2e}")


def test_sequential_chain_equals_one_forward():
  """Branch 2's worker prompt is o_1 (branch 1's is empty): sequential places both exactly where a
  plain forward over o_1 ++ o_2 ++ synth has them (deltas 0), checking order and prompt start."""
  model = _model("llama_gqa")
  o1, o2, synth = _tokens(6, 31), _tokens(5, 32), _tokens(4, 33)
  branches = ref.branch_caches(model, [[], o1], [o1, o2])
  got = ref.cache_first_token(model, branches, synth, mode="sequential")
  _, want = ref.text_first_token(model, o1 + o2 + synth)
  _check(got, want)


@pytest.mark.parametrize("name", ROPES)
def test_rerotate_is_a_pure_rotation(name):
  """HF-rotated keys at positions q, turned by d, equal HF-rotated keys at q + d (incl. the yarn
  attention factor, applied once); +d then -d and 0 are identities; norms are preserved."""
  model = _model(name)
  rotary = model.model.rotary_emb
  rotate_half = ref._rotate_half(model)
  torch.manual_seed(1)
  raw = torch.randn(1, 2, 9, model.config.head_dim)

  def hf_keys(start: int) -> torch.Tensor:
    cos, sin = rotary(raw, torch.arange(start, start + 9)[None])
    return raw * cos[:, None] + rotate_half(raw) * sin[:, None]

  keys = hf_keys(3)
  for delta in (-3, 5, 40):
    (moved,) = ref.rerotate([keys], delta, model)
    assert float((moved - hf_keys(3 + delta)).abs().max()) <= 1e-5
    assert torch.allclose(moved.norm(dim=-1), keys.norm(dim=-1), atol=1e-5)
    (back,) = ref.rerotate([moved], -delta, model)
    assert float((back - keys).abs().max()) <= 1e-5
  (same,) = ref.rerotate([keys], 0, model)
  assert torch.equal(same, keys)
  assert rotary.attention_scaling == pytest.approx(
      1.0 + 0.1 * np.log(4.0) if name == "yarn_rope" else 1.0)


def test_bad_mode():
  model = _model("llama_gqa", layers=1)
  branches = ref.branch_caches(model, [[1, 2]], [[3, 4]])
  with pytest.raises(ValueError, match=r"'diagonal'.*shared_start, after_prefix, sequential"):
    ref.cache_first_token(model, branches, [5, 6], mode="diagonal")
