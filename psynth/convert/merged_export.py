"""Merged export: the LoRA folded into the base kernels, written as an HF checkpoint directory.

`transformers.AutoModelForCausalLM.from_pretrained(out)` then runs the synthesizer (LoRA on)
with no psynth and no peft. Tensor names and layouts come from the one HF table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from psynth.convert import hf_names, lora_names
from psynth.atomic import atomic_dir
from psynth.model.transformer import Transformer

# Files of a source checkpoint that are not weights or the model config: tokenizer, chat
# template, generation defaults. Copied as they are.
_SIDE_FILE_SUFFIXES = (".json", ".txt", ".model", ".jinja")
_NOT_SIDE_FILES = ("config.json", "model.safetensors.index.json", "adapter_config.json")
# Token ids live in config.json but not in `ModelConfig`; kept from the source's config.
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def merged_tensors(model: Transformer) -> dict[str, np.ndarray]:
  """HF name -> tensor of the model with its LoRA (if any) folded in: W + scale * A @ B."""
  cfg = model.config
  merged = {}
  if lora_names.has_lora(model):
    for site in lora_names.sites(cfg, lora_names.settings(model).targets):
      dense = lora_names.variable(model, site.kernel[:-1])
      w = np.asarray(dense.kernel[...])
      # float64, so the fold itself adds no rounding beyond the final cast.
      delta = np.tensordot(np.asarray(dense.lora_a[...], np.float64),
                           np.asarray(dense.lora_b[...], np.float64), axes=1)  # [*in, *out]
      merged[site.kernel] = (w.astype(np.float64) + dense.lora_scale * delta).astype(w.dtype)
  tensors = {}
  for rule in hf_names.rules(cfg):
    for name, path in hf_names.expand(rule, cfg):
      value = merged[path] if path in merged else np.asarray(lora_names.variable(model, path)[...])
      tensors[name] = hf_names.to_hf(rule, value)
  return tensors


def hf_config(model: Transformer, src_dir: str | Path | None = None) -> dict:
  """`config.json` for the export: `ModelConfig.to_hf()`, plus the source's token ids."""
  config = model.config.to_hf()
  if src_dir is not None and (Path(src_dir) / "config.json").exists():
    src = json.loads((Path(src_dir) / "config.json").read_text())
    config.update({k: src[k] for k in _TOKEN_ID_KEYS if k in src})
  return config


def save_merged(model: Transformer, out_dir: str | Path, *,
                src_dir: str | Path | None = None) -> Path:
  """Writes `out_dir` = config.json + model.safetensors (+ the tokenizer files of `src_dir`).

  `src_dir`: the HF checkpoint the base weights came from (`Loaded.path`); its tokenizer,
  chat template and generation config are copied so the export is complete. Atomic: a reader
  sees the old directory or the whole new one.
  """
  tensors = merged_tensors(model)
  config = hf_config(model, src_dir)
  with atomic_dir(out_dir) as tmp:
    if src_dir is not None:
      for f in sorted(Path(src_dir).iterdir()):
        if f.is_file() and f.suffix in _SIDE_FILE_SUFFIXES and f.name not in _NOT_SIDE_FILES:
          shutil.copy2(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
  return Path(out_dir)
