"""Ray Tune Bayesian search whose trials are distributed Ray Train runs (XGBoost or the DNN).

In Ray 2.60 (Train V2) a Trainer is not a Tune trainable: each trial is a small function trainable
that builds and fits a Trainer; ``TuneReportCallback`` carries the workers' metrics back to Tune.
The trial itself needs almost no CPU (it only waits), so it asks for a small share and the
Trainer's workers get the real resources.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.bayesopt import BayesOptSearch

from mbta_ray import evaluate, plots, runtime, search_space, versioning
from mbta_ray.config import DATA_CPUS, TrialResources, TuneSettings
from mbta_ray.defaults import VALID_METRIC as METRIC
from mbta_ray.encoding import FeatureEncoder
from mbta_ray.errors import ConfigError, MbtaRayError, MissingFileError
from mbta_ray.models import bundle, dnn, xgboost_model
from mbta_ray.models.data import load_split, load_split_pandas
from mbta_ray.registry import check_name
from mbta_ray.runtime import ensure_ray
from mbta_ray.schema import SPLITS, TARGET

logger = logging.getLogger(__name__)
FAMILIES = {"xgboost": xgboost_model, "dnn": dnn}


class TuneError(MbtaRayError, RuntimeError):
    """A search ended without a usable model (no trial finished, no checkpoint on disk)."""


CHECKPOINT_PATH = "checkpoint_path"  # what TuneReportCallback adds to a report with a checkpoint


def _trial(
    config: dict, *, family: str, spec: dict, encoder: dict, datasets: dict, resources: TrialResources, storage: str
) -> None:
    """One Tune trial: decode the searcher's point, build the Trainer, fit it."""
    params = search_space.decode(config, spec)
    module = FAMILIES[family]
    run_config = ray.train.RunConfig(
        name=f"trial-{tune.get_context().get_trial_id()}",
        storage_path=storage,
        callbacks=[TuneReportCallback()],
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order="min"
        ),
    )
    trainer = module.make_trainer(
        params, FeatureEncoder(**encoder), datasets, resources.worker_resources(family), run_config
    )
    trainer.fit()


def _trainable(settings: TuneSettings, spec: dict, encoder: FeatureEncoder, datasets: dict):
    """The trial function with its data bound and its small CPU share declared."""
    return tune.with_resources(
        tune.with_parameters(
            _trial,
            family=settings.family,
            spec=spec,
            encoder=encoder.to_dict(),
            datasets=FAMILIES[settings.family].prepare(datasets, encoder),  # once for every trial
            resources=settings.resources,
            # Train runs live inside the experiment folder, one per trial.
            storage=os.path.join(os.path.abspath(settings.storage), settings.name, "train_runs"),
        ),
        settings.resources.trial_request(),
    )


@dataclass(frozen=True)
class TuneProgress:
    """Where a search stands, for a progress display."""

    family: str
    done: int
    total: int
    best: float | None  # lowest valid MAE reported so far (s)
    elapsed_s: float
    errors: int = 0


class _SilentReporter(tune.ProgressReporter):
    """Tune's console reporter, silenced: mbta_ray shows its own progress (``TuneProgress``)."""

    def should_report(self, trials: list, done: bool = False) -> bool:
        return False

    def report(self, trials: list, done: bool, *sys_info: dict) -> None:
        return None


def _no_report(progress: TuneProgress) -> None:
    """The report of a progress callback that was pickled (see ``_ProgressCallback.__getstate__``)."""


class _ProgressCallback(tune.Callback):
    """Tune callback (runs on the driver) that reports trials done and the best valid MAE so far."""

    def __init__(self, family: str, total: int, report: Callable[[TuneProgress], None]) -> None:
        self.family, self.total, self.report = family, total, report
        self.done = self.errors = 0
        self.best: float | None = None
        self.t0 = time.monotonic()

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state; the display (a live terminal bar)
        # does not pickle and has no meaning in a restored experiment.
        return {**self.__dict__, "report": _no_report}

    def _emit(self) -> None:
        self.report(
            TuneProgress(self.family, self.done, self.total, self.best, time.monotonic() - self.t0, self.errors)
        )

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(METRIC)
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best):
            self.best = float(value)
            self._emit()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self._emit()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self.errors += 1
        self._emit()


