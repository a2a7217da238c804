"""Given continuations scored by their log-probability after a prompt, by every method: how a
small model answers multiple choice above chance (each option's text as the reply's start).

    lp_B = continuation_logprobs(engine, prompts, continuations, method="psynth",
                                 branches=branches, adapter=adapter)

  single  prompt + continuation on the base model, nothing before it
  text    the same after the workers' shared prefix (the text synthesizer's prompt)
  naive   the branch caches re-encoded and merged, then prompt + continuation
  psynth  the same through the mapper, with the LoRA on
One prefill per row and no decoding; only the continuation's logits are formed (`logits_at`),
and reduced to one sum per row inside the jitted call.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.cache import ops, reencode
from psynth.model.transformer import forward, init_cache
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.fanout import Branches
from psynth.synthesis.generate import Engine, bucket, right_pad
from psynth.synthesis.synthesize import _merge_inputs, branch_layout, text_prefill_parts

METHODS = ("single", "text", "naive", "psynth")


def _sums(logits_BxJxV, targets_BxJ, mask_BxJ) -> jax.Array:
  """Each row's summed log-probability of its targets where `mask`: `[B]`."""
  lp = jax.nn.log_softmax(logits_BxJxV, axis=-1)
  picked = jnp.take_along_axis(lp, targets_BxJ[..., None], axis=-1)[..., 0]
  return jnp.where(mask_BxJ, picked, 0.0).sum(-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "attend_cache"))
def _plain(graphdef, state, cache, tokens, positions, at, targets, mask, *, attend_cache):
  logits, _ = forward(nnx.merge(graphdef, state), tokens, positions, cache, logits_at=at,
                      attend_cache=attend_cache, write=False)
  return _sums(logits, targets, mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "mapper_graphdef", "lora"))
def _merged(graphdef, state, mapper_graphdef, mapper_state, branches, rows, lengths_BxN,
            starts_BxN, tokens, positions, at, targets, mask, *, lora):
  model = nnx.merge(graphdef, state)
  cfg = model.config
  branches, inv_freq, mapper = _merge_inputs(mapper_graphdef, mapper_state, branches, rows,
                                             lengths_BxN, starts_BxN, cfg.rope, cfg.head_dim)
  merged, view = reencode.lazy_merge(branches, starts_BxN, inv_freq, mapper, lengths_BxN)
  logits, _ = forward(model, tokens, positions, merged, logits_at=at, lora=lora,
                      cache_view=view, write=False)
  return _sums(logits, targets, mask)


def _layout(heads: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], starts):
  """tokens/positions of head + continuation per row (right-padded to a bucket), and the
  indices, targets and mask `[B, J]` of the logits that predict each continuation token."""
  rows = [list(h) + list(c) for h, c in zip(heads, continuations)]
  tokens, positions = right_pad(rows, bucket(max(map(len, rows))), start=starts)
  J = bucket(max(map(len, continuations)))
  at, targets = np.zeros((len(rows), J), np.int32), np.zeros((len(rows), J), np.int32)
  mask = np.zeros((len(rows), J), bool)
  for b, (h, c) in enumerate(zip(heads, continuations)):
    at[b, :len(c)] = len(h) - 1 + np.arange(len(c))  # logits at token i predict token i + 1
    targets[b, :len(c)], mask[b, :len(c)] = c, True
  return tokens, positions, at, targets, mask


def _check(engine: Engine, prompts, continuations, starts) -> None:
  if len(prompts) != len(continuations):
    raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations; give one "
                     "continuation per prompt")
  ctx = engine.config.max_position_embeddings
  for b, (p, c, s) in enumerate(zip(prompts, continuations, starts)):
    if not p or not c:
      raise ValueError(f"row {b}: the prompt and the continuation need a token each; got "
                       f"{len(p)} and {len(c)}")
    if s + len(p) + len(c) > ctx:
      raise ValueError(f"row {b}: {s + len(p) + len(c)} positions exceed the {ctx}-token "
                       "context")


def continuation_logprobs(engine: Engine, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *, method: str = "single",
                          branches: Branches | None = None, adapter: Adapter | None = None,
                          mode: str = "shared_start") -> np.ndarray:
  """log p(continuation | prompt [, branches]) summed over the continuation's tokens, `[B]`.
  `prompts`: each row's prompt for `method` (chat-encoded, ready for the assistant);
  `branches`: one example per row (text, naive, psynth)."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  if method != "single" and (branches is None or len(branches.counts) != len(prompts)):
    got = "none" if branches is None else f"{len(branches.counts)} examples"
    raise ValueError(f"method {method!r} needs the branches of {len(prompts)} examples; got {got}")
  B = len(prompts)
  if method in ("single", "text"):
    n = 0
    if method == "text":
      n = text_prefill_parts(branches, prompts)[0] if branches.prefix is not None else 0
    _check(engine, prompts, continuations, [0] * B)
    heads = [list(p[n:]) for p in prompts]
    tokens, positions, at, targets, mask = _layout(heads, continuations, n)
    cache = (ops.tile_rows(ops.truncate(branches.prefix, n), B) if n else
             init_cache(engine.config, B, 1))
    with engine.placed():
      out = _plain(engine.graphdef, engine.state, cache, tokens, positions, at, targets, mask,
                   attend_cache=bool(n))
    return np.asarray(out)
  if mode not in ("shared_start", "sequential"):
    raise ValueError(f"mode {mode!r}: likelihood scoring takes 'shared_start' or 'sequential'")
  adapter = (adapter or Adapter()) if method == "psynth" else Adapter()
  rows, lengths_BxN = branch_layout(branches)
  starts_BxN, synth_start_B = reencode.branch_starts(lengths_BxN.astype(np.int64), mode)
  _check(engine, prompts, continuations, synth_start_B.tolist())
  tokens, positions, at, targets, mask = _layout(prompts, continuations, synth_start_B)
  m_graphdef, m_state = (nnx.split(adapter.mapper) if adapter.mapper is not None else (None, None))
  with engine.placed():
    out = _merged(engine.graphdef, engine.state, m_graphdef, m_state, branches.cache, rows,
                  jnp.asarray(lengths_BxN), jnp.asarray(starts_BxN, jnp.int32), tokens,
                  positions, at, targets, mask, lora=adapter.lora)
  return np.asarray(out)


def repeat_examples(branches: Branches, times: Sequence[int]) -> Branches:
  """The branches with example i repeated `times[i]` times in a row (one row per option)."""
  spans = branches.rows()
  if len(times) != len(spans):
    raise ValueError(f"{len(times)} repeat counts for {len(spans)} examples")
  idx = [r for span, k in zip(spans, times) for _ in range(k) for r in span]
  counts = [len(span) for span, k in zip(spans, times) for _ in range(k)]
  return Branches([branches.tokens[r] for r in idx], ops.gather_rows(branches.cache, idx),
                  branches.prompt_lens[idx], branches.prefix, branches.prefix_tokens,
                  branches.worker_s, tuple(counts))
