"""What several commands share: the trained synthesizer they use (`--adapter`)."""

from __future__ import annotations

from absl import flags

from psynth import adapters

ADAPTER = flags.DEFINE_string(
    "adapter", None, "A trained synthesizer: a name shipped with psynth ('default', used when "
    "the flag is absent), 'none', or an adapter dir (psynth, PEFT or reference release), e.g. "
    "WORKDIR/adapter.")


def synth_adapter(model_name: str) -> str | None:
  """--adapter, else the adapter shipped for the model as "default" (None if there is none)."""
  if ADAPTER.value:
    return ADAPTER.value
  return "default" if "default" in adapters.shipped(model_name) else None
