"""Loads an `ml_collections` config file (`configs/*.py`) by name or path.

Config files are plain files, not a package: a derived config (`configs/tiny.py`) loads its
base through here, and so do tests and notebooks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load(name_or_path: str | Path) -> ml_collections.ConfigDict:
  """`get_config()` of `configs/NAME.py`, or of the file at a path."""
  path = Path(name_or_path)
  if not path.suffix:
    path = CONFIG_DIR / f"{name_or_path}.py"
  if not path.is_file():
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
    raise FileNotFoundError(f"config {name_or_path!r} not found; known: {known} or a .py path")
  spec = importlib.util.spec_from_file_location(f"psynth_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
