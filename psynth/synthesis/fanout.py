"""Worker fan-out: workers batched on the base model, their answers' K/V kept as branch caches.

One call serves one example (N workers) or many (`counts`: branches per example, the rows
of all examples in order). The token prefix all worker prompts share is prefilled once
(batch 1) and tiled to every row; each worker then prefills its own part and decodes. A branch cache holds the K/V of the
generated tokens only, at their absolute positions |p_i| + j. Finished outputs (texts made
elsewhere) take the same route without decoding: they are prefilled after their prompts.

Slot layout of the worker cache: [prefix (bucketed) | own prompt parts | branch tokens].
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from psynth.cache import ops
from psynth.model.kv_cache import KVCache
from psynth.synthesis import generate
from psynth.synthesis.generate import Engine, SamplingConfig, bucket, pad_rows, right_pad
from psynth.synthesis.prompts import common_prefix_len


@dataclasses.dataclass
class Branches:
  tokens: list[list[int]]  # R rows: o_i, without the stop token
  cache: KVCache  # [layers, R, slots, ...]: o_i's K/V at absolute positions |p_i| + j
  prompt_lens: np.ndarray  # [R] |p_i|
  prefix: KVCache | None  # batch 1: the worker prompts' shared prefix (reused by text synthesis)
  prefix_tokens: list[int]
  worker_s: float  # wall time of the fan-out
  counts: tuple[int, ...] = ()  # branches of each example, in row order; () = one example

  def __post_init__(self):
    self.counts = tuple(self.counts) or (len(self.tokens),)
    if sum(self.counts) != len(self.tokens) or min(self.counts) < 1:
      raise ValueError(f"branch counts {self.counts} do not split {len(self.tokens)} rows into "
                       "examples of at least one branch each")

  @property
  def lengths(self) -> np.ndarray:
    return np.array([len(t) for t in self.tokens], np.int32)

  def rows(self) -> list[range]:
    """The rows of each example."""
    ends = np.cumsum(self.counts).tolist()
    return [range(e - n, e) for e, n in zip(ends, self.counts)]


def _shared_prefix(prompts: Sequence[Sequence[int]]) -> tuple[int, int]:
  """(P, its bucket): the tokens every prompt shares, leaving each at least one of its own."""
  P = max(min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1), 0)
  return P, (bucket(P) if P else 0)


def _prefix_and_cache(engine: Engine, prompts: Sequence[Sequence[int]], tail_slots: int):
  """Prefills the shared prefix once; returns (P, Pb, prefix cache, N-row cache, own parts)."""
  P, Pb = _shared_prefix(prompts)
  own = [list(p[P:]) for p in prompts]
  Ob = bucket(max(len(o) for o in own))
  cache = engine.new_cache(1, Pb + Ob + tail_slots)
  if P:
    cache = engine.fill_cache(cache, *right_pad([prompts[0][:P]], Pb), attend_cache=False)
  prefix = ops.take_slots(cache, 0, Pb) if P else None
  return P, Pb, Ob, prefix, ops.tile_rows(cache, len(prompts)), own


def run_workers(engine: Engine, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                eos_ids: Sequence[int] = (), counts: Sequence[int] = ()) -> Branches:
  """Runs one worker per prompt, batched, and keeps what they generated as branch caches.
  `counts`: branches per example when the prompts are several examples' (default: one)."""
  if not prompts:
    raise ValueError("need at least one branch; got zero")
  t0 = time.perf_counter()
  lens = np.array([len(p) for p in prompts], np.int32)
  max_new = engine.check_fits(int(lens.max()), sampling.max_new_tokens)
  sampling = dataclasses.replace(sampling, max_new_tokens=max_new)
  P, Pb, Ob, prefix, cache, own = _prefix_and_cache(engine, prompts, max_new)
  tokens, positions = right_pad(own, Ob, start=P)
  gen = engine.continue_from(cache, tokens, positions, lens, sampling, eos_ids,
                             attend_cache=P > 0, keep_cache=True)
  if any(len(t) == 0 for t in gen.tokens):
    empty = [i for i, t in enumerate(gen.tokens) if not t]
    raise ValueError(f"worker(s) {empty} produced an empty branch (stopped at once); "
                     "change their prompts or sampling")
  branch = ops.take_slots(gen.cache, Pb + Ob, max_new)
  return Branches(gen.tokens, branch, lens, prefix, list(prompts[0][:P]),
                  time.perf_counter() - t0, tuple(counts))


