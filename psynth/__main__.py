"""psynth command line: `python -m psynth COMMAND [--flags]`.

Commands:
  synthesize fan out, then text vs cache synthesis (no flags: the built-in example)
             python -m psynth synthesize [--question "..." --branch "doc 1" --branch "doc 2"]
                                         [--adapter=default|none|DIR]
  generate   answer one prompt:        python -m psynth generate --prompt "..."
  bench      vs HF transformers:       python -m psynth bench prefill | ttft [--json F --plot F]
             batched vs one at a time: python -m psynth bench throughput [--json F]
  data       training examples from the benchmark files, then their branches (generated once):
             python -m psynth data --config.data.out_dir=DIR [--config.data.limit_per_source=50]
  eval       benchmarks x methods (single, text, naive, psynth), accuracy +- CI and TTFT:
             python -m psynth eval --tasks=arc_easy,hotpotqa --methods=single,text,naive --limit=20 --output_dir=DIR
  train      the synthesizer LoRA + cache mapper:
             python -m psynth train --config=configs/tiny.py --config.workdir=DIR --config.train.steps=N
  export     an adapter as merged HF weights, a PEFT adapter or the reference release:
             python -m psynth export --what=merged|peft|reference|psynth --adapter=DIR --out=DIR
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "smollm2_135m.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "ml_collections config file.")
_PROMPT = flags.DEFINE_string("prompt", "What is the capital of France?", "generate: the question.")
_SYSTEM = flags.DEFINE_string("system", None, "generate: an optional system prompt.")
_OUT = flags.DEFINE_string("out", None, "bench: also write the report (markdown) to this file.")
_JSON = flags.DEFINE_string("json", None, "bench ttft: also write the rows as JSON here.")
_PLOT = flags.DEFINE_string("plot", None, "bench ttft: also draw the table as a PNG here.")
_QUESTION = flags.DEFINE_string("question", None, "synthesize: the question (default: built-in example).")
_BRANCH = flags.DEFINE_multi_string("branch", [], "synthesize: one worker input (repeat the flag).")
_WHAT = flags.DEFINE_enum("what", "merged", ["merged", "peft", "reference", "psynth"],
                          "export: merged HF checkpoint, PEFT adapter, reference release "
                          "(cache_mapper.pt + judger_lora/) or psynth adapter dir.")
_ADAPTER = flags.DEFINE_string(
    "adapter", None, "synthesize, eval (method psynth), export: a trained synthesizer: a name "
    "shipped with psynth ('default', used when the flag is absent), 'none', or an adapter dir "
    "(psynth, PEFT or reference release), e.g. WORKDIR/adapter.")
_TASKS = flags.DEFINE_list("tasks", ["arc_easy", "hotpotqa"], "eval: tasks, comma-separated.")
_METHODS = flags.DEFINE_list("methods", ["single", "text", "naive"],
                             "eval: single, text, naive, psynth (needs --adapter).")
_LIMIT = flags.DEFINE_integer("limit", None, "eval: at most this many examples per task.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/eval", "eval: predictions, summary.json, "
                                  "results.md (rerun to resume).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "eval: shards (default: JAX processes).")
_SHARD_ID = flags.DEFINE_integer("shard_id", None, "eval: this shard (default: process index).")
_GAIA_DIR = flags.DEFINE_string("gaia_dir", "", "eval: a local GAIA validation directory.")
_MERGE = flags.DEFINE_bool("merge", False, "eval: only merge the shards in --output_dir.")

COMMANDS = {"synthesize": "fan out, then text vs cache synthesis", "generate": "answer one prompt",
            "bench": "bench prefill|ttft|throughput: vs HF transformers, batched vs one at a time",
            "data": "build training examples, then generate their branches once",
            "eval": "evaluate methods on benchmarks: accuracy, CI, TTFT",
            "train": "train the synthesizer LoRA and cache mapper",
            "export": "export an adapter: merged HF / PEFT / reference release"}


def _generate(cfg) -> None:
  import psynth

  loaded = psynth.load(cfg.model.name, dtype=cfg.model.dtype)
  messages = ([{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else [])
  messages.append({"role": "user", "content": _PROMPT.value})
  s = cfg.sampling
  print(psynth.generate(loaded, messages, max_new_tokens=s.max_new_tokens,
                        temperature=s.temperature, top_p=s.top_p, seed=s.seed))


def _synthesize(cfg) -> None:
  import psynth
  from psynth.synthesis import demo

  if bool(_QUESTION.value) != bool(_BRANCH.value):
    raise app.UsageError("pass both --question and at least one --branch, or neither "
                         "(the built-in example)")
  # The shipped trained synthesizer by default; --adapter=none shows the untrained path only.
  loaded = psynth.load(cfg.model.name, dtype=cfg.model.dtype, adapter=_synth_adapter(cfg))
  s = cfg.synthesis
  kw = dict(question=_QUESTION.value, documents=_BRANCH.value) if _QUESTION.value else {}
  print(demo.run(loaded, mode=s.mode, worker_tokens=s.worker_max_new_tokens,
                 answer_tokens=s.max_new_tokens, **kw))


def _synth_adapter(cfg) -> str | None:
  """--adapter, else the adapter shipped for the model as "default" (None if there is none)."""
  from psynth import adapters
  if _ADAPTER.value:
    return _ADAPTER.value
  return "default" if "default" in adapters.shipped(cfg.model.name) else None


def _bench(cfg, what: str) -> None:
  import psynth
  from psynth.bench import prefill, ttft

  if what not in ("prefill", "ttft", "throughput"):
    raise app.UsageError(f"unknown benchmark {what!r}; available: prefill, ttft, throughput")
  b = cfg.bench
  if what == "throughput":
    from psynth.bench import throughput
    loaded = psynth.load(cfg.model.name, dtype=cfg.model.dtype, adapter=_synth_adapter(cfg))
    result = throughput.run(loaded, b.throughput_examples, b.throughput_branches,
                            b.throughput_batch, b.throughput_answer_tokens, b.throughput_runs,
                            cfg.data.data_dir or None)
    report = throughput.report(result)
    if _JSON.value:
      throughput.write_json(result, _JSON.value)
    print(report)
    if _OUT.value:
      Path(_OUT.value).write_text(report)
    return
  loaded = psynth.load(cfg.model.name, dtype=cfg.model.dtype)
  if what == "prefill":
    report = prefill.run(loaded, tuple(b.prefill_lengths), b.runs, b.decode_prompt,
                         b.decode_tokens)
  else:
    rows = ttft.run(loaded, tuple(b.ttft_branches), tuple(b.ttft_branch_tokens), b.runs)
    report = ttft.report(rows, loaded, b.runs)
    if _JSON.value:
      ttft.write_json(rows, _JSON.value)
    if _PLOT.value:
      ttft.plot(rows, _PLOT.value)
  print(report)
  if _OUT.value:
    Path(_OUT.value).write_text(report)


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    listing = ", ".join(f"{k} ({v})" for k, v in COMMANDS.items())
    raise app.UsageError(f"usage: python -m psynth COMMAND [flags]; commands: {listing}")
  logging.getLogger().setLevel(logging.INFO)
  cfg = _CONFIG.value
  from psynth import compile_cache
  compile_cache.enable(cfg.get("compile_cache", ""))
  if argv[1] == "synthesize":
    _synthesize(cfg)
  elif argv[1] == "generate":
    _generate(cfg)
  elif argv[1] == "bench":
    _bench(cfg, argv[2] if len(argv) > 2 else "prefill")
  elif argv[1] == "export":
    from psynth.convert import export
    if not _ADAPTER.value or not _OUT.value:
      raise app.UsageError("export needs --adapter=DIR (e.g. WORKDIR/adapter) and --out=DIR")
    print(export.export_main(cfg, _WHAT.value, _ADAPTER.value, _OUT.value))
  elif argv[1] == "data":
    from psynth.data.main import main as data_main
    data_main(cfg)
  elif argv[1] == "eval":
    from psynth.eval import report, runner
    if _MERGE.value:
      print(report.merge_main(_OUTPUT_DIR.value))
      return
    from psynth import sharding
    d = cfg.dist
    sharding.init_distributed(d.coordinator, d.num_processes, d.process_id, d.auto)
    summary = runner.eval_main(cfg, _TASKS.value, _METHODS.value, _LIMIT.value, _OUTPUT_DIR.value,
                               _synth_adapter(cfg), _NUM_SHARDS.value, _SHARD_ID.value,
                               gaia_dir=_GAIA_DIR.value)
    if summary is not None:
      print((Path(_OUTPUT_DIR.value) / "results.md").read_text())
  elif argv[1] == "train":
    from psynth.train import main as train_main
    train_main.run(cfg)


if __name__ == "__main__":
  app.run(main)
