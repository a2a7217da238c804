"""Fixed-branch examples: each branch is real evidence used directly as a finished worker
output, so no worker decodes anything (branch generation passes them through untouched).

An example's `branch_outputs` are the evidence texts, its `branch_inputs` are "" (the worker read
nothing: what `psynth.fan_out(loaded, question, outputs=[...])` does), `meta["fixed"]` is True,
`meta["answer_branches"]` lists the branches holding needed evidence and `meta["answers"]` the
short answers a reply must name (all of them); `kind` is "context"
(one such branch) or "aggregation" (several). N is drawn per record, up to 8, and there is
always at least one branch that does not help (except arith's "largest", which reads every
count).

Families (each also a builder in `build.BUILDERS`, named `fixed_<family>`):
    facts        one made-up fact (`facts`) hidden among made-up distractor facts and real text
    facts_multi  2 or 3 facts about one institution in different branches, asked together
    multihop     HotpotQA / MuSiQue train samples: one paragraph per branch, `variants` each
    strategyqa   the explanation sentences of a yes/no question spread over branches
    chain, arith the procedural generators' branch texts (`procedural.py`)

Training and evaluation never share an item. A procedural record's content is a function of its
family, partition ("train" / "eval") and index only, whatever the seed, so the training builder
knows every eval question and drops a training record that happens to ask one. StrategyQA is
split once by a hash of the question (`strategyqa_partition`). The multi-hop samples are
training data only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Sequence

from psynth.data import facts, procedural, seeds, sources
from psynth.data.chunks import contiguous_split, fit_paragraph
from psynth.data.example import Example
from psynth.data.sources import MultiHopQuestion, YesNoQuestion
from psynth.synthesis.prompts import ONE_SENTENCE, SHORT_PHRASE, YES_NO, with_format

MAX_BRANCHES = 8
PROCEDURAL_COUNT = 10_000  # records per procedural family and builder
EVAL_ITEMS = 500  # eval-partition records of each facts family (the `facts` eval tasks)
VARIANTS = 8  # multi-hop examples per question
STRATEGYQA_EVAL_FRACTION = 0.35
MIN_FILL_WORDS = 8  # shortest filler asked for: some sentence of the pool always fits

Fill = Callable[[int, random.Random], list[str]]  # (word budget, rng) -> filler sentences


def fixed_example(source: str, group: str, kind: str, question: str, outputs: Sequence[str],
                  target: str, answer_branches: Sequence[int], answers: Sequence[str],
                  answer_format: str, tag: str = "fixed", **meta) -> Example:
  """An example whose branches are finished: id "{group}/{tag}/{kind}". The question carries
  its answer form (`prompts.with_format`), as the evaluation's questions do, and
  `meta["answer_format"]` ends the synthesizer's prompt."""
  return Example(f"{group}/{tag}/{kind}", kind, source, with_format(question, answer_format),
                 [""] * len(outputs), target, branch_outputs=list(outputs),
                 meta=dict(group=group, fixed=True, answer_branches=sorted(answer_branches),
                           answers=list(answers), answer_format=answer_format, **meta))


# --- filler and layout -------------------------------------------------------------------------

def _words(sentences: Sequence[str]) -> int:
  return sum(len(s.split()) for s in sentences)


def _readable(sentence: str) -> bool:
  """Fit to stand alone as filler: 5-40 words, ends like a sentence, no footnote marks, markup
  or links (the essays keep some)."""
  return (5 <= len(sentence.split()) <= 40 and sentence[-1] in ".!?" and "http" not in sentence
          and not any(c in sentence for c in "[]{}<>|_"))


def real_documents(root: str | Path | None = None) -> tuple[tuple[str, ...], ...]:
  """Real text to hide evidence in: the readable sentences of the needle-in-a-haystack essays
  and of the HotpotQA / MuSiQue paragraph corpora, one tuple per document."""
  paragraphs = (sources.read_essays(root) + sources.read_corpus("hotpotqa", root)
                + sources.read_corpus("musique", root))
  docs = (tuple(s for s in p.sentences if _readable(s)) for p in paragraphs)
  return tuple(d for d in docs if d)


def real_text(docs: Sequence[Sequence[str]], words: int, rng: random.Random) -> list[str]:
  """Consecutive sentences of a random document (entered at a random sentence) within `words`;
  a first sentence longer than the budget is skipped. At least one sentence."""
  for _ in range(100):
    doc = docs[rng.randrange(len(docs))]
    out: list[str] = []
    for s in doc[rng.randrange(len(doc)):]:
      if _words(out) + len(s.split()) <= words:
        out.append(s)
      elif out:
        break
    if out:
      return out
  raise ValueError(f"no filler sentence of at most {words} words in 100 documents; "
                   f"budgets below {MIN_FILL_WORDS} words are not supported")


