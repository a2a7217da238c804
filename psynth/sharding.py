"""One mesh and one set of logical -> mesh axis rules for the whole package.

Parameters and activations are annotated with *logical* axis names (embed, heads, batch, ...).
Only this file knows which mesh axis each name maps to, so the same model code runs
unsharded on a laptop and sharded on a pod.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# logical axis -> mesh axis (or a tuple of mesh axes, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("branches", ("data", "fsdp")),
    ("seq", None),
    ("cache_seq", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("lora_rank", None),
)

_active: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "psynth_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Sequence[tuple] = DEFAULT_RULES) -> Iterator[Mesh]:
  """Activates `mesh` + `rules` for `logical_spec`/`constrain` (and as JAX's mesh)."""
  token = _active.set((mesh, tuple(rules)))
  try:
    with jax.sharding.use_mesh(mesh):
      yield mesh
  finally:
    _active.reset(token)


def logical_spec(axes: Sequence[str | None], rules: Sequence[tuple] | None = None,
                 mesh: Mesh | None = None) -> PartitionSpec:
  """Maps logical axis names to a `PartitionSpec` (mesh axes absent from the mesh are dropped)."""
  if rules is None or mesh is None:
    active = _active.get()
    if active is None:
      return PartitionSpec()
    mesh, rules = mesh or active[0], rules or active[1]
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in axes:
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    # A mesh axis may shard one dimension only, and size-1 axes are pointless.
    targets = tuple(t for t in targets if t in mesh.shape and mesh.shape[t] > 1 and t not in used)
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else (targets or None))
  return PartitionSpec(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op when no mesh is active."""
  active = _active.get()
  if active is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(active[0], logical_spec(axes)))
