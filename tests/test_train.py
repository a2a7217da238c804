"""Training the LoRA + mapper on the tiny model: loss goes down, base frozen, resume, meshes, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import psynth
from psynth import config_files, sharding
from psynth.data.example import Example
from psynth.train.data import training_data
from psynth.train.logs import read_scalars
from psynth.train.settings import TrainSettings
from psynth.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def examples(n: int) -> list[Example]:
  """Aggregation examples: the answer needs the fact in branch 2, branch 1 is a distractor."""
  out = []
  for i in range(n):
    facts = [f"The lamp {i} stands in room {7 + i}.", f"The code of lamp {i} is {311 * (i + 3)}."]
    out.append(Example(id=f"lamp/{i}", kind="aggregation", source="procedural",
                       question=f"Where is lamp {i} and what is its code?", branch_inputs=facts,
                       target=f"Room {7 + i}, code {311 * (i + 3)}.", branch_outputs=facts))
  return out


def tiny_cfg(workdir, **train):
  cfg = config_files.load("tiny")
  cfg.workdir = str(workdir)
  cfg.train.update(train)
  return cfg


def one_device():
  return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def frozen_arrays(model) -> dict:
  flat = nnx.to_flat_state(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
  return {path: np.array(v[...]) for path, v in flat}


def test_training_lowers_loss_and_keeps_base_weights(tmp_path):
  loaded = psynth.load("tiny-random")
  before = frozen_arrays(loaded.model)
  cfg = tiny_cfg(tmp_path, steps=30, batch_size=2, lr=3e-2, warmup_steps=1, save_every=100)
  trainer = Trainer(loaded, TrainSettings.from_config(cfg), mesh=one_device())
  fixed = examples(2)  # one fixed batch, seen every step
  hist = trainer.fit(fixed, progress=False)
  print(f"loss {hist.losses[0]:.4f} -> {hist.losses[-1]:.4f}")
  assert hist.losses[-1] <= 0.5 * hist.losses[0]
  after = frozen_arrays(trainer.synthesizer().model)
  assert before.keys() == after.keys() and len(before) > 10
  for path in before:
    np.testing.assert_array_equal(before[path], after[path], err_msg=str(path))
  # The adapter trained: LoRA B and the mapper's last layer left zero.
  lora_b = trainer.trainable["model"]["layers"][0]["attn"]["q"]["lora_b"]
  assert float(np.abs(np.asarray(lora_b)).max()) > 0
  assert float(np.abs(np.asarray(trainer.trainable["mapper"]["w2"])).max()) > 0
  scalars = read_scalars(tmp_path / "tensorboard", "train/loss")
  assert [s for s, _ in scalars] == list(range(1, 31))
  assert scalars[-1][1] == pytest.approx(hist.losses[-1], rel=1e-6)
  from psynth.train.curve import plot
  assert plot(tmp_path, tmp_path / "curve.png").stat().st_size > 10_000
  # The adapter directory training writes reloads into a fresh model bit for bit.
  from psynth.convert.adapter_dir import load_adapter_dir
  trainer.save_adapter(tmp_path / "adapter")
  fresh = psynth.load("tiny-random")
  mapper = load_adapter_dir(tmp_path / "adapter", fresh.model)
  np.testing.assert_array_equal(np.asarray(fresh.model.layers[0].attn.q.lora_b[...]),
                                np.asarray(lora_b))
  np.testing.assert_array_equal(np.asarray(mapper.w2[...]),
                                np.asarray(trainer.trainable["mapper"]["w2"]))


def test_resume_continues_the_same_run(tmp_path):
  data, val = examples(6), examples(2)
  kw = dict(steps=6, batch_size=2, lr=1e-2, warmup_steps=1, save_every=3, eval_every=3)
  whole = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "a", **kw)), mesh=one_device())
  full = whole.fit(data, val, progress=False)
  first = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "b", **kw)), mesh=one_device())
  part = first.fit(data, val, until=3, progress=False)  # "killed" after step 3's checkpoint
  again = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "b", **kw)), mesh=one_device())
  scored, evaluate = [], again.evaluate
  again.evaluate = lambda items, method: scored.append(method) or evaluate(items, method)
  rest = again.fit(data, val, progress=False)
  assert part.steps == [1, 2, 3] and rest.steps == [4, 5, 6]
  assert "naive" not in scored and "text" not in scored  # baselines read back, not re-run
  assert (rest.naive_eval, rest.text_eval) == (part.naive_eval, part.text_eval)
  np.testing.assert_allclose(part.losses + rest.losses, full.losses, rtol=0, atol=1e-6)
  assert rest.eval[-1][1] == pytest.approx(full.eval[-1][1], abs=1e-6)
  assert math.isfinite(full.text_eval) and full.text_eval != full.naive_eval


def test_mesh_of_8_devices_matches_one_device(tmp_path):
  assert jax.device_count() >= 8
  data = examples(8)
  kw = dict(steps=2, batch_size=4, grad_accum=1, lr=1e-2, warmup_steps=1, save_every=100)
  ref = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "one", **kw)), mesh=one_device())
  mesh = sharding.make_mesh(2, 2, 2, devices=jax.devices()[:8])
  big = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "eight", **kw)), mesh=mesh)
  a = ref.fit(data, progress=False)
  b = big.fit(data, progress=False)
  print("1 device", a.losses, "8 devices", b.losses)
  np.testing.assert_allclose(b.losses, a.losses, rtol=0, atol=1e-5)


def test_padded_branches_change_nothing(tmp_path):
  """An example's loss is the same alone (2 branches) and in a batch padded to 3 branches."""
  from psynth.train import loss as loss_lib
  trainer = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path, steps=1)), mesh=one_device())
  synth = trainer.synthesizer()
  two = examples(1)[0]
  three = dataclasses.replace(two, id="three", branch_inputs=two.branch_inputs + ["x y"],
                              branch_outputs=two.branch_outputs + ["Another lamp is blue."])
  items = trainer.tokenize([two, three])
  alone = trainer.host_batch(items[:1], sizes=dict(N=2))
  padded = trainer.host_batch(items, sizes=dict(N=3, W=alone["worker_tokens"].shape[1],
                                                T=alone["synth_tokens"].shape[1]))
  assert padded["branch_lengths"][0, 2] == 0 and padded["branch_lengths"][1, 2] > 0
  first = lambda b: {k: v[:1] if v.shape[0] == 2 else v[:3] if v.shape[0] == 6 else v
                     for k, v in b.items()}
  a = loss_lib.compute(synth.model, synth.mapper, alone)
  # The padded batch's first example alone, still padded to 3 branches (one empty).
  p = loss_lib.compute(synth.model, synth.mapper, first(padded))
  assert float(a["tokens"]) == float(p["tokens"]) > 0
  assert abs(float(a["ce"]) - float(p["ce"])) <= 1e-4 * float(a["ce"])


