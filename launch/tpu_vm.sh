#!/usr/bin/env bash
# Runs jaxalign on a Cloud TPU VM (one host or a pod slice): create it, install jaxalign on every worker,
# run the same trainer command on all workers, collect their logs, delete it. See launch/README.md.
#
#   launch/tpu_vm.sh [--dry-run] SUBCOMMAND --name=NAME --zone=ZONE [options] [-- TRAINER ARGS]
#
# Subcommands:
#   create    gcloud compute tpus tpu-vm create (or queued-resources create with --queued, then wait for
#             ACTIVE)
#   install   pip install jaxalign[tpu] on every worker (from --source), copy configs/ to ~/configs there,
#             then run --setup (e.g. download the model) on every worker
#   run       python3 -m jaxalign.main TRAINER ARGS on all workers at once (--worker=all); jax.distributed
#             starts by itself on a pod slice (jaxalign/hosts.py reads TPU_WORKER_HOSTNAMES); each worker's
#             output goes to ~/jaxalign-logs/<name>.log there
#   logs      copy each worker's log to --logs-dir/worker-<i>.log
#   delete    delete the TPU VM (or the queued resource and its VM)
#   all       create, install, run, logs, then delete if --delete
#
# Options:
#   --name=NAME           TPU VM (and queued resource) name (required)
#   --zone=ZONE           e.g. us-east5-a (required)
#   --tpu-type=TYPE       accelerator type: v5p-8, v5p-32, v5litepod-8 (v5e-8 is accepted), v4-8, v6e-8, ...
#                         (default v5p-8)
#   --version=VERSION     TPU software version (default: by type, e.g. v2-alpha-tpuv5 for v5p)
#   --project=PROJECT     gcloud project (default: gcloud's configured one)
#   --queued              create through a queued resource (waits for capacity instead of failing)
#   --spot                spot (preemptible) capacity; a preempted run exits 75 after a checkpoint: rerun
#                         `run` (or `all`) with the same --workdir to resume
#   --source=SRC          what to pip install: a checkout directory (a wheel is built here and copied to the
#                         workers; default: this checkout), a .whl file (copied), or a pip URL such as
#                         git+https://github.com/ORG/jaxalign.git@main
#   --configs=DIR         config directory copied to ~/configs on every worker (default: this checkout's
#                         configs/), so --config=configs/... works there
#   --setup=CMD           a shell command run on every worker after the install (e.g. downloading weights)
#   --workers=N           number of workers (hosts), for `logs` (default: from the type)
#   --logs-dir=DIR        where `logs` puts worker-<i>.log (default tpu-logs/NAME)
#   --delete              with `all`: delete the TPU VM at the end (also when a step fails)
#   --dry-run             print every command instead of running it
#
# Example (v5p-8, DPO of Llama-3.1-8B):
#   launch/tpu_vm.sh all --name=dpo8b --zone=us-east5-a --tpu-type=v5p-8 --spot --delete \
#     --setup='huggingface-cli download meta-llama/Llama-3.1-8B-Instruct --local-dir ~/models/Llama-3.1-8B-Instruct' \
#     -- --config=configs/recipes/dpo_llama3_1_8b.py:v5p-8 --workdir=runs/dpo8b
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

DRY_RUN=${DRY_RUN:-0}
SUBCOMMAND=""
NAME=""
ZONE=""
TPU_TYPE="v5p-8"
VERSION=""
PROJECT=""
QUEUED=0
SPOT=0
SOURCE="$REPO"
CONFIGS="$REPO/configs"
SETUP=""
WORKERS=""
LOGS_DIR=""
DELETE=0
TRAINER_ARGS=()

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --tpu-type=*) TPU_TYPE=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --source=*) SOURCE=${1#*=} ;;
    --configs=*) CONFIGS=${1#*=} ;;
    --setup=*) SETUP=${1#*=} ;;
    --workers=*) WORKERS=${1#*=} ;;
    --logs-dir=*) LOGS_DIR=${1#*=} ;;
    --delete) DELETE=1 ;;
    --name | --zone | --tpu-type | --version | --project | --source | --configs | --setup | --workers | --logs-dir)
      (($# >= 2)) || die "$1 needs a value"
      set -- "$1=$2" "${@:3}"
      continue
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      TRAINER_ARGS=("$@")
      break
      ;;
    create | install | run | logs | delete | all)
      [[ -z $SUBCOMMAND ]] || die "two subcommands: $SUBCOMMAND and $1"
      SUBCOMMAND=$1
      ;;
    *) die "unknown argument '$1' (trainer arguments go after --; --help for usage)" ;;
  esac
  shift
done

[[ -n $SUBCOMMAND ]] || die "no subcommand (create | install | run | logs | delete | all); --help for usage"
[[ -n $NAME ]] || die "--name is required"
[[ -n $ZONE ]] || die "--zone is required"
LOGS_DIR=${LOGS_DIR:-tpu-logs/$NAME}

# v5e's gcloud name is v5litepod-N.
if [[ $TPU_TYPE == v5e-* ]]; then
  TPU_TYPE="v5litepod-${TPU_TYPE#v5e-}"
fi
GENERATION=${TPU_TYPE%-*}
SIZE=${TPU_TYPE##*-}
[[ $SIZE =~ ^[0-9]+$ ]] || die "--tpu-type=$TPU_TYPE: expected <generation>-<size>, e.g. v5p-8"

if [[ -z $VERSION ]]; then
  case "$GENERATION" in
    v5p) VERSION=v2-alpha-tpuv5 ;;
    v5litepod) VERSION=v2-alpha-tpuv5-lite ;;
    v6e) VERSION=v2-alpha-tpuv6e ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi

