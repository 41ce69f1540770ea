"""The `mbta-ray data` commands end to end (real Ray, real files)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
