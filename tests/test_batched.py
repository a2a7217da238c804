"""Many fan-outs as rows of one batch: the same greedy tokens as one example at a time."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import psynth
from conftest import tiny_synthesizer
from psynth.cache import mappers
from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig
from psynth.synthesis.adapter import Adapter
from psynth.model.lora import add_lora
from psynth.synthesis.fanout import encode_branches
from psynth.synthesis.generate import Engine, SamplingConfig
from psynth.synthesis import synthesize
from psynth.synthesis.synthesize import synthesize_from_branches, text_prefill_parts

COUNTS = (1, 3, 2)  # ragged: the batch pads to 4 branches per row


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
  """A tiny random GQA model with a LoRA and a per-head mapper that both change answers."""
  path, _ = tiny_checkpoint("llama_gqa")
  model, mapper = tiny_synthesizer(path)
  rng = np.random.RandomState(3)
  shared = [1, 2, 3]
  examples = []
  for e, n in enumerate(COUNTS):
    q = rng.randint(4, 128, 3 + e).tolist()
    workers = [shared + q + rng.randint(4, 128, 2).tolist() for _ in range(n)]
    outputs = [rng.randint(4, 128, rng.randint(3, 12)).tolist() for _ in range(n)]
    synth = shared + q + rng.randint(4, 128, 4 + e).tolist()
    text = synth + [t for o in outputs for t in o]
    examples.append((workers, outputs, synth, text))
  return Engine(model), Adapter(mapper, lora=True), examples


@pytest.mark.parametrize("method", ["text", "naive", "psynth"])
def test_batched_synthesis_equals_one_at_a_time(setup, method):
  """Tokens of every row equal the same example synthesized alone (greedy, own stops)."""
  engine, adapter, examples = setup
  sampling = SamplingConfig(max_new_tokens=10)
  prompt = (lambda ex: ex[3]) if method == "text" else (lambda ex: ex[2])
  batch = encode_branches(engine, [w for ex in examples for w in ex[0]],
                          [o for ex in examples for o in ex[1]], counts=COUNTS)
  got = synthesize_from_branches(engine, batch, method, [prompt(ex) for ex in examples], sampling,
                                 eos_ids=(5,), adapter=adapter)
  for ex, row in zip(examples, got):
    alone = encode_branches(engine, ex[0], ex[1])
    want = synthesize_from_branches(engine, alone, method, [prompt(ex)], sampling, eos_ids=(5,),
                                    adapter=adapter)[0]
    assert row.answer_ids == want.answer_ids
  assert len({tuple(r.answer_ids) for r in got}) == len(got)  # rows really differ


@pytest.mark.parametrize("method", ["naive", "psynth"])
def test_cache_prefill_in_row_groups_equals_one_call(setup, method, monkeypatch):
  """A batch prefilled in calls of one example each (ragged branch counts gathered per call)
  gives the logits of one call to float32 rounding, and the same tokens."""
  engine, adapter, examples = setup
  adapter = adapter if method == "psynth" else None
  batch = encode_branches(engine, [w for ex in examples for w in ex[0]],
                          [o for ex in examples for o in ex[1]], counts=COUNTS)
  prompts = [ex[2] for ex in examples]
  sampling = SamplingConfig(max_new_tokens=10)

  def run():
    logits, decode_cache, _ = synthesize.cache_prefill(engine, batch, prompts, adapter=adapter,
                                                       max_new_tokens=10)
    got = synthesize_from_branches(engine, batch, method, prompts, sampling, adapter=adapter)
    return np.asarray(logits), np.asarray(decode_cache().k), [r.answer_ids for r in got]

  whole = run()
  monkeypatch.setattr(synthesize, "PREFILL_ROWS", 1)
  grouped = run()
  assert np.abs(grouped[0] - whole[0]).max() <= 1e-5
  assert np.abs(grouped[1] - whole[1]).max() <= 1e-5
  assert grouped[2] == whole[2]


def test_text_path_equals_a_plain_generate(setup):
  """The text path reuses the workers' shared prefix (the prompt reads it, writes nothing, and
  the decode cache is assembled after the first token); its greedy tokens equal a
  plain prefill of the whole prompt."""
  engine, _, examples = setup
  sampling = SamplingConfig(max_new_tokens=10)
  reused = []
  for ex in examples:
    br = encode_branches(engine, ex[0], ex[1])
    assert br.prefix is not None
    reused.append(text_prefill_parts(br, [ex[3]])[0])
    got = synthesize_from_branches(engine, br, "text", [ex[3]], sampling, eos_ids=(5,))[0]
    assert got.answer_ids == engine.generate([ex[3]], sampling, eos_ids=(5,)).tokens[0]
  assert any(reused), reused  # the path under test: a reused prefix (where it pads less)
  # Reuse only where it shortens the padded prefill: after a 6-token shared prefix, a
  # 16-token prompt pads to 16 whole or as its last 10, so it is prefilled whole; a 26-token
  # one pads to 28 whole and to 20 after the prefix, so the prefix is reused.
  br = encode_branches(engine, [[1, 2, 3, 4, 5, 6, 7]], [[8, 9]])
  assert text_prefill_parts(br, [list(range(1, 17))])[0] == 0
  assert text_prefill_parts(br, [list(range(1, 27))])[0] == 6


def test_the_adapter_changes_the_answers(setup):
  """What the test above compares depends on the adapter: LoRA + mapper change the tokens."""
  engine, adapter, examples = setup
  batch = encode_branches(engine, [w for ex in examples for w in ex[0]],
                          [o for ex in examples for o in ex[1]], counts=COUNTS)
  run = lambda m: [r.answer_ids for r in synthesize_from_branches(
      engine, batch, m, [ex[2] for ex in examples], SamplingConfig(max_new_tokens=10),
      adapter=adapter)]
  assert run("psynth") != run("naive")


def test_bad_batches_name_the_example():
  loaded = psynth.load("tiny-random")
  qs = ["q one?", "q two?", "q three?"]
  outs = [["a fact."], ["b fact.", "c fact."], ["d fact."]]
  with pytest.raises(ValueError, match="3 questions but 2 output lists"):
    psynth.synthesize_batch(loaded, qs, outputs=outs[:2])
  with pytest.raises(ValueError, match="question 1: branch output 1 is empty"):
    psynth.synthesize_batch(loaded, qs, outputs=[outs[0], ["a", "  "], outs[2]])
  with pytest.raises(ValueError, match="question 2: need at least one branch"):
    psynth.synthesize_batch(loaded, qs, [["doc"], ["doc"], []])
  with pytest.raises(ValueError, match="example 1: merged branches end at position"):
    psynth.synthesize_batch(loaded, qs[:2], outputs=[outs[0], ["word " * 700] * 2],
                            mode="sequential", sampling=SamplingConfig(max_new_tokens=700))