def _branch_words(rng: random.Random, max_words: int) -> int:
  """A branch's length in words: short (a fact or two), medium or long (up to `max_words`)."""
  lo, hi = rng.choice(((MIN_FILL_WORDS, 30), (30, 75), (75, max_words)))
  hi = max(min(hi, max_words), MIN_FILL_WORDS)
  return rng.randint(min(lo, hi), hi)


def layout(needles: Sequence[Sequence[str]], n: int, max_words: int, fill: Fill,
           rng: random.Random) -> tuple[list[str], list[int]]:
  """n branch texts and the branches holding needles. Needle group k goes to its own random
  branch (round-robin when there are more groups than branches), each sentence at a random
  place among filler sentences; the other branches hold filler only."""
  homes = rng.sample(range(n), min(len(needles), n))
  own: list[list[str]] = [[] for _ in range(n)]
  for k, group in enumerate(needles):
    own[homes[k % len(homes)]] += group
  texts = []
  for b in range(n):
    budget = _branch_words(rng, max_words) - _words(own[b])
    sents = fill(budget, rng) if budget >= MIN_FILL_WORDS else []
    for s in own[b]:
      sents.insert(rng.randrange(len(sents) + 1), s)
    texts.append(" ".join(sents))
  return texts, sorted(homes)


# --- made-up facts -----------------------------------------------------------------------------

def facts_record(family: str, partition: str, index: int) -> tuple[facts.Profile, list[str]]:
  """The institution and the asked attributes of a record: from its family, partition and index
  only (no seed), so every eval question is known to the training builder."""
  rng = seeds.rng(family, partition, index)
  p = facts.profile(rng)
  asked = rng.sample(sorted(facts.ATTRIBUTES), 1 if family == "facts" else rng.choice((2, 2, 3)))
  return p, asked


def _facts_fill(p: facts.Profile, asked: Sequence[str], docs) -> Fill:
  """Filler for a facts record: 0-2 made-up distractor facts (another attribute of the same
  institution, or any attribute of another one, often of the same kind) among real text."""
  unasked = [a for a in sorted(facts.ATTRIBUTES) if a not in asked]

  def distractor(rng: random.Random) -> str:
    if rng.random() < 0.3:
      return facts.fact(p, rng.choice(unasked))
    other = facts.profile(rng, p.kind if rng.random() < 0.5 else None)
    while other.name == p.name:
      other = facts.profile(rng)
    attribute = rng.choice(asked) if rng.random() < 0.5 else rng.choice(sorted(facts.ATTRIBUTES))
    return facts.fact(other, attribute)

  def fill(words: int, rng: random.Random) -> list[str]:
    made_up: list[str] = []
    for _ in range(rng.randint(0, 2)):
      s = distractor(rng)
      if _words(made_up) + len(s.split()) <= words:
        made_up.append(s)
    rest = words - _words(made_up)
    out = real_text(docs, rest, rng) if rest >= MIN_FILL_WORDS or not made_up else []
    for s in made_up:
      out.insert(rng.randrange(len(out) + 1), s)
    return out

  return fill


def facts_example(family: str, partition: str, index: int, n: int | None, max_words: int,
                  docs, rng: random.Random) -> Example:
  """Record `index` of a facts family with n branches (None: drawn, one more than the facts
  up to MAX_BRANCHES); `rng` places the facts and picks the filler."""
  p, asked = facts_record(family, partition, index)
  if n is None:
    n = rng.randint(len(asked) + 1, MAX_BRANCHES)
  texts, homes = layout([[facts.fact(p, a)] for a in asked], n, max_words,
                        _facts_fill(p, asked, docs), rng)
  group = f"procedural/{family}/{partition}/{index:05d}"
  return fixed_example("procedural", group, "context" if len(homes) == 1 else "aggregation",
                       facts.question(p, asked), texts, facts.answer(p, asked), homes,
                       [p.values[a] for a in asked], ONE_SENTENCE, family=family,
                       attributes=asked)


def eval_questions(family: str) -> frozenset[str]:
  """The questions of the eval tasks' records of a facts family."""
  return frozenset(facts.question(*facts_record(family, "eval", i)) for i in range(EVAL_ITEMS))


def facts_items(family: str, partition: str = "train", count: int = PROCEDURAL_COUNT):
  """Builder: `count` records of `partition`; a record asking an eval question is dropped (None)."""
  def items(root):
    docs = real_documents(root)
    held = eval_questions(family)

    def make(i: int, max_words: int, rng: random.Random) -> Example | None:
      if facts.question(*facts_record(family, partition, i)) in held:
        return None
      return facts_example(family, partition, i, None, max_words, docs, rng)

    return [(f"{partition}/{i:05d}", lambda n, w, rng, i=i: make(i, w, rng)) for i in range(count)]
  return items


