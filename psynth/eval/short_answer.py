"""The short answer in a model's free-text reply to an open question (multi-hop QA, GAIA)."""

from __future__ import annotations

import re

_LEAD = re.compile(r"(?:final answer|the answer is|answer)\s*(?:is)?\s*[:\-]?\s*", re.I)
_WRAP = "*\"'`“”‘’ \t"


def extract_short_answer(text: str) -> str | None:
  """After the last "answer is" / "Answer:" if any, the first line, without wrapping quotes,
  bold markers or a final period; None for an empty reply."""
  leads = list(_LEAD.finditer(text))
  rest = text[leads[-1].end():] if leads and text[leads[-1].end():].strip() else text
  line = next((l for l in rest.splitlines() if l.strip(_WRAP)), "")
  answer = line.strip(_WRAP).rstrip(".").strip(_WRAP)
  return answer or None
