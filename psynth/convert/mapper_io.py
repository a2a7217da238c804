"""Cache mapper checkpoints: `mapper.safetensors` + `mapper.json` (kind and model shape)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from psynth.atomic import atomic_dir
from psynth.cache import mappers
from psynth.cache.mappers import CacheMapper
from psynth.convert.files import read_json, read_tensors



def _params(mapper: CacheMapper) -> dict:
  """name -> the mapper's parameters (w1, b1, w2, b2 for the MLP kinds; all `MapperParam`)."""
  state = nnx.state(mapper, nnx.Param)
  return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def save_mapper(mapper: CacheMapper, out_dir: str | Path) -> Path:
  """Writes the mapper atomically (a temporary sibling directory renamed into place)."""
  with atomic_dir(out_dir) as tmp:
    save_file({n: np.asarray(var[...]) for n, var in _params(mapper).items()},
              tmp / "mapper.safetensors")
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
  kind = meta.get("kind")
  if kind not in mappers.KINDS or kind == "none":
    raise ValueError(f"{meta_path}: mapper kind={kind!r}; this psynth knows {mappers.KINDS[1:]}")
  mapper = mappers.make(kind, num_layers, num_kv_heads)
  tensors = read_tensors(ckpt_dir / "mapper.safetensors", "the cache mapper's weights")
  params = _params(mapper)
  if set(tensors) != set(params):
    raise ValueError(f"{ckpt_dir / 'mapper.safetensors'} holds {sorted(tensors)}; a {kind!r} "
                     f"mapper has {sorted(params)}")
  for name, var in params.items():
    if tensors[name].shape != var.shape:
      raise ValueError(f"mapper tensor {name} in {ckpt_dir} has shape {tensors[name].shape}, "
                       f"expected {var.shape}")
    var.set_value(jnp.asarray(tensors[name]))
  return mapper
