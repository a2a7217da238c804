"""Prefill latency and decode throughput: psynth vs HF transformers (torch, fp32), same run.

Like for like: both sides compute logits for the last position only (HF: sdpa attention,
`logits_to_keep=1`), batch 1, fp32, all CPU threads. psynth's first call (compile) is
reported apart; every figure is the median of warm runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.bench.timing import Timing, markdown_table, time_interleaved
from psynth.model.transformer import forward, init_cache
from psynth.synthesis.generate import SamplingConfig

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrefillRow:
  tokens: int
  psynth: Timing
  hf: Timing


def _prompt(vocab: int, n: int, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randint(100, vocab, (1, n)).astype(np.int32)


def psynth_prefill_fn(loaded: Loaded, n: int):
  graphdef, state = nnx.split(loaded.model)

  @jax.jit
  def prefill(state, tokens, positions):
    cache = init_cache(loaded.config, 1, tokens.shape[1])
    logits, _ = forward(nnx.merge(graphdef, state), tokens, positions, cache, last_only=True,
                        attend_cache=False)
    return logits

  tokens = jnp.asarray(_prompt(loaded.config.vocab_size, n))
  positions = jnp.arange(n, dtype=jnp.int32)[None]
  return lambda: prefill(state, tokens, positions)


def hf_model(loaded: Loaded):
  import torch
  from transformers import AutoModelForCausalLM

  torch.set_num_threads(os.cpu_count() or 1)
  return AutoModelForCausalLM.from_pretrained(str(loaded.path), dtype=torch.float32,
                                              attn_implementation="sdpa").eval()


def hf_prefill_fn(model, vocab: int, n: int):
  import torch

  ids = torch.from_numpy(_prompt(vocab, n)).long()

  def call():
    with torch.inference_mode():
      return model(ids, logits_to_keep=1, use_cache=True).logits

  return call


def psynth_decode_rate_fn(loaded: Loaded, prompt_len: int, new_tokens: int):
  """A callable: one greedy generation, returns decode tokens/s (prefill excluded)."""
  prompt = [_prompt(loaded.config.vocab_size, prompt_len)[0].tolist()]
  sampling = SamplingConfig(max_new_tokens=new_tokens)

  def rate() -> float:
    g = loaded.engine.generate(prompt, sampling)
    return (len(g.tokens[0]) - 1) / (g.total_s - g.ttft_s)

  return rate


def hf_decode_rate_fn(model, vocab: int, prompt_len: int, new_tokens: int):
  """The same for HF: prefill, then a loop of one-token forwards with its KV cache."""
  import time
  import torch

  ids = torch.from_numpy(_prompt(vocab, prompt_len)).long()

  def rate() -> float:
    with torch.inference_mode():
      out = model(ids, use_cache=True, logits_to_keep=1)
      t0 = time.perf_counter()
      for _ in range(new_tokens - 1):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
      return (new_tokens - 1) / (time.perf_counter() - t0)

  return rate


def run(loaded: Loaded, lengths=(256, 1024, 2048), runs: int = 5, decode_prompt: int = 256,
        decode_tokens: int = 64) -> str:
  """Runs both sides and returns the markdown report."""
  hf = hf_model(loaded)
  vocab = loaded.config.vocab_size
  rows = []
  for n in lengths:
    log.info("prefill %d tokens", n)
    t = time_interleaved({"psynth": psynth_prefill_fn(loaded, n),
                          "hf": hf_prefill_fn(hf, vocab, n)}, runs)
    rows.append(PrefillRow(n, t["psynth"], t["hf"]))
  log.info("decode %d tokens after a %d-token prompt", decode_tokens, decode_prompt)
  rate_fns = [psynth_decode_rate_fn(loaded, decode_prompt, decode_tokens),
              hf_decode_rate_fn(hf, vocab, decode_prompt, decode_tokens)]
  for f in rate_fns:
    f()  # warm-up (psynth: compiles)
  rates = [[f() for f in rate_fns] for _ in range(runs)]  # interleaved, like prefill
  ps_dec, hf_dec = np.median(rates, axis=0)
  table = markdown_table(
      ["prefill tokens", "psynth s (median)", "HF s (median)", "HF / psynth",
       "psynth compile+first s"],
      [[r.tokens, r.psynth.median_s, r.hf.median_s, f"{r.hf.median_s / r.psynth.median_s:.2f}x",
        r.psynth.first_s] for r in rows])
  decode = markdown_table(
      ["decode", "psynth tok/s", "HF tok/s", "psynth / HF"],
      [[f"{decode_tokens} tokens after {decode_prompt}", f"{ps_dec:.1f}", f"{hf_dec:.1f}",
        f"{ps_dec / hf_dec:.2f}x"]])
  return (f"model: {loaded.path} ({loaded.config.dtype}), {runs} warm runs each, "
          f"{os.cpu_count()} CPU threads, jax {jax.__version__}\n\n{table}\n\n{decode}\n")
