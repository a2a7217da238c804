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

from psynth import adapters, sharding
from psynth.cache import mappers
from psynth.convert import lora_names
from psynth.convert.adapter_dir import load_adapter_dir, save_adapter_dir
from psynth.data.example import Example
from psynth.model.lora import add_lora
from psynth.model.stacking import stack_layers, unstack_layers
from psynth.model.transformer import Transformer
from psynth.train import batch as batch_lib
from psynth.train import step as step_lib
from psynth.train import val_accuracy
from psynth.train.checkpoint import Checkpoints
from psynth.train.logs import ScalarWriter
from psynth.train.sampler import Sampler
from psynth.train.settings import TrainSettings

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded

log = logging.getLogger(__name__)


def build_synthesizer(model: Transformer, cfg: TrainSettings) -> step_lib.Synthesizer:
  """`model` with a fresh LoRA (B = 0) and a fresh mapper (last layer 0): the identity, or,
  with `train.init_adapter`, that adapter's LoRA and mapper; its layers stored stacked with
  `model.scan_layers` (in place). Under `nnx.eval_shape` it builds shapes only (`psynth.aot`)."""
  c = model.config
  if cfg.train.init_adapter:
    model, mapper = _from_adapter(model, cfg)
  else:
    model = add_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                     targets=tuple(cfg.lora.targets), rngs=nnx.Rngs(cfg.seed))
    mapper = mappers.make(cfg.mapper.kind, c.num_layers, c.num_kv_heads,
                          rngs=nnx.Rngs(cfg.seed + 1))
  if cfg.model.scan_layers:
    stack_layers(model)
  return step_lib.Synthesizer(model, mapper)


def _from_adapter(model: Transformer, cfg: TrainSettings):
  """(model with the adapter's LoRA, its mapper) for `train.init_adapter`; refuses an adapter
  whose LoRA settings or mapper kind differ from the config's, naming both."""
  path = adapters.resolve(cfg.model.name, cfg.train.init_adapter)
  if path is None:
    raise ValueError(f"train.init_adapter={cfg.train.init_adapter!r}: pass a shipped adapter "
                     "name or an adapter directory ('' starts from the identity)")
  mapper = load_adapter_dir(path, model)
  got = lora_names.settings(model)
  want = (int(cfg.lora.rank), float(cfg.lora.alpha), tuple(sorted(cfg.lora.targets)))
  have = (int(got.rank), float(got.alpha), tuple(sorted(got.targets)))
  kind = mapper.kind if mapper is not None else "none"
  if have != want or kind != cfg.mapper.kind:
    raise ValueError(f"train.init_adapter {path}: LoRA (rank, alpha, targets) = {have}, mapper "
                     f"{kind!r}; the config asks for {want}, mapper {cfg.mapper.kind!r} (set "
                     "lora.* and mapper.kind to match the adapter)")
  log.info("starting from adapter %s", path)
  return model, mapper


def signature(loaded: Loaded, cfg: TrainSettings) -> dict:
  """What a checkpoint must match to be resumed: model shape, adapter and mapper layout."""
  c = loaded.config
  return dict(layers=c.num_layers, hidden=c.hidden_size, heads=c.num_heads,
              kv_heads=c.num_kv_heads, head_dim=c.head_dim, vocab=c.vocab_size,
              lora=dict(rank=int(cfg.lora.rank), alpha=float(cfg.lora.alpha),
                        targets=list(cfg.lora.targets)), mapper=cfg.mapper.kind)


def split_accum(arrays: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """Leading (example or branch-row) axis -> `[accum, rows / accum, ...]`."""
  return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in arrays.items()}


def _by_group(items: Sequence, size: int) -> list[tuple[dict, list]]:
  """(sizes, chunk of at most `size` items) for every shape group (one compiled shape each)."""
  keys, sizes = batch_lib.groups(items)
  members: dict[tuple, list] = {}
  for key, it in zip(keys, items):
    members.setdefault(key, []).append(it)
  return [(dict(sizes, N=k[0], W=k[1]), g[i:i + size]) for k, g in sorted(members.items())
          for i in range(0, len(g), size)]


