"""The built-in fan-out example: workers read one document each, then text vs cache synthesis."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.pipeline import fan_out, synthesize

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
        mode: str = "shared_start", worker_max_new_tokens: int = 64, max_new_tokens: int = 48) -> str:
  """Runs the example and returns a printable side-by-side report (times are warm runs):
  text synthesis, the untrained cache path (naive) and, if `loaded` has an adapter, the
  trained one."""
  branches = fan_out(loaded, question, documents,
                     sampling=SamplingConfig(max_new_tokens=worker_max_new_tokens))
  sampling = SamplingConfig(max_new_tokens=max_new_tokens)
  methods = ("text", "naive") + (("psynth",) if loaded.adapter is not None else ())
  results, compile_s = {}, {}
  for method in methods:
    first = synthesize(loaded, question, method=method, prepared=branches, sampling=sampling,
                       mode=mode)
    results[method] = synthesize(loaded, question, method=method, prepared=branches,
                                 sampling=sampling, mode=mode)
    compile_s[method] = first.ttft_s - results[method].ttft_s
  wrap = lambda s: textwrap.fill(s, 96, initial_indent="    ", subsequent_indent="    ")
  lines = [f"Question: {question}", "",
           f"{len(documents)} workers, batched, {branches.worker_s:.1f} s including compile "
           f"(branch lengths {branches.lengths.tolist()} tokens):"]
  for i, text in enumerate(results["text"].branch_texts):
    lines += [f"  worker {i + 1}:", wrap(text)]
  names = {"text": "text synthesis (branch texts in the prompt)",
           "naive": "cache, untrained (naive: re-encoded caches, no adapter)",
           "psynth": f"cache, trained (psynth: mapper + LoRA from {loaded.adapter_path})"}
  for method in methods:
    r = results[method]
    lines += ["", f"{names[method]}: time to first token {r.ttft_s * 1000:.0f} ms "
                  f"(first call +{compile_s[method]:.1f} s compile)", wrap(r.answer)]
  best = results.get("psynth", results["naive"])
  lines += ["", f"cache path first token {results['text'].ttft_s / best.ttft_s:.1f}x sooner than "
                "text synthesis"]
  if loaded.adapter is None:
    lines += ["(no trained adapter loaded: pass --adapter=default for the shipped one)"]
  return "\n".join(lines)
