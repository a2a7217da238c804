"""Batched autoregressive generation: bucketed prefill, then a jitted decode step with a donated cache."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.cache.kv_cache import KVCache
from psynth.model.transformer import Transformer, forward, init_cache
from psynth.synthesis.sampling import sample

log = logging.getLogger(__name__)
MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
  """The power of two >= n (and >= minimum): prompt lengths share a few compiled shapes."""
  return max(minimum, 1 << max(0, n - 1).bit_length())


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
  ttft_s: float  # prefill + first token, on the host clock
  total_s: float


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


class Engine:
  """Compiled prefill/decode for one model. Compiled shapes are cached by jit per bucket."""

  def __init__(self, model: Transformer):
    self.config = model.config
    self.graphdef, self.state = nnx.split(model)

    def prefill(state, tokens, positions, cache, key, temperature, top_p, greedy):
      logits, cache = forward(nnx.merge(self.graphdef, state), tokens, positions, cache,
                              last_only=True)
      return sample(logits[:, 0], key, temperature, top_p, greedy=greedy), cache

    def decode(state, tokens, positions, cache, key, temperature, top_p, greedy):
      logits, cache = forward(nnx.merge(self.graphdef, state), tokens, positions, cache)
      return sample(logits[:, -1], key, temperature, top_p, greedy=greedy), cache

    self.prefill = jax.jit(prefill, static_argnames="greedy", donate_argnums=3)
    self.decode = jax.jit(decode, static_argnames="greedy", donate_argnums=3)

  def check_fits(self, prompt_len: int, max_new_tokens: int) -> int:
    """Validates the prompt against the context; returns the max_new_tokens that fit."""
    ctx = self.config.max_position_embeddings
    if prompt_len >= ctx:
      raise ValueError(f"prompt of {prompt_len} tokens does not fit the model's context of "
                       f"{ctx} tokens (at most {ctx - 1} prompt tokens leave room to answer)")
    if prompt_len + max_new_tokens > ctx:
      log.warning("max_new_tokens=%d cut to %d to stay within the %d-token context",
                  max_new_tokens, ctx - prompt_len, ctx)
    return min(max_new_tokens, ctx - prompt_len)

  def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
               eos_ids: Sequence[int] = ()) -> Generation:
    """Generates for a batch of token-id prompts of any lengths (right-padded into one bucket)."""
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ValueError("every prompt needs at least one token")
    lengths = [len(p) for p in prompts]
    max_new = self.check_fits(max(lengths), sampling.max_new_tokens)
    t0 = time.perf_counter()
    T = bucket(max(lengths))
    tokens, positions = right_pad(prompts, T)
    cache = init_cache(self.config, len(prompts), bucket(T + max_new))
    greedy = sampling.temperature == 0
    temp = jnp.float32(max(sampling.temperature, 1e-6))
    top_p = jnp.float32(sampling.top_p)
    key = jax.random.key(sampling.seed)
    key, sub = jax.random.split(key)
    tok, cache = self.prefill(self.state, tokens, positions, cache, sub, temp, top_p, greedy)
    first = np.asarray(tok)  # blocks: the first token is on the host
    ttft = time.perf_counter() - t0
    out = self._decode_loop(first, np.asarray(lengths), cache, max_new, key, temp, top_p,
                            greedy, set(eos_ids))
    return Generation(out, ttft, time.perf_counter() - t0)

  def _decode_loop(self, first: np.ndarray, next_pos: np.ndarray, cache: KVCache, max_new: int,
                   key, temp, top_p, greedy: bool, eos: set[int]) -> list[list[int]]:
    B = len(first)
    out: list[list[int]] = [[] for _ in range(B)]
    done = np.zeros(B, bool)
    tok = first
    for step in range(max_new):
      for b in range(B):
        if not done[b]:
          if int(tok[b]) in eos:
            done[b] = True
          else:
            out[b].append(int(tok[b]))
      if done.all() or step == max_new - 1:
        break
      # Finished rows keep stepping as padding (position -1): the batch shape never changes.
      pos = np.where(done, -1, next_pos + step).astype(np.int32)[:, None]
      key, sub = jax.random.split(key)
      tok, cache = self.decode(self.state, tok[:, None].astype(np.int32), pos, cache, sub, temp,
                               top_p, greedy)
      tok = np.asarray(tok)
    return out
