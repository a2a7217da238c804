"""Run untrusted generated Python (a program and its tests) in a contained child process.

Layers, each used when this machine offers it (see `isolation()`):
  * a fresh network namespace (`unshare --net`): no interface but a downed loopback, so
    every connect fails, even to 127.0.0.1 of the host;
  * a fresh PID namespace (`unshare --pid --fork --kill-child`) whose init is this file run
    as a script: when it exits or is killed, the kernel kills every process the program left;
  * an unprivileged uid (`nobody`) when the harness is root, so the program cannot write or
    delete anything outside its directory, and RLIMIT_NPROC (ignored for root) applies;
  * a per-run pids cgroup (`pids.max`) against fork bombs, when cgroups are writable;
  * a fresh mount namespace (root only) with small private tmpfs over the world-writable
    directories (/tmp, /var/tmp, /dev/shm, /run/lock): the working directory lives there,
    nothing written survives the run, and a program cannot fill the host's disk;
  * rlimits: CPU seconds, address space, file size, open files, no core dumps;
  * a throw-away working directory (also HOME and TMPDIR), removed afterwards;
  * a wall-clock timeout after which the whole process group and namespace are killed.
Without a network namespace a Python audit hook refuses socket connect/bind instead (weaker:
subprocesses and ctypes escape it). Without root the program runs as the harness's own user,
so files outside its directory are NOT protected; `isolation().uid is None` says so.

Only the standard library is imported: the harness runs this file as the namespace's init.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid

STATUSES = ("passed", "failed", "timeout", "error")
_SETUP_FAILED = 121  # init's exit code when it could not start the program
_SETUP_MARK = "psynth-sandbox setup failed: "
_CGROUP_BASES = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")  # cgroup v1 pids hierarchy, then v2
_SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable on Linux
_SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
_NO_NETWORK_GUARD = """\
import sys as _psynth_sys
def _psynth_no_network(event, args):
  if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
    raise PermissionError(f"psynth sandbox: network is disabled ({event})")
_psynth_sys.addaudithook(_psynth_no_network)
del _psynth_sys, _psynth_no_network
"""


@dataclasses.dataclass(frozen=True)
class Limits:
  timeout_s: float = 10.0  # wall clock; then the whole process tree is killed
  cpu_s: int = 10  # RLIMIT_CPU, per process
  memory_mb: int = 1024  # RLIMIT_AS (virtual address space), per process
  file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
  max_processes: int = 32  # pids.max of the run's cgroup; RLIMIT_NPROC without one
  max_open_files: int = 256  # RLIMIT_NOFILE
  disk_mb: int = 64  # size of each private tmpfs (working directory, /tmp, ...)
  tail_chars: int = 2000  # how much of stdout/stderr the result keeps (the end)

  def __post_init__(self):
    for name in ("timeout_s", "cpu_s", "memory_mb", "file_mb", "max_processes",
                 "max_open_files", "disk_mb", "tail_chars"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"Limits.{name}={value!r}; expected a positive number")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  passed: bool  # exited with status 0 within the limits
  status: str  # one of STATUSES; "timeout" covers wall clock and CPU time
  returncode: int | None  # the program's exit code; 128 + signal if a signal ended it
  stdout_tail: str
  stderr_tail: str
  seconds: float  # wall clock, including sandbox start-up


@dataclasses.dataclass(frozen=True)
class Isolation:
  """What this machine lets the sandbox use; probed once per process."""
  launcher: tuple[str, ...]  # the `unshare ...` prefix, empty if namespaces are unavailable
  net_namespace: bool
  pid_namespace: bool
  private_tmp: bool  # a mount namespace with tmpfs over _SHARED_WRITABLE
  uid: int | None  # uid the program runs as; None = the harness's own (files unprotected)
  gid: int | None
  cgroup_base: str | None  # where per-run pids cgroups are made, None = RLIMIT_NPROC only
  python: str  # interpreter the program runs under (must be usable by `uid`)


def _usable_by_others(path: str) -> bool:
  """Whether a user other than owner/group can reach and execute `path` (e.g. `nobody`)."""
  path = os.path.realpath(path)
  if not os.path.isfile(path) or not os.stat(path).st_mode & stat.S_IXOTH:
    return False
  parent = os.path.dirname(path)
  while parent != os.path.dirname(parent):
    if not os.stat(parent).st_mode & stat.S_IXOTH:
      return False
    parent = os.path.dirname(parent)
  return True


def _probe_cgroup_base() -> str | None:
  for base in _CGROUP_BASES:
    probe = os.path.join(base, f"psynth-probe-{uuid.uuid4().hex[:8]}")
    try:
      os.mkdir(probe)
    except OSError:
      continue
    try:
      if os.path.exists(os.path.join(probe, "pids.max")):
        return base
    finally:
      os.rmdir(probe)
  return None


@functools.lru_cache(maxsize=None)
def isolation() -> Isolation:
  root = os.geteuid() == 0
  unshare = shutil.which("unshare")
  launcher: tuple[str, ...] = ()
  # Mounting tmpfs needs real root: in a user namespace the program would own the mounts.
  options = ([("--mount",), ()] if root else [("--user", "--map-root-user")]) if unshare else []
  for extra in options:
    candidate = (unshare, *extra, "--net", "--pid", "--fork", "--kill-child")
    if subprocess.run([*candidate, "true"], capture_output=True, timeout=30).returncode == 0:
      launcher = candidate
      break
  uid = gid = None
  python = sys.executable
  if root:
    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    if not _usable_by_others(python):
      usable = [p for p in _SYSTEM_PYTHONS if _usable_by_others(p)]
      if not usable:
        raise RuntimeError(f"the sandbox drops to uid {uid} (nobody), which cannot run "
                           f"{python} or any of {_SYSTEM_PYTHONS}; install a system python3")
      python = usable[0]
  return Isolation(launcher=launcher, net_namespace=bool(launcher), pid_namespace=bool(launcher),
                   private_tmp="--mount" in launcher,
                   uid=uid, gid=gid, cgroup_base=_probe_cgroup_base() if root else None,
                   python=python)


def _make_cgroup(iso: Isolation, max_processes: int) -> str | None:
  if iso.cgroup_base is None:
    return None
  path = os.path.join(iso.cgroup_base, f"psynth-sandbox-{uuid.uuid4().hex}")
  os.mkdir(path)
  with open(os.path.join(path, "pids.max"), "w") as f:
    f.write(str(max_processes))
  return path


def _cgroup_pids(cgroup: str) -> list[int]:
  try:
    with open(os.path.join(cgroup, "cgroup.procs")) as f:
      return [int(line) for line in f if line.strip()]
  except FileNotFoundError:
    return []


def _kill_tree(pgid: int, cgroup: str | None) -> None:
  """SIGKILLs the run's process group and anything left in its cgroup."""
  try:
    os.killpg(pgid, signal.SIGKILL)  # the launcher and init: the namespace dies with init
  except ProcessLookupError:
    pass
  if cgroup is None:
    return
  for _ in range(200):  # whatever escaped the group (setsid) without a PID namespace
    pids = _cgroup_pids(cgroup)
    if not pids:
      return
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    time.sleep(0.01)


