"""Evidence text cut to a word budget: whole sentences first, the ones that matter always kept.

A worker prompt must stay small for a 135M model on CPU, so every branch input has a word
budget (about 1.3-1.5 tokens per word for SmolLM2's tokenizer: 120 words ~ 170 tokens).
Budgets are in words, not tokens, so a data set does not depend on a tokenizer.
"""

from __future__ import annotations

from typing import Sequence

from psynth.data.sources import Paragraph


def clean(text: str) -> str:
  """Whitespace runs (tabs, newlines) collapsed to single spaces."""
  return " ".join(text.split())


def truncate_words(text: str, max_words: int) -> str:
  """At most `max_words` words; a cut text ends with "..." (counted as a word)."""
  words = text.split()
  if len(words) <= max_words:
    return " ".join(words)
  return " ".join(words[:max(max_words - 1, 1)]) + " ..."


def fit_paragraph(p: Paragraph, max_words: int) -> str:
  """"Title: text" within `max_words`: supporting sentences always, others in order while they fit.

  Sentences keep their original order. A paragraph with no sentence marked supporting but
  `is_supporting` set (MuSiQue) is cut from its start, which is where its topic is stated.
  """
  budget = max_words - len(p.title.split())
  sents = [clean(s) for s in p.sentences]
  keep = set(i for i in p.supporting_sentences if i < len(sents))
  used = sum(len(sents[i].split()) for i in keep)
  for i, s in enumerate(sents):
    if i not in keep and used + len(s.split()) <= budget:
      keep.add(i)
      used += len(s.split())
    elif i not in keep and not keep:
      break  # the opening sentence alone is too long: cut it below instead of skipping ahead
  text = " ".join(sents[i] for i in sorted(keep) if sents[i]) or " ".join(sents)
  return f"{p.title}: {truncate_words(text, max(budget, 1))}"


def _needed_words(p: Paragraph) -> int:
  """Words that must survive a cut: the title and the supporting sentences."""
  return len(p.title.split()) + sum(len(p.sentences[i].split()) for i in p.supporting_sentences
                                    if i < len(p.sentences))


def fit_group(paragraphs: Sequence[Paragraph], max_words: int) -> str:
  """Several paragraphs in one branch: each gets its needed words plus an even share of the rest.

  A paragraph left with fewer than 12 words (a distractor next to long supporting sentences)
  is dropped rather than shown as a stub.
  """
  need = [_needed_words(p) for p in paragraphs]
  if sum(need) > max_words:  # even the supporting sentences do not fit: shrink in proportion
    budgets = [n * max_words // sum(need) for n in need]
  else:
    budgets = [n + (max_words - sum(need)) // len(paragraphs) for n in need]
  parts = [fit_paragraph(p, b) for p, b in zip(paragraphs, budgets) if b >= 12]
  return "\n\n".join(parts) or fit_paragraph(paragraphs[0], max_words)


def contiguous_split(items: Sequence, n: int) -> list[list]:
  """`items` cut into n consecutive runs whose sizes differ by at most one (earlier ones bigger)."""
  q, r = divmod(len(items), n)
  out, i = [], 0
  for b in range(n):
    size = q + (b < r)
    out.append(list(items[i:i + size]))
    i += size
  return out
