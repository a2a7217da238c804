"""Layers stored stacked, for `lax.scan` (`model.scan_layers`): the L `Block`s of a
`Transformer` as one `Block` whose every array has a leading `[L, ...]` axis ("layers",
replicated by the sharding rules), and back.

Stacked, `forward` scans over the stored arrays: XLA compiles one layer instead of L and no
step copies the weights into a stack. Everything that reads layers one by one (HF and
adapter files, `Engine`'s unrolled decode) takes the unstacked form; the trainer stacks after
the LoRA is added and unstacks what it saves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psynth.model.transformer import Block, Transformer


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _axes(v: nnx.Variable) -> tuple:
  return tuple(v.get_metadata().get("logical_axes", (None,) * v.ndim))


def stack_layers(model: Transformer) -> Transformer:
  """`model` with its layers as one stacked `Block` (in place; a no-op if they already are)."""
  if isinstance(model.layers, Block):
    return model
  graphdef, _ = nnx.split(model.layers[0])
  states = [nnx.state(b) for b in model.layers]
  stack = lambda *vs: vs[0].replace(jnp.stack([v.get_value() for v in vs]),
                                    logical_axes=("layers", *_axes(vs[0])))
  model.layers = nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=_is_var))
  return model


def unstack_layers(model: Transformer) -> Transformer:
  """`model` with one `Block` per layer again (in place; a no-op if they are not stacked)."""
  if not isinstance(model.layers, Block):
    return model
  graphdef, state = nnx.split(model.layers)
  take = lambda i: lambda v: v.replace(v.get_value()[i], logical_axes=_axes(v)[1:])
  model.layers = nnx.List([nnx.merge(graphdef, jax.tree.map(take(i), state, is_leaf=_is_var))
                           for i in range(model.config.num_layers)])
  return model
