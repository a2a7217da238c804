"""Evaluation: every task's reader on the real benchmark files, scoring of gold replies, and
runs on the tiny random model (summary, sharded == unsharded, resumed == uninterrupted,
GAIA absent, psynth with an identity adapter == naive)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psynth.data import facts, fixed
from psynth.data.sources import data_dir
from psynth.eval import readers, records, report
from psynth.eval.runner import NO_ADAPTER, eval_main
from psynth.eval.settings import EvalSettings
from psynth.eval.tasks import TASKS, BuildOptions, TaskUnavailable
from psynth.eval.tasks import gaia as gaia_task

try:
  DATA = data_dir()
except FileNotFoundError:
  DATA = None
pytestmark = pytest.mark.skipif(DATA is None, reason="benchmark data (../shared/data) not found")
OPTS = BuildOptions(DATA, 3, 120) if DATA else None
RUN_TASKS, RUN_METHODS = "gpqa_diamond,hotpotqa,gaia", "single,text,naive"
STATS = ("accuracy", "ci_low", "ci_high", "n")


@pytest.fixture(scope="module")
def settings():
  path = Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
  spec = importlib.util.spec_from_file_location("psynth_tiny_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.synthesis.worker_max_new_tokens, c.synthesis.max_new_tokens = 6, 6
  return EvalSettings.from_config(c)


@pytest.fixture(scope="module")
def loaded():
  import psynth
  return psynth.load("tiny-random")


@pytest.fixture(scope="module")
def items():
  return {name: TASKS[name].build(OPTS) for name in TASKS if name != "gaia"}


# name -> (examples, id of the first, its gold answer)
EXPECTED = {
    "gsm8k": (1319, "test-0", "18"),
    "math500": (500, "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    "aime24": (30, "aime24-60", "204"),
    "arc_easy": (2376, "Mercury_417466", "A"),
    "arc_challenge": (1170, "Mercury_7175875", "C"),
    "mmlu_stem": (3018, "mmlu_stem-0-college_biology", "C"),
    "gpqa_diamond": (198, "rec06pnAkLOr2t2mp", "A"),
    "humaneval": (164, "HumanEval/0", "HumanEval/0"),
    "mbpp": (257, "mbpp-11", 11),
    "mbpp_plus": (399, "Mbpp/2", "Mbpp/2"),
    "hotpotqa": (100, "5a77ec115542992a6e59dff7", ["a spirit"]),
    "musique": (100, "2hop__150763_14904", ["G. Stanley Hall", "Stanley Hall"]),
    "dbot": (62, "3", "highly deletes"),
    "piqa": (1838, "piqa-0", "A"),
}


def _gold(g):
  return g.get("answer", g.get("task_id")) if isinstance(g, dict) else g


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_reads_official_files(name, items):
  count, first_id, first_gold = EXPECTED[name]
  got = items[name]
  assert len(got) == count
  assert got[0].id == first_id and _gold(got[0].gold) == first_gold
  assert all(len(it.branches) == 3 for it in got)
  assert len({it.id for it in got}) == count
  if TASKS[name].branching == "chunk":  # single reads all the evidence, workers a part each
    assert got[0].context == "\n\n".join(got[0].branches) and len(set(got[0].branches)) == 3
  else:
    assert got[0].context == "" and len(set(got[0].branches)) == 1


def test_piqa_labels_come_from_the_aligned_labels_file(items):
  golds = [it.gold["answer"] for it in items["piqa"]]
  assert {g: golds.count(g) for g in "AB"} == {"A": 910, "B": 928}
  second = items["piqa"][1]
  assert second.question.startswith("Goal: dresser Which solution works?\nA. replace drawer")
  assert second.gold["answer"] == "B"


def test_synthesizer_asks_for_the_task_answer_format():
  """A task with an answer form ends the synthesizer prompts with it, not with the default
  "in one or two sentences" (which a small model follows over the question's own form)."""
  from psynth.synthesis import prompts
  for name, task in TASKS.items():
    assert task.answer_format, name  # every task here has a form
    for msgs in (prompts.synth_cache("Q?", task.system, task.answer_format),
                 prompts.synth_text("Q?", ["note"], task.system, task.answer_format)):
      assert msgs[-1]["content"].endswith(f"answer the question. {task.answer_format}")
      assert "one or two sentences" not in msgs[-1]["content"]
  assert prompts.synth_cache("Q?")[-1]["content"].endswith(
      prompts.SYNTH_CACHE_LEAD + prompts.ANSWER_SENTENCES)


def test_held_out_from_leaves_out_the_adapters_training_questions(items, tmp_path):
  """An adapter trained on HotpotQA train-sample questions is not scored on them."""
  from psynth.data.example import Example
  from psynth.eval import runner
  first, third = items["hotpotqa"][0], items["hotpotqa"][2]
  train = tmp_path / "train.jsonl"
  train.write_text("".join(
      Example(f"hotpotqa/{it.id}/context", "context", "hotpotqa", it.question, ["doc"], "x",
              meta={"group": f"hotpotqa/{it.id}"}).to_json() + "\n" for it in (first, third)))
  trained = runner.trained_groups(train)
  assert trained == {f"hotpotqa/{first.id}", f"hotpotqa/{third.id}"}
  kept = runner.held_out(TASKS["hotpotqa"], items["hotpotqa"], trained)
  assert [it.id for it in kept[:2]] == [items["hotpotqa"][1].id, items["hotpotqa"][3].id]
  assert len(kept) == len(items["hotpotqa"]) - 2
  assert runner.held_out(TASKS["musique"], items["musique"], trained) == items["musique"]


def test_gpqa_options_are_shuffled_per_record(items):
  golds = [it.gold["answer"] for it in items["gpqa_diamond"]]
  assert {g: golds.count(g) for g in "ABCD"} == {"A": 42, "B": 48, "C": 61, "D": 47}
  first = items["gpqa_diamond"][0]
  assert first.gold["options"][0] == "10^-4 eV" and "A. 10^-4 eV" in first.question


def test_dbot_branches_hold_alerts_and_metrics_only(items):
  first = items["dbot"][0]
  assert first.branches[0].startswith("Alerts raised between 2023-10-14 23:25:50")
  assert first.branches[1].startswith("node_procs_running (for cpu expert): 60 samples")
  raw = json.loads((DATA / "dbot" / "all_anomalies.json").read_text())
  leaks = [v[f][:40] for v in raw.values() for f in ("description", "command") if len(v[f]) >= 40]
  text = "\n".join(b for it in items["dbot"] for b in it.branches + (it.question,))
  assert len(leaks) > 500 and not any(leak in text for leak in leaks)
  assert "anomaly_trigger" not in text


GOLD_REPLIES = {
    "gsm8k": "Each day she sells 9 eggs at $2. The answer is \\boxed{18}.",
    "math500": "So the point is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
    "aime24": "The walk takes \\boxed{204} minutes.",
    "arc_easy": "The answer is A.",
    "mmlu_stem": "Answer: (C)",
    "hotpotqa": "The answer is: a spirit.",
    "musique": "Stanley Hall",
    "dbot": "The root cause is highly deletes.",
    "piqa": "A. Provide the guinea pig with a cage full of bedding.",
}


@pytest.mark.parametrize("name", sorted(GOLD_REPLIES))
def test_gold_reply_scores_correct(name, items):
  item = items[name][0]
  s = TASKS[name].score(GOLD_REPLIES[name], item)
  assert s.correct, s
  assert not TASKS[name].score("I do not know.", item).correct


EVIDENCE = {"facts": 500, "facts_multi": 500, "strategyqa": 800, "arc_easy_evidence": 2376,
            "arc_easy_likelihood": 2376}


@pytest.mark.parametrize("name", sorted(EVIDENCE))
def test_evidence_tasks_are_fixed_branches_and_deterministic(name, items):
  task, got = TASKS[name], items[name]
  assert task.branching == "fixed" and len(got) == EVIDENCE[name] >= 300
  assert len({it.id for it in got}) == len(got) and task.build(OPTS) == got
  for it in got:
    assert it.question.endswith(f"\n{task.answer_format}") and all(b.strip() for b in it.branches)
    assert it.context == "\n\n".join(it.branches)
  if name == "arc_easy_evidence":  # one branch per option, holding that option's passage
    assert all(len(it.branches) == len(it.gold["options"]) for it in got)
    assert got[0].branches[1].startswith('About option B ("Most ecosystems are found on land')
  elif name == "arc_easy_likelihood":  # the options' passages as found: no option quoted
    assert sum(len(it.branches) == len(it.gold["options"]) for it in got) >= 2300
    assert got[0].branches[1] == ("Reptiles are important components of the food webs in "
                                  "most ecosystems.")
    assert not any("About option" in b for it in got for b in it.branches)
  else:
    assert {len(it.branches) for it in got} == {3}


def test_facts_follow_the_seed_in_layout_only_and_need_two_branches(items):
  reseeded = TASKS["facts"].build(BuildOptions(DATA, 3, 120, seed=1))
  assert [it.question for it in reseeded] == [it.question for it in items["facts"]]
  assert [it.branches for it in reseeded] != [it.branches for it in items["facts"]]
  assert {len(it.branches) for it in TASKS["facts"].build(BuildOptions(DATA, 1, 120))} == {4}
  p, asked = fixed.facts_record("facts", "eval", 0)
  assert sum(facts.fact(p, asked[0]) in b for b in items["facts"][0].branches) == 1


def test_evidence_scoring(items):
  single, multi = items["facts"][0], items["facts_multi"][0]
  score, other = TASKS["facts"].score, items["facts"][1].gold["values"][0]
  value = single.gold["values"][0]
  right = score(single.gold["answer"], single)
  assert right.correct and right.f1 == 1.0
  in_sentence = score(f"I believe the answer is the {value}, as the notes say.", single)
  assert in_sentence.correct and 0 < in_sentence.f1 < 1
  assert score(value, single).correct and score(value, single).f1 == 1.0
  wrong = score(f"The {other}.", single)
  assert not wrong.correct and wrong.f1 < 1 and not score("I do not know.", single).correct
  values = multi.gold["values"]
  assert TASKS["facts_multi"].score(" and ".join(values) + ".", multi).correct
  assert not TASKS["facts_multi"].score(values[0] + ".", multi).correct  # one of them only

  sqa = items["strategyqa"][0]
  yes_no = TASKS["strategyqa"].score
  gold, flip = sqa.gold, {"yes": "no", "no": "yes"}[sqa.gold]
  assert yes_no(f"{gold.capitalize()}, the notes say so.", sqa).correct
  assert yes_no(f"I know it: {gold}. Not {flip}.", sqa).correct  # the first yes/no counts
  assert not yes_no(f"{flip.capitalize()}.", sqa).correct
  assert yes_no("I cannot tell.", sqa).extracted is None

  arc = items["arc_easy_evidence"][0]
  assert TASKS["arc_easy_evidence"].score("The answer is A.", arc).correct
  assert TASKS["arc_easy_evidence"].score("Sunlight is the source of energy for nearly all "
                                          "ecosystems.", arc).correct
  assert not TASKS["arc_easy_evidence"].score("B", arc).correct


def test_code_tasks_run_canonical_solutions_in_the_sandbox(items):
  he = readers.read_humaneval(DATA)[0]
  reply = f"```python\n{he['prompt']}{he['canonical_solution']}```"
  assert TASKS["humaneval"].score(reply, items["humaneval"][0]).correct
  mb = readers.read_mbpp("sanitized", DATA)[0]
  assert TASKS["mbpp"].score(f"```python\n{mb['code']}\n```", items["mbpp"][0]).correct
  plus = readers.read_mbpp("plus", DATA)[0]
  assert TASKS["mbpp_plus"].score(plus["canonical_solution"], items["mbpp_plus"][0]).correct
  assert not TASKS["mbpp_plus"].score("def similar_elements(a, b):\n  return ()\n",
                                      items["mbpp_plus"][0]).correct


def test_gaia_absent_is_a_clear_skip(monkeypatch):
  monkeypatch.delenv(gaia_task.ENV_VAR, raising=False)
  with pytest.raises(TaskUnavailable, match="GAIA is gated .* not available offline"):
    TASKS["gaia"].build(OPTS)


def test_gaia_local_copy(tmp_path):
  folder = tmp_path / "2023" / "validation"
  folder.mkdir(parents=True)
  (folder / "notes.txt").write_text("The bridge opened in 1932.")
  recs = [{"task_id": "t1", "Question": "When did the bridge open?", "Level": 1,
           "Final answer": "1932", "file_name": "notes.txt"},
          {"task_id": "t2", "Question": "Name two primes.", "Level": 1,
           "Final answer": "2, 3", "file_name": ""}]
  (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  got = TASKS["gaia"].build(BuildOptions(DATA, 3, 120, gaia_dir=str(tmp_path)))
  assert [it.id for it in got] == ["t1", "t2"]
  assert "The bridge opened in 1932." in got[0].question
  assert TASKS["gaia"].score("Final answer: 1,932", got[0]).correct
  assert TASKS["gaia"].score("Final answer: 2; 3", got[1]).correct
  assert not TASKS["gaia"].score("Final answer: 2, 5", got[1]).correct
  assert gaia_task.gaia_match("Paris.", "paris") and not gaia_task.gaia_match(None, "x")


def test_settings_from_config_sections_then_eval_then_overrides():
  from ml_collections import ConfigDict
  cfg = ConfigDict({"seed": 3, "model": {"name": "m", "dtype": "bfloat16"},
                    "synthesis": {"max_new_tokens": 7, "mode": "shared_start"},
                    "eval": {"max_new_tokens": 9, "batch": 4, "tasks": "facts"}})
  s = EvalSettings.from_config(cfg, batch=2)
  assert (s.model, s.dtype, s.seed, s.max_new_tokens, s.batch) == ("m", "bfloat16", 3, 9, 2)
  assert s.num_branches == EvalSettings.num_branches  # absent: the default
  with pytest.raises(ValueError, match=r"unknown eval setting\(s\) \['batches'\]; accepted"):
    EvalSettings.from_config(cfg, batches=2)


def test_psynth_without_adapter_says_how_to_get_one(settings, tmp_path):
  with pytest.raises(ValueError, match="needs --adapter=DIR") as e:
    eval_main(settings, "hotpotqa", "text,psynth", limit=1, output_dir=tmp_path)
  assert "python -m psynth train" in str(e.value) and str(e.value) == NO_ADAPTER


# Fields of a prediction that depend on how the run went (timings, batch size), not on what
# it computed; everything else must be reproducible.
RUN_FIELDS = ("ttft_s", "total_s", "batch")


def _predictions(out: Path) -> dict:
  """task/method -> merged records without their timings."""
  return {f"{p.parent.name}/{p.stem}": [{k: v for k, v in r.items()
                                         if k not in RUN_FIELDS}
                                        for r in records.read_jsonl(p)]
          for p in sorted((out / "predictions").glob("*/*.jsonl")) if ".shard-" not in p.name}


def _stats(summary: dict) -> dict:
  return {t: {m: {k: s[k] for k in STATS} for m, s in by.items()} for t, by in summary.items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, settings, loaded):
  out = tmp_path_factory.mktemp("full")
  summary = eval_main(settings, RUN_TASKS, RUN_METHODS, limit=2, output_dir=out, loaded=loaded,
                      progress=False)
  return out, summary


def test_run_writes_summary_predictions_and_table(full_run, items):
  out, summary = full_run
  assert summary == json.loads((out / "summary.json").read_text())
  assert list(summary) == ["gpqa_diamond", "hotpotqa"]
  for task, rows in summary.items():
    assert list(rows) == ["single", "text", "naive"]
    for method, s in rows.items():
      assert s["n"] == 2 and 0 <= s["ci_low"] <= s["accuracy"] <= s["ci_high"] <= 1
      assert s["ttft_s"] > 0 and s["ttft_ratio_to_text"] == pytest.approx(
          s["ttft_s"] / rows["text"]["ttft_s"])
      if s["accuracy"] == 0:
        assert s["ci_high"] == pytest.approx(0.6576, abs=1e-4)  # Wilson 95%, 0 of 2
  preds = _predictions(out)
  assert sorted(preds) == [f"{t}/{m}" for t in ("gpqa_diamond", "hotpotqa")
                           for m in ("naive", "single", "text")]
  first = preds["hotpotqa/text"][0]
  assert first["id"] == items["hotpotqa"][0].id and first["gold"] == ["a spirit"]
  assert {"prediction", "extracted", "correct", "prompt_tokens", "answer_tokens",
          "branch_tokens", "f1"} <= set(first)
  assert preds["gpqa_diamond/single"][0]["gold"] == "A"
  assert preds["hotpotqa/single"][0]["branch_tokens"] == 0 < first["branch_tokens"]
  branches = records.read_jsonl(out / "branches" / "hotpotqa.shard-00000-of-00001.jsonl")
  assert [b["index"] for b in branches] == [0, 1] and all(len(b["texts"]) == 3 for b in branches)
  table = (out / "results.md").read_text()
  assert "| hotpotqa | naive | 2 | 0.0% [0.0, 65.8] | 0.0 |" in table
  assert "Skipped gaia: GAIA is gated" in table
  assert "gaia" in json.loads((out / "skipped.json").read_text())
  # GPQA stays in memory: no file under the output dir holds a question's plain text.
  secret = [it.question.split("\n")[0][:60] for it in items["gpqa_diamond"][:2]]
  for p in out.rglob("*"):
    if p.is_file():
      assert not any(s in p.read_text(errors="replace") for s in secret), p


def test_sharded_run_merged_equals_unsharded(full_run, settings, loaded, tmp_path):
  out, summary = full_run
  for k in (1, 0):
    assert eval_main(settings, RUN_TASKS, RUN_METHODS, limit=2, output_dir=tmp_path, num_shards=2,
                     shard_id=k, loaded=loaded, progress=False) is None
  assert len(records.read_jsonl(tmp_path / "predictions" / "hotpotqa" /
                                "text.shard-00001-of-00002.jsonl")) == 1
  merged = report.merge_main(tmp_path)
  assert _stats(merged) == _stats(summary)
  assert _predictions(tmp_path) == _predictions(out)


def test_interrupted_run_resumed_equals_uninterrupted(full_run, settings, loaded, tmp_path):
  out, summary = full_run
  kw = dict(limit=2, output_dir=tmp_path, loaded=loaded, progress=False)
  assert eval_main(settings, RUN_TASKS, RUN_METHODS, max_predictions=4, **kw) is None
  shard = "shard-00000-of-00001"
  gpqa = tmp_path / "predictions" / "gpqa_diamond"
  done = {m: len(records.read_jsonl(gpqa / f"{m}.{shard}.jsonl"))
          for m in ("single", "text", "naive")}
  assert done == {"single": 2, "text": 2, "naive": 0}  # method by method, batched
  with open(tmp_path / "predictions" / "gpqa_diamond" / f"text.{shard}.jsonl", "a") as f:
    f.write('{"id": "torn, the process died mid-li')  # a torn last line is cut on resume
  resumed = eval_main(settings, RUN_TASKS, RUN_METHODS, **kw)
  assert _stats(resumed) == _stats(summary)
  assert _predictions(tmp_path) == _predictions(out)
  with pytest.raises(ValueError, match="num_branches"):  # other settings: not mixed in
    eval_main(dataclasses.replace(settings, num_branches=2), RUN_TASKS, RUN_METHODS, **kw)


def test_psynth_identity_adapter_equals_naive(full_run, settings, tmp_path):
  """A fresh adapter (LoRA B = 0, mapper at identity) leaves the cache path unchanged. The
  workers' texts come from the first run's files: reused, not regenerated."""
  import shutil

  import psynth
  from flax import nnx
  from psynth.cache import mappers
  from psynth.convert.adapter_dir import save_adapter_dir
  from psynth.model.lora import add_lora

  own = psynth.load("tiny-random")
  c = own.config
  add_lora(own.model, rank=4, alpha=8.0, rngs=nnx.Rngs(0))
  adapter = save_adapter_dir(tmp_path / "adapter", own.model,
                             mappers.make("affine", c.num_layers, c.num_kv_heads, rngs=nnx.Rngs(1)))
  out = tmp_path / "out"
  shutil.copytree(full_run[0] / "branches", out / "branches")
  shutil.copy(full_run[0] / "run.json", out / "run.json")
  summary = eval_main(settings, "hotpotqa", "psynth", limit=2, output_dir=out, adapter=adapter,
                      loaded=psynth.load("tiny-random"), progress=False)
  preds = _predictions(out)["hotpotqa/psynth"]
  naive = _predictions(full_run[0])["hotpotqa/naive"]
  assert [r["prediction"] for r in preds] == [r["prediction"] for r in naive]
  assert [r["branch_tokens"] for r in preds] == [r["branch_tokens"] for r in naive]
  assert preds[0]["adapter"] == str(adapter) and summary["hotpotqa"]["psynth"]["n"] == 2
  assert len(records.read_jsonl(out / "branches" / "hotpotqa.shard-00000-of-00001.jsonl")) == 2


def test_likelihood_task_picks_the_best_option_per_character(settings, loaded, items, tmp_path):
  """arc_easy_likelihood: arc_easy_evidence's questions without letters (and its options'
  passages without headers); no reply is generated, the prediction is the letter of the
  option with the best log-probability per character."""
  import numpy as np

  from psynth.eval import methods
  from psynth.synthesis import chat
  from psynth.synthesis.likelihood import continuation_logprobs

  task = TASKS["arc_easy_likelihood"]
  got, evidence = items["arc_easy_likelihood"][:3], items["arc_easy_evidence"][:3]
  assert task.score_by == "likelihood" and TASKS["arc_easy_evidence"].score_by == "reply"
  assert [it.gold for it in got] == [it.gold for it in evidence]
  assert "\nA. " not in got[0].question and got[0].question.endswith("\n" + task.answer_format)
  summary = eval_main(settings, "arc_easy_likelihood", RUN_METHODS, limit=3, output_dir=tmp_path,
                      loaded=loaded, progress=False)
  assert {m: s["n"] for m, s in summary["arc_easy_likelihood"].items()} == dict.fromkeys(
      ("single", "text", "naive"), 3)
  preds = _predictions(tmp_path)
  for m in ("single", "text", "naive"):
    rs = preds[f"arc_easy_likelihood/{m}"]
    assert all(r["prediction"] in "ABCDE" and r["answer_tokens"] == 0 for r in rs)
    assert all(r["correct"] == (r["prediction"] == r["gold"]) for r in rs)
  tok = loaded.tokenizer
  for it, r in zip(got, preds["arc_easy_likelihood/single"]):
    opts = it.gold["options"]
    head = chat.encode(tok, methods.single_messages(task, it))
    lp = continuation_logprobs(loaded.engine, [head],
                               [tok(o, add_special_tokens=False)["input_ids"] for o in opts],
                               counts=[len(opts)])
    assert r["prediction"] == "ABCDE"[int(np.argmax(lp / np.array([len(o) for o in opts])))]


def test_paired_differences_per_task_and_pooled(tmp_path):
  """psynth - text on the same examples: the mean of per-example differences, a bootstrap
  interval around it, and the pooled row over both tasks."""
  rec = lambda i, ok: {"id": str(i), "correct": ok, "ttft_s": 0.1}
  preds = {"a": {"text": [rec(i, i < 5) for i in range(10)],
                 "psynth": [rec(i, i < 8) for i in range(10)]},
           "b": {"text": [rec(i, True) for i in range(4)],
                 "psynth": [rec(i, i != 0) for i in range(4)]}}
  pairs = report.paired(preds)
  assert list(pairs) == ["psynth-text"]
  a, b, pooled = (pairs["psynth-text"][k] for k in ("a", "b", "pooled"))
  assert (a["diff"], a["n"], b["diff"], b["n"]) == (0.3, 10, -0.25, 4)
  assert pooled["n"] == 14 and pooled["diff"] == pytest.approx((3 - 1) / 14)
  for d in (a, b, pooled):
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
  assert "| psynth - text | pooled | 14 | +14.3 [" in report.paired_markdown(pairs)
  report.plot(report.summarize(preds), tmp_path / "r.png")
  assert (tmp_path / "r.png").stat().st_size > 10_000


_COMPILE_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from psynth import compile_cache
from psynth.eval.methods import compiles
compile_cache.enable(sys.argv[1])
with compiles() as c:
  jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(7)).block_until_ready()
print(json.dumps(c))
"""


def test_a_rerun_loads_every_executable_from_the_persistent_cache(tmp_path):
  """The evaluation's compile count tells compiled from loaded: a second process with the same
  cache directory compiles nothing (every executable it needs is a cache hit)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = lambda: json.loads(subprocess.run(
      [sys.executable, "-c", _COMPILE_SCRIPT, str(tmp_path / "xla")], env=env, check=True,
      capture_output=True, text=True).stdout.strip().splitlines()[-1])
  first, second = run(), run()
  assert first[0] >= 1 and first[2] == 0  # compiled, nothing loaded
  assert second[0] == first[0] and second[2] == second[0]  # the same executables, all loaded
