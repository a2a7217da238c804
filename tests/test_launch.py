"""launch/ scripts: the commands their dry runs print, their errors, and their bash syntax.

No gcloud or sbatch runs here: the TPU launcher prints every gcloud command under --dry-run,
and the SLURM launcher prints its sbatch script, which is then run with fake srun/scontrol/python.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TPU = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "gpu_slurm.sh"
JAX_PIN = re.search(r"^jax==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
POD = ["--name=psynth-pod", "--zone=us-east5-a", "--project=my-proj"]


def sh(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs a launch script with a clean environment (no TPU_*/WORKDIR leaking in)."""
  base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
  return subprocess.run(["bash", str(script), *args], env={**base, **(env or {})},
                        capture_output=True, text=True, timeout=60)


def lines(p: subprocess.CompletedProcess) -> list[list[str]]:
  assert p.returncode == 0, p.stderr
  return [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("script", [TPU, SLURM, ROOT / "launch" / "lib.sh"])
def test_bash_syntax(script):
  p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert p.returncode == 0, p.stderr


def test_tpu_create_and_delete():
  [create] = lines(sh(TPU, "--dry-run", "create", *POD, "--accelerator-type=v5p-64",
                      "--version=v2-alpha-tpuv5", "--", "--spot"))
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "psynth-pod",
                    "--project=my-proj", "--zone=us-east5-a", "--accelerator-type=v5p-64",
                    "--version=v2-alpha-tpuv5", "--spot"]
  [delete] = lines(sh(TPU, "delete", *POD, env={"DRY_RUN": "1"}))
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "psynth-pod",
                    "--project=my-proj", "--zone=us-east5-a", "--quiet"]


def test_tpu_flags_come_from_env_vars_too():
  env = {"TPU_NAME": "envpod", "TPU_ZONE": "europe-west4-a", "TPU_PROJECT": "envproj",
         "DRY_RUN": "1"}
  [delete] = lines(sh(TPU, "delete", env=env))
  assert delete[5:] == ["envpod", "--project=envproj", "--zone=europe-west4-a", "--quiet"]


def test_tpu_copy_setup_run_logs():
  tar, scp, untar = lines(sh(TPU, "--dry-run", "copy", *POD))
  assert tar[:2] == ["tar", "-C"] and tar[2] == str(ROOT)
  assert {"psynth", "configs", "launch", "requirements.txt", "pyproject.toml"} <= set(tar)
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert untar[4] == "ssh" and "--worker=all" in untar
  assert untar[-1] == ("--command=mkdir -p psynth && tar -xzf psynth.tar.gz -C psynth && "
                       "rm psynth.tar.gz")

  [setup] = lines(sh(TPU, "--dry-run", "setup", *POD))
  assert setup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "psynth-pod"]
  assert "--worker=all" in setup
  remote = setup[-1].removeprefix("--command=")
  assert "pip install -q -r requirements.txt -e ." in remote
  assert f'"jax[tpu]=={JAX_PIN}"' in remote

  [run] = lines(sh(TPU, "--dry-run", "run", *POD, "--workdir=/nfs/runs/q14",
                   "--", "--config.train.steps=2000"))
  assert "--worker=all" in run
  remote = run[-1].removeprefix("--command=")
  assert remote == ("cd psynth && mkdir -p logs && nohup python3 -m psynth train "
                    "--config=configs/qwen3_14b.py --config.workdir=/nfs/runs/q14 "
                    "--config.dist.auto=True --config.train.steps=2000 "
                    "> logs/train.log 2>&1 < /dev/null &")

  [logs0] = lines(sh(TPU, "--dry-run", "logs", *POD))
  [logs_all] = lines(sh(TPU, "--dry-run", "logs", *POD, "--worker=all", "--follow"))
  assert "--worker=0" in logs0 and "tail -n 100 psynth/logs/train.log" in logs0[-1]
  assert "--worker=all" in logs_all and "tail -n 100 -f psynth/logs/train.log" in logs_all[-1]


def test_tpu_dry_run_quotes_awkward_values_so_the_shell_gets_them_back():
  [run] = lines(sh(TPU, "--dry-run", "run", *POD, "--workdir=/nfs/my runs",
                   "--", "--config.model.name=it's"))
  inner = shlex.split(run[-1].removeprefix("--command=").split("nohup ", 1)[1].split(" >")[0])
  assert inner[-3:] == ["--config.workdir=/nfs/my runs", "--config.dist.auto=True",
                        "--config.model.name=it's"]


