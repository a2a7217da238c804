"""`synthesize`: the whole fan-out step in one call, on a loaded model.

    result = psynth.synthesize(loaded, question, ["doc 1 ...", "doc 2 ..."], method="cache")

`branches` are the workers' inputs (evidence chunks, sub-tasks); workers run on them,
batched, with the adapter off. Or pass `outputs` (finished worker texts made elsewhere) and
they are encoded as if the workers had written them. `prepared` reuses branches already
built by `fan_out`, so several methods can be compared on the very same branches.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from psynth.loading import Loaded
from psynth.synthesis import chat, prompts
from psynth.synthesis.fanout import Branches, encode_branches, run_workers
from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.synthesize import Adapter, METHODS, synthesize_from_branches


@dataclasses.dataclass
class SynthesisResult:
  answer: str
  branch_texts: list[str]
  method: str
  ttft_s: float  # branches ready -> first synthesizer token (the workers' time is apart)
  total_s: float
  worker_s: float


def fan_out(loaded: Loaded, question: str, branches: Sequence[str] | None = None, *,
            outputs: Sequence[str] | None = None, system: str = prompts.DEFAULT_SYSTEM,
            sampling: SamplingConfig = SamplingConfig(max_new_tokens=96),
            min_branch_slots: int = 0) -> Branches:
  """Runs the workers on `branches`, or encodes finished `outputs` (each in at least
  `min_branch_slots` cache slots: `encode_branches`); returns the branches."""
  tok = loaded.tokenizer
  if outputs is not None:
    inputs = list(branches) if branches is not None else [""] * len(outputs)
    if len(inputs) != len(outputs):
      raise ValueError(f"{len(inputs)} branch inputs but {len(outputs)} outputs")
    worker_ids = [chat.encode(tok, prompts.worker(question, b, system)) for b in inputs]
    out_ids = [tok(o, add_special_tokens=False)["input_ids"] for o in outputs]
    return encode_branches(loaded.engine, worker_ids, out_ids, min_branch_slots)
  if not branches:
    raise ValueError("need at least one branch; got zero (pass branch inputs or outputs)")
  for i, b in enumerate(branches):
    if not b.strip():
      raise ValueError(f"branch {i} is empty; every branch needs some input")
  worker_ids = [chat.encode(tok, prompts.worker(question, b, system)) for b in branches]
  return run_workers(loaded.engine, worker_ids, sampling, loaded.eos_ids)


def synthesize(loaded: Loaded, question: str, branches: Sequence[str] | None = None, *,
               outputs: Sequence[str] | None = None, method: str = "cache",
               adapter: Adapter | None = None, mode: str = "shared_start",
               system: str = prompts.DEFAULT_SYSTEM, answer_format: str | None = None,
               worker_sampling: SamplingConfig = SamplingConfig(max_new_tokens=96),
               sampling: SamplingConfig = SamplingConfig(max_new_tokens=96),
               prepared: Branches | None = None) -> SynthesisResult:
  """One fan-out step: workers (or given outputs), then synthesis by `method`.

  method: "cache" (re-encode + mapper + merge + LoRA-on prefill; with no adapter that is the
  naive path), "naive" (re-encoding only, adapter ignored) or "text" (branch texts pasted
  into the prompt, base model, shared prefix reused). `answer_format` (e.g. "Answer with the
  letter of the correct option.") replaces the default "in one or two sentences".
  """
  if method not in METHODS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  tok = loaded.tokenizer
  br = prepared or fan_out(loaded, question, branches, outputs=outputs, system=system,
                           sampling=worker_sampling)
  texts = [tok.decode(t, skip_special_tokens=True) for t in br.tokens]
  if method == "text":
    ids = chat.encode(tok, prompts.synth_text(question, texts, system, answer_format))
  else:
    ids = chat.encode(tok, prompts.synth_cache(question, system, answer_format))
  s = synthesize_from_branches(loaded.engine, br, method, ids, sampling, loaded.eos_ids,
                               mode=mode, adapter=adapter)
  return SynthesisResult(tok.decode(s.answer_ids, skip_special_tokens=True), texts, method,
                         s.ttft_s, s.total_s, br.worker_s)
