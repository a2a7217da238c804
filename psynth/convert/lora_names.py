"""The LoRA adapter's tensors, named by the one HF table (`hf_names`), in both directions.

Every "linear" rule whose psynth path is a LoRA target's kernel is a place an adapter can sit.
Its A and B matrices convert like kernels, with the same `hf_names.to_hf` / `to_psynth`:
`lora_a [*in, rank]` is a linear with the kernel's input axes (HF `[rank, in]`) and
`lora_b [rank, *out]` a linear with one input axis (HF `[out, rank]`); PEFT stores exactly
these (`<module>.lora_A.weight [r, in]`, `<module>.lora_B.weight [out, r]`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.convert import hf_names
from psynth.model.config import ModelConfig
from psynth.model.lora import ATTENTION_TARGETS, MLP_TARGETS, add_lora
from psynth.model.transformer import Transformer

TARGETS = ATTENTION_TARGETS + MLP_TARGETS


@dataclasses.dataclass(frozen=True)
class Site:
  """One adapted projection of one layer."""

  target: str  # psynth name: "q", ..., "down"
  module: str  # HF module name: "model.layers.3.self_attn.q_proj"
  kernel: tuple  # psynth path of the base kernel
  kernel_rule: hf_names.Rule
  a_rule: hf_names.Rule  # lora_a [*in, rank] <-> HF [rank, in]
  b_rule: hf_names.Rule  # lora_b [rank, *out] <-> HF [out, rank]

  @property
  def hf_module(self) -> str:
    """"q_proj": the name PEFT's `target_modules` uses."""
    return self.module.rsplit(".", 1)[-1]

  def path(self, which: str) -> tuple:
    return (*self.kernel[:-1], f"lora_{which}")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `add_lora` needs to rebuild an adapter: rank, alpha, targets (psynth names)."""

  rank: int
  alpha: float
  targets: tuple[str, ...]


def sites(cfg: ModelConfig, targets=TARGETS) -> Iterator[Site]:
  """The places of `targets` in every layer, in table order."""
  for rule in hf_names.rules(cfg):
    if rule.kind != "linear" or rule.path[-1] != "kernel" or rule.path[-2] not in targets:
      continue
    module_tmpl = rule.hf.removesuffix(".weight")
    a_tmpl = dataclasses.replace(rule, hf=f"{module_tmpl}.lora_A.weight",
                                 path=(*rule.path[:-1], "lora_a"))
    b_tmpl = dataclasses.replace(rule, hf=f"{module_tmpl}.lora_B.weight",
                                 path=(*rule.path[:-1], "lora_b"), in_ndim=1)
    for name, path in hf_names.expand(rule, cfg):
      i = path[1]
      yield Site(rule.path[-2], name.removesuffix(".weight"), path, rule,
                 dataclasses.replace(a_tmpl, hf=a_tmpl.hf.format(i=i)),
                 dataclasses.replace(b_tmpl, hf=b_tmpl.hf.format(i=i)))


def hf_module_of(target: str) -> str:
  """"q" -> "q_proj" (read off the table)."""
  return next(s.hf_module for s in sites(_ANY_CFG, (target,)))


def target_of(hf_module: str) -> str:
  """"q_proj" -> "q"; raises for a module psynth cannot adapt."""
  known = {hf_module_of(t): t for t in TARGETS}
  if hf_module not in known:
    raise ValueError(f"LoRA target module {hf_module!r} is not supported; "
                     f"supported: {sorted(known)}")
  return known[hf_module]


def variable(model: Transformer, path: tuple) -> nnx.Variable:
  """The model's own parameter at a psynth path (setting its value changes the model)."""
  obj = model
  for p in path:
    obj = obj[p] if isinstance(p, int) else getattr(obj, p)
  return obj


def _adapted(model: Transformer) -> dict[str, tuple[int, float]]:
  """target -> (rank, scale) of every projection that carries a LoRA."""
  found = {}
  for site in sites(model.config):
    dense = variable(model, site.kernel[:-1])
    if dense.lora_a is not None:
      found.setdefault(site.target, (dense.lora_a.shape[-1], dense.lora_scale))
  return found


