#!/bin/bash
# Run (or resume) a dmsweep sweep on a SLURM allocation: a Ray head on the first
# node, a Ray worker on each other node (one srun step task per node, with all of
# its GPUs and CPUs), then `dmsweep run --address HEAD:PORT SPEC`; Ray is stopped
# with the job.
#
#   sbatch deploy/slurm/ray-sbatch.sh /shared/sweeps/cifar.yaml
#   sbatch --nodes=8 --gpus-per-task=8 deploy/slurm/ray-sbatch.sh /shared/sweeps/cifar.yaml
#
# Preemption and time limits (the job requeues itself and resumes the sweep):
#  - `--requeue`: a preempted job (PreemptMode=REQUEUE) or one requeued with
#    `scontrol requeue` goes back to the queue; Slurm sends SIGTERM to every
#    step first, the driver ledgers the receipts of the blocks in flight,
#    releases the store's lease and exits 3 ("stopped, resumable").
#  - `--signal=B:USR1@300`: five minutes before the time limit the batch shell
#    gets USR1; it stops the driver the same way while Ray is still up, then
#    runs `scontrol requeue` itself (a job that hits its limit is not requeued).
#  - `--open-mode=append`: every start appends to the same log.
#  - A requeued job starts again after Slurm's credential lifetime (AuthInfo
#    cred_expire, 120 s by default); its driver resumes where the last one
#    stopped: completed blocks are never trained again.
#
# Requirements (deploy/README.md):
#  - dmsweep installed in a Python environment every node sees at the same path:
#    activate it before sbatch (sbatch passes the environment on) or set
#    DMSWEEP_VENV=/path/to/venv;
#  - the spec's store (and data) on a filesystem every node mounts at the same
#    absolute path (the driver refuses a relative store on a cluster);
#  - a shared home directory: the Ray token is ~/.ray/auth_token, created here
#    if it does not exist.
# Optional environment: RAY_PORT (default 6379), RAY_DASHBOARD_PORT (8265),
# RAY_METRICS_PORT (8080, every node's Prometheus endpoint), RAY_HEAD_IP (default:
# the head node's NodeAddr in Slurm, resolved to IPv4: the address the cluster
# already routes to), RAY_TMPDIR_ROOT (Ray's temp dir on every node, default
# /tmp/ray; Prometheus reads prom_metrics_service_discovery.json there),
# DMSWEEP_WAIT_S (seconds to wait for the Ray nodes, default 600),
# DMSWEEP_DRAIN_S (seconds the stopping driver waits for running blocks, default
# 20: keep it under Slurm's KillWait, 30 s by default).
# Exit status: dmsweep's (0 done, 1 failed blocks or a failure, 2 bad input,
# 3 stopped by a signal, 4 the store refused a write).
#
#SBATCH --job-name=dmsweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-task=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=dmsweep-%j.out

set -euo pipefail

