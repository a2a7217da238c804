"""Examples made from one real benchmark record each (pure: record + seeded rng -> Example).

    context      multi-hop paragraphs / ARC passages / D-Bot alerts+metrics split over N branches
    aggregation  supporting paragraphs forced into different branches; ARC choices or GSM8K
                 candidate solutions spread over the branches (choose the right one)

Every example's `meta["group"]` names its source question: the train/validation split keeps
a group on one side. A builder returns None when a record cannot make that kind of example.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from psynth.data.chunks import clean, contiguous_split, fit_group, truncate_words
from psynth.data.example import Example
from psynth.data.sources import ChoiceQuestion, DBotCase, MathProblem, MultiHopQuestion

PARAGRAPHS_PER_BRANCH = 2


def _example(source: str, rec_id: str, kind: str, question: str, inputs: list[str], target: str,
             **meta) -> Example:
  group = f"{source}/{rec_id}"
  return Example(f"{group}/{kind}", kind, source, question, inputs, target,
                 meta=dict(group=group, **meta))


# --- HotpotQA / MuSiQue -----------------------------------------------------------------------

def _pick_paragraphs(q: MultiHopQuestion, count: int, rng: random.Random):
  """All supporting paragraphs plus random distractors, `count` in all, in the file's order."""
  sup = [i for i, p in enumerate(q.paragraphs) if p.is_supporting]
  rest = [i for i, p in enumerate(q.paragraphs) if not p.is_supporting]
  rng.shuffle(rest)
  return sup, sorted(sup + rest[:max(count - len(sup), 0)])


def multihop_context(q: MultiHopQuestion, source: str, n: int, max_words: int,
                     rng: random.Random) -> Example | None:
  """The question's paragraphs (gold + distractors, file order) cut into n consecutive chunks."""
  sup, chosen = _pick_paragraphs(q, n * PARAGRAPHS_PER_BRANCH, rng)
  if not sup or len(chosen) < n:
    return None
  chunks = contiguous_split([q.paragraphs[i] for i in chosen], n)
  return _example(source, q.id, "context", q.question, [fit_group(c, max_words) for c in chunks],
                  q.answer, aliases=list(q.aliases),
                  supporting_titles=[q.paragraphs[i].title for i in sup])


def multihop_aggregation(q: MultiHopQuestion, source: str, n: int, max_words: int,
                         rng: random.Random) -> Example | None:
  """Supporting paragraphs in different branches (round-robin if more than n); distractors fill."""
  sup, _ = _pick_paragraphs(q, 0, rng)
  if len(sup) < 2 or n < 2:
    return None
  order = list(range(n))
  rng.shuffle(order)
  slots: list[list[int]] = [[] for _ in range(n)]
  for k, i in enumerate(sup):
    slots[order[k % n]].append(i)
  distractors = [i for i, p in enumerate(q.paragraphs) if not p.is_supporting]
  rng.shuffle(distractors)
  for s in slots:
    while len(s) < PARAGRAPHS_PER_BRANCH and distractors:
      s.append(distractors.pop())
    rng.shuffle(s)
  if not all(slots):
    return None  # fewer paragraphs than branches
  inputs = [fit_group([q.paragraphs[i] for i in s], max_words) for s in slots]
  where = {q.paragraphs[i].title: b for b, s in enumerate(slots) for i in s if i in sup}
  return _example(source, q.id, "aggregation", q.question, inputs, q.answer,
                  aliases=list(q.aliases), supporting_branches=where)


# --- ARC ---------------------------------------------------------------------------------------

def _choice_line(label: str, text: str) -> str:
  return f"{label}. {clean(text)}"


