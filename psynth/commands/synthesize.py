"""`python -m psynth synthesize [--question "..." --branch "doc 1" --branch "doc 2"]
[--adapter=default|none|DIR]`: fan out, then text, naive and trained cache synthesis side by
side (no flags: the built-in example, with the adapter shipped for the model)."""

from __future__ import annotations

from absl import app, flags

from psynth.commands.common import synth_adapter
from psynth.loading import load
from psynth.synthesis import demo

_QUESTION = flags.DEFINE_string("question", None, "The question (default: built-in example).")
_BRANCH = flags.DEFINE_multi_string("branch", [], "One worker input (repeat the flag).")


def main(cfg, args: list[str]) -> None:
  if bool(_QUESTION.value) != bool(_BRANCH.value):
    raise app.UsageError("pass both --question and at least one --branch, or neither "
                         "(the built-in example)")
  loaded = load(cfg.model.name, dtype=cfg.model.dtype, adapter=synth_adapter(cfg.model.name),
                attention=cfg.model.attention)
  s = cfg.synthesis
  kw = dict(question=_QUESTION.value, documents=_BRANCH.value) if _QUESTION.value else {}
  print(demo.run(loaded, mode=s.mode, worker_max_new_tokens=s.worker_max_new_tokens,
                 max_new_tokens=s.max_new_tokens, **kw))