def build_tuner(
    settings: TuneSettings,
    datasets: dict[str, ray.data.Dataset],
    encoder: FeatureEncoder,
    progress: Callable[[TuneProgress], None] | None = None,
) -> tune.Tuner:
    if settings.family not in FAMILIES:
        raise ConfigError(f"--model must be one of {sorted(FAMILIES)}, got {settings.family!r}")
    spec = search_space.family_spec(settings.space_file, settings.family)
    storage = os.path.abspath(settings.storage)
    trainable = _trainable(settings, spec, encoder, datasets)
    searcher = ConcurrencyLimiter(
        BayesOptSearch(
            metric=METRIC, mode="min", random_state=settings.seed, random_search_steps=settings.random_steps
        ),
        max_concurrent=settings.max_concurrent,
    )
    scheduler = None
    if settings.family == "dnn" and settings.early_stopping:  # stop poor DNN trials early
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=int(spec.get("fixed", {}).get("epochs", 8)), grace_period=1, reduction_factor=2
        )
    return tune.Tuner(
        trainable,
        param_space=search_space.param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples, metric=METRIC, mode="min"
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=storage,
            callbacks=_callbacks(settings, progress),
            # Tune's own trial tables and config boxes: silent while Ray's output goes to a log file
            # (runtime.ray_logs_to selects Tune's classic output, which honours both).
            verbose=0 if runtime.quiet() else None,
            progress_reporter=_SilentReporter() if runtime.quiet() else None,
        ),
    )


def _callbacks(settings: TuneSettings, progress: Callable[[TuneProgress], None] | None = None) -> list:
    callbacks: list = [_ProgressCallback(settings.family, settings.num_samples, progress)] if progress else []
    if not settings.wandb:
        return callbacks
    # Imported only when used: W&B's integration pulls in wandb itself (~1 s).
    from ray.air.integrations.wandb import WandbLoggerCallback

    # Offline unless a key is configured: runs are kept locally and can be synced later.
    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return [*callbacks, WandbLoggerCallback(project="mbta_ray", group=settings.family, mode=mode)]


def restore(
    path: str, settings: TuneSettings, datasets: dict[str, ray.data.Dataset], encoder: FeatureEncoder
) -> tune.Tuner:
    """Continue an interrupted search (finished trials are not run again)."""
    spec = search_space.family_spec(settings.space_file, settings.family)
    trainable = _trainable(settings, spec, encoder, datasets)
    return tune.Tuner.restore(str(Path(path).resolve()), trainable=trainable, resume_errored=True)


def best_checkpoint_dir(result: tune.ResultGrid) -> tuple[str, dict, tune.Result]:
    """The best checkpoint of the search: trials ranked by their best report (scope "all": a DNN
    trial's last epoch need not be its best), then that trial's best report that carries a
    checkpoint still on disk (Train keeps the best by valid MAE). Returns its folder, that report's
    metrics and the trial's result."""
    best = result.get_best_result(metric=METRIC, mode="min", scope="all")
    df = best.metrics_dataframe
    if df is None or CHECKPOINT_PATH not in df:
        raise TuneError(f"best trial {best.path} reported no checkpoint")
    rows = df[df[CHECKPOINT_PATH].notna() & df[METRIC].notna()]
    rows = rows[[os.path.isdir(p) for p in rows[CHECKPOINT_PATH]]]
    if rows.empty:
        raise TuneError(f"best trial {best.path}: none of its checkpoints is on disk")
    row = rows.loc[rows[METRIC].idxmin()]
    return str(row[CHECKPOINT_PATH]), {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}, best


