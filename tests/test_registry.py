"""Model registry and promotion gate: real model files, real subprocesses, no Ray needed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from mbta_ray.encoding import FeatureEncoder
from mbta_ray.models import xgboost_model
from mbta_ray.models.bundle import write_bundle
from mbta_ray.registry import CorruptModel, Registry, RegistryError, evaluation_of
from mbta_ray.schema import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET

DATASET = {"name": "mbta", "version": "d" * 16}


def example_rows(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(size=n) for c in NUMERIC_FEATURES})
    # Ids like the serving tests' trip (route Red, stops A-D), so a model built here can serve it.
    values = {"route_id": ["Red", "Orange", "1"], "direction_id": [0, 1], "mode": ["bus", "subway"]}
    for c in CATEGORICAL_FEATURES:
        df[c] = rng.choice(values.get(c, ["A", "B", "C", "D"]), size=n)
    df["scheduled_seconds_ahead"] = rng.uniform(60, 900, size=n)
    df[TARGET] = df["scheduled_seconds_ahead"] + 30 * df["delay_u"] + rng.normal(0, 20, size=n)
    return df


def make_model(folder: Path, mae: float, rounds: int = 5) -> Path:
    """A real (tiny) XGBoost model folder as `tune` packages it, with an eval.json claiming ``mae``."""
    df = example_rows()
    enc = FeatureEncoder.fit(df)
    booster = xgb.train(
        {"objective": "reg:absoluteerror", "base_score": 0.0, "nthread": 1},
        xgboost_model.dmatrix(df, enc, residual=True),
        num_boost_round=rounds,
    )
    booster.set_attr(**{xgboost_model.PRIOR_ATTR: "1"})
    ckpt = folder / "ckpt"
    ckpt.mkdir(parents=True)
    booster.save_model(str(ckpt / xgboost_model.MODEL_FILE))
    out = write_bundle(
        folder / "best",
        family="xgboost",
        model_dir=ckpt,
        encoder=enc,
        metadata={"params": {"rounds": rounds}, "dataset": DATASET},
    )
    m = {"n": 100, "mae": mae, "rmse": mae * 1.5, "r2": 0.8, "bias": 1.0, "accurate": 0.8}
    (out / "eval.json").write_text(
        json.dumps(
            {
                "split": "test",
                "dataset": DATASET["version"],
                "report": {
                    "xgboost": {"overall": m, "by_mode": {"bus": m}},
                    "persistence": {"overall": {**m, "mae": 130.0}},
                },
            }
        )
    )
    return out


def register(reg: Registry, tmp_path: Path, name: str, mae: float) -> str:
    model_dir = make_model(tmp_path / name, mae)
    return reg.register(model_dir, evaluation=evaluation_of(model_dir))["version"]


def test_register_records_metadata_and_loads_verified(tmp_path):
    reg = Registry(tmp_path / "root")
    v = register(reg, tmp_path, "m1", 100.0)
    meta = reg.metadata(v)
    assert meta["family"] == "xgboost" and meta["dataset"] == DATASET
    assert meta["evaluation"]["metrics"]["mae"] == 100.0 and meta["evaluation"]["split"] == "test"
    assert meta["evaluation"]["baselines"]["persistence"]["mae"] == 130.0
    assert set(meta["files"]) == {"model.ubj", "encoder.json", "eval.json"}
    assert meta["code_version"] and meta["created_at"] and meta["params"] == {"rounds": 5}
    assert [m["version"] for m in reg.versions()] == [v]
    pred = reg.load_predictor(v)(example_rows(10, seed=1))
    assert pred.shape == (10,) and np.isfinite(pred).all()


def test_corrupt_or_missing_model_file_is_refused(tmp_path):
    reg = Registry(tmp_path / "root")
    v = register(reg, tmp_path, "m1", 100.0)
    model_file = Path(reg.base) / v / "model.ubj"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(CorruptModel, match=r"model.ubj: checksum mismatch"):
        reg.load_predictor(v)
    model_file.unlink()
    with pytest.raises(CorruptModel, match=r"model.ubj: model file missing"):
        reg.fetch(v)
    with pytest.raises(RegistryError, match=r"no version 'nope'"):
        reg.metadata("nope")


def test_promotion_gate_accepts_refuses_and_logs_forced(tmp_path):
    reg = Registry(tmp_path / "root")
    v1 = register(reg, tmp_path, "m1", 100.0)
    v_worse = register(reg, tmp_path, "m2", 105.0)
    v_better = register(reg, tmp_path, "m3", 90.0)

    d = reg.promote(v1)
    assert d.accepted and "no production model yet" in d.reason
    assert reg.production()["version"] == v1

    d = reg.promote(v_worse)
    assert not d.accepted and reg.production()["version"] == v1
    assert "105.000 >= production mae 100.000" in d.reason  # both numbers shown

    with pytest.raises(RegistryError, match="--force needs --reason"):
        reg.promote(v_worse, force=True)
    d = reg.promote(v_worse, force=True, reason="rollback drill")
    assert d.accepted and d.forced and reg.production()["version"] == v_worse
    assert "forced: rollback drill" in d.reason

    d = reg.promote(v_better, metric="mae")
    assert d.accepted and reg.production()["version"] == v_better
    prod = reg.production()
    assert prod["metrics"]["mae"] == 90.0 and prod["dataset"] == DATASET and prod["family"] == "xgboost"

    log = reg.audit_log()
    assert [(e["candidate"], e["accepted"], e["forced"]) for e in log] == [
        (v1, True, False),
        (v_worse, False, False),
        (v_worse, False, True),  # --force without --reason: refused, and recorded
        (v_worse, True, True),
        (v_better, True, False),
    ]
    assert "refused: --force needs --reason" in log[2]["reason"]
    assert reg.promote(v1, metric="accurate").accepted is False  # equal is not better
    with pytest.raises(RegistryError, match="--metric must be one of"):
        reg.promote(v1, metric="speed")


#: ``mbta-ray`` with a pause just before the production pointer's temp file is renamed into place,
#: so the test can kill -9 the process at that step (the hook lives here, not in the registry).
PAUSED_PROMOTE = """
import os, sys, time
real_replace = os.replace
def paused_replace(src, dst, *args, **kwargs):
    if str(dst).endswith("production.json"):
        print("paused at before_replace", flush=True)
        time.sleep(60)
    return real_replace(src, dst, *args, **kwargs)
