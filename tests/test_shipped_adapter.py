"""The trained synthesizer shipped in the repository, on the real default model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import psynth
from psynth import adapters
from psynth.synthesis import demo
from psynth.synthesis.generate import SamplingConfig

MODEL = "smollm2-135m-instruct"


def test_default_adapter_is_shipped_small_and_carded():
  path = adapters.resolve(MODEL, "default")
  files = {p.name: p.stat().st_size for p in path.rglob("*") if p.is_file()}
  assert {"lora.json", "lora.safetensors", "CARD.md", "mapper.json",
          "mapper.safetensors"} <= set(files)
  assert sum(files.values()) <= 10 * 2 ** 20
  meta = json.loads((path / "lora.json").read_text())
  assert meta["model"]["num_layers"] == 30 and meta["rank"] == 16
  card = (path / "CARD.md").read_text()
  assert "python -m psynth train" in card and "val" in card.lower()


def test_unknown_adapter_names_the_shipped_ones():
  with pytest.raises(FileNotFoundError, match=r"adapter 'best' not found.*shipped: \['default'\]"):
    adapters.resolve(MODEL, "best")
  assert adapters.resolve(MODEL, "none") is None


def test_adapter_for_another_model_is_refused():
  with pytest.raises(ValueError, match="was made for a model with"):
    psynth.load("tiny-random", adapter=adapters.resolve(MODEL, "default"))


@pytest.mark.parametrize("broken", ["lora.safetensors", "mapper/mapper.safetensors", "lora.json"])
def test_corrupt_adapter_file_is_named(tmp_path, broken):
  from flax import nnx
  from psynth.cache import mappers
  from psynth.convert.adapter_dir import save_adapter_dir
  from psynth.model.lora import add_lora
  tiny = psynth.load("tiny-random")
  c = tiny.config
  add_lora(tiny.model, rank=2, alpha=4.0, rngs=nnx.Rngs(0))
  path = save_adapter_dir(tmp_path / "a", tiny.model,
                          mappers.make("affine", c.num_layers, c.num_kv_heads, rngs=nnx.Rngs(0)))
  (path / broken).write_bytes(b"\x00 not what it should be")
  with pytest.raises(ValueError, match=broken.split("/")[-1]):
    psynth.load("tiny-random", adapter=path)


@pytest.mark.slow
def test_trained_demo_answer_names_both_facts():
  """The built-in demo: the trained cache path names the town where the telescope was
  assembled and the university that operates it."""
  loaded = psynth.load(MODEL, adapter="default")
  assert loaded.adapter is not None and loaded.adapter.lora
  branches = psynth.fan_out(loaded, demo.QUESTION, demo.DOCUMENTS,
                            sampling=SamplingConfig(max_new_tokens=64))
  r = psynth.synthesize(loaded, demo.QUESTION, prepared=branches,
                        sampling=SamplingConfig(max_new_tokens=48))
  print(r.answer)
  assert "Tromso" in r.answer and "Bergen" in r.answer
  assert np.isfinite(r.ttft_s)


@pytest.mark.slow
def test_trained_answer_from_worker_texts_reencoded_after_their_documents():
  """The worker texts re-encoded after the prompts that held their documents (the form of the
  documented training copies) reproduce the workers' own caches token for token, and the
  trained answer from them names both facts. (Encoded after document-free prompts, the other
  training form, this adapter names the town only: see its CARD.md.)"""
  loaded = psynth.load(MODEL, adapter="default")
  sampling = SamplingConfig(max_new_tokens=48)
  workers = psynth.fan_out(loaded, demo.QUESTION, demo.DOCUMENTS,
                           sampling=SamplingConfig(max_new_tokens=64))
  texts = [loaded.tokenizer.decode(t, skip_special_tokens=True) for t in workers.tokens]
  answer = lambda br: psynth.synthesize(loaded, demo.QUESTION, prepared=br,
                                        sampling=sampling).answer
  with_docs = answer(psynth.fan_out(loaded, demo.QUESTION, demo.DOCUMENTS, outputs=texts))
  free = answer(psynth.fan_out(loaded, demo.QUESTION, outputs=texts))
  print(with_docs, free, sep="\n")
  assert "Tromso" in with_docs and "University of Bergen" in with_docs
  assert with_docs == answer(workers)
  assert "Tromso" in free
