"""Synthesis from branches, for one example or a batch of them: by cache or by text.

The cache path (`cache_prefill`, one jitted function up to the first token): each example's
branch caches are re-encoded in position, calibrated by the mapper and merged into one row
(`psynth.cache.reencode`, lazily, layer by layer, as the prefill reads them), and the
synthesizer prompt is prefilled after the merged span (LoRA on when an adapter is given);
the merged cache decoding needs is written once the first tokens are out. The text path
pastes the branch texts into the prompt and prefills it on the base model, reusing the
workers' shared prefix cache. A batch holds one row per example: ragged branch counts are
padded with empty branches (to a `branch_bucket`, so few shapes compile) and each row stops
on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.cache import ops, reencode
from psynth.model import rope
from psynth.model.kv_cache import KVCache
from psynth.model.transformer import Transformer, forward
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.fanout import Branches
from psynth.synthesis.generate import Engine, SamplingConfig, branch_bucket, bucket, right_pad
from psynth.synthesis.prompts import common_prefix_len
from psynth.synthesis.sampling import sample

METHODS = ("psynth", "naive", "text")


def branch_layout(branches: Branches) -> tuple[np.ndarray | None, np.ndarray]:
  """(row index `[B*N]` with -1 for padding, or None if the rows are already B x N;
  branch lengths `[B, N]`, 0 for padding). N: the most branches of any example, rounded up
  to a `branch_bucket` when examples differ (a bounded set of shapes)."""
  counts = branches.counts
  n_max = max(counts)
  if len(set(counts)) > 1:
    n_max = branch_bucket(n_max)
  lengths = branches.lengths
  idx = np.full((len(counts), n_max), -1, np.int32)
  for b, rows in enumerate(branches.rows()):
    idx[b, :len(rows)] = list(rows)
  lengths_BxN = np.where(idx >= 0, lengths[np.maximum(idx, 0)], 0).astype(np.int32)
  same = len(set(counts)) == 1
  return (None if same else idx.reshape(-1)), lengths_BxN


def _merge_inputs(mapper_graphdef, mapper_state, branches: KVCache, rows, lengths_BxN,
                  starts_BxN, rope_cfg, head_dim):
  """The pieces both halves of the cache path need: branch rows, rope frequencies, mapper."""
  if rows is not None:
    branches = ops.gather_rows(branches, rows)
  inv_freq, _ = rope.inv_freq_and_scale(rope_cfg, head_dim)
  mapper = None if mapper_graphdef is None else nnx.merge(mapper_graphdef, mapper_state)
  return branches, jnp.asarray(inv_freq), mapper


@functools.partial(jax.jit, static_argnames=("graphdef", "mapper_graphdef", "lora"))
def first_logits(graphdef, state, mapper_graphdef, mapper_state, branches: KVCache, rows,
                 lengths_BxN, starts_BxN, prefix: KVCache | None, tokens, positions, *,
                 lora: bool):
  """The synthesizer's cache prefill: the prompts on the branches re-encoded, mapped and
  merged lazily, layer by layer: (last logits [B, V], the prompts' own K/V as a T-slot
  cache). `rows`: `branch_layout`'s row index or None."""
  model: Transformer = nnx.merge(graphdef, state)
  cfg = model.config
  branches, inv_freq, mapper = _merge_inputs(mapper_graphdef, mapper_state, branches, rows,
                                             lengths_BxN, starts_BxN, cfg.rope, cfg.head_dim)
  if prefix is not None:
    prefix = ops.tile_rows(prefix, tokens.shape[0])
  merged, view = reencode.lazy_merge(branches, starts_BxN, inv_freq, mapper, lengths_BxN,
                                     prefix)
  logits, own = forward(model, tokens, positions, merged, last_only=True, lora=lora,
                        cache_view=view, write=False)
  return logits[:, 0], own


@functools.partial(jax.jit, static_argnames=("rope_cfg", "head_dim", "mapper_graphdef",
                                             "branch_slots", "extra_slots"))
