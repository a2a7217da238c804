"""Trained synthesizer adapters shipped with psynth, found by name.

    psynth.load("smollm2-135m-instruct", adapter="default")

Each lives in `psynth/adapters/<model name>/<adapter name>/` as a psynth adapter directory
(`lora.json`, `lora.safetensors`, `mapper/`) with a `CARD.md` saying how it was made.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
NONE = ("none", "")


def shipped(model_name: str) -> list[str]:
  """Names of the adapters shipped for `model_name`."""
  d = HERE / model_name
  return sorted(p.name for p in d.iterdir() if (p / "lora.json").exists()) if d.is_dir() else []


def resolve(model_name: str, adapter: str | Path) -> Path | None:
  """The directory of `adapter`: a shipped name for `model_name`, or a path; None for "none"."""
  name = str(adapter)
  if name.lower() in NONE:
    return None
  path = Path(name).expanduser()
  if path.is_dir():
    return path
  if "/" not in name and (HERE / model_name / name).is_dir():
    return HERE / model_name / name
  have = shipped(str(model_name))
  raise FileNotFoundError(
      f"adapter {name!r} not found: not a directory, and not one shipped for model "
      f"{model_name!r} (shipped: {have or 'none'}); pass a shipped name, 'none', or an adapter "
      "directory (psynth, PEFT or reference release)")
