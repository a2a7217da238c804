"""Readers for the official benchmark files: plain typed records, shared by training and evaluation.

Every reader of a record list loads through `datasets.load_dataset("json", ...)` (offline: the
json builder never contacts a hub) from a data directory (`data_dir`), checks the fields it needs
and returns small frozen dataclasses; files that are not record lists (a BIG-bench task, the
HotpotQA corpus object, plain-text essays) are read directly. A record that lacks a required
field (absent or null) raises ValueError naming the file, the record index and the field.

    from psynth.data import sources
    qs = sources.read_hotpotqa()          # 100 MultiHopQuestion, paragraphs included
    cases = sources.read_dbot()           # 62 DBotCase: alerts + metric series + labels only
    sqa = sources.read_strategyqa()       # 2290 YesNoQuestion with their explanations
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

ENV_VAR = "PSYNTH_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def data_dir(path: str | Path | None = None) -> Path:
  """The benchmark data directory: `path`, else $PSYNTH_DATA, else ../shared/data from the repo."""
  tried = []
  for where, cand in ((f"argument {path!r}", path), (f"${ENV_VAR}", os.environ.get(ENV_VAR)),
                      ("<repo>/../shared/data", _REPO_ROOT.parent / "shared" / "data")):
    if cand is None or cand == "":
      continue
    p = Path(cand).expanduser()
    if p.is_dir():
      return p
    tried.append(f"{where} -> {p}")
    if where.startswith("argument"):
      break  # an explicit path that does not exist is an error, never silently replaced
  raise FileNotFoundError("benchmark data directory not found; looked for: " + "; ".join(
      tried or ["nothing"]) + f". Pass a directory, or set ${ENV_VAR} to the folder holding "
      "hotpotqa/, musique/, arc/, gsm8k/, dbot/")


# --- records -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Paragraph:
  title: str
  sentences: tuple[str, ...]  # HotpotQA's own sentence split; MuSiQue text split at . ! ?
  is_supporting: bool
  supporting_sentences: tuple[int, ...] = ()  # HotpotQA sentence ids; MuSiQue: () (whole)

  @property
  def text(self) -> str:
    return " ".join(s.strip() for s in self.sentences if s.strip())


@dataclasses.dataclass(frozen=True)
class MultiHopQuestion:
  """HotpotQA / MuSiQue. `paragraphs` is () for files without them (HotpotQA dev simplified)."""
  id: str
  question: str
  answer: str
  paragraphs: tuple[Paragraph, ...]
  aliases: tuple[str, ...] = ()
  kind: str = ""  # HotpotQA type (bridge/comparison); MuSiQue hop count ("2hop", ...)


@dataclasses.dataclass(frozen=True)
class Choice:
  label: str
  text: str
  passage: str | None = None  # the retrieved paragraph of with_ir_paragraphs files


@dataclasses.dataclass(frozen=True)
class ChoiceQuestion:
  """ARC: a stem, lettered (or numbered) choices and the gold label."""
  id: str
  question: str
  choices: tuple[Choice, ...]
  answer_key: str

  @property
  def answer(self) -> Choice:
    return next(c for c in self.choices if c.label == self.answer_key)


@dataclasses.dataclass(frozen=True)
class MathProblem:
  """GSM8K: `solution` with the <<calculator>> annotations removed; `answer` after '####'."""
  id: str
  question: str
  solution: str
  answer: str


@dataclasses.dataclass(frozen=True)
class Alert:
  name: str
  status: str
  level: str


@dataclasses.dataclass(frozen=True)
class MetricSeries:
  title: str  # e.g. "node_procs_running (for cpu expert)"
  values: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class DBotCase:
  """One D-Bot anomaly: what a diagnoser may see (alerts, metrics, times) and the labels.

  Never carries `scenario_description` / `description` / `command` / `script`: they name the
  injected anomaly and so give the label away.
  """
  id: str
  start: str
  end: str
  alerts: tuple[Alert, ...]
  metrics: tuple[MetricSeries, ...]
  labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class YesNoQuestion:
  """StrategyQA: a yes/no question and the explanation sentences that decide it."""
  id: str  # "strategyqa-{index in the file}": BIG-bench examples carry no ids
  question: str
  answer: bool
  explanation: tuple[str, ...]  # the target's sentences after its leading "Yes." / "No."


# --- loading -----------------------------------------------------------------------------------

def load_records(path: Path) -> list[dict[str, Any]]:
  """All records of a JSON-lines file or a JSON array file, via the `datasets` json builder."""
  import datasets

  if not path.is_file():
    siblings = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
    raise FileNotFoundError(f"{path} does not exist; {path.parent} holds {siblings or 'nothing'}")
  datasets.disable_progress_bars()
  ds = datasets.load_dataset("json", data_files=str(path), split="train")
  return ds.to_list()


def _need(rec: dict, fields: Sequence[str], path: Path, i: int) -> None:
  for f in fields:
    if rec.get(f) is None:
      raise ValueError(f"{path}: record {i} is missing required field {f!r} "
                       f"(has {sorted(k for k, v in rec.items() if v is not None)})")


def _file(root: str | Path | None, rel: str) -> Path:
  return data_dir(root) / rel


def split_sentences(text: str) -> tuple[str, ...]:
  return tuple(s for s in (x.strip() for x in _SENTENCE_END.split(text.strip())) if s)


# --- readers -----------------------------------------------------------------------------------

HOTPOTQA_FILES = {"train_sample": "hotpotqa/hotpot_train_sample100_hipporag.json",
                  "dev": "hotpotqa/hotpot_dev_v1_simplified.json"}


def read_hotpotqa(split: str = "train_sample", root: str | Path | None = None
                  ) -> list[MultiHopQuestion]:
  """HotpotQA, original schema. "train_sample": 100 with paragraphs; "dev": 7405 without."""
  if split not in HOTPOTQA_FILES:
    raise ValueError(f"hotpotqa split {split!r} unknown; choose from {sorted(HOTPOTQA_FILES)}")
  path = _file(root, HOTPOTQA_FILES[split])
  with_paragraphs = split == "train_sample"
  out = []
  for i, r in enumerate(load_records(path)):
    _need(r, ("_id", "question", "answer", "context", "supporting_facts") if with_paragraphs
          else ("question", "answer"), path, i)
    paragraphs = ()
    if with_paragraphs:
      support: dict[str, list[int]] = {}
      for title, sid in r["supporting_facts"]:
        support.setdefault(title, []).append(int(sid))
      paragraphs = tuple(Paragraph(t, tuple(s), t in support, tuple(sorted(support.get(t, ()))))
                         for t, s in r["context"])
    out.append(MultiHopQuestion(str(r.get("_id") or f"{split}-{i}"), r["question"],
                                str(r["answer"]), paragraphs, (), r.get("type") or ""))
  return out


def read_musique(root: str | Path | None = None) -> list[MultiHopQuestion]:
  """MuSiQue-Ans train sample: 100 questions, 20 paragraphs each, `is_supporting` marked."""
  path = _file(root, "musique/musique_train_sample100_hipporag.json")
  out = []
  for i, r in enumerate(load_records(path)):
    _need(r, ("id", "question", "answer", "paragraphs"), path, i)
    paragraphs = []
    for j, p in enumerate(r["paragraphs"]):
      for f in ("title", "paragraph_text", "is_supporting"):
        if p.get(f) is None:
          raise ValueError(f"{path}: record {i} paragraph {j} is missing required field {f!r}")
      paragraphs.append(Paragraph(p["title"], split_sentences(p["paragraph_text"]),
                                  bool(p["is_supporting"])))
    out.append(MultiHopQuestion(r["id"], r["question"], str(r["answer"]), tuple(paragraphs),
                                tuple(r.get("answer_aliases") or ()), r["id"].split("__")[0]))
  return out


ARC_SPLITS = ("train", "dev", "test")
ARC_DIFFICULTIES = ("easy", "challenge")


def read_arc(difficulty: str = "easy", split: str = "train", *, passages: bool = False,
             root: str | Path | None = None) -> list[ChoiceQuestion]:
  """ARC-Easy / ARC-Challenge. `passages`: the with_ir_paragraphs file (dev and test only)."""
  if difficulty not in ARC_DIFFICULTIES or split not in ARC_SPLITS:
    raise ValueError(f"arc difficulty={difficulty!r} split={split!r}; choose difficulty from "
                     f"{ARC_DIFFICULTIES} and split from {ARC_SPLITS}")
  if passages:
    path = _file(root, f"arc/with_ir_paragraphs/arc_{difficulty}_{split}_with_para.jsonl")
  else:
    path = _file(root, f"arc/ARC-{difficulty.capitalize()}-{split.capitalize()}.jsonl")
  out = []
  for i, r in enumerate(load_records(path)):
    _need(r, ("id", "question", "answerKey"), path, i)
    q = r["question"]
    if not q.get("stem") or not q.get("choices"):
      raise ValueError(f"{path}: record {i} is missing required field 'question.stem' or "
                       "'question.choices'")
    choices = tuple(Choice(c["label"], c["text"], c.get("para")) for c in q["choices"])
    if r["answerKey"] not in {c.label for c in choices}:
      raise ValueError(f"{path}: record {i} answerKey={r['answerKey']!r} is not one of the "
                       f"choice labels {[c.label for c in choices]}")
    out.append(ChoiceQuestion(r["id"], q["stem"], choices, r["answerKey"]))
  return out


def read_gsm8k(split: str = "train", root: str | Path | None = None) -> list[MathProblem]:
  """GSM8K (official): 7473 train / 1319 test; ids are "{split}-{index}"."""
  if split not in ("train", "test"):
    raise ValueError(f"gsm8k split {split!r} unknown; choose from ['test', 'train']")
  path = _file(root, f"gsm8k/{split}.jsonl")
  out = []
  for i, r in enumerate(load_records(path)):
    _need(r, ("question", "answer"), path, i)
    if "####" not in r["answer"]:
      raise ValueError(f"{path}: record {i} field 'answer' has no '#### <final answer>' line")
    solution, final = r["answer"].rsplit("####", 1)
    solution = re.sub(r"<<[^>]*>>", "", solution).strip()
    out.append(MathProblem(f"{split}-{i}", r["question"], solution,
                           final.strip().replace(",", "")))
  return out


def read_dbot(root: str | Path | None = None) -> list[DBotCase]:
  """D-Bot cases with alerts and metric series (the derived_*.jsonl files), labels included."""
  folder = data_dir(root) / "dbot"
  files = sorted(folder.glob("derived_*.jsonl"))
  if not files:
    raise FileNotFoundError(f"no derived_*.jsonl (alerts + metrics) in {folder}")
  out = []
  for path in files:
    for i, r in enumerate(load_records(path)):
      _need(r, ("case_key", "alerts", "top_metrics", "labels"), path, i)
      alerts = tuple(Alert(a.get("alert_name") or "?", a.get("alert_status") or "?",
                           a.get("alert_level") or "?") for a in r["alerts"])
      metrics = tuple(MetricSeries(m["title"], tuple(float(v) for v in m["values"]))
                      for m in r["top_metrics"])
      if not r["labels"]:
        raise ValueError(f"{path}: record {i} has an empty 'labels' list; needs >= 1 root cause")
      out.append(DBotCase(str(r["case_key"]), str(r.get("start_timestamp") or r.get("start_time")),
                          str(r.get("end_timestamp") or r.get("end_time")), alerts, metrics,
                          tuple(r["labels"])))
  return out


def read_strategyqa(root: str | Path | None = None) -> list[YesNoQuestion]:
  """StrategyQA in BIG-bench form: `input`, `target_scores` ({"Yes": 1, "No": 0}) and `target`
  ("Yes. <explanation>"). Plain json: a BIG-bench task file is one object holding `examples`."""
  path = _file(root, "strategyqa/task.json")
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; set ${ENV_VAR} to the folder holding "
                            "strategyqa/task.json (BIG-bench's strategyqa task)")
  records = json.loads(path.read_text(encoding="utf-8")).get("examples")
  if not isinstance(records, list):
    raise ValueError(f"{path} has no 'examples' list; expected a BIG-bench task file")
  out = []
  for i, r in enumerate(records):
    _need(r, ("input", "target_scores", "target"), path, i)
    label = max(r["target_scores"], key=r["target_scores"].get)
    if label not in ("Yes", "No") or not r["target"].startswith(f"{label}."):
      raise ValueError(f"{path}: record {i} target_scores={r['target_scores']} and target "
                       f"{r['target'][:20]!r}...; expected Yes/No scores and a target starting "
                       "with the winning one")
    out.append(YesNoQuestion(f"strategyqa-{i}", r["input"], label == "Yes",
                             split_sentences(r["target"][len(label) + 1:])))
  return out


ESSAYS_DIR = "needle_haystack/PaulGrahamEssays"
CORPUS_FILES = {"hotpotqa": "hotpotqa/hotpot_train_sample100_hipporag_corpus.json",
                "musique": "musique/musique_train_sample100_hipporag_corpus.json"}
# The essay files lost their paragraph breaks: "accelerating.We wouldn't" is two sentences.
_GLUED = re.compile(r"(?<=[a-z][.!?])(?=[A-Z])")


def read_essays(root: str | Path | None = None) -> list[Paragraph]:
  """The needle-in-a-haystack essays (Paul Graham), one Paragraph per file, in file order."""
  folder = data_dir(root) / ESSAYS_DIR
  files = sorted(folder.glob("*.txt"))
  if not files:
    raise FileNotFoundError(f"no *.txt essays in {folder}; set ${ENV_VAR} to the folder holding "
                            f"{ESSAYS_DIR}/")
  return [Paragraph(f.stem, split_sentences(_GLUED.sub(" ", " ".join(
      f.read_text(encoding="utf-8", errors="replace").split()))), False) for f in files]


def read_corpus(source: str, root: str | Path | None = None) -> list[Paragraph]:
  """The paragraph corpus of a multi-hop train sample (every question's paragraphs, each once).

  HotpotQA's is one JSON object {title: [sentences]}, read with plain json; MuSiQue's a list of
  {title, text} records.
  """
  if source not in CORPUS_FILES:
    raise ValueError(f"corpus {source!r} unknown; choose from {sorted(CORPUS_FILES)}")
  path = _file(root, CORPUS_FILES[source])
  if source == "musique":
    recs = load_records(path)
    for i, r in enumerate(recs):
      _need(r, ("title", "text"), path, i)
    return [Paragraph(r["title"], split_sentences(r["text"]), False) for r in recs]
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; set ${ENV_VAR} to the folder holding "
                            f"{CORPUS_FILES[source]}")
  corpus = json.loads(path.read_text(encoding="utf-8"))
  if not isinstance(corpus, dict):
    raise ValueError(f"{path} holds a {type(corpus).__name__}; expected an object {{title: "
                     "[sentences]}}")
  return [Paragraph(t, tuple(s.strip() for s in sents if s.strip()), False)
          for t, sents in corpus.items()]
