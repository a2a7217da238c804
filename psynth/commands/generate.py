"""`python -m psynth generate --prompt "..." [--system "..."]`: one chat answer."""

from __future__ import annotations

from absl import flags

from psynth.loading import load
from psynth.synthesis.pipeline import generate

_PROMPT = flags.DEFINE_string("prompt", "What is the capital of France?", "The question.")
_SYSTEM = flags.DEFINE_string("system", None, "An optional system prompt.")


def main(cfg, args: list[str]) -> None:
  loaded = load(cfg.model.name, dtype=cfg.model.dtype, attention=cfg.model.attention)
  messages = ([{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else [])
  messages.append({"role": "user", "content": _PROMPT.value})
  s = cfg.sampling
  print(generate(loaded, messages, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                 top_p=s.top_p, seed=s.seed))
