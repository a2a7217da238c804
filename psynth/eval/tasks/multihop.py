"""Multi-document QA: HotpotQA and MuSiQue (train samples with their paragraphs). The
question's supporting paragraphs plus distractors are cut into N consecutive chunks, one per
worker (the training data's "context" examples, `real_tasks.multihop_context`); exact match
and token F1 of the reply's short answer against the gold and its aliases.

These are the very questions the training data is built from (`hotpotqa_*`, `musique_*`,
`fixed_multihop`), the only ones with paragraphs here: the tasks overlap training
(`overlaps_training`) and measure pipeline fidelity only; score an adapter on them with
`held_out_from`, which leaves out the questions it was trained on."""

from __future__ import annotations

import random

from psynth.data import real_tasks
from psynth.data.chunks import contiguous_split, fit_group
from psynth.data.sources import MultiHopQuestion, read_hotpotqa, read_musique
from psynth.eval import metrics
from psynth.eval.short_answer import extract_short_answer
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task
from psynth.synthesis.prompts import SHORT_PHRASE



def score_open(reply: str, item: Item) -> Score:
  """gold: the answer and its aliases (a list). Correct = exact match."""
  got = extract_short_answer(reply)
  return Score(got, metrics.exact_match(got, item.gold) == 1.0, metrics.token_f1(got, item.gold))


def _item(q: MultiHopQuestion, source: str, opts: BuildOptions) -> Item:
  rng = random.Random(f"{opts.seed}/{source}/{q.id}")
  ex = real_tasks.multihop_context(q, source, opts.num_branches, opts.max_branch_words, rng)
  if ex is not None:
    chunks = ex.branch_inputs
  else:  # no paragraph marked supporting, or too few: all of them, in order
    parts = contiguous_split(list(q.paragraphs), min(opts.num_branches, len(q.paragraphs)))
    chunks = [fit_group(p, opts.max_branch_words) for p in parts]
  return Item(q.id, f"{q.question}\n{SHORT_PHRASE}", tuple(chunks), [q.answer, *q.aliases],
              "\n\n".join(chunks))


def hotpotqa(opts: BuildOptions) -> list[Item]:
  return [_item(q, "hotpotqa", opts) for q in read_hotpotqa("train_sample", opts.root)]


def musique(opts: BuildOptions) -> list[Item]:
  return [_item(q, "musique", opts) for q in read_musique(opts.root)]


TASKS = (Task("hotpotqa", "chunk", hotpotqa, score_open, answer_format=SHORT_PHRASE,
              overlaps_training=True),
         Task("musique", "chunk", musique, score_open, answer_format=SHORT_PHRASE,
              overlaps_training=True))