os.replace = paused_replace
from mbta_ray.cli import app
sys.argv = ["mbta-ray", *sys.argv[1:]]
app()
"""


def test_kill_9_mid_promotion_leaves_production_intact(tmp_path):
    """A real `mbta-ray promote` process is SIGKILLed after writing the new pointer's temp file and
    before the rename: the old production model is still the pointer and still loads."""
    root = tmp_path / "root"
    reg = Registry(root)
    v1 = register(reg, tmp_path, "m1", 100.0)
    v2 = register(reg, tmp_path, "m2", 90.0)
    reg.promote(v1)
    before = (Path(reg.base) / "production.json").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_PROMOTE, "promote", v2, "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "paused at before_replace" in line, line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert list(Path(reg.base).glob("production.json.tmp-*"))  # it really was mid-write
    assert (Path(reg.base) / "production.json").read_bytes() == before
    assert reg.production()["version"] == v1
    assert np.isfinite(reg.load_predictor(v1)(example_rows(5))).all()
    # and the interrupted promotion can simply be run again
    assert reg.promote(v2).accepted and reg.production()["version"] == v2


def test_registry_on_a_uri(tmp_path):
    """The same registry through pyarrow.fs on a URI (file:// here; gs:// and s3:// on clusters)."""
    reg = Registry(f"file://{tmp_path / 'remote'}")
    v = register(reg, tmp_path, "m1", 100.0)
    assert reg.promote(v).accepted
    same = Registry(f"file://{tmp_path / 'remote'}")
    assert same.production()["version"] == v
    assert np.isfinite(same.load_predictor(v, cache=tmp_path / "cache")(example_rows(5))).all()


def test_registry_on_an_object_store_filesystem(tmp_path):
    """The object-store code path (no rename: single-object writes), on fsspec's in-memory store."""
    import fsspec
    import pyarrow.fs as pafs

    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
    reg = Registry(f"/bucket-{tmp_path.name}", filesystem=fs)
    assert not reg.local
    v1 = register(reg, tmp_path, "m1", 100.0)
    v2 = register(reg, tmp_path, "m2", 120.0)
    assert reg.promote(v1).accepted and not reg.promote(v2).accepted
    assert reg.production()["version"] == v1 and len(reg.audit_log()) == 2
    assert np.isfinite(reg.load_predictor(v1, cache=tmp_path / "cache")(example_rows(5))).all()
    with fs.open_output_stream(f"{reg.base}/{v1}/encoder.json") as f:
        f.write(b"{}")
    with pytest.raises(CorruptModel, match="encoder.json: checksum mismatch"):
        reg.fetch(v1, cache=tmp_path / "cache2")


def test_a_pointer_moved_during_a_promotion_on_an_object_store_is_a_refusal_only(tmp_path, monkeypatch):
    """No lock on an object store: when production moved between the read and the switch, the
    audit log records a refusal and no acceptance (serving's fallback trusts accepted entries)."""
    import fsspec
    import pyarrow.fs as pafs

    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
    reg = Registry(f"/bucket-race-{tmp_path.name}", filesystem=fs)
    v1, v2, v3 = (register(reg, tmp_path, f"m{i}", mae) for i, mae in ((1, 100.0), (2, 90.0), (3, 80.0)))
    assert reg.promote(v1).accepted
    reads = iter([{"version": v1}, {"version": v2}])  # another promoter switched to v2 meanwhile
    real = reg.production
    monkeypatch.setattr(reg, "production", lambda: next(reads, None) or real())
    with pytest.raises(RegistryError, match="production changed while promoting"):
        reg.promote(v3)
    monkeypatch.undo()
    last = reg.audit_log()[-1]
    assert last["candidate"] == v3 and not last["accepted"]
    assert [e["candidate"] for e in reg.audit_log() if e["accepted"]] == [v1]
    assert reg.production()["version"] == v1


def test_forced_rollback_works_over_a_broken_production_record(tmp_path):
    reg = Registry(tmp_path / "root")
    v1 = register(reg, tmp_path, "m1", 100.0)
    v2 = register(reg, tmp_path, "m2", 110.0)
    reg.promote(v1)
    (Path(reg.base) / "production.json").write_text("{not json")
    with pytest.raises(RegistryError, match="cannot read the production model .*--force --reason"):
        reg.promote(v2)
    d = reg.promote(v2, force=True, reason="production record damaged")
    assert d.accepted and "production record unreadable" in d.reason
    assert reg.production()["version"] == v2


def test_concurrent_promotions_are_serialized(tmp_path):
    """Two promotions at once: the second decides against the first one's result, not the old one."""
    from concurrent.futures import ThreadPoolExecutor

    reg = Registry(tmp_path / "root")
    v0 = register(reg, tmp_path, "m0", 100.0)
    better = [register(reg, tmp_path, f"m{i}", mae) for i, mae in ((1, 90.0), (2, 80.0))]
    reg.promote(v0)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda v: Registry(tmp_path / "root").promote(v), better))
    log = reg.audit_log()[1:]
    assert sorted(e["production_before"] for e in log if e["accepted"]) != [v0, v0]
    assert reg.production()["version"] == better[1]  # the best one wins whatever the order


