"""The one table between HF tensor names and psynth parameter paths, used in both directions.

HF stores a linear layer as `[out, in]`; psynth stores it as `[*in, *out]` with heads split
out (`q`: `[embed, heads, head_dim]`). A rule says which HF tensor feeds which
psynth path and how many leading psynth axes are the layer's input, which is all the
reshaping needs. Export (merged LoRA, PEFT) walks the same table backwards.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from psynth.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # HF name; "{i}" is the layer index for per-layer tensors
  path: tuple[str | int, ...]  # psynth parameter path; "{i}" is the layer index
  # "linear": HF [out, in] <-> psynth [*in, *out]; "vector": HF 1-D <-> psynth any shape (a
  # reshape only, e.g. a q bias [heads, head_dim]); "table": the same array on both sides.
  kind: str
  in_ndim: int = 1  # linear only: how many psynth axes are inputs

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


_ATTN = "model.layers.{i}.self_attn"
_MLP = "model.layers.{i}.mlp"


def rules(cfg: ModelConfig) -> list[Rule]:
  """The rules for `cfg`'s architecture (biases, q/k norms, head tying)."""
  L = ("layers", "{i}")
  out = [Rule("model.embed_tokens.weight", ("embed",), "table")]
  for name in "qkv":
    out.append(Rule(f"{_ATTN}.{name}_proj.weight", (*L, "attn", name, "kernel"), "linear"))
    if cfg.qkv_bias:
      out.append(Rule(f"{_ATTN}.{name}_proj.bias", (*L, "attn", name, "bias"), "vector"))
  out.append(Rule(f"{_ATTN}.o_proj.weight", (*L, "attn", "o", "kernel"), "linear", in_ndim=2))
  if cfg.o_bias:
    out.append(Rule(f"{_ATTN}.o_proj.bias", (*L, "attn", "o", "bias"), "vector"))
  if cfg.qk_norm:
    out.append(Rule(f"{_ATTN}.q_norm.weight", (*L, "attn", "q_norm"), "vector"))
    out.append(Rule(f"{_ATTN}.k_norm.weight", (*L, "attn", "k_norm"), "vector"))
  for name in ("gate", "up", "down"):
    out.append(Rule(f"{_MLP}.{name}_proj.weight", (*L, "mlp", name, "kernel"), "linear"))
    if cfg.mlp_bias:
      out.append(Rule(f"{_MLP}.{name}_proj.bias", (*L, "mlp", name, "bias"), "vector"))
  out.append(Rule("model.layers.{i}.input_layernorm.weight", (*L, "attn_norm"), "vector"))
  out.append(Rule("model.layers.{i}.post_attention_layernorm.weight", (*L, "mlp_norm"), "vector"))
  out.append(Rule("model.norm.weight", ("final_norm",), "vector"))
  if not cfg.tie_word_embeddings:
    out.append(Rule("lm_head.weight", ("lm_head",), "linear"))
  return out


def expand(rule: Rule, cfg: ModelConfig) -> Iterator[tuple[str, tuple]]:
  """(HF name, psynth path) pairs of a rule: one per layer for per-layer rules."""
  layers = range(cfg.num_layers) if rule.per_layer else [None]
  for i in layers:
    path = tuple(i if p == "{i}" else p for p in rule.path)
    yield rule.hf.format(i=i), path


def to_psynth(rule: Rule, hf_array: np.ndarray, psynth_shape: tuple[int, ...]) -> np.ndarray:
  """One HF tensor -> the psynth array of `psynth_shape`."""
  if rule.kind == "linear":
    hf_array = hf_array.T
  if math.prod(hf_array.shape) != math.prod(psynth_shape):
    raise ValueError(f"tensor {rule.hf!r} has shape {tuple(hf_array.shape)}, "
                     f"which does not fit psynth parameter {'/'.join(rule.path)} {psynth_shape}")
  return hf_array.reshape(psynth_shape)


def to_hf(rule: Rule, array: np.ndarray) -> np.ndarray:
  """One psynth array -> the HF tensor."""
  if rule.kind == "linear":
    n_in = math.prod(array.shape[:rule.in_ndim])
    return np.ascontiguousarray(array.reshape(n_in, -1).T)
  return array if rule.kind == "table" else array.reshape(-1)
