"""Evidence read from fixed branches: the branches are finished evidence texts and no worker runs
(`branching="fixed"`), so these tasks measure how well the synthesizer reads N branch caches.

    facts              one made-up fact among made-up distractor facts and real text
    facts_multi        2 or 3 facts about one made-up institution, in different branches
    strategyqa         StrategyQA: the explanation's sentences among other questions' ones
    arc_easy_evidence  ARC-Easy test: one branch per option, holding that option's passage
    arc_easy_likelihood  the same questions without letters, the options' passages as
                       found, the options scored by likelihood

None of their items is training data: the facts tasks and strategyqa read the "eval" partition
of `psynth.data.fixed` (the training builders read "train" and drop any record asking an eval
question), and training reads ARC's train and dev files, without the few questions they
repeat from the test files. N is `num_branches` (at least 2; below that, FACTS_BRANCHES),
except for ARC, which has one branch per option.
"""

from __future__ import annotations

from psynth.data import fixed, seeds
from psynth.data.chunks import clean, truncate_words
from psynth.data.sources import read_arc
from psynth.eval import answers, metrics
from psynth.eval.short_answer import extract_short_answer
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task
from psynth.eval.tasks.choice import (LETTERS, NO_PASSAGE, PICK, choice_gold, choice_question,
                                      option_passage, score_choice)
from psynth.synthesis.prompts import ONE_SENTENCE, SHORT_PHRASE, YES_NO

FACTS_BRANCHES = 4  # a single branch cannot keep a fact apart from its distractors


def _branch_count(opts: BuildOptions) -> int:
  return opts.num_branches if opts.num_branches >= 2 else FACTS_BRANCHES


def _item(id_: str, ex, gold) -> Item:
  """An item from a fixed example of `psynth.data.fixed` (its question ends with its answer
  form, as in training)."""
  return Item(id_, ex.question, tuple(ex.branch_outputs), gold, "\n\n".join(ex.branch_outputs))


def score_facts(reply: str, item: Item) -> Score:
  """gold: {"values": the asked values, "answer": the answer sentence}. Correct when the reply
  names every value (`metrics.contains_answer`); F1 of its short answer against the answer
  sentence or the values alone."""
  values = item.gold["values"]
  got = extract_short_answer(reply)
  return Score(got, all(metrics.contains_answer(reply, v) for v in values),
               metrics.token_f1(got, [item.gold["answer"], " ".join(values)]))


def _facts(family: str):
  def build(opts: BuildOptions) -> list[Item]:
    docs = fixed.real_documents(opts.root)
    items = []
    for i in range(fixed.EVAL_ITEMS):
      ex = fixed.facts_example(family, "eval", i, _branch_count(opts), opts.max_branch_words,
                               docs, seeds.rng(opts.seed, family, "eval", i))
      items.append(_item(f"eval/{i:05d}", ex, {"values": ex.meta["answers"], "answer": ex.target}))
    return items
  return build


def score_yes_no(reply: str, item: Item) -> Score:
  """gold: "yes" or "no"; the reply's first yes or no (as a whole word) must be it."""
  got = answers.extract_label(reply, ("yes", "no"))
  return Score(got, got == item.gold)


def strategyqa(opts: BuildOptions) -> list[Item]:
  pool = [q for q in fixed.strategyqa_questions("eval", opts.root) if q.explanation]
  items = []
  for q in pool:
    ex = fixed.strategyqa_example(q, pool, _branch_count(opts), opts.max_branch_words,
                                  seeds.rng(opts.seed, "strategyqa", q.id))
    items.append(_item(q.id, ex, "yes" if q.answer else "no"))
  return items


def arc_easy_evidence(opts: BuildOptions) -> list[Item]:
  items = []
  for q in read_arc("easy", "test", passages=True, root=opts.root):
    options = [c.text for c in q.choices]
    branches = [option_passage(i, c, opts.max_branch_words)
                or f"About option {LETTERS[i]} (\"{clean(c.text)}\"): no passage was found."
                for i, c in enumerate(q.choices)]
    correct = [c.label for c in q.choices].index(q.answer_key)
    items.append(Item(q.id, choice_question(q.question, options), tuple(branches),
                      choice_gold(options, correct), "\n\n".join(branches)))
  return items


def arc_easy_likelihood(opts: BuildOptions) -> list[Item]:
  """ARC-Easy test without letters, the options scored by likelihood: one branch per option's
  retrieved passage, as found (no header quoting the option, which lifts every option alike:
  its first 48 items with headers were at chance for every method)."""
  items = []
  for q in read_arc("easy", "test", passages=True, root=opts.root):
    options = [c.text for c in q.choices]
    branches = [truncate_words(clean(c.passage), opts.max_branch_words) for c in q.choices
                if c.passage and c.passage.strip()] or [NO_PASSAGE]
    correct = [c.label for c in q.choices].index(q.answer_key)
    items.append(Item(q.id, f"{q.question}\n{SHORT_PHRASE}", tuple(branches),
                      choice_gold(options, correct), "\n\n".join(branches)))
  return items


TASKS = (Task("facts", "fixed", _facts("facts"), score_facts, answer_format=ONE_SENTENCE),
         Task("facts_multi", "fixed", _facts("facts_multi"), score_facts,
              answer_format=ONE_SENTENCE),
         Task("strategyqa", "fixed", strategyqa, score_yes_no, answer_format=YES_NO),
         Task("arc_easy_evidence", "fixed", arc_easy_evidence, score_choice, answer_format=PICK),
         Task("arc_easy_likelihood", "fixed", arc_easy_likelihood, score_choice,
              answer_format=SHORT_PHRASE, score_by="likelihood"))
