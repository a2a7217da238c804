"""`KVCache`: the keys/values of every layer as one explicit pytree value.

The model takes a cache and returns a new one; nothing is hidden in modules. That is what
lets synthesis slice a branch out of a worker's cache, re-position it and concatenate it
with others using plain functions (this package never imports the model).

Slots are addressed by index; what a slot *means* is carried beside it: the absolute RoPE
position its key was rotated to, and whether it holds a token at all. Attention reads only
those two arrays, so slots need not be contiguous or sorted by position: a merged cache of
several branches that all start at position 0 is an ordinary cache.

K and V are stored one of two ways, the same values either way: *stacked*, one
`[layers, batch, slots, kv_heads, head_dim]` array each (what every cache operation,
training and the scanned layer loop take), or *per layer*, a tuple of `[batch, slots,
kv_heads, head_dim]` arrays (`per_layer()`, what the decode loop runs on). A decode step reads
every layer's slots and writes one token into each: from a stacked array XLA on CPU copies
each layer's slice into a buffer of its own before reading it, twice the cache traffic of
the step (`results/throughput_smollm2_135m.md`); separate buffers are read where they are.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["k", "v", "positions", "valid", "end"],
    meta_fields=["logical_axes"],
)
@dataclasses.dataclass(frozen=True)
class KVCache:
  # [layers, batch, slots, kv_heads, head_dim], keys already rotated by RoPE; or, per layer,
  # a tuple of `layers` arrays [batch, slots, kv_heads, head_dim].
  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  positions: jax.Array  # [batch, slots] int32: absolute position of each slot's token
  valid: jax.Array  # [batch, slots] bool: slot holds a real token (not padding, not empty)
  end: jax.Array  # [] int32: next slot a forward writes to (the same for every row)
  # Static: logical axis names of k/v, so one set of rules shards every cache alike.
  logical_axes: tuple[str | None, ...] = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")

  @classmethod
  def init(cls, num_layers: int, batch: int, slots: int, num_kv_heads: int, head_dim: int,
           dtype=jnp.float32) -> "KVCache":
    """An empty cache with room for `slots` tokens per row."""
    shape = (num_layers, batch, slots, num_kv_heads, head_dim)
    return cls(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        positions=jnp.zeros((batch, slots), jnp.int32),
        valid=jnp.zeros((batch, slots), bool),
        end=jnp.zeros((), jnp.int32),
    )

  @property
  def is_per_layer(self) -> bool:
    return isinstance(self.k, tuple)

  @property
  def num_layers(self) -> int:
    return len(self.k) if self.is_per_layer else self.k.shape[0]

  @property
  def batch(self) -> int:
    return self.positions.shape[0]

  @property
  def slots(self) -> int:
    return self.positions.shape[1]

  @property
  def layer_axes(self) -> tuple[str | None, ...]:
    """Logical axis names of one layer's K or V (per-layer storage)."""
    return self.logical_axes[1:]

  def per_layer(self) -> "KVCache":
    """The same cache with K and V as one array per layer (a copy; a no-op if already)."""
    if self.is_per_layer:
      return self
    return self.replace(k=tuple(self.k), v=tuple(self.v))

  def stacked(self) -> "KVCache":
    """The same cache with K and V as `[layers, ...]` arrays (a copy; a no-op if already)."""
    if not self.is_per_layer:
      return self
    return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))

  def replace(self, **kw) -> "KVCache":
    return dataclasses.replace(self, **kw)
