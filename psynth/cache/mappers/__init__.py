"""Cache mappers by name: `make(cfg.mapper.kind, ...)`. Kinds: "none" (no mapper: the
re-encoded caches are merged as they are) and one registered class per file below."""

from __future__ import annotations

from flax import nnx

from psynth.cache.mappers import affine, per_head  # noqa: F401  (they register themselves)
from psynth.cache.mappers.base import REGISTRY, CacheMapper, MapperParam, calibrate, features

KINDS = ("none", *REGISTRY)


def make(kind: str, num_layers: int, num_kv_heads: int, *,
         rngs: nnx.Rngs | None = None) -> CacheMapper | None:
  """A fresh mapper of `kind` (the identity until trained); None for kind "none"."""
  if kind == "none":
    return None
  if kind not in REGISTRY:
    raise ValueError(f"mapper kind={kind!r}; supported: {KINDS}")
  return REGISTRY[kind](num_layers, num_kv_heads, rngs=rngs or nnx.Rngs(0))


__all__ = ["KINDS", "CacheMapper", "MapperParam", "calibrate", "features", "make"]