def _remove_cgroup(cgroup: str | None) -> None:
  if cgroup is None:
    return
  for _ in range(200):  # rmdir fails while the last killed processes are being reaped
    try:
      os.rmdir(cgroup)
      return
    except FileNotFoundError:
      return
    except OSError:
      time.sleep(0.01)
  raise RuntimeError(f"could not remove sandbox cgroup {cgroup}; processes {_cgroup_pids(cgroup)}")


def _tail(f, chars: int) -> str:
  f.seek(0, os.SEEK_END)
  size = f.tell()
  f.seek(max(0, size - 4 * chars))  # utf-8: at most 4 bytes a character
  return f.read().decode("utf-8", errors="replace")[-chars:]


def _status(timed_out: bool, returncode: int, stderr: str) -> str:
  if timed_out or returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
    return "timeout"  # SIGXCPU at the soft CPU limit, SIGKILL at the hard one
  if returncode == _SETUP_FAILED and _SETUP_MARK in stderr:
    return "error"
  return "passed" if returncode == 0 else "failed"


def run_program(program: str, limits: Limits = Limits()) -> SandboxResult:
  """Runs `program` (Python source) contained; never raises for anything the program does."""
  if not isinstance(program, str):
    raise TypeError(f"program is a {type(program).__name__}; expected Python source as str")
  iso = isolation()
  start = time.monotonic()
  workdir = tempfile.mkdtemp(prefix="psynth-sandbox-")
  cgroup = None
  try:
    path = os.path.join(workdir, "program.py")
    with open(path, "w", encoding="utf-8") as f:
      f.write(program if iso.net_namespace else _NO_NETWORK_GUARD + program)
    if iso.uid is not None:
      os.chown(workdir, iso.uid, iso.gid)
    cgroup = _make_cgroup(iso, limits.max_processes)
    config = dict(python=iso.python, program=path, uid=iso.uid, gid=iso.gid, cgroup=cgroup,
                  cpu_s=int(math.ceil(limits.cpu_s)), memory_bytes=int(limits.memory_mb * 2**20),
                  file_bytes=int(limits.file_mb * 2**20), max_open_files=int(limits.max_open_files),
                  # With a cgroup, pids.max bounds this run; RLIMIT_NPROC counts every process
                  # of the uid (concurrent runs too), so it is only a loose backstop then.
                  nproc=int(limits.max_processes) * (8 if cgroup else 1),
                  timeout_s=float(limits.timeout_s), workdir=workdir,
                  private_tmp_bytes=int(limits.disk_mb * 2**20) if iso.private_tmp else None)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    argv = [*iso.launcher, sys.executable, "-I", "-B", os.path.abspath(__file__),
            json.dumps(config)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=err, start_new_session=True, close_fds=True)
      try:
        proc.wait(timeout=limits.timeout_s)
        timed_out = False
      except subprocess.TimeoutExpired:
        timed_out = True
      # Still unreaped on timeout, so the group id cannot have been reused; after a normal exit
      # the group id lives on as long as any member does.
      _kill_tree(proc.pid, cgroup)
      returncode = proc.wait()
      stdout, stderr = _tail(out, limits.tail_chars), _tail(err, limits.tail_chars)
  finally:
    _remove_cgroup(cgroup)
    shutil.rmtree(workdir, ignore_errors=True)
  status = _status(timed_out, returncode, stderr)
  return SandboxResult(passed=status == "passed", status=status,
                       returncode=None if timed_out else returncode, stdout_tail=stdout,
                       stderr_tail=stderr, seconds=time.monotonic() - start)


