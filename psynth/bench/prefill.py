"""Prefill latency and decode throughput: psynth vs HF transformers (torch, fp32), same run.

Like for like: both sides compute logits for the last position only (HF: sdpa attention,
`logits_to_keep=1`), batch 1, fp32, all CPU threads. psynth's first call (compile) is
reported apart; every figure is the median of warm runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.bench.timing import Timing, markdown_table, time_calls
from psynth.loading import Loaded
from psynth.model.transformer import forward, init_cache
from psynth.synthesis.generate import SamplingConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrefillRow:
  tokens: int
  psynth: Timing
  hf: Timing


def _prompt(vocab: int, n: int, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randint(100, vocab, (1, n)).astype(np.int32)


def psynth_prefill(loaded: Loaded, n: int, runs: int) -> Timing:
  graphdef, state = nnx.split(loaded.model)

  @jax.jit
  def prefill(state, tokens, positions):
    cache = init_cache(loaded.config, 1, tokens.shape[1])
    logits, _ = forward(nnx.merge(graphdef, state), tokens, positions, cache, last_only=True,
                        attend_cache=False)
    return logits

  tokens = jnp.asarray(_prompt(loaded.config.vocab_size, n))
  positions = jnp.arange(n, dtype=jnp.int32)[None]
  return time_calls(lambda: prefill(state, tokens, positions), runs)


def hf_model(loaded: Loaded):
  import torch
  from transformers import AutoModelForCausalLM

  torch.set_num_threads(os.cpu_count() or 1)
  return AutoModelForCausalLM.from_pretrained(str(loaded.path), dtype=torch.float32,
                                              attn_implementation="sdpa").eval()


def hf_prefill(model, vocab: int, n: int, runs: int) -> Timing:
  import torch

  ids = torch.from_numpy(_prompt(vocab, n)).long()
  with torch.inference_mode():
    return time_calls(lambda: model(ids, logits_to_keep=1, use_cache=True).logits, runs)


def psynth_decode_tok_s(loaded: Loaded, prompt_len: int, new_tokens: int, runs: int) -> float:
  prompt = [_prompt(loaded.config.vocab_size, prompt_len)[0].tolist()]
  sampling = SamplingConfig(max_new_tokens=new_tokens)
  loaded.engine.generate(prompt, sampling)  # compile
  rates = []
  for _ in range(runs):
    g = loaded.engine.generate(prompt, sampling)
    rates.append((len(g.tokens[0]) - 1) / (g.total_s - g.ttft_s))
  return float(np.median(rates))


def hf_decode_tok_s(model, vocab: int, prompt_len: int, new_tokens: int, runs: int) -> float:
  import time
  import torch

  ids = torch.from_numpy(_prompt(vocab, prompt_len)).long()
  rates = []
  with torch.inference_mode():
    for _ in range(runs + 1):  # the first run warms up
      out = model(ids, use_cache=True, logits_to_keep=1)
      t0 = time.perf_counter()
      for _ in range(new_tokens - 1):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
      rates.append((new_tokens - 1) / (time.perf_counter() - t0))
  return float(np.median(rates[1:]))


def run(loaded: Loaded, lengths=(256, 1024, 2048), runs: int = 5, decode_prompt: int = 256,
        decode_tokens: int = 64) -> str:
  """Runs both sides and returns the markdown report."""
  hf = hf_model(loaded)
  vocab = loaded.config.vocab_size
  rows = []
  for n in lengths:
    log.info("prefill %d tokens", n)
    rows.append(PrefillRow(n, psynth_prefill(loaded, n, runs), hf_prefill(hf, vocab, n, runs)))
  log.info("decode %d tokens after a %d-token prompt", decode_tokens, decode_prompt)
  ps_dec = psynth_decode_tok_s(loaded, decode_prompt, decode_tokens, runs)
  hf_dec = hf_decode_tok_s(hf, vocab, decode_prompt, decode_tokens, runs)
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
