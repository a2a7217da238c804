"""Answer extraction and scoring per task family, on hand-written (also malformed) outputs."""

from __future__ import annotations

import gzip
import json
import pathlib

import numpy as np
import pytest

from psynth.eval import answers, intervals, metrics, programs
from psynth.eval.sandbox import Limits

from conftest import run_programs

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


# --- math ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, boxed", [
    (r"so $\boxed{42}$.", "42"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3}, then corrected: \boxed{\dfrac{3}{4}}", r"\dfrac{3}{4}"),  # several: last
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),  # nested
    (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    (r"\boxed 5 is it", "5"),
    (r"\fbox{7}", "7"),
    (r"\boxed{12} and then \boxed{13", "12"),  # the unclosed one is skipped
    (r"\boxed{a{b}c", None),  # unbalanced
    (r"\boxed{}", None),  # empty
    ("", None),
    ("The answer is 12.", None),
])
def test_extract_boxed(text, boxed):
  assert answers.extract_boxed(text) == boxed


@pytest.mark.parametrize("text, answer", [
    (r"We get \boxed{18}. Check: 18 - 3 = 15", "18"),  # boxed beats a later number
    ("9 * 2 = 18\n#### 18", "18"),
    ("She earns $1,234.50 a week, so 2 weeks give 2,469", "2469"),
    ("so the result is -.5", "-.5"),
    ("I am not sure.", None),
    ("", None),
    ("version 3.11 ships v2", "3.11"),  # "v2": a digit inside a word is not a number
])
def test_extract_math_answer(text, answer):
  assert answers.extract_math_answer(text) == answer