def test_kl_term_towards_the_text_synthesizer(tmp_path):
  kw = dict(steps=2, batch_size=2, lr=1e-2, warmup_steps=1, save_every=100, kl_weight=0.5)
  trainer = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path, **kw)), mesh=one_device())
  hist = trainer.fit(examples(2), progress=False)
  kl = read_scalars(tmp_path / "tensorboard", "train/kl")
  ce = read_scalars(tmp_path / "tensorboard", "train/ce")
  assert all(v > 0 for _, v in kl)
  for (_, k), (_, c), total in zip(kl, ce, hist.losses):
    assert total == pytest.approx(c + 0.5 * k, rel=1e-5)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
  data = examples(4)
  kw = dict(steps=2, batch_size=4, lr=1e-2, warmup_steps=1, save_every=100)
  a = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "a", grad_accum=1, **kw)),
              mesh=one_device()).fit(data, progress=False)
  b = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "b", grad_accum=2, **kw)),
              mesh=one_device()).fit(data, progress=False)
  np.testing.assert_allclose(b.losses, a.losses, rtol=0, atol=1e-5)


def test_scanned_layers_train_as_the_unrolled_loop(tmp_path):
  """model.scan_layers (layers stored stacked, scanned, rematerialized) trains as the unrolled
  loop does, and the trainer hands out the synthesizer one layer per Block."""
  runs = {}
  for scan in (False, True):
    cfg = tiny_cfg(tmp_path / str(scan), steps=2, batch_size=2, lr=1e-2, warmup_steps=1,
                   save_every=100, remat=scan)
    cfg.model.scan_layers = scan
    trainer = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(cfg),
                      mesh=one_device())
    losses = trainer.fit(examples(4), progress=False).losses
    lora = nnx.to_pure_dict(nnx.state(trainer.synthesizer().model, nnx.LoRAParam))
    runs[scan] = losses, jax.tree.map(np.asarray, lora)
  np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=0, atol=1e-5)
  assert jax.tree.structure(runs[True][1]) == jax.tree.structure(runs[False][1])
  for a, b in zip(jax.tree.leaves(runs[True][1]), jax.tree.leaves(runs[False][1])):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def write_data(out_dir: Path, train, val):
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "train.branches.jsonl").write_text("".join(e.to_json() + "\n" for e in train))
  (out_dir / "val.branches.jsonl").write_text("".join(e.to_json() + "\n" for e in val))


