"""The methods on a batch of items: the workers' fan-out (once per item) and each method's replies.

  single  one model, no workers: the question with all the evidence at once (`Item.context`)
  text    the workers' texts pasted into the synthesizer prompt, base model
  naive   the workers' caches re-encoded and merged; no mapper, no LoRA
  psynth  the same caches through the trained mapper, prefilled with the LoRA on

Workers run once per item and their texts are saved: "chunk" workers of a whole batch in one
generate call (greedy), "sample" workers item by item (each item's own sampling seed, so a
text does not depend on what else is in the batch); "fixed" tasks have no workers, their
branches are the texts. Every synthesis method then reads caches rebuilt from those texts
(`fan_out_batch(outputs=...)`), on a first run and a resumed one alike, and answers every
item of the batch as one row of a batched synthesis. The synthesizer decodes greedily.

A "likelihood" task (`Task.score_by`) generates nothing: every method scores each option as
the start of its reply, from the same prompt and branches (`option_replies`).

TTFT is the batch's (its rows share a prefill) and leaves out XLA compilation: a call that
compiled something is run once more and the warm time kept; the greedy replies do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import string
import time
import zlib
from typing import TYPE_CHECKING, Sequence

import jax
import numpy as np

from psynth.eval.tasks.base import Item, Task
from psynth.synthesis.adapter import Adapter
from psynth.synthesis import chat, prompts
from psynth.synthesis.fanout import Branches
from psynth.synthesis.generate import SamplingConfig, bucket
from psynth.synthesis.likelihood import continuation_logprobs
from psynth.synthesis.pipeline import fan_out_batch, synthesize_batch

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

METHODS = ("single", "text", "naive", "psynth")
SYNTHESIS = ("text", "naive", "psynth")  # the methods that synthesize from branches
EMPTY_BRANCH = "(no notes)"  # stands in for a worker that stopped at once
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@contextlib.contextmanager
def compiles():
  """Yields [executables, seconds, loaded] for the block (all grow): XLA executables it needed,
  the seconds they took, and how many of them the persistent compilation cache served (JAX
  times a load as a compile; executables - loaded were compiled)."""
  stats = [0, 0.0, 0]

  def duration(event, duration, **kw):
    del kw
    if event == _COMPILE_EVENT:
      stats[0] += 1
      stats[1] += duration

  def hit(event, **kw):
    del kw
    if event == _CACHE_HIT_EVENT:
      stats[2] += 1

  jax.monitoring.register_event_duration_secs_listener(duration)
  jax.monitoring.register_event_listener(hit)
  try:
    yield stats
  finally:
    jax.monitoring.unregister_event_duration_listener(duration)
    jax.monitoring.unregister_event_listener(hit)


def warm(fn):
  """fn() once more if its first call compiled anything: its result has warm timings."""
  with compiles() as compiled:
    out = fn()
  return fn() if compiled[0] else out


def worker_sampling(task: Task, item: Item, max_new_tokens: int, temperature: float,
                    top_p: float, seed: int) -> SamplingConfig:
  """"sample" tasks: temperature sampling, seeded per item (the same whatever the sharding);
  "chunk" tasks: greedy."""
  if task.branching == "chunk":
    return SamplingConfig(max_new_tokens=max_new_tokens)
  item_seed = zlib.crc32(f"{seed}/{task.name}/{item.id}".encode()) & 0x7FFFFFFF
  return SamplingConfig(max_new_tokens, temperature, top_p, item_seed)


def worker_texts(loaded: Loaded, task: Task, items: Sequence[Item],
                 samplings: Sequence[SamplingConfig]) -> list[dict]:
  """Runs the items' workers (base model): their texts, token counts and time, per item."""
  if task.branching == "fixed":
    return [{"texts": list(it.branches), "worker_tokens": [], "worker_s": 0.0} for it in items]
  tok = loaded.tokenizer
  ids = [[chat.encode(tok, prompts.worker(it.question, b, task.system)) for b in it.branches]
         for it in items]
  groups = ([list(range(len(items)))] if task.branching == "chunk" else
            [[i] for i in range(len(items))])  # sampled: each item with its own seed
  out: list[dict] = [{} for _ in items]
  for g in groups:
    t0 = time.perf_counter()
    gen = loaded.engine.generate([r for i in g for r in ids[i]], samplings[g[0]], loaded.eos_ids)
    dt = (time.perf_counter() - t0) / len(g)
    rows = iter(gen.tokens)
    for i in g:
      toks = [next(rows) for _ in ids[i]]
      texts = [tok.decode(t, skip_special_tokens=True) for t in toks]
      out[i] = {"texts": [t if t.strip() else EMPTY_BRANCH for t in texts],
                "worker_tokens": [len(t) for t in toks], "worker_s": dt}
  return out


def branches_from_texts(loaded: Loaded, task: Task, items: Sequence[Item], texts,
                        min_slots: int = 0) -> Branches:
  """The items' saved worker texts encoded as branch caches of at least `min_slots` slots
  each (every batch's caches then share a few compiled shapes)."""
  inputs = None if task.branching == "fixed" else [it.branches for it in items]
  return fan_out_batch(loaded, [it.question for it in items], inputs, outputs=texts,
                       system=task.system, min_branch_slots=min_slots)


