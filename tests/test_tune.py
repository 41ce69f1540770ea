"""Ray Tune + Ray Train on tiny data (real local Ray): both model families end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mbta_ray import search_space
from mbta_ray.etl import EtlConfig, ingest
from mbta_ray.models import load_predictor
from mbta_ray.synth import write_synthetic
from mbta_ray.tune import TrialResources, TuneSettings, run_search

TINY_SPACE = {
    "xgboost": {
        "search": {"eta": {"log_uniform": [0.05, 0.3]}, "max_depth": {"int": [3, 6]}},
        "fixed": {"num_boost_round": 15, "early_stopping_rounds": 5, "increasing": ["path_travel_s"]},
    },
    "dnn": {
        "search": {"lr": {"log_uniform": [0.001, 0.01]}, "hidden_width": {"int": [16, 48]}},
        "fixed": {"epochs": 2, "batch_size": 512, "hidden_layers": 1},
    },
}


def test_decode_rounds_ints_and_undoes_log_scale():
    """BayesOpt proposes floats: ints are rounded, log10_ parameters exponentiated, fixed ones added."""
    spec = TINY_SPACE["xgboost"]
    space = search_space.param_space(spec)
    assert set(space) == {"log10_eta", "max_depth"}
    params = search_space.decode({"log10_eta": -1.0, "max_depth": 4.6}, spec)
    assert params == {
        "eta": pytest.approx(0.1),
        "max_depth": 5,
        "num_boost_round": 15,
        "early_stopping_rounds": 5,
        "increasing": ["path_travel_s"],
    }
    assert isinstance(params["max_depth"], int)


def test_bad_search_space_names_file_and_parameter(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text(yaml.safe_dump({"xgboost": {"search": {"eta": {"log_uniform": [0.0, 0.3]}}}}))
    with pytest.raises(search_space.SearchSpaceError, match=r"space.yaml: xgboost.search.eta: bad range"):
        search_space.load(bad)
    bad.write_text(yaml.safe_dump({"xgboost": {"fixed": {"increasing": ["to_stop_id"]}}}))
    with pytest.raises(search_space.SearchSpaceError, match=r"xgboost.fixed.increasing: expected a list of numeric"):
        search_space.load(bad)
    bad.write_text(yaml.safe_dump({"xgboost": {"fixed": {"external_memory": "yes"}}}))
    with pytest.raises(search_space.SearchSpaceError, match=r"xgboost.fixed.external_memory: expected true or false"):
        search_space.load(bad)
    bad.write_text(yaml.safe_dump({"dnn": {"fixed": {"external_memory": True}}}))
    with pytest.raises(search_space.SearchSpaceError, match=r"dnn.fixed.external_memory: .*only for xgboost"):
        search_space.load(bad)
    bad.write_text(yaml.safe_dump({"dnn": {"fixed": {"external_memory_dir": "/tmp"}}}))
    with pytest.raises(search_space.SearchSpaceError, match=r"dnn.fixed.external_memory_dir: .*only for xgboost"):
        search_space.load(bad)
    bad.write_text(yaml.safe_dump({"xgboost": {"fixed": {"external_memory_dir": " "}}}))
    with pytest.raises(search_space.SearchSpaceError, match=r"xgboost.fixed.external_memory_dir: expected a folder"):
        search_space.load(bad)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("xgboost:\n  search:\n    eta: {uniform: 5}\n", "xgboost.search.eta: expected uniform: [low, high], got 5"),
        ("xgboost:\n  search:\n    eta: {uniform: [1]}\n", "xgboost.search.eta: expected uniform: [low, high]"),
        ("xgboost:\n  search:\n    eta: {uniform: [1, 2, 3]}\n", "xgboost.search.eta: expected uniform: [low, high]"),
        ("xgboost:\n  search:\n    eta: {uniform: null}\n", "xgboost.search.eta: expected uniform: [low, high]"),
        ("xgboost:\n  search:\n    eta: {uniform: [a, 2]}\n", "xgboost.search.eta: bounds must be finite numbers"),
        ("xgboost:\n  search:\n    eta: {uniform: [a, b]}\n", "xgboost.search.eta: bounds must be finite numbers"),
        ("xgboost:\n  search:\n    eta: {uniform: [0, .inf]}\n", "xgboost.search.eta: bounds must be finite numbers"),
        ("xgboost:\n  search:\n    eta: {uniform: [0, true]}\n", "xgboost.search.eta: bounds must be finite numbers"),
        ("xgboost:\n  search:\n    eta: {log_uniform: [1e-3, 0.1]}\n", "write 1.0e-3"),
        ("xgboost:\n  search:\n    eta: {uniform: [0, " + "9" * 400 + "]}\n", "bounds must be finite numbers"),
        ("xgboost:\n  search:\n    eta: {uniform: [0, " + "9" * 5000 + "]}\n", "line 3, column 24: integer too"),
        ("xgboost:\n  search:\n    depth: {int: [1.5, 8]}\n", "xgboost.search.depth: int bounds must be integers"),
        ("xgboost:\n  search:\n    depth: {int: [8, 8]}\n", "xgboost.search.depth: bad range [8, 8]"),
        ("xgboost:\n  search: [eta]\n", "xgboost.search: expected a mapping"),
        ("xgboost:\n  search: eta\n", "xgboost.search: expected a mapping"),
        ("xgboost:\n  fixed: [1, 2]\n", "xgboost.fixed: expected a mapping"),
        ("xgboost:\n  fixed: hello\n", "xgboost.fixed: expected a mapping"),
        ("xgboost:\n  serch: {}\n", "xgboost: unknown section 'serch'"),
        ("xgboost:\n", "xgboost: expected a mapping {fixed: ..., search: ...}, got None"),
        ("- a\n- b\n", "expected a mapping of model family -> {fixed: ..., search: ...}, got list"),
        ("1: {search: {}}\n", "model family names must be text, got 1"),
        ("xgboost: {search: {}}\nxgboost: {fixed: {}}\n", "line 2, column 1: duplicate key 'xgboost'"),
        ("xgboost: {search: [\n", "not valid YAML at line 2, column 1"),
    ],
)
def test_a_malformed_search_space_is_one_line_naming_file_and_key(tmp_path, text, why):
    """Every mistake in the file is a one-line SearchSpaceError at load, never a TypeError then or in
    param_space later."""
    bad = tmp_path / "space.yaml"
    bad.write_text(text)
    with pytest.raises(search_space.SearchSpaceError) as info:
        search_space.load(bad)
    assert str(info.value).startswith(f"{bad}: ") and why in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("data", [b"xgboost:\n  fixed: {name: caf\xe9}\n", "xgboost: {}\n".encode("utf-16")])
def test_a_search_space_that_is_not_utf8_is_named(tmp_path, data):
    bad = tmp_path / "space.yaml"
    bad.write_bytes(data)
    with pytest.raises(search_space.SearchSpaceError, match=r"space.yaml: not UTF-8 text"):
        search_space.load(bad)


def test_the_packaged_search_space_loads_and_merge_keys_may_override(tmp_path):
    assert {"xgboost", "dnn"} <= set(search_space.load())
    space = tmp_path / "space.yaml"
    space.write_text("xgboost:\n  <<: {fixed: {epochs: 1}}\n  fixed: {epochs: 2}\n")
    assert search_space.load(space)["xgboost"]["fixed"] == {"epochs": 2}


def test_the_trees_never_lower_an_arrival_for_a_longer_recent_path():
    """With ``increasing: [path_travel_s]`` the trees' correction is non-decreasing in the path, even
    where the training rows reward pulling long paths back (here: travel is flat above 600 s)."""
    import numpy as np
    import xgboost as xgb

    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.errors import ConfigError
    from mbta_ray.models import xgboost_model
    from tests.test_registry import example_rows

    df = example_rows(2000, seed=1)
    rng = np.random.default_rng(1)
    df["path_travel_s"] = rng.uniform(100, 1200, len(df))
    df["travel_seconds"] = np.minimum(df["path_travel_s"], 600) + rng.normal(0, 10, len(df))
    enc = FeatureEncoder.fit(df)
    dtrain = xgboost_model.dmatrix(df, enc, residual=True)
    params = {"objective": "reg:absoluteerror", "base_score": 0.0, "max_depth": 4, "nthread": 1}

    def correction(constraints: str | None) -> np.ndarray:
        extra = {"monotone_constraints": constraints} if constraints else {}
        booster = xgb.train({**params, **extra}, dtrain, num_boost_round=30)
        grid = df.iloc[[0] * 50].copy()
        grid["path_travel_s"] = np.linspace(100, 1200, 50)
        return booster.predict(xgboost_model.dmatrix(grid, enc, residual=False, label=False))

    free = correction(None)
    assert np.diff(free).min() < -1  # unconstrained, it learns to pull the long paths back
    tied = correction(xgboost_model.monotone_constraints(enc, ["path_travel_s"]))
    assert np.diff(tied).min() >= -1e-6
    with pytest.raises(ConfigError, match="increasing: nope not among the model's inputs"):
        xgboost_model.monotone_constraints(enc, ["nope"])


def test_gpu_request_is_built_when_gpus_are_declared():
    """Fractional GPUs go to the Train workers (not the trial); no GPU is needed to build this."""
    res = TrialResources(num_workers=2, cpus_per_worker=1.0, gpus_per_worker=0.25, trial_cpu=0.1)
    for family in ("xgboost", "dnn"):
        sc = res.worker_resources(family).scaling_config()
        assert sc.use_gpu and sc.num_workers == 2
        assert sc.resources_per_worker == {"CPU": 1.0, "GPU": 0.25}
    assert res.trial_request() == {"cpu": 0.1}
    cpu_only = TrialResources().worker_resources("xgboost").scaling_config()
    assert not cpu_only.use_gpu and cpu_only.resources_per_worker == {"CPU": 1.0}


def test_trial_resources_keep_a_cpu_free_for_ray_data():
    """Auto CPU share fits the cluster; too big a request is refused naming the options; concurrency
    is lowered to what fits (a trial whose data tasks cannot start would wait forever)."""
    res, n = TrialResources().fit(cluster_cpus=2, max_concurrent=1)
    assert res.cpus_per_worker == pytest.approx(0.9) and n == 1
    assert res.per_trial_cpus() <= 2 - 1
    res, n = TrialResources().fit(cluster_cpus=9, max_concurrent=4)
    assert res.cpus_per_worker == pytest.approx(1.9) and n == 4
    with pytest.raises(ValueError, match=r"needs 1.1 CPUs .*--cpus-per-worker 1\) .*of which 1 must stay free"):
        TrialResources(cpus_per_worker=1.0).fit(cluster_cpus=2, max_concurrent=1)
    res, n = TrialResources(num_workers=2, cpus_per_worker=1.0).fit(cluster_cpus=6, max_concurrent=4)
    assert n == 2  # 5 usable CPUs / 2.1 per trial


@pytest.fixture(scope="module")
def tiny_dataset(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    out = write_synthetic(root / "synth", 3000, seed=3, files=1)
    result = ingest([str(p) for p in out.paths], root=root, config=EtlConfig(k=3))
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    return root, result.version, str(space)


@pytest.mark.parametrize("family", ["xgboost", "dnn"])
def test_tune_end_to_end(tiny_dataset, family):
    """Two Bayesian trials of distributed training, best model packaged and evaluated on test."""
    root, version, space = tiny_dataset
    settings = TuneSettings(
        family=family,
        num_samples=2,
        max_concurrent=1,
        random_steps=1,
        storage=str(root / "experiments"),
        space_file=space,
        resources=TrialResources(num_workers=1, cpus_per_worker=0.5, trial_cpu=0.1),
        wandb=family == "dnn",
    )  # once is enough: W&B offline, no key
    out = run_search(settings, root, version)
    assert out["trials"] == 2 and not out["errors"]
    exp = Path(out["experiment"])
    if settings.wandb:
        assert len(list(exp.glob("*/wandb/offline-run-*"))) == 2
    for name in (
        "results.csv",
        "results.json",
        "encoder.json",
        "best_so_far.png",
        "predicted_vs_actual.png",
        "error_by_horizon.png",
    ):
        assert (exp / name).is_file(), name
    model_dir = Path(out["model_dir"])
    report = json.loads((model_dir / "eval.json").read_text())["report"]
    assert {family, "schedule", "persistence", "historical_median"} <= set(report)
    assert report[family]["overall"]["n"] > 0 and report[family]["overall"]["mae"] > 0
    assert set(report[family]["by_horizon"]) <= {"0-3", "3-6", "6-12", "12-30", "30+"}
    # The packaged model loads from safe formats and predicts like the evaluation did.
    from mbta_ray.models.data import load_split_pandas

    test = load_split_pandas(root, version, "test")
    pred = load_predictor(model_dir)(test)
    assert len(pred) == len(test)
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["family"] == family and meta["dataset"]["version"] == version
    # The packaged checkpoint is the search's best report, not the best trial's last one.
    import pandas as pd

    assert meta["valid_mae"] <= pd.read_csv(exp / "results.csv")["valid-mae"].min() + 1e-9
    if family == "xgboost":
        assert (model_dir / "model.ubj").is_file() and isinstance(meta["params"]["max_depth"], int)
    else:
        assert (model_dir / "model.pt").is_file() and (model_dir / "architecture.json").is_file()


def _finished_trials(exp: Path) -> set[str]:
    """Trial ids that Tune's saved experiment state lists as TERMINATED."""
    done = set()
    for state in exp.glob("experiment_state-*.json"):
        try:
            trials = [json.loads(entry[0]) for entry in json.loads(state.read_text())["trial_data"]]
        except (OSError, ValueError, KeyError):
            continue  # being rewritten right now
        done |= {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}
    return done


