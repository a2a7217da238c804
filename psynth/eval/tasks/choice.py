"""Multiple choice: ARC-Easy / ARC-Challenge (test), MMLU-STEM, GPQA-Diamond. Options are
lettered A, B, C, ... in the prompt; the reply's letter (or an option's text) is scored.

ARC is a "chunk" task: each option's retrieved passage (the with_ir_paragraphs files) goes to
one worker, the options split over the workers. PIQA (validation: two solutions to a goal),
MMLU-STEM and GPQA are "sample" tasks. GPQA's options are shuffled with a seed per record (the
correct one is listed first in the file).
"""

from __future__ import annotations

import random
import string
import zlib
from typing import Sequence

from psynth.data.chunks import clean, contiguous_split, truncate_words
from psynth.data.sources import Choice, read_arc
from psynth.eval import answers, readers
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task, work_orders

LETTERS = string.ascii_uppercase
PICK = "Answer with the letter of the correct option."
NO_PASSAGE = "No passage was found about these options."


def choice_question(stem: str, options: Sequence[str]) -> str:
  lines = "\n".join(f"{LETTERS[i]}. {clean(o)}" for i, o in enumerate(options))
  return f"{clean(stem)}\n{lines}\n\n{PICK}"


def score_choice(reply: str, item: Item) -> Score:
  """gold: {"answer": letter, "options": option texts}."""
  got = answers.extract_choice(reply, choices=item.gold["options"])
  return Score(got, got == item.gold["answer"])


def choice_gold(options: Sequence[str], correct: int) -> dict:
  """What `score_choice` compares with: the correct letter and the option texts."""
  return {"answer": LETTERS[correct], "options": [clean(o) for o in options]}


def option_passage(index: int, choice: Choice, max_words: int) -> str | None:
  """Option `index`'s retrieved passage, introduced by its letter and text, within `max_words`;
  None when it has none."""
  if not (choice.passage and choice.passage.strip()):
    return None
  return truncate_words(f"About option {LETTERS[index]} (\"{clean(choice.text)}\"): "
                        f"{choice.passage}", max_words)


def _arc(difficulty: str):
  def build(opts: BuildOptions) -> list[Item]:
    items = []
    for q in read_arc(difficulty, "test", passages=True, root=opts.root):
      options = [c.text for c in q.choices]
      correct = [c.label for c in q.choices].index(q.answer_key)
      chunks = contiguous_split(list(enumerate(q.choices)), min(opts.num_branches, len(options)))
      branches = []
      for chunk in chunks:
        each = max(opts.max_branch_words // len(chunk), 8)
        parts = [option_passage(i, c, each) for i, c in chunk]
        branches.append("\n\n".join(p for p in parts if p) or NO_PASSAGE)
      items.append(Item(q.id, choice_question(q.question, options), tuple(branches),
                        choice_gold(options, correct), "\n\n".join(branches)))
    return items
  return build


def mmlu_stem(opts: BuildOptions) -> list[Item]:
  return [Item(f"mmlu_stem-{i}-{r.get('type', '')}", choice_question(r["question"], r["choices"]),
               work_orders(opts.num_branches), choice_gold(r["choices"], int(r["answer"])))
          for i, r in enumerate(readers.read_mmlu_stem(opts.root))]


def piqa(opts: BuildOptions) -> list[Item]:
  """PIQA validation: which of two solutions reaches the goal (ids are line numbers)."""
  return [Item(f"piqa-{i}", choice_question(f"Goal: {r['goal']}\nWhich solution works?",
                                            [r["sol1"], r["sol2"]]),
               work_orders(opts.num_branches), choice_gold([r["sol1"], r["sol2"]], r["label"]))
          for i, r in enumerate(readers.read_piqa(opts.root))]


def gpqa_diamond(opts: BuildOptions) -> list[Item]:
  items = []
  for r in readers.read_gpqa_diamond(opts.root):
    texts = [r["Correct Answer"]] + [r[f"Incorrect Answer {k}"] for k in (1, 2, 3)]
    order = list(range(4))
    random.Random(zlib.crc32(f"{opts.seed}/{r['Record ID']}".encode())).shuffle(order)
    options = [texts[j] for j in order]
    items.append(Item(r["Record ID"], choice_question(r["Question"], options),
                      work_orders(opts.num_branches), choice_gold(options, order.index(0))))
  return items


TASKS = (Task("arc_easy", "chunk", _arc("easy"), score_choice, answer_format=PICK),
         Task("arc_challenge", "chunk", _arc("challenge"), score_choice, answer_format=PICK),
         Task("piqa", "sample", piqa, score_choice, answer_format=PICK),
         Task("mmlu_stem", "sample", mmlu_stem, score_choice, answer_format=PICK),
         Task("gpqa_diamond", "sample", gpqa_diamond, score_choice, answer_format=PICK))