def has_lora(model: Transformer) -> bool:
  return bool(_adapted(model))


def settings(model: Transformer) -> Settings:
  """The adapter's rank, alpha and targets; raises if `model` has no LoRA or a mixed one."""
  found = _adapted(model)
  if not found:
    raise ValueError("the model has no LoRA adapter to export; add one with add_lora or "
                     "load one with load_adapter_dir / load_peft_adapter")
  kinds = set(found.values())
  if len(kinds) != 1:
    raise ValueError(f"LoRA rank/scale differ between targets: {found}; export needs one "
                     "rank and alpha for all")
  rank, scale = kinds.pop()
  alpha = scale * rank
  alpha = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha
  return Settings(rank, alpha, tuple(t for t in TARGETS if t in found))


def to_hf(model: Transformer) -> dict[str, np.ndarray]:
  """HF-named A and B matrices of the model's adapter (PEFT layout, psynth dtype)."""
  s = settings(model)
  out = {}
  for site in sites(model.config, s.targets):
    for which, rule in (("a", site.a_rule), ("b", site.b_rule)):
      out[rule.hf] = hf_names.to_hf(rule, np.asarray(variable(model, site.path(which))[...]))
  return out


def from_hf(model: Transformer, s: Settings, tensors: dict[str, np.ndarray], source: str) -> None:
  """Adds an adapter of settings `s` to `model` (in place) and fills it from HF-named tensors.

  Every tensor must be used and have exactly the shape this model needs (an adapter trained
  on another model fails here, naming both shapes).
  """
  cfg = model.config
  plan = []  # (variable path, psynth shape, rule): everything is checked before the model changes
  for site in sites(cfg, s.targets):
    kernel = variable(model, site.kernel).shape
    n_in = site.kernel_rule.in_ndim
    for which, rule, shape in (("a", site.a_rule, (*kernel[:n_in], s.rank)),
                               ("b", site.b_rule, (s.rank, *kernel[n_in:]))):
      if rule.hf not in tensors:
        raise ValueError(f"adapter {source} lacks tensor {rule.hf!r} (rank {s.rank}, "
                         f"targets {list(s.targets)})")
      want, got = _hf_shape(rule, shape), tuple(tensors[rule.hf].shape)
      if got != want:
        raise ValueError(
            f"adapter {source}: tensor {rule.hf!r} has shape {list(got)}, but this model "
            f"({cfg.model_type}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
            f"{cfg.num_heads}/{cfg.num_kv_heads} heads of {cfg.head_dim}, mlp "
            f"{cfg.intermediate_size}) needs {list(want)} at rank {s.rank}: the adapter was "
            "made for another model")
      plan.append((site.path(which), shape, rule))
  extra = sorted(set(tensors) - {rule.hf for _, _, rule in plan})
  if extra:
    raise ValueError(f"adapter {source} has {len(extra)} tensors this model has no place "
                     f"for, e.g. {extra[:3]} (this model has {cfg.num_layers} layers; "
                     f"targets {list(s.targets)})")
  add_lora(model, rank=s.rank, alpha=s.alpha, targets=s.targets, rngs=nnx.Rngs(0))
  for path, shape, rule in plan:
    var = variable(model, path)
    var.set_value(jnp.asarray(hf_names.to_psynth(rule, np.asarray(tensors[rule.hf]), shape),
                              var.dtype))


def _hf_shape(rule: hf_names.Rule, psynth_shape) -> tuple[int, ...]:
  n_in = math.prod(psynth_shape[:rule.in_ndim])
  return (math.prod(psynth_shape) // n_in, n_in)


# Any config will do to read module names off the table (they do not depend on shapes).
_ANY_CFG = ModelConfig(vocab_size=1, hidden_size=1, intermediate_size=1, num_layers=1,
                       num_heads=1, num_kv_heads=1, head_dim=1, max_position_embeddings=1)