def _wait_for_quiet_cluster(within_s: float, quiet_s: float = 10.0) -> None:
    """Block until every CPU is free and no placement group is live for ``quiet_s`` on end.

    A killed driver's placement groups go asynchronously: Ray removes them once it marks the job
    dead, and one the driver had asked for just before it died can still be created seconds later
    (seen in CI: a 0.5-CPU worker group reserved 7 s after the kill and never used, which left Ray
    Data 0.9 of the 1 CPU it needs, and the resumed search waited forever). Whatever is still live
    after ``within_s`` is removed here, by id, so the test checks resuming, not Ray's cleanup."""
    import time

    import ray
    from ray import PlacementGroupID
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    def live() -> list[str]:
        return [pg_id for pg_id, pg in placement_group_table().items() if pg["state"] != "REMOVED"]

    def quiet() -> bool:
        total = ray.cluster_resources().get("CPU", 0.0)
        return not live() and ray.available_resources().get("CPU", 0.0) >= total - 1e-6

    deadline, since = time.time() + within_s, None
    while True:
        if quiet():
            since = since or time.time()
            if time.time() - since >= quiet_s:
                return
        else:
            since = None
        if time.time() > deadline:
            break
        time.sleep(0.5)
    for pg_id in live():
        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg_id)))
    deadline = time.time() + 30
    while not quiet():
        if time.time() > deadline:
            pytest.fail(f"the cluster is not idle {within_s} s after the kill: {ray.available_resources()}")
        time.sleep(0.5)


