"""Where a model's HF checkpoint directory is: the embedded default, a directory, a GGUF file
(converted once, cached) or a hub id."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from psynth.convert import default_model
from psynth.convert.gguf import gguf_to_hf
from psynth.convert.tiny_model import ensure_tiny_model
from psynth.paths import cache_root

log = logging.getLogger(__name__)


def resolve_checkpoint(name_or_path: str | Path) -> Path:
  """The local HF checkpoint directory for a model name, directory, GGUF file or hub id."""
  name = str(name_or_path)
  path = Path(name).expanduser()
  if path.is_dir():
    if not (path / "config.json").exists():
      raise FileNotFoundError(f"{path} is a directory but has no config.json; expected an HF "
                              "checkpoint directory (config.json + *.safetensors + tokenizer)")
    return path
  if name == default_model.DEFAULT_MODEL:
    return default_model.ensure_default_model()
  if name == "tiny-random":
    return ensure_tiny_model()
  if path.suffix == ".gguf":
    if not path.exists():
      raise FileNotFoundError(f"GGUF file {path} does not exist")
    digest = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
                          .encode()).hexdigest()[:12]
    out = cache_root() / "gguf" / f"{path.stem}-{digest}"
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
