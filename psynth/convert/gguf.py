"""Convert a Llama-architecture GGUF file (as llama.cpp writes it) into an HF checkpoint directory.

Weights are read and dequantized with the `gguf` package's numpy reader; transformers is only
used for the tokenizer, whose GGUF conversion (BPE/SentencePiece rebuilding) it already owns.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file

from psynth.atomic import atomic_dir

log = logging.getLogger(__name__)

# GGUF tensor name -> HF tensor name; "{i}" is the layer index.
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_LAYER = re.compile(r"blk\.(\d+)\.(.+)")

# The gguf reader reports a malformed file through whichever of these its parsing trips over.
_READ_ERRORS = (ValueError, IndexError, KeyError, OverflowError)


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
  """Writes the Llama GGUF file `gguf_path` as an HF checkpoint (float32) into `out_dir`.

  `out_dir` must not exist or be empty. It appears complete or not at all: everything is built
  in a temporary sibling directory that is renamed onto `out_dir` at the end.
  """
  gguf_path, out_dir = Path(gguf_path), Path(out_dir)
  if not gguf_path.is_file():
    raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
  if out_dir.exists() and any(out_dir.iterdir()):
    raise FileExistsError(f"output directory {out_dir} is not empty; pass a new or empty one")
  log.info("reading %s", gguf_path)
  try:
    reader = GGUFReader(gguf_path)
  except _READ_ERRORS as e:
    raise ValueError(f"{gguf_path} is not a readable GGUF file: {e}") from e
  meta = _Metadata(reader, gguf_path)
  log.info("dequantizing %d tensors to float32", len(reader.tensors))
  tensors = _hf_tensors(reader, meta, gguf_path)
  config = _hf_config(meta, tensors)

  with atomic_dir(out_dir) as tmp:
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]},
        indent=2) + "\n")
    log.info("writing %d tensors to model.safetensors", len(tensors))
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    _save_tokenizer(gguf_path, meta.get("tokenizer.chat_template"), tmp)
  log.info("wrote HF checkpoint %s", out_dir)
  return out_dir


class _Metadata:
  """The GGUF key/value fields, with errors that name the file and key."""

  def __init__(self, reader: GGUFReader, path: Path):
    self.reader, self.path = reader, path
    arch = self.get("general.architecture")
    if arch != "llama":
      raise ValueError(f"{path} has general.architecture={arch!r}; only 'llama' is supported")
    scaling = self.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
      raise ValueError(f"{path} uses RoPE scaling {scaling!r}; only unscaled RoPE "
                       "(llama.rope.scaling.type absent or 'none') is supported")
    if self.get("llama.expert_count", 0):
      raise ValueError(f"{path} is a mixture-of-experts model (llama.expert_count="
                       f"{self.get('llama.expert_count')}); only dense Llama is supported")

  def get(self, key: str, default: Any = None) -> Any:
    field = self.reader.get_field(key)
    if field is None:
      return default
    try:
      return field.contents()
    except _READ_ERRORS as e:
      raise ValueError(f"{self.path}: metadata field {key} is unreadable: {e}") from e

  def require(self, key: str) -> Any:
    value = self.get(key)
    if value is None:
      raise ValueError(f"{self.path} lacks the metadata field {key}, which a Llama GGUF needs")
    return value


def _hf_name(gguf_name: str) -> str | None:
  if m := _LAYER.fullmatch(gguf_name):
    pattern = _NAMES.get(f"blk.{{i}}.{m[2]}")
    return pattern and pattern.format(i=int(m[1]))
  return _NAMES.get(gguf_name)


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row order, which interleaves the two RoPE halves of each head.

  HF row `h * d/2 + j` (half h of the head, pair j) is GGUF row `2 * j + h`; reading the GGUF
  rows as `[head, j, h]` and swapping the last two gives back HF's `[head, h, j]`.
  """
  out, inp = w.shape
  return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _hf_tensors(reader: GGUFReader, meta: _Metadata, path: Path) -> dict[str, np.ndarray]:
  heads = {"q_proj": meta.require("llama.attention.head_count"),
           "k_proj": meta.require("llama.attention.head_count_kv")}
  tensors = {}
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      hint = (" (llama.cpp stores Llama-3 style RoPE scaling here, which is not supported)"
              if t.name == "rope_freqs.weight" else "")
      raise ValueError(f"{path} holds tensor {t.name!r}, which is not part of a dense Llama "
                       f"model{hint}; known names: {sorted(_NAMES)}")
    try:
      values = dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
      raise ValueError(f"{path}: tensor {t.name} has quantization {t.tensor_type.name}, which "
                       f"gguf.quants cannot dequantize: {e}") from e
    # `t.shape` is in ggml order (fastest axis first), the reverse of numpy's [out, in].
    w = np.asarray(values, np.float32).reshape([int(d) for d in reversed(t.shape)])
    if (proj := name.split(".")[-2]) in heads:
      w = _unpermute_rope_rows(w, heads[proj])
    tensors[name] = np.ascontiguousarray(w)
  expected = {p.format(i=i) for p in _NAMES.values()
              for i in range(meta.require("llama.block_count"))} - {"lm_head.weight"}
  if missing := sorted(expected - tensors.keys()):
    raise ValueError(f"{path} lacks tensors needed for a Llama model: HF names {missing}")
  return tensors


def _hf_config(meta: _Metadata, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
  hidden = meta.require("llama.embedding_length")
  heads = meta.require("llama.attention.head_count")
  head_dim = meta.get("llama.attention.key_length", hidden // heads)
  rotary = meta.get("llama.rope.dimension_count", head_dim)
  if rotary != head_dim:
    raise ValueError(f"{meta.path} rotates {rotary} of {head_dim} head dimensions "
                     "(llama.rope.dimension_count); only full-head RoPE is supported")
  theta = float(meta.get("llama.rope.freq_base", 10000.0))
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "hidden_size": hidden,
      "intermediate_size": meta.require("llama.feed_forward_length"),
      "num_hidden_layers": meta.require("llama.block_count"),
      "num_attention_heads": heads,
      "num_key_value_heads": meta.get("llama.attention.head_count_kv", heads),
      "head_dim": head_dim,
      # The embedding is the ground truth; llama.vocab_size is optional in GGUF.
      "vocab_size": tensors["model.embed_tokens.weight"].shape[0],
      "max_position_embeddings": meta.require("llama.context_length"),
      "rms_norm_eps": meta.require("llama.attention.layer_norm_rms_epsilon"),
      "hidden_act": "silu",
      "rope_theta": theta,  # read by transformers < 5 and older tooling
      "rope_parameters": {"rope_type": "default", "rope_theta": theta},
      "tie_word_embeddings": "lm_head.weight" not in tensors,
      "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
      "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
      "torch_dtype": "float32",
      "attention_bias": False,
      "mlp_bias": False,
  }


def _save_tokenizer(gguf_path: Path, chat_template: str | None, out: Path) -> None:
  from transformers import AutoTokenizer  # heavy; only needed here

  log.info("converting the tokenizer (transformers parses the GGUF vocabulary; takes a while)")
  tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
  if chat_template:
    # Set explicitly: chat use depends on it, and the GGUF is its only source.
    tok.chat_template = chat_template
  tok.save_pretrained(out)