def test_unsafe_files_and_bad_folders_are_refused_by_name(tmp_path):
    reg = Registry(tmp_path / "root")
    model_dir = make_model(tmp_path / "m1", 100.0)
    (model_dir / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(RegistryError, match=r"not in a safe model format: \['model.pkl'\]"):
        reg.register(model_dir, evaluation=evaluation_of(model_dir))
    with pytest.raises(RegistryError, match=r"metadata.json: missing; register a packaged"):
        evaluation_of(tmp_path)
    (model_dir / "model.pkl").unlink()
    meta = reg.register(model_dir, evaluation=evaluation_of(model_dir))
    (Path(reg.base) / meta["version"] / "metadata.json").unlink()  # an incomplete version is ignored
    assert reg.versions() == []


def test_production_on_another_dataset_is_rescored_or_refused(tmp_path):
    reg = Registry(tmp_path / "root")
    v1 = register(reg, tmp_path, "m1", 100.0)
    reg.promote(v1)
    other = make_model(tmp_path / "m2", 90.0)
    meta = json.loads((other / "metadata.json").read_text())
    meta["dataset"] = {"name": "mbta", "version": "e" * 16}
    (other / "metadata.json").write_text(json.dumps(meta))
    v2 = reg.register(other, evaluation=evaluation_of(other))["version"]
    d = reg.promote(v2)  # no way to score production on the new dataset
    assert not d.accepted and "cannot compare" in d.reason
    d = reg.promote(v2, rescore=lambda version, dataset: {"mae": 95.0} if version == v1 else None)
    assert d.accepted and "90.000 < production mae 95.000" in d.reason


def test_registry_cli_register_list_promote_audit(tmp_path):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    runner = CliRunner()
    root = str(tmp_path / "root")
    good, bad = make_model(tmp_path / "good", 100.0), make_model(tmp_path / "bad", 120.0)
    versions = []
    for folder in (good, bad):
        res = runner.invoke(app, ["registry", "register", str(folder), "--root", root])
        assert res.exit_code == 0, res.output
        versions.append(res.output.split("registered travel-time/")[1].split()[0])
    res = runner.invoke(app, ["promote", versions[0], "--root", root])
    assert res.exit_code == 0 and "promoted" in res.output
    res = runner.invoke(app, ["promote", versions[1], "--root", root])
    assert res.exit_code == 1 and "refused" in res.output and "120.000 >= production mae 100.000" in res.output
    res = runner.invoke(app, ["promote", versions[1], "--root", root, "--force"])
    assert res.exit_code == 2 and "--force needs --reason" in res.output
    res = runner.invoke(app, ["registry", "list", "--root", root])
    assert res.exit_code == 0 and versions[0] in res.output and "yes" in res.output
    res = runner.invoke(app, ["registry", "audit", "--root", root])
    assert res.exit_code == 0 and "accepted" in res.output and "refused" in res.output
    res = runner.invoke(app, ["registry", "register", str(tmp_path), "--root", root])
    assert res.exit_code == 2 and "metadata.json: missing" in res.output


@pytest.mark.parametrize("bad", ["../../../evil", "..", "a/b", "/abs", "v1/../../x", ".hidden", "", "x" * 200, "a\\b"])
def test_names_that_could_escape_the_registry_are_refused_and_recorded(tmp_path, bad):
    """`promote ../../../evil --force` must not write outside the registry; the refusal is audited."""
    root = tmp_path / "root"
    reg = Registry(root)
    v1 = register(reg, tmp_path, "m1", 100.0)
    reg.promote(v1)
    outside = set(tmp_path.rglob("*"))
    with pytest.raises(RegistryError, match="invalid version"):
        reg.promote(bad, force=True, reason="x")
    with pytest.raises(RegistryError, match="invalid version"):
        reg.metadata(bad)
    assert reg.production()["version"] == v1
    new = {p for p in set(tmp_path.rglob("*")) - outside if "audit" not in p.parts}
    assert not new, new  # nothing written but the audit entry
    last = reg.audit_log()[-1]
    assert not last["accepted"] and "refused: invalid version" in last["reason"]
    with pytest.raises(RegistryError, match="invalid model name"):
        Registry(root, bad)


def test_a_hand_edited_production_pointer_or_file_list_cannot_leave_the_registry(tmp_path):
    reg = Registry(tmp_path / "root")
    v1 = register(reg, tmp_path, "m1", 100.0)
    reg.promote(v1)
    (tmp_path / "secret.ubj").write_text("not yours")
    pointer = Path(reg.base) / "production.json"
    pointer.write_text(json.dumps({**reg.production(), "version": "../../../secret"}))
    with pytest.raises(RegistryError, match="invalid version"):
        reg.fetch(reg.production()["version"])
    meta_path = Path(reg.base) / v1 / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["files"] = {"../../../../secret.ubj": "0" * 64}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="invalid file name"):
        reg.fetch(v1, cache=tmp_path / "cache")


