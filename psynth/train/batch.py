"""Examples with saved branches -> fixed-shape numpy batches for the train step (host side).

A batch holds, for B examples of N branches each:
- the workers' shared prefix `[B, P]`: the tokens all of an example's worker prompts start
  with (system, question, instruction), run once per example, positions 0..;
- the worker rows `[B*N, W]`: the rest of worker prompt p_i ++ branch output o_i (row b*N + j
  is branch j of example b), positions after the prefix and -1 for padding, and `out_start`:
  the index in the row where o_i starts (the branch cache is the K/V of o_i only);
- the synthesizer rows `[B, T]`: synthesizer prompt (no worker text) ++ target ++ stop token,
  positions relative to the start of the synthesizer prompt; `loss_mask[b, t]` is 1 where
  token t+1 is a target token (the prediction made at t is scored);
- optionally the text-synthesizer rows `[B, Tt]` (the branch texts pasted into the prompt,
  then the same target), with `teacher_index[b, t]`: the index in that row that predicts
  the same target token as student index t (for a KL term against text synthesis).
Lengths are padded to `bucket` sizes and branch counts to `BRANCH_BUCKETS` (with empty
branches: no token, length 0), and a run batches examples of one branch bucket together
(`psynth.train.sampler`), so it compiles one step per branch bucket.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from psynth.data.example import Example
from psynth.synthesis import chat, prompts
from psynth.synthesis.generate import branch_bucket, bucket
from psynth.synthesis.prompts import common_prefix_len



@dataclasses.dataclass(frozen=True)
class Tokenized:
  """One example as token ids."""

  worker_prompts: list[list[int]]  # N x |p_i|
  branch_outputs: list[list[int]]  # N x |o_i|
  synth_prompt: list[int]
  target: list[int]  # ends with the stop token
  text_prompt: list[int] | None = None  # the text synthesizer's prompt (for distillation KL)


def tokenize(tokenizer, ex: Example, stop_id: int, *, system: str = prompts.DEFAULT_SYSTEM,
             with_text: bool = False, max_branch_tokens: int = 256,
             max_target_tokens: int = 128) -> Tokenized:
  """Chat-templated prompts as at inference (same `psynth.synthesis.prompts`)."""
  if ex.branch_outputs is None:
    raise ValueError(f"example {ex.id!r} has no branch_outputs; generate its branches first "
                     "(python -m psynth data)")
  if not ex.target.strip():
    raise ValueError(f"example {ex.id!r} has an empty target")
  enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
  outs = [enc(o.strip())[:max_branch_tokens] for o in ex.branch_outputs]
  for i, o in enumerate(outs):
    if not o:
      raise ValueError(f"example {ex.id!r}: branch {i} output is empty")
  worker = [chat.encode(tokenizer, prompts.worker(ex.question, b, system)) for b in ex.branch_inputs]
  fmt = ex.meta.get("answer_format")  # the answer form the evaluation asks for, if any
  synth = chat.encode(tokenizer, prompts.synth_cache(ex.question, system, fmt))
  text = (chat.encode(tokenizer, prompts.synth_text(ex.question, ex.branch_outputs, system, fmt))
          if with_text else None)
  target = enc(ex.target)[:max_target_tokens - 1] + [stop_id]
  return Tokenized(worker, outs, synth, target, text)


def prefix_len(it: Tokenized) -> int:
  """How many tokens all of the example's worker prompts share (run once, not N times)."""
  return common_prefix_len(it.worker_prompts)


def row_len(it: Tokenized) -> int:
  """The longest worker row after the shared prefix: rest of the prompt ++ output."""
  P = prefix_len(it)
  return max(len(p) - P + len(o) for p, o in zip(it.worker_prompts, it.branch_outputs))


