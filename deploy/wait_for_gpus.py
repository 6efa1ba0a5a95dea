"""Ask an autoscaling Ray cluster for GPU nodes and wait until they have joined.

Why this exists: `dmsweep run` sizes its pool of worker actors from the nodes that
are alive when it starts (orchestrator/driver.py, ``worker_slots``), and refuses to
start (exit 2) when no live node fits one worker. On a cluster whose GPU workers
scale from zero (deploy/ray-cluster.yaml, deploy/kuberay/raycluster.yaml) the GPU
nodes must therefore be up *before* the driver starts. `dmsweep fit` likewise
runs its shards on GPUs only if the cluster has a GPU when it starts.

This script asks the autoscaler for ``--gpus`` one-GPU bundles
(``ray.autoscaler.sdk.request_resources``), waits until the live nodes have that
many GPUs (and at least ``--nodes`` nodes), then withdraws the request so that the
nodes scale down again once the sweep leaves them idle. Given a command after
``--``, it then replaces itself with that command (same process, same
environment), which keeps a Ray job's entrypoint free of shell operators:

    python deploy/wait_for_gpus.py --gpus 8 -- python -m orchestrator run /shared/sweeps/cifar.yaml

(KubeRay pastes a RayJob's entrypoint unquoted into the submitter's shell
command, so ``A && B`` there would run B in the submitter pod, not in the job.)

Exit status: 0 when the GPUs are there (or the command's, when one is given), 1 on timeout or when Ray cannot be
reached (within 10 s: dmsweep's GCS check, orchestrator/ray_runtime.py), 2 on bad arguments. Inside a Ray job ``RAY_ADDRESS`` is set and used;
elsewhere ``--address`` (default ``auto``: the Ray running on this machine).
Token authentication is read as Ray reads it (``RAY_AUTH_MODE=token`` with
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["build_parser", "parse_args", "cluster_capacity", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wait_for_gpus.py",
        description="Request GPU nodes from the Ray autoscaler and wait until they have joined.",
    )
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the live nodes must have in total (>= 0).")
    parser.add_argument("--nodes", type=int, default=1, help="Live nodes (head included) to wait for (default 1).")
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds to wait before giving up (default 1800).")
    parser.add_argument(
        "--address", default=None, help="Ray address (default: $RAY_ADDRESS inside a job, else 'auto')."
    )
    parser.add_argument(
        "--no-request", dest="request", action="store_false",
        help="Only wait; do not ask the autoscaler (a cluster without one, e.g. SLURM).",
    )
    parser.add_argument(
        "--keep-request", action="store_true",
        help="Leave the resource request in place after waiting (the nodes then never scale down).",
    )
    parser.add_argument("--poll", type=float, default=5.0, help="Seconds between checks (default 5).")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER,
        help="After --: a command to exec once the GPUs are there (e.g. python -m orchestrator run SPEC).",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments (exit 2 with a usage line when they are wrong)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    _check(parser, args)
    return args


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.gpus < 0:
        parser.error(f"--gpus must be >= 0, got {args.gpus}")
    if args.nodes < 1:
        parser.error(f"--nodes must be >= 1, got {args.nodes}")
    if args.timeout <= 0 or args.poll <= 0:
        parser.error("--timeout and --poll must be > 0")
    if args.command and args.command[0].startswith("-"):
        parser.error(f"unknown option {args.command[0]!r} (put the command to run after --)")


def cluster_capacity(nodes: Sequence[dict]) -> tuple[int, float]:
    """(live nodes, GPUs on live nodes) from ``ray.nodes()``."""
    alive = [node for node in nodes if node.get("Alive", False)]
    gpus = sum(float(node.get("Resources", {}).get("GPU", 0.0)) for node in alive)
    return len(alive), gpus


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    import ray
    from ray.autoscaler.sdk import request_resources

    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        # ray.init retries an address no GCS answers at for good: ask it once first (10 s).
        from orchestrator.ray_runtime import check_reachable

        check_reachable(address)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # no cluster there, or a missing/wrong token
        print(f"wait_for_gpus: cannot connect to Ray at {address!r}: {exc}", file=sys.stderr)
        return 1

    requested = False
    try:
        if args.request and args.gpus > 0:
            request_resources(bundles=[{"GPU": 1} for _ in range(args.gpus)])
            requested = True
        deadline = time.monotonic() + args.timeout
        last: tuple[int, float] | None = None
        while True:
            have_nodes, have_gpus = cluster_capacity(ray.nodes())
            if (have_nodes, have_gpus) != last:
                print(
                    f"wait_for_gpus: {have_nodes} live nodes, {have_gpus:g} GPUs "
                    f"(waiting for >= {args.nodes} nodes, >= {args.gpus} GPUs)",
                    file=sys.stderr, flush=True,
                )
                last = (have_nodes, have_gpus)
            if have_nodes >= args.nodes and have_gpus >= args.gpus:
                break
            if time.monotonic() > deadline:
                print(
                    f"wait_for_gpus: timed out after {args.timeout:g}s with {have_nodes} nodes and "
                    f"{have_gpus:g} GPUs; check the autoscaler (`ray status`, the head's monitor logs) "
                    "and the node type limits",
                    file=sys.stderr,
                )
                return 1
            time.sleep(args.poll)
    finally:
        if requested and not args.keep_request:
            request_resources(bundles=[])  # withdraw: the running actors keep their nodes busy
        ray.shutdown()
    if args.command:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(args.command[0], args.command)  # only returns by raising
    return 0


if __name__ == "__main__":
    sys.exit(main())