def test_promote_cli_refuses_a_path_as_a_version(tmp_path):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    root = tmp_path / "root"
    v1 = register(Registry(root), tmp_path, "m1", 100.0)
    res = CliRunner().invoke(app, ["promote", "../../../evil", "--force", "--reason", "x", "--root", str(root)])
    assert res.exit_code == 2 and "invalid version" in res.output and "Traceback" not in res.output, res.output
    assert Registry(root).production() is None and v1
    assert [e["accepted"] for e in Registry(root).audit_log()] == [False]


def test_audit_entries_of_the_wrong_shape_are_skipped_and_the_cli_still_lists_the_rest(tmp_path):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    reg = Registry(tmp_path / "root")
    v1 = register(reg, tmp_path, "m1", 100.0)
    reg.promote(v1)
    audit = Path(reg.base) / "audit"
    (audit / "a-empty.json").write_text("{}")
    (audit / "b-list.json").write_text("[1]")
    (audit / "c-forced-text.json").write_text(json.dumps({**reg.audit_log()[0], "forced": "yes"}))
    assert [e["candidate"] for e in reg.audit_log()] == [v1]
    result = CliRunner().invoke(app, ["registry", "audit", "--root", str(tmp_path / "root")])
    assert result.exit_code == 0 and "Traceback" not in result.output and "accepted" in result.output, result.output


