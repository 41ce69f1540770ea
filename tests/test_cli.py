"""The `mbta-ray data` commands end to end (real Ray, real files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import lamp_rows, write_lamp
from typer.testing import CliRunner

from mbta_ray.cli import app

runner = CliRunner()


@pytest.fixture()
def lamp_file(tmp_path: Path) -> Path:
    rows = [
        r
        for t in range(6)
        for r in lamp_rows(
            f"T{t}",
            "Orange",
            [(f"S{i}", i, 1707321600 + 900 * t + 150 * i, 11 * 3600 + 900 * t + 150 * i) for i in range(5)],
        )
    ]
    return write_lamp(tmp_path / "lamp.parquet", rows)


def test_ingest_list_show(ray_local, lamp_file, tmp_path):
    """ingest prints the summary; list shows the version with counts; show prints manifest and a sample."""
    root = tmp_path / "art"
    res = runner.invoke(app, ["data", "ingest", str(lamp_file), "--root", str(root), "-k", "2", "--no-stops"])
    assert res.exit_code == 0, res.output
    assert "created" in res.output and "examples train" in res.output
    version = next((root / "datasets" / "mbta").iterdir()).name
    again = runner.invoke(app, ["data", "ingest", str(lamp_file), "--root", str(root), "-k", "2", "--no-stops"])
    assert again.exit_code == 0 and "already exists" in again.output
    listed = runner.invoke(app, ["data", "list", "--root", str(root)])
    assert listed.exit_code == 0 and version in listed.output and "lamp" in listed.output
    shown = runner.invoke(app, ["data", "show", version[:6], "--root", str(root), "--rows", "2"])
    assert shown.exit_code == 0, shown.output
    assert version in shown.output and "travel_seconds" in shown.output and "rows_in" in shown.output


def test_errors_are_clear_and_exit_2(ray_local, tmp_path):
    """A broken input or an unknown version: a one-line error naming it, exit code 2, no traceback."""
    bad = tmp_path / "mystery.parquet"
    pq.write_table(pa.table({"foo": [1], "bar": [2]}), bad)
    res = runner.invoke(app, ["data", "ingest", str(bad), "--root", str(tmp_path / "art")])
    assert res.exit_code == 2 and "mystery.parquet" in res.output and "unknown input format" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["data", "show", "deadbeef", "--root", str(tmp_path / "art")])
    assert res.exit_code == 2 and "deadbeef" in res.output
    res = runner.invoke(app, ["data", "ingest", "--root", str(tmp_path / "art"), "-k", "0"])
    assert res.exit_code == 2 and "k must be >= 1" in res.output
    res = runner.invoke(app, ["data", "ingest", "--root", str(tmp_path / "art"), "--max-abs-delay", "nan"])
    assert res.exit_code == 2 and "max_abs_delay_s must be a number > 0, got nan" in res.output, res.output
    res = runner.invoke(app, ["data", "ingest", "--root", str(tmp_path / "art"), "--no-stops", "--stops", str(bad)])
    assert res.exit_code == 2 and "--stops FILE or --no-stops, not both" in res.output, res.output


def test_console_script_is_installed():
    """`mbta-ray` is on the venv's PATH (pyproject console script)."""
    exe = shutil.which("mbta-ray") or str(Path(sys.executable).parent / "mbta-ray")
    out = subprocess.run([exe, "data", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ingest" in out.stdout and "list" in out.stdout


def test_synth_then_ingest(ray_local, tmp_path):
    """`data synth` writes labeled synthetic LAMP files that `data ingest` reads as LAMP."""
    out = tmp_path / "synth"
    res = runner.invoke(app, ["data", "synth", "--events", "3000", "--out", str(out), "--files", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.output
    files = sorted(str(p) for p in out.glob("*.parquet"))
    assert len(files) == 2
    ing = runner.invoke(app, ["data", "ingest", *files, "--root", str(tmp_path / "art"), "-k", "3"])
    assert ing.exit_code == 0, ing.output
    assert "created" in ing.output and "3,000" in ing.output


def test_tune_rejects_bad_arguments(tmp_path):
    """Wrong --model, or --resume with both families: exit 2 with the reason."""
    res = runner.invoke(app, ["tune", "--model", "forest", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "--model must be" in res.output
    res = runner.invoke(app, ["tune", "--model", "both", "--resume", str(tmp_path), "--root", str(tmp_path)])
    assert res.exit_code == 2 and "--resume continues one experiment" in res.output
    res = runner.invoke(app, ["tune", "--model", "xgboost", "--root", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no dataset" in res.output


def test_metrics_table_lists_models_and_baselines_once():
    """The closing table of `mbta-ray tune`: each model and baseline once, with its numbers."""
    from rich.console import Console

    from mbta_ray.cli import metrics_table

    m = {"n": 10, "mae": 100.0, "rmse": 150.0, "r2": 0.8, "bias": -5.0, "accurate": 0.75}
    half = {**m, "mae": 50.0}

    def entry(common_mae: dict) -> dict:
        return {
            "overall": m,
            "by_mode": {"bus": m},
            "by_horizon": {"0-3": m},
            "common": {"overall": m, "by_mode": common_mae},
        }

    results = [
        {"report": {"xgboost": entry({"bus": half}), "persistence": entry({"bus": m})}},
        {"report": {"dnn": entry({"bus": m}), "persistence": entry({"bus": m})}},
    ]
    console = Console(width=200, record=True)
    console.print(metrics_table(results))
    text = console.export_text()
    assert text.count("│ persistence") == 1 and "xgboost" in text and "dnn" in text
    assert "100.0" in text and "75.0%" in text
    assert "bus 50 (0.50x)" in text and "bus 100 (1.00x)" in text  # common rows, as a multiple of persistence


def _hand_made_version(root: Path, version: str, created: str = "2026-11-26T12:00:00") -> Path:
    """A dataset version as the ETL leaves it (complete manifest, a train split), without Ray."""
    folder = root / "datasets" / "mbta" / version
    (folder / "train").mkdir(parents=True)
    pq.write_table(pa.table({"travel_seconds": [60.0, 90.0]}), folder / "train" / "part-0.parquet")
    by_split = {"train": 2, "valid": 0, "test": 0}
    counts = {
        "rows_in": 5,
        "rows_out": 4,
        "quarantined": 1,
        "quarantined_by_reason": {"duplicate": 1},
        "trips": 1,
        "trips_by_split": {"train": 1, "valid": 0, "test": 0},
        "examples": 2,
        "examples_expected": 2,
        "examples_by_split": by_split,
    }
    manifest = {"name": "mbta", "version": version, "created_at": created, "inputs": [{"format": "lamp"}]}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "counts": counts}))
    return folder


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"name": "mbta", "version": "bad0", "created_at": "2026-11-27"}', "field 'counts' missing"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"name": "mbta", "version": "elsewhere", "created_at": "x", "counts": {}}', "field 'version'"),
    ],
)
def test_a_damaged_manifest_is_reported_by_name_and_hides_no_other_version(tmp_path, content, why):
    """`data list` lists the good version and reports the damaged one; `data show` of it is one line."""
    _hand_made_version(tmp_path, "good0")
    bad = _hand_made_version(tmp_path, "bad0") / "manifest.json"
    bad.write_bytes(content)
    res = runner.invoke(app, ["data", "list", "--root", str(tmp_path)])
    assert res.exit_code == 0 and "good0" in res.output and "Traceback" not in res.output, res.output
    assert f"damaged: {bad}: {why}" in res.output, res.output
    res = runner.invoke(app, ["data", "show", "bad", "--root", str(tmp_path)])
    assert res.exit_code == 2 and str(bad) in res.output and why in res.output, res.output
    res = runner.invoke(app, ["data", "show", "good", "--root", str(tmp_path), "--rows", "1"])
    assert res.exit_code == 0 and "train sample (1 rows)" in res.output, res.output


def test_data_show_checks_rows_and_split_before_using_them(tmp_path):
    """--rows below 1 and a --split that is not train/valid/test (or is a path): exit 2, no traceback."""
    _hand_made_version(tmp_path, "good0")
    res = runner.invoke(app, ["data", "show", "good0", "--root", str(tmp_path), "--rows", "-1"])
    assert res.exit_code == 2 and "--rows" in res.output and "Traceback" not in res.output, res.output
    for split in ("nope", "../../registry", "[/x]"):
        res = runner.invoke(app, ["data", "show", "good0", "--root", str(tmp_path), "--split", split])
        assert res.exit_code == 2 and "--split must be one of train, valid, test" in res.output, res.output
        assert repr(split) in res.output
    res = runner.invoke(app, ["data", "show", "good0", "--root", str(tmp_path), "--split", "valid"])
    assert res.exit_code == 2 and "valid: missing; the dataset version is damaged" in res.output, res.output
    res = runner.invoke(app, ["data", "list", "--root", str(tmp_path), "--name", "../.."])
    assert res.exit_code == 2 and "invalid dataset name '../..'" in res.output, res.output


def test_more_mistakes_are_one_line_and_exit_2(tmp_path):
    """A path where a folder goes, a server that is not this app, numbers that are none: one line
    naming the option or the path, exit 2, never a traceback."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mbta_ray.config import ResourceError, TrialResources, TuneSettings
    from mbta_ray.errors import ConfigError, MissingFileError
    from mbta_ray.registry import InvalidName
    from mbta_ray.tune import _experiment

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    res = runner.invoke(app, ["promote", "v1", "--root", str(a_file)])
    assert res.exit_code == 2 and "Not a directory" in res.output and "Traceback" not in res.output, res.output
    res = runner.invoke(app, ["data", "show", "x", "--rows", "99999999999999999999999", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "--rows" in res.output and "Traceback" not in res.output, res.output
    res = runner.invoke(
        app, ["live", "record", "--url", "http://127.0.0.1:9/vp.pb", "--out", str(tmp_path / "o"), "--every", "inf"]
    )
    assert res.exit_code == 2 and "--every inf" in res.output, res.output

    class NotThisApp(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            body = b"hello" if self.path == "/model" else b"[1, 2]"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotThisApp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = runner.invoke(
            app, ["smoke", "--url", f"http://127.0.0.1:{server.server_address[1]}", "--root", str(tmp_path)]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert res.exit_code == 2 and "not a JSON object" in res.output and "Traceback" not in res.output, res.output

    for bad, says in ((["--model-name", "../.."], "invalid model name"), (["--registry", "ftp://x"], "registry root")):
        started = time.monotonic()
        res = runner.invoke(app, ["pipeline", "--root", str(tmp_path / "art"), *bad])
        assert res.exit_code == 2 and says in res.output and time.monotonic() - started < 10, res.output
        assert not (tmp_path / "art" / "datasets").exists()  # refused before the ingest
    with pytest.raises(MissingFileError, match="not a Tune experiment to resume"):
        _experiment(TuneSettings(family="xgboost"), "abcdef12", str(tmp_path))
    assert not (tmp_path / "encoder.json").exists()
    with pytest.raises(InvalidName, match="invalid experiment name"):
        _experiment(
            TuneSettings(family="xgboost", name="../../escape", storage=str(tmp_path / "exp")), "abcdef12", None
        )
    assert not (tmp_path / "escape").exists()
    with pytest.raises(ConfigError, match="--cpus-per-worker nan"):
        TrialResources(cpus_per_worker=float("nan"))
    with pytest.raises(ConfigError, match="--trial-cpu -5"):
        TrialResources(trial_cpu=-5)
    with pytest.raises(ResourceError, match="--gpus-per-worker 1: the cluster has 0 GPU"):
        TrialResources(gpus_per_worker=1).check_gpus(0)
    with pytest.raises(ConfigError, match="--random-steps -1"):
        TuneSettings(family="dnn", random_steps=-1)
