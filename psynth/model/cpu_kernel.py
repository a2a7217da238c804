"""The decode step's attention as a C++ kernel on CPU (an XLA FFI custom call), built on first use.

A batched decode step on CPU is bound by reading its cache: XLA streams it at about a third of
the rate of a plain sum (`results/throughput_smollm2_135m.md`). The kernel
(`cpu_kernels/decode_attention.cc`) reads each row's K and V once and skips slots the query
cannot see. It is compiled with the machine's C++ compiler (`$CXX`, else `g++`) into
`$PSYNTH_CACHE/kernels/` the first time a decode step is traced, keyed by the source, the
compiler, jaxlib and this CPU's instruction set; later processes load that file.

    PSYNTH_CPU_KERNEL=0   # off: decode attention stays in XLA (`attention._decode_attention`)

Without a compiler the build fails once with a warning and XLA's path is used; the results
agree to float32 rounding either way (tests/test_cpu_kernel.py).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from psynth.paths import cache_root

log = logging.getLogger(__name__)

TARGET = "psynth_decode_attention"
SOURCE = Path(__file__).with_name("cpu_kernels") / "decode_attention.cc"
# Below this many rows XLA's own decode attention is as fast (a row is then split over kv
# heads, each a strided read): measured at 1, 2, 4, 16 and 64 rows in the throughput page.
MIN_ROWS = 4
_registered: list[str] = []
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-std=c++17",
         "-shared", "-fPIC")


def enabled() -> bool:
  """False when `PSYNTH_CPU_KERNEL` is "0" / "false" / "off"."""
  return os.environ.get("PSYNTH_CPU_KERNEL", "1").lower() not in ("0", "false", "off")


def _cpu_flags() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return line
  except OSError:
    pass
  return os.uname().machine


def library_path(compiler: str) -> Path:
  """Where the kernel built by `compiler` for this source, jaxlib and CPU lives."""
  key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, " ".join(FLAGS),
                                  jaxlib.__version__, _cpu_flags()]).encode()).hexdigest()
  return cache_root() / "kernels" / f"decode_attention-{key[:16]}.so"


def build(compiler: str | None = None) -> Path:
  """Compiles the kernel (unless already built) and returns the shared library's path.

  Raises RuntimeError naming the compiler and its error output when it cannot be built.
  """
  compiler = compiler or os.environ.get("CXX") or "g++"
  if shutil.which(compiler) is None:
    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set $CXX to one, or "
                       "PSYNTH_CPU_KERNEL=0 to keep decode attention in XLA)")
  out = library_path(compiler)
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
  os.close(fd)
  cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
  log.info("building the CPU decode-attention kernel: %s", " ".join(cmd))
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f"{compiler} could not build {SOURCE.name} (exit {done.returncode}):\n"
                       f"{done.stderr[-2000:]}")
  os.replace(tmp, out)  # whole or absent: a concurrent process loads one or the other
  return out


@functools.cache
def available() -> bool:
  """Builds (once per machine), loads and registers the kernel (once per process); False,
  with one warning, when that is not possible or `PSYNTH_CPU_KERNEL` turns it off."""
  if not enabled():
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(build()))
  except (RuntimeError, OSError) as e:
    log.warning("CPU decode-attention kernel unavailable, XLA computes it instead: %s", e)
    return False
  if not _registered:  # once per process, whichever file it was loaded from
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.PsynthDecodeAttention),
                                platform="cpu")
    _registered.append(TARGET)
  return True


def applies(q_BxTxHxE, cache) -> bool:
  """Whether the kernel takes this decode step: enough rows, float32 queries and cache."""
  return (q_BxTxHxE.shape[0] >= MIN_ROWS and q_BxTxHxE.dtype == jnp.float32
          and all(x.dtype == jnp.float32 for x in cache[:2]) and available())


def decode_attention(q_BxTxHxE, pos_BxT, own, cache) -> jax.Array:
  """`attention._decode_attention`'s contract (T = 1, q already scaled) through the kernel.

  `own = (k [B,1,K,E], v)`, `cache = (k [B,S,K,E], v, positions [B,S], valid [B,S])`.
  """
  B, T, H, E = q_BxTxHxE.shape
  k_c, v_c, pos_c, valid_c = cache
  K = k_c.shape[2]
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((B, H, E), jnp.float32),
                          vmap_method="sequential")
  out = call(q_BxTxHxE.reshape(B, H, E), k_c, v_c, pos_c.astype(jnp.int32), valid_c,
             pos_BxT.reshape(B).astype(jnp.int32), own[0].reshape(B, K, E),
             own[1].reshape(B, K, E))
  return out.reshape(B, T, H, E)
