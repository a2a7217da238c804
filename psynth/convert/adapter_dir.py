"""psynth's own adapter directory: what training writes and every export starts from.

    DIR/lora.json          {"format": "psynth-lora", "rank": 16, "alpha": 32,
                            "targets": ["q", "k", "v", "o"],
                            "model": {model_type, num_layers, hidden_size, intermediate_size,
                                      num_heads, num_kv_heads, head_dim, vocab_size}}
    DIR/lora.safetensors   the A/B matrices under HF module names, in PEFT's layout, float32
                           whatever the model's dtype (as trained):
                           "model.layers.{i}.self_attn.q_proj.lora_A.weight" [rank, in] and
                           "...lora_B.weight" [out, rank]
    DIR/mapper/            the cache mapper, if any (`mapper_io`: mapper.json + mapper.safetensors)

`model` records the shape the adapter was trained for, so loading it into another model
fails with both shapes named instead of a reshape error.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.numpy import save_file

from psynth.cache.mappers import CacheMapper
from psynth.convert import lora_names, mapper_io
from psynth.convert.files import read_json, read_tensors
from psynth.atomic import atomic_dir
from psynth.model.config import ModelConfig
from psynth.model.transformer import Transformer

FORMAT = "psynth-lora"
LORA_JSON, LORA_WEIGHTS, MAPPER_DIR = "lora.json", "lora.safetensors", "mapper"
_SHAPE_FIELDS = ("model_type", "num_layers", "hidden_size", "intermediate_size", "num_heads",
                 "num_kv_heads", "head_dim", "vocab_size")


def model_shape(cfg: ModelConfig) -> dict:
  return {f: getattr(cfg, f) for f in _SHAPE_FIELDS}


def save_adapter_dir(out_dir: str | Path, model: Transformer,
                     mapper: CacheMapper | None = None) -> Path:
  """Writes the model's LoRA (and the mapper, if given) as a psynth adapter dir, atomically."""
  s = lora_names.settings(model)
  meta = {"format": FORMAT, "rank": s.rank, "alpha": s.alpha, "targets": list(s.targets),
          "model": model_shape(model.config)}
  tensors = lora_names.to_hf(model)
  with atomic_dir(out_dir) as tmp:
    (tmp / LORA_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    save_file(tensors, tmp / LORA_WEIGHTS)
    if mapper is not None:
      mapper_io.save_mapper(mapper, tmp / MAPPER_DIR)
  return Path(out_dir)


def load_adapter_dir(adapter_dir: str | Path, model: Transformer) -> CacheMapper | None:
  """Adds the directory's LoRA to `model` (in place); returns its mapper (None if absent)."""
  adapter_dir = Path(adapter_dir)
  meta_path = adapter_dir / LORA_JSON
  if not meta_path.exists():
    raise FileNotFoundError(f"no psynth adapter in {adapter_dir}: expected {LORA_JSON} + "
                            f"{LORA_WEIGHTS} (and optionally {MAPPER_DIR}/)")
  meta = read_json(meta_path, "a psynth adapter's settings")
  if meta.get("format") != FORMAT:
    raise ValueError(f"{meta_path}: format={meta.get('format')!r}; expected {FORMAT!r}")
  here = model_shape(model.config)
  if meta["model"] != here:
    differ = sorted(k for k in set(here) | set(meta["model"]) if meta["model"].get(k) != here.get(k))
    raise ValueError(
        f"adapter {adapter_dir} was made for a model with "
        f"{ {k: meta['model'].get(k) for k in differ} }; this model has "
        f"{ {k: here.get(k) for k in differ} } (full shape: {here})")
  settings = lora_names.Settings(int(meta["rank"]), meta["alpha"], tuple(meta["targets"]))
  lora_names.from_hf(model, settings, read_tensors(adapter_dir / LORA_WEIGHTS, "the LoRA A/B "
                                                   "matrices"), str(adapter_dir))
  if not (adapter_dir / MAPPER_DIR).exists():
    return None
  cfg = model.config
  return mapper_io.load_mapper(adapter_dir / MAPPER_DIR, cfg.num_layers, cfg.num_kv_heads)
