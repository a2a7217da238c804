"""`atomic_dir(out)`: write a whole directory, or nothing (a temporary sibling renamed into place)."""

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