def _decode_cache(rope_cfg, head_dim, mapper_graphdef, mapper_state, branches: KVCache, rows,
                  lengths_BxN, starts_BxN, prefix: KVCache | None, own: KVCache, *,
                  branch_slots: int, extra_slots: int) -> KVCache:
  """The merged cache decoding continues from: re-encoded, mapped branches (after the prefix)
  packed into `branch_slots` slots, then the prompts' K/V, then `extra_slots` empty slots;
  its `end` is after the prompts."""
  branches, inv_freq, mapper = _merge_inputs(mapper_graphdef, mapper_state, branches, rows,
                                             lengths_BxN, starts_BxN, rope_cfg, head_dim)
  merged = reencode.merge(branches, starts_BxN, inv_freq, mapper, lengths_BxN)
  # Every branch has the slots of the batch's longest; each decode step would read them all.
  merged = ops.pack_slots(merged, branch_slots)
  if prefix is not None:  # after_prefix: the real shared prefix sits before the branches
    merged = ops.concat_slots(ops.tile_rows(prefix, own.batch), merged)
  return ops.extend(ops.concat_slots(merged, own), extra_slots)


def _check_batch(branches: Branches, prompts: Sequence[Sequence[int]]) -> None:
  if len(prompts) != len(branches.counts):
    raise ValueError(f"{len(prompts)} synthesizer prompts for {len(branches.counts)} examples "
                     "of branches; give one prompt per example")
  for b, p in enumerate(prompts):
    if not p:
      raise ValueError(f"example {b}: the synthesizer prompt is empty")


def cache_prefill(engine: Engine, branches: Branches, prompts: Sequence[Sequence[int]], *,
                  mode: str = "shared_start", adapter: Adapter | None = None,
                  max_new_tokens: int = 1
                  ) -> tuple[jax.Array, Callable[[], KVCache], np.ndarray]:
  """The cache path up to the first token, one row per example: (last logits [B, V], a
  function building the cache to decode from, each row's next position [B]). Call that
  function after reading the first tokens: the merged cache is not needed before."""
  _check_batch(branches, prompts)
  reencode.check_mode(mode)
  adapter = adapter or Adapter()
  rows, lengths_BxN = branch_layout(branches)
  prefix, prefix_len, rest = None, 0, [list(p) for p in prompts]
  if mode == "after_prefix":
    if branches.prefix is None:
      raise ValueError("after_prefix needs worker prompts with a shared prefix; they have none")
    prefix_len = min(common_prefix_len([branches.prefix_tokens, list(p)]) for p in prompts)
    prefix = ops.truncate(branches.prefix, prefix_len)
    rest = [p[prefix_len:] for p in rest]
  starts_BxN, synth_start_B = reencode.branch_starts(lengths_BxN.astype(np.int64), mode,
                                                     prefix_len)
  ctx = engine.config.max_position_embeddings
  for b, (start, p) in enumerate(zip(synth_start_B.tolist(), rest)):
    if start + len(p) + max_new_tokens > ctx:
      raise ValueError(f"example {b}: merged branches end at position {start}; with the "
                       f"{len(p)}-token synthesizer prompt and {max_new_tokens} new tokens "
                       f"that exceeds the {ctx}-token context (use fewer or shorter branches, "
                       "or shared_start)")
  tokens, positions = right_pad(rest, bucket(max(map(len, rest))), start=synth_start_B)
  m_graphdef, m_state = (nnx.split(adapter.mapper) if adapter.mapper is not None else (None, None))
  args = (branches.cache, rows, jnp.asarray(lengths_BxN), jnp.asarray(starts_BxN, jnp.int32),
          prefix)
  with engine.placed():
    logits, own = _first_logits_in_groups(engine, (m_graphdef, m_state), adapter.lora, args,
                                          tokens, positions)
  cfg = engine.config
  # The most branch tokens of any row, up to a power of two (batches of one evaluation task
  # then share one or two decode shapes), at most N*S.
  most = int(lengths_BxN.sum(1).max())
  branch_slots = min(1 << max(most - 1, 1).bit_length(),
                     lengths_BxN.shape[1] * branches.cache.slots)

  def decode_cache():
    with engine.placed():
      return _decode_cache(cfg.rope, cfg.head_dim, m_graphdef, m_state, *args, own,
                           branch_slots=branch_slots, extra_slots=bucket(max_new_tokens))

  return logits, decode_cache, synth_start_B + np.array([len(p) for p in rest])


# Examples per call of the cache prefill when a batch holds a multiple of it: a 64-row call
# spills its activations out of the CPU's caches (11.7 s where four 16-row calls take 9.9 s,
# results/throughput_smollm2_135m.md); other batch sizes run whole (no new shapes).
PREFILL_ROWS = 16