# --- multi-hop ---------------------------------------------------------------------------------

def multihop_example(q: MultiHopQuestion, source: str, variant: int, max_words: int,
                     rng: random.Random) -> Example | None:
  """Every supporting paragraph and 1+ random distractors, one paragraph per branch, shuffled;
  None when the question has no supporting paragraph or no distractor."""
  sup = [p for p in q.paragraphs if p.is_supporting]
  rest = [p for p in q.paragraphs if not p.is_supporting]
  if not sup or not rest or len(sup) >= MAX_BRANCHES:
    return None
  n = rng.randint(len(sup) + 1, min(MAX_BRANCHES, len(sup) + len(rest)))
  chosen = sup + rng.sample(rest, n - len(sup))
  rng.shuffle(chosen)
  homes = [b for b, p in enumerate(chosen) if p.is_supporting]
  return fixed_example(source, f"{source}/{q.id}", "context" if len(homes) == 1 else "aggregation",
                       q.question, [fit_paragraph(p, max_words) for p in chosen], q.answer,
                       homes, [q.answer], SHORT_PHRASE, tag=f"fixed-{variant}",
                       aliases=list(q.aliases))


def multihop_items(variants: int = VARIANTS):
  """Builder: `variants` examples per HotpotQA and MuSiQue train-sample question (different
  distractors, order and branch count)."""
  def items(root):
    readers = (("hotpotqa", sources.read_hotpotqa), ("musique", sources.read_musique))
    return [(f"{source}/{q.id}/{v}", lambda n, w, rng, q=q, s=source, v=v:
             multihop_example(q, s, v, w, rng))
            for source, read in readers for q in read(root=root) for v in range(variants)]
  return items


# --- StrategyQA --------------------------------------------------------------------------------

def strategyqa_partition(q: YesNoQuestion) -> str:
  """"eval" for a fixed 35% of the questions (by a hash of the question text, so a question
  listed twice stays on one side), else "train"."""
  return "eval" if seeds.hash01("strategyqa-partition", q.question) < STRATEGYQA_EVAL_FRACTION \
      else "train"


def strategyqa_questions(partition: str, root: str | Path | None = None) -> list[YesNoQuestion]:
  if partition not in ("train", "eval"):
    raise ValueError(f"partition {partition!r}; choose 'train' or 'eval'")
  return [q for q in sources.read_strategyqa(root) if strategyqa_partition(q) == partition]


def strategyqa_example(q: YesNoQuestion, pool: Sequence[YesNoQuestion], n: int, max_words: int,
                       rng: random.Random) -> Example:
  """The explanation's sentences in 1..n-1 branches (in order); filler: the explanations of the
  other questions in `pool` (same partition). Target "Yes." / "No."."""
  docs = [o.explanation for o in pool if o.question != q.question]
  k = rng.randint(1, min(n - 1, len(q.explanation)))
  texts, homes = layout(contiguous_split(q.explanation, k), n, max_words,
                        lambda words, r: real_text(docs, words, r), rng)
  return fixed_example("strategyqa", f"strategyqa/{q.id}",
                       "context" if len(homes) == 1 else "aggregation", q.question, texts,
                       "Yes." if q.answer else "No.", homes, ["yes" if q.answer else "no"],
                       YES_NO)


def strategyqa_items(root):
  """Builder: the train partition, one example each (questions without explanation skipped)."""
  pool = [q for q in strategyqa_questions("train", root) if q.explanation]
  return [(q.id, lambda n, w, rng, q=q: strategyqa_example(q, pool, rng.randint(2, MAX_BRANCHES),
                                                          w, rng)) for q in pool]


# --- procedural chain / arith ------------------------------------------------------------------

# Where each generator records the branches its answer needs, and the fewest branches that
# leave one not needed (a chain has up to 3 hops, an arith question reads 2 counts).
ANSWER_BRANCHES = {"chain": "fact_branches", "arith": "used_branches"}
MIN_BRANCHES = {"chain": 4, "arith": 3}


def procedural_items(family: str, count: int = PROCEDURAL_COUNT):
  """Builder: the generator's branch inputs as finished branches, N drawn up to 8."""
  gen = procedural.GENERATORS[family]

  def make(i: int, rng: random.Random) -> Example:
    ex = gen(i, rng.randint(MIN_BRANCHES[family], MAX_BRANCHES), rng)
    return fixed_example(ex.source, f"procedural/fixed_{family}/train/{i:05d}", ex.kind,
                         ex.question, ex.branch_inputs, ex.target,
                         ex.meta[ANSWER_BRANCHES[family]], [ex.target], SHORT_PHRASE,
                         family=family)

  return lambda root: [(f"train/{i:05d}", lambda n, w, rng, i=i: make(i, rng))
                       for i in range(count)]
