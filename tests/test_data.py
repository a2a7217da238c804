"""Training data: readers on the real benchmark files, builders, split, branch generation."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import string
from pathlib import Path

import ml_collections
import pytest

from psynth.data import build, procedural, sources
from psynth.data.branches import generate_branches, load_examples
from psynth.data.example import Example
from psynth.data.main import default_config, main

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

@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("built")
  counts = build.build_dataset(DATA, out, n_branches=3, seed=0, limit_per_source=30,
                               val_fraction=0.2)
  return out, counts, load_examples(out / "train.jsonl") + load_examples(out / "val.jsonl")


def test_build_is_deterministic_and_split_by_question(built, tmp_path):
  out, counts, examples = built
  again = tmp_path / "again"
  assert build.build_dataset(DATA, again, n_branches=3, seed=0, limit_per_source=30,
                             val_fraction=0.2) == counts
  for f in ("train.jsonl", "val.jsonl"):
    assert (out / f).read_bytes() == (again / f).read_bytes()
  cheap = dict(n_branches=3, limit_per_source=30, val_fraction=0.2,
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
    assert len(e.branch_inputs) == 3 and all(e.branch_inputs)
    assert all(len(b.split()) <= 125 for b in e.branch_inputs), e.id
    assert (e.target == "") == (e.kind == "distill")
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
  rng = lambda i: build._rng(0, "t", i)
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
  cfg = ml_collections.ConfigDict(dict(data=default_config()))
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
  cfg = build.BuildConfig(builders=("procedural_arith",), limit_per_source=4, max_words=12)
  exs = build.build_examples(cfg)
  copy = dataclasses.replace(exs[0], id=exs[0].id + "/distill", kind="distill", target="",
                             meta=dict(exs[0].meta, distill_of=exs[0].id))
  return exs + [copy]


def test_generation_resumes_to_the_same_file(tiny_loaded, tmp_path):
  examples = _tiny_examples()
  kw = dict(worker_tokens=6, answer_tokens=5, batch_examples=2, progress=False)
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
  tok = tiny_loaded.tokenizer
  for e in got:
    assert len(e.branch_outputs) == len(e.branch_inputs) and e.text_answer is not None
    assert e.meta["generation"] == dict(model="tiny", worker_tokens=6, answer_tokens=5)
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
    generate_branches(tiny_loaded, examples, whole, **dict(kw, worker_tokens=7))