def test_resume_after_an_interrupted_search(tiny_dataset):
    """A `mbta-ray tune` process killed mid-search is continued with --resume: finished trials are
    not run again and the search reaches its sample count."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, version, space = tiny_dataset
    name = "resume-me"
    exe = str(Path(sys.executable).parent / "mbta-ray")
    cmd = [
        exe,
        "tune",
        "--model",
        "xgboost",
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--random-steps",
        "1",
        "--cpus-per-worker",
        "0.5",
        "--no-wandb",
        "--space",
        space,
        "--dataset",
        version,
        "--root",
        str(root),
        "--name",
        name,
    ]
    # The process joins the session's cluster, as a driver on a real cluster would: a second local
    # Ray instance on the machine confuses Ray Train's placement-group cleaner (see README), and
    # killing it leaves orphaned workers behind.
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    exp = root / "experiments" / name
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not _finished_trials(exp):
            assert proc.poll() is None, "the search ended before it could be interrupted"
            time.sleep(1)
        finished_before = _finished_trials(exp)
        assert finished_before, "no trial finished within 4 minutes"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; Ray ends its job and frees its trials
        proc.wait()
    assert len(finished_before) < 3
    # Ray frees the killed job's trial and worker group asynchronously (its placement group through
    # Ray Train's cleaner actor). Resuming before that competes with them for the 2 CPUs and can
    # wait for ever, so wait for a quiet cluster (``_wait_for_quiet_cluster``).
    _wait_for_quiet_cluster(within_s=120)
    results_before = {t: (next(exp.glob(f"*{t}*")) / "result.json").read_text() for t in finished_before}

    settings = TuneSettings(
        family="xgboost",
        num_samples=3,
        max_concurrent=1,
        random_steps=1,
        storage=str(root / "experiments"),
        space_file=space,
        resources=TrialResources(num_workers=1, cpus_per_worker=0.5, trial_cpu=0.1),
    )
    out = run_search(settings, root, version, resume=str(exp))
    assert out["trials"] == 3 and not out["errors"]
    for t, text in results_before.items():  # finished trials were not trained again
        assert (next(exp.glob(f"*{t}*")) / "result.json").read_text() == text


def test_a_dataset_with_an_empty_split_is_refused(tmp_path):
    """Tuning on a dataset without validation rows would rank trials on nothing: refuse, say why."""
    folder = tmp_path / "datasets" / "mbta" / "abc123"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "name": "mbta",
                "version": "abc123",
                "created_at": "2026-11-26",
                "counts": {"examples_by_split": {"train": 50, "valid": 0, "test": 7}},
            }
        )
    )
    settings = TuneSettings(family="xgboost", storage=str(tmp_path / "experiments"))
    with pytest.raises(ValueError, match=r"no examples in \['valid'\]"):
        run_search(settings, tmp_path, "abc")


def test_an_encoder_fitted_before_a_feature_existed_is_refused_by_name(tmp_path):
    """A model bundle from before a numeric feature was added (e.g. ``holiday``) cannot take the
    new inputs: loading its encoder says which features it lacks, instead of a KeyError later."""
    import pandas as pd

    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.errors import DataError
    from mbta_ray.schema import FEATURE_NAMES

    train = pd.DataFrame({c: [1.0, 2.0] for c in FEATURE_NAMES})
    for c in ("mode", "route_id", "from_stop_id", "to_stop_id"):
        train[c] = ["a", "b"]
    d = FeatureEncoder.fit(train).to_dict()
    del d["mean"]["holiday"], d["std"]["holiday"]
    (tmp_path / "encoder.json").write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"fitted without the features \['holiday'\]"):
        FeatureEncoder.load(tmp_path / "encoder.json")


def test_category_codes_do_not_depend_on_nulls_in_the_batch():
    """direction_id is int8 without nulls but float64 with one: both must map to the same code."""
    import numpy as np
    import pandas as pd

    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.schema import FEATURE_NAMES

    train = pd.DataFrame({c: [1.0, 2.0] for c in FEATURE_NAMES})
    train["direction_id"] = pd.Series([0, 1], dtype="int8")
    for c in ("mode", "route_id", "from_stop_id", "to_stop_id"):
        train[c] = ["a", "b"]
    enc = FeatureEncoder.fit(train)
    batch = train.copy()
    batch["direction_id"] = [1.0, np.nan]  # what a batch with a null looks like in pandas
    j = list(enc.vocab).index("direction_id")
    assert enc.codes(train)[:, j].tolist() == [1, 2]
    assert enc.codes(batch)[:, j].tolist() == [2, 0]


def test_standardized_numerics_are_clipped_and_old_encoders_are_not(tmp_path):
    """Outliers are clipped at 5 sd (a quantized student's activation range); an encoder saved
    without the setting keeps its old behaviour (no clipping) when loaded."""
    import json

    import numpy as np
    import pandas as pd

    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.schema import FEATURE_NAMES, NUMERIC_FEATURES

    train = pd.DataFrame({c: np.r_[np.zeros(99), 1.0] for c in FEATURE_NAMES})
    for c in ("mode", "route_id", "from_stop_id", "to_stop_id", "direction_id"):
        train[c] = "a"
    enc = FeatureEncoder.fit(train)
    z = enc.numeric(train)[:, list(NUMERIC_FEATURES).index("delay_u")]
    assert z.max() == pytest.approx(5.0) and z.min() > -1  # the outlier is 9.9 sd out
    enc.save(tmp_path / "enc.json")
    assert FeatureEncoder.load(tmp_path / "enc.json").clip_sd == 5.0
    old = json.loads((tmp_path / "enc.json").read_text())
    del old["clip_sd"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    z_old = FeatureEncoder.load(tmp_path / "old.json").numeric(train)[:, list(NUMERIC_FEATURES).index("delay_u")]
    assert z_old.max() == pytest.approx(9.95, abs=0.01)


def test_workers_stream_the_same_rows_ray_data_encoded(tiny_dataset):
    """Issue 16: a worker's QuantileDMatrix, streamed from Ray Data's encoded batches, holds the
    rows, labels and prior margins of the pandas DMatrix built from the same split; the DNN's
    ``iter_torch_batches`` give the tensors ``encode_inputs`` makes; an empty shard is a 0-row
    matrix, not an error."""
    import numpy as np
    import ray
    import torch
    import xgboost as xgb

    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import dnn, xgboost_model
    from mbta_ray.models.data import TRAIN_COLUMNS, load_split

    root, version, _ = tiny_dataset
    ds = load_split(root, version, "valid")
    df = ds.to_pandas()
    enc = FeatureEncoder.fit(load_split(root, version, "train").to_pandas())

    stream = xgboost_model.encoded(ds, enc, residual=True)
    streamed = xgb.QuantileDMatrix(
        xgboost_model.ShardIter(stream, enc.tree_feature_names, batch_size=97), missing=np.nan
    )
    plain = xgboost_model.dmatrix(df, enc, residual=True)
    assert streamed.num_row() == plain.num_row() == len(df) and streamed.num_col() == plain.num_col()
    assert streamed.feature_names == enc.tree_feature_names
    # Ray Data may reorder blocks: compare as multisets of (label, margin).
    order = np.lexsort((plain.get_base_margin(), plain.get_label()))
    again = np.lexsort((streamed.get_base_margin(), streamed.get_label()))
    np.testing.assert_allclose(streamed.get_label()[again], plain.get_label()[order])
    np.testing.assert_allclose(streamed.get_base_margin()[again], plain.get_base_margin()[order], rtol=1e-6)

    empty = ray.data.from_pandas(df.iloc[:0][TRAIN_COLUMNS])
    nothing = xgb.QuantileDMatrix(
        xgboost_model.ShardIter(xgboost_model.encoded(empty, enc, residual=True), enc.tree_feature_names),
        missing=np.nan,
    )
    assert nothing.num_row() == 0 and nothing.num_col() == len(enc.tree_feature_names)

    one = ray.data.from_pandas(df.iloc[:300])
    got = next(iter(dnn.encoded(one, enc).iter_torch_batches(batch_size=300)))
    cats, nums, prior = dnn.encode_inputs(df.iloc[:300], enc)
    assert got["cats"].dtype == torch.int64 and got["nums"].dtype == torch.float32
    assert torch.equal(got["cats"], cats) and torch.equal(got["nums"], nums) and torch.equal(got["prior"], prior)
    assert torch.equal(got["y"], torch.from_numpy(df["travel_seconds"].iloc[:300].to_numpy(dtype="float32")))
    # A used encoder (its lookup caches filled) still travels to the workers as its fitted fields.
    assert FeatureEncoder(**enc.to_dict()).vocab == enc.vocab and "_indexes" in enc.__dict__


def test_external_memory_pages_the_quantized_shard_to_disk_and_trains_the_same_model(tiny_dataset, tmp_path):
    """Issue 16: ``external_memory: true`` builds the worker's matrix as XGBoost's external-memory
    pages in a folder on disk (the quantized matrix no longer in the worker's memory); the pages
    hold the same rows and the trees are the in-memory ones; the worker's page folder is removed
    when training ends, and so is one a killed worker left."""
    import numpy as np
    import ray.train
    import xgboost as xgb

    from mbta_ray.config import WorkerResources
    from mbta_ray.defaults import VALID_METRIC
    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import xgboost_model
    from mbta_ray.models.data import load_split

    root, version, _ = tiny_dataset
    train = load_split(root, version, "train")
    enc = FeatureEncoder.fit(train.to_pandas())
    stream = xgboost_model.encoded(train, enc, residual=True)
    paged = xgboost_model._matrix(stream, enc, cache=tmp_path / "pages")
    in_memory = xgboost_model._matrix(stream, enc)
    assert isinstance(paged, xgb.ExtMemQuantileDMatrix) and not isinstance(in_memory, xgb.ExtMemQuantileDMatrix)
    assert any((tmp_path / "pages").iterdir())  # XGBoost wrote its pages there
    assert paged.num_row() == in_memory.num_row() == train.count()
    params = {"tree_method": "hist", "max_depth": 4, "nthread": 1, "base_score": 0.0, "seed": 0}
    preds = [xgb.train(params, m, 5).predict(in_memory) for m in (paged, in_memory)]
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-4, atol=1e-2)

    parent = tmp_path / "workers"
    stale = parent / f"{xgboost_model.PAGES_PREFIX}999999999_x"  # a worker killed outright left it
    stale.mkdir(parents=True)
    datasets = {s: load_split(root, version, s) for s in ("train", "valid")}
    metrics = {}
    for external in (True, False):
        config = {"num_boost_round": 8, "max_depth": 4, "external_memory": external, "report_every": 100}
        config |= {"subsample": 1.0, "colsample_bytree": 1.0}  # row sampling draws differently per page
        config["external_memory_dir"] = str(parent)
        run = ray.train.RunConfig(name=f"extmem-{external}", storage_path=str(tmp_path / "ray"))
        result = xgboost_model.make_trainer(config, enc, datasets, WorkerResources(1, 1.0), run).fit()
        metrics[external] = result.metrics
    assert metrics[True]["train_rows"] == metrics[False]["train_rows"] == train.count()
    assert metrics[True]["page_mib"] > 0 and "page_mib" not in metrics[False]  # it paged to disk
    assert metrics[True][VALID_METRIC] == pytest.approx(metrics[False][VALID_METRIC], rel=1e-3)
    assert list(parent.iterdir()) == []  # its own pages removed, and the dead worker's too
