"""Per-example scores: math answer equivalence, SQuAD exact match, token F1 and containment."""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

_LATEX_DROP = (r"\$", r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\displaystyle", "$")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")  # \frac12
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\w)")  # \sqrt2
_FRAC = re.compile(r"^(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$")
_SLASH = re.compile(r"^(-?[\d.]+)/(-?[\d.]+)$")
_PLAIN = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
# "10 cm", "5 dollars"; a single letter stays ("2x" is not 2).
_UNIT_TAIL = re.compile(r"^(.*?\d)\s*[a-z]{2,}[a-z.\s]*$", re.I)


def normalize_math(s: str) -> str:
  """A LaTeX answer in canonical spelling: no sizing, spacing, `$`, degrees or `\\text{}`
  wrappers; `\\dfrac`/`\\tfrac` as `\\frac`; `\\frac12` as `\\frac{1}{2}`; `x = 5` as `5`."""
  s = s.strip()
  for token in _LATEX_DROP:
    s = s.replace(token, "")
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = _DEGREES.sub("", s)
  s = _TEXT.sub(r"\1", s)
  s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
  s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
  s = s.replace("\\ ", "").replace("\\%", "%")
  s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5": the value only
  s = "".join(s.split()).rstrip(".")
  return s


def to_number(s: str) -> float | None:
  """The value of a normalized numeric answer (`1,234`, `$5`, `50%`, `\\frac{1}{2}`, `3/4`,
  `10 cm`), or None if it is not a plain number. A percent sign is dropped (50% -> 50)."""
  s = normalize_math(s).rstrip("%")
  if _THOUSANDS.match(s):
    s = s.replace(",", "")
  m = _UNIT_TAIL.match(s)
  if m and not s.startswith("\\"):
    s = m.group(1)
  if _PLAIN.match(s):
    return float(s)
  for pattern in (_FRAC, _SLASH):
    m = pattern.match(s)
    if m:
      sign, num, den = (m.group(1), m.group(2), m.group(3)) if pattern is _FRAC else \
          ("", m.group(1), m.group(2))
      try:
        value = float(num) / float(den)
      except (ValueError, ZeroDivisionError):
        return None
      return -value if sign else value
  return None


def math_equal(pred: str | None, gold: str | float, rel_tol: float = 1e-6) -> bool:
  """Whether a predicted math answer equals the gold one: same normalized spelling, or the
  same number (within `rel_tol`), also when exactly one side is a percent (50% vs 0.5).
  A numeric gold (AMC's `27.0`) is compared as its decimal spelling."""
  if pred is None or not pred.strip():
    return False
  gold = str(gold)
  p, g = normalize_math(pred), normalize_math(gold)
  if p == g:
    return True
  pv, gv = to_number(pred), to_number(gold)
  if pv is None or gv is None:
    return False
  candidates = [pv]
  if p.endswith("%") != g.endswith("%"):
    candidates += [pv / 100, pv * 100]
  return any(math.isclose(c, gv, rel_tol=rel_tol, abs_tol=1e-9) for c in candidates)


def normalize_squad(s: str) -> str:
  """SQuAD answer normalization: lower case, no punctuation, no articles, single spaces."""
  s = s.lower()
  s = "".join(c for c in s if c not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def _golds(golds: str | Sequence[str]) -> list[str]:
  golds = [golds] if isinstance(golds, str) else list(golds)
  if not golds:
    raise ValueError("no gold answers given; need at least one alias")
  return golds


def exact_match(pred: str | None, golds: str | Sequence[str]) -> float:
  """1.0 if the normalized prediction equals any normalized gold alias, else 0.0."""
  if pred is None:
    return 0.0
  return float(any(normalize_squad(pred) == normalize_squad(g) for g in _golds(golds)))


def _f1(pred: str, gold: str) -> float:
  p, g = normalize_squad(pred).split(), normalize_squad(gold).split()
  if not p or not g:
    return float(p == g)  # both empty (e.g. only articles): a match; one empty: none
  common = sum((collections.Counter(p) & collections.Counter(g)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(p), common / len(g)
  return 2 * precision * recall / (precision + recall)


def token_f1(pred: str | None, golds: str | Sequence[str]) -> float:
  """SQuAD token F1 of the prediction against its best gold alias."""
  if pred is None:
    return 0.0
  return max(_f1(pred, g) for g in _golds(golds))


def contains_answer(reply: str | None, gold: str) -> bool:
  """Whether the reply names `gold`: its SQuAD-normalized words appear as a run of whole words
  of the normalized reply ("It was founded by Sela Vorn." names "Sela Vorn", "18745" does not
  name "1874"). A gold that normalizes to nothing is never named."""
  g = normalize_squad(gold)
  return bool(reply and g) and f" {g} " in f" {normalize_squad(reply)} "
