"""`ModelConfig`: the static shape and numerics of a Llama-family model, read from HF `config.json`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from psynth.model import attention

# model_type -> how it differs from Llama. Biases "attention_bias" are read from config.json
# (Llama and Qwen3 put that bias on q, k, v and o); Qwen2 always biases q/k/v, never o.
SUPPORTED_ARCHITECTURES = {
    "llama": dict(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=False),
    "qwen2": dict(qkv_bias=True, o_bias=False, qk_norm=False),
    "qwen3": dict(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True),
}
_HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "qwen3": "Qwen3ForCausalLM"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
SUPPORTED_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """RoPE frequencies: `rope_type` selects how the base inverse frequencies are rescaled."""

  theta: float = 10000.0
  rope_type: str = "default"
  factor: float = 1.0  # linear, llama3, yarn
  low_freq_factor: float = 1.0  # llama3
  high_freq_factor: float = 4.0  # llama3
  original_max_position_embeddings: int = 0  # llama3, yarn
  beta_fast: float = 32.0  # yarn
  beta_slow: float = 1.0  # yarn
  attention_factor: float | None = None  # yarn: scales cos/sin; None derives it from `factor`
  truncate: bool = True  # yarn


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything static about a model; hashable, so it can be a static jit argument."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  max_position_embeddings: int
  rms_norm_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  model_type: str = "llama"
  dtype: str = "float32"  # activations
  param_dtype: str = "float32"
  # Which attention implementation runs (`psynth.model.attention.IMPLEMENTATIONS`): "blocked"
  # (CPU), "pallas_tpu" (TPU), "dot_product" (GPU), "reference", "pallas_tpu_interpret".
  attention: str = "blocked"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; supported: {SUPPORTED_DTYPES}")
    attention.get(self.attention)  # an unknown name fails here, before any weight is read

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_hf(cls, hf: dict[str, Any] | str | Path, **overrides) -> "ModelConfig":
    """Builds a config from an HF `config.json` dict, file, or checkpoint directory."""
    if not isinstance(hf, dict):
      path = Path(hf)
      path = path / "config.json" if path.is_dir() else path
      hf = json.loads(path.read_text())
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
      raise ValueError(
          f"Unsupported architecture model_type={model_type!r} "
          f"(architectures={hf.get('architectures')}); supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    arch = SUPPORTED_ARCHITECTURES[model_type]
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
      raise ValueError(f"{model_type}: sliding-window attention is not supported; use full attention.")
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"hidden_act={hf['hidden_act']!r}; supported: 'silu' (SwiGLU)")
    num_heads = hf["num_attention_heads"]
    bias = lambda v: bool(hf.get(v, False)) if isinstance(v, str) else v
    kw = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        max_position_embeddings=hf["max_position_embeddings"],
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope=_rope_from_hf(hf),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=bias(arch["qkv_bias"]),
        o_bias=bias(arch["o_bias"]),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=arch["qk_norm"],
        model_type=model_type,
    )
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """The `config.json` of this model for `transformers` (used by export)."""
    r = self.rope
    rope = {"rope_type": r.rope_type, "rope_theta": r.theta}
    if r.rope_type != "default":
      rope["factor"] = r.factor
    if r.rope_type == "llama3":
      rope.update(low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor,
                  original_max_position_embeddings=r.original_max_position_embeddings)
    if r.rope_type == "yarn":
      rope.update(beta_fast=r.beta_fast, beta_slow=r.beta_slow, truncate=r.truncate,
                  original_max_position_embeddings=r.original_max_position_embeddings)
      if r.attention_factor is not None:
        rope["attention_factor"] = r.attention_factor
    return {
        "architectures": [_HF_CLASSES[self.model_type]], "model_type": self.model_type, "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps, "rope_parameters": rope, "rope_theta": r.theta,
        "tie_word_embeddings": self.tie_word_embeddings,
        "attention_bias": self.qkv_bias if self.model_type != "qwen2" else False,
        "mlp_bias": self.mlp_bias, "hidden_act": "silu", "torch_dtype": self.param_dtype,
    }


def _rope_from_hf(hf: dict[str, Any]) -> RopeConfig:
  # transformers>=5 writes `rope_parameters` (with the theta inside); older files write
  # `rope_theta` + `rope_scaling`. Accept both.
  params = dict(hf.get("rope_scaling") or {})
  params.update(hf.get("rope_parameters") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ValueError(f"Unsupported rope_type={rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")
  if hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError("partial_rotary_factor != 1.0 is not supported")
  kw = dict(theta=float(theta), rope_type=rope_type)
  if rope_type != "default":
    kw["factor"] = float(params["factor"])
  if rope_type in ("llama3", "yarn"):
    kw["original_max_position_embeddings"] = int(
        params.get("original_max_position_embeddings") or hf["max_position_embeddings"])
  if rope_type == "llama3":
    kw.update(low_freq_factor=float(params["low_freq_factor"]),
              high_freq_factor=float(params["high_freq_factor"]))
  if rope_type == "yarn":
    kw.update(beta_fast=float(params.get("beta_fast") or 32.0),
              beta_slow=float(params.get("beta_slow") or 1.0),
              truncate=bool(params.get("truncate", True)))
    if params.get("attention_factor") is not None:
      kw["attention_factor"] = float(params["attention_factor"])
    if params.get("mscale") or params.get("mscale_all_dim"):
      raise ValueError("yarn with mscale/mscale_all_dim (DeepSeek style) is not supported")
  return RopeConfig(**kw)
