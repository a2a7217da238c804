"""The code sandbox: what it runs, and what it contains (each bad program a failed sample)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile

import pytest

from psynth.eval import sandbox
from psynth.eval.sandbox import Limits, run_program

ISO = sandbox.isolation()
FAST = Limits(timeout_s=5, cpu_s=5, memory_mb=512, max_processes=16)


def _sandbox_pids() -> set[int]:
  """Processes running a sandboxed program (their command line names its work directory)."""
  pids = set()
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/cmdline", "rb") as f:
          if b"psynth-sandbox-" in f.read():
            pids.add(int(name))
      except OSError:
        pass
  return pids


def test_passing_program():
  r = run_program("import math\nassert math.gcd(12, 18) == 6\nprint('ok')", FAST)
  assert (r.passed, r.status, r.returncode, r.stdout_tail) == (True, "passed", 0, "ok\n")
  assert r.seconds < 5


def test_failing_assert_is_a_failed_sample():
  r = run_program("def f(x):\n  return x + 1\nassert f(1) == 3, 'f(1) is wrong'", FAST)
  assert (r.passed, r.status, r.returncode) == (False, "failed", 1)
  assert "AssertionError: f(1) is wrong" in r.stderr_tail


def test_infinite_loop_hits_the_wall_clock():
  r = run_program("while True:\n  pass", Limits(timeout_s=2, cpu_s=60))
  assert (r.passed, r.status, r.returncode) == (False, "timeout", None)
  assert 2 <= r.seconds < 4
  r = run_program("import time\ntime.sleep(60)", Limits(timeout_s=1))  # no CPU used
  assert (r.status, r.returncode) == ("timeout", None)
  assert r.seconds < 3


def test_cpu_limit():
  r = run_program("while True:\n  pass", Limits(timeout_s=30, cpu_s=1))
  assert (r.passed, r.status) == (False, "timeout")
  assert r.returncode in (128 + 24, 128 + 9)  # SIGXCPU at the soft limit, SIGKILL at the hard
  assert r.seconds < 5


@pytest.mark.skipif(os.geteuid() == 0 and ISO.uid is None and ISO.cgroup_base is None,
                    reason="root without an unprivileged uid or a pids cgroup: nothing limits forks")
def test_fork_bomb_is_contained():
  before = _sandbox_pids()
  r = run_program("import os\nwhile True:\n  os.fork()", FAST)
  assert not r.passed and r.status in ("failed", "timeout")
  assert r.seconds < 7
  # A bomb that swallows fork errors and leaves its process group runs until the timeout.
  bomb = "import os\nwhile True:\n  try:\n    if os.fork() == 0:\n      os.setsid()\n" \
         "  except OSError:\n    pass"
  r = run_program(bomb, Limits(timeout_s=2, cpu_s=5, max_processes=16))
  assert (r.passed, r.status) == (False, "timeout")
  assert r.seconds < 5
  assert _sandbox_pids() - before == set()  # nothing left behind
  if ISO.cgroup_base:
    assert not [d for d in os.listdir(ISO.cgroup_base) if d.startswith("psynth-sandbox-")]
  # The harness can still start processes and run programs.
  assert subprocess.run(["true"]).returncode == 0
  assert run_program("print(1)", FAST).passed


def test_large_allocation_is_a_memory_error():
  r = run_program("block = bytearray(2 * 1024**3)\nprint(len(block))",
                  Limits(timeout_s=10, memory_mb=256))
  assert (r.passed, r.status, r.returncode, r.stdout_tail) == (False, "failed", 1, "")
  assert "MemoryError" in r.stderr_tail


def test_file_size_limit():
  r = run_program("with open('big.bin', 'wb') as f:\n  f.write(b'x' * (3 * 2**20))",
                  Limits(timeout_s=10, file_mb=1))
  assert (r.passed, r.status) == (False, "failed")
  assert "File too large" in r.stderr_tail


@pytest.mark.skipif(ISO.uid is None, reason="not root: the program runs as the harness's user")
def test_writes_outside_its_directory_fail_and_the_sentinel_survives():
  # Outside the private tmpfs mounts (/run is root's), so the program does see the sentinel.
  outside = tempfile.mkdtemp(prefix="psynth-sentinel-",
                             dir="/run" if os.access("/run", os.W_OK) else None)
  try:
    os.chmod(outside, 0o755)  # like the repository: readable by all, writable by its owner
    sentinel = os.path.join(outside, "sentinel.txt")
    with open(sentinel, "w") as f:
      f.write("keep")
    os.chmod(sentinel, 0o644)
    program = f"""
