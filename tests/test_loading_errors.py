"""Bad input fails with an error that names the bad value and what is accepted."""

import json
import shutil

import pytest

import psynth
from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig


def _copy(tiny_checkpoint, tmp_path, name="llama_gqa"):
  src, _ = tiny_checkpoint(name)
  dst = tmp_path / "ckpt"
  shutil.copytree(src, dst)
  return dst


def test_unknown_architecture(tiny_checkpoint, tmp_path):
  path = _copy(tiny_checkpoint, tmp_path)
  cfg = json.loads((path / "config.json").read_text())
  cfg["model_type"] = "gpt2"
  with pytest.raises(ValueError, match=r"model_type='gpt2'.*supported: \['llama', 'qwen2', 'qwen3'\]"):
    ModelConfig.from_hf(cfg)


def test_unknown_rope_type(tiny_checkpoint, tmp_path):
  path = _copy(tiny_checkpoint, tmp_path)
  cfg = json.loads((path / "config.json").read_text())
  cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 1e4}
  with pytest.raises(ValueError, match=r"rope_type='longrope'.*supported: \('default', 'linear', 'llama3', 'yarn'\)"):
    ModelConfig.from_hf(cfg)


def test_missing_weight_file(tiny_checkpoint, tmp_path):
  path = _copy(tiny_checkpoint, tmp_path)
  (path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
    load_params(ModelConfig.from_hf(path), path)


def test_corrupted_weight_file(tiny_checkpoint, tmp_path):
  path = _copy(tiny_checkpoint, tmp_path)
  f = path / "model.safetensors"
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a download cut in half
  with pytest.raises(ValueError, match=f"{f}"):
    load_params(ModelConfig.from_hf(path), path)


def test_missing_tensor(tiny_checkpoint, tmp_path):
  from safetensors.numpy import load_file, save_file
  path = _copy(tiny_checkpoint, tmp_path)
  tensors = load_file(path / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, path / "model.safetensors")
  with pytest.raises(ValueError, match="lacks tensor 'model.layers.1.mlp.up_proj.weight'"):
    load_params(ModelConfig.from_hf(path), path)


def test_wrong_shape(tiny_checkpoint, tmp_path):
  path = _copy(tiny_checkpoint, tmp_path)
  cfg = ModelConfig.from_hf(path, intermediate_size=96)  # config and weights disagree
  with pytest.raises(ValueError, match="gate_proj.weight' has shape"):
    load_params(cfg, path)


def test_unknown_model_name():
  with pytest.raises(FileNotFoundError, match="model 'no-such-model' not found; pass 'smollm2-135m-instruct'"):
    psynth.load("no-such-model")


def test_bad_dtype():
  with pytest.raises(ValueError, match=r"dtype='float16'; supported: \('float32', 'bfloat16'\)"):
    psynth.load("smollm2-135m-instruct", dtype="float16")
