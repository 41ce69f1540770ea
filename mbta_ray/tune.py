"""Ray Tune Bayesian search whose trials are distributed Ray Train runs (XGBoost or the DNN).

In Ray 2.60 (Train V2) a Trainer is not a Tune trainable: each trial is a small function trainable
that builds and fits a Trainer; ``TuneReportCallback`` carries the workers' metrics back to Tune.
The trial itself needs almost no CPU (it only waits), so it asks for a small share and the
Trainer's workers get the real resources.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.bayesopt import BayesOptSearch

from mbta_ray import search_space
from mbta_ray.encoding import FeatureEncoder
from mbta_ray.models import dnn, xgboost_model
from mbta_ray.models.resources import WorkerResources

logger = logging.getLogger(__name__)
FAMILIES = {"xgboost": xgboost_model, "dnn": dnn}
METRIC = "valid-mae"
CHECKPOINT_PATH = "checkpoint_path"  # what TuneReportCallback adds to a report with a checkpoint


#: CPUs left free while trials run: Ray Data's read tasks (1 CPU each) feed the Train workers from
#: outside their placement groups. With no CPU free, every trial waits for data forever.
DATA_CPUS = 1.0


class ResourceError(ValueError):
    """Trials asked for more than the cluster can give while still feeding them data."""


@dataclass(frozen=True)
class TrialResources:
    """Per-trial resources: the trial's own small CPU share and its Trainer's workers.

    ``cpus_per_worker=None`` means "fit the cluster" (see ``fit``).
    """

    num_workers: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0.0  # fractional (e.g. 0.25) lets several trials share a GPU
    trial_cpu: float = 0.1

    def worker_resources(self, family: str) -> WorkerResources:
        """The Train workers' resources (the same shape for every family today)."""
        return WorkerResources(self.num_workers, self.cpus_per_worker or 1.0, self.gpus_per_worker)

    def trial_request(self) -> dict:
        return {"cpu": self.trial_cpu}

    def per_trial_cpus(self) -> float:
        return self.trial_cpu + self.num_workers * (self.cpus_per_worker or 1.0)

    def fit(self, cluster_cpus: float, max_concurrent: int) -> tuple["TrialResources", int]:
        """Resolve an automatic CPU share and check that trials leave ``DATA_CPUS`` free.

        Auto: the CPUs not kept for data, split over ``max_concurrent`` trials' workers (in steps of
        0.05, at least 0.25). Returns the resources and how many trials can run at once; raises
        ``ResourceError`` naming the options when not even one trial fits.
        """
        usable = cluster_cpus - DATA_CPUS
        res = self
        if self.cpus_per_worker is None:
            share = (usable / max(1, max_concurrent) - self.trial_cpu) / self.num_workers
            res = replace(self, cpus_per_worker=max(0.25, math.floor(share * 20) / 20))
        per_trial = res.per_trial_cpus()
        fits = int((usable + 1e-9) // per_trial)
        if fits < 1:
            raise ResourceError(
                f"one trial needs {per_trial:g} CPUs (--trial-cpu {res.trial_cpu:g} + --workers "
                f"{res.num_workers} x --cpus-per-worker {res.cpus_per_worker:g}) and the cluster has "
                f"{cluster_cpus:g}, of which {DATA_CPUS:g} must stay free for Ray Data to feed the "
                f"workers: lower --cpus-per-worker or --workers (or leave --cpus-per-worker unset)")
        return res, min(max_concurrent, fits)


@dataclass
class TuneSettings:
    family: str
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    random_steps: int = 3  # BayesOpt explores randomly this many trials before fitting its GP
    resources: TrialResources = field(default_factory=TrialResources)
    storage: str = "artifacts/experiments"
    name: str | None = None
    space_file: str | None = None
    wandb: bool = False
    #: ASHA early stopping for DNN epochs. Stopping a trial needs Ray's State API (the dashboard)
    #: to free its Train workers: turn it off on clusters started without the dashboard.
    early_stopping: bool = True


def _trial(config: dict, *, family: str, spec: dict, encoder: dict, datasets: dict,
           resources: TrialResources, storage: str) -> None:
    """One Tune trial: decode the searcher's point, build the Trainer, fit it."""
    params = search_space.decode(config, spec)
    module = FAMILIES[family]
    run_config = ray.train.RunConfig(
        name=f"trial-{tune.get_context().get_trial_id()}", storage_path=storage,
        callbacks=[TuneReportCallback()],
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                     checkpoint_score_order="min"),
    )
    trainer = module.make_trainer(params, FeatureEncoder(**encoder), datasets,
                                  resources.worker_resources(family), run_config)
    trainer.fit()


