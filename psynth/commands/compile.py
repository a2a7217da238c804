"""`python -m psynth compile --config=configs/qwen3_14b.py --config.compile.topology=v5p-64
[--config.compile.functions=train,prefill,decode] [--config.compile.json=F]`: lowers and
compiles the train step, the synthesizer's cache prefill and a decode step for a TPU
topology, from shapes only (no TPU, no weights), and prints per-device memory against the
chip's HBM, XLA's FLOPs and bytes, and compile times. Exits non-zero, naming the function
and the shortfall, when something does not fit. Sizes: `cfg.compile`; the train step's
batch and mesh: `cfg.train`, `cfg.mesh`."""

from __future__ import annotations

import logging
import sys

import jax
from absl import app

from psynth.aot import programs, report, topology
from psynth.aot.topology import GIB
from psynth.convert.resolve import resolve_checkpoint
from psynth.model.config import ModelConfig
from psynth.train.settings import TrainSettings

log = logging.getLogger(__name__)


def model_config(cfg) -> ModelConfig:
  """The model's shapes: `cfg.hf_config` (config.json fields) if the config has them, else the
  checkpoint's config.json (no weights are read)."""
  dtype = cfg.model.dtype
  hf = cfg.hf_config.to_dict() if cfg.get("hf_config") else resolve_checkpoint(cfg.model.name)
  return ModelConfig.from_hf(hf, dtype=dtype, param_dtype=dtype, attention=cfg.model.attention)


def sizes(cfg) -> programs.Sizes:
  c = cfg.compile
  names = {f.name for f in programs.dataclasses.fields(programs.Sizes)}
  return programs.Sizes(**{k: int(v) for k, v in c.items() if k in names})


def main(cfg, args: list[str] = ()) -> list[report.Row]:
  c = cfg.compile
  wanted = [f.strip() for f in str(c.functions).split(",") if f.strip()]
  unknown = sorted(set(wanted) - set(programs.FUNCTIONS))
  if unknown or not wanted:
    raise app.UsageError(f"compile.functions={c.functions!r}; choose from {programs.FUNCTIONS}")
  try:
    topo = topology.parse(str(c.topology))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  budget = int(float(c.hbm_gib) * GIB) if c.hbm_gib else topo.hbm_bytes
  # Compile times are the point: the persistent cache would hide them.
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    devices = topo.devices()
  except RuntimeError as e:  # no libtpu: say how to install it
    sys.exit(str(e))
  mc, settings, sz = model_config(cfg), TrainSettings.from_config(cfg), sizes(cfg)
  rows, meshes = [], {}
  for name in wanted:
    try:
      program = programs.BUILDERS[name](mc, settings, sz, devices)
    except ValueError as e:  # a mesh or a size that does not fit the topology
      raise app.UsageError(f"{name}: {e}") from e
    log.info("compiling %s for %s (mesh %s)", name, topo.name, dict(program.mesh.shape))
    rows.append(programs.compile_program(program, budget))
    meshes[name] = dict(program.mesh.shape)
  header = (f"{cfg.model.name} ({mc.num_layers} layers, {mc.dtype}) on {topo.name} = "
            f"{topo.topology_name}, {topo.chips} chips of {topo.hbm_bytes / GIB:.2f} GiB HBM"
            + (f" (budget {budget / GIB:.2f} GiB)" if budget != topo.hbm_bytes else "")
            + "; meshes: " + ", ".join(f"{k} {v}" for k, v in meshes.items()))
  print(report.table(rows, header))
  if c.json:
    report.write_json(rows, dict(model=cfg.model.name, topology=topo.name,
                                 topology_name=topo.topology_name, chips=topo.chips,
                                 sizes=sz.__dict__, meshes=meshes,
                                 scan_layers=bool(cfg.model.scan_layers)), c.json)
  bad = report.failures(rows)
  if bad:
    sys.exit("\n".join(bad))
  return rows
