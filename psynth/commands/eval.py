"""`python -m psynth eval --config.eval.tasks=facts,strategyqa
--config.eval.methods=single,text,naive,psynth --config.eval.limit=300
--config.eval.output_dir=DIR [--adapter=default|DIR]`: every method on the same branches,
accuracy with intervals, paired differences and TTFT per task (`cfg.eval`; a rerun into the
same DIR resumes; `--config.eval.merge_only=True` only merges finished shards)."""

from __future__ import annotations

from pathlib import Path

from psynth import sharding
from psynth.commands.common import synth_adapter
from psynth.eval import report, runner
from psynth.eval.settings import EvalSettings


def main(cfg, args: list[str] = ()) -> None:
  e = cfg.eval
  if e.merge_only:
    print(report.merge_main(e.output_dir))
    return
  d = cfg.dist
  sharding.init_distributed(d.coordinator, d.num_processes, d.process_id, d.auto)
  summary = runner.eval_main(EvalSettings.from_config(cfg), e.tasks, e.methods,
                             e.limit or None, e.output_dir, synth_adapter(cfg.model.name),
                             e.num_shards, e.shard_id, gaia_dir=e.gaia_dir)
  if summary is not None:
    print((Path(e.output_dir) / "results.md").read_text())