def _mount_private_tmp(c: dict) -> None:
  """In init, inside its own mount namespace: tmpfs over every world-writable directory, and
  the working directory recreated on the new /tmp with the program in it."""
  import ctypes  # only the init needs it
  with open(c["program"], "rb") as f:
    source = f.read()  # before /tmp is covered
  libc = ctypes.CDLL(None, use_errno=True)
  flags = 0x2 | 0x4  # MS_NOSUID | MS_NODEV
  for path in _SHARED_WRITABLE:
    if os.path.isdir(path) and not os.path.islink(path):
      data = f"size={c['private_tmp_bytes']},mode=1777".encode()
      if libc.mount(b"tmpfs", path.encode(), b"tmpfs", flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")
  os.makedirs(c["workdir"], mode=0o700)
  with open(c["program"], "wb") as f:
    f.write(source)
  if c["uid"] is not None:
    os.chown(c["workdir"], c["uid"], c["gid"])
  os.chdir(c["workdir"])


def _exec_program(c: dict) -> None:
  """In the forked child: drop privileges, set limits, become the program."""
  if c["uid"] is not None:
    os.setgroups([])
    os.setgid(c["gid"])
    os.setuid(c["uid"])
  for limit, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, c["memory_bytes"]),
                       (resource.RLIMIT_FSIZE, c["file_bytes"]),
                       (resource.RLIMIT_NOFILE, c["max_open_files"]),
                       (resource.RLIMIT_NPROC, c["nproc"])):
    resource.setrlimit(limit, (value, value))
  # Soft limit sends SIGXCPU; the hard one, a second later, SIGKILL for a program ignoring it.
  resource.setrlimit(resource.RLIMIT_CPU, (c["cpu_s"], c["cpu_s"] + 1))
  os.execve(c["python"], [c["python"], "-I", "-B", c["program"]], dict(os.environ))


def _init_main(config_json: str) -> None:
  """The sandbox's init (PID 1 of its namespace when available): run the program, pass on its
  exit code. Stays root and never changes credentials, so `unshare --kill-child` still kills
  it (and with it the namespace) when the harness kills the launcher."""
  c = json.loads(config_json)
  try:
    if c["cgroup"]:
      with open(os.path.join(c["cgroup"], "cgroup.procs"), "w") as f:
        f.write("0")  # this process; children inherit the cgroup
    if c["private_tmp_bytes"]:
      _mount_private_tmp(c)
    # Also ends the run if the harness vanished. A namespace init ignores signals it has no
    # handler for, hence the handler rather than the default action.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(128 + signal.SIGALRM))
    signal.alarm(int(math.ceil(c["timeout_s"])) + 2)
    pid = os.fork()
  except BaseException as e:  # noqa: BLE001 — report any setup failure as such
    os.write(2, f"{_SETUP_MARK}{e!r}\n".encode())
    os._exit(_SETUP_FAILED)
  if pid == 0:
    try:
      _exec_program(c)
    except BaseException as e:  # noqa: BLE001
      os.write(2, f"{_SETUP_MARK}{e!r}\n".encode())
    os._exit(_SETUP_FAILED)
  _, wait_status = os.waitpid(pid, 0)
  code = os.waitstatus_to_exitcode(wait_status)
  os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
  _init_main(sys.argv[1])
