"""Randomness from strings: every random choice in the data is a function of names, never of
order or of a global state, so an example does not change when other examples do."""

from __future__ import annotations

import hashlib
import random


def rng(*parts) -> random.Random:
  """A generator seeded by `parts` joined with ":" (e.g. seed, builder name, record id)."""
  return random.Random(":".join(str(p) for p in parts))


def hash01(*parts) -> float:
  """A stable number in [0, 1) for `parts` (sha256: the same on every machine and run)."""
  h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
  return int.from_bytes(h[:8], "big") / 2.0 ** 64
