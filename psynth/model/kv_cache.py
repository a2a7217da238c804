"""`KVCache`: the keys/values of every layer as one explicit pytree value.

The model takes a cache and returns a new one; nothing is hidden in modules. That is what
lets synthesis slice a branch out of a worker's cache, re-position it and concatenate it
with others using plain functions (this package never imports the model).

Slots are addressed by index; what a slot *means* is carried beside it: the absolute RoPE
position its key was rotated to, and whether it holds a token at all. Attention reads only
those two arrays, so slots need not be contiguous or sorted by position: a merged cache of
several branches that all start at position 0 is an ordinary cache.
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
  k: jax.Array  # [layers, batch, slots, kv_heads, head_dim], keys already rotated by RoPE
  v: jax.Array  # [layers, batch, slots, kv_heads, head_dim]
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
  def num_layers(self) -> int:
    return self.k.shape[0]

  @property
  def batch(self) -> int:
    return self.k.shape[1]

  @property
  def slots(self) -> int:
    return self.k.shape[2]

  def replace(self, **kw) -> "KVCache":
    return dataclasses.replace(self, **kw)
