"""One mesh and one set of logical -> mesh axis rules for the whole package.

Parameters and activations are annotated with *logical* axis names (embed, heads, batch, ...).
Only this file knows which mesh axis each name maps to, so the same model code runs
unsharded on a laptop and sharded on a pod.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# logical axis -> mesh axis (or a tuple of mesh axes, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
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
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _active.reset(token)


def logical_spec(axes: Sequence[str | None], rules: Sequence[tuple] | None = None,
                 mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical axis names to a `PartitionSpec` (mesh axes absent from the mesh are dropped).

  `shape`: also drop mesh axes that do not divide their dimension, which is then replicated:
  for arrays whose sizes vary at run time (3 branch rows of a cache on 4 data devices)."""
  if rules is None or mesh is None:
    active = _active.get()
    if active is None:
      return PartitionSpec()
    mesh, rules = mesh or active[0], rules or active[1]
  table = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(axes):
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    # A mesh axis may shard one dimension only, and size-1 axes are pointless.
    targets = tuple(t for t in targets if t in mesh.shape and mesh.shape[t] > 1 and t not in used)
    if shape is not None:
      fit = []
      for t in targets:
        if shape[i] % (math.prod(mesh.shape[a] for a in fit) * mesh.shape[t]) == 0:
          fit.append(t)
      targets = tuple(fit)
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else (targets or None))
  return PartitionSpec(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op when no mesh is active."""
  active = _active.get()
  if active is None:
    return x
  spec = logical_spec(axes, shape=x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(active[0], spec))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh; data=-1 takes the devices the others leave."""
  devices = list(jax.devices() if devices is None else devices)
  if data == -1:
    data = len(devices) // (fsdp * tensor)
  if data * fsdp * tensor != len(devices):
    raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} does not use the "
                     f"{len(devices)} devices")
  # Auto axes: XLA propagates shardings from the annotated parameters and caches (GSPMD).
  auto = (jax.sharding.AxisType.Auto,) * 3
  return jax.make_mesh((data, fsdp, tensor), ("data", "fsdp", "tensor"), axis_types=auto,
                       devices=devices)


def variable_sharding(var, mesh: Mesh, rules: Sequence[tuple] = DEFAULT_RULES) -> NamedSharding:
  """Where an NNX parameter goes: by its `logical_axes` metadata (replicated without any)."""
  axes = var.get_metadata().get("logical_axes", (None,) * var.ndim)
  return NamedSharding(mesh, logical_spec(axes, rules, mesh))


def shard_params(module, mesh: Mesh, rules: Sequence[tuple] = DEFAULT_RULES):
  """Places every parameter of an NNX module by its `logical_axes` metadata (in place).

  The parameters must be host-local (as loaded); every process must hold the same values.
  """
  from flax import nnx

  for _, var in nnx.to_flat_state(nnx.state(module)):
    var.set_value(to_global(var[...], variable_sharding(var, mesh, rules)))
  return module


def cache_shardings(cache, mesh: Mesh, rules: Sequence[tuple] = DEFAULT_RULES):
  """A KVCache's layout as a KVCache of NamedShardings: rows over the data axes, KV heads over
  the tensor axis, each where it divides (what `shard_cache` places, and what an
  ahead-of-time compile assumes)."""
  named = lambda x, axes: NamedSharding(mesh, logical_spec(axes, rules, mesh, x.shape))
  rows = ("batch", "cache_seq")
  if cache.is_per_layer:
    kv = lambda arrays: tuple(named(a, cache.layer_axes) for a in arrays)
    k, v = kv(cache.k), kv(cache.v)
  else:
    k, v = named(cache.k, cache.logical_axes), named(cache.v, cache.logical_axes)
  return cache.replace(k=k, v=v,
                       positions=named(cache.positions, rows), valid=named(cache.valid, rows),
                       end=NamedSharding(mesh, PartitionSpec()))


def shard_cache(cache, mesh: Mesh, rules: Sequence[tuple] = DEFAULT_RULES):
  """Places a KVCache by `cache_shardings`."""
  return jax.tree.map(jax.device_put, cache, cache_shardings(cache, mesh, rules))


def init_distributed(coordinator: str = "", num_processes: int = 1, process_id: int = 0,
                     auto: bool = False) -> None:
  """Starts `jax.distributed` when there is more than one process; one process needs nothing.

  `auto`: let JAX find the cluster itself (Cloud TPU pods, SLURM). Otherwise a coordinator
  "host:port" with the process count and this process's id (e.g. two local processes on
  127.0.0.1). On CPU the processes talk through gloo collectives.
  """
  if not auto and num_processes <= 1:
    return
  if not auto and not coordinator:
    raise ValueError(f"num_processes={num_processes} needs a coordinator address "
                     "('host:port', e.g. 127.0.0.1:12345); or set auto for TPU pods / SLURM")
  if not auto and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id}; must be in [0, {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def to_global(x, sharding: NamedSharding) -> jax.Array:
  """A host array that every process holds in full -> one global array laid out by `sharding`
  (each process contributes its addressable shards; works with one process or many)."""
  import numpy as np

  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
