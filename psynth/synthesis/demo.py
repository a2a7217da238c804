"""The built-in fan-out example: workers read one document each, then text vs cache synthesis."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.pipeline import fan_out, synthesize
from psynth.synthesis.synthesize import Adapter

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

QUESTION = "Where was the Aurora telescope assembled, and which university operates it?"
DOCUMENTS = [
    "The Aurora telescope was assembled in 2019 in a workshop in Tromso, Norway, by a team of "
    "thirty engineers who worked through the polar night.",
    "Since 2021 the Aurora telescope has been operated by the astronomy department of the "
    "University of Bergen, which schedules its observing time.",
    "Aurora's main mirror is 4.2 metres wide. It was cast and polished in Jena, Germany, and "
    "shipped north by sea.",
    "The nearby Polaris observatory is run by a private foundation and is open to tourists in "
    "summer; it has no connection to Aurora.",
]


def run(loaded: Loaded, *, question: str = QUESTION, documents=DOCUMENTS,
        mode: str = "shared_start", worker_tokens: int = 64, answer_tokens: int = 48,
        adapter: Adapter | None = None) -> str:
  """Runs the example and returns a printable side-by-side report (times are warm runs)."""
  branches = fan_out(loaded, question, documents,
                     sampling=SamplingConfig(max_new_tokens=worker_tokens))
  sampling = SamplingConfig(max_new_tokens=answer_tokens)
  results, compile_s = {}, {}
  for method in ("text", "cache"):
    first = synthesize(loaded, question, method=method, prepared=branches, sampling=sampling,
                       mode=mode, adapter=adapter)
    results[method] = synthesize(loaded, question, method=method, prepared=branches,
                                 sampling=sampling, mode=mode, adapter=adapter)
    compile_s[method] = first.ttft_s - results[method].ttft_s
  wrap = lambda s: textwrap.fill(s, 96, initial_indent="    ", subsequent_indent="    ")
  lines = [f"Question: {question}", "",
           f"{len(documents)} workers, batched, {branches.worker_s:.1f} s including compile "
           f"(branch lengths {branches.lengths.tolist()} tokens):"]
  for i, text in enumerate(results["cache"].branch_texts):
    lines += [f"  worker {i + 1}:", wrap(text)]
  label = "cache" if adapter else "cache (naive: no trained adapter)"
  for method, name in (("text", "text synthesis"), ("cache", label)):
    r = results[method]
    lines += ["", f"{name}: time to first token {r.ttft_s * 1000:.0f} ms "
                  f"(first call +{compile_s[method]:.1f} s compile)", wrap(r.answer)]
  ratio = results["text"].ttft_s / results["cache"].ttft_s
  lines += ["", f"cache path first token {ratio:.1f}x sooner than text synthesis"]
  return "\n".join(lines)
