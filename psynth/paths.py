"""Where psynth keeps what it makes on a machine: converted models, downloads, compiled code."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
  """Where converted models and downloads live: `$PSYNTH_CACHE`, else `~/.cache/psynth`."""
  return Path(os.environ.get("PSYNTH_CACHE") or Path.home() / ".cache" / "psynth").expanduser()
