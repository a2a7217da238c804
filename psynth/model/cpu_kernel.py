"""Attention as C++ kernels on CPU (XLA FFI custom calls), built on first use.

XLA on CPU computes attention as many small batched matmuls with separate softmax passes: a
batched decode step read its cache at a third of the rate of a plain sum, and a 32-row prefill
spent 3x the kernel's time in attention (`results/throughput_smollm2_135m.md`). The kernels
(`cpu_kernels/attention.cc`): a decode step that streams each row's K and V once, skipping
slots the query cannot see, and a flash-style prefill (query x key blocks, streaming softmax,
unseen blocks skipped). They are compiled with the machine's C++ compiler (`$CXX`, else
`g++`) into `$PSYNTH_CACHE/kernels/` the first time attention is traced, keyed by the source,
the compiler, jaxlib and this CPU's instruction set; later processes load that file.

    PSYNTH_CPU_KERNEL=0   # off: attention stays in XLA ("blocked"'s jnp code)

Without a compiler the build fails once with a warning and XLA's path is used; the results
agree to float32 rounding either way (tests/test_cpu_kernel.py). Gradients go through XLA's
path (`attention.py`), so training runs the kernels forward only.
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

# XLA custom-call target -> the library's handler symbol.
TARGETS = {"psynth_decode_attention": "PsynthDecodeAttention",
           "psynth_prefill_attention": "PsynthPrefillAttention"}
SOURCE = Path(__file__).with_name("cpu_kernels") / "attention.cc"
# Below this many rows XLA's own decode attention is as fast (a row is then split over kv
# heads, each a strided read): measured at 1, 2, 4, 16 and 64 rows in the throughput page.
MIN_DECODE_ROWS = 4
HEAD_DIMS = (16, 32, 64, 128)  # the prefill kernel's register blocking
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-std=c++17",
         "-shared", "-fPIC")
_registered: list[str] = []  # targets registered in this process (XLA keeps them for good)


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
  return cache_root() / "kernels" / f"attention-{key[:16]}.so"


def build(compiler: str | None = None) -> Path:
  """Compiles the kernel (unless already built) and returns the shared library's path.

  Raises RuntimeError naming the compiler and its error output when it cannot be built.
  """
  compiler = compiler or os.environ.get("CXX") or "g++"
  if shutil.which(compiler) is None:
    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set $CXX to one, or "
                       "PSYNTH_CPU_KERNEL=0 to keep attention in XLA)")
  out = library_path(compiler)
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
  os.close(fd)
  cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
  log.info("building the CPU attention kernels: %s", " ".join(cmd))
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
    log.warning("CPU attention kernels unavailable, XLA computes attention instead: %s", e)
    return False
  if not _registered:  # once per process, whichever file it was loaded from
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
      _registered.append(target)
  return True


def applies(q_BxTxHxE, own, cache) -> bool:
  """Whether a kernel takes this call: the queries' own tokens given, float32 throughout, a
  head_dim the prefill kernel is blocked for, and (a decode step) enough rows."""
  B, T, _, E = q_BxTxHxE.shape
  arrays = [q_BxTxHxE, *own, *(cache[:2] if cache is not None else ())]
  return (all(x.dtype == jnp.float32 for x in arrays) and E in HEAD_DIMS
          and (T > 1 or B >= MIN_DECODE_ROWS) and available())


def decode_attention(q_BxTxHxE, pos_BxT, own, cache) -> jax.Array:
  """One query token per row (q scaled by E^-1/2) over its cache and own token.

  `own = (k [B,1,K,E], v)`, `cache = (k [B,S,K,E], v, positions [B,S], valid [B,S])`.
  """
  B, T, H, E = q_BxTxHxE.shape
  k_c, v_c, pos_c, valid_c = cache
  K = k_c.shape[2]
  call = jax.ffi.ffi_call("psynth_decode_attention", jax.ShapeDtypeStruct((B, H, E), jnp.float32),
                          vmap_method="sequential")
  out = call(q_BxTxHxE.reshape(B, H, E), k_c, v_c, pos_c.astype(jnp.int32), valid_c,
             pos_BxT.reshape(B).astype(jnp.int32), own[0].reshape(B, K, E),
             own[1].reshape(B, K, E))
  return out.reshape(B, T, H, E)


def prefill_attention(q_BxTxHxE, pos_BxT, own, cache=None) -> jax.Array:
  """T query tokens per row (q scaled by E^-1/2) over the cache's slots (None: no cache) and
  their own tokens `own = (k [B,T,K,E], v)`; the kernel reads keys transposed, [B,K,E,slots]."""
  B, T, H, E = q_BxTxHxE.shape
  K = own[0].shape[2]
  if cache is None:
    cache = (jnp.zeros((B, 0, K, E), jnp.float32), jnp.zeros((B, 0, K, E), jnp.float32),
             jnp.zeros((B, 0), jnp.int32), jnp.zeros((B, 0), bool))
  k_c, v_c, pos_c, valid_c = cache
  keys_t = lambda k: k.transpose(0, 2, 3, 1)  # [B, S, K, E] -> [B, K, E, S]
  call = jax.ffi.ffi_call("psynth_prefill_attention",
                          jax.ShapeDtypeStruct(q_BxTxHxE.shape, jnp.float32),
                          vmap_method="sequential")
  return call(q_BxTxHxE, keys_t(k_c), v_c, pos_c.astype(jnp.int32), valid_c,
              pos_BxT.astype(jnp.int32), keys_t(own[0]), own[1])
