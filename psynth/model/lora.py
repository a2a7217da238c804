"""The synthesizer's LoRA adapter: low-rank updates on chosen projections, as `nnx.LoRAParam`s.

`forward(..., lora=True)` switches it on; workers run with it off and see the base model.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from psynth.model.transformer import Dense, Transformer

ATTENTION_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("gate", "up", "down")


def _targets(model: Transformer, names):
  unknown = set(names) - set(ATTENTION_TARGETS + MLP_TARGETS)
  if unknown:
    raise ValueError(f"LoRA targets {sorted(unknown)} unknown; "
                     f"choose from {ATTENTION_TARGETS + MLP_TARGETS}")
  for blk in model.layers:
    for name in names:
      yield getattr(blk.attn if name in ATTENTION_TARGETS else blk.mlp, name)


def add_lora(model: Transformer, *, rank: int = 16, alpha: float = 32.0,
             targets=ATTENTION_TARGETS, rngs: nnx.Rngs) -> Transformer:
  """Adds a LoRA adapter in place (A random, B zero: the identity until trained)."""
  if rank < 1:
    raise ValueError(f"LoRA rank={rank}; must be >= 1")
  for layer in _targets(model, targets):
    layer: Dense
    in_shape = layer.kernel.shape[:len(layer.in_axes)]
    out_shape = layer.kernel.shape[len(layer.in_axes):]
    fan_in = math.prod(in_shape)
    a = jax.random.normal(rngs.params(), (*in_shape, rank), jnp.float32) / math.sqrt(fan_in)
    # float32 whatever the backbone's dtype (bf16 on accelerators): the trained parameters and
    # their optimizer state keep full precision; `dense` casts them to the activations' dtype.
    # nnx.data: the attributes were None (static) until now.
    layer.lora_a = nnx.data(nnx.LoRAParam(a, logical_axes=(*layer.in_axes, "lora_rank")))
    layer.lora_b = nnx.data(nnx.LoRAParam(jnp.zeros((rank, *out_shape), jnp.float32),
                                          logical_axes=("lora_rank", *layer.out_axes)))
    layer.lora_scale = alpha / rank
  return model
