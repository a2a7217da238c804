"""Export round trips: merged HF checkpoint and PEFT adapter give psynth's LoRA-on logits in
transformers / peft; PEFT, psynth-adapter and reference-release files read back bit for bit."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open

from conftest import padded_batch
from psynth.cache import mappers
from psynth.convert import adapter_dir, export, peft_io, reference_release
from psynth.convert.hf_checkpoint import load_params
from psynth.convert.merged_export import save_merged
from psynth.model.config import ModelConfig
from psynth.model.lora import add_lora
from psynth.model.transformer import forward, init_cache

ALL = ("q", "k", "v", "o", "gate", "up", "down")
LENGTHS = [11, 6]


def base_model(path):
  return load_params(ModelConfig.from_hf(path), path)


def lora_model(path, targets=("q", "k", "v", "o"), rank=4, alpha=8.0, seed=1):
  """A psynth model with a LoRA whose B is random (non-zero), so the adapter changes logits."""
  model = base_model(path)
  add_lora(model, rank=rank, alpha=alpha, targets=targets, rngs=nnx.Rngs(seed))
  rng = np.random.RandomState(seed)
  for blk in model.layers:
    for t in targets:
      dense = getattr(blk.attn if t in "qkvo" else blk.mlp, t)
      dense.lora_b.set_value(jnp.asarray(0.05 * rng.randn(*dense.lora_b.shape), jnp.float32))
  return model


@functools.partial(jax.jit, static_argnames=("graphdef", "lora"))
def _logits(graphdef, state, tokens, positions, lora):
  model = nnx.merge(graphdef, state)
  cache = init_cache(model.config, *tokens.shape)
  return forward(model, tokens, positions, cache, lora=lora)[0]


def psynth_logits(model, lora=True):
  # One jit of the whole forward compiles faster than its ops run eagerly the first time.
  tokens, mask, positions = padded_batch(model.config.vocab_size, LENGTHS)
  graphdef, state = nnx.split(model)
  return np.asarray(_logits(graphdef, state, tokens, positions, lora)), tokens, mask


def torch_logits(hf_model, tokens, mask):
  with torch.no_grad():
    return hf_model(torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()


def hf_base(path):
  import transformers
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def lora_arrays(model):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.LoRAParam))}


def affine_mapper(cfg, kind="affine", seed=3):
  m = mappers.make(kind, cfg.num_layers, cfg.num_kv_heads, rngs=nnx.Rngs(seed))
  rng = np.random.RandomState(seed)
  for name in ("b1", "w2", "b2"):  # non-zero everywhere, so a swapped or transposed tensor shows
    var = getattr(m, name)
    var.set_value(jnp.asarray(rng.randn(*var.shape), jnp.float32))
  return m


@pytest.mark.parametrize("name,targets", [("llama_gqa", ALL), ("llama_mqa", ("q", "k", "v", "o"))])
def test_merged_export_loads_in_transformers_with_lora_logits(name, targets, tiny_checkpoint,
                                                              tmp_path):
  path, _ = tiny_checkpoint(name)
  model = lora_model(path, targets)
  ours, tokens, mask = psynth_logits(model)
  base, _, _ = psynth_logits(model, lora=False)
  assert np.abs(ours - base)[mask].max() > 1e-2  # the adapter matters
  out = save_merged(model, tmp_path / "merged", src_dir=path)
  theirs = torch_logits(hf_base(out), tokens, mask)
  diff = np.abs(ours - theirs)[mask].max()
  print(f"{name} merged: max |psynth LoRA-on - transformers(merged)| = {diff:.2e}")
  assert diff <= 1e-4, diff
  config = json.loads((out / "config.json").read_text())
  with safe_open(str(out / "model.safetensors"), "np") as f:
    assert ("lm_head.weight" in f.keys()) == (not config["tie_word_embeddings"])
  assert config["tie_word_embeddings"] == (name == "llama_mqa")


def test_peft_adapter_loads_in_peft_with_lora_logits(tiny_checkpoint, tmp_path):
  import peft

  path, _ = tiny_checkpoint("llama_gqa")
  model = lora_model(path, ALL)
  ours, tokens, mask = psynth_logits(model)
  out = peft_io.save_peft_adapter(model, tmp_path / "peft", base_name=str(path))
  peft_model = peft.PeftModel.from_pretrained(hf_base(path), out).eval()
  diff = np.abs(ours - torch_logits(peft_model, tokens, mask))[mask].max()
  print(f"peft: max |psynth LoRA-on - peft| = {diff:.2e}")
  assert diff <= 1e-4, diff
  # Names and shapes are exactly what peft itself would save for this model.
  theirs = peft.get_peft_model_state_dict(peft_model)
  with safe_open(str(out / peft_io.WEIGHTS), "np") as f:
    ours_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  assert ours_shapes == {k: tuple(v.shape) for k, v in theirs.items()}
  config = json.loads((out / peft_io.CONFIG).read_text())
  assert (config["r"], config["lora_alpha"]) == (4, 8)
  assert sorted(config["target_modules"]) == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_adapter_made_by_peft_reads_into_psynth(tiny_checkpoint, tmp_path):
  import peft

  path, _ = tiny_checkpoint("llama_gqa")
  torch.manual_seed(0)
  peft_model = peft.get_peft_model(hf_base(path), peft.LoraConfig(
      r=3, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"))
  with torch.no_grad():
    for n, p in peft_model.named_parameters():
      if "lora_B" in n:
        p.copy_(0.05 * torch.randn_like(p))
  peft_model.eval().save_pretrained(tmp_path / "by_peft")
  model = base_model(path)
  settings = peft_io.load_peft_adapter(tmp_path / "by_peft", model)
  assert (settings.rank, settings.alpha, settings.targets) == (3, 5, ("q", "v", "down"))
  ours, tokens, mask = psynth_logits(model)
  diff = np.abs(ours - torch_logits(peft_model, tokens, mask))[mask].max()
  print(f"peft-made adapter: max |psynth - peft| = {diff:.2e}")
  assert diff <= 1e-4, diff


def test_peft_round_trip_is_bit_exact(tiny_checkpoint, tmp_path):
  path, _ = tiny_checkpoint("llama_mqa")
  model = lora_model(path, ALL, rank=5, alpha=7.0)
  out = peft_io.save_peft_adapter(model, tmp_path / "peft")
  back = base_model(path)
  peft_io.load_peft_adapter(out, back)
  want, got = lora_arrays(model), lora_arrays(back)
  assert want.keys() == got.keys() and len(want) == 2 * 7 * model.config.num_layers
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert back.layers[1].mlp.down.lora_scale == model.layers[1].mlp.down.lora_scale == 7.0 / 5


def test_psynth_adapter_dir_round_trip_and_export_main(tiny_checkpoint, tmp_path):
  path, _ = tiny_checkpoint("llama_gqa")
  model = lora_model(path)
  mapper = affine_mapper(model.config, "per_head")
  src = adapter_dir.save_adapter_dir(tmp_path / "adapter", model, mapper)
  back = base_model(path)
  mapper_back = export.load_any_adapter(src, back)
  for k, v in lora_arrays(model).items():
    np.testing.assert_array_equal(lora_arrays(back)[k], v, err_msg=k)
  for name in ("w1", "b1", "w2", "b2"):
    np.testing.assert_array_equal(np.asarray(getattr(mapper_back, name)[...]),
                                  np.asarray(getattr(mapper, name)[...]))
  # The CLI path: base model by name, adapter dir in, PEFT adapter out.
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(model=dict(name=str(path), dtype="float32")))
  out = export.export_main(cfg.model.name, cfg.model.dtype, "peft", src, tmp_path / "cli_peft")
  third = base_model(path)
  peft_io.load_peft_adapter(out, third)
  for k, v in lora_arrays(model).items():
    np.testing.assert_array_equal(lora_arrays(third)[k], v, err_msg=k)
  with pytest.raises(ValueError, match="'gguf'.*choose from"):
    export.export_main(cfg.model.name, cfg.model.dtype, "gguf", src, tmp_path / "x")


def test_reference_release_round_trip_is_bit_exact(tiny_checkpoint, tmp_path):
  path, _ = tiny_checkpoint("llama_gqa")
  model = lora_model(path)
  cfg = model.config
  mapper = affine_mapper(cfg)
  out = reference_release.save_reference_release(tmp_path / "release", model, mapper, "tiny")
  state = torch.load(out / "cache_mapper.pt", weights_only=True)
  assert {k: tuple(v.shape) for k, v in state.items()} == {
      "net.0.weight": (32, 3), "net.0.bias": (32,), "net.2.weight": (4, 32), "net.2.bias": (4,)}
  assert (out / "judger_lora" / "adapter_config.json").exists()
  back = base_model(path)
  mapper_back = reference_release.load_reference_release(out, back)
  for name in ("w1", "b1", "w2", "b2"):
    np.testing.assert_array_equal(np.asarray(getattr(mapper_back, name)[...]),
                                  np.asarray(getattr(mapper, name)[...]))
  for k, v in lora_arrays(model).items():
    np.testing.assert_array_equal(lora_arrays(back)[k], v, err_msg=k)

  # The reference's convention, written out from its definition in torch: features
  # [log1p(max(len, 1)), log1p(max(N, 1)), l/(L-1)] -> net -> r; a_k = 1 + 0.1 tanh(r0),
  # b_k = 0.1 tanh(r1), a_v = 1 + 0.1 tanh(r2), b_v = 0.1 tanh(r3). It equals ours for len >= 1.
  lengths = np.array([[1, 7, 300]], np.int32)
  ours = np.moveaxis(np.asarray(mapper.coefficients(jnp.asarray(lengths))), 3, 0)  # [4, 1, N, L, K]
  N, L = lengths.shape[1], cfg.num_layers
  for j, n in enumerate(lengths[0]):
    for layer in range(L):
      x = torch.tensor([np.log1p(max(n, 1)), np.log1p(max(N, 1)), layer / (L - 1)],
                       dtype=torch.float32)
      h = torch.nn.functional.silu(x @ state["net.0.weight"].T + state["net.0.bias"])
      r = h @ state["net.2.weight"].T + state["net.2.bias"]
      ref = torch.stack([1 + 0.1 * torch.tanh(r[0]), 0.1 * torch.tanh(r[1]),
                         1 + 0.1 * torch.tanh(r[2]), 0.1 * torch.tanh(r[3])]).numpy()
      np.testing.assert_allclose(ours[:, 0, j, layer, :], np.repeat(ref[:, None], cfg.num_kv_heads, 1),
                                 rtol=0, atol=1e-6)


def test_per_head_mapper_has_no_reference_form(tiny_checkpoint, tmp_path):
  path, _ = tiny_checkpoint("llama_gqa")
  model = lora_model(path)
  with pytest.raises(ValueError, match="'per_head' mapper cannot be written.*'affine'"):
    reference_release.save_reference_release(tmp_path / "r", model,
                                             affine_mapper(model.config, "per_head"))
  assert not (tmp_path / "r").exists()  # nothing half-written


def test_adapter_for_another_model_names_both_shapes(tiny_checkpoint, tmp_path):
  gqa, _ = tiny_checkpoint("llama_gqa")  # 2 KV heads
  mqa, _ = tiny_checkpoint("llama_mqa")  # 1 KV head
  model = lora_model(gqa)
  src = adapter_dir.save_adapter_dir(tmp_path / "adapter", model)
  other = base_model(mqa)
  with pytest.raises(ValueError, match=r"made for a model with \{'num_kv_heads': 2\}; this model "
                                       r"has \{'num_kv_heads': 1\}"):
    adapter_dir.load_adapter_dir(src, other)
  # A PEFT adapter carries no model description: the tensor shapes are compared instead.
  peft_dir = peft_io.save_peft_adapter(model, tmp_path / "peft")
  with pytest.raises(ValueError, match=r"k_proj.lora_B.weight' has shape \[32, 4\].*needs \[16, 4\]"):
    peft_io.load_peft_adapter(peft_dir, other)
  assert other.layers[0].attn.q.lora_a is None  # a failed load leaves the model untouched
