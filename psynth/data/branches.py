"""Branch generation, once, with the base model: worker outputs and the text synthesizer's answer.

    examples = load_examples("data/train.jsonl")
    generate_branches(loaded, examples, "data/train.branches.jsonl")

Workers run greedily on the base weights, batched across several examples at once (every
worker prompt of `batch_examples` examples in one generate call); the text synthesizer
(`prompts.synth_text`, base model) then answers from their texts, batched the same way.
`distill` examples take that answer as their target. Examples with the same question and
branch inputs (a distill copy and its original) are generated once. Fixed-branch examples
(`meta["fixed"]`) already have their outputs: they pass through untouched, nothing runs for them.

Output is appended batch by batch to `<out>.partial` (flushed and fsynced); a rerun continues
after the last complete batch, and the finished file is moved onto `<out>` (os.replace), so
`<out>` is never half-written. Batches start at multiples of `batch_examples` whatever the
interruption, because greedy outputs can depend on what else is in the batch (padding changes
float rounding): an interrupted run then ends with the same file as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tqdm import tqdm

from psynth.data.build import write_jsonl
from psynth.data.example import Example, is_empty_branch
from psynth.synthesis import chat, prompts
from psynth.synthesis.generate import SamplingConfig

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the front door sits above this module
  from psynth.loading import Loaded


def _has_empty_branch(ex: Example) -> bool:
  """Flagged at generation, or (files written before the flag followed `is_empty_branch`) an
  output that is whitespace only."""
  return bool(ex.meta.get("empty_branches")) or any(is_empty_branch(o)
                                                      for o in ex.branch_outputs or ())


def load_examples(path: str | Path, *, include_dropped: bool = False) -> list[Example]:
  """Examples from a jsonl file. Those with an empty branch output are skipped (training cannot
  encode an empty branch; the count is logged) unless `include_dropped`."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"example file {path} does not exist")
  out, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        d = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n} is not valid JSON ({e.msg}); expected one example per "
                         "line") from None
      ex = Example.from_dict(d, where=f"{path}:{n}")
      if include_dropped or not _has_empty_branch(ex):
        out.append(ex)
      else:
        dropped += 1
  if dropped:
    log.info("dropped %d examples with an empty branch from %s", dropped, path)
  return out


def _signature(ex: Example) -> str:
  return json.dumps([ex.question, ex.branch_inputs], ensure_ascii=False)


def _read_partial(partial: Path) -> list[Example]:
  """Complete lines of an interrupted run; a torn last line is cut off the file."""
  if not partial.exists():
    return []
  data = partial.read_bytes()
  keep = data[:data.rfind(b"\n") + 1]
  if len(keep) != len(data):
    with open(partial, "r+b") as f:
      f.truncate(len(keep))
  return [Example.from_dict(json.loads(line), where=f"{partial}:{i + 1}")
          for i, line in enumerate(keep.decode("utf-8").splitlines()) if line.strip()]


def _check_resume(done: Sequence[Example], examples: Sequence[Example], settings: dict,
                  where: Path) -> None:
  for i, d in enumerate(done):
    if i >= len(examples) or d.id != examples[i].id or _signature(d) != _signature(examples[i]):
      raise ValueError(f"{where} line {i + 1} holds example {d.id!r}, but the inputs given have "
                       f"{examples[i].id if i < len(examples) else 'no example'!r} there; it was "
                       "made from other inputs: delete it or pass the inputs it was made from")
    if not d.meta.get("fixed") and d.meta.get("generation") != settings:
      raise ValueError(f"{where} line {i + 1} was generated with {d.meta.get('generation')}; this "
                       f"run uses {settings}: delete it or use the same settings")


def _generate_texts(loaded: Loaded, messages: Sequence, max_new: int, rows: int):
  """Greedy answers to chat `messages`, `rows` at a time (short calls are padded to `rows`
  by repeating the last prompt, so every call has the same batch shape: fewer compiles)."""
  tok = loaded.tokenizer
  ids = [chat.encode(tok, m) for m in messages]
  sampling = SamplingConfig(max_new_tokens=max_new)
  out: list[list[int]] = []
  for s in range(0, len(ids), rows):
    part = ids[s:s + rows]
    gen = loaded.engine.generate(part + [part[-1]] * (rows - len(part)), sampling, loaded.eos_ids)
    out += gen.tokens[:len(part)]
  return out


Generated = tuple[list[list[int]], list[str], str]  # worker token ids, worker texts, text answer


