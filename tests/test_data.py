"""Training data: readers on the real benchmark files, builders, split, branch generation."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import string
import types
from pathlib import Path

import ml_collections
import pytest

from psynth.data import build, documented, facts, fixed, procedural, seeds, sources
from psynth.synthesis.prompts import ONE_SENTENCE, YES_NO, with_format
from psynth.data.branches import _filled, generate_branches, load_examples
from psynth.data.chunks import fit_paragraph
from psynth.data.example import Example, is_empty_branch
from psynth import config_files
from psynth.commands.data import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not at {DATA}")


# --- readers -----------------------------------------------------------------------------------

def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.delenv(sources.ENV_VAR, raising=False)
  assert sources.data_dir() == DATA.resolve() or sources.data_dir().samefile(DATA)
  monkeypatch.setenv(sources.ENV_VAR, str(tmp_path))
  assert sources.data_dir() == tmp_path
  with pytest.raises(FileNotFoundError, match=r"looked for: argument '/no/such/dir' -> /no/such"):
    sources.data_dir("/no/such/dir")


def test_readers_on_the_real_files():
  hp = sources.read_hotpotqa()
  assert len(hp) == 100 and hp[0].id == "5a77ec115542992a6e59dff7" and hp[0].answer == "a spirit"
  assert len(hp[0].paragraphs) == 10
  assert {p.title for p in hp[0].paragraphs if p.is_supporting} == {"Alû", "Lilu (mythology)"}
  assert [p.supporting_sentences for p in hp[0].paragraphs if p.title == "Alû"] == [(3,)]
  assert len(sources.read_hotpotqa("dev")) == 7405
  mq = sources.read_musique()
  assert len(mq) == 100 and mq[0].id == "2hop__150763_14904" and mq[0].answer == "G. Stanley Hall"
  assert mq[0].aliases == ("Stanley Hall",) and len(mq[0].paragraphs) == 20
  assert sum(p.is_supporting for p in mq[0].paragraphs) == 2
  assert len(sources.read_arc("easy", "train")) == 2251
  assert len(sources.read_arc("challenge", "train")) == 1119
  arc = sources.read_arc("easy", "dev", passages=True)
  assert len(arc) == 570 and arc[0].id == "MCAS_2000_4_6"
  assert arc[0].answer.text == "cellular telephone"
  assert arc[0].choices[0].passage.startswith("Cellular telephone.")
  gsm = sources.read_gsm8k()
  assert len(gsm) == 7473 and gsm[0].answer == "72" and "<<" not in gsm[0].solution
  assert gsm[0].solution.endswith("72 clips altogether in April and May.")
  assert len(sources.read_gsm8k("test")) == 1319
  db = sources.read_dbot()
  assert len(db) == 62 and db[0].id == "3" and db[0].labels == ("highly deletes",)
  assert db[0].alerts[0].name == "NodeCpuHigh" and len(db[0].metrics) == 4
  assert db[0].metrics[0].values[:3] == (1.0, 3.0, 9.0)
  assert not {"description", "scenario_description", "command", "script"} & {
      f.name for f in dataclasses.fields(sources.DBotCase)}


def test_readers_of_fixed_branch_sources(tmp_path):
  essays = sources.read_essays(DATA)
  assert len(essays) == 49 and essays[0].title == "addiction"
  assert "We wouldn't want to stop it." in essays[0].sentences  # glued sentences split apart
  assert (len(sources.read_corpus("hotpotqa", DATA)), len(sources.read_corpus("musique", DATA))
          ) == (994, 1890)
  for read in (sources.read_strategyqa, sources.read_essays):
    with pytest.raises(FileNotFoundError, match=r"set \$PSYNTH_DATA to the folder holding"):
      read(tmp_path)
  with pytest.raises(ValueError, match=r"corpus 'wiki' unknown; choose from \['hotpotqa'"):
    sources.read_corpus("wiki", DATA)


def test_missing_field_is_named_with_file_and_index(tmp_path):
  (tmp_path / "gsm8k").mkdir()
  rows = [{"question": "1+1?", "answer": "2\n#### 2"}, {"question": "2+2?"}]
  (tmp_path / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(ValueError,
                     match=r"train\.jsonl: record 1 is missing required field 'answer'"):
    sources.read_gsm8k(root=tmp_path)
  bad = tmp_path / "ex.jsonl"
  bad.write_text(json.dumps({"id": "a", "kind": "context", "source": "s", "question": "q",
                             "branch_inputs": ["x"]}) + "\n")
  with pytest.raises(ValueError, match=r"ex\.jsonl:1 is missing field\(s\) \['target'\]"):
    load_examples(bad)
  with pytest.raises(ValueError, match="unknown builder"):
    build.BuildConfig(builders=("nope",))


# --- builders ----------------------------------------------------------------------------------

BUILT = dict(num_branches=3, seed=0, limit_per_source=30, val_fraction=0.2,
             builders=build.DEFAULT_BUILDERS + ("dbot_context",))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("built")
  counts = build.build_dataset(DATA, out, **BUILT)
  return out, counts, load_examples(out / "train.jsonl") + load_examples(out / "val.jsonl")


def test_build_is_deterministic_and_split_by_question(built, tmp_path):
  out, counts, examples = built
  again = tmp_path / "again"
  assert build.build_dataset(DATA, again, **BUILT) == counts
  for f in ("train.jsonl", "val.jsonl"):
    assert (out / f).read_bytes() == (again / f).read_bytes()
  cheap = dict(num_branches=3, limit_per_source=30, val_fraction=0.2,
               builders=("procedural_arith", "dbot_context"))
  build.build_dataset(DATA, tmp_path / "s0", seed=0, **cheap)
  build.build_dataset(DATA, tmp_path / "s1", seed=1, **cheap)
  assert (tmp_path / "s0" / "train.jsonl").read_bytes() != (tmp_path / "s1" / "train.jsonl"
                                                            ).read_bytes()

  assert counts["train"]["hotpotqa_aggregation/aggregation"] + counts["val"][
      "hotpotqa_aggregation/aggregation"] == 30
  assert sum(counts["train"].get(k, 0) + counts["val"].get(k, 0)
             for k in ("dbot_context/context",)) == 30
  train, val = load_examples(out / "train.jsonl"), load_examples(out / "val.jsonl")
  assert {e.meta["group"] for e in train}.isdisjoint({e.meta["group"] for e in val})
  assert len({e.id for e in examples}) == len(examples)
  assert {e.source for e in val} == {e.source for e in train}  # every source held out a little
  for e in examples:
    if e.meta.get("fixed"):  # finished branches, N drawn per record; documents for copies
      docs = e.branch_inputs if e.meta.get("documented") else [""] * len(e.branch_outputs)
      assert e.branch_inputs == docs and 2 <= len(e.branch_outputs) <= 8
      assert all(o in d for o, d in zip(e.branch_outputs, docs) if d), e.id
      assert not any(map(is_empty_branch, e.branch_outputs)), e.id
    else:
      assert len(e.branch_inputs) == 3 and all(e.branch_inputs)
      assert all(len(b.split()) <= 125 for b in e.branch_inputs), e.id
    assert (e.target == "") == (e.kind == "distill")
  assert {e.meta["builder"] for e in examples if e.meta.get("fixed")} == {
      b for b in build.DEFAULT_BUILDERS if b.startswith("fixed_")}
  assert not any(e.meta.get("fixed") for e in examples if e.kind == "distill")
  distill = [e for e in examples if e.kind == "distill"]
  by_id = {e.id: e for e in examples}
  assert distill and all(by_id[d.meta["distill_of"]].branch_inputs == d.branch_inputs and
                         by_id[d.meta["distill_of"]].meta["group"] == d.meta["group"]
                         for d in distill)


def test_aggregation_puts_supporting_facts_in_different_branches(built):
  _, _, examples = built
  hp = {q.id: q for q in sources.read_hotpotqa()}
  agg = [e for e in examples if e.meta["builder"] == "hotpotqa_aggregation" and e.kind != "distill"]
  assert len(agg) == 30
  for e in agg:
    where = e.meta["supporting_branches"]
    assert len(set(where.values())) == len(where) == 2
    for p in hp[e.meta["group"].split("/")[1]].paragraphs:
      if p.is_supporting:
        for i in p.supporting_sentences:
          if i < len(p.sentences) and len(p.sentences[i].split()) < 50:
            assert " ".join(p.sentences[i].split()) in e.branch_inputs[where[p.title]]
  for e in (x for x in examples if x.meta["builder"] == "gsm8k_candidates" and x.kind != "distill"):
    finals = [b.rsplit("Final answer: ", 1)[1] for b in e.branch_inputs]
    assert finals[e.meta["gold_branch"]] == e.target and len(set(finals)) == 3


def test_procedural_targets_are_exact():
  rng = lambda i: seeds.rng(0, "t", i)
  for i in range(50):
    e = procedural.arith(i, 3, rng(i))
    counts = [int(re.search(r"has (\d+) ", b).group(1)) for b in e.branch_inputs]
    names = [re.search(r"of (\w+) has", b).group(1) for b in e.branch_inputs]
    a, b = e.meta["used_branches"][:2]
    want = {"sum": str(counts[a] + counts[b]), "difference": str(counts[a] - counts[b]),
            "largest": names[counts.index(max(counts))]}[e.meta["op"]]
    assert e.target == want
    c = procedural.chain(i, 3, rng(i))
    assert len(set(c.meta["fact_branches"])) == len(c.meta["fact_branches"]) >= 2
    assert c.target in c.branch_inputs[c.meta["fact_branches"][-1]]
    assert procedural.infer(i, 3, rng(i)).to_json() == procedural.infer(i, 3, rng(i)).to_json()


# --- fixed branches ----------------------------------------------------------------------------

FIXED_BUILDERS = tuple(b for b in build.DEFAULT_BUILDERS if b.startswith("fixed_"))


@pytest.fixture(scope="module")
def fixed_examples():
  return build.build_examples(build.BuildConfig(builders=FIXED_BUILDERS, limit_per_source=200,
                                                documented_fraction=0.0), DATA)


def test_fixed_examples_hold_their_evidence_in_the_answer_branches(fixed_examples):
  strategyqa = {q.id: q for q in sources.read_strategyqa(DATA)}
  multihop = {q.id: q for q in sources.read_hotpotqa(root=DATA) + sources.read_musique(DATA)}
  sizes: dict[str, set] = {}
  first_sentence = []  # facts: is the fact where its branch starts?
  for e in fixed_examples:
    outs, homes, b = e.branch_outputs, e.meta["answer_branches"], e.meta["builder"]
    assert e.meta["fixed"] and e.branch_inputs == [""] * len(outs) and 2 <= len(outs) <= 8
    assert homes and set(homes) <= set(range(len(outs))) and not any(map(is_empty_branch, outs))
    assert e.kind == ("context" if len(homes) == 1 else "aggregation"), e.id
    assert e.meta["answers"] and all(a.lower() in e.target.lower() for a in e.meta["answers"])
    assert len(homes) < len(outs) or (b == "fixed_arith" and e.question.startswith("Which"))
    assert all(len(o.split()) <= 120 for o in outs), e.id
    sizes.setdefault(b, set()).update(len(o.split()) for o in outs)
    if b in ("fixed_facts", "fixed_facts_multi"):
      family, partition, index = e.meta["group"].split("/")[1:]
      p, asked = fixed.facts_record(family, partition, int(index))
      assert partition == "train" and e.meta["attributes"] == asked
      assert (e.question, e.target) == (
          with_format(facts.question(p, asked), ONE_SENTENCE), facts.answer(p, asked))
      where = [[h for h, o in enumerate(outs) if facts.fact(p, a) in o] for a in asked]
      assert all(len(w) == 1 for w in where) and sorted(w[0] for w in where) == homes, e.id
      first_sentence.append(outs[where[0][0]].startswith(facts.fact(p, asked[0])))
      assert e.meta["answers"] == [p.values[a] for a in asked]
      assert e.target.endswith(".") and all(v in e.target for v in e.meta["answers"])
    elif b == "fixed_multihop":
      q = multihop[e.meta["group"].split("/", 1)[1]]
      assert sorted(outs[h] for h in homes) == sorted(
          fit_paragraph(p, 120) for p in q.paragraphs if p.is_supporting) and e.target == q.answer
    elif b == "fixed_strategyqa":
      q = strategyqa[e.meta["group"].split("/", 1)[1]]
      assert fixed.strategyqa_partition(q) == "train" and e.question == with_format(q.question, YES_NO)
      assert e.target == ("Yes." if q.answer else "No.")
      assert all(any(s in outs[h] for h in homes) for s in q.explanation)
    elif b == "fixed_chain":  # the answer is named in the last hop's branch only
      named = [h for h, o in enumerate(outs) if re.search(rf"\b{re.escape(e.target)}\b", o)]
      assert len(named) == 1 and named[0] in homes
    else:
      assert all(re.fullmatch(r"The \w+ of \w+ has \d+ \w+\.", outs[h]) for h in homes)
  assert set(sizes) == set(FIXED_BUILDERS)
  assert min(sizes["fixed_facts"]) <= 15 and max(sizes["fixed_facts"]) >= 100  # short to long
  n_facts = {len(e.branch_outputs) for e in fixed_examples if e.meta["builder"] == "fixed_facts"}
  assert n_facts == set(range(2, 9))
  assert 0.1 < sum(first_sentence) / len(first_sentence) < 0.9  # a random place in its branch


def test_documented_copies_keep_the_evidence_as_notes_on_longer_documents(fixed_examples):
  docs = fixed.real_documents(DATA)
  copies = documented.documented_copies(fixed_examples, 1.0, 0, docs)
  assert len(copies) == len(fixed_examples)
  context = []  # words of real text around each branch's evidence
  for ex, c in zip(fixed_examples, copies):
    assert c.id == f"{ex.id}/documented" and c.meta == dict(ex.meta, documented=True)
    assert (c.kind, c.question, c.target, c.branch_outputs) == (
        ex.kind, ex.question, ex.target, ex.branch_outputs)
    for doc, note in zip(c.branch_inputs, c.branch_outputs):
      assert note in doc
      context.append(len(doc.split()) - len(note.split()))
  assert 0 <= min(context) and max(context) <= 2 * documented.CONTEXT_WORDS[1]
  assert 0.65 < sum(n > 0 for n in context) / len(context) < 0.85  # 3 in 4 have some
  half = documented.documented_copies(fixed_examples, 0.5, 0, docs)
  assert 0.4 < len(half) / len(copies) < 0.6
  assert all(h.to_json() == copies[[c.id for c in copies].index(h.id)].to_json() for h in half)
  with pytest.raises(ValueError, match="'x' is not a fixed-branch example"):
    documented.documented_copy(Example("x", "context", "s", "q", ["a"], "t", ["a"]), docs,
                               seeds.rng(0))
  with pytest.raises(ValueError, match=r"documented_fraction=1.5; must be in \[0, 1\]"):
    build.BuildConfig(documented_fraction=1.5)
  # The default build adds them, in the same groups as their originals (so the split keeps a
  # copy with its original, and the leakage test below sees their questions).
  built = build.build_examples(build.BuildConfig(builders=("fixed_facts",), limit_per_source=40),
                               DATA)
  copied = [e for e in built if e.meta.get("documented")]
  assert 10 < len(copied) < 30 and len(built) == 40 + len(copied)
  originals = {e.id: e for e in built}
  assert all(originals[e.id.removesuffix("/documented")].meta["group"] == e.meta["group"]
             for e in copied)


def test_procedural_fixed_families_scale_and_never_ask_an_eval_question():
  assert len(build.BUILDERS["fixed_facts"](DATA)) == fixed.PROCEDURAL_COUNT == 10_000
  assert len(build.BUILDERS["fixed_chain"](DATA)) == 10_000
  assert len(build.BUILDERS["fixed_multihop"](DATA)) == 200 * fixed.VARIANTS
  for family in ("facts", "facts_multi"):
    held = fixed.eval_questions(family)
    assert len(held) == fixed.EVAL_ITEMS  # every eval question is a different one
    # The eval records run through the training builder: every one is dropped.
    as_training = fixed.facts_items(family, partition="eval", count=40)(DATA)
    assert [make(3, 120, seeds.rng(0, rec)) for rec, make in as_training] == [None] * 40
    # Contents depend on partition and index only, never on the seed.
    a = fixed.facts_example(family, "eval", 7, 3, 120, fixed.real_documents(DATA), seeds.rng(0))
    b = fixed.facts_example(family, "eval", 7, 3, 120, fixed.real_documents(DATA), seeds.rng(1))
    assert a.question == b.question and a.branch_outputs != b.branch_outputs
    assert a.question == with_format(facts.question(*fixed.facts_record(family, "eval", 7)),
                                     ONE_SENTENCE)
    assert facts.question(*fixed.facts_record(family, "eval", 7)) in held


def test_strategyqa_partition_is_fixed_by_the_question():
  every = sources.read_strategyqa(DATA)
  held, train = (fixed.strategyqa_questions(p, DATA) for p in ("eval", "train"))
  assert len(every) == 2290 and (len(held), len(train)) == (800, 1490)
  assert {q.question for q in held}.isdisjoint({q.question for q in train})  # one listed twice
  assert every[0].answer and every[0].explanation[0].startswith("College commencement")
  with pytest.raises(ValueError, match="partition 'test'; choose 'train' or 'eval'"):
    fixed.strategyqa_questions("test", DATA)


def _first_line(text: str) -> str:
  return " ".join(text.strip().splitlines()[0].lower().split())


def test_no_training_example_is_an_evaluation_item():
  """Every default builder against every evaluation task that builds offline: no shared source
  record (group "task/id", or the record id) and no shared question (normalised, compared whole
  and by first line: eval questions add options and an answer format). A task that declares
  `overlaps_training` (HotpotQA / MuSiQue) must really overlap."""
  from psynth.eval.tasks import TASKS, BuildOptions, TaskUnavailable
  train = build.build_examples(build.BuildConfig(limit_per_source=300), DATA)
  assert {e.meta["builder"] for e in train} == set(build.DEFAULT_BUILDERS)
  groups = {e.meta["group"] for e in train}
  records = {g.split("/", 1)[1] for g in groups}
  questions = {_first_line(e.question) for e in train} | {" ".join(e.question.lower().split())
                                                          for e in train}
  checked = []
  for name, task in TASKS.items():
    try:
      items = task.build(BuildOptions(DATA, 3, 120))
    except TaskUnavailable:
      continue
    shared = [it.id for it in items if f"{name}/{it.id}" in groups or it.id in records
              or _first_line(it.question) in questions
              or " ".join(it.question.lower().split()) in questions]
    assert bool(shared) == task.overlaps_training, (name, shared[:5])
    checked.append(name)
  assert {"facts", "facts_multi", "strategyqa", "arc_easy_evidence", "arc_easy", "gsm8k", "dbot",
          "hotpotqa", "musique"} <= set(checked)


# --- empty branches ----------------------------------------------------------------------------

def test_an_empty_branch_is_whitespace_only_and_is_dropped_on_load(tmp_path, caplog):
  assert is_empty_branch("") and is_empty_branch(" \n\t") and not is_empty_branch(" 0 ")
  ex = Example("gsm8k/train-6740/aggregation", "aggregation", "gsm8k", "q", ["a", "b"], "t",
               meta={"group": "gsm8k/train-6740"})
  # The failure seen in training: the worker's tokens were a newline, so its ids were not empty.
  filled = _filled(ex, ([[198], [11, 12]], ["", "x"], "ans"), {"model": "m"})
  assert filled.meta["empty_branches"] == [0]
  ok = dataclasses.replace(ex, id="ok", branch_outputs=["a", "b"])
  unflagged = dataclasses.replace(ex, id="old", branch_outputs=[" \n", "b"])  # written before
  build.write_jsonl(tmp_path / "x.jsonl", [ok, filled, unflagged, ok])
  with caplog.at_level(logging.INFO, logger="psynth.data.branches"):
    assert [e.id for e in load_examples(tmp_path / "x.jsonl")] == ["ok", "ok"]
  assert "dropped 2 examples with an empty branch" in caplog.text
  assert len(load_examples(tmp_path / "x.jsonl", include_dropped=True)) == 4


def test_generation_passes_fixed_examples_through_without_a_model(tmp_path):
  examples = build.build_examples(build.BuildConfig(
      builders=("fixed_facts", "fixed_strategyqa"), limit_per_source=3), DATA)
  no_model = types.SimpleNamespace(path=Path("no-model"))  # any generate call would fail
  out = tmp_path / "b.jsonl"
  kw = dict(batch_examples=2, progress=False)
  assert generate_branches(no_model, examples, out, **kw) == examples
  assert load_examples(out) == examples
  assert generate_branches(no_model, examples, out, **kw) == examples  # finished: resumes as is


def test_dbot_inputs_never_carry_description_or_command(built):
  _, _, examples = built
  raw = json.loads((DATA / "dbot" / "all_anomalies.json").read_text())
  leaks = {v[k] for v in raw.values() for k in ("description", "command") if v.get(k)}
  leaks |= {json.loads(l)["scenario_description"] for l in
            (DATA / "dbot" / "derived_62_cases_alerts_topmetrics_labels.jsonl").open()}
  snippets = {" ".join(s.split()[:6]) for s in leaks if len(s.split()) >= 6}
  assert len(snippets) > 50
  db = [e for e in examples if e.source == "dbot"]
  assert db and all(e.branch_inputs[0].startswith("Alerts raised between") for e in db)
  for e in db:
    text = " ".join([e.question] + e.branch_inputs)
    assert "anomaly_trigger" not in text and not any(s in text for s in snippets)


def test_main_builds_from_config(tmp_path):
  cfg = ml_collections.ConfigDict(dict(data=config_files.load("smollm2_135m").data))
  cfg.data.update(out_dir=str(tmp_path), data_dir=str(DATA), generate=False,
                  builders=("procedural_arith", "dbot_context"), limit_per_source=10)
  counts = main(cfg)
  assert counts["train"]["procedural_arith/aggregation"] == 9
  assert len(load_examples(tmp_path / "val.jsonl")) == 1 + 1 + counts["val"].get(
      "dbot_context/distill", 0)


# --- branch generation (tiny random model, character tokenizer) --------------------------------

def _char_tokenizer(path: Path) -> None:
  """A ChatML character tokenizer with ids < 128 (the tiny model's vocabulary)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
  tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)},
                                  unk_token="<|endoftext|>"))
  tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
  tk.decoder = decoders.Fuse()
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                unk_token="<|endoftext|>",
                                additional_special_tokens=["<|im_start|>"])
  tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                       "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                       "assistant\n{% endif %}")
  tok.save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_checkpoint, tmp_path_factory):
  import psynth
  src, _ = tiny_checkpoint("llama_gqa")
  path = tmp_path_factory.mktemp("tiny_with_tokenizer") / "tiny"
  shutil.copytree(src, path)
  _char_tokenizer(path)
  return psynth.load(path)


