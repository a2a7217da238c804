"""Code: HumanEval, MBPP (sanitized, test split) and MBPP+. N workers sample a solution; the
reply's code runs with the benchmark's tests in the sandbox (`sandbox.run_program`)."""

from __future__ import annotations

from psynth.eval import answers, programs, readers, sandbox
from psynth.eval.tasks.base import BuildOptions, Item, Score, Task, work_orders

REPLY = "Reply with the complete Python code in one ```python block."
LIMITS = sandbox.Limits(timeout_s=10.0, cpu_s=10, memory_mb=1024)


def _run(program: str) -> bool:
  return sandbox.run_program(program, LIMITS).passed


def score_humaneval(reply: str, item: Item) -> Score:
  code = answers.extract_code(reply)
  return Score(code, _run(programs.humaneval_program(item.gold, code)))


def score_mbpp(reply: str, item: Item) -> Score:
  code = answers.extract_code(reply)
  return Score(code, _run(programs.mbpp_program(item.gold, code)))


def humaneval(opts: BuildOptions) -> list[Item]:
  keep = ("task_id", "prompt", "entry_point", "test")
  return [Item(r["task_id"],
               f"Complete this Python function.\n```python\n{r['prompt']}```\n{REPLY}",
               work_orders(opts.num_branches), {k: r[k] for k in keep})
          for r in readers.read_humaneval(opts.root)]


def mbpp(opts: BuildOptions) -> list[Item]:
  keep = ("task_id", "test_list", "test_imports")
  return [Item(f"mbpp-{r['task_id']}", f"{r['prompt'].strip()}\nYour code should pass this test:\n"
                                       f"{r['test_list'][0]}\n{REPLY}",
               work_orders(opts.num_branches), {k: r.get(k) for k in keep})
          for r in readers.read_mbpp("sanitized", opts.root)]


def mbpp_plus(opts: BuildOptions) -> list[Item]:
  keep = ("task_id", "assertion")
  # The prompt is a docstring holding the task and one example assert.
  return [Item(r["task_id"], f"{r['prompt'].strip().strip(chr(34)).strip()}\nName the function "
                             f"`{r['entry_point']}`. {REPLY}",
               work_orders(opts.num_branches), {k: r[k] for k in keep})
          for r in readers.read_mbpp("plus", opts.root)]


TASKS = (Task("humaneval", "sample", humaneval, score_humaneval, answer_format=REPLY),
         Task("mbpp", "sample", mbpp, score_mbpp, answer_format=REPLY),
         Task("mbpp_plus", "sample", mbpp_plus, score_mbpp, answer_format=REPLY))
