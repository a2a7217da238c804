"""JAX's persistent compilation cache, on by default for the command line: a rerun of the same
command (same shapes, same jax/XLA) loads its executables instead of compiling them again.

    python -m psynth eval ... --config.compile_cache=none      # off
    python -m psynth eval ... --config.compile_cache=/tmp/xla  # elsewhere
Default directory: `$PSYNTH_CACHE/xla` (else `~/.cache/psynth/xla`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from psynth.paths import cache_root

log = logging.getLogger(__name__)
OFF = ("none", "off", "false")


def enable(directory: str = "") -> Path | None:
  """Turns the cache on in `directory` ("" = the default; "none" = off); returns it."""
  if str(directory).lower() in OFF:
    return None
  path = Path(directory).expanduser() if directory else cache_root() / "xla"
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  # Every executable: the model's small ones (a decode step) are as worth keeping.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  log.info("XLA compilation cache: %s", path)
  return path