@pytest.mark.parametrize("args,missing", [
    (["run", "--zone=z", "--project=p", "--workdir=w"], "--name"),
    (["run", "--name=n", "--project=p", "--workdir=w"], "--zone"),
    (["run", "--name=n", "--zone=z", "--workdir=w"], "--project"),
    (["run", *POD], "--workdir"),
    (["create", *POD, "--version=v"], "--accelerator-type"),
    (["create", *POD, "--accelerator-type=v5p-8"], "--version"),
    ([*POD], "COMMAND"),
])
def test_tpu_missing_argument_is_named(args, missing):
  p = sh(TPU, "--dry-run", *args)
  assert p.returncode == 2
  assert f"missing {missing}" in p.stderr
  assert "gcloud" not in p.stdout


def test_tpu_bad_values_are_named():
  p = sh(TPU, "--dry-run", "launch", *POD)
  assert p.returncode == 2 and "unknown command 'launch'" in p.stderr
  p = sh(TPU, "--dry-run", "logs", *POD, "--worker=first")
  assert p.returncode == 2 and "--worker=first" in p.stderr
  p = sh(TPU, "--dry-run", "copy", *POD, "--data=/abs/data")
  assert p.returncode == 2 and "--data=/abs/data" in p.stderr
  assert sh(TPU, "--help").stdout.startswith("usage: launch/tpu_pod.sh")


def slurm_script(*args: str) -> str:
  p = sh(SLURM, "--dry-run", *args)
  assert p.returncode == 0, p.stderr
  return p.stdout


def test_slurm_per_gpu_script():
  text = slurm_script("--nodes=2", "--gpus-per-node=8", "--partition=gpu", "--account=lab",
                      "--workdir=/shared/run", "--", "--config.train.steps=20")
  head = [line for line in text.splitlines() if line.startswith("#SBATCH")]
  assert head == ["#SBATCH --job-name=psynth", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8",
                  "#SBATCH --gpus-per-node=8", "#SBATCH --time=24:00:00",
                  f"#SBATCH --output={ROOT}/runs/slurm/%x-%j.out", "#SBATCH --partition=gpu",
                  "#SBATCH --account=lab"]
  [srun] = [line for line in text.splitlines() if line.startswith("srun")]
  assert shlex.split(srun) == ["srun", "--label", "python", "-m", "psynth", "train",
                               "--config=configs/qwen3_14b.py", "--config.workdir=/shared/run",
                               "--config.dist.auto=True", "--config.train.steps=20"]
  assert f'pip install "jax[cuda12]=={JAX_PIN}"' in text
  assert text.rstrip().endswith(f"# would submit: sbatch {ROOT}/runs/slurm/psynth.sbatch")


def fake_cluster(tmp_path: Path) -> dict:
  """srun that runs its command as 2 tasks (one per node), scontrol, and a python that prints argv."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(
      "#!/bin/bash\n[ \"$1\" = --label ] && shift\n"
      "for i in 0 1; do SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NTASKS=2 \"$@\"; done\n")
  (bin_dir / "scontrol").write_text("#!/bin/bash\necho gpu-node-a; echo gpu-node-b\n")
  (bin_dir / "python").write_text(
      "#!/bin/bash\necho \"localid=${SLURM_LOCALID-unset} $*\"\n")
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4097",
          "SLURM_JOB_NODELIST": "gpu-node-[a-b]"}


def test_slurm_per_node_script_runs_one_process_per_node_with_explicit_coordinator(tmp_path):
  text = slurm_script("--nodes=2", "--gpus-per-node=4", "--per=node", "--workdir=/shared/run",
                      "--", "--config.model.name=it's")
  assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=4" in text
  job = tmp_path / "job.sbatch"
  job.write_text(text)
  p = subprocess.run(["bash", str(job)], env=fake_cluster(tmp_path), capture_output=True,
                     text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  common = ("-m psynth train --config=configs/qwen3_14b.py --config.workdir=/shared/run "
            "--config.model.name=it's --config.dist.coordinator=gpu-node-a:61441 "
            "--config.dist.num_processes=2")
  # 4097 % 4096 + 61440 = 61441; SLURM_LOCALID hidden so JAX does not pin one GPU.
  assert p.stdout.splitlines() == [f"localid=unset {common} --config.dist.process_id=0",
                                   f"localid=unset {common} --config.dist.process_id=1"]


@pytest.mark.parametrize("args,message", [
    (["--gpus-per-node=8", "--workdir=w"], "missing --nodes"),
    (["--nodes=2", "--workdir=w"], "missing --gpus-per-node"),
    (["--nodes=2", "--gpus-per-node=8"], "missing --workdir"),
    (["--nodes=two", "--gpus-per-node=8", "--workdir=w"], "--nodes=two"),
    (["--nodes=2", "--gpus-per-node=8", "--workdir=w", "--per=socket"], "--per=socket"),
])
def test_slurm_bad_arguments_are_named(args, message):
  p = sh(SLURM, "--dry-run", *args)
  assert p.returncode == 2 and message in p.stderr and "#SBATCH" not in p.stdout
