"""`load(name_or_path, adapter=...)`: weights in, from the embedded default, an HF directory, a
GGUF file or a hub id, with a trained synthesizer adapter if asked: the front door, above
synthesis (nothing below imports this module at run time)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from typing import Any

from psynth import adapters
from psynth.convert.export import load_any_adapter
from psynth.convert.hf_checkpoint import load_params
from psynth.convert.resolve import resolve_checkpoint
from psynth.model.config import SUPPORTED_DTYPES, ModelConfig
from psynth.synthesis.adapter import Adapter
from psynth.model.transformer import Transformer
from psynth.synthesis.generate import Engine

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Loaded:
  """A model with what it needs to talk: tokenizer, config, stop tokens, where it came from."""

  model: Transformer
  tokenizer: Any  # a transformers tokenizer
  config: ModelConfig
  path: Path  # the HF checkpoint directory the weights came from
  eos_ids: tuple[int, ...]
  adapter: Adapter | None = None  # the synthesizer's LoRA (in `model`) + mapper, if loaded
  adapter_path: Path | None = None
  mesh: Any = None  # a jax Mesh: the engine runs sharded on it (`Engine`)
  engine: Engine = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    # Built after the LoRA is in the model: the engine holds the model's state as it is now.
    self.engine = Engine(self.model, self.mesh)


def _eos_ids(path: Path, tokenizer) -> tuple[int, ...]:
  ids: set[int] = set()
  gen = path / "generation_config.json"
  if gen.exists():
    eos = json.loads(gen.read_text()).get("eos_token_id")
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
  if tokenizer.eos_token_id is not None:
    ids.add(tokenizer.eos_token_id)
  return tuple(sorted(ids))


def load(name_or_path: str | Path = "smollm2-135m-instruct", dtype: str = "float32", *,
         attention: str = "blocked", adapter: str | Path | None = None, mesh=None) -> Loaded:
  """Loads a model, its tokenizer and config; `dtype` sets parameters and activations alike.

  `name_or_path`: "smollm2-135m-instruct" (the embedded default, needs no hub), an HF
  checkpoint directory, a .gguf file, or a hub id (needs network).
  `adapter`: a trained synthesizer (LoRA + cache mapper) to load with it: a name shipped
  with psynth for this model ("default"), an adapter directory (psynth, PEFT or reference
  release), or None / "none". Cache synthesis then uses it unless told otherwise; workers
  and text synthesis never do (the LoRA is off for them).
  `attention`: the attention implementation (`psynth.model.attention`), e.g. "pallas_tpu".
  `mesh`: run inference on it (`psynth.sharding.make_mesh`): weights tensor-parallel, KV caches
  over KV heads and rows, by the training's logical axis rules.
  """
  if dtype not in SUPPORTED_DTYPES:
    raise ValueError(f"dtype={dtype!r}; supported: {SUPPORTED_DTYPES}")
  from transformers import AutoTokenizer

  path = resolve_checkpoint(name_or_path)
  cfg = ModelConfig.from_hf(path, dtype=dtype, param_dtype=dtype, attention=attention)
  model = load_params(cfg, path)
  tokenizer = AutoTokenizer.from_pretrained(str(path))
  log.info("loaded %s from %s (%d layers, %s)", name_or_path, path, cfg.num_layers, dtype)
  adapter_dir = None if adapter is None else adapters.resolve(str(name_or_path), adapter)
  syn = None
  if adapter_dir is not None:
    syn = Adapter(mapper=load_any_adapter(adapter_dir, model), lora=True)
    log.info("adapter %s: LoRA + %s mapper", adapter_dir,
             syn.mapper.kind if syn.mapper is not None else "no")
  return Loaded(model, tokenizer, cfg, path, _eos_ids(path, tokenizer), syn, adapter_dir, mesh)
