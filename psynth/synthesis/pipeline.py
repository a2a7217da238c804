"""`synthesize`: the whole fan-out step in one call, on a loaded model, for one question or many.

    result = psynth.synthesize(loaded, question, ["doc 1 ...", "doc 2 ..."], method="psynth")
    results = psynth.synthesize_batch(loaded, questions, [[...], [...]], method="psynth")

`branches` are the workers' inputs (evidence chunks, sub-tasks); workers run on them,
batched (every worker of every question in one generate call), with the adapter off. Or
pass `outputs` (finished worker texts made elsewhere) and they are encoded as if the workers
had written them. `prepared` reuses branches already built by `fan_out`/`fan_out_batch`, so
several methods can be compared on the very same branches. Synthesis of many questions runs
as rows of one batch, each with its own merged branch cache, prompt and stop.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

from psynth.synthesis import chat, prompts
from psynth.synthesis.fanout import Branches, encode_branches, run_workers
from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.synthesize import Adapter, METHODS, synthesize_from_branches

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

WORKER_SAMPLING = SamplingConfig(max_new_tokens=96)


@dataclasses.dataclass
class SynthesisResult:
  answer: str
  branch_texts: list[str]
  method: str
  ttft_s: float  # branches ready -> first synthesizer token (of the whole batch)
  total_s: float
  worker_s: float


def _per_example(name: str, values, n: int) -> list:
  if values is None:
    return [None] * n
  if len(values) != n:
    raise ValueError(f"{n} questions but {len(values)} {name}; give one per question")
  return list(values)


def fan_out_batch(loaded: Loaded, questions: Sequence[str],
                  branches: Sequence[Sequence[str]] | None = None, *,
                  outputs: Sequence[Sequence[str]] | None = None,
                  system: str = prompts.DEFAULT_SYSTEM,
                  sampling: SamplingConfig = WORKER_SAMPLING,
                  min_branch_slots: int = 0) -> Branches:
  """Runs the workers of every question at once on `branches[q]`, or encodes finished
  `outputs[q]` (each in at least `min_branch_slots` cache slots); returns all branches."""
  if not questions:
    raise ValueError("need at least one question; got zero")
  tok = loaded.tokenizer
  inputs = _per_example("branch lists", branches, len(questions))
  outs = _per_example("output lists", outputs, len(questions))
  worker_ids, out_ids, counts = [], [], []
  for q, (question, ins, done) in enumerate(zip(questions, inputs, outs)):
    if done is not None:
      ins = list(ins) if ins is not None else [""] * len(done)
      if len(ins) != len(done):
        raise ValueError(f"question {q}: {len(ins)} branch inputs but {len(done)} outputs")
      for i, o in enumerate(done):
        ids = tok(o.strip(), add_special_tokens=False)["input_ids"]
        if not ids:
          raise ValueError(f"question {q}: branch output {i} is empty ({o!r}); every branch "
                           "needs some text")
        out_ids.append(ids)
    elif not ins:
      raise ValueError(f"question {q}: need at least one branch; got zero (pass branch inputs "
                       "or outputs)")
    for i, b in enumerate(ins):
      if done is None and not b.strip():
        raise ValueError(f"question {q}: branch {i} is empty; every branch needs some input")
      worker_ids.append(chat.encode(tok, prompts.worker(question, b, system)))
    counts.append(len(ins))
  if out_ids and len(out_ids) != len(worker_ids):
    raise ValueError("give outputs for every question or for none")
  if out_ids:
    return encode_branches(loaded.engine, worker_ids, out_ids, min_branch_slots, counts)
  return run_workers(loaded.engine, worker_ids, sampling, loaded.eos_ids, counts)


def fan_out(loaded: Loaded, question: str, branches: Sequence[str] | None = None, *,
            outputs: Sequence[str] | None = None, system: str = prompts.DEFAULT_SYSTEM,
            sampling: SamplingConfig = WORKER_SAMPLING, min_branch_slots: int = 0) -> Branches:
  """`fan_out_batch` for one question."""
  return fan_out_batch(loaded, [question], None if branches is None else [branches],
                       outputs=None if outputs is None else [outputs], system=system,
                       sampling=sampling, min_branch_slots=min_branch_slots)


def synthesize_batch(loaded: Loaded, questions: Sequence[str],
                     branches: Sequence[Sequence[str]] | None = None, *,
                     outputs: Sequence[Sequence[str]] | None = None, method: str = "psynth",
                     adapter: Adapter | None = None, mode: str = "shared_start",
                     system: str = prompts.DEFAULT_SYSTEM,
                     answer_format: str | Sequence[str | None] | None = None,
                     worker_sampling: SamplingConfig = WORKER_SAMPLING,
                     sampling: SamplingConfig = SamplingConfig(max_new_tokens=96),
                     prepared: Branches | None = None) -> list[SynthesisResult]:
  """One fan-out step for each question, all batched; one result per question.

  method: "psynth" (re-encode + mapper + merge + LoRA-on prefill, with `adapter` or else the
  adapter `loaded` came with; with neither it is the naive path), "naive" (re-encoding only,
  no adapter) or "text" (branch texts pasted into the prompt, base model, shared prefix
  reused). `answer_format` (one, or one per question; e.g. "Answer with the letter of the
  correct option.") replaces the default "in one or two sentences".
  """
  if method not in METHODS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  tok = loaded.tokenizer
  br = prepared or fan_out_batch(loaded, questions, branches, outputs=outputs, system=system,
                                 sampling=worker_sampling)
  if len(br.counts) != len(questions):
    raise ValueError(f"{len(questions)} questions but the prepared branches hold "
                     f"{len(br.counts)} examples")
  formats = (list(answer_format) if isinstance(answer_format, (list, tuple)) else
             [answer_format] * len(questions))
  _per_example("answer formats", formats, len(questions))
  texts = [tok.decode(t, skip_special_tokens=True) for t in br.tokens]
  per_q = [[texts[r] for r in rows] for rows in br.rows()]
  if method == "text":
    ids = [chat.encode(tok, prompts.synth_text(q, t, system, f))
           for q, t, f in zip(questions, per_q, formats)]
  else:
    ids = [chat.encode(tok, prompts.synth_cache(q, system, f)) for q, f in zip(questions, formats)]
  if method == "psynth" and adapter is None:
    adapter = loaded.adapter
  out = synthesize_from_branches(loaded.engine, br, method, ids, sampling, loaded.eos_ids,
                                 mode=mode, adapter=adapter)
  return [SynthesisResult(tok.decode(s.answer_ids, skip_special_tokens=True), t, method,
                          s.ttft_s, s.total_s, br.worker_s) for s, t in zip(out, per_q)]


def synthesize(loaded: Loaded, question: str, branches: Sequence[str] | None = None, *,
               outputs: Sequence[str] | None = None, method: str = "psynth",
               adapter: Adapter | None = None, mode: str = "shared_start",
               system: str = prompts.DEFAULT_SYSTEM, answer_format: str | None = None,
               worker_sampling: SamplingConfig = WORKER_SAMPLING,
               sampling: SamplingConfig = SamplingConfig(max_new_tokens=96),
               prepared: Branches | None = None) -> SynthesisResult:
  """`synthesize_batch` for one question."""
  return synthesize_batch(
      loaded, [question], None if branches is None else [branches],
      outputs=None if outputs is None else [outputs], method=method, adapter=adapter, mode=mode,
      system=system, answer_format=answer_format, worker_sampling=worker_sampling,
      sampling=sampling, prepared=prepared)[0]


def generate(loaded: Loaded, prompt_or_messages, *, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
  """Answers one prompt (a string or chat messages) and returns the text of the answer."""
  sampling = SamplingConfig(max_new_tokens, temperature, top_p, seed)
  ids = chat.encode(loaded.tokenizer, prompt_or_messages)
  out = loaded.engine.generate([ids], sampling, loaded.eos_ids)
  return loaded.tokenizer.decode(out.tokens[0], skip_special_tokens=True)
