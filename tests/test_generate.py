"""Generation on tiny models: greedy ids equal HF's, sampling is seeded, buckets and errors."""

import pytest
import torch

from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig
from psynth.synthesis.generate import Engine, SamplingConfig, bucket


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
  path, hf = tiny_checkpoint("llama_gqa")
  cfg = ModelConfig.from_hf(path)
  return Engine(load_params(cfg, path)), hf


def test_bucket():
  assert [bucket(n) for n in (1, 16, 17, 72, 100, 1024, 1025)] == [16, 16, 20, 80, 112, 1024, 1280]
  assert [bucket(n) for n in (2049, 2251, 2305, 4097)] == [2304, 2304, 2560, 4352]
  assert all(n <= bucket(n) < min(1.25 * n + 16, n + 256) for n in range(1, 9000))
  assert len({bucket(n) for n in range(1, 8193)}) == 53  # a bounded set of compiled shapes


def test_greedy_batch_matches_hf_generate(tiny):
  engine, hf = tiny
  prompts = [[5, 9, 17, 3, 44, 8, 1], [70, 2, 99]]  # different lengths in one batch
  out = engine.generate(prompts, SamplingConfig(max_new_tokens=12))
  for prompt, got in zip(prompts, out.tokens):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                        eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert got == ref


def test_length_groups_prefill_equals_one_batch(tiny, monkeypatch):
  """Past `GROUP_ROWS` rows, prompts are prefilled in groups of similar length, each in its own
  bucket, and decoded as one batch: the same greedy tokens as one prefill, the same seeded
  samples, and each row as HF generates it alone."""
  from psynth.synthesis import generate

  engine, hf = tiny
  lengths = (3, 40, 5, 17, 2, 33, 9)
  prompts = [[(7 * i + 3 * j) % 120 + 1 for j in range(n)] for i, n in enumerate(lengths)]
  greedy, sampled = SamplingConfig(max_new_tokens=10), SamplingConfig(10, temperature=1.0, seed=3)
  one = [engine.generate(prompts, s).tokens for s in (greedy, sampled)]
  monkeypatch.setattr(generate, "GROUP_ROWS", 3)
  assert [len(g) for g in generate.length_groups(lengths, 3)] == [3, 3, 1]
  grouped = [engine.generate(prompts, s).tokens for s in (greedy, sampled)]
  assert grouped == one and one[1] != one[0]  # sampling on: the same seeded draws
  # A token budget halves a group's rows until rows x bucket fits it (64: 4 x 16, then 1 x 40).
  monkeypatch.setattr(generate, "GROUP_ROWS", 4)
  monkeypatch.setattr(generate, "GROUP_TOKENS", 64)
  assert [len(g) for g in generate.length_groups(lengths, 4, 64)] == [4, 1, 1, 1]
  assert [engine.generate(prompts, s).tokens for s in (greedy, sampled)] == one
  for prompt, got in zip(prompts, grouped[0]):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                        eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert got == ref


def test_a_batch_shrinks_as_rows_finish(tiny, monkeypatch):
  """Once at most half of a batch's rows are unfinished, decoding goes on with those rows only
  (padded to a power of two): every row's tokens stay what the full batch gives, which is what
  each row's own greedy sequence cut at its first stop token gives."""
  from psynth.synthesis import generate

  engine, _ = tiny
  prompts = [[(5 * i + 11 * j) % 120 + 1 for j in range(3 + 2 * i)] for i in range(7)]
  long = engine.generate(prompts, SamplingConfig(max_new_tokens=12)).tokens
  # Stop tokens that end rows at different steps: each of the first four rows' 2nd..5th token.
  eos = {long[i][1 + i] for i in range(4)}
  cut = [next((row[:k] for k, t in enumerate(row) if t in eos), row) for row in long]
  assert len({len(c) for c in cut}) > 2
  whole = engine.generate(prompts, SamplingConfig(max_new_tokens=12), eos).tokens
  assert generate.compacted_size(7, 3) == 7  # 7 rows never shrink at COMPACT_ROWS = 16
  taken = []
  take = generate._take_rows
  monkeypatch.setattr(generate, "COMPACT_ROWS", 2)
  monkeypatch.setattr(generate, "_take_rows", lambda c, r: taken.append(len(r)) or take(c, r))
  shrunk = engine.generate(prompts, SamplingConfig(max_new_tokens=12), eos).tokens
  assert whole == cut and shrunk == cut
  assert taken and all(n & (n - 1) == 0 for n in taken)  # shrank, to powers of two
  assert [generate.compacted_size(8, k) for k in (5, 4, 3, 2, 1)] == [8, 4, 4, 2, 2]


def test_eos_stops_a_row_and_excludes_the_stop_token(tiny):
  engine, _ = tiny
  prompts = [[5, 9, 17], [70, 2, 99]]
  free = engine.generate(prompts, SamplingConfig(max_new_tokens=8)).tokens
  stop = free[0][3]
  out = engine.generate(prompts, SamplingConfig(max_new_tokens=8), eos_ids=[stop]).tokens
  assert out[0] == free[0][:free[0].index(stop)]
  assert out[1] == (free[1][:free[1].index(stop)] if stop in free[1] else free[1])


def test_sampling_is_seeded(tiny):
  engine, _ = tiny
  s = lambda seed: engine.generate([[1, 2, 3]], SamplingConfig(16, temperature=1.5, top_p=0.95,
                                                               seed=seed)).tokens[0]
  assert s(0) == s(0)
  assert s(0) != s(1)
  greedy = engine.generate([[1, 2, 3]], SamplingConfig(16)).tokens[0]
  # top_p so small that only the most likely token survives: sampling becomes greedy.
  assert engine.generate([[1, 2, 3]], SamplingConfig(16, temperature=1.0, top_p=1e-6,
                                                     seed=3)).tokens[0] == greedy


def test_prompt_over_context_is_a_clear_error(tiny):
  engine, _ = tiny
  ctx = engine.config.max_position_embeddings
  with pytest.raises(ValueError, match=f"prompt of {ctx + 5} tokens does not fit.*{ctx}"):
    engine.generate([[1] * (ctx + 5)], SamplingConfig(4))


@pytest.mark.parametrize("kw, match", [
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(temperature=-1.0), "temperature=-1.0"),
    (dict(top_p=0.0), "top_p=0.0"),
])
def test_bad_sampling_config(kw, match):
  with pytest.raises(ValueError, match=match):
    SamplingConfig(**kw)