def test_two_processes_match_one_process(tmp_path):
  write_data(tmp_path / "data", examples(4), examples(2))
  common = [sys.executable, "-m", "psynth", "train", f"--config={ROOT / 'configs' / 'tiny.py'}",
            f"--config.data.out_dir={tmp_path / 'data'}", "--config.train.steps=2",
            "--config.train.batch_size=2", "--config.train.warmup_steps=1",
            "--config.train.eval_every=2"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  one = subprocess.run(common + [f"--config.workdir={tmp_path / 'one'}"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
  two = subprocess.run([sys.executable, str(ROOT / "launch" / "local_multiprocess.py"),
                        "--num_processes=2", "--"] + common + [f"--config.workdir={tmp_path / 'two'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert two.returncode == 0, two.stdout[-5000:]
  assert "process 1 of 2, 2 devices" in two.stdout
  a = read_scalars(tmp_path / "one" / "tensorboard", "train/loss")
  b = read_scalars(tmp_path / "two" / "tensorboard", "train/loss")
  print("1 process", a, "2 processes", b)
  assert [s for s, _ in a] == [s for s, _ in b] == [1, 2]
  np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=0, atol=1e-5)
  assert (tmp_path / "two" / "checkpoints" / "2").is_dir()
  assert (tmp_path / "two" / "adapter" / "lora.safetensors").is_file()
  # ... and `python -m psynth export` turns it into a PEFT adapter.
  out = subprocess.run([sys.executable, "-m", "psynth", "export", common[4], "--what=peft",
                        f"--adapter={tmp_path / 'two' / 'adapter'}", f"--out={tmp_path / 'peft'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4


def test_training_can_start_from_a_trained_adapter(tmp_path):
  """train.init_adapter: step 1 starts from the adapter's LoRA and mapper (its loss equals the
  adapter's val loss), and an adapter of other LoRA settings is refused, naming both."""
  kw = dict(steps=8, batch_size=2, lr=3e-2, warmup_steps=1, save_every=100)
  first = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "a", **kw)),
                  mesh=one_device())
  first.fit(examples(2), progress=False)
  first.save_adapter(tmp_path / "adapter")
  trained_loss = first.evaluate(first.tokenize(examples(2)), "trained")
  cfg = tiny_cfg(tmp_path / "b", **dict(kw, steps=1, init_adapter=str(tmp_path / "adapter")))
  again = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(cfg), mesh=one_device())
  np.testing.assert_array_equal(np.asarray(again.trainable["mapper"]["w2"]),
                                np.asarray(first.trainable["mapper"]["w2"]))
  np.testing.assert_array_equal(
      np.asarray(again.trainable["model"]["layers"][1]["attn"]["v"]["lora_b"]),
      np.asarray(first.trainable["model"]["layers"][1]["attn"]["v"]["lora_b"]))
  assert again.evaluate(again.tokenize(examples(2)), "trained") == pytest.approx(trained_loss, abs=1e-6)
  fresh = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path / "c", **kw)),
                  mesh=one_device())
  assert fresh.evaluate(fresh.tokenize(examples(2)), "trained") > trained_loss + 0.1
  cfg.lora.rank = 8
  with pytest.raises(ValueError, match=r"init_adapter(.|\n)*\(4, 8\.0(.|\n)*\(8, 8\.0"):
    Trainer(psynth.load("tiny-random"), TrainSettings.from_config(cfg), mesh=one_device())


def test_checkpoint_from_another_config_is_refused(tmp_path):
  kw = dict(steps=1, batch_size=2, save_every=1)
  Trainer(psynth.load("tiny-random"), TrainSettings.from_config(tiny_cfg(tmp_path, **kw)),
          mesh=one_device()).fit(examples(2), progress=False)
  cfg = tiny_cfg(tmp_path, **dict(kw, steps=2))
  cfg.lora.rank = 8
  other = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(cfg), mesh=one_device())
  with pytest.raises(ValueError, match=r"another configuration(.|\n)*'rank': 4(.|\n)*'rank': 8"):
    other.fit(examples(2), progress=False)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = tiny_cfg(tmp_path, steps=4, batch_size=2, lr=float("nan"), warmup_steps=0, save_every=1)
  trainer = Trainer(psynth.load("tiny-random"), TrainSettings.from_config(cfg), mesh=one_device())
  with pytest.raises(FloatingPointError, match=r"loss is nan at step 2(.|\n)*step 1"):
    trainer.fit(examples(2), progress=False)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [1]


