"""Training checkpoints with Orbax: trainable params, optimizer state, step, data position.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact. A checkpoint records the *signature*
of what it holds (model shape, LoRA, mapper); resuming into a run with another signature is
refused with both named, instead of failing deep inside a restore.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class Checkpoints:

  def __init__(self, directory: str | Path, *, max_to_keep: int = 3):
    # epath: a local directory or a bucket ("gs://b/run/checkpoints", shared by every host).
    self.directory = (epath.Path(str(directory)) if "://" in str(directory)
                      else epath.Path(Path(directory).resolve()))
    self._mngr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, trainable: dict, opt_state: Any, meta: dict) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"trainable": trainable, "opt_state": opt_state}),
        meta=ocp.args.JsonSave(dict(meta, step=int(step)))), force=True)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def meta(self, step: int) -> dict:
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, trainable: dict, opt_state: Any, signature: dict):
    """(trainable, opt_state, meta) of `step`, placed like the given (sharded) templates."""
    meta = self.meta(step)
    if meta.get("signature") != signature:
      raise ValueError(
          f"checkpoint {self.directory}/{step} was written by another configuration:\n"
          f"  checkpoint: {meta.get('signature')}\n  this run:   {signature}\n"
          "use a new --config.workdir, or the config that wrote it")
    as_abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    target = jax.tree.map(as_abstract, {"trainable": trainable, "opt_state": opt_state})
    r = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return r.state["trainable"], r.state["opt_state"], meta

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