def _trainable(settings: TuneSettings, spec: dict, encoder: FeatureEncoder, datasets: dict):
    """The trial function with its data bound and its small CPU share declared."""
    return tune.with_resources(
        tune.with_parameters(_trial, family=settings.family, spec=spec, encoder=encoder.__dict__,
                             datasets=datasets, resources=settings.resources,
                             # Train runs live inside the experiment folder, one per trial.
                             storage=os.path.join(os.path.abspath(settings.storage), settings.name, "train_runs")),
        settings.resources.trial_request(),
    )


def build_tuner(settings: TuneSettings, datasets: dict[str, ray.data.Dataset], encoder: FeatureEncoder) -> tune.Tuner:
    if settings.family not in FAMILIES:
        raise ValueError(f"--model must be one of {sorted(FAMILIES)}, got {settings.family!r}")
    spec = search_space.load(settings.space_file)[settings.family]
    storage = os.path.abspath(settings.storage)
    trainable = _trainable(settings, spec, encoder, datasets)
    searcher = ConcurrencyLimiter(
        BayesOptSearch(metric=METRIC, mode="min", random_state=settings.seed,
                       random_search_steps=settings.random_steps),
        max_concurrent=settings.max_concurrent,
    )
    scheduler = None
    if settings.family == "dnn" and settings.early_stopping:  # stop poor DNN trials early
        scheduler = ASHAScheduler(time_attr="epoch", max_t=int(spec.get("fixed", {}).get("epochs", 8)),
                                  grace_period=1, reduction_factor=2)
    return tune.Tuner(
        trainable,
        param_space=search_space.param_space(spec),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples,
                                    metric=METRIC, mode="min"),
        run_config=tune.RunConfig(name=settings.name, storage_path=storage,
                                  callbacks=_callbacks(settings)),
    )


def _callbacks(settings: TuneSettings) -> list:
    if not settings.wandb:
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    # Offline unless a key is configured: runs are kept locally and can be synced later.
    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return [WandbLoggerCallback(project="mbta_ray", group=settings.family, mode=mode)]


def restore(path: str, settings: TuneSettings, datasets: dict[str, ray.data.Dataset],
            encoder: FeatureEncoder) -> tune.Tuner:
    """Continue an interrupted search (finished trials are not run again)."""
    spec = search_space.load(settings.space_file)[settings.family]
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
        raise RuntimeError(f"best trial {best.path} reported no checkpoint")
    rows = df[df[CHECKPOINT_PATH].notna() & df[METRIC].notna()]
    rows = rows[[os.path.isdir(p) for p in rows[CHECKPOINT_PATH]]]
    if rows.empty:
        raise RuntimeError(f"best trial {best.path}: none of its checkpoints is on disk")
    row = rows.loc[rows[METRIC].idxmin()]
    return str(row[CHECKPOINT_PATH]), {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}, best


# --- the whole search: data, tuner, results, best model, evaluation --------------------------------


