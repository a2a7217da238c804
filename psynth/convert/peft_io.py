"""PEFT LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`), in and out.

`peft.PeftModel.from_pretrained(hf_base, dir)` loads what `save_peft_adapter` writes and runs
like psynth with the LoRA on; `load_peft_adapter` reads such a directory (ours or peft's own)
back into a psynth model, bit for bit. Tensor names are the HF table's with PEFT's prefix,
e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight [r, in]`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.numpy import load_file, save_file

from psynth.convert import lora_names
from psynth.atomic import atomic_dir
from psynth.model.transformer import Transformer

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the HF model's own names
# adapter_config.json options psynth's LoRA (W + alpha/r * A@B on whole layers) cannot express,
# with the value that is fine.
_UNSUPPORTED = {"use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
                "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
                "modules_to_save": None, "lora_bias": False, "bias": "none",
                "target_parameters": None, "trainable_token_indices": None,
                "exclude_modules": None, "layer_replication": None}


def peft_config(settings: lora_names.Settings, base_name: str | None) -> dict:
  """The `adapter_config.json` of an adapter (keys peft reads; the rest take peft defaults)."""
  return {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
      "r": settings.rank, "lora_alpha": settings.alpha, "lora_dropout": 0.0,
      "target_modules": [lora_names.hf_module_of(t) for t in settings.targets],
      "inference_mode": True, "init_lora_weights": True, **_UNSUPPORTED,
  }


def save_peft_adapter(model: Transformer, out_dir: str | Path, *,
                      base_name: str | None = None) -> Path:
  """Writes the model's LoRA as a PEFT adapter directory (atomically).

  `base_name`: `base_model_name_or_path` in the config, e.g. "Qwen/Qwen3-14B" or a local
  checkpoint path; peft uses it only when loading without an explicit base model.
  """
  settings = lora_names.settings(model)
  tensors = {_PREFIX + name: t for name, t in lora_names.to_hf(model).items()}
  with atomic_dir(out_dir) as tmp:
    (tmp / CONFIG).write_text(json.dumps(peft_config(settings, base_name), indent=2) + "\n")
    save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
  return Path(out_dir)


def read_settings(adapter_dir: str | Path) -> lora_names.Settings:
  """Rank, alpha and psynth targets of a PEFT adapter; raises for what psynth cannot run."""
  path = Path(adapter_dir) / CONFIG
  if not path.exists():
    raise FileNotFoundError(f"no PEFT adapter in {adapter_dir}: expected {CONFIG} + {WEIGHTS}")
  c = json.loads(path.read_text())
  if c.get("peft_type") != "LORA":
    raise ValueError(f"{path}: peft_type={c.get('peft_type')!r}; only 'LORA' is supported")
  for key, ok in _UNSUPPORTED.items():
    if c.get(key) not in (None, ok, [], {}):
      raise ValueError(f"{path}: {key}={c[key]!r} is not supported; psynth runs {key}={ok!r}")
  modules = c.get("target_modules")
  if isinstance(modules, str):
    modules = [modules]  # peft reads a string as a regex; a bare module name is the common case
  if not modules:
    raise ValueError(f"{path}: target_modules={c.get('target_modules')!r}; expected a list "
                     f"of module names such as {[lora_names.hf_module_of(t) for t in 'qkvo']}")
  targets = {lora_names.target_of(m) for m in modules}
  return lora_names.Settings(int(c["r"]), c["lora_alpha"],
                             tuple(t for t in lora_names.TARGETS if t in targets))


def load_peft_adapter(adapter_dir: str | Path, model: Transformer) -> lora_names.Settings:
  """Adds the PEFT adapter in `adapter_dir` to `model` (in place); returns its settings."""
  adapter_dir = Path(adapter_dir)
  settings = read_settings(adapter_dir)
  if not (adapter_dir / WEIGHTS).exists():
    raise FileNotFoundError(f"{adapter_dir} has {CONFIG} but no {WEIGHTS} (a .bin adapter "
                            "must be re-saved with safe_serialization=True)")
  tensors = {name.removeprefix(_PREFIX): t for name, t in load_file(adapter_dir / WEIGHTS).items()}
  lora_names.from_hf(model, settings, tensors, str(adapter_dir))
  return settings
