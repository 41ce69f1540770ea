"""Distributed XGBoost with Ray Train V2 (``XGBoostTrainer`` + a per-worker training function).

Ray Data encodes the examples once per pass (``encoded``: the trees' matrix, label and prior margin
as numpy columns), and each worker streams its shard batch by batch into an ``xgboost.QuantileDMatrix``
(``ShardIter``), never holding the shard as pandas (its encoded blocks wait in Ray's object store,
which spills to disk). The quantized matrix itself stays in the worker's memory: with missing
values XGBoost keeps a 4-byte bin id per value, about 160 bytes per row for our ~28 inputs while it
builds (bench/RESULTS.md). ``external_memory: true`` in the trainer config writes those pages to
files instead (``xgboost.ExtMemQuantileDMatrix``, in ``external_memory_dir``, default the system
temp folder; CPU workers, untested on a GPU): the worker keeps only the per-row training state
(gradients, predictions, labels, margins: ~130 bytes per row measured at 10 M rows), so its memory
grows more slowly and a shard larger than a worker's memory trains, at the price of slower rounds
that read the pages back. The trainer wires XGBoost's collective (rabit) between workers, so the
workers' quantile sketches are merged and they build one model together. A worker that was given
a GPU trains with ``device="cuda"``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import ray.train
import xgboost as xgb
from ray.train.xgboost import XGBoostTrainer

from mbta_ray.config import WorkerResources
from mbta_ray.defaults import VALID_METRIC
from mbta_ray.encoding import FeatureEncoder
from mbta_ray.errors import ConfigError
from mbta_ray.models.bundle import XGB_MODEL_FILE as MODEL_FILE  # XGBoost's own binary JSON: no pickle
from mbta_ray.models.params import round_ints
from mbta_ray.runtime import peak_rss_mib
from mbta_ray.schema import TARGET

#: Hyperparameters that XGBoost needs as integers (BayesOpt proposes floats: round them).
INT_PARAMS = ("max_depth", "num_boost_round", "min_child_weight", "early_stopping_rounds")
#: Booster attribute saying the trees learned a correction to ``encoder.prior`` (base_margin).
PRIOR_ATTR = "travel_prior"


def dmatrix(df: pd.DataFrame, encoder: FeatureEncoder, residual: bool, label: bool = True) -> xgb.DMatrix:
    """Features (and label) of example rows; with ``residual`` the prior is the base margin, so the
    trees learn the correction to it while labels and metrics stay in travel seconds."""
    return xgb.DMatrix(
        encoder.tree_matrix(df),
        label=df[TARGET].to_numpy(dtype="float32") if label else None,
        base_margin=encoder.prior(df) if residual else None,
        feature_names=encoder.tree_feature_names,
        missing=np.nan,
    )


#: Rows per batch a worker streams into its QuantileDMatrix (the batch is the unit held in memory).
STREAM_BATCH_ROWS = 65_536


def encoded(ds: ray.data.Dataset, encoder: FeatureEncoder, residual: bool) -> ray.data.Dataset:
    """The examples as the trees read them, encoded by Ray Data: ``x`` (float32 [n, features]),
    ``y`` (travel seconds) and ``margin`` (the prior, or zeros without ``residual``)."""

    def encode(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        n = len(batch)
        return {
            "x": encoder.tree_matrix(batch),
            "y": batch[TARGET].to_numpy(dtype="float32"),
            "margin": encoder.prior(batch).astype("float32") if residual else np.zeros(n, "float32"),
        }

    return ds.map_batches(encode, batch_format="pandas")


class ShardIter(xgb.DataIter):
    """A worker's shard of ``encoded`` batches, for ``xgb.QuantileDMatrix``, which reads it twice
    (once to sketch the quantiles, once to bin) and needs the same batches both times. A streaming
    split hands blocks to whichever worker asks first, so the shard is first materialized: its
    blocks go to Ray's object store (which spills to disk), not to this worker's heap, and both
    passes read them in the same order. A shard with no rows gives one empty batch: XGBoost refuses
    an iterator without any, and the worker must still join the collective sketch. ``cache_prefix``
    (external memory): where XGBoost writes the quantized pages."""

    def __init__(
        self, shard, feature_names: list[str], batch_size: int = STREAM_BATCH_ROWS, cache_prefix: str | None = None
    ) -> None:
        self._shard, self._names, self._batch_size = shard.materialize(), feature_names, batch_size
        self._batches = None
        self._fed = 0
        super().__init__(cache_prefix=cache_prefix)

    def reset(self) -> None:
        self._batches, self._fed = None, 0

    def next(self, input_data) -> bool:
        if self._batches is None:
            self._batches = iter(self._shard.iter_batches(batch_size=self._batch_size, batch_format="numpy"))
        batch = next(self._batches, None)
        if batch is None:
            if self._fed:
                return False
            batch = {"x": np.zeros((0, len(self._names)), "float32"), "y": np.zeros(0, "float32")}
            batch["margin"] = batch["y"]
        self._fed += 1
        input_data(data=batch["x"], label=batch["y"], base_margin=batch["margin"], feature_names=self._names)
        return True


def _matrix(
    shard, encoder: FeatureEncoder, ref: xgb.QuantileDMatrix | None = None, cache: Path | None = None
) -> xgb.QuantileDMatrix | xgb.ExtMemQuantileDMatrix:
    """The shard's quantized matrix: in memory, or paged to files under ``cache`` (external memory)."""
    if cache is None:
        return xgb.QuantileDMatrix(ShardIter(shard, encoder.tree_feature_names), missing=np.nan, ref=ref)
    cache.mkdir(parents=True, exist_ok=True)
    it = ShardIter(shard, encoder.tree_feature_names, cache_prefix=str(cache / "pages"))
    return xgb.ExtMemQuantileDMatrix(it, missing=np.nan, ref=ref)