# A batch of more than `generate.GROUP_ROWS` branch rows has its outputs prefilled in groups of
# rows of similar length (at most `generate.GROUP_TOKENS` padded tokens a group), each in its
# own bucket (at least min_slots); worker prompts are prefilled once each, whatever the group
# (an example's branches often share one). The throughput bench's 64 examples (192 rows,
# min_slots 64): 36,864 padded tokens in one prefill, 18,944 in groups of 32 rows
# (results/throughput_smollm2_135m.md).
def encode_branches(engine: Engine, prompts: Sequence[Sequence[int]],
                    outputs: Sequence[Sequence[int]], min_slots: int = 0,
                    counts: Sequence[int] = ()) -> Branches:
  """Branch caches for finished outputs, as if worker i had generated outputs[i] after prompts[i].

  `min_slots`: give every branch at least this many cache slots (the rest invalid), so that
  outputs of varying lengths share one compiled shape downstream (an evaluation passes the
  workers' token budget). `counts`: branches per example, as in `run_workers`."""
  if not outputs:
    raise ValueError("need at least one branch; got zero")
  if len(prompts) != len(outputs):
    raise ValueError(f"{len(prompts)} worker prompts but {len(outputs)} outputs")
  for i, o in enumerate(outputs):
    if len(o) == 0:
      raise ValueError(f"branch {i} is empty; every branch needs at least one token")
  too_long = [i for i, (p, o) in enumerate(zip(prompts, outputs))
              if len(p) + len(o) >= engine.config.max_position_embeddings]
  if too_long:
    raise ValueError(f"branch {too_long[0]}: its worker prompt + output "
                     f"({len(prompts[too_long[0]]) + len(outputs[too_long[0]])} tokens) does "
                     f"not fit the {engine.config.max_position_embeddings}-token context")
  t0 = time.perf_counter()
  lens = np.array([len(p) for p in prompts], np.int32)
  slots = max(bucket(max(len(o) for o in outputs)), min_slots)
  P, Pb, Ob, prefix, prompt_cache, prompt_row = _prompt_caches(engine, prompts)
  groups = generate.length_groups([len(o) for o in outputs], generate.GROUP_ROWS,
                                  generate.GROUP_TOKENS)
  parts = [_encode_outputs(engine, prompt_cache, prompt_row[g], [outputs[i] for i in g],
                           lens[g], Pb + Ob, slots, min_slots) for g in groups]
  if len(parts) == 1:
    branch = parts[0]
  else:
    order = np.concatenate(groups)
    branch = ops.gather_rows(ops.concat_rows(parts), np.argsort(order))
  branch = jax.block_until_ready(branch)
  return Branches([list(o) for o in outputs], branch, lens, prefix, list(prompts[0][:P]),
                  time.perf_counter() - t0, tuple(counts))


def _prompt_caches(engine: Engine, prompts: Sequence[Sequence[int]]):
  """Each distinct worker prompt prefilled once, after the prefix all of them share:
  (P, Pb, Ob, prefix cache or None, `[layers, U, Pb + Ob, ...]` cache, each prompt's row in it)."""
  P, Pb = _shared_prefix(prompts)
  prefix = None
  if P:
    prefix = engine.fill_cache(engine.new_cache(1, Pb), *right_pad([prompts[0][:P]], Pb),
                               attend_cache=False)
  distinct: dict[tuple, int] = {}
  prompt_row = np.array([distinct.setdefault(tuple(p[P:]), len(distinct)) for p in prompts])
  own = pad_rows([list(o) for o in distinct])
  Ob = bucket(max(len(o) for o in own))
  if prefix is None:
    cache = engine.new_cache(len(own), Ob)
  else:
    with engine.placed():
      cache = _gathered_rows(prefix, np.zeros(len(own), np.int32), Ob)
  cache = engine.fill_cache(cache, *right_pad(own, Ob, start=P), attend_cache=P > 0)
  return P, Pb, Ob, prefix, cache, prompt_row


def _encode_outputs(engine: Engine, prompt_cache: KVCache, prompt_row, outputs, lens,
                    start: int, slots: int, min_prefill: int) -> KVCache:
  """One group's branch caches `[layers, rows, slots, ...]`: its outputs prefilled after their
  prompts' cached rows (whose slots end at `start`) in the bucket of its longest, at least
  `min_prefill` (min_slots: an evaluation's batches then share one compiled prefill)."""
  R = len(outputs)
  outputs, rows = pad_rows(list(outputs)), pad_rows(list(prompt_row))
  lens = np.asarray(pad_rows(list(lens)), np.int32)
  Gb = max(bucket(max(len(o) for o in outputs)), min_prefill)
  with engine.placed():
    cache = _gathered_rows(prompt_cache, np.asarray(rows, np.int32), Gb)
  cache = engine.fill_cache(cache, *right_pad(outputs, Gb, start=lens))
  branch = ops.first_rows(ops.take_slots(cache, start, Gb), R)
  if Gb < slots:  # a group of shorter outputs: empty slots up to the batch's branch length
    branch = ops.extend(branch, slots - Gb).replace(end=jnp.int32(slots))
  return branch


@functools.partial(jax.jit, static_argnames="extra")
def _gathered_rows(cache: KVCache, rows_R, extra: int) -> KVCache:
  """Rows `rows_R` of `cache`, `extra` empty slots after each (writing resumes there)."""
  return ops.extend(ops.gather_rows(cache, rows_R), extra)
