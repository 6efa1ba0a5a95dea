#!/bin/bash
# Run a dmsweep sweep on a SLURM allocation: a Ray head on the first node, a Ray
# worker on each other node (one srun task per node, all of its GPUs and CPUs),
# then `dmsweep run --address HEAD:PORT SPEC`, then Ray is stopped everywhere.
#
#   sbatch deploy/slurm/ray-sbatch.sh /shared/sweeps/cifar.yaml
#   sbatch --nodes=8 --gpus-per-task=8 deploy/slurm/ray-sbatch.sh /shared/sweeps/cifar.yaml
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
# the first address of `hostname -I` on the head node), RAY_TMPDIR_ROOT (Ray's
# temp dir, default /tmp/ray; Prometheus reads prom_metrics_service_discovery.json
# there), DMSWEEP_WAIT_S (seconds to wait for the workers, default 600).
# Exit status: dmsweep's (0 done, 1 failed blocks or a failure, 2 bad input).
#
#SBATCH --job-name=dmsweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-task=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
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

# Token authentication for every Ray process started here (srun passes the
# environment on), and for `dmsweep run`.
export RAY_AUTH_MODE=token
ray get-auth-token --generate >/dev/null

PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
METRICS_PORT="${RAY_METRICS_PORT:-8080}"
TMPDIR_RAY="${RAY_TMPDIR_ROOT:-/tmp/ray}"
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
NUM_NODES=${#NODES[@]}
HEAD_NODE="${NODES[0]}"
HEAD_IP="${RAY_HEAD_IP:-$(srun --overlap --nodes=1 --ntasks=1 -w "$HEAD_NODE" hostname -I | awk '{print $1}')}"
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

PIDS=()
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  # Stop Ray on every node (gracefully: the GCS and raylets get SIGTERM), then
  # end the `ray start --block` steps and reap them.
  srun --overlap --nodes="$NUM_NODES" --ntasks="$NUM_NODES" --ntasks-per-node=1 ray stop >/dev/null 2>&1 || true
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  wait || true
}
trap cleanup EXIT

srun --nodes=1 --ntasks=1 -w "$HEAD_NODE" "${STEP[@]}" \
  ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
    --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" \
    --temp-dir="$TMPDIR_RAY" --dashboard-host=0.0.0.0 --dashboard-port="$DASHBOARD_PORT" \
    --metrics-export-port="$METRICS_PORT" \
    --block &
PIDS+=($!)

# Workers: one task per remaining node, each joining the head once it answers.
if (( NUM_NODES > 1 )); then
  sleep 10
  srun --nodes=$((NUM_NODES - 1)) --ntasks=$((NUM_NODES - 1)) --exclude="$HEAD_NODE" "${STEP[@]}" \
    ray start --address="$ADDRESS" \
      --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" \
      --metrics-export-port="$METRICS_PORT" --block &
  PIDS+=($!)
fi

# Wait until every node has joined (the driver sizes its worker pool from the
# nodes alive when it starts); give up early if the head's step has ended.
python - "$HEAD_IP" "$PORT" "$NUM_NODES" "${DMSWEEP_WAIT_S:-600}" "${PIDS[0]}" <<'PY'
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


while True:  # the GCS port answers once the head is up (ray.init would block meanwhile)
    try:
        socket.create_connection((host, port), timeout=2).close()
        break
    except OSError:
        if not head_step_alive():
            sys.exit("ray-sbatch.sh: the Ray head did not start (see its output above)")
        if time.monotonic() > deadline:
            sys.exit(f"ray-sbatch.sh: no Ray head at {host}:{port} after {limit:g}s")
        time.sleep(2)

import ray

ray.init(address=f"{host}:{port}", log_to_driver=False, configure_logging=False)
while True:
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    if alive >= want:
        print(f"ray-sbatch.sh: {alive} Ray nodes up", file=sys.stderr)
        break
    if time.monotonic() > deadline:
        sys.exit(f"ray-sbatch.sh: only {alive} of {want} Ray nodes joined after {limit:g}s")
    time.sleep(5)
ray.shutdown()
PY

set +e
dmsweep run --address "$ADDRESS" "$SPEC"
status=$?
set -e
echo "ray-sbatch.sh: dmsweep run exited ${status}" >&2
exit "$status"