# Hosts of a slice: v2/v3 8 cores a host; v4/v5p 4 chips (8 cores) a host; v5e/v6e 8 chips on a single
# host up to size 8, else 4 chips a host.
if [[ -z $WORKERS ]]; then
  case "$GENERATION" in
    v5litepod | v6e) if ((SIZE <= 8)); then WORKERS=1; else WORKERS=$((SIZE / 4)); fi ;;
    *) WORKERS=$(((SIZE + 7) / 8)) ;;
  esac
fi

# One word, quoted only when the shell needs it (so printed commands can be pasted back).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
    printf '%s' "$1"
  elif [[ ! $1 =~ [\$\`\"\\!] ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s\n' "$out"
}

# Runs a command, or prints it with --dry-run (commands always go to stdout, one a line, as typed).
cmd() {
  if ((DRY_RUN)); then
    show "$@"
  else
    printf '+ %s\n' "$(show "$@")" >&2
    "$@"
  fi
}

GCLOUD_COMMON=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then
  GCLOUD_COMMON+=(--project="$PROJECT")
fi

on_all() { # a shell command on every worker
  cmd gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_COMMON[@]}" --worker=all --command "$1"
}

do_create() {
  local extra=()
  if ((SPOT)); then
    extra+=(--spot)
  fi
  if ((QUEUED)); then
    cmd gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_COMMON[@]}" --node-id="$NAME" \
      --accelerator-type="$TPU_TYPE" --runtime-version="$VERSION" "${extra[@]}"
    if ((DRY_RUN)); then
      echo "# every 60 s until it prints ACTIVE:"
      show gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_COMMON[@]}" --format 'value(state.state)'
      return
    fi
    local state
    while :; do
      state=$(gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_COMMON[@]}" --format 'value(state.state)')
      echo "queued resource $NAME: $state" >&2
      case "$state" in
        ACTIVE) break ;;
        FAILED | SUSPENDED) die "queued resource $NAME is $state" ;;
      esac
      sleep 60
    done
  else
    cmd gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_COMMON[@]}" --accelerator-type="$TPU_TYPE" \
      --version="$VERSION" "${extra[@]}"
  fi
}

do_install() {
  local wheels=/tmp/jaxalign-wheels spec
  if [[ -d $SOURCE || $SOURCE == *.whl ]]; then
    local local_wheels="$LOGS_DIR/wheels"
    if [[ -d $SOURCE ]]; then
      cmd rm -rf "$local_wheels"
      cmd python3 -m pip wheel --no-deps --wheel-dir="$local_wheels" "$SOURCE"
    else
      cmd mkdir -p "$local_wheels"
      cmd cp "$SOURCE" "$local_wheels/"
    fi
    on_all "rm -rf $wheels && mkdir -p $wheels"
    if ((DRY_RUN)); then
      echo "$(show gcloud compute tpus tpu-vm scp) $(quote "$local_wheels")/jaxalign-*.whl $(show "$NAME:$wheels/" "${GCLOUD_COMMON[@]}" --worker=all)"
    else
      cmd gcloud compute tpus tpu-vm scp "$local_wheels"/jaxalign-*.whl "$NAME:$wheels/" "${GCLOUD_COMMON[@]}" --worker=all
    fi
    spec="--find-links=$wheels 'jaxalign[tpu]'"
  else
    spec="'jaxalign[tpu] @ $SOURCE'"
  fi
  on_all "python3 -m pip install --upgrade pip && python3 -m pip install $spec"
  if [[ -n $CONFIGS ]]; then
    on_all "rm -rf ~/configs"
    cmd gcloud compute tpus tpu-vm scp --recurse "$CONFIGS" "$NAME:~/configs" "${GCLOUD_COMMON[@]}" --worker=all
  fi
  if [[ -n $SETUP ]]; then
    on_all "$SETUP"
  fi
}

do_run() {
  ((${#TRAINER_ARGS[@]})) || die "run: no trainer arguments (after --), e.g. -- --config=configs/dpo.py"
  local args="" word
  for word in "${TRAINER_ARGS[@]}"; do
    args+=" $(quote "$word")"
  done
  # pipefail: the trainer's exit code (75 = preempted after a checkpoint) survives the tee.
  on_all "mkdir -p ~/jaxalign-logs && cd ~ && set -o pipefail && python3 -m jaxalign.main$args 2>&1 | tee -a ~/jaxalign-logs/$NAME.log"
}

do_logs() {
  cmd mkdir -p "$LOGS_DIR"
  local i
  for ((i = 0; i < WORKERS; i++)); do
    cmd gcloud compute tpus tpu-vm scp "$NAME:~/jaxalign-logs/$NAME.log" "$LOGS_DIR/worker-$i.log" \
      "${GCLOUD_COMMON[@]}" --worker="$i"
  done
}

do_delete() {
  if ((QUEUED)); then
    cmd gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_COMMON[@]}" --force --quiet
  else
    cmd gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_COMMON[@]}" --quiet
  fi
}

case "$SUBCOMMAND" in
  create) do_create ;;
  install) do_install ;;
  run) do_run ;;
  logs) do_logs ;;
  delete) do_delete ;;
  all)
    if ((DELETE)); then
      trap do_delete EXIT # also when a step fails
    fi
    do_create
    do_install
    status=0
    do_run || status=$?
    do_logs
    exit "$status"
    ;;
esac