def arc_passages(q: ChoiceQuestion, source: str, n: int, max_words: int,
                 rng: random.Random) -> Example | None:
  """Question with its options; the options' retrieved passages split over the branches."""
  del rng  # the file's passage order is kept
  with_passage = [c for c in q.choices if c.passage and c.passage.strip()]
  if len(with_passage) < n:
    return None
  chunks = contiguous_split(with_passage, n)
  each = lambda cs: max(max_words // len(cs), 8)
  inputs = ["\n\n".join(truncate_words(f"About \"{clean(c.text)}\": {c.passage}", each(cs))
                        for c in cs) for cs in chunks]
  options = "\n".join(_choice_line(c.label, c.text) for c in q.choices)
  gold = q.answer
  return _example(source, q.id, "context", f"{clean(q.question)}\n{options}", inputs,
                  _choice_line(gold.label, gold.text), answer_key=gold.label)


def arc_candidates(q: ChoiceQuestion, source: str, n: int, max_words: int,
                   rng: random.Random) -> Example | None:
  """Only the stem is asked; the candidate answers are spread over the branches."""
  del rng
  if len(q.choices) < n or n < 2:
    return None
  chunks = contiguous_split(list(q.choices), n)
  inputs = [truncate_words("\n".join(f"Candidate answer {_choice_line(c.label, c.text)}"
                                     for c in cs), max_words) for cs in chunks]
  gold = q.answer
  return _example(source, q.id, "aggregation",
                  f"{clean(q.question)}\n(Give the letter and text of the right candidate answer.)",
                  inputs, _choice_line(gold.label, gold.text), answer_key=gold.label)


# --- GSM8K -------------------------------------------------------------------------------------

def _wrong_answers(gold: int, k: int, rng: random.Random) -> list[int]:
  spread = max(3, abs(gold) // 2)
  out: list[int] = []
  while len(out) < k:
    w = gold + rng.choice([-1, 1]) * rng.randint(1, spread)
    if w != gold and w not in out and (w >= 0 or gold < 0):
      out.append(w)
  return out


def corrupt_solution(solution: str, gold: str, wrong: int) -> str:
  """The solution with every stand-alone occurrence of the final answer replaced by `wrong`."""
  return re.sub(rf"(?<![\d.]){re.escape(gold)}(?!\.?\d)", str(wrong), solution)


def gsm8k_candidates(p: MathProblem, source: str, n: int, max_words: int,
                     rng: random.Random) -> Example | None:
  """n candidate solutions, one the gold; the others' final result is altered. Target: the gold."""
  try:
    gold = int(p.answer)
  except ValueError:
    return None
  if n < 2:
    return None
  cands = [(p.solution, p.answer)] + [(corrupt_solution(p.solution, p.answer, w), str(w))
                                      for w in _wrong_answers(gold, n - 1, rng)]
  order = list(range(n))
  rng.shuffle(order)
  inputs = [""] * n
  for (sol, ans), b in zip(cands, order):
    inputs[b] = f"Candidate solution:\n{truncate_words(sol, max_words - 4)}\nFinal answer: {ans}"
  return _example(source, p.id, "aggregation",
                  f"{clean(p.question)}\n(Several candidate solutions were checked; which final "
                  "answer is right? Reply with the number.)", inputs, p.answer,
                  gold_branch=order[0])


# --- D-Bot -------------------------------------------------------------------------------------

def dbot_options(cases: Sequence[DBotCase]) -> list[str]:
  """Every root-cause label set seen, as the answer strings to choose from (sorted)."""
  return sorted({dbot_answer(c) for c in cases})


def dbot_answer(case: DBotCase) -> str:
  return " and ".join(case.labels)


def describe_metric(title: str, values: Sequence[float], points: int = 12) -> str:
  """One line: summary statistics and an evenly subsampled series."""
  vs = list(values)
  step = max(len(vs) // points, 1)
  series = " ".join(f"{v:g}" for v in vs[::step][:points])
  return (f"{title}: {len(vs)} samples, min {min(vs):g}, max {max(vs):g}, mean "
          f"{sum(vs) / len(vs):.4g}, first {vs[0]:g}, last {vs[-1]:g}; series: {series}")


def dbot_context(case: DBotCase, options: Sequence[str], n: int, max_words: int) -> Example:
  """Branch 0: the alerts; branches 1..n-1: the metric series, round-robin (n=1: all in one)."""
  alerts = "; ".join(f"{a.name} ({a.level}, {a.status})" for a in case.alerts) or "none"
  alert_text = f"Alerts raised between {case.start} and {case.end}: {alerts}."
  lines = [describe_metric(m.title, m.values) for m in case.metrics if m.values]
  metric_slots = [[] for _ in range(max(n - 1, 1))]
  for i, line in enumerate(lines):
    metric_slots[i % len(metric_slots)].append(line)
  texts = ["\n".join(s) if s else "No further metric series were recorded." for s in metric_slots]
  inputs = ([alert_text] + texts) if n > 1 else [alert_text + "\n" + texts[0]]
  inputs = [truncate_words(t, max_words) if i == 0 else _truncate_lines(t, max_words)
            for i, t in enumerate(inputs)]
  question = ("A PostgreSQL database showed an anomaly. Which root cause explains it? Choose one "
              "of: " + "; ".join(options) + ".")
  return _example("dbot", case.id, "context", question, inputs, dbot_answer(case))


def _truncate_lines(text: str, max_words: int) -> str:
  """Whole lines while they fit (metric lines are not cut in the middle), at least one."""
  out, used = [], 0
  for line in text.split("\n"):
    w = len(line.split())
    if out and used + w > max_words:
      break
    out.append(line if w <= max_words else truncate_words(line, max_words))
    used += w
  return "\n".join(out)
