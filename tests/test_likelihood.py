"""Continuations scored by log-probability (multiple choice by likelihood), every method, tiny
model: the chain rule holds, the first token's term is the synthesis path's own first logits,
text equals one plain prefill of the same prompt, and a batch equals its rows alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_synthesizer
from psynth.cache import mappers
from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig
from psynth.model.lora import add_lora
from psynth.model.transformer import forward, init_cache
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.fanout import encode_branches
from psynth.synthesis.generate import Engine
from psynth.synthesis.likelihood import continuation_logprobs
from psynth.synthesis.synthesize import cache_prefill

COUNTS = (1, 3, 2)
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
  path, _ = tiny_checkpoint("llama_gqa")
  model, mapper = tiny_synthesizer(path)
  rng = np.random.RandomState(5)
  shared = [1, 2, 3]
  workers, outputs, synth, conts = [], [], [], []
  for e, n in enumerate(COUNTS):
    q = rng.randint(4, 128, 3 + e).tolist()
    workers += [shared + q + rng.randint(4, 128, 2).tolist() for _ in range(n)]
    outputs += [rng.randint(4, 128, rng.randint(3, 12)).tolist() for _ in range(n)]
    synth.append(shared + q + rng.randint(4, 128, 4 + e).tolist())
    conts.append(rng.randint(4, 128, 2 + 2 * e).tolist())
  engine = Engine(model)
  branches = encode_branches(engine, workers, outputs, counts=COUNTS)
  return engine, Adapter(mapper, lora=True), branches, synth, conts


def _plain_logprobs(engine, prompt, cont):
  """One plain prefill of prompt + continuation, every logit formed, summed on the host."""
  ids = np.array([list(prompt) + list(cont)], np.int32)
  model = nnx.merge(engine.graphdef, engine.state)
  logits, _ = forward(model, ids, np.arange(ids.shape[1])[None], init_cache(engine.config, 1, 1),
                      attend_cache=False, write=False)
  lp = np.asarray(jax.nn.log_softmax(logits[0], -1))
  return sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(cont))


@pytest.mark.parametrize("method", ["text", "naive", "psynth"])
def test_chain_rule_and_first_token(setup, method):
  engine, adapter, branches, synth, conts = setup
  kw = dict(method=method, branches=branches, adapter=adapter)
  whole = continuation_logprobs(engine, synth, conts, **kw)
  first = continuation_logprobs(engine, synth, [c[:1] for c in conts], **kw)
  rest = continuation_logprobs(engine, [s + c[:1] for s, c in zip(synth, conts)],
                               [c[1:] for c in conts], **kw)
  assert np.all(whole < 0) and np.all(np.isfinite(whole))
  np.testing.assert_allclose(whole, first + rest, atol=TOL)
  if method != "text":  # the first term is the cache path's own first logits
    logits, _, _ = cache_prefill(engine, branches, synth,
                                 adapter=adapter if method == "psynth" else None)
    lp = np.asarray(jax.nn.log_softmax(logits, -1))
    np.testing.assert_allclose(first, [lp[b, c[0]] for b, c in enumerate(conts)], atol=TOL)


def test_text_equals_one_plain_prefill_and_single(setup):
  """text reuses the workers' shared prefix cache: the same as prefilling the whole prompt."""
  engine, _, branches, synth, conts = setup
  want = [_plain_logprobs(engine, s, c) for s, c in zip(synth, conts)]
  text = continuation_logprobs(engine, synth, conts, method="text", branches=branches)
  single = continuation_logprobs(engine, synth, conts, method="single")
  np.testing.assert_allclose(text, want, atol=TOL)
  np.testing.assert_allclose(single, want, atol=TOL)


@pytest.mark.parametrize("method", ["single", "text", "naive", "psynth"])
def test_options_after_one_prompt_score_as_each_alone(setup, method):
  """An item's options (`counts`) share one prefill of its prompt: each scores as the same
  option after its own copy of the prompt would, one-token options included."""
  engine, adapter, branches, synth, conts = setup
  counts = (3, 1, 2)
  options = [(c + [9])[:j] if j else c for c, k in zip(conts, counts) for j in range(k)]
  kw = dict(method=method, branches=branches, adapter=adapter)
  got = continuation_logprobs(engine, synth, options, counts=counts, **kw)
  for j in range(3):  # every item's j-th option (or its last), one row per prompt, no counts
    rows = [sum(counts[:b]) + min(j, k - 1) for b, k in enumerate(counts)]
    alone = continuation_logprobs(engine, synth, [options[r] for r in rows], **kw)
    np.testing.assert_allclose(got[rows], alone, atol=TOL)
  if method in ("single", "text"):  # = a whole prefill of prompt + option
    heads = [s for s, k in zip(synth, counts) for _ in range(k)]
    np.testing.assert_allclose(got, [_plain_logprobs(engine, p, o) for p, o in
                                     zip(heads, options)], atol=TOL)


def test_bad_input_is_named(setup):
  engine, _, branches, synth, conts = setup
  with pytest.raises(ValueError, match="method 'beam' unknown"):
    continuation_logprobs(engine, synth, conts, method="beam")
  with pytest.raises(ValueError, match="needs the branches of 3 examples; got none"):
    continuation_logprobs(engine, synth, conts, method="naive")
  with pytest.raises(ValueError, match="counts \\[2, 2\\] must give each of the 3 prompts"):
    continuation_logprobs(engine, synth, conts, counts=[2, 2], method="single")
  with pytest.raises(ValueError, match="2 prompts for 3 continuations"):
    continuation_logprobs(engine, synth[:2], conts, method="single")
  with pytest.raises(ValueError, match="row 1: the prompt and the continuation need a token"):
    continuation_logprobs(engine, synth, [conts[0], [], conts[2]], method="single")
  with pytest.raises(ValueError, match="mode 'after_prefix'"):
    continuation_logprobs(engine, synth, conts, method="naive", branches=branches,
                          mode="after_prefix")