# --- the whole search: resources, data, search, summary, best model ---------------------------------


def run_search(
    settings: TuneSettings,
    root: str | Path,
    dataset: str,
    resume: str | None = None,
    progress: Callable[[TuneProgress], None] | None = None,
) -> dict:
    """Tune one family on a dataset version, then package and evaluate the best model on test.

    ``progress`` is called as trials finish (not when resuming: Tune restores its own callbacks).
    Writes under ``<storage>/<name>/``: Tune's own state (for --resume), encoder.json,
    results.csv/json (every trial), best/ (the model bundle + eval.json) and PNG plots.
    """
    ds_name, ds_version = _usable_dataset(root, dataset)
    ensure_ray()
    settings.resources.check_gpus(ray.cluster_resources().get("GPU", 0.0))
    settings = resolve_resources(settings, ray.cluster_resources().get("CPU", 0.0))
    settings, exp_dir = _experiment(settings, ds_version, resume)
    datasets = {s: load_split(root, ds_version, s, ds_name) for s in ("train", "valid")}
    encoder = _encoder(exp_dir, datasets["train"], resume=bool(resume))
    tuner = (
        restore(str(exp_dir), settings, datasets, encoder)
        if resume
        else build_tuner(settings, datasets, encoder, progress)
    )
    grid = tuner.fit()
    trials, errors = summarize(grid, exp_dir)
    model_dir, best_metrics, params = package_best(grid, settings, encoder, root, ds_name, ds_version, exp_dir)
    report = evaluate_bundle(model_dir, settings.family, root, ds_name, ds_version, trials, exp_dir)
    return {
        "experiment": str(exp_dir),
        "model_dir": str(model_dir),
        "trials": len(trials),
        "errors": errors,
        "best_params": params,
        "best_valid_mae": best_metrics.get(METRIC),
        "report": report,
        "dataset": ds_version,
        "family": settings.family,
    }


def _usable_dataset(root: str | Path, dataset: str) -> tuple[str, str]:
    """(name, version) of a dataset with examples in every split."""
    ds_name, ds_version = versioning.resolve(root, dataset)
    counts = versioning.load_manifest(root, ds_name, ds_version)["counts"].get("examples_by_split") or {}
    empty = [s for s in SPLITS if not counts.get(s)]  # a manifest without the counts has no usable split
    if empty:
        raise ConfigError(
            f"dataset {ds_name}/{ds_version} has no examples in {empty}: "
            "ingest more data (each source needs several trips for every split)"
        )
    return ds_name, ds_version


def resolve_resources(settings: TuneSettings, cluster_cpus: float) -> TuneSettings:
    """Settings with the trial resources fitted to the cluster and ``max_concurrent`` lowered to
    what fits (a new object; the caller's settings are not changed)."""
    resources, concurrent = settings.resources.fit(cluster_cpus, settings.max_concurrent)
    if concurrent < settings.max_concurrent:
        logger.warning(
            "--max-concurrent %d lowered to %d: %g CPUs fit %d trials of %g CPUs each and keep %g free for Ray Data",
            settings.max_concurrent,
            concurrent,
            cluster_cpus,
            concurrent,
            resources.per_trial_cpus(),
            DATA_CPUS,
        )
    return replace(settings, resources=resources, max_concurrent=concurrent)


def _experiment(settings: TuneSettings, ds_version: str, resume: str | None) -> tuple[TuneSettings, Path]:
    """Settings naming the experiment folder (the one to resume, or a new one) and that folder."""
    if resume:
        exp_dir = Path(resume).resolve()
        if not exp_dir.is_dir():
            raise MissingFileError(f"{exp_dir}: no such experiment to resume")
        if not tune.Tuner.can_restore(str(exp_dir)):  # before anything is written into it
            raise MissingFileError(f"{exp_dir}: not a Tune experiment to resume (give the folder `tune` printed)")
        settings = replace(settings, name=exp_dir.name, storage=str(exp_dir.parent))
    else:
        if settings.name is not None:  # one folder under the experiments root, never a path out of it
            check_name(settings.name, "experiment name (--name)")
        name = settings.name or f"{settings.family}-{ds_version[:8]}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        settings = replace(settings, name=name)
        exp_dir = Path(settings.storage).resolve() / name
    exp_dir.mkdir(parents=True, exist_ok=True)
    return settings, exp_dir


