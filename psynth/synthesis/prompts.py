"""The three prompts of a fan-out step: worker, cache synthesizer, text synthesizer.

All start with the same system turn and "Question: ..." so their token prefix is shared:
workers prefill it once, and the text baseline reuses its cache.
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_SYSTEM = "You are a helpful assistant. Answer accurately and concisely."
WORKER_INSTRUCTION = ("Read the document below. Write down, in two or three sentences, what it "
                      "says that helps answer the question.")
SYNTH_CACHE_LEAD = ("Several assistants have read the documents for you; their notes are in "
                    "your memory. ")
# The default reply is free text. A task whose answer has a form (a letter, a number, a short
# phrase) passes `answer_format`: "in one or two sentences" would override the form its
# question asks for, and a 135M model follows the last instruction it reads.
ANSWER_SENTENCES = "Using their notes, answer the question in one or two sentences."
# Answer forms tasks ask for. Training data and evaluation tasks take them from here, so the
# synthesizer is trained on the very prompts it is evaluated with.
ONE_SENTENCE = "Answer in one short sentence."
SHORT_PHRASE = "Answer with a short phrase only."
YES_NO = "Answer yes or no."


def with_format(question: str, answer_format: str | None) -> str:
  """The question as workers and synthesizer read it: its answer form on a line after it."""
  return question if answer_format is None else f"{question}\n{answer_format}"


def answer_instruction(answer_format: str | None = None) -> str:
  """The synthesizer's last sentence(s): free text by default, else the task's answer form."""
  if answer_format is None:
    return ANSWER_SENTENCES
  return f"Using their notes, answer the question. {answer_format}"


def _question(question: str) -> str:
  return f"Question: {question}\n\n"


def worker(question: str, branch_input: str, system: str = DEFAULT_SYSTEM) -> list[dict]:
  return [{"role": "system", "content": system},
          {"role": "user", "content": f"{_question(question)}{WORKER_INSTRUCTION}\n\n"
                                      f"Document:\n{branch_input}"}]


def synth_cache(question: str, system: str = DEFAULT_SYSTEM,
                answer_format: str | None = None) -> list[dict]:
  """No worker text: the synthesizer reads the branches from its cache."""
  return [{"role": "system", "content": system},
          {"role": "user", "content": f"{_question(question)}{SYNTH_CACHE_LEAD}"
                                      f"{answer_instruction(answer_format)}"}]


def synth_text(question: str, branch_texts: Sequence[str], system: str = DEFAULT_SYSTEM,
               answer_format: str | None = None) -> list[dict]:
  notes = "\n\n".join(f"Notes of assistant {i + 1}:\n{t}" for i, t in enumerate(branch_texts))
  return [{"role": "system", "content": system},
          {"role": "user", "content": f"{_question(question)}Several assistants read the "
                                      f"documents for you.\n\n{notes}\n\n"
                                      f"{answer_instruction(answer_format)}"}]


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
  """Length of the longest token prefix shared by all rows."""
  n = min(len(r) for r in rows)
  for i in range(n):
    t = rows[0][i]
    if any(r[i] != t for r in rows[1:]):
      return i
  return n
