"""Parallel-Synthesis the PyTorch / HF-transformers way: the peer baseline for psynth's benchmarks.

Batch 1, `transformers.DynamicCache`, `torch.inference_mode` throughout. Each worker branch runs
once over `p_i ++ o_i`; only the K/V of its output tokens `o_i` are kept. The synthesizer re-rotates
every branch's keys from absolute positions `|p_i|..` to its new start with the model's own RoPE
(a pure rotation: values untouched, no `attention_scaling`), concatenates all branches along the
sequence axis into a fresh `DynamicCache`, then prefills its own prompt at positions just after the
merged span and reads the greedy first token.

Position modes (start of branch i / start of the synthesizer prompt):
  shared_start  0                            / max_i |o_i|
  sequential    sum_{j<i} |o_j|              / sum_i |o_i|
  after_prefix  prefix_len                   / prefix_len + max_i |o_i|

Only benchmarks and tests use this module, so torch and transformers are imported lazily.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Sequence

from psynth.cache.reencode import MODES

if TYPE_CHECKING:
  import torch


@dataclasses.dataclass
class BranchKV:
  """One worker branch's cache, output tokens only.

  keys / values: one tensor per layer, `[1, kv_heads, |o_i|, head_dim]`; keys are RoPE-rotated at
  the absolute positions `prompt_len .. prompt_len + |o_i| - 1` they had in the worker's run.
  """
  keys: list[torch.Tensor]
  values: list[torch.Tensor]
  prompt_len: int

  @property
  def length(self) -> int:
    return int(self.keys[0].shape[-2])


def _device(model: Any) -> torch.device:
  return next(model.parameters()).device


def _ids(tokens: Sequence[int], device: torch.device) -> torch.Tensor:
  import torch
  return torch.tensor([list(tokens)], dtype=torch.long, device=device)


def branch_caches(model: Any, worker_prompts: list[list[int]],
                  branches: list[list[int]]) -> list[BranchKV]:
  """Run each worker over `p_i ++ o_i` (one forward, batch 1) and keep the K/V of `o_i` only.

  This is the workers' work (the benchmark does not time it). The worker-prompt part of every layer
  is dropped (copied out, so the full worker cache can be freed).
  """
  import torch
  if len(worker_prompts) != len(branches):
    raise ValueError(f"{len(worker_prompts)} worker prompts for {len(branches)} branches")
  device = _device(model)
  out: list[BranchKV] = []
  with torch.inference_mode():
    for prompt, branch in zip(worker_prompts, branches):
      if not branch:
        raise ValueError("every branch needs at least one output token")
      p = len(prompt)
      res = model(input_ids=_ids(list(prompt) + list(branch), device), use_cache=True,
                  logits_to_keep=1)
      layers = res.past_key_values.layers
      out.append(BranchKV(keys=[layer.keys[:, :, p:, :].clone() for layer in layers],
                          values=[layer.values[:, :, p:, :].clone() for layer in layers],
                          prompt_len=p))
  return out


def _rotary(model: Any) -> Any:
  rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
  if rotary is None or not hasattr(rotary, "inv_freq"):
    raise ValueError(f"{type(model).__name__} has no `model.rotary_emb` with an `inv_freq` buffer")
  return rotary


def _rotate_half(model: Any):
  """The model's own `rotate_half` (e.g. `transformers.models.llama.modeling_llama.rotate_half`)."""
  module = importlib.import_module(type(model).__module__)
  fn = getattr(module, "rotate_half", None)
  if fn is None:
    raise ValueError(f"{module.__name__} defines no `rotate_half`")
  return fn


def _cos_sin(model: Any, delta: int) -> tuple[torch.Tensor, torch.Tensor]:
  """float32 cos/sin `[rot_dim]` of position `delta`, as a pure rotation.

  The rotary module's forward returns `cos(pos * inv_freq) * attention_scaling` (likewise sin).
  The keys already carry that scale once from the worker run, so the re-rotation must not apply it
  again: this is the module's cos/sin with `attention_scaling` divided out, computed straight from
  its `inv_freq` buffer (cos/sin of `delta * inv_freq`, float32, the same layout `cat(f, f)`). The
  forward itself is not called: for dynamic/longrope types it re-sets `inv_freq` from the
  position it is given, which would be the (possibly negative) delta.
  """
  import torch
  freqs = float(delta) * _rotary(model).inv_freq.to(torch.float32)
  emb = torch.cat((freqs, freqs), dim=-1)
  return emb.cos(), emb.sin()