def _first_logits_in_groups(engine: Engine, mapper, lora: bool, args, tokens, positions):
  """`first_logits` over the batch, in calls of `PREFILL_ROWS` examples when it divides the
  batch: (last logits [B, V], the prompts' own K/V [B rows])."""
  branches, rows, lengths_BxN, starts_BxN, prefix = args
  B = tokens.shape[0]
  call = functools.partial(first_logits, engine.graphdef, engine.state, *mapper, lora=lora)
  if B <= PREFILL_ROWS or B % PREFILL_ROWS:
    return call(*args, tokens, positions)
  N = lengths_BxN.shape[1]
  rows_BxN = (np.arange(B * N) if rows is None else rows).reshape(B, N)
  logits, own = [], []
  for b in range(0, B, PREFILL_ROWS):
    part = slice(b, b + PREFILL_ROWS)
    out = call(branches, rows_BxN[part].reshape(-1), lengths_BxN[part], starts_BxN[part],
               prefix, tokens[part], positions[part])
    logits.append(out[0])
    own.append(out[1])
  return jnp.concatenate(logits), ops.concat_rows(own)


def text_prefill_parts(branches: Branches, text_prompts: Sequence[Sequence[int]]):
  """(n, rests): the text prompts split after the n tokens all of them share with the workers'
  prefix (whose cache is reused), and what each row prefills after it. n = 0 (a plain
  prefill of the whole prompts) when reusing would not shorten the padded prefill: the rows
  would still pad to the same bucket, and attention would also read the prefix's slots."""
  n = 0
  if branches.prefix_tokens:
    n = min(common_prefix_len([branches.prefix_tokens, list(p)]) for p in text_prompts)
  n = min(n, min(map(len, text_prompts)) - 1)
  longest = max(map(len, text_prompts))
  if bucket(longest - n) == bucket(longest):
    n = 0
  return n, [list(p[n:]) for p in text_prompts]


@dataclasses.dataclass
class Synthesis:
  answer_ids: list[int]
  ttft_s: float  # from branches ready to the first synthesizer token on the host (whole batch)
  total_s: float


def synthesize_from_branches(engine: Engine, branches: Branches, method: str,
                             prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                             eos_ids: Sequence[int] = (), *, mode: str = "shared_start",
                             adapter: Adapter | None = None) -> list[Synthesis]:
  """Runs one synthesis method on ready branches, one row per example. `prompts`: each
  example's prompt for that method (`prompts.synth_text` for text, else `synth_cache`)."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  _check_batch(branches, prompts)
  t0 = time.perf_counter()
  B = len(prompts)
  if method == "text":
    n, rest = text_prefill_parts(branches, prompts)
    for b, p in enumerate(prompts):
      if len(p) >= engine.config.max_position_embeddings:
        raise ValueError(f"example {b}: the text synthesizer prompt has {len(p)} tokens; the "
                         f"context holds {engine.config.max_position_embeddings}")
    max_new = min(sampling.max_new_tokens,
                  engine.check_fits(max(map(len, prompts)), sampling.max_new_tokens))
    sampling = dataclasses.replace(sampling, max_new_tokens=max_new)
    if n:  # the prompt reads the workers' shared prefix, not an empty room after it
      tokens, positions = right_pad(rest, bucket(max(map(len, rest))), start=n)
      prefix = ops.tile_rows(ops.truncate(branches.prefix, n), B)
      gen = engine.continue_after(prefix, tokens, positions, [len(p) for p in prompts],
                                  sampling, eos_ids, t0=t0)
    else:  # a plain prefill of each whole prompt (in length groups, for many rows)
      gen = engine.generate(rest, sampling, eos_ids, t0=t0)
  else:
    adapter = adapter if method == "psynth" else None
    logits, decode_cache, next_pos = cache_prefill(
        engine, branches, prompts, mode=mode, adapter=adapter,
        max_new_tokens=sampling.max_new_tokens)
    first = (np.asarray(jnp.argmax(logits, -1)) if sampling.temperature == 0 else
             _sample_first(logits, sampling))
    gen = engine.decode_from(first, decode_cache, next_pos, sampling, eos_ids, t0=t0,
                             lora=bool(adapter and adapter.lora))
  return [Synthesis(t, gen.ttft_s, gen.total_s) for t in gen.tokens]


def _sample_first(logits, sampling: SamplingConfig) -> np.ndarray:
  key = jax.random.key(sampling.seed)
  return np.asarray(sample(logits, key, jnp.float32(sampling.temperature),
                           jnp.float32(sampling.top_p), greedy=False))
