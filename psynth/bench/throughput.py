"""Synthesis throughput: an evaluation-like workload one example at a time vs batched.

    python -m psynth bench throughput [--json F] [--out F]

The workload: `examples` fan-outs of the `facts` evaluation task (N evidence branches each,
encoded as finished worker outputs), then text, naive and cache synthesis (the model's
adapter if it has one), greedy, `answer_tokens` new tokens at most, each row stopping at its
end-of-turn token. Sequential runs every example alone; batched runs them as rows of one
batch per method. A first pass of each compiles (its time is reported apart); then the two
take turns (`runs` rounds) and the medians are compared. Also measured: one batched decode
step against its FLOP floor at the GEMM rate this machine shows in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth.bench.timing import markdown_table
from psynth.data.sources import data_dir
from psynth.eval.tasks import BuildOptions, TASKS
from psynth.model.transformer import init_cache
from psynth.synthesis import generate
from psynth.synthesis.generate import SamplingConfig, bucket
from psynth.synthesis.pipeline import fan_out_batch, synthesize_batch

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

log = logging.getLogger(__name__)

METHODS = ("text", "naive", "psynth")


@dataclasses.dataclass
class Result:
  examples: int
  branches: int
  batch: int
  sequential_examples_per_s: float
  batched_examples_per_s: float
  sequential_tokens_per_s: float
  batched_tokens_per_s: float
  compile_s: float  # the first (compiling) pass of both, minus a warm pass of each
  identical_fraction: float  # examples x methods whose batched reply equals the sequential one
  differences: list[dict]  # the others: example, method, both replies
  decode_slots: int  # cache slots of the measured decode step (the workload's largest)
  decode_step_s: float  # one batched decode step (batch rows, merged cache, cache donated)
  decode_floor_s: float  # its FLOPs at the measured GEMM rate
  decode_step_over_floor: float
  gemm_gflops: float
  decode_read_floor_s: float  # its weight + cache bytes at the measured read rate
  read_gbps: float
  runs: int


def facts_items(examples: int, branches: int, root=None):
  """The first `examples` items of the `facts` evaluation task, `branches` branches each."""
  return TASKS["facts"].build(BuildOptions(data_dir(root), branches, 60))[:examples]


def workload(examples: int, branches: int, root=None):
  """(questions, branch texts) of the first `examples` items of the `facts` task."""
  items = facts_items(examples, branches, root)
  return [it.question for it in items], [list(it.branches) for it in items]


def _pass(loaded: Loaded, questions, texts, batch: int, answer_tokens: int):
  """Every method on every example, `batch` examples per call: (seconds, replies, tokens)."""
  sampling = SamplingConfig(max_new_tokens=answer_tokens)
  t0 = time.perf_counter()
  replies: dict[str, list[str]] = {m: [] for m in METHODS}
  for k in range(0, len(questions), batch):
    qs, outs = questions[k:k + batch], texts[k:k + batch]
    br = fan_out_batch(loaded, qs, outputs=outs, min_branch_slots=64)
    for m in METHODS:
      replies[m] += [r.answer for r in synthesize_batch(loaded, qs, method=m, prepared=br,
                                                        sampling=sampling)]
  dt = time.perf_counter() - t0
  tok = loaded.tokenizer
  n_tok = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for rs in replies.values()
              for a in rs)
  return dt, replies, n_tok


def gemm_rate(loaded: Loaded, rows: int, repeats: int = 5) -> float:
  """GFLOP/s of the model's projection GEMMs at `rows` rows: per layer, a chain through the
  shapes of q/k/v, o, gate/up and down (each input depends on the last output, so nothing is
  folded away), `num_layers` times."""
  c = loaded.config
  D, F, A = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim
  shapes = [(D, A + 2 * c.num_kv_heads * c.head_dim), (A, D), (D, 2 * F), (F, D)]
  keys = jax.random.split(jax.random.key(0), len(shapes) + 1)
  ws = [jax.random.normal(k, s, jnp.float32) / np.sqrt(s[0]) for k, s in zip(keys, shapes)]
  x = jax.random.normal(keys[-1], (rows, D), jnp.float32)

  @jax.jit
  def chain(h, ws):
    w_qkv, w_o, w_gu, w_d = ws
    for _ in range(c.num_layers):
      h = ((h @ w_qkv)[:, :A] @ w_o @ w_gu)[:, :F] @ w_d
    return h

  flops = 2 * rows * c.num_layers * sum(a * b for a, b in shapes)
  jax.block_until_ready(chain(x, ws))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(chain(x, ws))
    times.append(time.perf_counter() - t0)
  return flops / statistics.median(times) / 1e9


def read_rate(mbytes: int = 256, repeats: int = 5) -> float:
  """GB/s at which XLA streams a float32 array through a reduction here (a cache read)."""
  x = jnp.ones((mbytes << 18,), jnp.float32)
  total = jax.jit(jnp.sum)
  jax.block_until_ready(total(x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(total(x))
    times.append(time.perf_counter() - t0)
  return x.nbytes / statistics.median(times) / 1e9


def decode_step(loaded: Loaded, batch: int, slots: int, repeats: int = 5):
  """One step of the Engine's own jitted decode (cache donated, as in generation) at `batch`
  rows over a `slots`-slot cache: (median seconds, FLOPs, bytes it must read at least: the
  weights once and every layer's cache K/V)."""
  c = loaded.config
  graphdef, state = nnx.split(loaded.model)
  step = generate.decode_step(graphdef)
  cache = init_cache(c, batch, slots)
  cache = cache.replace(valid=jnp.ones_like(cache.valid).at[:, -8:].set(False),
                        end=jnp.int32(slots - 8)).per_layer()  # as `Engine.decode_from` runs
  tok = jnp.zeros((batch, 1), jnp.int32)
  pos = jnp.full((batch, 1), slots, jnp.int32)
  rest = (jax.random.key(0), jnp.float32(1), jnp.float32(1))
  times = []
  for _ in range(repeats + 1):  # the first call compiles
    t0 = time.perf_counter()
    out, cache = step(state, tok, pos, cache, *rest, greedy=True, lora=False)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  D, F, E = c.hidden_size, c.intermediate_size, c.head_dim
  per_token = c.num_layers * (D * (c.num_heads + 2 * c.num_kv_heads) * E + c.num_heads * E * D
                              + 3 * D * F) + D * c.vocab_size
  attention = c.num_layers * c.num_heads * E * 2 * slots
  weights = sum(x.nbytes for x in jax.tree.leaves(state))
  return (statistics.median(times[1:]), 2.0 * batch * (per_token + attention),
          weights + sum(a.nbytes for a in (*cache.k, *cache.v)))


def run(loaded: Loaded, examples: int = 64, branches: int = 3, batch: int = 64,
        answer_tokens: int = 48, runs: int = 2, root=None) -> Result:
  questions, texts = workload(examples, branches, root)

  def timed(label: str, rows: int):
    out = _pass(loaded, questions, texts, rows, answer_tokens)
    log.info("%s, %d rows per call: %.1f s", label, rows, out[0])
    return out

  first_seq = timed("first pass (compiles), one at a time", 1)
  first_bat = timed("first pass (compiles), batched", batch)
  seq, bat = [], []
  for r in range(runs):  # interleaved: both see the same share of a noisy machine
    seq.append(timed(f"warm pass {r + 1}/{runs}, one at a time", 1))
    bat.append(timed(f"warm pass {r + 1}/{runs}, batched", batch))
  seq_s = statistics.median(r[0] for r in seq)
  bat_s = statistics.median(r[0] for r in bat)
  same, diffs = 0, []
  for m in METHODS:
    for i, (a, b) in enumerate(zip(seq[0][1][m], bat[0][1][m])):
      if a == b:
        same += 1
      else:
        diffs.append({"example": i, "method": m, "sequential": a, "batched": b})
  slots = bucket(max(sum(len(loaded.tokenizer(t)["input_ids"]) for t in ts) for ts in texts)
                 + 96)
  step_s, flops, nbytes = decode_step(loaded, batch, slots)
  rate, gbps = gemm_rate(loaded, batch), read_rate()
  floor = flops / (rate * 1e9)
  n = len(questions) * len(METHODS)
  return Result(len(questions), branches, batch, n / seq_s, n / bat_s, seq[0][2] / seq_s,
                bat[0][2] / bat_s, first_seq[0] + first_bat[0] - seq_s - bat_s,
                same / n, diffs, slots, step_s, floor, step_s / floor, rate,
                nbytes / (gbps * 1e9), gbps, runs)


def report(r: Result) -> str:
  table = markdown_table(
      ["", "examples/s", "generated tokens/s"],
      [["one at a time", f"{r.sequential_examples_per_s:.2f}", f"{r.sequential_tokens_per_s:.1f}"],
       [f"batched ({r.batch} rows)", f"{r.batched_examples_per_s:.2f}",
        f"{r.batched_tokens_per_s:.1f}"],
       ["batched / one at a time", f"{r.batched_examples_per_s / r.sequential_examples_per_s:.2f}x",
        f"{r.batched_tokens_per_s / r.sequential_tokens_per_s:.2f}x"]])
  return (f"{r.examples} examples x {len(METHODS)} methods ({', '.join(METHODS)}), "
          f"{r.branches} branches each; medians of {r.runs} interleaved warm passes; compile "
          f"(first passes) {r.compile_s:.1f} s apart\n\n{table}\n\n"
          f"identical greedy replies batched vs one at a time: {r.identical_fraction:.3f} "
          f"({len(r.differences)} differ)\n"
          f"decode step, {r.batch} rows x {r.decode_slots} cache slots: "
          f"{r.decode_step_s * 1000:.1f} ms; FLOP floor at the measured {r.gemm_gflops:.0f} "
          f"GFLOP/s: {r.decode_floor_s * 1000:.1f} ms ({r.decode_step_over_floor:.2f}x); "
          f"read floor (weights + cache K/V at the measured {r.read_gbps:.1f} GB/s): "
          f"{r.decode_read_floor_s * 1000:.1f} ms\n")


def write_json(r: Result, path: str | Path) -> None:
  Path(path).write_text(json.dumps(dataclasses.asdict(r), indent=1) + "\n")
