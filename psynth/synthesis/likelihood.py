"""Given continuations scored by their log-probability after a prompt, by every method: how a
small model answers multiple choice above chance (each option's text as the reply's start).

    lp_R = continuation_logprobs(engine, prompts_B, options_R, counts=counts_B,
                                 method="psynth", branches=branches, adapter=adapter)

  single  prompt + continuation on the base model, nothing before it
  text    the same after the workers' shared prefix (the text synthesizer's prompt)
  naive   the branch caches re-encoded and merged, then prompt + continuation
  psynth  the same through the mapper, with the LoRA on
Each prompt is prefilled once (on its example's branches), however many continuations follow
it (`counts`: an item's options); each continuation is then a short row reading that prompt's
cache, its first token's term taken from the prompt's last logits. No decoding; only the
continuations' logits are formed (`logits_at`), reduced to one sum per row inside the jit.
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


def _sums(logits_RxJxV, targets_RxJ, mask_RxJ) -> jax.Array:
  """Each row's summed log-probability of its targets where `mask`: `[R]`."""
  lp = jax.nn.log_softmax(logits_RxJxV, axis=-1)
  picked = jnp.take_along_axis(lp, targets_RxJ[..., None], axis=-1)[..., 0]
  return jnp.where(mask_RxJ, picked, 0.0).sum(-1)


def _tails(model, cache, last_logits_HxV, row_head, tails, tail_positions, at, targets, mask,
           first, lora: bool = False) -> jax.Array:
  """Each continuation (`[R, Tc]`) after its prompt (row `row_head[r]` of `cache`): its first
  token's log-prob from the prompt's last logits plus the rest's, `[R]`."""
  first_lp = jax.nn.log_softmax(last_logits_HxV, axis=-1)[row_head, first]
  logits, _ = forward(model, tails, tail_positions, ops.gather_rows(cache, row_head),
                      logits_at=at, lora=lora, write=False)
  return first_lp + _sums(logits, targets, mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "attend_cache"))
def _plain(graphdef, state, prefix, heads, head_positions, last, *tail_args, attend_cache):
  """single / text: the prompts (`[H, Th]`) prefilled once on `prefix` (the workers' shared
  prefix for text; nothing for single), then their continuations."""
  model = nnx.merge(graphdef, state)
  logits, head = forward(model, heads, head_positions, prefix, logits_at=last[:, None],
                         attend_cache=attend_cache, write=False)
  cache = ops.concat_slots(prefix, head) if attend_cache else head
  return _tails(model, cache, logits[:, 0], *tail_args)


@functools.partial(jax.jit, static_argnames=("graphdef", "mapper_graphdef", "lora"))
def _merged(graphdef, state, mapper_graphdef, mapper_state, branches, rows, lengths_HxN,
            starts_HxN, heads, head_positions, last, *tail_args, lora):
  """naive / psynth: each example's branches re-encoded, mapped and merged once (eagerly: the
  prompt and every continuation row read them), each prompt prefilled on them, then the
  continuations after the merged branches and the prompt's own slots."""
  model = nnx.merge(graphdef, state)
  cfg = model.config
  branches, inv_freq, mapper = _merge_inputs(mapper_graphdef, mapper_state, branches, rows,
                                             lengths_HxN, starts_HxN, cfg.rope, cfg.head_dim)
  merged = reencode.merge(branches, starts_HxN, inv_freq, mapper, lengths_HxN)
  logits, head = forward(model, heads, head_positions, merged, logits_at=last[:, None],
                         lora=lora, write=False)
  return _tails(model, ops.concat_slots(merged, head), logits[:, 0], *tail_args, lora=lora)