import os, shutil
print("read", open({sentinel!r}).read())
attempts = {{
    "delete": lambda: os.remove({sentinel!r}),
    "overwrite": lambda: open({sentinel!r}, "w").write("gone"),
    "create": lambda: open(os.path.join({outside!r}, "new.txt"), "w").write("x"),
    "rmtree": lambda: shutil.rmtree({outside!r}),
}}
for name, attempt in attempts.items():
  try:
    attempt()
    print(name, "done")
  except PermissionError:
    print(name, "denied")
open("inside.txt", "w").write("fine")  # its own directory is writable
print("cwd", os.getcwd(), os.environ["HOME"] == os.getcwd())
raise SystemExit(1)
"""
    r = run_program(program, FAST)
    assert (r.passed, r.status) == (False, "failed")
    lines = r.stdout_tail.splitlines()
    assert lines[:5] == ["read keep", "delete denied", "overwrite denied", "create denied",
                         "rmtree denied"]
    with open(sentinel) as f:
      assert f.read() == "keep"
    assert os.listdir(outside) == ["sentinel.txt"]
    cwd, home_is_cwd = lines[5].split()[1:]
    assert home_is_cwd == "True"
    assert not os.path.exists(cwd)  # the throw-away directory is gone
  finally:
    os.remove(os.path.join(outside, "sentinel.txt"))
    os.rmdir(outside)


@pytest.mark.skipif(not ISO.private_tmp, reason="no mount namespace here (needs root)")
def test_shared_tmp_dirs_are_private_and_bounded():
  outside = tempfile.mkdtemp(prefix="psynth-sentinel-")  # in the host's /tmp
  leak = f"psynth-leak-{os.getpid()}"
  try:
    program = f"""
import os
print(os.path.exists({outside!r}))
for d in ("/tmp", "/var/tmp", "/dev/shm"):
  open(os.path.join(d, {leak!r}), "w").write("x")
i = 0
while True:  # fill the disk
  with open(f"/var/tmp/fill{{i}}", "wb") as f:
    f.write(b"x" * 2**20)
  i += 1
"""
    r = run_program(program, Limits(timeout_s=10, disk_mb=4))
    assert (r.passed, r.status, r.stdout_tail) == (False, "failed", "False\n")
    assert "No space left on device" in r.stderr_tail
    assert os.path.isdir(outside)
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
      assert not os.path.exists(os.path.join(d, leak))
  finally:
    os.rmdir(outside)


def test_network_attempt_fails():
  with socket.socket() as listener:
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = f"""
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
print("connected")
"""
    r = run_program(program, FAST)
    assert (r.passed, r.status) == (False, "failed")
    assert "connected" not in r.stdout_tail
    assert "OSError" in r.stderr_tail or "PermissionError" in r.stderr_tail
    with pytest.raises(BlockingIOError):  # nothing reached the listener
      listener.accept()


@pytest.mark.skipif(not ISO.pid_namespace or ISO.uid is None,
                    reason="namespaces or the unprivileged uid are not available here")
def test_isolation_layers_in_force():
  program = """
import os
print(os.getuid(), os.getpid())
print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
print(open("/proc/self/cgroup").read().count("psynth-sandbox-"))
"""
  r = run_program(program, FAST)
  assert r.passed, r.stderr_tail
  ids, interfaces, cgroups = r.stdout_tail.splitlines()
  assert ids == f"{ISO.uid} 2"  # unprivileged, second process of a fresh PID namespace
  assert interfaces == "['lo']"  # a fresh network namespace
  assert cgroups == ("1" if ISO.cgroup_base else "0")


def test_bad_arguments_name_the_value():
  with pytest.raises(ValueError, match=r"Limits.timeout_s=0; expected a positive number"):
    Limits(timeout_s=0)
  with pytest.raises(TypeError, match="program is a bytes; expected Python source as str"):
    run_program(b"print(1)")
