"""Reading checkpoint files with errors that name the file and what it should hold."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.numpy import load_file


def read_json(path: Path, what: str) -> dict:
  """A JSON object file, or an error naming the file and what it should hold."""
  try:
    return json.loads(Path(path).read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not readable JSON ({e}); expected {what}") from None


def read_tensors(path: Path, what: str) -> dict:
  """A safetensors file's arrays, or an error naming the file and what it should hold."""
  try:
    return load_file(path)
  except Exception as e:  # safetensors raises its own error types for a bad header
    raise ValueError(f"{path} is not a readable safetensors file ({e}); expected {what}") \
        from None
