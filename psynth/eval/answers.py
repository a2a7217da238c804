"""Pulling the answer out of a model's free text: boxed math, GSM8K `####`, last number,
multiple-choice letters, class labels, code blocks. Each returns None when there is none.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
# A number as written in prose: thousands commas, decimals, a leading sign.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|"
                     r"(?<![\w.])[-+]?\.\d+")


def _balanced(text: str, open_at: int) -> str | None:
  """The contents of the brace group opening at `text[open_at] == "{"`; None if unclosed."""
  depth = 0
  for i in range(open_at, len(text)):
    if text[i] == "{":
      depth += 1
    elif text[i] == "}":
      depth -= 1
      if depth == 0:
        return text[open_at + 1:i]
  return None


def extract_boxed(text: str) -> str | None:
  """The last complete `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in `text`."""
  found = None
  for m in _BOXED.finditer(text):
    end = m.end()
    if end < len(text) and text[end] == "{":
      inner = _balanced(text, end)
    else:  # `\boxed 5`: one token, the TeX shorthand
      token = re.match(r"[^\s$]+", text[end:])
      inner = token.group(0) if token and m.group(0).endswith(" ") else None
    if inner is not None and inner.strip():
      found = inner.strip()
  return found


def extract_last_number(text: str) -> str | None:
  """The last number in `text`, thousands commas removed ("1,234.5" -> "1234.5")."""
  found = _NUMBER.findall(text)
  return found[-1].replace(",", "").lstrip("+") if found else None


def extract_math_answer(text: str) -> str | None:
  """A model's final math answer: the last `\\boxed{}`, else a `#### x` line, else the last
  number in the text."""
  boxed = extract_boxed(text)
  if boxed is not None:
    return boxed
  m = re.search(r"####\s*([^\n]+)", text)
  if m and m.group(1).strip():
    return m.group(1).strip()
  return extract_last_number(text)


def _norm_text(s: str) -> str:
  s = s.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
  return " ".join(s.split())


# Each pattern's group 1 is the letter. Tried in order; within one, the last match wins
# (a model tends to end with its final answer).
_CHOICE_PATTERNS = (
    # "The answer is (B)", "Answer: b", "answer is **C**", "final answer: option D"
    re.compile(r"answer\s*(?:is|:|=)?\s*(?:option|choice)?\s*[:\-]?\s*[\*\(\[]*\s*([A-Za-z])\b"
               r"(?!['\w])\s*[\*\)\]]*", re.I),
    re.compile(r"\*\*\s*\(?([A-Za-z])\)?\s*[.:]?\s*\*\*"),  # **C**, **(C)**
    re.compile(r"^\s*\(?([A-Za-z])\s*(?:[\).:]|$)"),  # "(D) because", "B.", "C" alone
    re.compile(r"\(([A-Z])\)"),  # "(B)" anywhere
)


def extract_choice(text: str, choices: Sequence[str] | None = None,
                   letters: str = "ABCD") -> str | None:
  """The multiple-choice letter a model picked, upper case, or None.

  `letters` are the valid options; with `choices` (their texts) the letters are the first
  len(choices) of the alphabet, and when no letter is found a choice whose text the output
  contains counts (the last mentioned, if several).
  """
  if choices is not None:
    letters = string.ascii_uppercase[:len(choices)]
  for pattern in _CHOICE_PATTERNS:
    for m in reversed(list(pattern.finditer(text))):
      raw = m.group(1)
      # "the answer is a prime": a lower-case "a" running into a word is an article.
      if raw.islower() and re.match(r"\s+[a-z]", text[m.end(1):]) and "(" not in m.group(0):
        continue
      if raw.upper() in letters:
        return raw.upper()
  if not choices:
    return None
  said = f" {_norm_text(text)} "
  spots = {}
  for letter, choice in zip(letters, choices):
    norm = _norm_text(str(choice))
    if norm and f" {norm} " in said:
      spots[letter] = (said.rindex(f" {norm} "), len(norm))
  # A choice contained in a longer mentioned one ("4" inside "4 apples") does not count.
  texts = {letter: _norm_text(str(choices[letters.index(letter)])) for letter in spots}
  kept = [l for l in spots if not any(l != o and f" {texts[l]} " in f" {texts[o]} "
                                      and texts[l] != texts[o] for o in spots)]
  return max(kept, key=lambda l: spots[l]) if kept else None


def _label_key(s: str) -> str:
  return " ".join(re.sub(r"[_\-/]+", " ", s.lower()).split())


def extract_labels(text: str, labels: Sequence[str]) -> list[str]:
  """Every label of `labels` the text names, in order of first mention; case, `_`/`-` and
  spacing do not matter, and a label inside a longer named one does not count."""
  said = _label_key(text)
  taken = [False] * len(said)
  hits = []
  for label in sorted(set(labels), key=lambda l: -len(_label_key(l))):
    key = _label_key(label)
    if not key:
      continue
    for m in re.finditer(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", said):
      if not any(taken[m.start():m.end()]):
        taken[m.start():m.end()] = [True] * (m.end() - m.start())
        hits.append((m.start(), label))
  first: dict[str, int] = {}
  for start, label in sorted(hits):
    first.setdefault(label, start)
  return list(first)


def extract_label(text: str, labels: Sequence[str]) -> str | None:
  """The first label of `labels` that the text names (see `extract_labels`), or None."""
  found = extract_labels(text, labels)
  return found[0] if found else None


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> str:
  """The code in a model's output: the first fenced python block that defines something
  (else the first python block, else the first block; an unclosed fence runs to the end),
  or the whole text when there are no fences (a bare completion)."""
  blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
  if not blocks:
    return text
  python = [body for lang, body in blocks if lang in ("python", "py", "python3", "")]
  pool = python or [body for _, body in blocks]
  defining = [b for b in pool if re.search(r"^\s*(def|class) ", b, re.M)]
  return (defining or pool)[0].rstrip() + "\n"