def _generate(loaded: Loaded, batch: Sequence[Example], memo: dict[str, Generated],
              settings: dict, worker_rows: int, synth_rows: int) -> None:
  """Runs workers, then the text synthesizer, for the batch's inputs not yet in `memo`."""
  decode = lambda t: loaded.tokenizer.decode(t, skip_special_tokens=True).strip()
  jobs: dict[str, Example] = {}
  for ex in (e for e in batch if not e.meta.get("fixed")):
    s = _signature(ex)
    if s not in memo and s not in jobs:
      jobs[s] = ex
  if not jobs:
    return
  worker_ids = iter(_generate_texts(
      loaded, [prompts.worker(ex.question, b) for ex in jobs.values() for b in ex.branch_inputs],
      settings["worker_max_new_tokens"], worker_rows))
  ids = {s: [next(worker_ids) for _ in ex.branch_inputs] for s, ex in jobs.items()}
  texts = {s: [decode(t) for t in ids[s]] for s in jobs}
  answers = _generate_texts(loaded, [prompts.synth_text(ex.question, texts[s])
                                     for s, ex in jobs.items()], settings["max_new_tokens"],
                            synth_rows)
  for s, a in zip(jobs, answers):
    memo[s] = (ids[s], texts[s], decode(a))


def _filled(ex: Example, gen: Generated, settings: dict) -> Example:
  """`ex` with its branches and text answer; a distill example's target is that answer."""
  ids, texts, answer = gen
  meta = dict(ex.meta, generation=settings, branch_token_ids=ids)
  empty = [i for i, t in enumerate(texts) if is_empty_branch(t)]
  if empty:
    meta["empty_branches"] = empty
  return dataclasses.replace(ex, branch_outputs=texts, text_answer=answer,
                             target=answer if ex.kind == "distill" else ex.target, meta=meta)


def generate_branches(loaded: Loaded, examples: Sequence[Example], out_path: str | Path, *,
                      worker_max_new_tokens: int = 48, max_new_tokens: int = 32, batch_examples: int = 4,
                      limit: int | None = None, progress: bool = True) -> list[Example]:
  """Fills branch_outputs / text_answer (and distill targets) of `examples` into `out_path`.

  Resumes from `<out_path>.partial`; `limit` stops after that many more examples (the file
  then stays partial). Returns the examples finished so far, in input order.
  """
  if batch_examples < 1 or worker_max_new_tokens < 1 or max_new_tokens < 1:
    raise ValueError(f"batch_examples={batch_examples}, worker_max_new_tokens={worker_max_new_tokens}, "
                     f"max_new_tokens={max_new_tokens}; all must be >= 1")
  out_path = Path(out_path)
  partial = out_path.with_name(out_path.name + ".partial")
  settings = dict(model=loaded.path.name, worker_max_new_tokens=worker_max_new_tokens,
                  max_new_tokens=max_new_tokens)
  if out_path.exists() and not partial.exists():
    done = load_examples(out_path, include_dropped=True)
    _check_resume(done, examples, settings, out_path)
    if len(done) == len(examples):
      return done
    os.replace(out_path, partial)  # fewer than asked for (a smaller earlier run): continue it
  done = _read_partial(partial)
  _check_resume(done, examples, settings, partial)
  if len(done) % batch_examples:  # cut inside a batch: redo it whole, as an uninterrupted run did
    done = done[:len(done) - len(done) % batch_examples]
    write_jsonl(partial, done)
  todo = list(examples[len(done):])
  if limit is not None:
    todo = todo[:limit]
  generated = [ex for ex in examples if not ex.meta.get("fixed")]
  rows = batch_examples * max((len(ex.branch_inputs) for ex in generated), default=1)
  memo = {_signature(ex): (ex.meta["branch_token_ids"], ex.branch_outputs, ex.text_answer)
          for ex in done if not ex.meta.get("fixed")}
  partial.parent.mkdir(parents=True, exist_ok=True)
  with open(partial, "a", encoding="utf-8") as f, tqdm(
      total=len(examples), initial=len(done), desc=f"branches {out_path.name}", unit="ex",
      disable=not progress) as bar:
    for s in range(0, len(todo), batch_examples):
      batch = todo[s:s + batch_examples]
      _generate(loaded, batch, memo, settings, rows, batch_examples)
      batch = [ex if ex.meta.get("fixed") else _filled(ex, memo[_signature(ex)], settings)
               for ex in batch]
      f.write("".join(ex.to_json() + "\n" for ex in batch))
      f.flush()
      os.fsync(f.fileno())
      done += batch
      bar.update(len(batch))
  if len(done) == len(examples):
    os.replace(partial, out_path)
  return done