@pytest.mark.parametrize("pointer", ["[1, 2]", '"v1"', '{"model": "travel-time"}', "\udcff"])
def test_a_pointer_edited_into_nonsense_is_corrupt_and_a_forced_rollback_still_works(tmp_path, pointer):
    reg = Registry(tmp_path / "root")
    v1 = register(reg, tmp_path, "m1", 100.0)
    reg.promote(v1)
    (Path(reg.base) / "production.json").write_bytes(pointer.encode("utf-8", "surrogateescape"))
    with pytest.raises(CorruptModel):
        reg.production()
    (Path(reg.base) / "audit" / "zz-damaged.json").write_text("[not an entry]")
    assert reg.promote(v1, force=True, reason="pointer repaired").accepted
    assert reg.production()["version"] == v1 and len(reg.audit_log()) >= 2  # the damaged entry skipped


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda m: {"x": 1}, "field 'version'"),
        (lambda m: {k: v for k, v in m.items() if k != "created_at"}, "field 'created_at' missing"),
        (lambda m: {**m, "evaluation": 5}, "field 'evaluation' missing or not an object"),
        (lambda m: {**m, "evaluation": {**m["evaluation"], "metrics": [1]}}, "field 'evaluation.metrics' is not"),
        (
            lambda m: {**m, "evaluation": {**m["evaluation"], "metrics": {"mae": "low"}}},
            "field 'evaluation.metrics.mae' is",
        ),
        (lambda m: {**m, "files": ["model.ubj"]}, "field 'files' missing or not an object"),
    ],
)
def test_a_hand_damaged_metadata_file_is_reported_by_name_and_field(tmp_path, edit, why):
    """`registry list` lists the good version and names the damaged file and field; reading it is a
    CorruptModel (never a KeyError or AttributeError further on)."""
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    root = tmp_path / "root"
    reg = Registry(root)
    good, bad = register(reg, tmp_path, "m1", 100.0), register(reg, tmp_path, "m2", 90.0)
    path = Path(reg.base) / bad / "metadata.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(CorruptModel, match=re.escape(f"{path}: {why}")):
        reg.metadata(bad)
    damaged: list = []
    assert [m["version"] for m in reg.versions(damaged=damaged)] == [good]
    assert len(damaged) == 1 and str(path) in str(damaged[0])
    res = CliRunner().invoke(app, ["registry", "list", "--root", str(root)])
    assert res.exit_code == 0 and good in res.output and "Traceback" not in res.output, res.output
    assert f"damaged: {path}: {why}" in res.output, res.output


def test_registry_list_reports_a_production_pointer_to_a_path_and_still_lists(tmp_path):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    root = tmp_path / "root"
    reg = Registry(root)
    v1 = register(reg, tmp_path, "m1", 100.0)
    reg.promote(v1)
    pointer = Path(reg.base) / "production.json"
    pointer.write_text(json.dumps({**reg.production(), "version": "../../../datasets"}))
    res = CliRunner().invoke(app, ["registry", "list", "--root", str(root)])
    assert res.exit_code == 0 and v1 in res.output, res.output
    assert f"damaged: invalid version in {pointer} '../../../datasets'" in res.output, res.output


def test_a_model_whose_files_pass_their_checksums_but_do_not_load_is_not_promoted(tmp_path):
    """Checksums say the files are the ones registered, not that they are a model: a model file
    replaced (checksum updated with it) is refused by loading it, and production stays."""
    import hashlib
    import json

    reg = Registry(tmp_path / "root")
    v1 = register(reg, tmp_path, "m1", 100.0)
    v2 = register(reg, tmp_path, "m2", 90.0)
    reg.promote(v1)
    again = reg.promote(v1)  # not compared with itself
    assert not again.accepted and again.reason.endswith(f"{v1} is already the production model")
    folder = Path(reg.fetch(v2))
    meta = json.loads((folder / "metadata.json").read_text())
    (name,) = [n for n in meta["files"] if n.startswith("model")]
    (folder / name).write_bytes(b"\x00not a model" * 50)
    meta["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptModel, match="cannot load the model"):
        reg.promote(v2)
    assert reg.production()["version"] == v1
