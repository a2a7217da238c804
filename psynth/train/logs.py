"""Run logs: TensorBoard scalars (process 0 only) without TensorFlow."""

from __future__ import annotations

import time
from pathlib import Path

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class ScalarWriter:
  """Writes `{tag: value}` at a step to TensorBoard event files under `logdir`.

  Only process 0 writes (every process computes the same global metrics); others no-op.
  """

  def __init__(self, logdir: str | Path):
    self._writer = None
    if jax.process_index() == 0:
      if "://" not in str(logdir):
        Path(logdir).mkdir(parents=True, exist_ok=True)
      self._writer = EventFileWriter(str(logdir))  # tensorboard's gfile: local, gs://, s3://

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self._writer is None:
      return
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_scalars(logdir: str | Path, tag: str) -> list[tuple[int, float]]:
  """(step, value) pairs of one scalar tag, in order (for tests and results pages)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  acc = EventAccumulator(str(logdir))
  acc.Reload()
  if tag not in acc.Tags()["scalars"]:
    raise KeyError(f"no scalar {tag!r} in {logdir}; found {acc.Tags()['scalars']}")
  return [(e.step, e.value) for e in acc.Scalars(tag)]
