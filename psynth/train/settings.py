"""What the trainer reads, typed: the config's sections it uses, with the config's own names
(`settings.train.lr` is `--config.train.lr`). Built once from the config at the command line
(`TrainSettings.from_config(cfg)`); the library never sees the whole `ConfigDict`."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Optim:
  """`cfg.train`: the optimizer, the schedule, evaluation and checkpoint cadence."""
  steps: int = 300
  batch_size: int = 4
  grad_accum: int = 1
  lr: float = 1e-4
  warmup_steps: int = 20
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  kl_weight: float = 0.0
  eval_every: int = 50
  save_every: int = 50
  keep_checkpoints: int = 3
  val_examples: int = 256
  val_accuracy_examples: int = 64
  val_batch: int = 16
  remat: bool = False  # with model.scan_layers: recompute activations in the backward pass
  init_adapter: str = ""  # start from this adapter (shipped name or directory); "" = fresh


@dataclasses.dataclass(frozen=True)
class Lora:
  """`cfg.lora`: the synthesizer adapter."""
  rank: int = 16
  alpha: float = 32.0
  targets: tuple[str, ...] = ("q", "k", "v", "o")


@dataclasses.dataclass(frozen=True)
class Mapper:
  """`cfg.mapper`: the cache mapper kind (`psynth.cache.mappers.KINDS`)."""
  kind: str = "affine"


@dataclasses.dataclass(frozen=True)
class Synthesis:
  """`cfg.synthesis`: the branch position mode (and answer length of val accuracy)."""
  mode: str = "shared_start"


@dataclasses.dataclass(frozen=True)
class Lengths:
  """`cfg.data`: how much of a branch and of a target training reads."""
  max_branch_tokens: int = 112
  max_target_tokens: int = 48


@dataclasses.dataclass(frozen=True)
class Mesh:
  """`cfg.mesh`: data x fsdp x tensor devices (-1: every device left over)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class Model:
  """`cfg.model`: which base model (its name keys the saved baselines); `scan_layers`: run its
  layers as one `lax.scan` in the train and eval steps (one layer compiled, not L)."""
  name: str = "smollm2-135m-instruct"
  scan_layers: bool = False


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  workdir: str
  seed: int = 0
  model: Model = Model()
  lora: Lora = Lora()
  mapper: Mapper = Mapper()
  synthesis: Synthesis = Synthesis()
  data: Lengths = Lengths()
  mesh: Mesh = Mesh()
  train: Optim = Optim()

  @classmethod
  def from_config(cls, cfg: Any) -> "TrainSettings":
    """The fields above, read from a psynth config (its other fields are not the trainer's)."""
    def section(kind, values):
      names = {f.name for f in dataclasses.fields(kind)}
      got = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(values).items()
             if k in names}
      return kind(**got)

    return cls(workdir=str(cfg.workdir), seed=int(cfg.seed), model=section(Model, cfg.model),
               lora=section(Lora, cfg.lora), mapper=section(Mapper, cfg.mapper),
               synthesis=section(Synthesis, cfg.synthesis), data=section(Lengths, cfg.data),
               mesh=section(Mesh, cfg.mesh), train=section(Optim, cfg.train))
