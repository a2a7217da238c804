"""The data set before generation: every builder run, distill copies added, split, written.

    counts = build_dataset(data_dir, out_dir, num_branches=3, seed=0, limit_per_source=200,
                           val_fraction=0.1)     # -> out_dir/train.jsonl, out_dir/val.jsonl

Builders (`BUILDERS`) are named by what they make; each reads its records once and turns up to
`limit_per_source` of them (a seeded random subset) into examples. Randomness is per record
(`random.Random(f"{seed}:{builder}:{record id}")`), so an example does not change when the limit
or the other builders do. The split holds out whole groups (a group = one source question, with
all its kinds and its distill copy), a seeded `val_fraction` of every source's groups.

Documented copies (`documented.py`): a seeded `documented_fraction` of the fixed-branch
examples again, each branch's evidence now the notes of a worker that read it inside a longer
document (the form a real fan-out's caches have).

`num_branches` is the N of the builders whose workers still have to run; the fixed-branch ones
(`fixed_*`, see `fixed.py`) draw N in 2..8 per record. `DEFAULT_BUILDERS` is every builder
but `dbot_context`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable, Sequence

from psynth import atomic
from psynth.data import documented, fixed, procedural, real_tasks, seeds, sources
from psynth.data.chunks import clean
from psynth.data.example import Example


def _multihop(reader, source, make):
  return lambda root: [(q.id, lambda n, w, rng, q=q: make(q, source, n, w, rng))
                       for q in reader(root=root)]


def _arc(split, passages, make):
  def items(root):
    # The train and dev files repeat a few test questions (same stem, under other ids): they
    # stay evaluation items (arc_easy, arc_challenge, arc_easy_evidence read the test files).
    test = {clean(q.question).lower() for diff in sources.ARC_DIFFICULTIES
            for q in sources.read_arc(diff, "test", root=root)}
    out = []
    for diff in sources.ARC_DIFFICULTIES:
      src = f"arc_{diff}"
      out += [(f"{diff}/{q.id}", lambda n, w, rng, q=q, src=src: make(q, src, n, w, rng))
              for q in sources.read_arc(diff, split, passages=passages, root=root)
              if clean(q.question).lower() not in test]
    return out
  return items


def _gsm8k(root):
  return [(p.id, lambda n, w, rng, p=p: real_tasks.gsm8k_candidates(p, "gsm8k", n, w, rng))
          for p in sources.read_gsm8k("train", root=root)]


def _dbot(root):
  cases = sources.read_dbot(root=root)
  options = real_tasks.dbot_options(cases)
  return [(c.id, lambda n, w, rng, c=c: real_tasks.dbot_context(c, options, n, w)) for c in cases]


def _procedural(family, count=10_000):
  gen = procedural.GENERATORS[family]
  return lambda root: [(f"{i:05d}", lambda n, w, rng, i=i: gen(i, n, rng)) for i in range(count)]


# name -> root -> [(record id, (num_branches, max_branch_words, rng) -> Example | None)]
BUILDERS: dict[str, Callable] = {
    "hotpotqa_context": _multihop(lambda root: sources.read_hotpotqa(root=root), "hotpotqa",
                                  real_tasks.multihop_context),
    "hotpotqa_aggregation": _multihop(lambda root: sources.read_hotpotqa(root=root), "hotpotqa",
                                      real_tasks.multihop_aggregation),
    "musique_context": _multihop(sources.read_musique, "musique", real_tasks.multihop_context),
    "musique_aggregation": _multihop(sources.read_musique, "musique",
                                     real_tasks.multihop_aggregation),
    "arc_passages": _arc("dev", True, real_tasks.arc_passages),  # passages exist for dev/test
    "arc_candidates": _arc("train", False, real_tasks.arc_candidates),
    "gsm8k_candidates": _gsm8k,
    "dbot_context": _dbot,
    "procedural_chain": _procedural("chain"),
    "procedural_arith": _procedural("arith"),
    "procedural_infer": _procedural("infer"),
    # Finished branches (`fixed.py`): no worker runs for them.
    "fixed_facts": fixed.facts_items("facts"),
    "fixed_facts_multi": fixed.facts_items("facts_multi"),
    "fixed_multihop": fixed.multihop_items(),
    "fixed_strategyqa": fixed.strategyqa_items,
    "fixed_chain": fixed.procedural_items("chain"),
    "fixed_arith": fixed.procedural_items("arith"),
}
# Not dbot_context: the dbot evaluation scores all 62 D-Bot cases, so none may be trained on.
DEFAULT_BUILDERS = tuple(b for b in BUILDERS if b != "dbot_context")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  num_branches: int = 3
  seed: int = 0
  limit_per_source: int = 200  # records per builder; 0 = all
  val_fraction: float = 0.1
  max_branch_words: int = 120  # per branch input (~170 SmolLM2 tokens)
  distill_fraction: float = 0.25  # of the non-procedural examples, copied as `distill`
  documented_fraction: float = 0.5  # of the fixed-branch examples, copied with documents
  builders: tuple[str, ...] = DEFAULT_BUILDERS

  def __post_init__(self):
    unknown = [b for b in self.builders if b not in BUILDERS]
    if unknown:
      raise ValueError(f"unknown builder(s) {unknown}; choose from {list(BUILDERS)}")
    if self.num_branches < 2:
      raise ValueError(f"num_branches={self.num_branches}; must be >= 2 (aggregation spreads facts "
                       "over several branches)")
    if not 0 <= self.val_fraction < 1 or not 0 <= self.distill_fraction <= 1:
      raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1) and distill_fraction="
                       f"{self.distill_fraction} in [0, 1]")
    if not 0 <= self.documented_fraction <= 1:
      raise ValueError(f"documented_fraction={self.documented_fraction}; must be in [0, 1]")
    if self.limit_per_source < 0 or self.max_branch_words < 8:
      raise ValueError(f"limit_per_source={self.limit_per_source} must be >= 0 (0 = all) and "
                       f"max_branch_words={self.max_branch_words} >= 8")


def build_examples(cfg: BuildConfig, root: str | Path | None = None) -> list[Example]:
  """Every builder's examples (builders in order, records in seeded order), then distill and
  documented copies."""
  out: list[Example] = []
  for name in cfg.builders:
    items = BUILDERS[name](root)
    order = sorted(range(len(items)), key=lambda i: seeds.hash01(cfg.seed, name, items[i][0]))
    made = 0
    for i in order:
      if cfg.limit_per_source and made >= cfg.limit_per_source:
        break
      rec_id, make = items[i]
      ex = make(cfg.num_branches, cfg.max_branch_words, seeds.rng(cfg.seed, name, rec_id))
      if ex is not None:
        ex.meta["builder"] = name
        out.append(ex)
        made += 1
  docs = (fixed.real_documents(root) if cfg.documented_fraction
          and any(ex.meta.get("fixed") for ex in out) else ())
  return (out + distill_copies(out, cfg.distill_fraction, cfg.seed)
          + documented.documented_copies(out, cfg.documented_fraction, cfg.seed, docs))


def distill_copies(examples: Sequence[Example], fraction: float, seed: int) -> list[Example]:
  """Copies of a seeded `fraction` of the real-data examples with kind "distill" and no target yet.

  Branch generation sets their target to the text synthesizer's answer (`text_answer`); it
  runs nothing for fixed-branch examples, so they get no copies.
  """
  out = []
  for ex in examples:
    if (ex.source != "procedural" and not ex.meta.get("fixed")
        and seeds.hash01(seed, "distill", ex.id) < fraction):
      out.append(dataclasses.replace(ex, id=f"{ex.id}/distill", kind="distill", target="",
                                     meta=dict(ex.meta, distill_of=ex.id, gold=ex.target)))
  return out


def split(examples: Sequence[Example], val_fraction: float, seed: int
          ) -> tuple[list[Example], list[Example]]:
  """(train, val): per source, a seeded val_fraction of the groups (rounded up) is held out."""
  groups: dict[str, set[str]] = {}
  for ex in examples:
    groups.setdefault(ex.source, set()).add(ex.meta["group"])
  held = set()
  for source, gs in groups.items():
    ranked = sorted(gs, key=lambda g: seeds.hash01(seed, "split", g))
    k = -(-len(ranked) * val_fraction // 1) if val_fraction else 0
    held.update(ranked[:int(k)])
  train = [ex for ex in examples if ex.meta["group"] not in held]
  val = [ex for ex in examples if ex.meta["group"] in held]
  shuffle = lambda xs, tag: sorted(xs, key=lambda ex: seeds.hash01(seed, tag, ex.id))
  return shuffle(train, "train"), shuffle(val, "val")


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
  """Atomic: written to a temporary file next to `path`, then moved over it."""
  atomic.write_text(path, "".join(ex.to_json() + "\n" for ex in examples))


def build_dataset(data_dir: str | Path | None, out_dir: str | Path, *, num_branches: int = 3,
                  seed: int = 0, limit_per_source: int = 200, val_fraction: float = 0.1,
                  max_branch_words: int = 120, distill_fraction: float = 0.25,
                  documented_fraction: float = 0.5,
                  builders: Sequence[str] = DEFAULT_BUILDERS) -> dict[str, dict[str, int]]:
  """Writes out_dir/train.jsonl and out_dir/val.jsonl; returns {split: {builder/kind: count}}."""
  cfg = BuildConfig(num_branches, seed, limit_per_source, val_fraction, max_branch_words,
                    distill_fraction, documented_fraction, tuple(builders))
  train, val = split(build_examples(cfg, data_dir), val_fraction, seed)
  out_dir = Path(out_dir)
  write_jsonl(out_dir / "train.jsonl", train)
  write_jsonl(out_dir / "val.jsonl", val)
  return {"train": count_by_builder(train), "val": count_by_builder(val)}


def count_by_builder(examples: Iterable[Example]) -> dict[str, int]:
  counts: dict[str, int] = {}
  for ex in examples:
    form = "/documented" if ex.meta.get("documented") else ""
    key = f"{ex.meta.get('builder', ex.source)}/{ex.kind}{form}"
    counts[key] = counts.get(key, 0) + 1
  return dict(sorted(counts.items()))
