"""What synthesis adds to the base model: the trained cache mapper, and the LoRA switched on."""

from __future__ import annotations

import dataclasses

from psynth.cache.mappers import CacheMapper


@dataclasses.dataclass
class Adapter:
  """A cache mapper (None: caches merged as re-encoded) and whether the model's LoRA is on."""

  mapper: CacheMapper | None = None
  lora: bool = False
