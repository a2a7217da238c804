"""Cache mapper checkpoints: `mapper.safetensors` + `mapper.json` (kind and model shape)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from psynth.atomic import atomic_dir
from psynth.cache.mapper import CacheMapper
from psynth.convert.files import read_json, read_tensors

_NAMES = ("w1", "b1", "w2", "b2")


def save_mapper(mapper: CacheMapper, out_dir: str | Path) -> Path:
  """Writes the mapper atomically (a temporary sibling directory renamed into place)."""
  with atomic_dir(out_dir) as tmp:
    save_file({n: np.asarray(getattr(mapper, n)[...]) for n in _NAMES}, tmp / "mapper.safetensors")
    (tmp / "mapper.json").write_text(json.dumps(mapper.shape_signature(), indent=1) + "\n")
  return Path(out_dir)


def load_mapper(ckpt_dir: str | Path, num_layers: int, num_kv_heads: int) -> CacheMapper:
  """Reads a mapper for a model with `num_layers` layers and `num_kv_heads` KV heads."""
  ckpt_dir = Path(ckpt_dir)
  meta_path = ckpt_dir / "mapper.json"
  if not meta_path.exists():
    raise FileNotFoundError(f"no mapper checkpoint in {ckpt_dir} (expected mapper.json + "
                            "mapper.safetensors)")
  meta = read_json(meta_path, "the cache mapper's kind and model shape")
  if (meta["num_layers"], meta["num_kv_heads"]) != (num_layers, num_kv_heads):
    raise ValueError(
        f"mapper checkpoint {ckpt_dir} was made for a model with {meta['num_layers']} layers "
        f"and {meta['num_kv_heads']} KV heads; this model has {num_layers} layers and "
        f"{num_kv_heads} KV heads")
  mapper = CacheMapper(meta["kind"], num_layers, num_kv_heads, rngs=nnx.Rngs(0))
  tensors = read_tensors(ckpt_dir / "mapper.safetensors", "the cache mapper's weights")
  for name in _NAMES:
    var = getattr(mapper, name)
    if tensors[name].shape != var.shape:
      raise ValueError(f"mapper tensor {name} in {ckpt_dir} has shape {tensors[name].shape}, "
                       f"expected {var.shape}")
    var.set_value(jnp.asarray(tensors[name]))
  return mapper
