"""Math: GSM8K (test), MATH-500, AIME 2024. N workers sample the whole problem; the reply's
boxed answer (else `#### x`, else its last number) must equal the gold one."""

from __future__ import annotations

from psynth.data.sources import read_gsm8k
from psynth.eval import answers, metrics, readers
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task, work_orders

LAST_NUMBER = "Finish with the final number, written as \\boxed{answer}."
BOXED = "Finish with the final answer in \\boxed{}."


def score_math(reply: str, item: Item) -> Score:
  got = answers.extract_math_answer(reply)
  return Score(got, metrics.math_equal(got, item.gold))


def _item(id_: str, problem: str, gold, how: str, opts: BuildOptions) -> Item:
  return Item(id_, f"{problem.strip()}\n\n{how}", work_orders(opts.num_branches), str(gold))


def gsm8k(opts: BuildOptions) -> list[Item]:
  return [_item(p.id, p.question, p.answer, LAST_NUMBER, opts)
          for p in read_gsm8k("test", opts.root)]


def math500(opts: BuildOptions) -> list[Item]:
  return [_item(r["unique_id"], r["problem"], r["answer"], BOXED, opts)
          for r in readers.read_math500(opts.root)]


def aime24(opts: BuildOptions) -> list[Item]:
  return [_item(f"aime24-{r['id']}", r["problem"], r["answer"], BOXED, opts)
          for r in readers.read_aime24(opts.root)]


TASKS = (Task("gsm8k", "sample", gsm8k, score_math, answer_format=LAST_NUMBER),
         Task("math500", "sample", math500, score_math, answer_format=BOXED),
         Task("aime24", "sample", aime24, score_math, answer_format=BOXED))
