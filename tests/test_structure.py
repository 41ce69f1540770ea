"""The package's structure, checked: import direction, one owner per file name, one error path,
and a non-editable install that finds its package data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mbta_ray.cli import app

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "mbta_ray" / "data" / "samples"
PACKAGE = REPO / "mbta_ray"


def _imported_by(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('mbta_ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


def test_serving_imports_neither_the_etl_nor_any_reader():
    mods = _imported_by("mbta_ray.serve.app")
    assert "mbta_ray.serve.inference" in mods  # the check looks at the right process
    assert not {m for m in mods if m == "mbta_ray.etl" or m.startswith("mbta_ray.sources") or m == "mbta_ray.validate"}


def test_features_do_not_pull_in_validation_or_readers():
    mods = _imported_by("mbta_ray.features")
    assert not {m for m in mods if m.startswith("mbta_ray.sources") or m == "mbta_ray.validate"}


@pytest.mark.parametrize(
    "name",
    [
        "segment_medians.parquet",
        "eval.json",
        "metadata.json",
        "encoder.json",
        "model.ubj",
        "model.pt",
        "architecture.json",
    ],
)
def test_each_bundle_file_name_is_written_once(name):
    """models/bundle.py owns the model folder's file names: no other module spells one out."""
    hits = [
        (p.relative_to(REPO), i)
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if f'"{name}"' in line
    ]
    assert [str(p) for p, _ in hits] == ["mbta_ray/models/bundle.py"], hits


def test_a_user_error_from_any_command_is_one_line_and_exit_2(tmp_path):
    """Errors raised deep in a stage (registry, bundle, tune options) reach the CLI's one handler."""
    runner = CliRunner()
    cases = [
        (["registry", "register", str(tmp_path / "nope"), "--root", str(tmp_path)], "metadata.json: missing"),
        (["distill", "--teacher", str(tmp_path / "nope"), "--root", str(tmp_path)], "not a packaged model folder"),
        (["promote", "v-missing", "--root", str(tmp_path)], "no version 'v-missing'"),
        (
            ["tune", "--model", "xgboost", "--root", str(tmp_path), "--space", str(tmp_path / "none.yaml")],
            "no dataset under",
        ),
    ]
    for args, needle in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output, res.exception)
        assert needle in res.output and "Traceback" not in res.output, res.output
        assert res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) <= 3, res.output


@pytest.mark.slow
def test_a_non_editable_install_finds_its_package_data(ray_local, tmp_path):
    """`pip install .` (a built wheel, not the checkout) runs `mbta-ray tune --help` and a tiny ingest
    and tune from another folder: the embedded samples and configs/tune.yaml ship in the package."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (target / "mbta_ray" / "configs" / "tune.yaml").is_file()
    work = tmp_path / "elsewhere"
    work.mkdir()
    # The session's cluster (one Ray instance per machine); the installed copy comes first on the path.
    env = {**os.environ, "PYTHONPATH": str(target), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    exe = [sys.executable, str(target / "bin" / "mbta-ray")]

    def cli(*args: str, timeout: int = 300) -> str:
        out = subprocess.run([*exe, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import mbta_ray; print(mbta_ray.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target)), where
    assert "--num-samples" in cli("tune", "--help")
    from mbta_ray.synth import write_synthetic

    data = write_synthetic(tmp_path / "synth", 3000, seed=7, files=1)
    cli("data", "ingest", str(data.paths[0]), "-k", "3", "--root", "art")  # embedded GTFS stops by default
    # The packaged default search space (no --space): one trial.
    packaged = yaml.safe_load((target / "mbta_ray" / "configs" / "tune.yaml").read_text())
    assert set(packaged) >= {"xgboost", "dnn"}
    out = cli(
        "tune",
        "--model",
        "xgboost",
        "--num-samples",
        "1",
        "--random-steps",
        "1",
        "--no-wandb",
        "--cpus-per-worker",
        "0.5",
        "--root",
        "art",
    )
    assert re.search(r"xgboost: 1 trials, best valid MAE [\d.]+ s", out), out
    # Quiet by default: mbta_ray's own lines and tables, Ray's logs in the file it names.
    log = re.search(r"Ray's logs go to (\S+\.log)", out)
    assert log and (work / log.group(1)).is_file(), out
    for noise in ("Configuration for experiment", "View detailed results", "(raylet)", "Trial status", "INFO"):
        assert noise not in out, (noise, out)
    assert list((work / "art" / "experiments").glob("xgboost-*/best/model.ubj"))


def test_errors_inside_ray_tasks_and_bad_reference_files_are_one_line(ray_local, tmp_path):
    """A malformed CSV row is found by a Ray Data read task (the error arrives wrapped by Ray) and a
    GTFS stops file without coordinates fails while the pipeline loads it: both are one line, exit 2."""
    runner = CliRunner()
    header = "service_date,route_id,direction_id,trip_id,stop_id,stop_sequence,stop_timestamp\n"
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(header + "20240207,Red,0,t1,70061,1,1707304860\n20240207,Red,0,t1,70063,2,1707304920,extra\n")
    good = tmp_path / "good.csv"
    good.write_text(header + "20240207,Red,0,t1,70061,1,1707304860\n20240207,Red,0,t1,70063,2,1707304920\n")
    stops = tmp_path / "stops.csv"
    stops.write_text("stop_id,stop_name\n70061,Alewife\n")
    # A parquet file whose footer is intact but whose pages are not: only a read task finds out.
    corrupt = tmp_path / "corrupt_pages.parquet"
    shutil.copy(SAMPLES / "lamp_subway_2024-02-07_10k.parquet", corrupt)
    data = bytearray(corrupt.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : len(data) - 8 - footer] = b"\xff" * (len(data) - 12 - footer)
    corrupt.write_bytes(bytes(data))
    cases = [
        (["data", "ingest", f"{ragged}::lamp", "--no-stops"], "malformed CSV"),
        (["data", "ingest", f"{good}::lamp", "--stops", str(stops)], "not a GTFS stops table"),
        (["data", "ingest", str(corrupt), "--no-stops"], "corrupt_pages.parquet: cannot read parquet row group 0"),
        (["data", "ingest", str(tmp_path), "--no-stops"], "is a directory"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, [*args, "--root", str(tmp_path / "art")])
        assert res.exit_code == 2, (args, res.output, res.exception)
        lines = [line for line in res.output.strip().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.output, res.output
