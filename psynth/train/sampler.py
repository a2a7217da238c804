"""Which examples make up step k's batch: a pure function of (seed, step), grouped by shape.

Examples are grouped by their branch bucket (`batch.branch_bucket`: 2, 3, 4, 6, 8 ...), and
every batch is drawn from one group, so a step pads few empty branches and a run compiles one
step per group. Each epoch shuffles every group (seeded), cuts it into batches (a group's last
partial batch is completed from the group's start, so no example waits a whole epoch), and
shuffles the batches. Nothing is stateful: a run resumed at step k draws what it would have.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


class Sampler:

  def __init__(self, groups: Sequence[int], batch_size: int, seed: int):
    """`groups[i]`: the group (branch bucket) of example i."""
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}; must be >= 1")
    if not len(groups):
      raise ValueError("no examples to sample from")
    self.groups = np.asarray(groups)
    self.batch_size, self.seed = batch_size, seed
    self.members = {g: np.flatnonzero(self.groups == g) for g in np.unique(self.groups)}
    self.steps_per_epoch = sum(-(-len(m) // batch_size) for m in self.members.values())

  @functools.lru_cache(maxsize=2)
  def epoch(self, e: int) -> list[np.ndarray]:
    """The batches of epoch e, in order."""
    rng = np.random.default_rng([self.seed, e])
    batches = []
    for g in sorted(self.members):
      m = rng.permutation(self.members[g])
      m = np.resize(m, len(m) + (-len(m) % self.batch_size))  # completed cyclically
      batches += np.split(m, len(m) // self.batch_size)
    return [batches[i] for i in rng.permutation(len(batches))]

  def indices(self, step: int) -> np.ndarray:
    """Example indices of step `step` (0-based)."""
    e, i = divmod(step, self.steps_per_epoch)
    return self.epoch(e)[i]