def test_data_file_with_missing_fields_is_refused(tmp_path):
  good = json.loads(examples(1)[0].to_json())
  del good["target"]
  (tmp_path / "train.branches.jsonl").write_text(json.dumps(good) + "\n")
  cfg = tiny_cfg(tmp_path / "run")
  cfg.data.out_dir = str(tmp_path)
  with pytest.raises(ValueError, match=r"train.branches.jsonl:1 is missing field\(s\) \['target'\]"):
    training_data(cfg.data.out_dir)
  del good["branch_outputs"]
  good["target"] = "x"
  (tmp_path / "train.branches.jsonl").write_text(json.dumps(good) + "\n")
  with pytest.raises(ValueError, match="has no branch_outputs"):
    training_data(cfg.data.out_dir)
  cfg.data.out_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="no training data"):
    training_data(cfg.data.out_dir)


def test_qwen3_14b_config_shapes(tmp_path):
  """The reference-scale config builds and its train step type-checks, by shapes only."""
  from psynth.cache import mappers
  from psynth.model.config import ModelConfig
  from psynth.model.lora import add_lora
  from psynth.model.transformer import Transformer
  from psynth.train import step as step_lib

  cfg = config_files.load("qwen3_14b")
  mc = ModelConfig.from_hf(cfg.hf_config.to_dict(), dtype="bfloat16", param_dtype="bfloat16")
  assert (mc.num_layers, mc.num_heads, mc.num_kv_heads, mc.head_dim) == (40, 40, 8, 128)

  def build():
    model = add_lora(Transformer(mc, rngs=nnx.Rngs(0)), rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                     targets=tuple(cfg.lora.targets), rngs=nnx.Rngs(1))
    return step_lib.Synthesizer(model, mappers.make(cfg.mapper.kind, mc.num_layers,
                                                   mc.num_kv_heads, rngs=nnx.Rngs(2)))

  synth = nnx.eval_shape(build)
  split = step_lib.Split.of(synth)
  n_lora = sum(math.prod(x.shape) for x in jax.tree.leaves(split.trainable["model"]))
  r, D, H, K, E = 16, 5120, 40, 8, 128
  assert n_lora == 40 * r * ((D + H * E) * 2 + (D + K * E) * 2)  # q, o, k, v
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(split.trainable["mapper"])) == 260
  n_frozen = sum(math.prod(x.shape) for x in jax.tree.leaves(split.frozen))
  assert 14.0e9 < n_frozen < 15.0e9
  tx, _ = step_lib.make_optimizer(cfg.train)
  train_step = step_lib.make_train_step(split, tx, mode="shared_start", kl_weight=0.0)
  accum, micro, N, W, T = 2, 2, 3, 64, 32
  i32 = lambda *s: jax.ShapeDtypeStruct(s, np.int32)
  batch = dict(prefix_tokens=i32(accum, micro, 16), prefix_positions=i32(accum, micro, 16),
               worker_tokens=i32(accum, micro * N, W), worker_positions=i32(accum, micro * N, W),
               out_start=i32(accum, micro * N), branch_lengths=i32(accum, micro, N),
               synth_tokens=i32(accum, micro, T), synth_positions=i32(accum, micro, T),
               loss_mask=jax.ShapeDtypeStruct((accum, micro, T), np.float32))
  opt = jax.eval_shape(tx.init, split.trainable)
  # bf16 backbone; LoRA, mapper and optimizer state in fp32.
  dtypes = lambda tree, keep: {x.dtype for x in jax.tree.leaves(tree) if keep(x)}
  assert dtypes(split.frozen, lambda x: x.ndim == 2) == {jnp.dtype("bfloat16")}
  assert dtypes(split.trainable, lambda x: True) == {jnp.dtype("float32")}
  assert dtypes(opt, lambda x: jnp.issubdtype(x.dtype, jnp.floating)) == {jnp.dtype("float32")}
  new, _, metrics = jax.eval_shape(train_step, split.trainable, split.frozen, opt, batch)
  assert jax.tree.map(lambda x: x.shape, new) == jax.tree.map(lambda x: x.shape, split.trainable)
  assert metrics["loss"].shape == ()