@pytest.mark.parametrize("pred, gold, equal", [
    ("1,234", "1234", True),
    ("$18.00", "18", True),
    (r"\$5", "5", True),
    (r"\frac{1}{2}", "0.5", True),
    ("1/2", r"\dfrac12", True),
    (r"-\frac{1}{2}", "-0.5", True),
    ("3.0", "3", True),
    ("50%", "0.5", True),  # exactly one side a percent
    (r"50\%", "50", True),
    (r"90^\circ", "90", True),
    (r"90^{\circ}", "90", True),
    ("10 cm", "10", True),  # unit stripped
    ("5 dollars", "5", True),
    (r"\text{Evelyn}", r"\text{Evelyn}", True),
    (r"\text{Evelyn}", "Evelyn", True),
    ("x = 5", "5", True),
    (r"11\sqrt2", r"11\sqrt{2}", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    (r"6 - 5i", "6-5i", True),
    ("27", 27.0, True),  # AMC golds are JSON numbers
    ("2x", "2", False),  # a variable is not a unit
    ("7", "8", False),
    ("1/0", "1", False),
    (None, "3", False),
    ("", "0", False),
    ("   ", "0", False),
])
def test_math_equal(pred, gold, equal):
  assert metrics.math_equal(pred, gold) is equal


def test_math500_golds_equal_themselves_and_their_boxed_solution():
  rows = [json.loads(line) for line in (DATA / "math500" / "test.jsonl").open()][:50]
  for row in rows:
    assert metrics.math_equal(row["answer"], row["answer"])
    assert metrics.math_equal(answers.extract_math_answer(row["solution"]), row["answer"]), row


# --- multiple choice ----------------------------------------------------------------------

@pytest.mark.parametrize("text, letter", [
    ("The answer is (B)", "B"),
    ("B.", "B"),
    ("Answer: b", "B"),
    ("I would go with **C** here.", "C"),
    ("**(A)**", "A"),
    ("(D) because the others are wrong", "D"),
    ("C", "C"),
    ("Final answer: option C", "C"),
    ("It could be (A) or (B), but the answer is C.", "C"),  # the final statement wins
    ("the answer is a prime number", None),  # an article, not option A
    ("I think the best answer is Because", None),
    ("answer: (E)", None),  # not among A-D
    ("", None),
    ("no idea, sorry", None),
])
def test_extract_choice(text, letter):
  assert answers.extract_choice(text) == letter


def test_extract_choice_by_text_and_letter_range():
  cities = ["London", "Paris", "Rome", "Berlin"]
  assert answers.extract_choice("It is Paris, clearly.", choices=cities) == "B"
  assert answers.extract_choice("not Rome; I say berlin", choices=cities) == "D"  # last named
  assert answers.extract_choice("Madrid", choices=cities) is None
  assert answers.extract_choice("4 apples", choices=["4", "4 apples", "5", "6"]) == "B"
  assert answers.extract_choice("The answer is (E)", letters="ABCDE") == "E"
  assert answers.extract_choice("The answer is (C)", choices=["yes", "no"]) is None


# --- extractive QA ------------------------------------------------------------------------

def test_squad_normalization_em_f1():
  assert metrics.normalize_squad("The  Eiffel-Tower!") == "eiffeltower"
  assert metrics.exact_match("the Eiffel Tower.", "Eiffel Tower") == 1.0
  assert metrics.exact_match("Paris, France", ["France", "Paris, France"]) == 1.0
  assert metrics.exact_match("Paris", "London") == 0.0
  assert metrics.exact_match(None, "x") == 0.0
  assert metrics.token_f1("Barack Obama", "Obama") == pytest.approx(2 / 3)
  assert metrics.token_f1("in the year 1990", ["1990", "year 1990"]) == pytest.approx(0.8)
  assert metrics.token_f1("", "Obama") == 0.0
  assert metrics.token_f1("the", "a") == 1.0  # both empty after normalization
  assert metrics.token_f1("yes yes yes", "yes") == pytest.approx(0.5)
  with pytest.raises(ValueError, match="no gold answers"):
    metrics.token_f1("x", [])


@pytest.mark.parametrize("reply, gold, named", [
    ("The Brailith archive was founded by Sela Vorn.", "Sela Vorn", True),  # in a sentence
    ("sela   VORN", "Sela Vorn", True),  # case and spacing
    ("It opened in 1874.", "1874", True),
    ("It opened in 18745.", "1874", False),  # whole words only
    ("Vorn was there.", "Sela Vorn", False),  # part of the gold
    ("It is painted red.", "the red", True),  # articles and punctuation do not count
    ("Tornak", "Tornak.", True),
    ("anything", "the", False),  # a gold of nothing is never named
    (None, "x", False),
])
def test_contains_answer(reply, gold, named):
  assert metrics.contains_answer(reply, gold) is named


# --- classification (D-Bot root causes) ---------------------------------------------------

DBOT_LABELS = ["highly deletes", "too many indexes", "highly concurrent updates",
               "highly concurrent commits or highly concurrent inserts", "FETCH_LARGE_DATA",
               "CORRELATED SUBQUERY", "INSERT_LARGE_DATA", "IO_CONTENTION",
               "POOR JOIN PERFORMANCE", "CPU CONTENTION"]


def test_extract_labels():
  text = "Root cause: fetch large data, made worse by a correlated-subquery. Also CPU contention."
  assert answers.extract_labels(text, DBOT_LABELS) == [
      "FETCH_LARGE_DATA", "CORRELATED SUBQUERY", "CPU CONTENTION"]
  # The longer label wins over the shorter ones it contains.
  assert answers.extract_label("HIGHLY CONCURRENT COMMITS OR HIGHLY CONCURRENT INSERTS!",
                               DBOT_LABELS) == "highly concurrent commits or highly concurrent inserts"
  assert answers.extract_label("diagnosis -> Too-Many-Indexes", DBOT_LABELS) == "too many indexes"
  assert answers.extract_label("io_contentions everywhere", DBOT_LABELS) is None  # whole words
  assert answers.extract_label("", DBOT_LABELS) is None
  rows = [json.loads(line) for line in
          (DATA / "dbot" / "derived_62_cases_alerts_topmetrics_labels.jsonl").open()]
  assert {l for r in rows for l in r["labels"]} <= set(DBOT_LABELS)


# --- code ---------------------------------------------------------------------------------

def test_extract_code():
  fenced = "Sure!\n```python\ndef f(x):\n    return x\n```\nUsage:\n```\nf(1)\n```"
  assert answers.extract_code(fenced) == "def f(x):\n    return x\n"
  assert answers.extract_code("```py\nimport os\n```\n```python\ndef g():\n  pass\n```") == \
      "def g():\n  pass\n"  # the block that defines something
  assert answers.extract_code("```python\ndef h():\n    return 1") == "def h():\n    return 1\n"
  assert answers.extract_code("    return x + 1\n") == "    return x + 1\n"  # bare completion
  assert answers.extract_code("") == ""


def test_programs_run_in_the_sandbox():
  with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
    he = json.loads(f.readline())
  mbpp = json.loads((DATA / "mbpp" / "mbpp.jsonl").open().readline())
  sanitized = json.load((DATA / "mbpp" / "sanitized-mbpp.json").open())[0]
  plus = json.load((DATA / "mbpp" / "mbppplus_v0.1.0.json").open())[0]
  chat_style = answers.extract_code(
      f"Here is it:\n```python\n{he['prompt']}{he['canonical_solution']}```\nDone.")
  progs = [
      programs.humaneval_program(he, he["canonical_solution"]),  # a body continuation
      programs.humaneval_program(he, chat_style),  # a whole redefinition
      programs.humaneval_program(he, "    return False\n"),  # wrong
      programs.mbpp_program(mbpp, mbpp["code"]),
      programs.mbpp_program(sanitized, sanitized["code"]),
      programs.mbpp_program(plus, plus["canonical_solution"]),
      programs.mbpp_program(plus, "def similar_elements(a, b):\n  return ()"),  # wrong
  ]
  results = run_programs(progs, Limits(timeout_s=10), workers=2)
  assert [r.passed for r in results] == [True, True, False, True, True, True, False]
  with pytest.raises(ValueError, match="lacks \\['entry_point'\\]"):
    programs.humaneval_program({"prompt": "", "test": ""}, "")
  with pytest.raises(ValueError, match="neither 'test_list'"):
    programs.mbpp_program({"task_id": 1}, "")


# --- confidence intervals -----------------------------------------------------------------

def test_wilson_interval():
  low, high = intervals.wilson_interval(50, 100)
  assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
  assert intervals.wilson_interval(0, 10)[0] == 0.0
  assert intervals.wilson_interval(10, 10)[1] == 1.0
  assert intervals.wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
  with pytest.raises(ValueError, match="n=0"):
    intervals.wilson_interval(0, 0)
  with pytest.raises(ValueError, match="successes=11 for n=10"):
    intervals.wilson_interval(11, 10)


def test_bootstrap_interval():
  scores = np.array([1] * 60 + [0] * 40)
  low, high = intervals.bootstrap_interval(scores, seed=0)
  assert low < 0.6 < high
  assert (low, high) == intervals.bootstrap_interval(scores, seed=0)  # seeded
  wl, wh = intervals.wilson_interval(60, 100)
  assert abs(low - wl) < 0.03 and abs(high - wh) < 0.03  # agrees with Wilson here
  assert intervals.bootstrap_interval([1, 1, 1]) == (1.0, 1.0)
  with pytest.raises(ValueError, match="scores is empty"):
    intervals.bootstrap_interval([])
