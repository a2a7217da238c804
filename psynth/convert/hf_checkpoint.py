"""Read an HF safetensors checkpoint directory (single file or sharded) into a `Transformer`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from psynth.convert import hf_names
from psynth.model.config import ModelConfig
from psynth.model.transformer import Transformer

log = logging.getLogger(__name__)


def tensor_files(ckpt_dir: Path) -> dict[str, Path]:
  """HF tensor name -> the safetensors file holding it."""
  index = ckpt_dir / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    return {name: ckpt_dir / f for name, f in weight_map.items()}
  single = ckpt_dir / "model.safetensors"
  if not single.exists():
    raise FileNotFoundError(
        f"no weights in {ckpt_dir}: expected model.safetensors or model.safetensors.index.json")
  with _open(single) as f:
    return {name: single for name in f.keys()}


def _open(path: Path):
  if not path.exists():
    raise FileNotFoundError(f"weight file {path} is missing")
  try:
    # "flax" returns jax arrays, which (unlike numpy) can hold bfloat16 checkpoints.
    return safe_open(str(path), framework="flax")
  except (SafetensorError, OSError) as e:
    raise ValueError(f"weight file {path} is not a readable safetensors file: {e}") from e


def load_params(cfg: ModelConfig, ckpt_dir: str | Path) -> Transformer:
  """Builds the model of `cfg` with the weights of the HF checkpoint in `ckpt_dir`."""
  ckpt_dir = Path(ckpt_dir)
  files = tensor_files(ckpt_dir)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  handles: dict[Path, object] = {}

  def read(name: str) -> np.ndarray:
    if name not in files:
      raise ValueError(f"checkpoint {ckpt_dir} lacks tensor {name!r} needed by a "
                       f"{cfg.model_type} model")
    path = files[name]
    if path not in handles:
      handles[path] = _open(path).__enter__()
    try:
      return np.asarray(handles[path].get_tensor(name).astype(jnp.float32))
    except (SafetensorError, OSError) as e:
      raise ValueError(f"cannot read tensor {name!r} from {path}: {e}") from e

  used = set()
  try:
    for rule in hf_names.rules(cfg):
      for name, path in hf_names.expand(rule, cfg):
        var = flat[path]
        var.set_value(jnp.asarray(hf_names.to_psynth(rule, read(name), var.shape), var.dtype))
        used.add(name)
  finally:
    for h in handles.values():
      h.__exit__(None, None, None)
  unused = sorted(set(files) - used - {"lm_head.weight"})  # tied checkpoints may still store it
  if unused:
    log.warning("ignored %d tensors of %s, e.g. %s", len(unused), ckpt_dir, unused[:3])
  return nnx.merge(graphdef, nnx.from_flat_state(flat))
