"""`python -m psynth eval`: tasks x methods on one model, in one run, sharded and resumable.

    summary = eval_main(EvalSettings.from_config(cfg), "arc_easy,hotpotqa",
                        "single,text,naive", limit=5, output_dir="runs/eval")

Per task, this shard's examples (index % num_shards == shard_id, after `limit`) are run in
batches of `batch` examples, in order: the workers once per example (texts saved to
branches/), then every method not yet in its predictions file, as one batched call per
method (one line per example, flushed). A rerun skips what is saved, so an interrupted
evaluation continues where it stopped. Each task logs how many XLA compilations it made and
how long they took (DIR/compiles.json); with the persistent compilation cache on, a rerun of
the same command compiles nothing. With one shard the run ends by merging (summary.json,
results.md); with several, `report.merge_main(DIR)` runs once every shard has finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import jax
from tqdm import tqdm

from psynth import adapters
from psynth.data.branches import load_examples
from psynth.data.sources import data_dir
from psynth.eval import methods as methods_lib
from psynth.eval import records, report
from psynth.eval.settings import EvalSettings
from psynth.eval.tasks import BuildOptions, Task, TaskUnavailable, get_tasks
from psynth.loading import load
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.generate import SamplingConfig

log = logging.getLogger(__name__)

NO_ADAPTER = (
    "method 'psynth' needs --adapter=DIR, a trained synthesizer adapter: the WORKDIR/adapter "
    "folder that `python -m psynth train --config=... --config.workdir=WORKDIR` writes (after "
    "`python -m psynth data` builds its data), or a PEFT adapter or reference release "
    "(cache_mapper.pt + judger_lora/), e.g. converted by `python -m psynth export`. "
    "Or leave psynth out of eval.methods.")


def trained_groups(path: str | Path) -> set[str]:
  """The source questions ("task/id", `meta["group"]`) of a training example file."""
  return {ex.meta["group"] for ex in load_examples(path, include_dropped=True)
          if "group" in ex.meta}


def held_out(task: Task, items, trained: set[str]) -> list:
  """`items` without those whose source question is in `trained`."""
  return [it for it in items if f"{task.name}/{it.id}" not in trained]


def parse_methods(methods) -> list[str]:
  names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
  names = [m for m in names if m]
  bad = [m for m in names if m not in methods_lib.METHODS]
  if bad or not names:
    raise ValueError(f"methods {bad or names!r} unknown; choose from {methods_lib.METHODS}")
  return list(dict.fromkeys(names))


def resolve_shards(num_shards: int | None, shard_id: int | None) -> tuple[int, int]:
  """(num_shards, shard_id); None (or -1) takes the JAX process count / index."""
  n = jax.process_count() if num_shards in (None, -1) else int(num_shards)
  k = jax.process_index() if shard_id in (None, -1) else int(shard_id)
  if n < 1 or not 0 <= k < n:
    raise ValueError(f"num_shards={n}, shard_id={k}; need num_shards >= 1 and "
                     f"0 <= shard_id < num_shards")
  return n, k


def check_run_file(out: Path, settings: EvalSettings) -> None:
  """Writes DIR/run.json, or checks that the results already in DIR were made like this run."""
  want = dataclasses.asdict(settings)
  path = out / "run.json"
  if path.is_file():
    have = json.loads(path.read_text())
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    if diff:
      raise ValueError(f"{out} holds results made with { {k: have.get(k) for k in diff} }; this "
                       f"run uses { {k: want.get(k) for k in diff} }: pass another eval.output_dir, "
                       "or the same settings to continue it")
  else:
    records.write_json(path, want)


def _gold_shown(gold):
  """The part of an item's gold worth a prediction line (not a code task's whole test suite)."""
  if isinstance(gold, dict):
    return gold.get("answer", gold.get("task_id"))
  return gold


def _record(task: Task, index: int, item, method: str, r: methods_lib.Reply,
            branch_tokens: int, adapter, batch: int) -> dict:
  s = task.score(r.prediction, item)
  rec = {"id": item.id, "index": index, "task": task.name, "method": method,
         "prediction": r.prediction, "extracted": s.extracted, "correct": s.correct,
         "gold": _gold_shown(item.gold), "ttft_s": r.ttft_s, "total_s": r.total_s,
         "prompt_tokens": r.prompt_tokens, "answer_tokens": r.answer_tokens,
         "branch_tokens": branch_tokens, "batch": batch}
  if s.f1 is not None:
    rec["f1"] = s.f1
  if method == "psynth":
    rec["adapter"] = str(adapter)
  return rec


class _Budget:
  """Stops the run after `limit` predictions (None: never); what a rerun then continues."""

  def __init__(self, limit: int | None):
    self.left = limit

  def spend(self) -> bool:
    if self.left is not None:
      self.left -= 1
    return self.left is not None and self.left <= 0


def _run_task(loaded, task: Task, items, methods, s: EvalSettings, out: Path, shard: tuple,
              adapter: Adapter | None, adapter_dir, budget: _Budget, progress: bool) -> bool:
  """Runs this shard's part of one task; False when the prediction budget ran out."""
  n, k = shard
  pred_dir = out / "predictions" / task.name
  done = {m: {r["id"] for r in records.read_shards(pred_dir, m)} for m in methods}
  saved = {r["id"]: r for r in records.read_shards(out / "branches", task.name)}
  todo = [(i, it) for i, it in enumerate(items)
          if i % n == k and any(it.id not in done[m] for m in methods)]
  answer = SamplingConfig(max_new_tokens=s.max_new_tokens, seed=s.seed)
  with contextlib.ExitStack() as stack:
    bfile = stack.enter_context(records.open_append(records.branch_file(out, task.name, k, n)))
    pfiles = {m: stack.enter_context(records.open_append(
        records.prediction_file(out, task.name, m, k, n))) for m in methods}
    bar = stack.enter_context(tqdm(total=sum(it.id not in done[m] for _, it in todo
                                             for m in methods),
                                   desc=f"eval {task.name}", disable=not progress))
    for b in range(0, len(todo), s.batch):
      batch = todo[b:b + s.batch]
      pending = [m for m in methods if any(it.id not in done[m] for _, it in batch)]
      branches, branch_tokens = None, [0] * len(batch)
      if any(m != "single" for m in pending):
        texts = _worker_texts(loaded, task, batch, s, saved, bfile)
        branches = methods_lib.branches_from_texts(loaded, task, [it for _, it in batch], texts,
                                                   s.worker_max_new_tokens)
        branch_tokens = [sum(int(branches.lengths[r]) for r in rows) for rows in branches.rows()]
      for m in pending:
        rs = methods_lib.replies(loaded, task, [it for _, it in batch], m, branches, answer,
                                 mode=s.mode, adapter=adapter)
        for (index, item), r, bt in zip(batch, rs, branch_tokens):
          if item.id in done[m]:
            continue  # a resumed batch: this one was saved before
          records.append(pfiles[m], _record(task, index, item, m, r, 0 if m == "single" else bt,
                                            adapter_dir, len(batch)))
          bar.update(1)
          if budget.spend():
            return False
  return True


