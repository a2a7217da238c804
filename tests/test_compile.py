"""`python -m psynth compile`: TPU topology names, and the tiny config's train step, cache
prefill and decode step compiled for 4 compile-only TPU chips (libtpu, no TPU)."""

from __future__ import annotations

import json

import pytest

from psynth import config_files
from psynth.aot import programs, report, topology
from psynth.commands import compile as compile_cmd
from psynth.train.settings import TrainSettings


def test_topology_names_count_as_cloud_tpu_does():
  chips = {name: topology.parse(name) for name in
           ("v5p-64", "v5litepod-8", "v5e-8", "v4-32", "v6e-8", "v5p:2x4x4", "v5e:2x2")}
  assert {k: t.chips for k, t in chips.items()} == {
      "v5p-64": 32, "v5litepod-8": 8, "v5e-8": 8, "v4-32": 16, "v6e-8": 8, "v5p:2x4x4": 32,
      "v5e:2x2": 4}
  assert chips["v5p-64"].topology_name == "v5p:2x4x4"
  assert chips["v5e-8"].topology_name == "v5e:2x4"
  assert chips["v4-32"].topology_name == "v4:2x2x4"
  assert topology.parse("v5p-8").hbm_bytes > 95 * topology.GIB
  for bad, why in (("v7-8", "unknown TPU generation 'v7'"), ("v5p-12", "not a slice size"),
                   ("v5p-9", "is odd"), ("v5e:2x2x1", "2 dimensions"), ("pod", "raw topology")):
    with pytest.raises(ValueError, match=why) as e:
      topology.parse(bad)
    assert "v5litepod-N" in str(e.value)  # the accepted forms are listed


def _tiny(tmp_path, **compile_overrides):
  cfg = config_files.load("tiny")
  cfg.train.batch_size = 4  # 4 data-parallel chips
  cfg.compile.update(json=str(tmp_path / "report.json"), **compile_overrides)
  return cfg


def test_compile_tiny_train_prefill_decode(tmp_path):
  rows = compile_cmd.main(_tiny(tmp_path))
  assert [r.function for r in rows] == ["train", "prefill", "decode"]
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["chips"] == 4 and report["topology_name"] == "v5e:2x2"
  for f in report["functions"]:
    assert f["fits"] and not f["error"], f
    assert f["temp_bytes"] >= 0
    for key in ("compile_s", "argument_bytes", "output_bytes", "peak_bytes",
                "flops", "bytes_accessed", "hbm_bytes"):
      assert f[key] > 0, (f["function"], key)
    assert f["peak_bytes"] >= f["argument_bytes"]
  assert report["meshes"]["prefill"] == {"data": 2, "fsdp": 1, "tensor": 2}


def test_compile_over_budget_exits_naming_the_function(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    compile_cmd.main(_tiny(tmp_path, functions="decode", hbm_gib=1e-6))
  assert "decode does not fit: needs" in str(e.value) and "more than the" in str(e.value)


@pytest.mark.parametrize("message, gib", [
    ("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 101.20G of 95.74G hbm.",
     101.2),
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
     "temporaries (16.40G) exceeds available HBM (15.75G).", 16.4)])
def test_a_refusal_reports_what_the_compiler_said_it_needed(message, gib):
  row = report.refused("prefill", RuntimeError(message), 1.0, 2 ** 30)
  assert not row.fits and abs(row.peak_bytes / 2 ** 30 - gib) < 1e-6
  assert row.error.startswith("RESOURCE_EXHAUSTED")


def test_heads_that_do_not_divide_the_tensor_axis_are_named():
  cfg = config_files.load("tiny")
  sizes = compile_cmd.sizes(cfg)
  sizes = programs.dataclasses.replace(sizes, synth_data=1, synth_tensor=4)  # 2 KV heads
  devices = topology.parse("v5e:2x2").devices()
  with pytest.raises(ValueError, match=r"'k'.*mesh axes \('tensor',\)"):
    programs.decode_program(compile_cmd.model_config(cfg), TrainSettings.from_config(cfg), sizes,
                            devices)


def test_without_libtpu_the_error_says_how_to_install_it(monkeypatch):
  monkeypatch.setattr(topology.importlib.util, "find_spec", lambda name: None)
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  with pytest.raises(RuntimeError, match=r'pip install "jax\[tpu\]==0.10.2"'):
    topology.parse("v5e-4").devices()