def spread(items: Sequence, k: int) -> list:
  """k items evenly spread over `items` (all if k >= len; none if k <= 0): a val subset that
  samples every builder of a file written builder by builder."""
  if k <= 0 or not items:
    return []
  return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, min(k, len(items))).astype(int))]


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
  accuracy: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, val acc)
  naive_accuracy: float | None = None
  text_accuracy: float | None = None
  best: tuple[int, float] | None = None  # (step, val accuracy) of the best adapter
  step_s: list[float] = dataclasses.field(default_factory=list)
  tokens_per_s: list[float] = dataclasses.field(default_factory=list)
  compile_s: float = 0.0  # first steps of every shape group (compile included)


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

  def __init__(self, loaded: Loaded, settings: TrainSettings, mesh=None):
    if not isinstance(settings, TrainSettings):
      raise TypeError(f"Trainer takes TrainSettings (TrainSettings.from_config(cfg)), got "
                      f"{type(settings).__name__}")
    cfg = settings
    self.loaded, self.settings = loaded, settings
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
    self.synth = build_synthesizer(loaded.model, cfg)
    sharding.shard_params(self.synth, self.mesh, self.rules)
    self.split = step_lib.Split.of(self.synth)
    self.tx, self.schedule = step_lib.make_optimizer(t)
    scan = bool(cfg.model.scan_layers)
    self._step, sh = step_lib.jit_train_step(self.split, self.tx, self.mesh, self.rules,
                                             mode=cfg.synthesis.mode,
                                             kl_weight=float(t.kl_weight), scan=scan,
                                             remat=bool(t.remat))
    self.trainable = jax.tree.map(sharding.to_global, self.split.trainable, sh.trainable)
    self.frozen = self.split.frozen
    with sharding.use_mesh(self.mesh, self.rules):
      self.opt_state = jax.jit(self.tx.init, out_shardings=sh.opt)(self.trainable)
    tr_sh, fr_sh = sh.trainable, sh.frozen
    repl = step_lib.replicated(self.mesh)
    self._eval = {
        key: jax.jit(step_lib.make_eval_step(self.split, mode=cfg.synthesis.mode, lora=on,
                                             use_mapper=on, scan=scan),
                     in_shardings=(tr_sh, fr_sh, None), out_shardings=repl)
        for key, on in (("trained", True), ("naive", False))}
    self._eval["text"] = jax.jit(step_lib.make_text_eval_step(self.split, scan),
                                 in_shardings=(tr_sh, fr_sh, None), out_shardings=repl)
    self.signature = signature(loaded, cfg)
    self.stop_id = loaded.eos_ids[0] if loaded.eos_ids else loaded.tokenizer.eos_token_id

  # ------------------------------------------------------------------ data
  def tokenize(self, examples: Sequence[Example], with_text: bool = False):
    d = self.settings.data
    return [batch_lib.tokenize(self.loaded.tokenizer, ex, self.stop_id, with_text=with_text,
                               max_branch_tokens=d.max_branch_tokens,
                               max_target_tokens=d.max_target_tokens) for ex in examples]

  def _to_device(self, arrays: dict[str, np.ndarray], accum: bool) -> dict[str, jax.Array]:
    put = lambda v: sharding.to_global(
        v, step_lib.batch_sharding(self.mesh, self.rules, v.ndim, accum=accum))
    return {k: put(v) for k, v in arrays.items()}

  def host_batch(self, items, with_text: bool = False,
                 sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """A batch of tokenized examples as numpy. `sizes`: P/T/Tt fixed for a whole run, N and W
    those of the batch's shape group (`batch.groups`: one compiled step per group)."""
    return batch_lib.collate(items, with_text=with_text, sizes=sizes)

  # ------------------------------------------------------------------ eval
  def evaluate(self, items, which: str = "trained") -> float:
    """Mean target-token cross-entropy on `items` (val loss): the trained or the naive cache
    path, or the text synthesizer (`which="text"`: needs items tokenized `with_text`)."""
    if which == "text":  # the same targets after the text synthesizer's prompt
      items = [dataclasses.replace(it, synth_prompt=it.text_prompt) for it in items]
    ce = tokens = 0.0
    for sizes, chunk_items in _by_group(items, self.micro):
      chunk, n = pad_items(chunk_items, self.micro)
      b = self.host_batch(chunk, sizes=sizes)
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
    """Trains to `train.steps` (or stops after step `until`), resuming from the workdir.

    Every `eval_every` steps: the val loss and, if `train.val_accuracy_examples` > 0, the
    val answer accuracy (greedy cache synthesis, scored by containing the gold answers); the
    adapter with the best val accuracy so far is kept in `WORKDIR/best_adapter`. A step's
    metrics are fetched once the next step is dispatched (not before a checkpoint or eval).
    """
    cfg, t = self.settings, self.settings.train
    if not train:
      raise ValueError("no training examples")
    workdir = str(cfg.workdir).rstrip("/")  # a local path or a bucket URL (no pathlib)
    ckpts = Checkpoints(f"{workdir}/checkpoints", max_to_keep=t.keep_checkpoints)
    writer = ScalarWriter(f"{workdir}/tensorboard")
    hist = History()
    start = self._resume(ckpts)
    hist.best = val_accuracy.read_best(workdir)
    train_items = self.tokenize(train, with_text=t.kl_weight > 0)
    val = spread(val, int(t.val_examples))
    val_items = self.tokenize(val, with_text=True) if val else []
    acc_examples = spread(val, int(t.val_accuracy_examples))
    keys, sizes, sampler = self._sampler(train_items)
    if val_items:
      self._baselines(hist, val, val_items, acc_examples, writer, start)
    end = min(int(t.steps), int(until) if until is not None else int(t.steps))
    bar = tqdm(range(start, end), initial=start, total=int(t.steps), desc="train",
               disable=not progress or jax.process_index() != 0)
    self._last_good, self._last_done = start or None, time.perf_counter()
    compiled: set[tuple[int, int]] = set()
    pending = None
    try:
      for s in bar:
        step = s + 1
        idx = sampler.indices(s)
        N, W = keys[idx[0]]
        first = (N, W) not in compiled
        if first and pending is not None:  # a compiling step is timed on its own
          self._finish(pending, hist, writer, bar, ckpts)
          pending = None
        now = self._dispatch([train_items[i] for i in idx], dict(sizes, N=N, W=W), first, step)
        compiled.add((N, W))
        if pending is not None:
          self._finish(pending, hist, writer, bar, ckpts)
        pending = now
        due_eval = bool(val_items) and (step % t.eval_every == 0 or step == end)
        if due_eval or step % t.save_every == 0 or step == end:
          self._finish(pending, hist, writer, bar, ckpts)  # a checkpoint's step is checked
          pending = None
          if due_eval:
            self._validate(hist, val_items, acc_examples, writer, step, workdir)
          ckpts.save(step, self.trainable, self.opt_state,
                     {"examples_seen": step * t.batch_size, "signature": self.signature})
          self._last_good, self._last_done = step, time.perf_counter()
        writer.flush()
    finally:
      bar.close()
      ckpts.close()
      writer.close()
    return hist

  def _sampler(self, train_items):
    """(shape key of every example, padded sizes, the step -> batch sampler)."""
    t = self.settings.train
    keys, sizes = batch_lib.groups(train_items)
    if t.kl_weight > 0:
      sizes = batch_lib.batch_sizes(train_items, with_text=True)
    group_ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    log.info("%d training examples in %d shape groups (branches, row tokens): %s",
             len(train_items), len(group_ids), sorted(group_ids))
    return keys, sizes, Sampler([group_ids[k] for k in keys], t.batch_size, self.settings.seed)

  def _resume(self, ckpts: Checkpoints) -> int:
    """Restores the latest checkpoint, if any; returns its step (0 for a fresh run)."""
    latest = ckpts.latest_step()
    if latest is None:
      return 0
    self.trainable, self.opt_state, meta = ckpts.restore(latest, self.trainable, self.opt_state,
                                                         self.signature)
    bs = self.settings.train.batch_size
    if meta["examples_seen"] != latest * bs:
      raise ValueError(f"checkpoint {latest} has seen {meta['examples_seen']} examples; "
                       f"batch_size={bs} would need {latest * bs}")
    log.info("resumed from %s at step %d", ckpts.directory, latest)
    return latest

  def _dispatch(self, items, sizes, first: bool, step: int) -> dict:
    """Starts one optimizer step on `items`; returns what `_finish` needs (device metrics)."""
    t = self.settings.train
    host = self.host_batch(items, with_text=t.kl_weight > 0, sizes=sizes)
    # Tokens run through the model: the workers' rows (forward) and the synthesizer rows
    # (forward + backward).
    n_tok = int((host["synth_positions"] >= 0).sum() + (host["worker_positions"] >= 0).sum() +
                (host["prefix_positions"] >= 0).sum())
    batch = self._to_device(split_accum(host, self.accum), accum=True)
    with sharding.use_mesh(self.mesh, self.rules):
      self.trainable, self.opt_state, m = self._step(self.trainable, self.frozen, self.opt_state,
                                                     batch)
    return dict(step=step, metrics=m, n_tok=n_tok, first=first,
                branches=float(host["branch_lengths"].shape[1]))

  def _finish(self, p: dict, hist: History, writer, bar, ckpts: Checkpoints) -> None:
    """Fetches a dispatched step's metrics (waiting for it), checks them, logs them."""
    m = {k: float(fetch(v)) for k, v in p["metrics"].items()}
    done = time.perf_counter()
    # Wall time since the previous step finished: the step itself in a steady stream; the
    # first step of a shape group also compiles (reported apart).
    dt, self._last_done = done - self._last_done, done
    step = p["step"]
    if not math.isfinite(m["loss"]):
      raise FloatingPointError(
          f"loss is {m['loss']} at step {step}; training stopped. The last good checkpoint "
          f"(step {self._last_good}) is kept in {ckpts.directory}")
    if p["first"]:
      hist.compile_s += dt
    else:
      hist.step_s.append(dt)
      hist.tokens_per_s.append(p["n_tok"] / dt)
    out = {"loss": m["loss"], "perplexity": m["perplexity"],
           "lr": float(self.schedule(step - 1)), "grad_norm": m["grad_norm"],
           "tokens_per_s": p["n_tok"] / dt, "target_tokens": m["tokens"],
           "branches": p["branches"]}
    if self.settings.train.kl_weight > 0:
      out.update(ce=m["ce"], kl=m["kl"])
    hist.losses.append(m["loss"])
    hist.steps.append(step)
    writer.write(step, {f"train/{k}": v for k, v in out.items()})
    bar.set_postfix(loss=f"{m['loss']:.4f}")

  def _baselines(self, hist: History, val, val_items, acc_examples, writer, step: int) -> None:
    """What training starts from and aims at: the naive cache path and text synthesis.

    They do not depend on the adapter, so they are measured once per (base model, val
    examples, lengths) and kept in `WORKDIR/baselines.json`: a resumed run reads them.
    """
    cfg = self.settings
    path = f"{str(cfg.workdir).rstrip('/')}/{val_accuracy.BASELINES}"
    sig = {k: v for k, v in self.signature.items() if k not in ("lora", "mapper")}
    key = val_accuracy.baselines_key(
        cfg.model.name, sig, val, acc_examples,
        dict(mode=cfg.synthesis.mode, branch=cfg.data.max_branch_tokens,
             target=cfg.data.max_target_tokens, batch=cfg.train.val_batch))
    scalars = val_accuracy.read_baselines(path, key)
    if scalars is None:
      # Minutes on a CPU (each new inference shape compiles): say what runs and how long.
      jobs = [("eval/naive_loss", lambda: self.evaluate(val_items, "naive")),
              ("eval/text_loss", lambda: self.evaluate(val_items, "text"))]
      if acc_examples:
        jobs += [("eval/naive_accuracy", lambda: self.accuracy(acc_examples, "naive")),
                 ("eval/text_accuracy", lambda: self.accuracy(acc_examples, "text"))]
      scalars = {}
      for name, job in jobs:
        log.info("val baseline %s (%d val examples) ...", name,
                 len(val_items) if name.endswith("loss") else len(acc_examples))
        t0 = time.perf_counter()
        scalars[name] = job()
        log.info("val baseline %s = %.4f (%.0f s)", name, scalars[name], time.perf_counter() - t0)
      if jax.process_index() == 0:
        val_accuracy.write_baselines(path, key, scalars)
    else:
      log.info("val baselines read from %s", path)
    hist.naive_eval, hist.text_eval = scalars["eval/naive_loss"], scalars["eval/text_loss"]
    hist.naive_accuracy = scalars.get("eval/naive_accuracy")
    hist.text_accuracy = scalars.get("eval/text_accuracy")
    log.info("val baselines: %s", {k: round(v, 4) for k, v in scalars.items()})
    writer.write(step, scalars)

  def _validate(self, hist: History, val_items, acc_examples, writer, step: int,
                workdir: str) -> None:
    """Val loss (and accuracy) now; the adapter is kept if its accuracy is the best yet."""
    v = self.evaluate(val_items, "trained")
    hist.eval.append((step, v))
    scalars = {"eval/loss": v}
    if acc_examples:
      acc = self.accuracy(acc_examples, "psynth")
      hist.accuracy.append((step, acc))
      scalars["eval/accuracy"] = acc
      if hist.best is None or acc > hist.best[1]:
        hist.best = (step, acc)
        self.save_adapter(f"{workdir}/best_adapter")
        val_accuracy.write_best(workdir, step, acc, v)
    writer.write(step, scalars)
    log.info("step %d: val loss %.4f (naive %.4f, text %.4f)%s", step, v, hist.naive_eval,
             hist.text_eval, f", val accuracy {hist.accuracy[-1][1]:.3f} (naive "
             f"{hist.naive_accuracy:.3f}, text {hist.text_accuracy:.3f})" if acc_examples else "")

  def accuracy(self, examples: Sequence[Example], method: str) -> float:
    """Share of `examples` whose greedy synthesis (`method`: cache = the adapter as trained
    now, naive, text) contains every gold answer: `val_accuracy.score`."""
    synth = self.synthesizer() if method == "psynth" else None
    s = self.settings
    return val_accuracy.accuracy(self._inference(synth), examples, method,
                                 None if synth is None else synth.mapper, batch=s.train.val_batch,
                                 branch_slots=s.data.max_branch_tokens,
                                 max_new_tokens=s.data.max_target_tokens)

  def _inference(self, synth):
    """A `Loaded` over this trainer's model for greedy synthesis, built once (compiled once);
    its weights are the trained ones when `synth` is given."""
    if getattr(self, "_infer", None) is None:
      self._infer = val_accuracy.inference_model(self.loaded, self.synthesizer().model)
    if synth is not None:
      self._infer.engine.state = nnx.state(synth.model)
    return self._infer

  def host_trainable(self) -> dict:
    """The trainable parameters gathered to host numpy on every process."""
    return jax.tree.map(gather, self.trainable)

  def synthesizer(self) -> step_lib.Synthesizer:
    """The trained synthesizer (model with LoRA + mapper) as an NNX module, one `Block` per
    layer (as loaded, saved and served) even when training keeps them stacked."""
    synth = self.split.merge(self.host_trainable())
    unstack_layers(synth.model)
    return synth

  def save_adapter(self, out_dir: str | Path) -> Path | None:
    """Writes the LoRA + mapper as a psynth adapter directory (process 0; others gather only)."""
    synth = self.synthesizer()
    if jax.process_index() != 0:
      return None
    return save_adapter_dir(out_dir, synth.model, synth.mapper)
