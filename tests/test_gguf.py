"""GGUF -> HF conversion: a tiny synthetic round trip, bad inputs, and the real default model
checked against transformers' own GGUF loader."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers

from conftest import make_hf_model
from psynth.convert import default_model
from psynth.convert.gguf import _NAMES, _unpermute_rope_rows, gguf_to_hf

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """The q/k row order llama.cpp's converter writes: each head's two RoPE halves interleaved."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path: Path, model, tokenizer: bool = True, arch: str = "llama") -> Path:
  """Writes an HF Llama model as llama.cpp would (F32 tensors, permuted q/k)."""
  cfg = model.config
  w = gguf.GGUFWriter(str(path), arch=arch)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
  if tokenizer:
    # Byte-level BPE over printable ASCII plus one merge; enough for transformers to build it.
    tokens = ["<s>", "</s>"] + [chr(c) for c in range(33, 127)] + ["ab"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template(TEMPLATE)
  to_gguf = {hf.format(i=i): g.format(i=i) for g, hf in _NAMES.items()
             for i in range(cfg.num_hidden_layers)}
  for name, t in model.state_dict().items():
    t = t.numpy()
    if name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
      t = llama_cpp_permute(t, heads)
    w.add_tensor(to_gguf[name], t)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


@pytest.fixture(scope="module")
def tiny():
  return make_hf_model("llama_gqa")


def test_unpermute_inverts_llama_cpp_permute():
  w = np.arange(6 * 64 * 3, dtype=np.float32).reshape(6 * 64, 3)
  np.testing.assert_array_equal(_unpermute_rope_rows(llama_cpp_permute(w, 6), 6), w)


def test_tiny_round_trip(tiny, tmp_path):
  out = gguf_to_hf(write_llama_gguf(tmp_path / "tiny.gguf", tiny), tmp_path / "hf")
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  ref = tiny.state_dict()
  assert back.state_dict().keys() == ref.keys()
  for name, t in back.state_dict().items():
    torch.testing.assert_close(t, ref[name], rtol=0, atol=0, msg=name)
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["tie_word_embeddings"] is False and cfg["num_key_value_heads"] == 2
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.chat_template == TEMPLATE
  assert json.loads((out / "generation_config.json").read_text()) == {
      "bos_token_id": 0, "eos_token_id": 1}


def test_failed_conversion_leaves_nothing(tiny, tmp_path):
  src = write_llama_gguf(tmp_path / "notok.gguf", tiny, tokenizer=False)
  with pytest.raises(ValueError, match="tokenizer"):
    gguf_to_hf(src, tmp_path / "out" / "hf")
  assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_corrupt_file_names_path(tiny, tmp_path, kind):
  bad = tmp_path / f"{kind}.gguf"
  if kind == "truncated":
    data = write_llama_gguf(tmp_path / "good.gguf", tiny).read_bytes()
    bad.write_bytes(data[:len(data) // 2])
  else:
    bad.write_bytes(np.random.RandomState(0).bytes(4096))
  with pytest.raises(ValueError, match=str(bad)):
    gguf_to_hf(bad, tmp_path / "hf")
  assert not (tmp_path / "hf").exists()


def test_non_llama_architecture(tiny, tmp_path):
  src = write_llama_gguf(tmp_path / "gpt2.gguf", tiny, tokenizer=False, arch="gpt2")
  with pytest.raises(ValueError, match="'gpt2'.*only 'llama'"):
    gguf_to_hf(src, tmp_path / "hf")


def test_refuses_non_empty_out_dir(tiny, tmp_path):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    gguf_to_hf(write_llama_gguf(tmp_path / "t.gguf", tiny), tmp_path / "hf")


# The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF from its PyPI wheel).


@pytest.fixture(scope="module")
def converted() -> Path:
  torch.set_num_threads(2)
  return default_model.ensure_default_model()


@pytest.fixture(scope="module")
def ours(converted):
  return transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()


@pytest.mark.slow
def test_default_config(converted):
  cfg = json.loads((converted / "config.json").read_text())
  got = {k: cfg[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                             "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
                             "tie_word_embeddings", "rope_theta", "max_position_embeddings")}
  assert got == dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, intermediate_size=1536, vocab_size=49152,
                     tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192)
  assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}


@pytest.mark.slow
def test_default_equals_transformers_gguf_loader(ours, converted, tmp_path):
  src = default_model.find_gguf(tmp_path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      src.parent, gguf_file=src.name, dtype=torch.float32,
      quantization_config=transformers.GgufConfig(dequantize=True)).eval()
  ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
  assert ref_sd.keys() == ours_sd.keys()
  weight_diff = max((ref_sd[k] - ours_sd[k]).abs().max().item() for k in ref_sd)
  tok = transformers.AutoTokenizer.from_pretrained(converted)
  ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
  with torch.no_grad():
    logit_diff = (ref(ids).logits - ours(ids).logits).abs().max().item()
  print(f"max abs diff vs transformers' GGUF loader: weights {weight_diff:.2e}, "
        f"logits {logit_diff:.2e} over {ids.shape[1]} tokens")
  assert weight_diff == 0.0
  assert logit_diff <= 1e-5


@pytest.mark.slow
def test_default_answers_paris(ours, converted):
  tok = transformers.AutoTokenizer.from_pretrained(converted)
  ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                add_generation_prompt=True, return_tensors="pt", return_dict=True)
  with torch.no_grad():
    out = ours.generate(**ids, max_new_tokens=24, do_sample=False)
  answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
  print(f"answer: {answer!r}")
  assert "Paris" in answer
