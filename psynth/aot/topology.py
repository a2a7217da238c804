"""TPU topologies by name: Cloud TPU accelerator types (`v5p-64`, `v5litepod-8`, `v5e-8`, `v4-32`,
`v6e-8`) and raw topologies (`v5p:2x4x4`, `v5e:2x4`), as compile-only devices.

Accelerator types count as Cloud TPU's docs do: v4 and v5p by TensorCores (2 per chip, one
"megacore" device), v5e and v6e by chips. Slices grow as Cloud TPU builds them (by doubling
the last of the smallest dimensions: v5p-64 is 2x4x4 chips, v5e-8 is 2x4), matching the
table in MaxText's `accelerator_to_spec_map.py`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
  prefix: str  # in topology names given to libtpu
  dims: int  # 2-D (v5e, v6e) or 3-D torus (v4, v5p)
  cores_per_chip: int  # how the accelerator type counts: TensorCores or chips
  chip_config: str  # "megacore": the chip's 2 TensorCores are one device
  hbm_bytes: int  # per chip, as XLA's TPU compiler sees it ("exceeds available HBM (...)")
  aliases: tuple[str, ...]


GENERATIONS = {
    "v4": Generation("v4", 3, 2, "megacore", int(30.75 * GIB), ("v4",)),
    "v5p": Generation("v5p", 3, 2, "megacore", int(95.74 * GIB), ("v5p",)),
    "v5e": Generation("v5e", 2, 1, "default", int(15.75 * GIB), ("v5e", "v5litepod")),
    "v6e": Generation("v6e", 2, 1, "default", int(31.25 * GIB), ("v6e",)),
}
_ALIAS = {a: g for g, gen in GENERATIONS.items() for a in gen.aliases}
ACCEPTED = ("accelerator types v4-N and v5p-N (N TensorCores: N/2 chips; N = 8, 16, 32, ...), "
            "v5e-N, v5litepod-N and v6e-N (N chips: 1, 4, 8, 16, ...); raw topologies v4:AxBxC, "
            "v5p:AxBxC, v5e:AxB, v6e:AxB (chips per dimension)")


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given
  generation: str
  shape: tuple[int, ...]  # chips per dimension

  @property
  def gen(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def hbm_bytes(self) -> int:
    return self.gen.hbm_bytes

  @property
  def accelerator_type(self) -> str:
    """As Cloud TPU names it (v5e's is v5litepod-N)."""
    alias = "v5litepod" if self.generation == "v5e" else self.generation
    return f"{alias}-{self.chips * self.gen.cores_per_chip}"

  @property
  def topology_name(self) -> str:
    return f"{self.gen.prefix}:{'x'.join(map(str, self.shape))}"

  def devices(self) -> list:
    """Compile-only devices (one per chip) from libtpu; no TPU needs to be attached."""
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
      raise RuntimeError(f"{self.name}: the TPU compiler (libtpu) is not installed. {INSTALL}")
    allow_compile_only_tpu(self.accelerator_type)
    from jax.experimental import topologies

    try:
      desc = topologies.get_topology_desc(
          platform="tpu", topology_name=self.topology_name, chip_config_name=self.gen.chip_config,
          chips_per_host_bounds=_host_bounds(self.shape), num_slices=1, wrap=_wrap(self))
    except Exception as e:  # libtpu refusing the topology
      raise ValueError(f"{self.name} ({self.topology_name}): libtpu refused it: {e}") from e
    return list(desc.devices)


INSTALL = 'Install it with: pip install "jax[tpu]==0.10.2" (libtpu; no TPU needed to compile).'


def allow_compile_only_tpu(accelerator_type: str) -> None:
  """libtpu takes a machine-wide lock file by default; compiling needs no TPU, so let it load
  beside any other JAX process that holds it. Off a TPU VM it would also look for the VM's
  accelerator type and worker hostnames (warning on stderr): say them, and never query a
  metadata server."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def _host_bounds(shape: tuple[int, ...]) -> tuple[int, int, int]:
  """Chips per host: 2x2x1 (1x1x1 for a single chip)."""
  return (1, 1, 1) if math.prod(shape) == 1 else (2, 2, 1)


def _wrap(t: Topology) -> tuple[bool, bool, bool]:
  """Torus wrap-around links: a full 3-D cube of >= 4 per side wraps every dimension; a 2-D
  slice wraps a dimension that spans the pod's 16 chips."""
  if t.gen.dims == 3:
    return (min(t.shape) >= 4,) * 3
  return tuple(d >= 16 for d in t.shape) + (False,)


def _slice_shape(dims: int, chips: int) -> tuple[int, ...]:
  shape = [1] * dims
  if dims == 3:
    shape[:2] = [2, 2]
  while math.prod(shape) < chips:
    smallest = min(shape)
    shape[max(i for i, d in enumerate(shape) if d == smallest)] *= 2
  return tuple(shape)


def parse(name: str) -> Topology:
  """`v5p-64`, `v5litepod-8`, `v5e:2x4`, ... -> Topology; a clear ValueError otherwise."""
  bad = lambda why: ValueError(f"TPU topology {name!r}: {why}. Accepted: {ACCEPTED}")
  raw = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", name.strip().lower())
  typed = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
  if not raw and not typed:
    raise bad("not an accelerator type (v5p-64) or a raw topology (v5p:2x4x4)")
  alias = (raw or typed).group(1)
  if alias not in _ALIAS:
    raise bad(f"unknown TPU generation {alias!r} (known: {', '.join(sorted(_ALIAS))})")
  generation = _ALIAS[alias]
  gen = GENERATIONS[generation]
  if raw:
    shape = tuple(int(d) for d in raw.group(2).split("x"))
    if len(shape) != gen.dims or min(shape) < 1:
      raise bad(f"{generation} topologies have {gen.dims} dimensions of >= 1 chip")
    return Topology(name, generation, shape)
  n = int(typed.group(2))
  if n % gen.cores_per_chip:
    raise bad(f"{generation}-N counts TensorCores ({gen.cores_per_chip} per chip); {n} is odd")
  chips = n // gen.cores_per_chip
  smallest = 4 if gen.dims == 3 else 1
  if chips & (chips - 1) or chips < smallest or (gen.dims == 2 and chips == 2):
    raise bad(f"{n} is not a slice size of {generation}")
  return Topology(name, generation, _slice_shape(gen.dims, chips))
