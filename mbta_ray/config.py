"""Every stage's settings in one place: plain dataclasses whose defaults are the project's defaults.

The CLI takes its option defaults from these classes, and the stage modules re-export them, so a
default is written once. Nothing heavy is imported here (no Ray Tune, Train or torch): reading a
default must not cost the seconds those imports take.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from mbta_ray.defaults import MAX_ABS_DELAY_S, METRIC_MODES, MODEL_NAME
from mbta_ray.errors import ConfigError
from mbta_ray.paths import DEFAULT_ROOT

if TYPE_CHECKING:
    from ray.train import ScalingConfig


# --- ETL ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtlConfig:
    """Everything that shapes a dataset version (it is part of the version hash)."""

    k: int = 10  # predict 1..k observed stops ahead
    max_abs_delay_s: float = MAX_ABS_DELAY_S
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    #: Events per trip bucket (one map_groups call): large enough that the per-call cost is small,
    #: small enough that a worker's pandas working set stays well under a GiB.
    events_per_bucket: int = 50_000
    #: A segment's median travel time is a feature only when at least this many training pairs
    #: back it: with one or two, a training row would mostly see its own target.
    min_segment_pairs: int = 5
    #: (from, until) UTC ISO times: events arriving in that window are held out of the dataset
    #: (quarantined as ``held_out``, counted) so a race over it never scores a model trained on it.
    holdout: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.holdout is not None:
            object.__setattr__(self, "holdout", _holdout_window(self.holdout))  # frozen: normalized once
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if not (0 < self.max_abs_delay_s < math.inf):  # NaN too: it would turn the check off
            raise ConfigError(f"max_abs_delay_s must be a number > 0, got {self.max_abs_delay_s}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-9 or min(self.split_fractions) < 0:
            raise ConfigError(
                f"split_fractions must be 3 non-negative numbers summing to 1, got {self.split_fractions}"
            )

    def version_dict(self) -> dict:
        """The parts of the config that change the output (not performance knobs)."""
        d = asdict(self)
        d.pop("events_per_bucket")
        d["split_fractions"] = list(self.split_fractions)
        if self.holdout is None:
            d.pop("holdout")  # unchanged versions for datasets built without one
        else:
            d["holdout"] = list(self.holdout)
        return d


def _holdout_window(window: tuple[str, str] | list[str]) -> tuple[str, str]:
    """Two ISO times (UTC when no offset), the first before the second, normalized to UTC ISO."""
    from mbta_ray.timeutil import parse_utc  # pandas: not at import time (the CLI imports this module)

    if len(window) != 2:
        raise ConfigError(f"holdout must be (from, until), got {window!r}")
    out = [parse_utc(value, f"holdout {name}").isoformat() for name, value in zip(("from", "until"), window)]
    if out[1] <= out[0]:
        raise ConfigError(f"holdout until {window[1]} is not after from {window[0]}")
    return out[0], out[1]


# --- training and tuning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerResources:
    """Ray Train workers of one training run (both model families): a GPU share > 0 makes each
    worker train on a GPU."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractions let several trials share one GPU

    def scaling_config(self) -> ScalingConfig:
        # Imported here: ray.train costs ~0.9 s to import, and the CLI reads this module at start-up.
        from ray.train import ScalingConfig

        return ScalingConfig(
            num_workers=self.num_workers,
            use_gpu=self.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": self.cpus_per_worker,
                **({"GPU": self.gpus_per_worker} if self.gpus_per_worker > 0 else {}),
            },
        )


#: CPUs left free while trials run: Ray Data's read tasks (1 CPU each) feed the Train workers from
#: outside their placement groups. With no CPU free, every trial waits for data forever.
DATA_CPUS = 1.0


class ResourceError(ConfigError):
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

    def __post_init__(self) -> None:
        # NaN passes every comparison: each option must be a finite number in its range.
        for option, value, least in (
            ("--cpus-per-worker", self.cpus_per_worker, 0.0),
            ("--gpus-per-worker", self.gpus_per_worker, 0.0),
            ("--trial-cpu", self.trial_cpu, 0.0),
        ):
            if value is not None and not (math.isfinite(value) and value >= least):
                raise ConfigError(f"{option} {value!r}: a number >= {least:g}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ConfigError(f"--cpus-per-worker {self.cpus_per_worker!r}: more than 0")

    def check_gpus(self, cluster_gpus: float) -> None:
        """A ``ResourceError`` when a worker asks for GPUs the cluster does not have (the trial
        would wait for them forever, saying nothing)."""
        if self.gpus_per_worker > 0 and self.gpus_per_worker > cluster_gpus:
            raise ResourceError(
                f"--gpus-per-worker {self.gpus_per_worker:g}: the cluster has {cluster_gpus:g} GPU(s); "
                "leave it at 0 on a machine without one"
            )

    def worker_resources(self, family: str) -> WorkerResources:
        """The Train workers' resources (the same shape for every family today)."""
        return WorkerResources(self.num_workers, self.cpus_per_worker or 1.0, self.gpus_per_worker)

    def trial_request(self) -> dict:
        return {"cpu": self.trial_cpu}

    def per_trial_cpus(self) -> float:
        return self.trial_cpu + self.num_workers * (self.cpus_per_worker or 1.0)

    def fit(self, cluster_cpus: float, max_concurrent: int) -> tuple[TrialResources, int]:
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
                f"workers: lower --cpus-per-worker or --workers (or leave --cpus-per-worker unset)"
            )
        return res, min(max_concurrent, fits)