def run_search(settings: TuneSettings, root: str | Path, dataset: str, resume: str | None = None) -> dict:
    """Tune one family on a dataset version, then package and evaluate the best model on test.

    Writes under ``<storage>/<name>/``: Tune's own state (for --resume), encoder.json,
    results.csv/json (every trial), best/ (the packaged model + eval.json) and PNG plots.
    """
    import datetime as dt
    import json
    import shutil

    from mbta_ray import evaluate, plots, versioning
    from mbta_ray.etl import ensure_ray
    from mbta_ray.models import load_predictor, package
    from mbta_ray.models.data import load_split, load_split_pandas

    ds_name, ds_version = versioning.resolve(root, dataset)
    counts = versioning.load_manifest(root, ds_name, ds_version)["counts"]["examples_by_split"]
    empty = [s for s in ("train", "valid", "test") if not counts.get(s)]
    if empty:
        raise ValueError(f"dataset {ds_name}/{ds_version} has no examples in {empty}: "
                         "ingest more data (each source needs several trips for every split)")
    ensure_ray()
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    settings.resources, concurrent = settings.resources.fit(cluster_cpus, settings.max_concurrent)
    if concurrent < settings.max_concurrent:
        logger.warning("--max-concurrent %d lowered to %d: %g CPUs fit %d trials of %g CPUs each and keep "
                       "%g free for Ray Data", settings.max_concurrent, concurrent, cluster_cpus, concurrent,
                       settings.resources.per_trial_cpus(), DATA_CPUS)
        settings.max_concurrent = concurrent
    if resume:
        exp_dir = Path(resume).resolve()
        if not exp_dir.is_dir():
            raise FileNotFoundError(f"{exp_dir}: no such experiment to resume")
        settings.name, settings.storage = exp_dir.name, str(exp_dir.parent)
    else:
        settings.name = settings.name or (
            f"{settings.family}-{ds_version[:8]}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}")
        exp_dir = Path(settings.storage).resolve() / settings.name
    exp_dir.mkdir(parents=True, exist_ok=True)
    datasets = {s: load_split(root, ds_version, s, ds_name) for s in ("train", "valid")}
    encoder_path = exp_dir / "encoder.json"
    encoder = FeatureEncoder.load(encoder_path) if resume and encoder_path.is_file() else FeatureEncoder.fit(datasets["train"])
    encoder.save(encoder_path)

    tuner = restore(str(exp_dir), settings, datasets, encoder) if resume else build_tuner(settings, datasets, encoder)
    grid = tuner.fit()
    trials = grid.get_dataframe(filter_metric=METRIC, filter_mode="min")
    if "timestamp" in trials:
        trials = trials.sort_values("timestamp")
    trials.to_csv(exp_dir / "results.csv", index=False)
    (exp_dir / "results.json").write_text(trials.to_json(orient="records", indent=1, default_handler=str))
    errors = [str(r.error) for r in grid if r.error]
    if trials.empty or METRIC not in trials:
        raise RuntimeError(f"no trial finished in {exp_dir}; errors: {errors[:3]}")

    best_ckpt, best_metrics, best = best_checkpoint_dir(grid)
    spec = search_space.load(settings.space_file)[settings.family]
    params = search_space.decode({k: v for k, v in best.config.items()}, spec)
    model_dir = package(settings.family, best_ckpt, encoder, exp_dir / "best", {
        "params": params, "dataset": {"name": ds_name, "version": ds_version},
        "valid_mae": best_metrics.get(METRIC), "experiment": str(exp_dir),
        "gtfs_stops": versioning.load_manifest(root, ds_name, ds_version).get("gtfs_stops"),
    })
    # What the features need at serving time travels with the model.
    ds_dir = versioning.version_dir(root, ds_name, ds_version)
    shutil.copy2(ds_dir / "segment_medians.parquet", model_dir / "segment_medians.parquet")
    test = load_split_pandas(root, ds_version, "test", ds_name)
    predictions = load_predictor(model_dir)(test)
    report = evaluate.report(test, {settings.family: predictions, **evaluate.baseline_predictions(test)})
    (model_dir / "eval.json").write_text(json.dumps({"split": "test", "dataset": ds_version, "report": report},
                                                   indent=1))
    plots.best_so_far(trials, METRIC, exp_dir / "best_so_far.png")
    plots.predicted_vs_actual(test["travel_seconds"].to_numpy(), predictions, exp_dir / "predicted_vs_actual.png")
    plots.error_by_horizon(report, exp_dir / "error_by_horizon.png")
    return {"experiment": str(exp_dir), "model_dir": str(model_dir), "trials": len(trials), "errors": errors,
            "best_params": params, "best_valid_mae": best_metrics.get(METRIC), "report": report,
            "dataset": ds_version, "family": settings.family}