def _layout(heads: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
            counts: Sequence[int], starts):
  """The prompts (`heads`, from `starts`) right-padded `[H, Th]` with each one's last index;
  each continuation's prompt index and its tokens after the prompt's end `[R, Tc]`; the
  indices, targets and mask `[R, J]` of the tail logits that predict its tokens past the
  first; its first token `[R]`."""
  head_tokens, head_positions = right_pad(heads, bucket(max(map(len, heads))), start=starts)
  last = np.asarray([len(h) - 1 for h in heads], np.int32)
  row_head = np.repeat(np.arange(len(heads), dtype=np.int32), counts)
  ends = np.broadcast_to(np.asarray(starts), (len(heads),)) + np.asarray(list(map(len, heads)))
  rest = [list(c[1:]) for c in continuations]
  J = bucket(max(max(map(len, rest)), 1))
  tails, tail_positions = right_pad(continuations, J + 1, start=ends[row_head])
  at, targets = np.zeros((len(rest), J), np.int32), np.zeros((len(rest), J), np.int32)
  mask = np.zeros((len(rest), J), bool)
  for r, c in enumerate(rest):  # tail token j's logits predict token j + 1
    at[r, :len(c)], targets[r, :len(c)], mask[r, :len(c)] = np.arange(len(c)), c, True
  first = np.asarray([c[0] for c in continuations], np.int32)
  return (head_tokens, head_positions, last), (row_head, tails, tail_positions, at, targets,
                                               mask, first)


def _check(engine: Engine, prompts, continuations, counts, starts) -> None:
  if len(counts) != len(prompts) or sum(counts) != len(continuations) or min(counts) < 1:
    raise ValueError(f"counts {list(counts)} must give each of the {len(prompts)} prompts at "
                     f"least one of the {len(continuations)} continuations, in order")
  ctx = engine.config.max_position_embeddings
  row_head = np.repeat(np.arange(len(prompts)), counts)
  for r, (b, c) in enumerate(zip(row_head, continuations)):
    p = prompts[b]
    if not p or not c:
      raise ValueError(f"row {r}: the prompt and the continuation need a token each; got "
                       f"{len(p)} and {len(c)}")
    if starts[b] + len(p) + len(c) > ctx:
      raise ValueError(f"row {r}: {starts[b] + len(p) + len(c)} positions exceed the "
                       f"{ctx}-token context")


def continuation_logprobs(engine: Engine, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *,
                          counts: Sequence[int] | None = None, method: str = "single",
                          branches: Branches | None = None, adapter: Adapter | None = None,
                          mode: str = "shared_start") -> np.ndarray:
  """log p(continuation | prompt [, branches]) summed over each continuation's tokens, `[R]`.

  `prompts`: B prompts for `method` (chat-encoded, ready for the assistant); `counts[b]`:
  how many of `continuations` (in order) follow prompt b (default: one each);
  `branches`: prompt b's example is its example b (text, naive, psynth)."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
  if counts is None:
    if len(prompts) != len(continuations):
      raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations; give "
                       "one continuation per prompt or their `counts`")
    counts = [1] * len(prompts)
  if method != "single" and (branches is None or len(branches.counts) != len(prompts)):
    got = "none" if branches is None else f"{len(branches.counts)} examples"
    raise ValueError(f"method {method!r} needs the branches of {len(prompts)} examples; got {got}")
  H = len(prompts)
  if method in ("single", "text"):
    n = 0
    if method == "text" and branches.prefix is not None:
      n = text_prefill_parts(branches, prompts)[0]
    _check(engine, prompts, continuations, counts, [0] * H)
    head, tail = _layout([list(p[n:]) for p in prompts], continuations, counts, n)
    prefix = (ops.tile_rows(ops.truncate(branches.prefix, n), H) if n else
              init_cache(engine.config, H, 1))
    with engine.placed():
      out = _plain(engine.graphdef, engine.state, prefix, *head, *tail, attend_cache=bool(n))
    return np.asarray(out)
  if mode not in ("shared_start", "sequential"):
    raise ValueError(f"mode {mode!r}: likelihood scoring takes 'shared_start' or 'sequential'")
  adapter = (adapter or Adapter()) if method == "psynth" else Adapter()
  rows, lengths_HxN = branch_layout(branches)
  starts_HxN, synth_start_H = reencode.branch_starts(lengths_HxN.astype(np.int64), mode)
  _check(engine, prompts, continuations, counts, synth_start_H.tolist())
  head, tail = _layout(prompts, continuations, counts, synth_start_H)
  m_graphdef, m_state = (nnx.split(adapter.mapper) if adapter.mapper is not None else (None, None))
  with engine.placed():
    out = _merged(engine.graphdef, engine.state, m_graphdef, m_state, branches.cache, rows,
                  jnp.asarray(lengths_HxN), jnp.asarray(starts_HxN, jnp.int32), *head, *tail,
                  lora=adapter.lora)
  return np.asarray(out)
