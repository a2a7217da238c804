"""Time to first token of synthesis: text vs cache, psynth vs the PyTorch/HF way, one run.

For N branches of L tokens each (the same branches and prompts for every contender):
  text_ttft_s      psynth text baseline: branch texts pasted into the prompt, base model,
                   the workers' shared prefix cache reused
  cache_ttft_s     psynth cache path: re-encode + mapper + merge + LoRA-on synthesizer prefill
                   + first token, one jitted function (re-encoding and mapping lazily, layer
                   by layer: `psynth.cache.lazy`)
  merged_cache_s   what the cache path does after its first token, before the second: write
                   the merged cache decoding reads (not part of TTFT; reported apart)
  floor_s          psynth's synthesizer-prompt prefill against an already merged cache (read
                   only: its own K/V are not written back into it)
  hf_text_ttft_s   HF transformers (torch fp32, sdpa, batch 1): plain prefill of the text prompt
  hf_cache_ttft_s  HF: keys re-rotated with the model's rotary table, DynamicCache concatenated,
                   prompt prefilled with explicit position ids (`psynth.bench.hf_reference`)
Branch caches are the workers' work and are built before timing, for both sides. Each figure
is the median of warm runs interleaved across contenders; psynth's compile time is apart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.bench import hf_reference
from psynth.bench.prefill import hf_model
from psynth.bench.timing import markdown_table, time_interleaved
from psynth.cache import mappers, reencode
from psynth.model import rope
from psynth.model.lora import add_lora
from psynth.model.transformer import forward
from psynth.synthesis import chat, prompts
from psynth.synthesis.fanout import encode_branches
from psynth.synthesis.generate import Engine, SamplingConfig, bucket, right_pad
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.synthesize import cache_prefill, synthesize_from_branches

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

log = logging.getLogger(__name__)
QUESTION = "What do the documents say about the project's schedule?"


@dataclasses.dataclass
class Row:
  n_branches: int
  branch_tokens: int
  synth_tokens: int
  text_ttft_s: float | None  # None: the text prompt does not fit the context
  cache_ttft_s: float
  floor_s: float
  hf_text_ttft_s: float | None
  hf_cache_ttft_s: float
  merged_cache_s: float
  text_tokens: int
  cache_compile_s: float


def _branches(vocab: int, n: int, length: int, seed: int) -> list[list[int]]:
  rng = np.random.RandomState(seed)
  return rng.randint(200, vocab - 200, (n, length)).tolist()


def _floor_fn(engine: Engine, br, synth_ids, adapter: Adapter):
  """Prefill of the synthesizer prompt against a cache merged beforehand (not timed)."""
  cfg = engine.config
  inv_freq, _ = rope.inv_freq_and_scale(cfg.rope, cfg.head_dim)
  lengths_BxN = jnp.asarray(br.lengths)[None]
  merged = reencode.merge(br.cache, jnp.zeros_like(lengths_BxN), jnp.asarray(inv_freq),
                          adapter.mapper, lengths_BxN)
  tokens, positions = right_pad([synth_ids], bucket(len(synth_ids)),
                                start=int(br.lengths.max()))
  graphdef = engine.graphdef

  @jax.jit
  def prefill(state, cache):
    # write=False: the prompt's K/V are returned, not written into `cache` (which, not
    # donated, would be copied whole first: 100 MB at 4 x 512, no part of a prefill's work).
    logits, _ = forward(nnx.merge(graphdef, state), tokens, positions, cache, last_only=True,
                        lora=True, write=False)
    return jnp.argmax(logits[:, 0], -1)

  return lambda: prefill(engine.state, merged)


def _merged_fn(engine: Engine, br, synth_ids, adapter: Adapter):
  """Writes the merged cache decoding reads: what the cache path does after its first token."""
  build = None

  def run():
    nonlocal build
    if build is None:  # on the first call, after "cache" compiled (and timed) the prefill
      build = cache_prefill(engine, br, [synth_ids], adapter=adapter)[1]
    return build()

  return run


def run(loaded: Loaded, n_branches=(2, 4, 8), branch_tokens=(128, 512, 1024), runs: int = 5,
        seed: int = 0) -> list[Row]:
  """Measures every (N, L) cell; the model gets a (random, rank 16) LoRA + an affine mapper."""
  cfg = loaded.config
  add_lora(loaded.model, rank=16, alpha=32, rngs=nnx.Rngs(seed))
  engine = Engine(loaded.model)  # sees the LoRA parameters
  mapper = mappers.make("affine", cfg.num_layers, cfg.num_kv_heads, rngs=nnx.Rngs(seed))
  adapter = Adapter(mapper=mapper, lora=True)
  hf = hf_model(loaded)
  tok = loaded.tokenizer
  synth_ids = chat.encode(tok, prompts.synth_cache(QUESTION))
  one = SamplingConfig(max_new_tokens=1)
  rows = []
  for n in n_branches:
    for length in branch_tokens:
      outputs = _branches(cfg.vocab_size, n, length, seed)
      worker_ids = [chat.encode(tok, prompts.worker(QUESTION, f"Document {i + 1}."))
                    for i in range(n)]
      texts = [tok.decode(o) for o in outputs]
      text_ids = chat.encode(tok, prompts.synth_text(QUESTION, texts))
      text_fits = len(text_ids) < cfg.max_position_embeddings
      log.info("N=%d L=%d: text prompt %d tokens%s", n, length, len(text_ids),
               "" if text_fits else " (exceeds the context: text path skipped)")
      br = encode_branches(engine, worker_ids, outputs)
      hf_br = hf_reference.branch_caches(hf, worker_ids, outputs)
      fns = {
          "cache": lambda: synthesize_from_branches(engine, br, "psynth", [synth_ids], one,
                                                    adapter=adapter)[0].answer_ids,
          "merged": _merged_fn(engine, br, synth_ids, adapter),
          "floor": _floor_fn(engine, br, synth_ids, adapter),
          "hf_cache": lambda: hf_reference.cache_first_token(hf, hf_br, synth_ids)[0],
      }
      if text_fits:
        fns["text"] = lambda: synthesize_from_branches(engine, br, "text", [text_ids],
                                                       one)[0].answer_ids
        fns["hf_text"] = lambda: hf_reference.text_first_token(hf, text_ids)[0]
      t = time_interleaved(fns, runs)
      med = lambda k: t[k].median_s if k in t else None
      rows.append(Row(n, length, len(synth_ids), med("text"), med("cache"), med("floor"),
                      med("hf_text"), med("hf_cache"), med("merged"), len(text_ids),
                      t["cache"].first_s - t["cache"].median_s))
  return rows


def report(rows: list[Row], loaded: Loaded, runs: int) -> str:
  f = lambda v: "n/a" if v is None else f"{v:.3f}"
  r = lambda a, b: "n/a" if a is None or b is None else f"{a / b:.1f}x"
  table = markdown_table(
      ["N x L", "text tokens", "psynth text s", "psynth cache s", "floor s", "HF text s",
       "HF cache s", "text/cache", "HF cache/cache", "cache/floor", "cache compile s",
       "merged cache after s"],
      [[f"{x.n_branches} x {x.branch_tokens}", x.text_tokens, f(x.text_ttft_s),
        f(x.cache_ttft_s), f(x.floor_s), f(x.hf_text_ttft_s), f(x.hf_cache_ttft_s),
        r(x.text_ttft_s, x.cache_ttft_s), r(x.hf_cache_ttft_s, x.cache_ttft_s),
        r(x.cache_ttft_s, x.floor_s), f(x.cache_compile_s), f(x.merged_cache_s)] for x in rows])
  return (f"model: {loaded.path} ({loaded.config.dtype}); synthesizer prompt "
          f"{rows[0].synth_tokens} tokens; shared_start; medians of {runs} warm runs, "
          f"interleaved; {os.cpu_count()} CPU threads; jax {jax.__version__}\n\n{table}\n")


def plot(rows: list[Row], path: str | Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = [f"{x.n_branches}x{x.branch_tokens}" for x in rows]
  xs = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(10, 4.5))
  series = [("psynth text", "text_ttft_s"), ("psynth cache", "cache_ttft_s"),
            ("psynth floor", "floor_s"), ("HF text", "hf_text_ttft_s"),
            ("HF cache", "hf_cache_ttft_s")]
  for i, (name, field) in enumerate(series):
    ys = [getattr(x, field) or np.nan for x in rows]
    ax.bar(xs + (i - 2) * 0.16, ys, 0.16, label=name)
  ax.set_yscale("log")
  ax.set_xticks(xs, labels)
  ax.set_xlabel("branches x tokens per branch")
  ax.set_ylabel("time to first token (s, log)")
  ax.set_title("Synthesis time to first token (CPU, fp32)")
  ax.legend(ncol=5, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def write_json(rows: list[Row], path: str | Path) -> None:
  keys = ("n_branches", "branch_tokens", "synth_tokens", "text_ttft_s", "cache_ttft_s",
          "floor_s", "hf_text_ttft_s", "hf_cache_ttft_s", "merged_cache_s")
  Path(path).write_text(json.dumps([{k: getattr(r, k) for k in keys} for r in rows], indent=1))