def _worker_texts(loaded, task: Task, batch, s: EvalSettings, saved: dict, bfile) -> list:
  """Each item's worker texts: saved ones as they are, the rest generated (and saved)."""
  missing = [(i, it) for i, it in batch if it.id not in saved]
  if missing:
    samplings = [methods_lib.worker_sampling(task, it, s.worker_max_new_tokens,
                                             s.worker_temperature, s.worker_top_p, s.seed)
                 for _, it in missing]
    for (index, it), w in zip(missing, methods_lib.worker_texts(
        loaded, task, [it for _, it in missing], samplings)):
      saved[it.id] = {"id": it.id, "index": index, **w}
      if task.branching != "fixed":  # fixed branches are the items' own: nothing to save
        records.append(bfile, saved[it.id])
  return [saved[it.id]["texts"] for _, it in batch]


def _record_compiles(out: Path, compile_log: dict, task: str, shard: str, c) -> None:
  """Logs and saves (DIR/compiles.json) a task's `methods.compiles()` figures."""
  compiled, seconds, loaded = c[0] - c[2], c[1], c[2]
  compile_log[f"{task}/{shard}"] = {"compiles": compiled, "loaded_from_cache": loaded,
                                    "compile_s": round(seconds, 2)}
  records.write_json(out / "compiles.json", compile_log)
  log.info("%s: %d XLA compilations, %d executables loaded from the persistent cache; %.1f s",
           task, compiled, loaded, seconds)


def eval_main(s: EvalSettings, tasks, methods, limit: int | None = None,
              output_dir: str | Path = "runs/eval", adapter: str | Path | None = None,
              num_shards: int | None = None, shard_id: int | None = None, *, gaia_dir: str = "",
              max_predictions: int | None = None, loaded=None,
              progress: bool = True) -> dict | None:
  """Evaluates `methods` on `tasks` (names, or comma-separated strings); returns the summary
  (task -> method -> stats) when this run merged, None when another shard still has to finish
  or `max_predictions` stopped it early. `loaded`: a model already loaded for `s.model` (its
  model gets the adapter's LoRA)."""
  task_list, method_list = get_tasks(tasks), parse_methods(methods)
  if adapter is not None and str(adapter).lower() in adapters.NONE:
    adapter = None
  if "psynth" in method_list and not adapter:
    raise ValueError(NO_ADAPTER)
  if limit is not None and limit < 1:
    raise ValueError(f"limit={limit}; pass a positive number of examples per task, or None for all")
  n, k = resolve_shards(num_shards, shard_id)
  out = Path(output_dir)
  check_run_file(out, s)
  opts = BuildOptions(data_dir(s.data_dir or None), s.num_branches, s.max_branch_words, s.seed,
                      gaia_dir)
  trained = trained_groups(s.held_out_from) if s.held_out_from else set()
  built, skipped = {}, {}
  for task in task_list:
    try:
      built[task.name] = held_out(task, task.build(opts), trained)[:limit]
    except TaskUnavailable as e:
      skipped[task.name] = str(e)
      log.warning("%s", e)
      print(f"[psynth eval] skipping {task.name}: {e}")
  records.write_json(out / "skipped.json", skipped)

  if loaded is None:
    loaded = load(s.model, dtype=s.dtype)
  synth_adapter = None
  if "psynth" in method_list:
    if loaded.adapter is None:
      loaded = load(s.model, dtype=s.dtype, adapter=adapter)
    synth_adapter = loaded.adapter

  budget = _Budget(max_predictions)
  compile_log = records.read_json(out / "compiles.json")
  for task in task_list:
    if task.name not in built:
      continue
    with methods_lib.compiles() as c:
      finished = _run_task(loaded, task, built[task.name], method_list, s, out, (n, k),
                           synth_adapter, adapter, budget, progress)
    _record_compiles(out, compile_log, task.name, f"shard-{k}-of-{n}", c)
    if not finished:
      log.info("stopped after max_predictions=%d; rerun to continue", max_predictions)
      return None
  if n > 1:
    log.info("shard %d of %d done; merge with report.merge_main(%r) once all have finished",
             k, n, str(out))
    return None
  return report.merge_main(out)