def layout(B: int, N: int, P: int, W: int, T: int,
           Tt: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Every array of a batch of B examples of N branches: name -> (shape, dtype). `Tt`: the
  text-synthesizer rows too (distillation). What `collate` fills, and what an ahead-of-time
  compile (`psynth.aot`) feeds the train step as shapes."""
  i32 = np.dtype(np.int32)
  out = dict(prefix_tokens=((B, P), i32), prefix_positions=((B, P), i32),
             worker_tokens=((B * N, W), i32), worker_positions=((B * N, W), i32),
             out_start=((B * N,), i32), branch_lengths=((B, N), i32),
             synth_tokens=((B, T), i32), synth_positions=((B, T), i32),
             loss_mask=((B, T), np.dtype(np.float32)))
  if Tt is not None:
    out.update(teacher_tokens=((B, Tt), i32), teacher_positions=((B, Tt), i32),
               teacher_index=((B, T), i32))
  return out


def collate(items: Sequence[Tokenized], *, sizes: dict[str, int] | None = None,
            with_text: bool = False) -> dict[str, np.ndarray]:
  """Pads B tokenized examples into arrays; `sizes` fixes N/P/W/T/Tt (else the batch's own,
  bucketed). An example with fewer than N branches gets empty rows (no token, length 0)."""
  sizes = dict(sizes or {})
  N = sizes.get("N") or branch_bucket(max(len(it.worker_prompts) for it in items))
  if any(len(it.worker_prompts) > N for it in items):
    raise ValueError(f"an example has {max(len(it.worker_prompts) for it in items)} branches; "
                     f"the batch holds N={N}")
  B = len(items)
  Ps = [prefix_len(it) for it in items]
  synth = [it.synth_prompt + it.target for it in items]
  P = sizes.get("P") or bucket(max(Ps))
  W = sizes.get("W") or bucket(max(map(row_len, items)))
  T = sizes.get("T") or bucket(max(map(len, synth)))
  if max(Ps) > P or max(map(row_len, items)) > W or max(map(len, synth)) > T:
    raise ValueError(f"batch needs P={max(Ps)}, W={max(map(row_len, items))}, "
                     f"T={max(map(len, synth))}; sizes given {sizes}")
  Tt = None
  if with_text:
    text = [it.text_prompt + it.target for it in items]
    Tt = sizes.get("Tt") or bucket(max(map(len, text)))
  # Positions -1 mark padding; everything else starts at 0.
  out = {k: np.full(shape, -1 if k.endswith("_positions") else 0, dtype)
         for k, (shape, dtype) in layout(B, N, P, W, T, Tt).items()}
  for b, (it, Pb) in enumerate(zip(items, Ps)):
    out["prefix_tokens"][b, :Pb] = it.worker_prompts[0][:Pb]
    out["prefix_positions"][b, :Pb] = np.arange(Pb)
    for j, (p, o) in enumerate(zip(it.worker_prompts, it.branch_outputs)):
      row, r = p[Pb:] + o, b * N + j
      out["worker_tokens"][r, :len(row)] = row
      out["worker_positions"][r, :len(row)] = Pb + np.arange(len(row))
      out["out_start"][r] = len(p) - Pb
    out["branch_lengths"][b, :len(it.branch_outputs)] = [len(o) for o in it.branch_outputs]
    seq = synth[b]
    out["synth_tokens"][b, :len(seq)] = seq
    out["synth_positions"][b, :len(seq)] = np.arange(len(seq))
    P = len(it.synth_prompt)
    out["loss_mask"][b, P - 1:len(seq) - 1] = 1.0  # position t predicts token t+1
  if with_text:
    for b, it in enumerate(items):
      out["teacher_tokens"][b, :len(text[b])] = text[b]
      out["teacher_positions"][b, :len(text[b])] = np.arange(len(text[b]))
      shift = len(it.text_prompt) - len(it.synth_prompt)
      idx = np.arange(T) + shift
      out["teacher_index"][b] = np.clip(idx, 0, Tt - 1) * (out["loss_mask"][b] > 0)
  return out


def batch_sizes(items: Sequence[Tokenized], with_text: bool = False) -> dict[str, int]:
  """Bucketed P/W/T/Tt that fit every item: fixed for a whole run (W per group: `groups`)."""
  sizes = dict(P=bucket(max(map(prefix_len, items))), W=bucket(max(map(row_len, items))),
               T=bucket(max(len(it.synth_prompt) + len(it.target) for it in items)))
  if with_text:
    sizes["Tt"] = bucket(max(len(it.text_prompt) + len(it.target) for it in items))
  return sizes


def groups(items: Sequence[Tokenized]) -> tuple[list[tuple[int, int]], dict[str, int]]:
  """Each item's shape group (N bucket, W) and the run's fixed sizes. Rows are padded to one
  of two lengths, the bucket of the median row and of the longest, so short examples (most
  of them) do not pay for the longest one; a run compiles one step per group."""
  lens = np.array([row_len(it) for it in items])
  short, full = bucket(int(np.median(lens))), bucket(int(lens.max()))
  keys = [(branch_bucket(len(it.worker_prompts)), short if n <= short else full)
          for it, n in zip(items, lens)]
  return keys, batch_sizes(items)
