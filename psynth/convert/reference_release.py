"""The reference release layout (Graph-COM/Parallel-Synthesis), in and out.

    cache_mapper.pt             torch state dict of Linear(3,32) -> SiLU -> Linear(32,4):
                                net.0.weight [32,3], net.0.bias [32], net.2.weight [4,32], net.2.bias [4]
    cache_mapper_config.json    {"hidden_dim": 32, "metadata_features": "both"} (the reference reads it)
    judger_lora/                the synthesizer LoRA as a PEFT adapter directory

torch's Linear stores `[out, in]`; our `w1`/`w2` are `[in, out]`, hence the transposes. Only
the `affine` mapper has this form. The reference's coefficients are ours (`mapper.coefficients`):
features [log1p(length), log1p(branches), layer/(L-1)], outputs r0..r3 ->
a_k = 1 + 0.1 tanh(r0), b_k = 0.1 tanh(r1), a_v = 1 + 0.1 tanh(r2), b_v = 0.1 tanh(r3).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from psynth.cache import mappers
from psynth.cache.mappers import CacheMapper
from psynth.convert import lora_names, peft_io
from psynth.atomic import atomic_dir
from psynth.model.transformer import Transformer

MAPPER = "cache_mapper.pt"
MAPPER_CONFIG = "cache_mapper_config.json"
LORA_DIR = "judger_lora"
# torch state-dict key -> (our parameter, transposed?)
_KEYS = {"net.0.weight": ("w1", True), "net.0.bias": ("b1", False),
         "net.2.weight": ("w2", True), "net.2.bias": ("b2", False)}
_FEATURES = "both"  # the reference's name for our three features (length, branches, layer)


def mapper_state_dict(mapper: CacheMapper) -> dict:
  """The reference's torch state dict of an `affine` mapper."""
  import torch

  if mapper.kind != "affine":
    raise ValueError(
        f"a {mapper.kind!r} mapper cannot be written as the reference's {MAPPER}, which holds "
        "only kind 'affine' (Linear(32, 4): one a_k, b_k, a_v, b_v per branch and layer); "
        "keep it in psynth's own format (mapper_io.save_mapper) or train an 'affine' mapper")
  out = {}
  for key, (name, transpose) in _KEYS.items():
    value = np.asarray(getattr(mapper, name)[...])
    out[key] = torch.from_numpy(np.ascontiguousarray(value.T if transpose else value).copy())
  return out


def fill_mapper(mapper: CacheMapper, state: dict, source: str) -> CacheMapper:
  """Sets an `affine` mapper to the reference state dict's values (bit for bit)."""
  if set(state) != set(_KEYS):
    raise ValueError(f"{source} has keys {sorted(state)}; expected {sorted(_KEYS)} (the "
                     "reference's affine mapper)")
  for key, (name, transpose) in _KEYS.items():
    var = getattr(mapper, name)
    value = state[key].detach().cpu().numpy()
    value = value.T if transpose else value
    if value.shape != var.shape:
      want = var.shape[::-1] if transpose else var.shape
      raise ValueError(f"{source}: {key} has shape {list(state[key].shape)}; expected "
                       f"{list(want)}")
    var.set_value(jnp.asarray(value, var.dtype))
  return mapper


def save_reference_release(out_dir: str | Path, model: Transformer, mapper: CacheMapper | None,
                           base_name: str | None = None) -> Path:
  """Writes `cache_mapper.pt` (+ its config) and `judger_lora/` (atomically).

  Either part may be absent (no mapper; a model without LoRA), as in the reference's own
  checkpoints, but not both.
  """
  import torch

  has_lora = lora_names.has_lora(model)
  if mapper is None and not has_lora:
    raise ValueError("nothing to release: no mapper and no LoRA on the model")
  state = mapper_state_dict(mapper) if mapper is not None else None
  with atomic_dir(out_dir) as tmp:
    if state is not None:
      torch.save(state, tmp / MAPPER)
      (tmp / MAPPER_CONFIG).write_text(json.dumps(
          {"hidden_dim": mapper.w1.shape[1], "metadata_features": _FEATURES}, indent=2) + "\n")
    if has_lora:
      peft_io.save_peft_adapter(model, tmp / LORA_DIR, base_name=base_name)
  return Path(out_dir)


def load_reference_release(release_dir: str | Path, model: Transformer) -> CacheMapper | None:
  """Reads a reference release: its LoRA goes into `model` (in place), its mapper is returned
  (None if the release has none)."""
  import torch

  release_dir = Path(release_dir)
  has_mapper, has_lora = (release_dir / MAPPER).is_file(), (release_dir / LORA_DIR).is_dir()
  if not (has_mapper or has_lora):
    raise FileNotFoundError(f"no reference release in {release_dir}: expected {MAPPER} "
                            f"and/or {LORA_DIR}/")
  mapper = None
  if has_mapper:
    cfg = model.config
    mapper = mappers.make("affine", cfg.num_layers, cfg.num_kv_heads)
    config_path = release_dir / MAPPER_CONFIG
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    hidden = mapper.w1.shape[1]
    if config.get("hidden_dim", hidden) != hidden or config.get("metadata_features",
                                                                _FEATURES) != _FEATURES:
      raise ValueError(f"{config_path}: hidden_dim={config.get('hidden_dim')!r}, "
                       f"metadata_features={config.get('metadata_features')!r}; psynth's affine "
                       f"mapper is hidden_dim={hidden}, metadata_features={_FEATURES!r}")
    state = torch.load(release_dir / MAPPER, map_location="cpu", weights_only=True)
    fill_mapper(mapper, state, str(release_dir / MAPPER))
  if has_lora:
    peft_io.load_peft_adapter(release_dir / LORA_DIR, model)
  return mapper