def _tiny_examples() -> list[Example]:
  cfg = build.BuildConfig(builders=("procedural_arith",), limit_per_source=4, max_branch_words=12)
  exs = build.build_examples(cfg)
  copy = dataclasses.replace(exs[0], id=exs[0].id + "/distill", kind="distill", target="",
                             meta=dict(exs[0].meta, distill_of=exs[0].id))
  finished = fixed.fixed_example("procedural", "procedural/test/0", "context", "Which town?",
                                 ["Tornak is a town.", "Rain fell."], "Tornak.", [0], ["Tornak"],
                                 "Answer in one short sentence.")
  return exs[:1] + [finished] + exs[1:] + [copy]  # the fixed one shares a batch


def test_generation_resumes_to_the_same_file(tiny_loaded, tmp_path):
  examples = _tiny_examples()
  kw = dict(worker_max_new_tokens=6, max_new_tokens=5, batch_examples=2, progress=False)
  whole = tmp_path / "whole.jsonl"
  done = generate_branches(tiny_loaded, examples, whole, **kw)
  assert [e.id for e in done] == [e.id for e in examples] and whole.exists()

  cut = tmp_path / "cut.jsonl"
  part = generate_branches(tiny_loaded, examples, cut, limit=3, **kw)  # stops inside a batch
  assert len(part) == 3 and not cut.exists()
  partial = cut.with_name("cut.jsonl.partial")
  with open(partial, "a") as f:
    f.write('{"id": "torn li')  # killed in the middle of a write
  generate_branches(tiny_loaded, examples, cut, **kw)
  assert cut.read_bytes() == whole.read_bytes() and not partial.exists()

  got = load_examples(whole, include_dropped=True)
  assert got[1] == examples[1]  # fixed: passed through untouched
  tok = tiny_loaded.tokenizer
  for e in got[:1] + got[2:]:
    assert len(e.branch_outputs) == len(e.branch_inputs) and e.text_answer is not None
    assert e.meta["generation"] == dict(model="tiny", worker_max_new_tokens=6, max_new_tokens=5)
    assert [tok.decode(t, skip_special_tokens=True).strip() for t in
            e.meta["branch_token_ids"]] == e.branch_outputs
    assert all(len(t) <= 6 for t in e.meta["branch_token_ids"])
  distill = got[-1]
  assert distill.kind == "distill" and distill.target == distill.text_answer
  assert distill.branch_outputs == got[0].branch_outputs  # same inputs: generated once, reused
  assert got[0].target == examples[0].target  # gold targets stay

  again = generate_branches(tiny_loaded, examples, whole, **kw)  # finished: nothing to do
  assert [e.to_json() for e in again] == [e.to_json() for e in got]
  with pytest.raises(ValueError, match="made from other inputs"):
    generate_branches(tiny_loaded, examples[1:], whole, **kw)
  with pytest.raises(ValueError, match="generated with"):
    generate_branches(tiny_loaded, examples, whole, **dict(kw, worker_max_new_tokens=7))