def _encoder(exp_dir: Path, train: ray.data.Dataset, resume: bool) -> FeatureEncoder:
    """The experiment's encoder: the saved one when resuming (trials must agree), else fitted on train."""
    path = exp_dir / bundle.ENCODER_FILE
    encoder = FeatureEncoder.load(path) if resume and path.is_file() else FeatureEncoder.fit(train)
    encoder.save(path)
    return encoder


def summarize(grid: tune.ResultGrid, exp_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every trial's last report (results.csv/json, in start order) and the trials' errors; raises
    ``TuneError`` when no trial reported the metric."""
    trials = grid.get_dataframe(filter_metric=METRIC, filter_mode="min")
    if "timestamp" in trials:
        trials = trials.sort_values("timestamp")
    trials.to_csv(exp_dir / "results.csv", index=False)
    (exp_dir / "results.json").write_text(trials.to_json(orient="records", indent=1, default_handler=str))
    errors = [str(r.error) for r in grid if r.error]
    if trials.empty or METRIC not in trials:
        first = errors[0].strip().splitlines()[-1] if errors else "none reported"
        raise TuneError(
            f"no trial finished in {exp_dir}: {len(errors)} trial(s) failed, the last line of the first "
            f"error: {first} (every trial's error is in its folder's error.txt)"
        )
    return trials, errors


def package_best(
    grid: tune.ResultGrid,
    settings: TuneSettings,
    encoder: FeatureEncoder,
    root: str | Path,
    ds_name: str,
    ds_version: str,
    exp_dir: Path,
) -> tuple[Path, dict, dict]:
    """The search's best checkpoint as a model bundle in ``<experiment>/best``; returns the bundle
    folder, the best report's metrics and the decoded hyperparameters."""
    best_ckpt, best_metrics, best = best_checkpoint_dir(grid)
    spec = search_space.family_spec(settings.space_file, settings.family)
    params = search_space.decode(dict(best.config), spec)
    ds_dir = versioning.version_dir(root, ds_name, ds_version)
    model_dir = bundle.write_bundle(
        exp_dir / "best",
        family=settings.family,
        model_dir=best_ckpt,
        encoder=encoder,
        # What the features need at serving time travels with the model.
        segment_medians=ds_dir / bundle.SEGMENT_MEDIANS_FILE,
        metadata={
            "params": params,
            "dataset": {"name": ds_name, "version": ds_version},
            "valid_mae": best_metrics.get(METRIC),
            "experiment": str(exp_dir),
            "gtfs_stops": versioning.load_manifest(root, ds_name, ds_version).get("gtfs_stops"),
        },
    )
    return model_dir, best_metrics, params


def evaluate_bundle(
    model_dir: Path, family: str, root: str | Path, ds_name: str, ds_version: str, trials: pd.DataFrame, exp_dir: Path
) -> dict:
    """Score the bundle on the test split next to the baselines (eval.json) and draw the plots."""
    test = load_split_pandas(root, ds_version, "test", ds_name)
    predictions = bundle.load_predictor(model_dir)(test)
    report = evaluate.report(test, {family: predictions, **evaluate.baseline_predictions(test)})
    bundle.write_evaluation(model_dir, {"split": "test", "dataset": ds_version, "report": report})
    plots.best_so_far(trials, METRIC, exp_dir / "best_so_far.png")
    plots.predicted_vs_actual(test[TARGET].to_numpy(), predictions, exp_dir / "predicted_vs_actual.png")
    plots.error_by_horizon(report, exp_dir / "error_by_horizon.png")
    return report
