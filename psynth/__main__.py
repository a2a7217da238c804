"""psynth command line: `python -m psynth COMMAND [--flags] [--config=F --config.X.Y=V]`.

Each command is one small module in `psynth/commands/` with its own few flags; every other
setting is in the config (default `configs/smollm2_135m.py`). `python -m psynth` alone lists
the commands; `python -m psynth COMMAND --help` shows a command's flags.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from absl import app
from ml_collections import config_flags

from psynth import compile_cache, platforms
from psynth.commands import COMMANDS

DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "smollm2_135m.py")


def main() -> None:
  name = sys.argv[1] if len(sys.argv) > 1 else ""
  if name not in COMMANDS:
    listing = "\n".join(f"  {k:<11}{v}" for k, v in COMMANDS.items())
    sys.exit(f"usage: python -m psynth COMMAND [flags]\n\ncommands:\n{listing}"
             + (f"\n\nunknown command {name!r}" if name else ""))
  platforms.cpu_unless_accelerator()  # before any JAX backend starts
  command = importlib.import_module(f"psynth.commands.{name}")  # defines its flags
  config = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "ml_collections config file.")

  def run(argv: list[str]) -> None:
    logging.getLogger().setLevel(logging.INFO)
    compile_cache.enable(config.value.get("compile_cache", ""))
    command.main(config.value, argv[2:])

  app.run(run)


if __name__ == "__main__":
  main()
