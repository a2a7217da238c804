"""Test programs for code tasks: a model's code joined with the benchmark's tests, ready for
`sandbox.run_program`. Accepts the official HumanEval, MBPP (full and sanitized) and MBPP+
record schemas."""

from __future__ import annotations

import re


def _require(problem: dict, keys: tuple[str, ...], kind: str) -> None:
  missing = [k for k in keys if k not in problem]
  if missing:
    raise ValueError(f"{kind} problem {problem.get('task_id', '?')!r} lacks {missing}; "
                     f"expected the official fields {list(keys)}")


def humaneval_program(problem: dict, code: str) -> str:
  """prompt + completion + test + `check(entry_point)`.

  `code` (from `answers.extract_code`) is either the body continuing the prompt, or a whole
  function redefining the entry point; then the prompt stays first for its imports and
  helpers and the new definition replaces the stub.
  """
  _require(problem, ("prompt", "test", "entry_point"), "HumanEval")
  entry = problem["entry_point"]
  if re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M):
    head = problem["prompt"] + "\n" + code  # the stub's docstring is a valid body
  else:
    head = problem["prompt"] + code
  return f"{head}\n\n{problem['test']}\n\ncheck({entry})\n"


def mbpp_program(problem: dict, code: str) -> str:
  """code + setup + the test asserts: `test_list` (MBPP, with `test_setup_code` or
  sanitized `test_imports`), else MBPP+'s base-input `assertion`."""
  if "test_list" in problem:
    imports = "\n".join(problem.get("test_imports") or [])
    setup = problem.get("test_setup_code") or ""
    tests = "\n".join(problem["test_list"])
  elif "assertion" in problem:
    imports, setup, tests = "", "", problem["assertion"]
  else:
    raise ValueError(f"MBPP problem {problem.get('task_id', '?')!r} has neither 'test_list' "
                     "(MBPP, sanitized MBPP) nor 'assertion' (MBPP+)")
  return "\n\n".join(part for part in (imports, code, setup, tests) if part.strip()) + "\n"