def monotone_constraints(encoder: FeatureEncoder, increasing: list[str]) -> str:
    """XGBoost's constraint vector: the trees' output never falls as one of ``increasing`` rises.

    For ``path_travel_s`` (the other vehicles' recent hops, chained): trained on one LAMP day, the
    trees learned to pull a long recent path back towards that day's medians; in a feed of another
    season (the race: May 2023's Red-line slow zones) the recent path was right and the pull cost
    up to 13 s of MAE at 12-30 min (bench/RESULTS.md). A real-time predictor should never answer
    "earlier" because the vehicles ahead were slower."""
    names = list(encoder.tree_feature_names)
    unknown = sorted(set(increasing) - set(names))
    if unknown:
        raise ConfigError(f"increasing: {', '.join(unknown)} not among the model's inputs ({', '.join(names)})")
    return "(" + ",".join("1" if n in increasing else "0" for n in names) + ")"


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker; rank 0 saves the model in the final checkpoint."""
    config = round_ints(config, INT_PARAMS)
    encoder = FeatureEncoder(**config["encoder"])
    residual = bool(config.get("residual", True))
    if not config.get("external_memory"):
        return _train(config, encoder, residual, None)
    parent = Path(config.get("external_memory_dir") or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_pages(parent)
    with tempfile.TemporaryDirectory(prefix=f"{PAGES_PREFIX}{os.getpid()}_", dir=parent) as pages:
        return _train(config, encoder, residual, Path(pages))  # the pages are removed when done


#: Page folders are named PAGES_PREFIX<pid>_<random>: a worker killed outright (out of memory,
#: a stopped trial) leaves its folder, and the next worker on the machine removes it.
PAGES_PREFIX = "mbta_ray_xgb_pages_"


def _sweep_pages(parent: Path) -> None:
    """Remove page folders in ``parent`` whose worker process no longer exists."""
    import shutil

    for folder in parent.glob(f"{PAGES_PREFIX}*_*"):
        pid = folder.name[len(PAGES_PREFIX) :].split("_", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _train(config: dict, encoder: FeatureEncoder, residual: bool, cache: Path | None) -> None:
    started = time.perf_counter()
    train_pages, valid_pages = (None, None) if cache is None else (cache / "train", cache / "valid")
    dtrain = _matrix(ray.train.get_dataset_shard("train"), encoder, cache=train_pages)
    dvalid = _matrix(ray.train.get_dataset_shard("valid"), encoder, ref=dtrain, cache=valid_pages)
    ingest = {"ingest_s": time.perf_counter() - started, "train_rows": dtrain.num_row()}
    if cache is not None:  # what went to disk instead of memory
        ingest["page_mib"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / (1 << 20)
    params = {
        "objective": config.get("objective", "reg:absoluteerror"),
        "eval_metric": "mae",
        "tree_method": "hist",
        "device": "cuda" if ray.get_gpu_ids() else "cpu",
        "eta": config.get("eta", 0.1),
        "max_depth": config.get("max_depth", 8),
        "min_child_weight": config.get("min_child_weight", 1),
        "subsample": config.get("subsample", 0.9),
        "colsample_bytree": config.get("colsample_bytree", 0.9),
        "lambda": config.get("lambda", 1.0),
        "nthread": config.get("nthread", 1),
        "seed": config.get("seed", 0),
    }
    if residual:  # the margin already holds the prior: start the trees from a zero correction
        params["base_score"] = 0.0
    if config.get("increasing"):
        params["monotone_constraints"] = monotone_constraints(encoder, config["increasing"])
    xgb.train(
        params,
        dtrain,
        num_boost_round=config.get("num_boost_round", 300),
        evals=[(dtrain, "train"), (dvalid, "valid")],
        early_stopping_rounds=config.get("early_stopping_rounds", 20),
        verbose_eval=False,
        callbacks=[ReportCallback(every=config.get("report_every", 25), residual=residual, ingest=ingest)],
    )


class ReportCallback(xgb.callback.TrainingCallback):
    """Reports to Ray Train every ``every`` rounds and once at the end with the model.

    Ray's RayTrainReportCallback reports every round; each report is a round trip through the Train
    controller (~0.3 s here), which made a 300-round run of a tiny dataset take two minutes.
    The final report carries the best round's metrics and the model cut at that round, and this
    worker's data costs (``ingest``: seconds to build its matrices and its rows; the boosting
    seconds; its peak memory).
    """

    def __init__(self, every: int = 25, residual: bool = False, ingest: dict | None = None) -> None:
        self.every = max(1, every)
        self.residual = residual
        self.ingest = ingest or {}
        self.started = time.perf_counter()

    @staticmethod
    def _metrics(evals_log: dict, upto: int | None = None) -> dict:
        valid, train = evals_log["valid"]["mae"], evals_log["train"]["mae"]
        i = len(valid) - 1 if upto is None else upto
        return {VALID_METRIC: float(valid[i]), "train-mae": float(train[i]), "iteration": i + 1}

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        self._log = evals_log
        if (epoch + 1) % self.every == 0:
            ray.train.report(self._metrics(evals_log))
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        best = model.attr("best_iteration")
        best = int(best) if best is not None else model.num_boosted_rounds() - 1
        metrics = self._metrics(self._log, upto=best) | self.ingest
        metrics |= {"train_s": time.perf_counter() - self.started, "worker_peak_rss_mib": peak_rss_mib()}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                final = model[: best + 1]
                final.set_attr(**{PRIOR_ATTR: "1" if self.residual else "0"})
                final.save_model(os.path.join(tmp, MODEL_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        return model


def prepare(datasets: dict[str, ray.data.Dataset], encoder: FeatureEncoder) -> dict[str, ray.data.Dataset]:
    """The splits as trials take them: as they are. The encoding depends on the trial (``residual``),
    and each trial reads its shard once, into its QuantileDMatrix (``dnn.prepare`` differs)."""
    return datasets


def make_trainer(
    config: dict,
    encoder: FeatureEncoder,
    datasets: dict[str, ray.data.Dataset],
    resources: WorkerResources,
    run_config: ray.train.RunConfig,
) -> XGBoostTrainer:
    loop_config = {**config, "encoder": encoder.to_dict(), "nthread": max(1, int(resources.cpus_per_worker))}
    residual = bool(config.get("residual", True))
    return XGBoostTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=resources.scaling_config(),
        datasets={name: encoded(ds, encoder, residual) for name, ds in datasets.items()},
        run_config=run_config,
    )


def load_booster(checkpoint_dir: str | Path) -> xgb.Booster:
    """Load a booster from a checkpoint folder (XGBoost UBJSON; refuses a missing file)."""
    path = Path(checkpoint_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no XGBoost model in this checkpoint")
    booster = xgb.Booster()
    booster.load_model(str(path))
    return booster


def predict(booster: xgb.Booster, encoder: FeatureEncoder, df: pd.DataFrame) -> np.ndarray:
    """Travel-seconds predictions for example rows (adds the prior back when the model learned a
    correction to it)."""
    return booster.predict(dmatrix(df, encoder, booster.attr(PRIOR_ATTR) == "1", label=False))
