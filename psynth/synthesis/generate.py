"""Batched autoregressive generation: bucketed prefill, then a jitted decode step with a donated cache.

`Engine` is the one place that compiles model calls for inference. Workers, the text
baseline and the cache synthesizer all prefill and decode through it; the only switches are
whether a prefill reads the cache (`attend_cache`) and whether the LoRA is on (`lora`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from psynth import sharding
from psynth.cache.ops import concat_rows, concat_slots, extend, first_rows, gather_rows
from psynth.model.kv_cache import KVCache
from psynth.model.transformer import Transformer, forward, init_cache
from psynth.synthesis.sampling import sample

log = logging.getLogger(__name__)
MIN_BUCKET = 16
LONG_STEP = 256  # = attention.ATTN_BLOCK: a long prefill's padding stays under one block


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
  """n rounded up to a quarter-octave step (..., 64, 80, 96, 112, 128, 160, ...), >= minimum,
  the step at most LONG_STEP (..., 2048, 2304, 2560, ...).

  Lengths then share a few compiled shapes (4 per doubling) while padding wastes at most 25%
  of a prefill (a plain power of two wastes up to 50%, which a time to first token feels).
  Past 2,048 tokens a quarter octave would pad a 2,251-token prompt to 2,560 (+14% projection
  work, +30% attention); one attention block (256) is the step the prefill's cost follows.
  """
  if n <= minimum:
    return minimum
  step = min(1 << max(0, (n - 1).bit_length() - 3), LONG_STEP)
  return -(-n // step) * step


def branch_bucket(n: int) -> int:
  """The branch count a batch pads n to (with empty branches): 1, 2, 3, 4, 6, 8, 12, 16, 24,
  ... (half-octave steps), so few shapes compile and at most a third of the rows are empty."""
  if n <= 4:
    return max(n, 1)
  p = 1 << (n - 1).bit_length()  # the power of two >= n
  return p * 3 // 4 if n <= p * 3 // 4 else p


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 128
  temperature: float = 0.0  # 0: greedy
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens}; must be >= 1")
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature}; must be >= 0 (0 means greedy)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p}; must be in (0, 1]")


@dataclasses.dataclass
class Generation:
  tokens: list[list[int]]  # new tokens per row, stopping token excluded
  ttft_s: float  # prefill + first token on the host
  total_s: float
  cache: KVCache | None = None  # with every returned token's K/V, if asked for (`keep_cache`)


def _knobs(sampling: SamplingConfig):
  """Temperature and top_p as traced scalars (changing them does not recompile)."""
  return jnp.float32(max(sampling.temperature, 1e-6)), jnp.float32(sampling.top_p)


# A batch of more rows than this is prefilled in groups of rows of similar length, each padded
# to its own bucket (one bucket for all pads every row to the longest), then decoded as one
# batch. Smaller batches (an evaluation's) stay one prefill, one shape.
GROUP_ROWS = 32
# ... and a group holds at most this many (padded) tokens, halving its rows until it does: on
# CPU a prefill's activations then stay in cache. The default model prefills 8 x 320 tokens
# at 145 GFLOP/s, 32 x 320 at 129 (`results/throughput_smollm2_135m.md`).
GROUP_TOKENS = 2560


def length_groups(lengths: Sequence[int], size: int, tokens: int | None = None
                  ) -> list[np.ndarray]:
  """Row indices sorted by length (stable), in groups of `size` rows, or of fewer (halved)
  where `size` rows of the group's bucket would exceed `tokens`; one group if they all fit
  in `size` rows."""
  if len(lengths) <= size:
    return [np.arange(len(lengths))]
  order = np.argsort(np.asarray(lengths), kind="stable")
  longest = np.asarray(lengths)[order]
  groups, i = [], 0
  while i < len(order):
    n = size
    while tokens and n > 1 and n * bucket(int(longest[min(i + n, len(order)) - 1])) > tokens:
      n //= 2
    groups.append(order[i:i + n])
    i += n
  return groups


def pad_rows(rows: list) -> list:
  """Rows padded to a bucket with copies of row 0 (dropped after): a few compiled shapes
  whatever the number of rows."""
  return rows + [rows[0]] * (bucket(len(rows), minimum=1) - len(rows))


def right_pad(rows: Sequence[Sequence[int]], length: int, start: Sequence[int] | int = 0):
  """tokens `[B, length]` and positions `[B, length]` (start + i; -1 marks padding)."""
  B = len(rows)
  tokens = np.zeros((B, length), np.int32)
  positions = np.full((B, length), -1, np.int32)
  starts = np.broadcast_to(np.asarray(start, np.int32), (B,))
  for b, row in enumerate(rows):
    tokens[b, :len(row)] = row
    positions[b, :len(row)] = starts[b] + np.arange(len(row))
  return tokens, positions


def prefill_step(graphdef):
  """The jitted prefill of a model (`nnx.split`'s graphdef): `(state, tokens, positions, cache,
  key, temperature, top_p, *, greedy, attend_cache, lora) -> (next tokens [B], last logits
  [B, V], cache)`, the cache donated. Arguments may be arrays or, to compile ahead of time
  (`psynth.aot`), shapes with shardings."""

  def prefill(state, tokens, positions, cache, key, temperature, top_p, greedy, attend_cache,
              lora):
    logits, cache = forward(nnx.merge(graphdef, state), tokens, positions, cache,
                            last_only=True, attend_cache=attend_cache, lora=lora)
    return sample(logits[:, 0], key, temperature, top_p, greedy=greedy), logits[:, 0], cache

  return jax.jit(prefill, static_argnames=("greedy", "attend_cache", "lora"), donate_argnums=3)


def own_prefill_step(graphdef):
  """The jitted prefill that reads `cache` but leaves it alone: `(state, tokens, positions,
  cache, key, temperature, top_p, *, greedy, lora) -> (next tokens [B], a T-slot cache of
  the tokens' own K/V)`. A long prompt on a short prefix then scores only the prefix's slots,
  not the empty room a written cache would also carry."""

  def prefill(state, tokens, positions, cache, key, temperature, top_p, greedy, lora):
    logits, own = forward(nnx.merge(graphdef, state), tokens, positions, cache,
                          last_only=True, lora=lora, write=False)
    return sample(logits[:, 0], key, temperature, top_p, greedy=greedy), own

  return jax.jit(prefill, static_argnames=("greedy", "lora"))


@functools.partial(jax.jit, static_argnames="extra_slots")
def _room_after(prefix: KVCache, own: KVCache, extra_slots: int) -> KVCache:
  """prefix's slots, then own's, then `extra_slots` empty ones; writing resumes after own's."""
  return extend(concat_slots(prefix, own), extra_slots)


@functools.partial(jax.jit, static_argnames=("end", "slots"))
def _room(cache: KVCache, end: int, slots: int) -> KVCache:
  """A prefilled cache widened to `slots` slots, writing resuming at `end` (the slots between
  its own and `end` stay empty): a group's prefill joins a batch prefilled to `end`."""
  return extend(cache, slots - cache.slots).replace(end=jnp.int32(end))


# A decode batch of more rows than this shrinks as its rows finish: once at most half of them
# are left, it goes on with them (padded to a power of two >= COMPACT_ROWS with finished rows).
# Replies end at very different lengths (the throughput bench's text method: 12 to 48 tokens,
# 26.5 on average), and past ~16 rows a step is compute-bound, its cost growing with its rows;
# below, it mostly reads the weights. Batches of up to 16 rows (an evaluation's) never shrink
# and compile no more shapes.
COMPACT_ROWS = 16


def compacted_size(batch: int, unfinished: int) -> int:
  """The row count a decode batch of `batch` rows goes on with when `unfinished` are left
  (`batch` itself: no change)."""
  if batch <= COMPACT_ROWS or 2 * unfinished > batch:
    return batch
  return max(COMPACT_ROWS, 1 << max(0, unfinished - 1).bit_length())


_take_rows = jax.jit(gather_rows)

# Decoding runs on the cache stored per layer (`KVCache.per_layer`: a step reads each layer's
# slots where they are instead of copying them out of a stacked array); one copy each way.
_per_layer = jax.jit(KVCache.per_layer)
_stacked = jax.jit(KVCache.stacked)


def decode_step(graphdef):
  """The jitted decode step: `(state, tokens [B, 1], positions, cache, key, temperature,
  top_p, *, greedy, lora) -> (next tokens [B], cache)`, the cache donated."""

  def decode(state, tokens, positions, cache, key, temperature, top_p, greedy, lora):
    logits, cache = forward(nnx.merge(graphdef, state), tokens, positions, cache, lora=lora)
    return sample(logits[:, -1], key, temperature, top_p, greedy=greedy), cache

  return jax.jit(decode, static_argnames=("greedy", "lora"), donate_argnums=3)


class Engine:
  """Compiled prefill/decode for one model. jit caches one executable per shape bucket.

  `mesh`: run on it with the training's logical axis rules (`psynth.sharding`): weights
  tensor-parallel (placed here, in place), KV caches over KV heads and, where the row count
  divides, rows over the data axes. Caches come from `new_cache`; calls run under `placed()`.
  """

  def __init__(self, model: Transformer, mesh: Mesh | None = None,
               rules: Sequence[tuple] = sharding.DEFAULT_RULES):
    self.config = model.config
    self.mesh, self.rules = mesh, tuple(rules)
    if mesh is not None:
      tensor = mesh.shape.get("tensor", 1)
      if model.config.num_kv_heads % tensor or model.config.num_heads % tensor:
        raise ValueError(f"a tensor axis of {tensor} devices does not divide the model's "
                         f"{model.config.num_heads} heads and {model.config.num_kv_heads} KV "
                         "heads; choose a tensor size dividing both")
      sharding.shard_params(model, mesh, self.rules)
    self.graphdef, self.state = nnx.split(model)
    self.prefill = prefill_step(self.graphdef)
    self.decode = decode_step(self.graphdef)
    self.own_prefill = own_prefill_step(self.graphdef)

  def placed(self):
    """The context every call of this engine's functions runs in: its mesh, if any."""
    if self.mesh is None:
      return contextlib.nullcontext()
    return sharding.use_mesh(self.mesh, self.rules)

  def new_cache(self, batch: int, slots: int) -> KVCache:
    """An empty cache laid out for this engine (sharded on its mesh)."""
    cache = init_cache(self.config, batch, slots)
    return cache if self.mesh is None else sharding.shard_cache(cache, self.mesh, self.rules)

  def check_fits(self, prompt_len: int, max_new_tokens: int) -> int:
    """Validates a prompt's last position against the context; returns the max_new that fits."""
    ctx = self.config.max_position_embeddings
    if prompt_len >= ctx:
      raise ValueError(f"prompt of {prompt_len} tokens does not fit the model's context of "
                       f"{ctx} tokens (at most {ctx - 1} prompt tokens leave room to answer)")
    if prompt_len + max_new_tokens > ctx:
      log.warning("max_new_tokens=%d cut to %d to stay within the %d-token context",
                  max_new_tokens, ctx - prompt_len, ctx)
    return min(max_new_tokens, ctx - prompt_len)

  def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
               eos_ids: Sequence[int] = (), *, t0: float | None = None) -> Generation:
    """Generates for a batch of token-id prompts of any lengths: right-padded into one bucket,
    or, past `GROUP_ROWS` rows, prefilled in groups of similar length (same tokens)."""
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ValueError("every prompt needs at least one token")
    lengths = np.array([len(p) for p in prompts])
    max_new = self.check_fits(int(lengths.max()), sampling.max_new_tokens)
    t0 = time.perf_counter() if t0 is None else t0
    sampling = dataclasses.replace(sampling, max_new_tokens=max_new)
    T = bucket(int(lengths.max()))
    groups = length_groups(lengths, GROUP_ROWS, GROUP_TOKENS)
    if len(groups) == 1:
      tokens, positions = right_pad(prompts, T)
      return self.continue_from(self.new_cache(len(prompts), T + bucket(max_new)), tokens,
                                positions, lengths, sampling, eos_ids, t0=t0,
                                attend_cache=False)
    key, sub = jax.random.split(jax.random.key(sampling.seed))  # as `continue_from` splits
    first, cache = self._prefill_groups(prompts, groups, T, T + bucket(max_new), sub, sampling)
    return self.decode_from(first, cache, lengths, sampling, eos_ids, t0=t0, key=key)

  def _prefill_groups(self, prompts, groups, T: int, slots: int, key, sampling):
    """Each group of rows prefilled in its own bucket, put back in row order as one batch's
    cache (`slots` slots, writing resuming at T, the batch's bucket): (first tokens [B] on
    the host, cache). The first tokens are drawn once from the whole batch's logits."""
    logits, caches = [], []
    for g in groups:
      rows = pad_rows([prompts[i] for i in g])
      Tg = bucket(max(len(r) for r in rows))
      with self.placed():
        _, lg, cache = self.prefill(self.state, *right_pad(rows, Tg),
                                    self.new_cache(len(rows), Tg), key, *_knobs(sampling), True,
                                    False, False)
        logits.append(lg[:len(g)])
        caches.append(_room(first_rows(cache, len(g)), T, slots))
    back = np.argsort(np.concatenate(groups))
    with self.placed():
      first = sample(jnp.concatenate(logits)[back], key, *_knobs(sampling),
                     greedy=sampling.temperature == 0)
      return np.asarray(first), gather_rows(concat_rows(caches), back)

  def continue_from(self, cache: KVCache, tokens, positions, next_pos, sampling: SamplingConfig,
                    eos_ids: Sequence[int] = (), *, t0: float | None = None,
                    attend_cache: bool = True, lora: bool = False,
                    keep_cache: bool = False) -> Generation:
    """Prefills `tokens` on top of `cache`, then decodes; row b's answer starts at next_pos[b].

    The cache needs room for the tokens and `max_new_tokens` more. With `keep_cache`, one
    last step writes the final token's K/V too, so the returned cache holds every answer
    token (what a branch cache is made of).
    """
    t0 = time.perf_counter() if t0 is None else t0
    greedy = sampling.temperature == 0
    key, sub = jax.random.split(jax.random.key(sampling.seed))
    with self.placed():
      tok, _, cache = self.prefill(self.state, tokens, positions, cache, sub, *_knobs(sampling),
                                   greedy, attend_cache, lora)
    return self.decode_from(np.asarray(tok), cache, next_pos, sampling, eos_ids, t0=t0,
                            key=key, lora=lora, keep_cache=keep_cache)

  def continue_after(self, prefix: KVCache, tokens, positions, next_pos,
                     sampling: SamplingConfig, eos_ids: Sequence[int] = (), *,
                     t0: float | None = None, lora: bool = False) -> Generation:
    """`continue_from` for a long prompt after a short cached prefix (the text synthesizer):
    the prefill reads the prefix only and writes nothing; the cache decoding continues from
    (the prefix, the prompt's K/V, room for `max_new_tokens`) is assembled after the first
    token. Same keys, same tokens as `continue_from` on a cache with room after the prefix."""
    t0 = time.perf_counter() if t0 is None else t0
    key, sub = jax.random.split(jax.random.key(sampling.seed))
    with self.placed():
      tok, own = self.own_prefill(self.state, tokens, positions, prefix, sub, *_knobs(sampling),
                                  sampling.temperature == 0, lora)

    def cache():
      with self.placed():
        return _room_after(prefix, own, bucket(sampling.max_new_tokens))

    return self.decode_from(np.asarray(tok), cache, next_pos, sampling, eos_ids, t0=t0,
                            key=key, lora=lora)

  def decode_from(self, first: np.ndarray, cache, next_pos, sampling: SamplingConfig,
                  eos_ids: Sequence[int] = (), *, t0: float, key=None, lora: bool = False,
                  keep_cache: bool = False) -> Generation:
    """Decodes after a prefill that produced `first` (on the host: the time to first token).

    `cache`: a KVCache, or a function building it, called once the first token is out (and
    only if a second one is needed)."""
    ttft = time.perf_counter() - t0
    greedy = sampling.temperature == 0
    temp, top_p = _knobs(sampling)
    key = jax.random.key(sampling.seed + 1) if key is None else key
    tok = np.asarray(first)
    out: list[list[int]] = [[] for _ in range(len(tok))]
    row = np.arange(len(tok))  # the batch's rows: which of `out` each one is
    done = np.zeros(len(tok), bool)
    eos = set(eos_ids)
    next_pos = np.asarray(next_pos, np.int32)
    for step in range(sampling.max_new_tokens):
      for b in np.flatnonzero(~done):
        if int(tok[b]) in eos:
          done[b] = True
        else:
          out[row[b]].append(int(tok[b]))
      last = step == sampling.max_new_tokens - 1
      if done.all() or (last and not keep_cache):
        break
      key, sub = jax.random.split(key)
      if callable(cache):
        cache = cache()
      n = len(tok) if keep_cache else compacted_size(len(tok), int((~done).sum()))
      if n < len(tok):  # the unfinished rows first, then finished ones as padding
        keep = np.concatenate([np.flatnonzero(~done), np.flatnonzero(done)])[:n]
        tok, done, next_pos, row = tok[keep], done[keep], next_pos[keep], row[keep]
        with self.placed():
          cache = _take_rows(cache, keep)
      # Finished rows step as padding (position -1) until the batch shrinks.
      pos = np.where(done, -1, next_pos + step).astype(np.int32)[:, None]
      with self.placed():
        cache = _per_layer(cache) if not cache.is_per_layer else cache
        tok, cache = self.decode(self.state, tok[:, None].astype(np.int32), pos, cache, sub,
                                 temp, top_p, greedy, lora)
      tok = np.asarray(tok)
      if last:
        break  # that step only wrote the final tokens' K/V (keep_cache)
    if keep_cache and cache.is_per_layer:
      with self.placed():
        cache = _stacked(cache)
    return Generation(out, ttft, time.perf_counter() - t0, cache if keep_cache else None)

  def fill_cache(self, cache: KVCache, tokens, positions, *, attend_cache: bool = True,
                 lora: bool = False) -> KVCache:
    """Prefill only: `cache` with the K/V of `tokens` written (nothing is fetched to the host,
    so the call returns before the device is done)."""
    key = jax.random.key(0)
    with self.placed():
      _, _, cache = self.prefill(self.state, tokens, positions, cache, key, jnp.float32(1),
                                 jnp.float32(1), True, attend_cache, lora)
    return cache