def rerotate(keys: list[torch.Tensor], delta: int, model: Any) -> list[torch.Tensor]:
  """Rotate per-layer keys `[..., seq, head_dim]` by `delta` positions with the model's own RoPE.

  `k' = k * cos(delta * inv_freq) + rotate_half(k) * sin(delta * inv_freq)`, computed in float32
  and cast back to the keys' dtype; no `attention_scaling` (pure rotation). With partial rotary
  (`2 * len(inv_freq) < head_dim`) only the leading rotary dims turn, as in the forward pass.
  """
  import torch
  if delta == 0:
    return list(keys)
  cos, sin = (t.to(keys[0].device) for t in _cos_sin(model, delta))
  rotate_half = _rotate_half(model)
  rot = cos.shape[-1]
  out = []
  with torch.inference_mode():
    for k in keys:
      k32 = k.to(torch.float32)
      head, tail = k32[..., :rot], k32[..., rot:]
      turned = head * cos + rotate_half(head) * sin
      if tail.shape[-1]:
        turned = torch.cat((turned, tail), dim=-1)
      out.append(turned.to(k.dtype))
  return out


def _starts(lengths: list[int], mode: str, prefix_len: int) -> tuple[list[int], int]:
  """(start of each branch, start of the synthesizer prompt) for a position mode."""
  if mode == "shared_start":
    return [0] * len(lengths), max(lengths)
  if mode == "sequential":
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return starts, sum(lengths)
  if mode == "after_prefix":
    return [prefix_len] * len(lengths), prefix_len + max(lengths)
  raise ValueError(f"unknown position mode {mode!r}; expected one of {', '.join(MODES)}")


def cache_first_token(model: Any, branches: list[BranchKV], synth_ids: list[int],
                      mode: str = "shared_start", prefix_len: int = 0) -> tuple[int, torch.Tensor]:
  """Merge the branches' caches (re-rotated per `mode`), prefill `synth_ids`, return the first token.

  Returns (greedy token id, float32 logits `[vocab]` of the last prompt position). The prompt sits
  at positions `prompt_start ..` (end of the merged span per mode), attends to the whole merged
  cache and causally to itself.
  """
  import torch
  from transformers import DynamicCache
  if not branches:
    raise ValueError("need at least one branch")
  if not synth_ids:
    raise ValueError("empty synthesizer prompt")
  starts, prompt_start = _starts([b.length for b in branches], mode, prefix_len)
  device = _device(model)
  with torch.inference_mode():
    rotated = [rerotate(b.keys, start - b.prompt_len, model) for b, start in zip(branches, starts)]
    cache = DynamicCache(config=model.config)
    for layer in range(len(branches[0].keys)):
      cache.update(torch.cat([keys[layer] for keys in rotated], dim=-2),
                   torch.cat([b.values[layer] for b in branches], dim=-2), layer)
    merged = cache.get_seq_length()
    n = len(synth_ids)
    out = model(input_ids=_ids(synth_ids, device),
                position_ids=torch.arange(prompt_start, prompt_start + n, device=device)[None],
                attention_mask=torch.ones(1, merged + n, dtype=torch.long, device=device),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[0, -1].to(torch.float32)
  return int(logits.argmax()), logits


def text_first_token(model: Any, prompt_ids: list[int]) -> tuple[int, torch.Tensor]:
  """Text synthesis: plain prefill of the whole prompt; (greedy token id, float32 last logits)."""
  import torch
  with torch.inference_mode():
    out = model(input_ids=_ids(prompt_ids, _device(model)), use_cache=True, logits_to_keep=1)
    logits = out.logits[0, -1].to(torch.float32)
  return int(logits.argmax()), logits
