"""`python -m psynth export`: a trained adapter -> merged HF checkpoint, PEFT adapter or the
reference release layout.

The adapter may be any of the three directory kinds psynth reads, told apart by their files:
a psynth adapter dir (`lora.json`, what training writes), a PEFT adapter dir
(`adapter_config.json`), or a reference release (`cache_mapper.pt` and/or `judger_lora/`).
So the same command also converts between them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from psynth.cache.mappers import CacheMapper
from psynth.convert import adapter_dir, peft_io, reference_release
from psynth.convert.hf_checkpoint import load_params
from psynth.convert.merged_export import save_merged
from psynth.convert.resolve import resolve_checkpoint
from psynth.model.config import ModelConfig
from psynth.model.transformer import Transformer

log = logging.getLogger(__name__)

KINDS = ("merged", "peft", "reference", "psynth")


def load_any_adapter(path: str | Path, model: Transformer) -> CacheMapper | None:
  """Adds the LoRA in `path` to `model` (in place) and returns the mapper (None if it has none)."""
  path = Path(path)
  if (path / adapter_dir.LORA_JSON).exists():
    return adapter_dir.load_adapter_dir(path, model)
  if (path / peft_io.CONFIG).exists():
    peft_io.load_peft_adapter(path, model)
    return None
  if (path / reference_release.MAPPER).exists() or (path / reference_release.LORA_DIR).is_dir():
    return reference_release.load_reference_release(path, model)
  raise FileNotFoundError(
      f"{path} is not an adapter directory: expected {adapter_dir.LORA_JSON} (psynth), "
      f"{peft_io.CONFIG} (PEFT) or {reference_release.MAPPER} / {reference_release.LORA_DIR}/ "
      "(reference release)")


def export(model: Transformer, mapper: CacheMapper | None, what: str, out_dir: str | Path, *,
           src_dir: str | Path | None = None, base_name: str | None = None) -> Path:
  """Writes an in-memory model (with its LoRA) and mapper as `what` (one of KINDS)."""
  if what == "merged":
    if mapper is not None:
      log.warning("merged export holds the LoRA only; the cache mapper is not part of an HF "
                  "checkpoint (export it with what='reference' or 'psynth')")
    return save_merged(model, out_dir, src_dir=src_dir)
  if what == "peft":
    return peft_io.save_peft_adapter(model, out_dir, base_name=base_name)
  if what == "reference":
    return reference_release.save_reference_release(out_dir, model, mapper, base_name)
  if what == "psynth":
    return adapter_dir.save_adapter_dir(out_dir, model, mapper)
  raise ValueError(f"export kind {what!r} unknown; choose from {KINDS}")


def export_main(model_name: str, dtype: str, what: str, adapter: str | Path,
                out_dir: str | Path) -> Path:
  """Loads the base model `model_name` (weights in `dtype`), adds the adapter at `adapter`,
  writes `what` to `out_dir`."""
  if what not in KINDS:
    raise ValueError(f"--what={what!r}; choose from {KINDS}")
  # The weights and config only: an export needs no tokenizer (its files are copied as they are).
  src = resolve_checkpoint(model_name)
  model = load_params(ModelConfig.from_hf(src, dtype=dtype, param_dtype=dtype), src)
  mapper = load_any_adapter(adapter, model)
  name = str(model_name)
  # A hub id names the base for peft users; anything local is named by its checkpoint dir.
  base_name = name if name.count("/") == 1 and not Path(name).exists() else str(src)
  out = export(model, mapper, what, out_dir, src_dir=src, base_name=base_name)
  log.info("wrote %s export of %s to %s", what, adapter, out)
  return out
