"""The evaluation's files under the output directory, written one JSON line at a time.

    DIR/run.json                                   settings the files were made with
    DIR/branches/{task}.shard-K-of-N.jsonl         worker texts per example (all methods share them)
    DIR/predictions/{task}/{method}.shard-K-of-N.jsonl   one scored reply per example
    DIR/predictions/{task}/{method}.jsonl          merged over shards (`report.merge_main`)
    DIR/skipped.json, DIR/summary.json, DIR/results.md

Every line is flushed and fsynced as it is written, so an interrupted run loses at most the
line being written; a torn last line is cut off when the file is opened again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from psynth import atomic

SHARD_GLOB = "*.shard-*-of-*.jsonl"


def shard_tag(shard_id: int, num_shards: int) -> str:
  return f"shard-{shard_id:05d}-of-{num_shards:05d}"


def branch_file(out: Path, task: str, shard_id: int, num_shards: int) -> Path:
  return out / "branches" / f"{task}.{shard_tag(shard_id, num_shards)}.jsonl"


def prediction_file(out: Path, task: str, method: str, shard_id: int, num_shards: int) -> Path:
  return out / "predictions" / task / f"{method}.{shard_tag(shard_id, num_shards)}.jsonl"


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict]:
  """The complete lines of `path` ([] if absent). A torn last line (no newline) is ignored,
  and with `repair` also cut off the file, so appends start on a fresh line."""
  if not path.is_file():
    return []
  data = path.read_bytes()
  keep = data[:data.rfind(b"\n") + 1]
  if repair and len(keep) != len(data):
    with open(path, "r+b") as f:
      f.truncate(len(keep))
  out = []
  for n, line in enumerate(keep.decode("utf-8").splitlines(), 1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n} is not valid JSON ({e.msg}); expected one record per "
                         "line: delete that line or the file to redo it") from None
  return out


def read_shards(folder: Path, stem: str) -> list[dict]:
  """Every complete record of `folder/{stem}.shard-*.jsonl`, whatever sharding wrote them."""
  return [r for p in sorted(folder.glob(f"{stem}.shard-*-of-*.jsonl")) for r in read_jsonl(p)]


def open_append(path: Path) -> IO[str]:
  path.parent.mkdir(parents=True, exist_ok=True)
  read_jsonl(path, repair=True)
  return open(path, "a", encoding="utf-8")


def append(f: IO[str], record: dict) -> None:
  f.write(json.dumps(record, ensure_ascii=False) + "\n")
  f.flush()
  os.fsync(f.fileno())


def read_json(path: Path) -> dict:
  """The JSON object in `path` ({} if absent)."""
  return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, obj) -> None:
  """Writes `obj` as indented JSON, atomically (a reader never sees half a file)."""
  atomic.write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
