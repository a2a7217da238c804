#!/usr/bin/env python3
"""Runs one psynth command as N JAX processes on this machine (a real multi-host run on CPU).

    python launch/local_multiprocess.py --num_processes=2 -- \
        python -m psynth train --config=configs/tiny.py --config.workdir=/tmp/run

Each process gets `--config.dist.coordinator=127.0.0.1:PORT --config.dist.num_processes=N
--config.dist.process_id=i` appended and one CPU device of its own; they talk over gloo on
127.0.0.1. Output lines are prefixed with the process id; the exit code is the worst one.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=1)
  p.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the psynth command")
  a = p.parse_args()
  cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
  if not cmd:
    p.error("give the command to run after --")
  port = a.port or free_port()
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={a.devices_per_process}",
             JAX_PLATFORMS="cpu")
  procs = []
  for i in range(a.num_processes):
    flags = [f"--config.dist.coordinator=127.0.0.1:{port}",
             f"--config.dist.num_processes={a.num_processes}", f"--config.dist.process_id={i}"]
    procs.append(subprocess.Popen(cmd + flags, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))

  def pump(i, proc):
    for line in proc.stdout:
      sys.stdout.write(f"[{i}] {line}")
      sys.stdout.flush()

  threads = [threading.Thread(target=pump, args=(i, pr)) for i, pr in enumerate(procs)]
  for t in threads:
    t.start()
  codes = [pr.wait() for pr in procs]
  for t in threads:
    t.join()
  return max(codes, key=abs)


if __name__ == "__main__":
  sys.exit(main())
