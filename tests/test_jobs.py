"""The stages as Ray jobs: a real head node (`ray start --head`), `ray job submit` of the tiny pipeline
with the repo as working directory, SUCCEEDED, a production model in the registry; then the head
node is stopped (only it: the test session's own cluster keeps running).

The job is also the suite's one end-to-end run of the main job (ingest -> tune both families ->
distill -> register -> promote): what it leaves on the shared storage is checked here, the stages'
own options and failures in their tests (test_tune, test_distill, test_registry)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from mbta_ray.registry import Registry
from mbta_ray.synth import write_synthetic
from tests.test_tune import TINY_SPACE

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head_node(tmp_path):
    """A separate real Ray head node with the dashboard (the job server), in its own process group
    so that stopping it cannot touch any other Ray instance on the machine.

    The session's own cluster is stopped meanwhile and started again after: with two Ray instances
    on one machine Ray Train's placement-group cleaner cannot tell which to query, and the job's
    trials hang (README, Ray notes)."""
    import ray
    from conftest import start_local_ray

    session_cluster = ray.is_initialized()
    if session_cluster:
        ray.shutdown()
    gcs, dash = _free_port(), _free_port()
    # The venv first on PATH, as after `source .venv/bin/activate`: the job's `python` is the
    # interpreter with the packages. Token auth (Ray 2.60's default) for the job CLI.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    # Stopped at the end, the node would first drain for up to 30 s (for a Serve proxy's traffic;
    # the job is over): stop at once.
    node_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    log = open(tmp_path / "head.log", "w")
    temp = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # unix socket paths must stay under 108 bytes
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--disable-usage-stats",
            # Ports of its own: the session's cluster holds the defaults (a second dashboard agent on
            # 52365 cannot bind, and the job server then has "no available agent").
            *(
                f"--{name}={_free_port()}"
                for name in (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "metrics-export-port",
                    "runtime-env-agent-port",
                    "ray-client-server-port",
                )
            ),
            f"--temp-dir={temp}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=node_env,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while True:
        ok = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, text=True, timeout=60
        )
        if ok.returncode == 0:
            break
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"head node did not come up: {(tmp_path / 'head.log').read_text()[-2000:]}")
        time.sleep(1)
    yield address, env
    with contextlib.suppress(ProcessLookupError):  # `ray start --block` stops its node on SIGTERM
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # whatever of the node's group is left
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    shutil.rmtree(temp, ignore_errors=True)
    if session_cluster:
        start_local_ray()


def test_pipeline_runs_as_a_ray_job_and_promotes_a_model(head_node, tmp_path):
    address, env = head_node
    data = write_synthetic(tmp_path / "synth", 3000, seed=5, files=1)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    root = tmp_path / "shared"  # what a PVC or bucket is on a real cluster
    submit = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--no-wait",
        "--",
        "python",
        "jobs/pipeline.py",
        "--root",
        str(root),
        "--input",
        str(data.paths[0]),
        "--space-file",
        str(space),
        "--xgboost-samples",
        "1",
        "--dnn-samples",
        "1",
        "--distill-epochs",
        "1",
        "--distill-hidden",
        "8",
        "--distill-unlabeled-copies",  # off by default: the one run that exercises it
        "1",
    ]
    deadline = time.time() + 120
    while True:  # the job server answers before its agent is up: "No available agent ... try again later"
        out = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        if out.returncode == 0 or "No available agent" not in out.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert out.returncode == 0, out.stdout + out.stderr
    job = re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)

    status, deadline = "", time.time() + 480
    while time.time() < deadline:
        s = subprocess.run(
            [str(BIN / "ray"), "job", "status", "--address", address, job],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        done = re.search(rf"Job '{job}' (succeeded|failed|was stopped|stopped)", s.stdout + s.stderr)
        if done:
            status = done.group(1)
            break
        time.sleep(3)
    logs = subprocess.run(
        [str(BIN / "ray"), "job", "logs", "--address", address, job],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert status == "succeeded", logs[-4000:]
    assert "PROMOTED" in logs
    reg = Registry(root)
    prod = reg.production()
    assert prod is not None and prod["version"] in logs

    # The student's compression report: every variant measured, exactly one kept.
    reports = list(root.rglob("compression.json"))
    assert len(reports) == 1, reports
    comp = json.loads(reports[0].read_text())
    names = [r["model"] for r in comp["rows"]]
    assert names[0] == "teacher" and {"student", "student_pruned", "student_int8"} <= set(names)
    for r in comp["rows"]:
        for key in ("params", "nonzero_params", "file_bytes", "model_ms_b1", "model_ms_b256", "test_mae"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["model"], key)
    assert comp["unlabeled_rows"] > 0 and comp["training_rows"] > comp["unlabeled_rows"]
    assert [r["model"] for r in comp["rows"] if r.get("kept")] == [comp["chosen"]]

    # Teacher and student registered on the dataset the job built; production is one of them and predicts.
    versions = reg.versions()
    assert sorted(m["pipeline_role"] for m in versions) == ["student", "teacher"]
    assert prod["version"] in {m["version"] for m in versions}
    dataset = prod["dataset"]["version"]
    assert all(m["dataset"]["version"] == dataset for m in versions)
    from mbta_ray.models.data import load_split_pandas

    test = load_split_pandas(root, dataset, "test")
    assert len(test) and all(math.isfinite(v) for v in reg.load_predictor(prod["version"])(test))