SPEC="${1:?usage: sbatch ray-sbatch.sh SPEC.yaml (an absolute path on the shared filesystem)}"
case "$SPEC" in
  /*) ;;
  *) echo "ray-sbatch.sh: give the spec as an absolute path on the shared filesystem, got '$SPEC'" >&2; exit 2 ;;
esac
if [[ -n "${DMSWEEP_VENV:-}" ]]; then
  # shellcheck disable=SC1091
  source "$DMSWEEP_VENV/bin/activate"
fi
command -v dmsweep >/dev/null || { echo "ray-sbatch.sh: dmsweep is not on PATH (set DMSWEEP_VENV)" >&2; exit 2; }
echo "ray-sbatch.sh: job ${SLURM_JOB_ID}, start $(( ${SLURM_RESTART_COUNT:-0} + 1 )), on ${SLURM_JOB_NODELIST}" >&2

# Token authentication for every Ray process started here (srun passes the
# environment on), and for `dmsweep run`.
export RAY_AUTH_MODE=token
ray get-auth-token --generate >/dev/null

PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
METRICS_PORT="${RAY_METRICS_PORT:-8080}"
TMPDIR_RAY="${RAY_TMPDIR_ROOT:-/tmp/ray}"
DRAIN_S="${DMSWEEP_DRAIN_S:-20}"
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
NUM_NODES=${#NODES[@]}
HEAD_NODE="${NODES[0]}"

# The head's address: the one slurmctld reaches the node at (its NodeAddr), which
# the other nodes route to as well, as an IPv4 address. `hostname -I` would give
# whichever interface comes first (docker0, InfiniBand, IPv6...).
head_ip() {
  local addr ip
  addr=$(scontrol show node "$1" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
  ip=$(getent ahostsv4 "${addr:-$1}" | awk 'NR == 1 {print $1}')
  if [[ -z "$ip" ]]; then
    echo "ray-sbatch.sh: cannot resolve the head node ${1} (NodeAddr '${addr}') to an IPv4 address; set RAY_HEAD_IP" >&2
    return 1
  fi
  if [[ "$ip" == 127.* ]] && (( NUM_NODES > 1 )); then
    echo "ray-sbatch.sh: the head node ${1} resolves to ${ip}, a loopback address the other nodes cannot reach; set RAY_HEAD_IP" >&2
    return 1
  fi
  echo "$ip"
}
HEAD_IP="${RAY_HEAD_IP:-$(head_ip "$HEAD_NODE")}"
ADDRESS="${HEAD_IP}:${PORT}"

# GPUs and CPUs of one node's task, from SLURM: --gpus-per-task may carry a type
# ("a100:4"); SLURM_GPUS_ON_NODE is what the task actually got.
GPUS_PER_NODE="${SLURM_GPUS_PER_TASK:-${SLURM_GPUS_ON_NODE:-0}}"
GPUS_PER_NODE="${GPUS_PER_NODE##*:}"
GPUS_PER_NODE="${GPUS_PER_NODE:-0}"
CPUS_PER_NODE="${SLURM_CPUS_PER_TASK:-$(nproc)}"
# Steps do not inherit --cpus-per-task from sbatch (Slurm >= 22.05): ask for the
# node's share explicitly, so that Ray's processes are not confined to one CPU.
STEP=(--ntasks-per-node=1 --cpus-per-task="$CPUS_PER_NODE")
if (( GPUS_PER_NODE > 0 )); then
  STEP+=(--gpus-per-task="$GPUS_PER_NODE")
fi
echo "ray-sbatch.sh: ${NUM_NODES} nodes (head ${HEAD_NODE} at ${ADDRESS}), ${GPUS_PER_NODE} GPUs and ${CPUS_PER_NODE} CPUs per node" >&2

RAY_STEPS=()
DRIVER_PID=""
REQUEUE=""
# shellcheck disable=SC2317  # invoked by the traps
cleanup() {
  # Stop Ray: srun passes SIGTERM on to its `ray start --block` tasks, which stop
  # their node's Ray processes; Slurm ends whatever is left with the step. (Not
  # `ray stop`: it would kill every Ray of this user on the node.)
  for pid in ${RAY_STEPS[@]+"${RAY_STEPS[@]}"}; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait || true
}
# shellcheck disable=SC2317
on_usr1() {
  echo "ray-sbatch.sh: the time limit is near: stopping the sweep, then requeueing job ${SLURM_JOB_ID}" >&2
  REQUEUE=1
  if [[ -n "$DRIVER_PID" ]]; then kill -TERM "$DRIVER_PID" 2>/dev/null || true; fi
}
# shellcheck disable=SC2317
on_term() {
  # Preemption, `scontrol requeue`, `scancel`: Slurm signals every process of the
  # job, the driver included, which stops cleanly on its own; keep waiting for it.
  echo "ray-sbatch.sh: SIGTERM from Slurm: the driver is stopping" >&2
}
trap cleanup EXIT
trap on_usr1 USR1
trap on_term TERM

# On SIGTERM (preemption) a Ray node drains before it stops: running tasks may
# finish, so that the stopping driver can still ledger their receipts. Its bound
# is the driver's, so that both end within Slurm's KillWait.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-$DRAIN_S}"
# Ray's temp dir on every node (--temp-dir is per node), so that Prometheus and
# `ray` commands there find it.
srun --nodes=1 --ntasks=1 -w "$HEAD_NODE" "${STEP[@]}" \
  ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
    --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" \
    --temp-dir="$TMPDIR_RAY" --dashboard-host=0.0.0.0 --dashboard-port="$DASHBOARD_PORT" \
    --metrics-export-port="$METRICS_PORT" \
    --block &
RAY_STEPS+=($!)

# Wait until the head's GCS answers (ray.init would block meanwhile), then until
# WANT nodes have joined; give up early if the head's step has ended.
wait_for_ray() {
  python - "$HEAD_IP" "$PORT" "$1" "${DMSWEEP_WAIT_S:-600}" "${RAY_STEPS[0]}" <<'PY'
import os
import socket
import sys
import time

host, port, want, limit, head_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
deadline = time.monotonic() + limit


def head_step_alive() -> bool:
    try:
        os.kill(head_pid, 0)
    except ProcessLookupError:
        return False
    return True


while True:
    try:
        socket.create_connection((host, port), timeout=2).close()
        break
    except OSError:
        if not head_step_alive():
            sys.exit("ray-sbatch.sh: the Ray head did not start (see its output above)")
        if time.monotonic() > deadline:
            sys.exit(f"ray-sbatch.sh: no Ray head at {host}:{port} after {limit:g}s")
        time.sleep(1)

import ray

ray.init(address=f"{host}:{port}", log_to_driver=False, configure_logging=False)
while True:
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    if alive >= want:
        print(f"ray-sbatch.sh: {alive} Ray nodes up", file=sys.stderr)
        break
    if time.monotonic() > deadline:
        sys.exit(f"ray-sbatch.sh: only {alive} of {want} Ray nodes joined after {limit:g}s")
    time.sleep(2)
ray.shutdown()
PY
}
wait_for_ray 1

# Workers: one task per remaining node, each joining the head that now answers.
if (( NUM_NODES > 1 )); then
  srun --nodes=$((NUM_NODES - 1)) --ntasks=$((NUM_NODES - 1)) --exclude="$HEAD_NODE" "${STEP[@]}" \
    ray start --address="$ADDRESS" \
      --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" \
      --temp-dir="$TMPDIR_RAY" --metrics-export-port="$METRICS_PORT" --block &
  RAY_STEPS+=($!)
  wait_for_ray "$NUM_NODES"
fi

# The driver runs in the background so that the traps run while it does; `wait`
# returns early (status > 128) when one of them has, so wait again until the
# driver has really ended.
wait_driver() {
  local code again
  while :; do
    code=0
    wait "$DRIVER_PID" || code=$?
    if (( code > 128 )) && kill -0 "$DRIVER_PID" 2>/dev/null; then
      continue  # a trap ran; the driver is still stopping
    fi
    if (( code > 128 )); then
      # `wait` was interrupted just as the driver ended: collect its own status
      # (127: there is none left to collect, and code is the driver's own).
      again=0
      wait "$DRIVER_PID" 2>/dev/null || again=$?
      if (( again != 127 )); then code=$again; fi
    fi
    return "$code"
  done
}
dmsweep run --address "$ADDRESS" --drain-timeout "$DRAIN_S" "$SPEC" &
DRIVER_PID=$!
status=0
wait_driver || status=$?
echo "ray-sbatch.sh: dmsweep run exited ${status}" >&2
if [[ -n "$REQUEUE" && "$status" -eq 3 ]]; then
  echo "ray-sbatch.sh: requeueing job ${SLURM_JOB_ID}; its next start resumes the sweep" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
