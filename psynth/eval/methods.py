"""The methods on one item: the workers' fan-out (once per item) and each method's reply.

  single  one model, no workers: the question with all the evidence at once (`Item.context`)
  text    the workers' texts pasted into the synthesizer prompt, base model
  naive   the workers' caches re-encoded and merged; no mapper, no LoRA
  psynth  the same caches through the trained mapper, prefilled with the LoRA on

Workers run once per item (batched `Engine.generate` on `prompts.worker`, the prompts
`fan_out` uses; unlike `fan_out` a worker that stops at once does not fail the item) and
their texts are saved; every synthesis method then reads caches rebuilt from those texts
(`fan_out(outputs=...)`), on a first run and a resumed one alike, so both give the same
replies. The synthesizer decodes greedily.

TTFT leaves out XLA compilation: a call that compiled something (a new length bucket) is run
once more and the warm time kept; the greedy reply does not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import zlib
from typing import TYPE_CHECKING

import jax

from psynth.synthesis import chat, prompts
from psynth.synthesis.fanout import Branches
from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.pipeline import fan_out, synthesize
from psynth.synthesis.synthesize import Adapter
from psynth.eval.tasks.base import Item, Task

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

METHODS = ("single", "text", "naive", "psynth")
SYNTHESIS = {"text": "text", "naive": "naive", "psynth": "cache"}  # ours -> pipeline method
EMPTY_BRANCH = "(no notes)"  # stands in for a worker that stopped at once
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def _count_compiles():
  count = [0]

  def listen(event, duration, **kw):
    del duration, kw
    count[0] += event == _COMPILE_EVENT

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def warm(fn):
  """fn() once more if its first call compiled anything: its result has warm timings."""
  with _count_compiles() as compiled:
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


def worker_texts(loaded: Loaded, task: Task, item: Item, sampling: SamplingConfig) -> dict:
  """Runs the item's N workers (batched, base model): their texts, token counts and time."""
  tok = loaded.tokenizer
  t0 = time.perf_counter()
  ids = [chat.encode(tok, prompts.worker(item.question, b, task.system)) for b in item.branches]
  gen = loaded.engine.generate(ids, sampling, loaded.eos_ids)
  texts = [tok.decode(t, skip_special_tokens=True) for t in gen.tokens]
  return {"texts": [t if t.strip() else EMPTY_BRANCH for t in texts],
          "worker_tokens": [len(t) for t in gen.tokens], "worker_s": time.perf_counter() - t0}


def branches_from_texts(loaded: Loaded, task: Task, item: Item, texts,
                        min_slots: int = 0) -> Branches:
  """The saved worker texts encoded as branch caches of at least `min_slots` slots each (the
  workers' budget: every item's caches then share a few compiled shapes)."""
  return fan_out(loaded, item.question, item.branches, outputs=texts, system=task.system,
                 min_branch_slots=min_slots)


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


def reply(loaded: Loaded, task: Task, item: Item, method: str, branches: Branches | None,
          sampling: SamplingConfig, *, mode: str = "shared_start",
          adapter: Adapter | None = None) -> Reply:
  """One method's reply to one item (`branches` unused by single)."""
  tok = loaded.tokenizer
  if method == "single":
    ids = chat.encode(tok, single_messages(task, item))
    gen = warm(lambda: loaded.engine.generate([ids], sampling, loaded.eos_ids))
    return Reply(tok.decode(gen.tokens[0], skip_special_tokens=True), gen.ttft_s, gen.total_s,
                 len(ids), len(gen.tokens[0]))
  if method not in SYNTHESIS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  if method == "psynth" and adapter is None:
    raise ValueError("method 'psynth' needs a trained adapter; got none")
  r = warm(lambda: synthesize(loaded, item.question, method=SYNTHESIS[method], prepared=branches,
                              system=task.system, answer_format=task.answer_format,
                              sampling=sampling, mode=mode, adapter=adapter))
  prompt = (prompts.synth_text(item.question, r.branch_texts, task.system, task.answer_format)
            if method == "text" else
            prompts.synth_cache(item.question, task.system, task.answer_format))
  # The pipeline returns text: its token count is that of the re-encoded reply.
  return Reply(r.answer, r.ttft_s, r.total_s, len(chat.encode(tok, prompt)),
               len(tok(r.answer, add_special_tokens=False)["input_ids"]))