def single_messages(task: Task, item: Item) -> list[dict]:
  docs = f"Documents:\n{item.context}\n\n" if item.context else ""
  return [{"role": "system", "content": task.system},
          {"role": "user", "content": f"Question: {item.question}\n\n{docs}Answer the question."
                                      + (f" {task.answer_format}" if task.answer_format else "")}]


@dataclasses.dataclass(frozen=True)
class Reply:
  prediction: str
  ttft_s: float  # single: prompt in -> first token; synthesis: branches ready -> first token
  total_s: float
  prompt_tokens: int  # the synthesizer's (or single model's) prompt
  answer_tokens: int


def replies(loaded: Loaded, task: Task, items: Sequence[Item], method: str,
            branches: Branches | None, sampling: SamplingConfig, *, mode: str = "shared_start",
            adapter: Adapter | None = None) -> list[Reply]:
  """One method's replies to a batch of items (`branches`: theirs; unused by single)."""
  if task.score_by == "likelihood":
    return option_replies(loaded, task, items, method, branches, mode=mode, adapter=adapter)
  tok = loaded.tokenizer
  count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
  if method == "single":
    ids = [chat.encode(tok, single_messages(task, it)) for it in items]
    gen = warm(lambda: loaded.engine.generate(ids, sampling, loaded.eos_ids))
    return [Reply(tok.decode(t, skip_special_tokens=True), gen.ttft_s, gen.total_s, len(i),
                  len(t)) for t, i in zip(gen.tokens, ids)]
  if method not in SYNTHESIS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  if method == "psynth" and adapter is None:
    raise ValueError("method 'psynth' needs a trained adapter; got none")
  questions = [it.question for it in items]
  rs = warm(lambda: synthesize_batch(
      loaded, questions, method=method, prepared=branches, system=task.system,
      answer_format=task.answer_format, sampling=sampling, mode=mode,
      adapter=adapter if method == "psynth" else None))
  out = []
  for q, r in zip(questions, rs):
    prompt = (prompts.synth_text(q, r.branch_texts, task.system, task.answer_format)
              if method == "text" else prompts.synth_cache(q, task.system, task.answer_format))
    # The pipeline returns text: its token count is that of the re-encoded reply.
    out.append(Reply(r.answer, r.ttft_s, r.total_s, len(chat.encode(tok, prompt)),
                     count(r.answer)))
  return out


def _method_prompts(loaded: Loaded, task: Task, items: Sequence[Item], method: str,
                    branches: Branches | None) -> list[list[int]]:
  """Each item's prompt for `method`, chat-encoded and ready for the assistant's reply."""
  tok = loaded.tokenizer
  if method == "single":
    return [chat.encode(tok, single_messages(task, it)) for it in items]
  if method == "text":
    texts = [[tok.decode(branches.tokens[r], skip_special_tokens=True) for r in rows]
             for rows in branches.rows()]
    return [chat.encode(tok, prompts.synth_text(it.question, t, task.system, task.answer_format))
            for it, t in zip(items, texts)]
  return [chat.encode(tok, prompts.synth_cache(it.question, task.system, task.answer_format))
          for it in items]


def option_replies(loaded: Loaded, task: Task, items: Sequence[Item], method: str,
                   branches: Branches | None, *, mode: str = "shared_start",
                   adapter: Adapter | None = None) -> list[Reply]:
  """"likelihood" tasks: every option of every item scored as the start of the reply, a short
  row per option after one prefill of its item's prompt (`psynth.synthesis.likelihood`); the
  reply is the letter of the option with the highest log-probability per character
  (lm-eval's `acc_norm`). TTFT: the batch's scoring time."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  if method == "psynth" and adapter is None:
    raise ValueError("method 'psynth' needs a trained adapter; got none")
  tok = loaded.tokenizer
  options = [list(it.gold["options"]) for it in items]
  heads = _method_prompts(loaded, task, items, method, branches)
  conts = [tok(o, add_special_tokens=False)["input_ids"] for opts in options for o in opts]
  counts = [len(o) for o in options]
  pad = bucket(len(conts), minimum=8) - len(conts)  # a few row counts compile, not one per batch
  conts += [conts[-1]] * pad
  counts[-1] += pad

  def score():
    t0 = time.perf_counter()
    lp = continuation_logprobs(loaded.engine, heads, conts, counts=counts, method=method,
                               branches=branches, mode=mode,
                               adapter=adapter if method == "psynth" else None)
    return lp, time.perf_counter() - t0

  lp, dt = warm(score)
  out, at = [], 0
  for h, opts in zip(heads, options):
    per_char = [lp[at + j] / max(len(o), 1) for j, o in enumerate(opts)]
    at += len(opts)
    out.append(Reply(string.ascii_uppercase[int(np.argmax(per_char))], dt, dt, len(h), 0))
  return out
