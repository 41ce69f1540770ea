"""The ETL on a multi-node-shaped cluster: `ray start --head` plus a second node joined with
`ray start --address`, one CPU each, on this machine, reading the inputs and writing a shared folder;
against the same ETL on one local node. Same dataset version and counts, or it says which differ.

    python bench/two_node_etl.py                        # the embedded real data (make run's inputs)
    python bench/two_node_etl.py --input FILE[::format] ...  # other inputs (as `mbta-ray data ingest`)

Each ETL runs in its own driver process (`mbta-ray data ingest`, with RAY_ADDRESS naming the
two-node cluster for the second). The two nodes run in their own process groups and are stopped
(only they) at the end. Prints the comparison and how many of the ETL's tasks each node ran, and
appends it to bench/RESULTS.md unless --no-record. Needs no other Ray instance on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_ports() -> list[str]:
    """Ports of its own for each node: two nodes on one machine cannot share the defaults."""
    names = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={_free_port()}" for name in names]


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--num-cpus=1", *args, *_own_ports()],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        # Stopped at the end, a node would first drain for up to 30 s (for a Serve proxy's traffic;
        # the ETL is over): stop at once.
        env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # whatever of the node's group is left
        os.killpg(proc.pid, signal.SIGKILL)


def _ingest(root: Path, inputs: list[str], env: dict) -> tuple[dict, float]:
    """`mbta-ray data ingest` in its own process; the manifest and the wall time."""
    cmd = [str(BIN / "mbta-ray"), "data", "ingest", "--root", str(root), *inputs]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    manifests = list(root.glob("datasets/*/*/manifest.json"))
    if len(manifests) != 1:
        raise SystemExit(f"{root}: expected one dataset version, found {len(manifests)}")
    return json.loads(manifests[0].read_text()), wall


_TASKS_BY_NODE = """
import collections, json, ray
from ray.util.state import list_nodes, list_tasks
ray.init()
nodes = {n.node_id: n.node_ip + (" (head)" if n.is_head_node else "") for n in list_nodes()}
tasks = list_tasks(limit=10000, detail=True, raise_on_missing_output=False)
by_node = collections.Counter(nodes.get(t.node_id, t.node_id or "?") + " " + t.node_id[:8]
                              for t in tasks if t.node_id and t.type == "NORMAL_TASK")
print(json.dumps({"nodes": len(nodes), "tasks_by_node": by_node}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", nargs="*", default=[], help="inputs as for `mbta-ray data ingest` (default: embedded)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "two_node"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)

    single, single_s = _ingest(out / "single", args.input, env)  # a local 2-CPU instance of its own

    gcs = _free_port()
    temp = tempfile.mkdtemp(prefix="ray2n-", dir="/tmp")  # unix socket paths must stay under 108 bytes
    head = _start(
        [
            "--head",
            f"--port={gcs}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
            f"--temp-dir={temp}",
        ],
        out / "head.log",
        env,
    )
    worker = None
    try:
        address = f"127.0.0.1:{gcs}"
        cluster_env = {**env, "RAY_ADDRESS": address}
        _wait_for_nodes(1, cluster_env, head, out / "head.log")
        worker = _start([f"--address={address}", "--node-ip-address=127.0.0.1"], out / "worker.log", env)
        _wait_for_nodes(2, cluster_env, worker, out / "worker.log")
        shared = out / "shared"  # the folder both nodes read and write (a PVC or bucket on a real cluster)
        double, double_s = _ingest(shared, args.input, cluster_env)
        spread = subprocess.run(
            [sys.executable, "-c", _TASKS_BY_NODE], env=cluster_env, capture_output=True, text=True, timeout=300
        )
        tasks = (
            json.loads(spread.stdout.strip().splitlines()[-1])
            if spread.returncode == 0
            else {"error": spread.stderr[-500:]}
        )
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)

    same_version = single["version"] == double["version"]
    same_counts = single["counts"] == double["counts"]
    lines = [
        "| run | wall s | version | rows in | rows out | quarantined | examples (train / valid / test) |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for name, manifest, wall in (("one node, 2 CPUs", single, single_s), ("two nodes, 1 CPU each", double, double_s)):
        c = manifest["counts"]
        by = c["examples_by_split"]
        lines.append(
            f"| {name} | {wall:.1f} | {manifest['version']} | {c['rows_in']:,} | {c['rows_out']:,} | "
            f"{c['quarantined']:,} | {by['train']:,} / {by['valid']:,} / {by['test']:,} |"
        )
    verdict = (
        f"Same dataset version: {'yes' if same_version else 'NO'}; same counts (every count in the manifest): "
        f"{'yes' if same_counts else 'NO'}. Tasks by node on the two-node cluster: "
        f"{json.dumps(tasks.get('tasks_by_node', tasks))}."
    )
    description = (
        "The ETL (`mbta-ray data ingest`) on one local node and on a two-node cluster on this machine "
        "(`ray start --head --num-cpus 1` + `ray start --address ... --num-cpus 1`), writing a shared folder; "
        f"inputs: {' '.join(args.input) or 'the embedded defaults'}."
    )
    print(description, *lines, "", verdict, sep="\n")
    if not args.no_record:
        sys.path.insert(0, str(ROOT / "bench"))
        from results_md import append

        append(description, [*lines, "", verdict])
    if not (same_version and same_counts):
        raise SystemExit(1)


def _wait_for_nodes(n: int, env: dict, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Until the cluster lists ``n`` alive nodes (`ray status`), or the node's process died."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ray start exited ({proc.returncode}): {log.read_text()[-2000:]}")
        status = subprocess.run([str(BIN / "ray"), "status"], env=env, capture_output=True, text=True, timeout=60)
        if status.returncode == 0 and status.stdout.count("node_") >= n:
            return
        time.sleep(2)
    raise SystemExit(f"the cluster did not reach {n} node(s) in {timeout_s:.0f} s: {log.read_text()[-2000:]}")


if __name__ == "__main__":
    main()
