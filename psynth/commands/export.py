"""`python -m psynth export --what=merged|peft|reference|psynth --adapter=DIR --out=DIR`: a
trained adapter as merged HF weights, a PEFT adapter, the reference release layout or a
psynth adapter dir (also converts between them)."""

from __future__ import annotations

from absl import app, flags

from psynth.commands.common import ADAPTER
from psynth.convert import export

_WHAT = flags.DEFINE_enum("what", "merged", list(export.KINDS),
                          "Merged HF checkpoint, PEFT adapter, reference release "
                          "(cache_mapper.pt + judger_lora/) or psynth adapter dir.")
_OUT = flags.DEFINE_string("out", None, "The output directory.")


def main(cfg, args: list[str] = ()) -> None:
  if not ADAPTER.value or not _OUT.value:
    raise app.UsageError("export needs --adapter=DIR (e.g. WORKDIR/adapter) and --out=DIR")
  print(export.export_main(cfg.model.name, cfg.model.dtype, _WHAT.value, ADAPTER.value,
                           _OUT.value))
