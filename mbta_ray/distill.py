"""Distillation: compress the best tuned model (the teacher) into a small, fast MLP (the student).

1. Ray Data labels the training split with the teacher's predictions (a callable class per worker
   loads the teacher once) and, with ``unlabeled_copies`` > 0, adds *unlabeled* pairs built from
   the same events: each training pair re-observed at a shifted time at u (the vehicle seen earlier
   or later than it was, so the delay, time of day and headways change consistently through
   ``features.compute_features``). No arrival at s exists for those; only the teacher's prediction
   teaches the student there. Off by default: they double the work for no measured gain
   (``DistillConfig.unlabeled_copies``).
2. Ray Train (``TorchTrainer``, the DNN's own epoch loop) fits the student on a blend:
   ``blend * Huber_d(pred, y) + (1 - blend) * Huber_{d*T}(pred, teacher) / T`` on labeled rows, the
   teacher term alone on unlabeled ones. ``T = softening`` is the temperature-like knob: the teacher
   term keeps the hard term's slope for large errors but gets a T-times wider, flatter zone around
   the teacher, so the student follows the teacher's trend rather than its every kink.
3. Magnitude pruning (global L1 over the linear layers) and dynamic int8 quantization, each kept
   only if the valid MAE stays within ``tolerance`` of the student's (int8 also only if it is not
   slower at batch 256 than the float model it replaces).
4. A compression report (parameters, file size, CPU latency at batch 1 and 256, test MAE) for
   teacher, student, pruned and quantized student; the final student is packaged like a tuned model
   (model files, encoder.json, metadata.json, eval.json) so the registry takes it as it is.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import ray.train
import torch
from torch import nn

from mbta_ray import evaluate, versioning
from mbta_ray.config import DistillConfig, WorkerResources
from mbta_ray.defaults import VALID_METRIC
from mbta_ray.encoding import DEFAULT_CLIP_SD, FeatureEncoder
from mbta_ray.errors import ConfigError, MbtaRayError
from mbta_ray.features import HIST_MEDIAN, PATH_TRAVEL, PROGRESS, compute_features
from mbta_ray.models import bundle, dnn, xgboost_model
from mbta_ray.models.data import load_split, load_split_pandas
from mbta_ray.runtime import ensure_ray
from mbta_ray.schema import EXAMPLE_COLUMNS, TARGET

TEACHER_COL = "teacher_s"
STUDENT = "student"


class DistillError(MbtaRayError, RuntimeError):
    """The distillation job cannot go on (no teacher, the student's training failed)."""


# --- data: teacher labels and unlabeled pairs --------------------------------------------------------


class TeacherLabels:
    """Ray Data callable class: loads the teacher once per actor, adds its predictions."""

    def __init__(self, teacher_dir: str) -> None:
        self.predict = bundle.load_predictor(teacher_dir)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.copy()
        batch[TEACHER_COL] = np.asarray(self.predict(batch), dtype="float64")
        return batch


#: The features a re-observed pair keeps from its example (``reobserve``).
_SHIFT_FREE = ("distance_m", HIST_MEDIAN, PATH_TRAVEL, PROGRESS)


def reobserve(batch: pd.DataFrame, copies: int, shift_sd_s: float, seed: int) -> pd.DataFrame:
    """Unlabeled pairs from the same events: the vehicle observed at u ``shift`` seconds later (or
    earlier) than it was, and the prediction moment with it. Features are recomputed by
    ``compute_features`` (one source of truth); what does not depend on the shift (the segment's
    distance, history and hop path, what the vehicle did since u) is the example's own. The target
    is unknown."""
    if copies == 0 or batch.empty:
        return batch.iloc[0:0].assign(**{TARGET: np.nan})
    rng = np.random.default_rng([seed, len(batch), int(batch["stops_ahead"].sum())])
    # Seconds since the previous vehicles' arrivals at u and the other vehicles' latest traversal:
    # they did not move, so each grows by the shift (the moment moves with u), and bounds it.
    since = {
        col: pd.to_numeric(batch[col], errors="coerce").to_numpy(dtype="float64")
        if col in batch
        else np.full(len(batch), np.nan)
        for col in ("headway_u", "headway_ahead_s", "recent_travel_age_s")
    }
    # Seen earlier than it was, but never before the previous vehicle left u (headways > 0), nor
    # before the other vehicles' latest traversal it knows of (its age >= 0).
    floors = (30.0 - since["headway_u"], 30.0 - since["headway_ahead_s"], -since["recent_travel_age_s"])
    parts = []
    for _ in range(copies):
        shifted = batch.copy()
        shift_s = rng.normal(0.0, shift_sd_s, len(batch)).round()
        for floor in floors:
            shift_s = np.where(np.isfinite(floor), np.maximum(shift_s, floor), shift_s)
        shifted["actual_arrival_u"] = pd.to_datetime(shifted["actual_arrival_u"], utc=True) + pd.to_timedelta(
            shift_s, unit="s"
        )
        for col, seconds in since.items():
            shifted[col] = seconds + shift_s
        shifted["actual_arrival_s"] = pd.NaT  # not observed: compute_features leaves the target NaN
        feats = compute_features(shifted.drop(columns=[TARGET]))
        # What the shift leaves alone comes from the example itself: the segment (distance, history,
        # its hops' path) and where the vehicle got since u (compute_features has no GTFS stops or
        # segment medians here, and the example rows no hop or position columns to rebuild them).
        for col in _SHIFT_FREE:
            if col in batch:
                feats[col] = batch[col].to_numpy()
        feats[TARGET] = np.nan
        parts.append(feats[[c for c in batch.columns if c in feats.columns]])
    return pd.concat(parts, ignore_index=True)


def build_training_set(train: ray.data.Dataset, teacher_dir: str, cfg: DistillConfig) -> ray.data.Dataset:
    """The training split plus its unlabeled re-observed pairs, all labeled by the teacher."""

    def add_unlabeled(batch: pd.DataFrame) -> pd.DataFrame:
        extra = reobserve(batch, cfg.unlabeled_copies, cfg.shift_sd_s, cfg.seed)
        return pd.concat([batch, extra[batch.columns]], ignore_index=True)

    return train.map_batches(add_unlabeled, batch_format="pandas").map_batches(
        TeacherLabels,
        fn_constructor_args=(teacher_dir,),
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=8192,
    )


# --- training ----------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """The DNN's DDP epoch loop with the distillation loss."""
    delta, temp = config["huber_delta_s"], config["softening"]
    hard = nn.HuberLoss(delta=delta, reduction="none")
    # Huber_{d*T} / T: the same slope as the hard term for large errors (so ``blend`` weighs the two
    # fairly) and a T-times wider, flatter quadratic zone around the teacher: softer targets.
    wide = nn.HuberLoss(delta=delta * temp, reduction="none")
    blend = config["blend"]

    def soft(pred: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return wide(pred, teacher) / temp

    def loss_of(pred: torch.Tensor, batch: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        teacher = batch[TEACHER_COL]
        labeled = torch.isfinite(y)
        hard_term = hard(pred, torch.where(labeled, y, pred.detach()))  # 0 where unlabeled
        per_row = torch.where(labeled, blend * hard_term + (1 - blend) * soft(pred, teacher), soft(pred, teacher))
        return per_row.mean()

    dnn.fit_per_worker(config, loss_of)


def _student_config(cfg: DistillConfig) -> dict:
    return {
        "hidden_width": cfg.hidden[0],
        "hidden_layers": len(cfg.hidden),
        "max_embedding_dim": cfg.max_embedding_dim,
        "dropout": cfg.dropout,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "residual": True,
        "blend": cfg.blend,
        "softening": cfg.softening,
        "huber_delta_s": cfg.huber_delta_s,
    }


# --- compression ---------------------------------------------------------------------------------------


def prune(model: dnn.DelayMLP, amount: float) -> dnn.DelayMLP:
    """A copy with the smallest ``amount`` of all linear weights (global L1 magnitude) set to zero."""
    import torch.nn.utils.prune as tprune

    pruned = copy.deepcopy(model)
    linears = [(m, "weight") for m in pruned.modules() if isinstance(m, nn.Linear)]
    tprune.global_unstructured(linears, pruning_method=tprune.L1Unstructured, amount=amount)
    for m, name in linears:
        tprune.remove(m, name)  # bake the mask in: a plain state dict again
    return pruned


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of a float torch model."""
    tensors = [p.detach() for p in model.parameters()]
    return sum(t.numel() for t in tensors), sum(int((t != 0).sum()) for t in tensors)


def _latency_ms(fn, inputs, repeats: int) -> float:
    fn(inputs)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(inputs)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


@contextlib.contextmanager
def _one_thread():
    """Torch on one thread (a serving replica's share; also what makes runs comparable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _forward_ms(model: nn.Module, inputs, repeats: int = 50) -> float:
    with _one_thread(), torch.no_grad():
        return _latency_ms(lambda x: model(*x), inputs, repeats)


def measure(name: str, model_dir: Path, test: pd.DataFrame, repeats: int = 30) -> tuple[dict, np.ndarray]:
    """Parameters, file size, model latency on encoded inputs at batch 1 and 256 (1 thread, CPU),
    end-to-end latency from example rows, and test MAE of a packaged model folder; returns the
    row and the test predictions."""
    b = bundle.read_bundle(model_dir)
    encoder, family = b.encoder, b.family
    row: dict = {"model": name, "family": family, "file_bytes": sum(p.stat().st_size for p in b.model_files())}
    predictor = b.predictor()
    pred = predictor(test)
    row["test_mae"] = float(np.nanmean(np.abs(pred - test[TARGET].to_numpy(dtype="float64"))))
    if family == "xgboost":
        booster = xgboost_model.load_booster(model_dir)
        booster.set_param({"nthread": 1})
        residual = booster.attr(xgboost_model.PRIOR_ATTR) == "1"
        row["params"] = row["nonzero_params"] = _xgb_params(booster)

        def model_ms(part: pd.DataFrame) -> float:
            # inplace_predict on arrays: Booster.predict would serve a repeated DMatrix from its cache
            margin = encoder.prior(part) if residual else None
            return _latency_ms(
                lambda a: booster.inplace_predict(a, base_margin=margin), encoder.tree_matrix(part), repeats
            )
    else:
        model = dnn.load(model_dir)
        row["params"], row["nonzero_params"] = parameter_counts(dnn.load(model_dir, as_float=True))

        def model_ms(part: pd.DataFrame) -> float:
            return _forward_ms(model, dnn.encode_inputs(part, encoder), repeats)

    with _one_thread():
        for batch in (1, 256):
            part = test.iloc[:batch]
            row[f"model_ms_b{batch}"] = model_ms(part)
            row[f"end_to_end_ms_b{batch}"] = _latency_ms(predictor, part, max(5, repeats // 3))
    return row, pred


def _xgb_params(booster) -> int:
    """Tree 'parameters': one per node (a split threshold or a leaf value), the closest analogue."""
    return int(booster.trees_to_dataframe().shape[0])


# --- the job -----------------------------------------------------------------------------------------------


def default_out_dir(teacher_dir: str | Path, dataset_version: str) -> Path:
    """Where a distillation writes by default: beside the teacher's experiment."""
    return Path(teacher_dir).resolve().parent.parent / f"distill-{dataset_version[:8]}"


def pick_teacher(candidates: list[str | Path]) -> Path:
    """The packaged model with the lowest validation MAE (never chosen on test)."""
    scored = []
    for c in candidates:
        v = bundle.read_metadata(c).get("valid_mae")
        if v is not None and np.isfinite(v):
            scored.append((float(v), Path(c)))
    if not scored:
        raise ConfigError(f"no teacher with a validation MAE among {[str(c) for c in candidates]}")
    return min(scored, key=lambda t: t[0])[1]


@dataclass
class _Job:
    """What every step of one distillation run shares."""

    teacher_dir: Path
    out_dir: Path
    root: str | Path
    ds_name: str
    ds_version: str
    cfg: DistillConfig
    #: The teacher's vocabularies and scalers, with today's outlier clipping (the student is new, and
    #: clipping is what keeps its int8 variant accurate, whatever encoder the teacher was saved with).
    encoder: FeatureEncoder

    def split(self, name: str) -> pd.DataFrame:
        return load_split_pandas(self.root, self.ds_version, name, self.ds_name)

    def metadata(self, **extra) -> dict:
        return {
            "dataset": {"name": self.ds_name, "version": self.ds_version},
            "teacher": str(self.teacher_dir),
            "distill_config": asdict(self.cfg),
            **extra,
        }


@dataclass
class _Labeled:
    data: ray.data.Dataset
    rows: int
    unlabeled: int
    seconds: float


@dataclass
class _Compressed:
    """The student variants (packaged under ``variants/``), the one chosen and why."""

    variants: dict[str, Path]
    chosen: str
    valid_mae: float
    decisions: dict


def run(
    teacher_dir: str | Path,
    root: str | Path,
    dataset: str,
    out_dir: str | Path,
    cfg: DistillConfig | None = None,
    resources: WorkerResources | None = None,
    dnn_reference: str | Path | None = None,
    storage: str | None = None,
) -> dict:
    """The distillation job: label -> train -> compress -> measure -> package. Writes
    ``out_dir/student`` (a model bundle with eval.json) and ``out_dir/compression.json``; returns
    the report. ``dnn_reference``: the tuned DNN to compare the student's size and speed with when
    the teacher is XGBoost."""
    teacher_dir, out_dir = Path(teacher_dir).resolve(), Path(out_dir).resolve()
    ds_name, ds_version = versioning.resolve(root, dataset)
    ensure_ray()
    if resources is None:  # one worker with all CPUs but the one Ray Data needs to feed it
        resources = WorkerResources(1, max(0.5, ray.cluster_resources().get("CPU", 2.0) - 1.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = FeatureEncoder.load(teacher_dir / bundle.ENCODER_FILE)
    encoder.clip_sd = DEFAULT_CLIP_SD
    job = _Job(teacher_dir, out_dir, root, ds_name, ds_version, cfg or DistillConfig(), encoder)

    labeled = label(job)
    student, train_s = train_student(job, labeled, resources, storage)
    comp = compress(job, student)
    rows, test, pred = measure_all(job, comp, dnn_reference)
    student_dir, rep = package_student(job, comp, test, pred)
    report = {
        "rows": rows,
        "chosen": comp.chosen,
        "decisions": comp.decisions,
        "goals": _goals(rows, comp.chosen),
        "training_rows": labeled.rows,
        "unlabeled_rows": labeled.unlabeled,
        "label_s": labeled.seconds,
        "train_s": train_s,
        "student_dir": str(student_dir),
        "teacher": str(teacher_dir),
        "dataset": ds_version,
        "eval": rep,
        "config": asdict(job.cfg),
    }
    (out_dir / "compression.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def label(job: _Job) -> _Labeled:
    """The training split plus its unlabeled re-observed pairs, labeled by the teacher (Ray Data)."""
    t0 = time.perf_counter()
    train = load_split(job.root, job.ds_version, "train", job.ds_name, columns=list(EXAMPLE_COLUMNS))
    labeled = build_training_set(train, str(job.teacher_dir), job.cfg).materialize()
    n_unlabeled = int(labeled.select_columns([TARGET]).to_pandas()[TARGET].isna().sum())
    return _Labeled(labeled, labeled.count(), n_unlabeled, time.perf_counter() - t0)


def train_student(
    job: _Job, labeled: _Labeled, resources: WorkerResources, storage: str | None
) -> tuple[dnn.DelayMLP, float]:
    """Fit the student with Ray Train on the distillation loss; returns its best epoch and the time."""
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={**_student_config(job.cfg), "encoder": job.encoder.to_dict()},
        scaling_config=resources.scaling_config(),
        datasets={  # encoded once, not once per epoch (as ``dnn.prepare``)
            "train": dnn.encoded(labeled.data, job.encoder, extra=(TEACHER_COL,)).materialize(),
            "valid": dnn.encoded(load_split(job.root, job.ds_version, "valid", job.ds_name), job.encoder).materialize(),
        },
        run_config=ray.train.RunConfig(
            name=f"distill-{job.ds_version[:8]}-{int(time.time())}",
            storage_path=storage or str(job.out_dir / "runs"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=VALID_METRIC, checkpoint_score_order="min"
            ),
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    best = result.get_best_checkpoint(VALID_METRIC, "min") or result.checkpoint
    if best is None:
        raise DistillError(f"the student's training reported no checkpoint ({result.error})")
    with best.as_directory() as ckpt:
        return dnn.load(ckpt), seconds


def compress(job: _Job, student: dnn.DelayMLP) -> _Compressed:
    """Pruning, then int8, each kept only within ``tolerance`` of the student's valid MAE (int8 also
    only if not slower); every variant is packaged under ``variants/`` for the measurements."""
    cfg = job.cfg
    valid = job.split("valid")
    y_valid = valid[TARGET].to_numpy(dtype="float64")

    def valid_mae(model: nn.Module) -> float:
        return float(np.mean(np.abs(dnn.predict(model, job.encoder, valid) - y_valid)))

    def write_variant(name: str, model: dnn.DelayMLP, mae: float) -> Path:
        with tempfile.TemporaryDirectory() as tmp:
            dnn.save(model, Path(tmp))
            return bundle.write_bundle(
                job.out_dir / "variants" / name,
                family="dnn",
                model_dir=tmp,
                encoder=job.encoder,
                metadata=job.metadata(valid_mae=mae, variant=name),
            )

    student_mae = valid_mae(student)
    limit = student_mae * (1 + cfg.tolerance)
    decisions = {"student_valid_mae": student_mae, "limit": limit}
    variants = {"student": write_variant("student", student, student_mae)}
    final, final_mae = student, student_mae
    pruned = prune(student, cfg.prune_amount)
    pruned_mae = valid_mae(pruned)
    decisions["pruned"] = {"valid_mae": pruned_mae, "kept": pruned_mae <= limit, "amount": cfg.prune_amount}
    variants["student_pruned"] = write_variant("student_pruned", pruned, pruned_mae)
    if pruned_mae <= limit:
        final, final_mae = pruned, pruned_mae
    q_float = copy.deepcopy(final)
    q_float.arch = dnn.Architecture(**{**asdict(final.arch), "quantized": True})
    q_model = dnn.quantize(q_float)
    q_mae = valid_mae(q_model)
    # int8 must also pay for itself: on a model this small, dynamic quantization's per-batch
    # activation scaling can cost more time than the int8 matmuls save.
    sample = dnn.encode_inputs(valid.iloc[:256], job.encoder)
    q_ms, f_ms = _forward_ms(q_model, sample), _forward_ms(final, sample)
    q_kept = q_mae <= limit and q_ms <= f_ms
    decisions["quantized"] = {"valid_mae": q_mae, "kept": q_kept, "ms_b256": q_ms, "float_ms_b256": f_ms}
    variants["student_int8"] = write_variant("student_int8", q_float, q_mae)
    chosen = "student_int8" if q_kept else ("student_pruned" if final is pruned else "student")
    return _Compressed(variants, chosen, q_mae if q_kept else final_mae, decisions)


def measure_all(
    job: _Job, comp: _Compressed, dnn_reference: str | Path | None
) -> tuple[list[dict], pd.DataFrame, dict[str, np.ndarray]]:
    """A compression-report row per model (teacher, tuned DNN reference, each variant); returns the
    rows, the test split and the test predictions of the teacher and the chosen student."""
    test = job.split("test")
    teacher_row, teacher_pred = measure("teacher", job.teacher_dir, test)
    rows, pred = [teacher_row], {"teacher": teacher_pred}
    if dnn_reference and teacher_row["family"] != "dnn":
        rows.append(measure("dnn (tuned)", Path(dnn_reference).resolve(), test)[0])
    for name, folder in comp.variants.items():
        row, variant_pred = measure(name, folder, test)
        rows.append({**row, "kept": name == comp.chosen})
        if name == comp.chosen:
            pred[STUDENT] = variant_pred  # the packaged student is this variant
    return rows, test, pred


def package_student(job: _Job, comp: _Compressed, test: pd.DataFrame, pred: dict[str, np.ndarray]) -> tuple[Path, dict]:
    """The chosen variant as the student bundle, packaged and evaluated like a tuned model (what the
    registry takes), with the dataset's segment medians (a feature at serving time)."""
    ds_dir = versioning.version_dir(job.root, job.ds_name, job.ds_version)
    chosen = bundle.read_bundle(comp.variants[comp.chosen])
    student_dir = bundle.write_bundle(
        job.out_dir / STUDENT,
        family="dnn",
        model_dir=chosen.path,
        encoder=chosen.encoder,
        segment_medians=ds_dir / bundle.SEGMENT_MEDIANS_FILE,
        metadata={
            **chosen.metadata,
            "valid_mae": comp.valid_mae,
            "variant": comp.chosen,
            "params": _student_config(job.cfg),
            "experiment": str(job.out_dir),
            "gtfs_stops": versioning.load_manifest(job.root, job.ds_name, job.ds_version).get("gtfs_stops"),
        },
    )
    rep = evaluate.report(
        test, {STUDENT: pred[STUDENT], "teacher": pred["teacher"], **evaluate.baseline_predictions(test)}
    )
    bundle.write_evaluation(
        student_dir, {"split": "test", "dataset": job.ds_version, "model_name": STUDENT, "report": rep}
    )
    return student_dir, rep


def _goals(rows: list[dict], chosen: str) -> dict | None:
    """The chosen student against the tuned DNN (teacher or reference): size, speed, accuracy."""
    ref = next((r for r in rows if r["family"] == "dnn" and r["model"] in ("teacher", "dnn (tuned)")), None)
    if ref is None:
        return None
    final_row = next(r for r in rows if r["model"] == chosen)
    return {
        "reference": ref["model"],
        "fewer_params_x": ref["params"] / max(1, final_row["nonzero_params"]),
        "faster_b256_x": ref["model_ms_b256"] / final_row["model_ms_b256"],
        "mae_vs_teacher_x": final_row["test_mae"] / rows[0]["test_mae"],
    }
