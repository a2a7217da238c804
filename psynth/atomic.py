"""Writes that are whole or absent: a directory (`atomic_dir`) or a text file (`write_text`).

Both write a temporary sibling and rename it into place, so a reader (or a run killed
mid-write) sees either the old content or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path):
  """Yields an empty temporary directory; on success it replaces `out_dir`, on error it vanishes.

  The temporary directory is a sibling of `out_dir`, so the final rename never crosses a file
  system and a reader sees either the old directory or the complete new one.
  """
  out_dir = Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  try:
    yield tmp
    if out_dir.exists():
      if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory; pass a directory path")
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_text(path: str | Path, text: str) -> Path:
  """Writes `text` to `path` (UTF-8), flushed to disk, then renamed over it."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path
