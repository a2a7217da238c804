"""Which JAX platform a command runs on when nothing says so.

`jax[tpu]` (libtpu) is installed for `python -m psynth compile`, which needs no TPU. But with
libtpu importable and `JAX_PLATFORMS` unset, every JAX process also tries to start a TPU
runtime: on a machine without a TPU that costs start-up time, prints libtpu's warnings, and
takes libtpu's machine-wide lock file (`/tmp/libtpu_lockfile`). Such a machine is kept on CPU.
A TPU VM, a GPU machine, or an explicit `JAX_PLATFORMS` is left alone.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips


def accelerator_attached() -> bool:
  """A TPU (Google PCI device, /dev/accel*, /dev/vfio) or a GPU (NVIDIA, ROCm) is present."""
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR:
        return True
    except OSError:
      continue
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
              or Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists())


def cpu_unless_accelerator() -> None:
  """Sets JAX_PLATFORMS=cpu when libtpu is installed but no accelerator is attached (call
  before JAX starts a backend)."""
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  if not accelerator_attached():
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_platforms", "cpu")
