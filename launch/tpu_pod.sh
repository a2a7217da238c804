#!/usr/bin/env bash
# Cloud TPU pod launcher for psynth: create a TPU VM pod, copy the repo to every worker, set it
# up, run the same `python -m psynth train` on every worker, tail the logs, delete the pod.
# Thin on purpose: everything it runs on a worker is a psynth command or pip.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh [--dry-run] COMMAND [options] [-- extra args]

commands
  create   gcloud compute tpus tpu-vm create        (extra args go to gcloud, e.g. -- --spot)
  copy     pack the repo (+ --data dirs), scp it to every worker, unpack in --remote-dir
  setup    on every worker: pip install -r requirements.txt -e . and jax[tpu]==<pinned jax>
  run      on every worker, in the background (nohup), logs in REMOTE_DIR/logs/train.log:
             python3 -m psynth train --config=CONFIG --config.workdir=WORKDIR
                 --config.dist.auto=True [extra args, e.g. --config.train.steps=2000]
  logs     tail the log of one worker (--worker=0, the default) or of all (--worker=all)
  delete   gcloud compute tpus tpu-vm delete

options (flag or environment variable)
  --name=NAME               TPU_NAME         the TPU VM (pod) name            [required]
  --zone=ZONE               TPU_ZONE         e.g. us-east5-a                  [required]
  --project=PROJECT         TPU_PROJECT      the GCP project                  [required]
  --accelerator-type=TYPE   TPU_TYPE         e.g. v5p-64                      [create]
  --version=VERSION         TPU_VERSION      runtime, e.g. v2-alpha-tpuv5     [create]
  --config=FILE             CONFIG           default configs/qwen3_14b.py     [run]
  --workdir=DIR             WORKDIR          checkpoints + TensorBoard, on storage every
                                             worker shares (NFS or gs://)     [run, required]
  --data=DIR                DATA             (copy) also pack this data dir (train.jsonl,
                                             val.jsonl), repeatable; gitignored runs/ is not
                                             copied otherwise
  --remote-dir=DIR          REMOTE_DIR       default psynth (in the worker's home)
  --worker=N|all            WORKER           logs: default 0
  --follow                                   logs: tail -f
  --dry-run                 DRY_RUN=1        print every command instead of running it

example
  export TPU_NAME=psynth-v5p TPU_ZONE=us-east5-a TPU_PROJECT=my-project
  launch/tpu_pod.sh create --accelerator-type=v5p-64 --version=v2-alpha-tpuv5
  launch/tpu_pod.sh copy --data=runs/data/qwen3_14b
  launch/tpu_pod.sh setup
  launch/tpu_pod.sh run --workdir=gs://my-bucket/psynth/qwen3_14b -- --config.train.steps=2000
  launch/tpu_pod.sh logs --follow
  launch/tpu_pod.sh delete
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/lib.sh
source "$REPO/launch/lib.sh"
DRY_RUN="${DRY_RUN:-0}"
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCEL="${TPU_TYPE:-}"
VERSION="${TPU_VERSION:-}"
CONFIG="${CONFIG:-configs/qwen3_14b.py}"
WORKDIR="${WORKDIR:-}"
REMOTE_DIR="${REMOTE_DIR:-psynth}"
WORKER="${WORKER:-0}"
FOLLOW=0
DATA_DIRS=()
[[ -n "${DATA:-}" ]] && DATA_DIRS+=("$DATA")
CMD=""
EXTRA=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator-type=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data=*) DATA_DIRS+=("${1#*=}") ;;
    --remote-dir=*) REMOTE_DIR="${1#*=}" ;;
    --worker=*) WORKER="${1#*=}" ;;
    --follow) FOLLOW=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option '$1'" ;;
    *)
      [[ -z "$CMD" ]] || die "one command at a time; got '$CMD' and '$1'"
      CMD="$1" ;;
  esac
  shift
done

# Runs a command, or prints it under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    quote_line "$@"
  else
    "$@"
  fi
}

[[ -n "$CMD" ]] || { usage >&2; die "missing COMMAND (create|copy|setup|run|logs|delete)"; }
case "$CMD" in
  create|copy|setup|run|logs|delete) ;;
  *) die "unknown command '$CMD'; expected one of create, copy, setup, run, logs, delete" ;;
esac
need "$NAME" --name TPU_NAME
need "$ZONE" --zone TPU_ZONE
need "$PROJECT" --project TPU_PROJECT
LOC=(--project="$PROJECT" --zone="$ZONE")
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker=$WORKER; expected a number or 'all'"

# One ssh to every worker of the pod, running a shell command there.
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"
}

case "$CMD" in
  create)
    need "$ACCEL" --accelerator-type TPU_TYPE
    need "$VERSION" --version TPU_VERSION
    run gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}" \
      --accelerator-type="$ACCEL" --version="$VERSION" "${EXTRA[@]}"
    ;;
  copy)
    for d in "${DATA_DIRS[@]}"; do
      [[ "$d" != /* && -d "$REPO/$d" ]] ||
        die "--data=$d is not a directory inside the repo (give it relative to $REPO)"
    done
    tarball="${TMPDIR:-/tmp}/psynth-$NAME.tar.gz"
    # The package, configs and launch scripts (no .git, caches or runs/); plus --data dirs.
    run tar -C "$REPO" -czf "$tarball" --exclude=.git --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.ipynb_checkpoints \
      README.md requirements.txt pyproject.toml psynth configs launch \
      "${DATA_DIRS[@]}"
    run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:psynth.tar.gz" "${LOC[@]}" --worker=all
    ssh_all "mkdir -p $REMOTE_DIR && tar -xzf psynth.tar.gz -C $REMOTE_DIR && rm psynth.tar.gz"
    ;;
  setup)
    jax_v="$(pin "$REPO" jax)"
    torch_v="$(pin "$REPO" torch)"
    # torch first from the CPU index: PyPI's default Linux wheel pulls the CUDA build (GBs).
    ssh_all "cd $REMOTE_DIR && python3 -m pip install -q torch==$torch_v --index-url https://download.pytorch.org/whl/cpu && python3 -m pip install -q -r requirements.txt -e . && python3 -m pip install -q \"jax[tpu]==$jax_v\" && python3 -c \"import jax; print(jax.device_count(), 'devices')\""
    ;;
  run)
    need "$WORKDIR" --workdir WORKDIR
    train=(python3 -m psynth train --config="$CONFIG" --config.workdir="$WORKDIR"
           --config.dist.auto=True "${EXTRA[@]}")
    ssh_all "cd $REMOTE_DIR && mkdir -p logs && nohup $(quote_line "${train[@]}") > logs/train.log 2>&1 < /dev/null &"
    ;;
  logs)
    tail_cmd="tail -n 100"
    [[ "$FOLLOW" == 1 ]] && tail_cmd="tail -n 100 -f"
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$WORKER" \
      --command="$tail_cmd $REMOTE_DIR/logs/train.log | sed \"s/^/[\$(hostname)] /\""
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
    ;;
esac
