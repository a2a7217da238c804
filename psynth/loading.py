"""`load(name_or_path)`: weights in, from the embedded default, an HF directory, a GGUF file or a hub id."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import SUPPORTED_DTYPES, ModelConfig
from psynth.model.transformer import Transformer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Loaded:
  """A model with what it needs to talk: tokenizer, config, stop tokens, where it came from."""

  model: Transformer
  tokenizer: Any  # a transformers tokenizer
  config: ModelConfig
  path: Path  # the HF checkpoint directory the weights came from
  eos_ids: tuple[int, ...]
  _engine: Any = dataclasses.field(default=None, repr=False)

  @property
  def engine(self):
    """The compiled prefill/decode for this model (built once, on first use)."""
    if self._engine is None:
      from psynth.synthesis.generate import Engine
      self._engine = Engine(self.model)
    return self._engine


def resolve_checkpoint(name_or_path: str | Path) -> Path:
  """The local HF checkpoint directory for a model name, directory, GGUF file or hub id."""
  name = str(name_or_path)
  path = Path(name).expanduser()
  if path.is_dir():
    if not (path / "config.json").exists():
      raise FileNotFoundError(f"{path} is a directory but has no config.json; expected an HF "
                              "checkpoint directory (config.json + *.safetensors + tokenizer)")
    return path
  from psynth.convert import default_model

  if name == default_model.DEFAULT_MODEL:
    return default_model.ensure_default_model()
  if name == "tiny-random":
    from psynth.convert.tiny_model import ensure_tiny_model
    return ensure_tiny_model()
  if path.suffix == ".gguf":
    if not path.exists():
      raise FileNotFoundError(f"GGUF file {path} does not exist")
    from psynth.convert.gguf import gguf_to_hf
    digest = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
                          .encode()).hexdigest()[:12]
    out = default_model.cache_root() / "gguf" / f"{path.stem}-{digest}"
    if not (out / "config.json").exists():
      log.info("converting %s to an HF checkpoint in %s", path, out)
      gguf_to_hf(path, out)
    return out
  if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
    raise FileNotFoundError(
        f"model {name!r} not found; pass {default_model.DEFAULT_MODEL!r}, 'tiny-random' (for "
        "tests), an HF checkpoint "
        "directory, a .gguf file, or a hub id such as 'Qwen/Qwen3-0.6B' (needs network)")
  from huggingface_hub import snapshot_download  # only reached for hub ids, never in tests
  return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                      "*.txt", "*.jinja"]))


def _eos_ids(path: Path, tokenizer) -> tuple[int, ...]:
  ids: set[int] = set()
  gen = path / "generation_config.json"
  if gen.exists():
    eos = json.loads(gen.read_text()).get("eos_token_id")
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
  if tokenizer.eos_token_id is not None:
    ids.add(tokenizer.eos_token_id)
  return tuple(sorted(ids))


def load(name_or_path: str | Path = "smollm2-135m-instruct", dtype: str = "float32") -> Loaded:
  """Loads a model, its tokenizer and config; `dtype` sets parameters and activations alike.

  `name_or_path`: "smollm2-135m-instruct" (the embedded default, needs no hub), an HF
  checkpoint directory, a .gguf file, or a hub id (needs network).
  """
  if dtype not in SUPPORTED_DTYPES:
    raise ValueError(f"dtype={dtype!r}; supported: {SUPPORTED_DTYPES}")
  from transformers import AutoTokenizer

  path = resolve_checkpoint(name_or_path)
  cfg = ModelConfig.from_hf(path, dtype=dtype, param_dtype=dtype)
  model = load_params(cfg, path)
  tokenizer = AutoTokenizer.from_pretrained(str(path))
  log.info("loaded %s from %s (%d layers, %s)", name_or_path, path, cfg.num_layers, dtype)
  return Loaded(model, tokenizer, cfg, path, _eos_ids(path, tokenizer))
