"""Synthesis from branches: by cache (re-encode, map, merge, LoRA-on prefill) or by text.

`cache_prefill` is the whole cache path up to the first token as one jitted pure function:
re-encode every branch's positions, calibrate with the mapper, merge the branches into one
cache row, and prefill the synthesizer prompt after the merged span (LoRA on when an adapter
is given). The first two happen lazily, per layer, as the prefill reads the branches
(`cache.lazy`); the merged cache decoding needs is written once the first token is out. The
text path pastes the branch texts into the prompt and prefills it on the base model, reusing
the workers' shared prefix cache.
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

from psynth.cache import lazy
from psynth.cache import mapper as mapper_lib
from psynth.cache import ops
from psynth.cache.kv_cache import KVCache
from psynth.model import rope
from psynth.model.transformer import Transformer, forward, init_cache
from psynth.synthesis.fanout import Branches
from psynth.synthesis.generate import Engine, SamplingConfig, bucket, right_pad
from psynth.synthesis.prompts import common_prefix_len

MODES = ("shared_start", "after_prefix", "sequential")
METHODS = ("cache", "naive", "text")


@dataclasses.dataclass
class Adapter:
  """What synthesis adds to the base model: a cache mapper and whether the LoRA is on."""

  mapper: mapper_lib.CacheMapper | None = None
  lora: bool = False


def branch_starts(lengths_xN, mode: str, prefix_len: int = 0):
  """Start position of every branch `[..., N]` and of the synthesizer prompt `[...]`.

  `lengths_xN`: branch lengths, numpy (inference, on the host) or traced (training, per
  example of a batch); the result is of the same kind.
  """
  xp = np if isinstance(lengths_xN, np.ndarray) else jnp
  if mode == "shared_start":
    return xp.zeros_like(lengths_xN), lengths_xN.max(axis=-1)
  if mode == "after_prefix":
    return xp.full_like(lengths_xN, prefix_len), prefix_len + lengths_xN.max(axis=-1)
  if mode == "sequential":
    ends = xp.cumsum(lengths_xN, axis=-1)
    return ends - lengths_xN, ends[..., -1]
  raise ValueError(f"position mode {mode!r} unknown; choose from {MODES}")


@functools.partial(jax.jit, static_argnames=("graphdef", "mapper_graphdef", "lora"))
def _first_logits(graphdef, state, mapper_graphdef, mapper_state, branches: KVCache, lengths_N,
                  starts_N, prefix: KVCache | None, tokens, positions, *, lora: bool):
  """Synthesizer prefill on the branches re-encoded, mapped and merged lazily, layer by layer
  (`cache.lazy`): (last logits [1, V], the prompt's own K/V as a T-slot cache)."""
  model: Transformer = nnx.merge(graphdef, state)
  inv_freq, _ = rope.inv_freq_and_scale(model.config.rope, model.config.head_dim)
  coefs = None
  if mapper_graphdef is not None:
    coefs = mapper_lib.coefficients(nnx.merge(mapper_graphdef, mapper_state), lengths_N[None])
  merged, view = lazy.merged_view(branches, starts_N, jnp.asarray(inv_freq), coefs, prefix)
  logits, own = forward(model, tokens, positions, merged, last_only=True, lora=lora,
                        cache_view=view, write=False)
  return logits[:, 0], own


@functools.partial(jax.jit, static_argnames=("rope_cfg", "head_dim", "mapper_graphdef",
                                             "extra_slots"))
def _decode_cache(rope_cfg, head_dim, mapper_graphdef, mapper_state, branches: KVCache,
                  lengths_N, starts_N, prefix: KVCache | None, own: KVCache, *,
                  extra_slots: int) -> KVCache:
  """The merged cache decoding continues from: re-encoded, mapped branches (after the prefix),
  then the prompt's K/V, then `extra_slots` empty slots; its `end` is after the prompt."""
  inv_freq, _ = rope.inv_freq_and_scale(rope_cfg, head_dim)
  moved = ops.reposition(branches, starts_N, jnp.asarray(inv_freq))
  if mapper_graphdef is not None:
    moved = mapper_lib.apply(nnx.merge(mapper_graphdef, mapper_state), moved, lengths_N[None])
  merged = ops.merge_rows(moved, branches.batch)
  if prefix is not None:  # after_prefix: the real shared prefix sits before the branches
    merged = ops.concat_slots(prefix, merged)
  return ops.extend(ops.concat_slots(merged, own), extra_slots)


def cache_prefill(engine: Engine, branches: Branches, synth_ids: Sequence[int], *,
                  mode: str = "shared_start", adapter: Adapter | None = None,
                  max_new_tokens: int = 1) -> tuple[jax.Array, Callable[[], KVCache], int]:
  """The cache path up to the first token: (last logits [1, V], a function building the
  cache to decode from, next position). Call that function after reading the first token:
  the merged cache is not needed before (`cache.lazy`)."""
  adapter = adapter or Adapter()
  lengths = branches.lengths
  prefix, prefix_len, prompt = None, 0, list(synth_ids)
  if mode == "after_prefix":
    if branches.prefix is None:
      raise ValueError("after_prefix needs worker prompts with a shared prefix; they have none")
    prefix_len = common_prefix_len([branches.prefix_tokens, prompt])
    prefix = ops.truncate(branches.prefix, prefix_len)
    prompt = prompt[prefix_len:]
  starts, synth_start = branch_starts(np.asarray(lengths, np.int64), mode, prefix_len)
  synth_start = int(synth_start)
  ctx = engine.config.max_position_embeddings
  if synth_start + len(prompt) + max_new_tokens > ctx:
    raise ValueError(f"merged branches end at position {synth_start}; with the {len(prompt)}-"
                     f"token synthesizer prompt and {max_new_tokens} new tokens that exceeds "
                     f"the {ctx}-token context (use fewer or shorter branches, or shared_start)")
  Tb = bucket(len(prompt))
  tokens, positions = right_pad([prompt], Tb, start=synth_start)
  m_graphdef, m_state = (nnx.split(adapter.mapper) if adapter.mapper is not None else (None, None))
  lengths_N, starts_N = jnp.asarray(lengths), jnp.asarray(starts, jnp.int32)
  logits, own = _first_logits(engine.graphdef, engine.state, m_graphdef, m_state, branches.cache,
                              lengths_N, starts_N, prefix, tokens, positions, lora=adapter.lora)
  cfg = engine.config
  decode_cache = lambda: _decode_cache(
      cfg.rope, cfg.head_dim, m_graphdef, m_state, branches.cache, lengths_N, starts_N, prefix,
      own, extra_slots=bucket(max_new_tokens))
  return logits, decode_cache, synth_start + len(prompt)


def text_prefill_parts(branches: Branches, text_ids: Sequence[int]):
  """The text prompt split at the prefix it shares with the workers (whose cache is reused)."""
  n = common_prefix_len([branches.prefix_tokens, list(text_ids)]) if branches.prefix_tokens else 0
  n = min(n, len(text_ids) - 1)
  return n, list(text_ids[n:])


@dataclasses.dataclass
class Synthesis:
  answer_ids: list[int]
  ttft_s: float  # from branches ready to the first synthesizer token on the host
  total_s: float


def synthesize_from_branches(engine: Engine, branches: Branches, method: str,
                             prompt_ids: Sequence[int], sampling: SamplingConfig,
                             eos_ids: Sequence[int] = (), *, mode: str = "shared_start",
                             adapter: Adapter | None = None) -> Synthesis:
  """Runs one synthesis method on ready branches. `prompt_ids`: that method's prompt."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  t0 = time.perf_counter()
  if method == "text":
    n, rest = text_prefill_parts(branches, prompt_ids)
    engine.check_fits(len(prompt_ids), 1)
    Rb = bucket(len(rest))
    if n:
      cache = ops.extend(ops.truncate(branches.prefix, n), Rb + bucket(sampling.max_new_tokens))
    else:
      cache = init_cache(engine.config, 1, Rb + bucket(sampling.max_new_tokens))
    tokens, positions = right_pad([rest], Rb, start=n)
    gen = engine.continue_from(cache, tokens, positions, [len(prompt_ids)], sampling, eos_ids,
                               t0=t0, attend_cache=n > 0)
    return Synthesis(gen.tokens[0], gen.ttft_s, gen.total_s)
  adapter = adapter if method == "cache" else None
  logits, decode_cache, next_pos = cache_prefill(
      engine, branches, prompt_ids, mode=mode, adapter=adapter,
      max_new_tokens=sampling.max_new_tokens)
  first = np.asarray(jnp.argmax(logits, -1)) if sampling.temperature == 0 else _sample_first(
      logits, sampling)
  gen = engine.decode_from(first, decode_cache, [next_pos], sampling, eos_ids, t0=t0,
                           lora=bool(adapter and adapter.lora))
  return Synthesis(gen.tokens[0], gen.ttft_s, gen.total_s)


def _sample_first(logits, sampling: SamplingConfig) -> np.ndarray:
  from psynth.synthesis.sampling import sample
  key = jax.random.key(sampling.seed)
  return np.asarray(sample(logits, key, jnp.float32(sampling.temperature),
                           jnp.float32(sampling.top_p), greedy=False))
