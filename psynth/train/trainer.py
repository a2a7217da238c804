"""The training loop: data order, sharded placement, the jitted step, checkpoints, logs, eval.

Side effects live here (files, TensorBoard, progress bar); the math is in `step` and `loss`.
Every process builds the same global batch on the host (tokenized once up front) and
contributes its shards of it, so one process, 8 devices or several hosts run the same code
and see the same global batch. The data order is a pure function of (seed, step), so a run
resumed from a checkpoint at step k continues exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from psynth import sharding
from psynth.cache.mapper import CacheMapper
from psynth.data.example import Example
from psynth.model.lora import add_lora
from psynth.train import batch as batch_lib
from psynth.train import loss as loss_lib
from psynth.train import step as step_lib
from psynth.train.checkpoint import Checkpoints
from psynth.train.logs import ScalarWriter
from psynth.synthesis.generate import bucket

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

log = logging.getLogger(__name__)


def build_synthesizer(loaded: Loaded, cfg) -> step_lib.Synthesizer:
  """The loaded model with a fresh LoRA (B = 0) and a fresh mapper (last layer 0): identity."""
  c = loaded.config
  model = add_lora(loaded.model, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                   targets=tuple(cfg.lora.targets), rngs=nnx.Rngs(cfg.seed))
  mapper = (None if cfg.mapper.kind == "none" else
            CacheMapper(cfg.mapper.kind, c.num_layers, c.num_kv_heads, rngs=nnx.Rngs(cfg.seed + 1)))
  return step_lib.Synthesizer(model, mapper)


def signature(loaded: Loaded, cfg) -> dict:
  """What a checkpoint must match to be resumed: model shape, adapter and mapper layout."""
  c = loaded.config
  return dict(layers=c.num_layers, hidden=c.hidden_size, heads=c.num_heads,
              kv_heads=c.num_kv_heads, head_dim=c.head_dim, vocab=c.vocab_size,
              lora=dict(rank=int(cfg.lora.rank), alpha=float(cfg.lora.alpha),
                        targets=list(cfg.lora.targets)), mapper=cfg.mapper.kind)


def batch_indices(n_examples: int, step: int, global_batch: int, seed: int) -> np.ndarray:
  """Example indices of step `step` (0-based): epochs of seeded permutations, no state."""
  epochs, index = np.divmod(np.arange(step * global_batch, (step + 1) * global_batch), n_examples)
  perms = {e: np.random.default_rng([seed, e]).permutation(n_examples) for e in set(epochs.tolist())}
  return np.array([perms[e][i] for e, i in zip(epochs.tolist(), index.tolist())], np.int64)


def split_accum(arrays: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """Leading (example or branch-row) axis -> `[accum, rows / accum, ...]`."""
  return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in arrays.items()}


def pad_items(items: list, multiple: int) -> tuple[list, int]:
  """Repeats the first item to a multiple of `multiple`; returns (items, real count)."""
  n = len(items)
  return items + [items[0]] * (-n % multiple), n


@dataclasses.dataclass
class History:
  losses: list[float] = dataclasses.field(default_factory=list)  # train loss of each step run
  steps: list[int] = dataclasses.field(default_factory=list)  # 1-based step numbers
  eval: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, val loss)
  naive_eval: float | None = None  # val loss of the untrained (naive) cache path
  text_eval: float | None = None  # val loss of the text synthesizer (base model, texts pasted)
  step_s: list[float] = dataclasses.field(default_factory=list)
  tokens_per_s: list[float] = dataclasses.field(default_factory=list)
  compile_s: float | None = None


def gather(x) -> np.ndarray:
  """A global array -> the whole of it as host numpy, on every process."""
  from jax.experimental import multihost_utils

  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def fetch(x) -> np.ndarray:
  """A replicated global array -> host numpy (this process's copy; works multi-host)."""
  return np.asarray(x.addressable_data(0))


class Trainer:
  """Trains the LoRA + mapper of `loaded` on examples with saved branches."""

  def __init__(self, loaded: Loaded, cfg, mesh=None):
    self.loaded, self.cfg = loaded, cfg
    t = cfg.train
    self.accum = int(t.grad_accum)
    if t.batch_size % self.accum:
      raise ValueError(f"train.batch_size={t.batch_size} is not a multiple of "
                       f"train.grad_accum={self.accum}")
    self.micro = t.batch_size // self.accum
    self.mesh = mesh if mesh is not None else sharding.make_mesh(
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    if self.micro % dp:
      raise ValueError(f"micro-batch {self.micro} (batch_size / grad_accum) must be a multiple "
                       f"of the {dp} data-parallel devices")
    self.rules = sharding.DEFAULT_RULES
    self.synth = build_synthesizer(loaded, cfg)
    sharding.shard_params(self.synth, self.mesh, self.rules)
    self.split = step_lib.Split.of(self.synth)
    self.tx, self.schedule = step_lib.make_optimizer(t)
    tr_sh, _ = step_lib.shardings(self.split, self.mesh, self.rules)
    self.trainable = jax.tree.map(sharding.to_global, self.split.trainable, tr_sh)
    self.frozen = self.split.frozen
    self._tr_sh = tr_sh
    fr_sh = jax.tree.map(lambda x: x.sharding, self.frozen)
    with sharding.use_mesh(self.mesh, self.rules):
      self.opt_state = jax.jit(self.tx.init)(self.trainable)
    self._opt_sh = jax.tree.map(lambda x: x.sharding, self.opt_state)
    repl = step_lib.replicated(self.mesh)
    train_step = step_lib.make_train_step(self.split, self.tx, mode=cfg.synthesis.mode,
                                          kl_weight=float(t.kl_weight))
    self._step = jax.jit(train_step, in_shardings=(tr_sh, fr_sh, self._opt_sh, None),
                         out_shardings=(tr_sh, self._opt_sh, repl), donate_argnums=(0, 2))
    self._encode = jax.jit(
        lambda tr_, fr, b, length: loss_lib.encode_branches(self.split.merge(tr_, fr).model, b,
                                                           length),
        in_shardings=(tr_sh, fr_sh, None), static_argnums=3)
    self._eval = {
        key: jax.jit(step_lib.make_eval_step(self.split, mode=cfg.synthesis.mode, lora=on,
                                             use_mapper=on),
                     in_shardings=(tr_sh, fr_sh, None), out_shardings=repl)
        for key, on in (("trained", True), ("naive", False))}
    self._eval["text"] = jax.jit(step_lib.make_text_eval_step(self.split),
                                 in_shardings=(tr_sh, fr_sh, None), out_shardings=repl)
    self.signature = signature(loaded, cfg)
    self.stop_id = loaded.eos_ids[0] if loaded.eos_ids else loaded.tokenizer.eos_token_id

  # ------------------------------------------------------------------ data
  def tokenize(self, examples: Sequence[Example], with_text: bool = False):
    d = self.cfg.data
    return [batch_lib.tokenize(self.loaded.tokenizer, ex, self.stop_id, with_text=with_text,
                               max_branch_tokens=d.max_branch_tokens,
                               max_target_tokens=d.max_target_tokens) for ex in examples]

  def _to_device(self, arrays: dict[str, np.ndarray], accum: bool) -> dict[str, jax.Array]:
    put = lambda v: sharding.to_global(
        v, step_lib.batch_sharding(self.mesh, self.rules, v.ndim, accum=accum))
    return {k: put(v) for k, v in arrays.items()}

  def encode_all(self, items, desc: str = "branch caches") -> list[dict[str, np.ndarray]]:
    """Every example's branch caches, computed once (base model) and kept on the host:
    later steps read them instead of re-running the workers' prefill (same numbers)."""
    G = bucket(max(len(o) for it in items for o in it.branch_outputs))
    W = batch_lib.batch_sizes(items)["W"]  # one shape for every chunk: one compile
    c = self.loaded.config
    per_example = (len(items[0].branch_outputs) * c.num_layers * G * c.num_kv_heads *
                   c.head_dim * 2 * np.dtype(c.jnp_dtype).itemsize)
    log.info("caching branch K/V of %d examples on the host: %.2f GB", len(items),
             per_example * len(items) / 1e9)
    out = []
    steps = range(0, len(items), self.micro)
    for i in tqdm(steps, desc=desc, disable=jax.process_index() != 0 or len(steps) < 4):
      chunk, n = pad_items(list(items[i:i + self.micro]), self.micro)
      b = {k: v for k, v in batch_lib.collate(chunk, sizes=dict(W=W)).items()
           if k in ("worker_tokens", "worker_positions", "out_start")}
      with sharding.use_mesh(self.mesh, self.rules):
        enc = self._encode(self.trainable, self.frozen, self._to_device(b, accum=False), G)
      enc = {k: gather(v) for k, v in enc.items()}
      N = enc["branch_k"].shape[0] // len(chunk)
      out += [{k: v[j * N:(j + 1) * N] for k, v in enc.items()} for j in range(n)]
    return out

  def host_batch(self, items, branches=None, with_text: bool = False,
                 sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """A batch of tokenized examples as numpy; with `branches`, their cached branch K/V
    replace the workers' rows. `sizes`: fixed W/T/Tt (one compiled shape for a whole run)."""
    b = batch_lib.collate(items, with_text=with_text, sizes=sizes)
    if branches is not None:
      for k in ("worker_tokens", "worker_positions", "out_start"):
        b.pop(k)
      b.update({k: np.concatenate([br[k] for br in branches]) for k in branches[0]})
    return b

  # ------------------------------------------------------------------ eval
  def evaluate(self, items, which: str = "trained", branches=None) -> float:
    """Mean target-token cross-entropy on `items` (val loss): the trained or the naive cache
    path, or the text synthesizer (`which="text"`: needs items tokenized `with_text`)."""
    if which == "text":  # the same targets after the text synthesizer's prompt
      items = [dataclasses.replace(it, synth_prompt=it.text_prompt) for it in items]
      branches = None
    sizes = batch_lib.batch_sizes(items)
    ce = tokens = 0.0
    for i in range(0, len(items), self.micro):
      chunk, n = pad_items(list(items[i:i + self.micro]), self.micro)
      br = None if branches is None else pad_items(list(branches[i:i + self.micro]), self.micro)[0]
      b = self.host_batch(chunk, br, sizes=sizes)
      b["loss_mask"][n:] = 0.0  # padding examples score nothing
      dev = self._to_device(b, accum=False)
      with sharding.use_mesh(self.mesh, self.rules):
        out = self._eval[which](self.trainable, self.frozen, dev)
      ce += float(fetch(out["ce"]))
      tokens += float(fetch(out["tokens"]))
    return ce / max(tokens, 1.0)

  # ------------------------------------------------------------------ loop
  def fit(self, train: Sequence[Example], val: Sequence[Example] = (), *,
          until: int | None = None, progress: bool = True) -> History:
    """Trains to `train.steps` (or stops after step `until`), resuming from the workdir."""
    cfg, t = self.cfg, self.cfg.train
    if not train:
      raise ValueError("no training examples")
    workdir = str(cfg.workdir).rstrip("/")  # a local path or a bucket URL (no pathlib)
    ckpts = Checkpoints(f"{workdir}/checkpoints", max_to_keep=t.keep_checkpoints)
    writer = ScalarWriter(f"{workdir}/tensorboard")
    hist = History()
    start = 0
    latest = ckpts.latest_step()
    if latest is not None:
      self.trainable, self.opt_state, meta = ckpts.restore(latest, self.trainable, self.opt_state,
                                                           self.signature)
      start = latest
      if meta["examples_seen"] != start * t.batch_size:
        raise ValueError(f"checkpoint {latest} has seen {meta['examples_seen']} examples; "
                         f"batch_size={t.batch_size} would need {start * t.batch_size}")
      log.info("resumed from %s at step %d", ckpts.directory, start)
    train_items = self.tokenize(train, with_text=t.kl_weight > 0)
    val_items = self.tokenize(val, with_text=True) if val else []
    sizes = batch_lib.batch_sizes(train_items, with_text=t.kl_weight > 0)
    train_br = val_br = None
    if t.cache_branches:
      train_br = self.encode_all(train_items, "train branch caches")
      val_br = self.encode_all(val_items, "val branch caches") if val_items else None
    if val_items:
      hist.naive_eval = self.evaluate(val_items, "naive", val_br)
      hist.text_eval = self.evaluate(val_items, "text")
      writer.write(start, {"eval/naive_loss": hist.naive_eval, "eval/text_loss": hist.text_eval})
    end = min(int(t.steps), int(until) if until is not None else int(t.steps))
    bar = tqdm(range(start, end), initial=start, total=int(t.steps), desc="train",
               disable=not progress or jax.process_index() != 0)
    last_good = latest
    try:
      for s in bar:
        idx = batch_indices(len(train_items), s, t.batch_size, cfg.seed)
        host = self.host_batch([train_items[i] for i in idx],
                               None if train_br is None else [train_br[i] for i in idx],
                               with_text=t.kl_weight > 0, sizes=sizes)
        # Tokens run through the model this step: the synthesizer rows (forward + backward),
        # and the workers' rows too unless their branch caches were computed once up front.
        n_tok = int((host["synth_positions"] >= 0).sum() + (
            0 if train_br is not None else (host["worker_positions"] >= 0).sum()))
        batch = self._to_device(split_accum(host, self.accum), accum=True)
        t0 = time.perf_counter()
        with sharding.use_mesh(self.mesh, self.rules):
          self.trainable, self.opt_state, m = self._step(self.trainable, self.frozen,
                                                         self.opt_state, batch)
        m = {k: float(fetch(v)) for k, v in m.items()}
        dt = time.perf_counter() - t0
        step = s + 1
        if not math.isfinite(m["loss"]):
          raise FloatingPointError(
              f"loss is {m['loss']} at step {step}; training stopped. The last good checkpoint "
              f"(step {last_good}) is kept in {ckpts.directory}")
        if s == start:
          hist.compile_s = dt
        else:
          hist.step_s.append(dt)
          hist.tokens_per_s.append(n_tok / dt)
        hist.losses.append(m["loss"])
        hist.steps.append(step)
        scalars = {"train/loss": m["loss"], "train/perplexity": m["perplexity"],
                   "train/lr": float(self.schedule(s)), "train/grad_norm": m["grad_norm"],
                   "train/tokens_per_s": n_tok / dt, "train/target_tokens": m["tokens"]}
        if t.kl_weight > 0:
          scalars.update({"train/ce": m["ce"], "train/kl": m["kl"]})
        writer.write(step, scalars)
        bar.set_postfix(loss=f"{m['loss']:.4f}")
        if val_items and (step % t.eval_every == 0 or step == end):
          v = self.evaluate(val_items, "trained", val_br)
          hist.eval.append((step, v))
          writer.write(step, {"eval/loss": v})
          log.info("step %d: train loss %.4f, val loss %.4f (naive %.4f)", step, m["loss"], v,
                   hist.naive_eval)
        if step % t.save_every == 0 or step == end:
          ckpts.save(step, self.trainable, self.opt_state,
                     {"examples_seen": step * t.batch_size, "signature": self.signature})
          last_good = step
        writer.flush()
    finally:
      bar.close()
      ckpts.close()
      writer.close()
    return hist

  def host_trainable(self) -> dict:
    """The trainable parameters gathered to host numpy on every process."""
    return jax.tree.map(gather, self.trainable)

  def synthesizer(self) -> step_lib.Synthesizer:
    """The trained synthesizer (model with LoRA + mapper) as an NNX module."""
    return self.split.merge(self.host_trainable())

  def save_adapter(self, out_dir: str | Path) -> Path | None:
    """Writes the LoRA + mapper as a psynth adapter directory (process 0; others gather only)."""
    from psynth.convert.adapter_dir import save_adapter_dir

    synth = self.synthesizer()
    if jax.process_index() != 0:
      return None
    return save_adapter_dir(out_dir, synth.model, synth.mapper)