@dataclass
class TuneSettings:
    family: str
    num_samples: int = 8
    max_concurrent: int = 1
    seed: int = 0
    random_steps: int = 3  # BayesOpt explores randomly this many trials before fitting its GP
    resources: TrialResources = field(default_factory=TrialResources)
    storage: str = f"{DEFAULT_ROOT}/experiments"
    name: str | None = None
    space_file: str | None = None
    wandb: bool = False
    #: ASHA early stopping for DNN epochs. Stopping a trial needs Ray's State API (the dashboard)
    #: to free its Train workers: turn it off on clusters started without the dashboard.
    early_stopping: bool = True

    def __post_init__(self) -> None:
        if self.random_steps < 0:
            raise ConfigError(f"--random-steps {self.random_steps}: 0 or more")


# --- distillation ---------------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """Knobs of the distillation job (defaults sized for the embedded data on 2 CPUs)."""

    blend: float = 0.5  # weight of the true target against the teacher on labeled rows
    softening: float = 2.0  # teacher term's Huber zone = huber_delta_s * softening
    huber_delta_s: float = 120.0
    # Unlabeled re-observed pairs per training pair. Off by default: they double the rows to label
    # and fit for no measured gain (student test MAE 84.1 s with one copy, 84.8 s without, teacher
    # 85.0 s; bench/RESULTS.md, 2026-12-04).
    unlabeled_copies: int = 0
    shift_sd_s: float = 180.0  # spread of the observation-time shift of unlabeled pairs
    hidden: list[int] = field(default_factory=lambda: [48])
    max_embedding_dim: int = 4
    dropout: float = 0.0
    epochs: int = 6
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_size: int = 1024
    prune_amount: float = 0.3  # share of linear weights zeroed by magnitude
    tolerance: float = 0.02  # pruning / quantization kept if valid MAE <= (1 + tolerance) x student's
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo, hi in (("blend", 0.0, 1.0), ("prune_amount", 0.0, 0.95), ("tolerance", 0.0, 1.0)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ConfigError(f"distill option {name}={v!r} must be within [{lo}, {hi}]")
        if not (self.shift_sd_s >= 0 and math.isfinite(self.shift_sd_s)):
            raise ConfigError(f"distill option shift_sd_s={self.shift_sd_s!r} must be a number >= 0")
        for name in ("softening", "huber_delta_s", "lr", "batch_size", "epochs"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):  # NaN and inf too: the loss would be NaN
                raise ConfigError(f"distill option {name}={v!r} must be a number > 0")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ConfigError(f"distill option hidden={self.hidden!r}: one or more layer widths >= 1")
        if self.unlabeled_copies < 0:
            raise ConfigError(f"distill option unlabeled_copies={self.unlabeled_copies!r} must be >= 0")


# --- the whole pipeline -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RaceSettings:
    """A race against MBTA's published predictions (``mbta-ray race``): the feeds and the window of
    moments [start, until) in UTC ISO times."""

    vehicle_positions: tuple[str, ...]
    trip_updates: tuple[str, ...]
    start: str
    until: str

    def holdout(self) -> tuple[str, str]:
        """What the ETL must not train on: every arrival from the first moment to a day after the
        last (an arrival scored is at most 30 min after its moment; a day leaves no doubt)."""
        import datetime as dt

        from mbta_ray.timeutil import parse_utc

        return self.start, (parse_utc(self.until, "race until") + dt.timedelta(days=1)).isoformat()


def embedded_race() -> RaceSettings:
    """The race on the embedded GTFS-realtime hour that ``make run`` shows."""
    from mbta_ray.paths import DEFAULT_RACE_WINDOW, GTFSRT_TRIP_UPDATES, GTFSRT_VEHICLE_POSITIONS

    return RaceSettings((str(GTFSRT_VEHICLE_POSITIONS),), (str(GTFSRT_TRIP_UPDATES),), *DEFAULT_RACE_WINDOW)


@dataclass
class PipelineSettings:
    root: str = DEFAULT_ROOT
    registry: str | None = None  # default: root
    model_name: str = MODEL_NAME
    inputs: list[str] | None = None  # default: the embedded real samples
    samples: dict[str, int] = field(default_factory=lambda: {"xgboost": 4, "dnn": 3})
    max_concurrent: int = 1
    #: Each trial's Ray Train workers (more workers or GPUs on a bigger cluster).
    resources: TrialResources = field(default_factory=TrialResources)
    seed: int = 0
    metric: str = "mae"
    distill: DistillConfig = field(default_factory=DistillConfig)
    space_file: str | None = None
    wandb: bool = False
    early_stopping: bool = True
    #: The student is the candidate when its valid MAE is within this share of the teacher's
    #: (it is smaller and faster); otherwise the teacher is.
    student_tolerance: float = 0.05
    #: A race against MBTA after promotion; its window is held out of the dataset. None: no race
    #: (``embedded_race()`` is what ``make run`` races on the embedded data).
    race: RaceSettings | None = None

    def __post_init__(self) -> None:  # fail before the long stages, not after them
        if self.metric not in METRIC_MODES:
            raise ConfigError(f"--metric must be one of {sorted(METRIC_MODES)}, got {self.metric!r}")
