"""SYNTHETIC LAMP-layout stop events for scale benchmarks. Never real MBTA data.

The embedded real LAMP sample (10,000 random rows of one service day) is too small to measure how the
ETL scales, so this module fits a small statistical profile to it and generates as many events as a
benchmark needs, in the LAMP 2024 column layout, so that the real LAMP reader (format detection
included) reads them like any LAMP file.

What is fitted (``fit_profile``), per route pattern (route, branch, direction):

- the ordered stop list: each stop at its usual ``stop_sequence``; stops that share a sequence
  (terminal platforms, e.g. Braintree-01/-02) become weighted alternatives for that position;
- scheduled seconds between consecutive positions: median ``scheduled_travel_time`` at the position,
  falling back to the pattern's, the route's and finally the global median;
- the trip start-time distribution (quantiles of ``start_time``) and the pattern's share of trips
  (rows divided by stop count, since a longer trip is more likely to be sampled);

and per route:

- the empirical delay distribution (delay = stop_timestamp - (service-day origin + scheduled
  arrival)), as quantiles of the in-bounds delays (|delay| <= 2 h);
- along-trip propagation, AR(1) per stop: ``d[i+1] = m + a * (d[i] - m) + e``. Consecutive observed
  stops of a sampled trip are usually several stops apart (``g`` positions), so ``a`` is fitted to
  ``d_next = m + a**g * (d_prev - m)`` by least absolute deviations over a grid, and residuals are
  rescaled to one step; routes with fewer than ``MIN_AR_PAIRS`` pairs use the fit pooled over
  routes (recorded as ``pooled``).

Data-quality rates are fitted or set so that every quarantine path runs: out-of-bounds delays (rate
fitted), missing ``stop_timestamp`` (0.5 % by default), repeated stop visits (0.05 %), unscheduled
trips (rate fitted); stop ids the GTFS stops table does not know come through from the sample.

``generate`` yields LAMP tables day by day (whole trips with their full stop lists, so pairs exist;
only the last trip of a day may be cut short to hit the exact event count). Every ``trip_id`` starts
with ``SYNTH-``. ``write_synthetic`` streams them into N parquet files: rows are in time order within
each day, so trips running when a file ends continue in the next file -- on purpose, since the ETL
must put such trips back together -- and writes ``SYNTHETIC.md`` and ``synthetic.json`` beside them.
Memory is bounded by one service day (``events_per_day`` rows, by default the size of the real day
the sample came from), whatever ``n_events`` is.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mbta_ray.defaults import MAX_ABS_DELAY_S  # delays beyond it are outliers, fitted apart
from mbta_ray.errors import ConfigError
from mbta_ray.paths import LAMP_SAMPLE, sha256_file
from mbta_ray.timeutil import service_day_origin, service_seconds_to_utc

#: Every synthetic trip id starts with this, so nobody mistakes a synthetic trip for a real one.
SYNTH_PREFIX = "SYNTH-"
#: Parquet schema-metadata key (and JSON file) that marks a file as synthetic.
METADATA_KEY = b"mbta_ray.synthetic"
MARKER_FILE = "SYNTHETIC.md"
PARAMS_FILE = "synthetic.json"
DEFAULT_LAMP_SAMPLE = LAMP_SAMPLE

#: A route needs this many consecutive observed pairs for its own AR(1) fit (else the pooled one).
MIN_AR_PAIRS = 30
_N_QUANTILES = 101
_FALLBACK_TRAVEL_S = 120.0
_FALLBACK_DWELL_S = 30.0

#: The LAMP 2024 layout, column for column as in the real files (minus pandas' index column).
LAMP_2024_SCHEMA = pa.schema(
    [
        ("stop_sequence", pa.int16()),
        ("stop_id", pa.string()),
        ("parent_station", pa.string()),
        ("move_timestamp", pa.int64()),
        ("stop_timestamp", pa.int64()),
        ("travel_time_seconds", pa.int64()),
        ("dwell_time_seconds", pa.int64()),
        ("headway_trunk_seconds", pa.int64()),
        ("headway_branch_seconds", pa.int64()),
        ("service_date", pa.int64()),
        ("route_id", pa.string()),
        ("direction_id", pa.bool_()),
        ("start_time", pa.int64()),
        ("vehicle_id", pa.string()),
        ("branch_route_id", pa.string()),
        ("trunk_route_id", pa.string()),
        ("stop_count", pa.int16()),
        ("trip_id", pa.string()),
        ("vehicle_label", pa.string()),
        ("vehicle_consist", pa.string()),
        ("direction", pa.string()),
        ("direction_destination", pa.string()),
        ("scheduled_arrival_time", pa.int64()),
        ("scheduled_departure_time", pa.int64()),
        ("scheduled_travel_time", pa.int64()),
        ("scheduled_headway_branch", pa.int64()),
        ("scheduled_headway_trunk", pa.int64()),
    ]
)


# --- the profile ------------------------------------------------------------------------------


@dataclass
class Pattern:
    """One route pattern: a direction of a route (or of a branch) with its ordered stops."""

    route_id: str
    branch_route_id: str | None
    trunk_route_id: str
    direction_id: bool
    direction: str | None
    direction_destination: str | None
    stop_sequence: list[int]  # one per position, increasing
    stop_choices: list[list[str]]  # stop ids seen at the position (usually one)
    stop_weights: list[list[float]]
    travel_s: list[float]  # scheduled seconds from the previous position (0 at the first)
    dwell_s: float  # median dwell at a stop
    weight: float  # share of the day's trips
    start_quantiles: list[float]  # trip start, seconds into the service day


@dataclass
class DelayModel:
    """Delay at a stop (quantiles) and its AR(1) propagation to the next stop of the trip."""

    delay_quantiles: list[float]
    mean_level: float  # m: the level delays revert to (median delay)
    a: float  # per-stop AR(1) coefficient
    residual_quantiles: list[float]  # per-step innovations e
    n_delays: int
    n_pairs: int
    pooled: bool  # True: too few pairs on this route, the pooled fit is used


@dataclass
class SynthProfile:
    """Everything ``generate`` needs, fitted to a real LAMP file (JSON-serializable)."""

    source: dict  # file name, sha256, rows, service dates
    patterns: list[Pattern]
    delay: dict[str, DelayModel]  # per route_id, plus "*" pooled over routes
    parent_station: dict[str, str]
    vehicles: dict[str, list[list[str | None]]]  # route -> [vehicle_id, label, consist]
    outlier_rate: float  # share of rows with |delay| > MAX_ABS_DELAY_S
    outlier_delays: list[float]
    unscheduled_trip_rate: float
    estimated_day_rows: int  # rows of the full service day the sample was drawn from (estimate)
    observed_missing_timestamp_rate: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SynthProfile:
        d = dict(d)
        d["patterns"] = [Pattern(**p) for p in d["patterns"]]
        d["delay"] = {k: DelayModel(**v) for k, v in d["delay"].items()}
        return cls(**d)

    def summary(self) -> dict:
        """A few numbers that say what the profile is, for the metadata and the CLI."""
        routes = sorted({p.route_id for p in self.patterns})
        return {
            "source": self.source.get("file"),
            "source_sha256": self.source.get("sha256"),
            "routes": len(routes),
            "patterns": len(self.patterns),
            "stops": len({s for p in self.patterns for c in p.stop_choices for s in c}),
            "routes_with_own_ar_fit": sorted(r for r, m in self.delay.items() if r != "*" and not m.pooled),
            "pooled_ar": {"a": self.delay["*"].a, "pairs": self.delay["*"].n_pairs},
        }


def _quantiles(values: np.ndarray) -> list[float]:
    return [float(x) for x in np.quantile(values, np.linspace(0, 1, _N_QUANTILES))]


def _mode(values: pd.Series):
    counts = values.dropna().value_counts()
    return None if counts.empty else counts.index[0]


def _fit_ar(d_prev: np.ndarray, d_next: np.ndarray, gap: np.ndarray, level: float) -> tuple[float, np.ndarray]:
    """LAD grid fit of d_next - m = a**gap * (d_prev - m); returns a and one-step residuals."""
    x, y = d_prev - level, d_next - level
    grid = np.linspace(0.0, 1.0, 201)
    costs = [np.abs(y - a**gap * x).sum() for a in grid]
    a = float(grid[int(np.argmin(costs))])
    resid = y - a**gap * x
    # Trim the extreme 0.5 % each side: a few sample pairs are trip reassignments, not delay changes.
    lo, hi = np.quantile(resid, [0.005, 0.995])
    keep = (resid >= lo) & (resid <= hi)
    resid, gap = resid[keep], gap[keep]
    # Var of a g-step sum of AR(1) innovations is sigma^2 (1 - a^2g) / (1 - a^2): scale to one step.
    if a < 1.0:
        scale = np.sqrt((1 - a * a) / (1 - a ** (2 * gap)))
    else:
        scale = 1.0 / np.sqrt(gap)
    return a, resid * scale


def fit_profile(lamp_path: str | Path = DEFAULT_LAMP_SAMPLE) -> SynthProfile:
    """Fit the generator's profile to a real LAMP file (2024 layout) -- see the module docstring."""
    lamp_path = Path(lamp_path)
    df = pq.read_table(lamp_path).to_pandas(ignore_metadata=True)
    df = df.drop(columns=[c for c in df.columns if c.startswith("__index_level")])
    df["branch_key"] = df["branch_route_id"].fillna("")
    df["direction_id"] = df["direction_id"].astype(bool)
    dates = pd.to_datetime(df["service_date"].astype("int64").astype(str), format="%Y%m%d")
    sched_utc = service_seconds_to_utc(dates, df["scheduled_arrival_time"])
    actual_utc = pd.to_datetime(df["stop_timestamp"], unit="s", utc=True)
    df["delay"] = (actual_utc - sched_utc).dt.total_seconds()

    def median_or(column: str, fallback: float) -> float:
        return float(df[column].median()) if df[column].notna().any() else fallback

    global_travel = median_or("scheduled_travel_time", _FALLBACK_TRAVEL_S)
    global_dwell = median_or("dwell_time_seconds", _FALLBACK_DWELL_S)
    route_travel = df.groupby("route_id")["scheduled_travel_time"].median()
    global_starts = df.drop_duplicates("trip_id")["start_time"].dropna().to_numpy(dtype=float)

    patterns: list[Pattern] = []
    position_of: dict[tuple, dict[str, int]] = {}  # pattern key -> stop_id -> position index
    for key, g in df.groupby(["route_id", "branch_key", "direction_id"], sort=True):
        route, branch, direction = key
        seq_of_stop = g.groupby("stop_id")["stop_sequence"].agg(lambda s: s.value_counts().index[0])
        by_seq: dict[int, list[str]] = {}
        for stop, seq in seq_of_stop.items():
            by_seq.setdefault(int(seq), []).append(str(stop))
        seqs = sorted(by_seq)
        counts = g["stop_id"].value_counts()
        choices = [sorted(by_seq[s]) for s in seqs]
        weights = [[float(counts[c]) / sum(counts[x] for x in cs) for c in cs] for cs in choices]
        pattern_travel = g["scheduled_travel_time"].median()
        fallback = next(
            v
            for v in (pattern_travel, route_travel.get(route), global_travel, _FALLBACK_TRAVEL_S)
            if v is not None and not pd.isna(v) and v > 0
        )
        travel = []
        for i, cs in enumerate(choices):
            if i == 0:
                travel.append(0.0)
                continue
            at = g.loc[g["stop_id"].isin(cs) & (g["stop_sequence"] == seqs[i]), "scheduled_travel_time"]
            med = at.median()
            travel.append(float(med) if not pd.isna(med) and med > 0 else float(fallback))
        starts = g.drop_duplicates("trip_id")["start_time"].dropna().to_numpy(dtype=float)
        if len(starts) < 2:
            starts = global_starts
        dwell = g["dwell_time_seconds"].median()
        patterns.append(
            Pattern(
                route_id=str(route),
                branch_route_id=branch or None,
                trunk_route_id=str(_mode(g["trunk_route_id"]) or route),
                direction_id=bool(direction),
                direction=_mode(g["direction"]),
                direction_destination=_mode(g["direction_destination"]),
                stop_sequence=seqs,
                stop_choices=choices,
                stop_weights=weights,
                travel_s=travel,
                dwell_s=float(dwell) if not pd.isna(dwell) else global_dwell,
                weight=len(g) / len(seqs),
                start_quantiles=_quantiles(starts),
            )
        )
        position_of[key] = {s: i for i, cs in enumerate(choices) for s in cs}
    dropped = [p for p in patterns if len(p.stop_sequence) < 2]  # e.g. a terminal seen before its branch id
    patterns = [p for p in patterns if len(p.stop_sequence) >= 2]
    total_weight = sum(p.weight for p in patterns)
    for p in patterns:
        p.weight /= total_weight

    # Delays: in-bounds values per route; consecutive observed stops of a trip for AR(1).
    scheduled = df["delay"].notna()
    inb = scheduled & (df["delay"].abs() <= MAX_ABS_DELAY_S)
    outliers = df.loc[scheduled & ~inb, "delay"].to_numpy(dtype=float)
    ordered = df[inb].sort_values(["trip_id", "stop_sequence"])
    pos = np.array(
        [
            position_of[(r, b, d)].get(s, -1)
            for r, b, d, s in zip(
                ordered["route_id"], ordered["branch_key"], ordered["direction_id"], ordered["stop_id"]
            )
        ]
    )
    same_trip = ordered["trip_id"].to_numpy()[1:] == ordered["trip_id"].to_numpy()[:-1]
    gap = pos[1:] - pos[:-1]
    ok = same_trip & (gap > 0) & (pos[:-1] >= 0)
    delays = ordered["delay"].to_numpy(dtype=float)
    pairs = pd.DataFrame(
        {
            "route_id": ordered["route_id"].to_numpy()[:-1][ok],
            "d_prev": delays[:-1][ok],
            "d_next": delays[1:][ok],
            "gap": gap[ok].astype(float),
        }
    )

    def model(d_all: np.ndarray, p: pd.DataFrame, pooled_fit: DelayModel | None) -> DelayModel:
        level = float(np.median(d_all))
        if len(p) >= MIN_AR_PAIRS or pooled_fit is None:
            a, resid = _fit_ar(p["d_prev"].to_numpy(), p["d_next"].to_numpy(), p["gap"].to_numpy(), level)
            return DelayModel(_quantiles(d_all), level, a, _quantiles(resid), len(d_all), len(p), False)
        return DelayModel(
            _quantiles(d_all), level, pooled_fit.a, pooled_fit.residual_quantiles, len(d_all), len(p), True
        )

    pooled = model(df.loc[inb, "delay"].to_numpy(dtype=float), pairs, None)
    delay_models = {"*": pooled}
    for route, g in df[inb].groupby("route_id"):
        d_route = g["delay"].to_numpy(dtype=float)
        delay_models[str(route)] = model(d_route, pairs[pairs["route_id"] == route], pooled)

    vehicles = {
        str(r): g[["vehicle_id", "vehicle_label", "vehicle_consist"]]
        .drop_duplicates("vehicle_id")
        .astype(object)
        .where(lambda x: x.notna(), None)
        .values.tolist()
        for r, g in df.groupby("route_id")
    }
    trip_sched = df.groupby("trip_id")["scheduled_arrival_time"].apply(lambda s: s.isna().all())
    # Rows in the full day the sample came from: find the sampling rate q at which trips of the
    # fitted lengths would show the observed rows per sampled trip (L q / (1 - (1-q)^L) on average).
    lengths = np.array([len(p.stop_sequence) for p in patterns], dtype=float)
    trips_share = np.array([p.weight for p in patterns])
    observed = len(df) / df["trip_id"].nunique()
    grid = np.linspace(0.005, 1.0, 996)
    predicted = [(trips_share * lengths * q).sum() / (trips_share * (1 - (1 - q) ** lengths)).sum() for q in grid]
    q = float(grid[int(np.argmin(np.abs(np.array(predicted) - observed)))])
    return SynthProfile(
        source={
            "file": lamp_path.name,
            "sha256": sha256_file(lamp_path),
            "rows": len(df),
            "service_dates": sorted(int(x) for x in df["service_date"].dropna().unique()),
        },
        patterns=patterns,
        delay=delay_models,
        parent_station={str(s): str(p) for s, p in df.groupby("stop_id")["parent_station"].first().dropna().items()},
        vehicles=vehicles,
        outlier_rate=float(len(outliers) / max(1, int(scheduled.sum()))),
        outlier_delays=[float(x) for x in outliers],
        unscheduled_trip_rate=float(trip_sched.mean()),
        estimated_day_rows=int(round(len(df) / q)),
        observed_missing_timestamp_rate=float(df["stop_timestamp"].isna().mean()),
        notes=[
            "Fitted to a random row sample of one service day: stop lists are the stops seen in the "
            "sample (short commuter-rail patterns may miss stops); weekday only; no holidays.",
            "Delays follow a per-route AR(1) along the trip; arrivals are then kept in stop order "
            "(at least 35% of the scheduled run time, and 10 s, between stops).",
            *(
                f"dropped pattern {p.route_id}/{p.branch_route_id or '-'}/{int(p.direction_id)}: one stop "
                f"position only ({p.stop_choices[0]})"
                for p in dropped
            ),
        ],
    )


# --- generation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthParams:
    """Knobs of ``generate`` (all recorded in the metadata)."""

    #: Rows per service day; None: the profile's estimate of the real day (about 50k), which keeps
    #: headways realistic. More days, not denser days, is how the data grows.
    events_per_day: int | None = None
    start_date: str = "2024-02-05"
    missing_timestamp_rate: float = 0.005
    duplicate_rate: float = 0.0005
    chunk_rows: int | None = None  # split a day into chunks of at most this many rows


class _Compiled:
    """Profile turned into arrays once per ``generate`` call."""

    def __init__(self, profile: SynthProfile) -> None:
        self.profile = profile
        self.patterns = profile.patterns
        self.weights = np.array([p.weight for p in profile.patterns])
        self.weights = self.weights / self.weights.sum()
        self.lengths = np.array([len(p.stop_sequence) for p in profile.patterns])
        stops = sorted({s for p in profile.patterns for cs in p.stop_choices for s in cs})
        self.stop_code = {s: i for i, s in enumerate(stops)}
        self.stop_ids = pa.array(stops, pa.string())
        self.parent = pa.array([profile.parent_station.get(s) for s in stops], pa.string())
        self.routes = sorted({p.route_id for p in profile.patterns})
        self.route_code = {r: i for i, r in enumerate(self.routes)}
        self.trunks = sorted({p.trunk_route_id for p in profile.patterns})
        self.branches = sorted({p.branch_route_id for p in profile.patterns if p.branch_route_id})
        self.q_grid = np.linspace(0, 1, _N_QUANTILES)
        # Per pattern: string attributes as arrays indexed by pattern number.
        self.pat_route = pa.array([p.route_id for p in profile.patterns], pa.string())
        self.pat_branch = pa.array([p.branch_route_id for p in profile.patterns], pa.string())
        self.pat_trunk = pa.array([p.trunk_route_id for p in profile.patterns], pa.string())
        self.pat_dir = pa.array([p.direction for p in profile.patterns], pa.string())
        self.pat_dest = pa.array([p.direction_destination for p in profile.patterns], pa.string())
        self.pat_trunk_code = np.array([self.trunks.index(p.trunk_route_id) for p in profile.patterns])
        self.pat_branch_code = np.array(
            [self.branches.index(p.branch_route_id) if p.branch_route_id else -1 for p in profile.patterns]
        )
        self.pat_dir_id = np.array([p.direction_id for p in profile.patterns], dtype=bool)
        # Vehicles: one flat table, with each route's slice.
        vid, vlabel, vconsist, self.vehicle_slice = [], [], [], {}
        for r in self.routes:
            pool = profile.vehicles.get(r) or [[f"{SYNTH_PREFIX}V-{r}", None, None]]
            self.vehicle_slice[r] = (len(vid), len(pool))
            for v in pool:
                vid.append(v[0]), vlabel.append(v[1]), vconsist.append(v[2])
        self.vehicle_id = pa.array(vid, pa.string())
        self.vehicle_label = pa.array(vlabel, pa.string())
        self.vehicle_consist = pa.array(vconsist, pa.string())

    def sample(self, quantiles: list[float], rng: np.random.Generator, n: int) -> np.ndarray:
        """Inverse-CDF draws from a quantile table (linear between quantiles)."""
        return np.interp(rng.random(n), self.q_grid, np.asarray(quantiles, dtype=float))


def _events_per_day(profile: SynthProfile, params: SynthParams) -> int:
    return int(params.events_per_day or profile.estimated_day_rows)


def _day_budgets(n_events: int, events_per_day: int) -> list[int]:
    days = max(1, math.ceil(n_events / max(1, events_per_day)))
    base, extra = divmod(n_events, days)
    return [base + (1 if d < extra else 0) for d in range(days)]


def _draw_trips(c: _Compiled, rng: np.random.Generator, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Patterns of the day's trips (in draw order) and how many positions each keeps."""
    mean_len = float((c.weights * c.lengths).sum())
    pats: list[np.ndarray] = []
    total = 0
    while total < n_rows:
        block = rng.choice(len(c.patterns), size=int((n_rows - total) / mean_len * 1.1) + 2, p=c.weights)
        pats.append(block)
        total += int(c.lengths[block].sum())
    pat = np.concatenate(pats)
    cum = np.cumsum(c.lengths[pat])
    last = int(np.searchsorted(cum, n_rows))  # first trip that reaches the budget
    pat = pat[: last + 1]
    keep = c.lengths[pat].copy()
    keep[last] = n_rows - (int(cum[last - 1]) if last > 0 else 0)  # the last trip may end early
    return pat, keep


def _headways(key: np.ndarray, when: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Seconds since the previous event with the same key (NaN for the first or invalid)."""
    out = np.full(len(when), np.nan)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        return out
    order = idx[np.lexsort((when[idx], key[idx]))]
    k, w = key[order], when[order]
    same = np.r_[False, k[1:] == k[:-1]]
    diff = np.r_[np.nan, np.diff(w).astype(float)]
    out[order] = np.where(same, diff, np.nan)
    return out


def _int_array(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """int64 Arrow array from floats/ints; NaN (or ~valid) becomes null."""
    values = np.asarray(values, dtype=float)
    mask = np.isnan(values) if valid is None else (~valid | np.isnan(values))
    return pa.array(np.where(mask, 0, np.round(values)).astype("int64"), pa.int64(), mask=mask)


def _generate_day(c: _Compiled, params: SynthParams, seed: int, day: int, budget: int) -> pa.Table:
    rng = np.random.default_rng(np.random.SeedSequence([seed, day]))
    date = dt.date.fromisoformat(params.start_date) + dt.timedelta(days=day)
    service_date = int(date.strftime("%Y%m%d"))
    origin = int(service_day_origin(pd.Series([pd.Timestamp(date)])).iloc[0].timestamp())
    prof = c.profile

    n_dups = int(round(budget * params.duplicate_rate))
    if n_dups == 0 and params.duplicate_rate > 0 and budget >= 1000:
        n_dups = 1  # small runs still exercise the duplicate path
    n_dups = min(n_dups, budget // 2)
    pat_of_trip, keep = _draw_trips(c, rng, budget - n_dups)
    n_trips = len(pat_of_trip)
    unscheduled = rng.random(n_trips) < prof.unscheduled_trip_rate

    parts: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "trip",
            "pos",
            "pat",
            "stop",
            "seq",
            "arr",
            "sched",
            "move",
            "dwell",
            "travel",
            "start",
            "sched_travel",
        )
    }
    for p_idx in np.unique(pat_of_trip):
        pattern = c.patterns[p_idx]
        trips = np.flatnonzero(pat_of_trip == p_idx)
        k, length = len(trips), len(pattern.stop_sequence)
        travel = np.asarray(pattern.travel_s, dtype=float)
        start = np.round(c.sample(pattern.start_quantiles, rng, k))
        sched = start[:, None] + np.cumsum(travel)[None, :]
        stop = np.empty((k, length), dtype=np.int64)
        for i, (choices, weights) in enumerate(zip(pattern.stop_choices, pattern.stop_weights)):
            codes = np.array([c.stop_code[s] for s in choices])
            if len(codes) == 1:
                stop[:, i] = codes[0]
            else:
                stop[:, i] = rng.choice(codes, size=k, p=np.asarray(weights) / sum(weights))
        model = prof.delay.get(pattern.route_id, prof.delay["*"])
        delay = np.empty((k, length))
        delay[:, 0] = c.sample(model.delay_quantiles, rng, k)
        for i in range(1, length):
            delay[:, i] = (
                model.mean_level
                + model.a * (delay[:, i - 1] - model.mean_level)
                + c.sample(model.residual_quantiles, rng, k)
            )
        arr = np.round(origin + sched + delay)
        for i in range(1, length):  # vehicles do not arrive before they left the previous stop
            arr[:, i] = np.maximum(arr[:, i], arr[:, i - 1] + max(10.0, round(0.35 * travel[i])))
        dwell = np.round(pattern.dwell_s * rng.lognormal(0.0, 0.5, size=(k, length)))
        gaps = np.c_[np.diff(arr, axis=1), np.full(k, np.nan)]
        dwell = np.minimum(dwell, np.maximum(gaps - 5, 0))  # last position: NaN (no departure)
        move = np.c_[np.full(k, np.nan), arr[:, :-1] + dwell[:, :-1]]
        parts["trip"].append(np.repeat(trips, length))
        parts["pos"].append(np.tile(np.arange(length), k))
        parts["pat"].append(np.full(k * length, p_idx))
        parts["stop"].append(stop.ravel())
        parts["seq"].append(np.tile(np.asarray(pattern.stop_sequence), k))
        parts["arr"].append(arr.ravel())
        parts["sched"].append(sched.ravel())
        parts["move"].append(move.ravel())
        parts["dwell"].append(dwell.ravel())
        parts["travel"].append((arr - move).ravel())
        parts["start"].append(np.repeat(start, length))
        parts["sched_travel"].append(np.tile(np.where(np.arange(length) == 0, np.nan, travel), k))
    cols = {name: np.concatenate(v) for name, v in parts.items()}
    kept = cols["pos"] < keep[cols["trip"]]
    cols = {name: v[kept] for name, v in cols.items()}
    n = len(cols["trip"])

    # Repeated stop visits: a second report of the same visit a few seconds later.
    if n_dups:
        dup = np.sort(rng.choice(n, size=n_dups, replace=False))
        cols = {name: np.r_[v, v[dup]] for name, v in cols.items()}
        cols["arr"][n:] += rng.integers(1, 30, size=n_dups)
        n += n_dups
    trip, pat = cols["trip"], cols["pat"]
    sched_ok = ~unscheduled[trip]
    arr_true = cols["arr"].copy()
    stop_ts = arr_true.copy()
    # Out-of-bounds delays (broken clocks, wrong service day) at the fitted rate.
    out = (rng.random(n) < prof.outlier_rate) & sched_ok
    if out.any() and prof.outlier_delays:
        stop_ts[out] = origin + cols["sched"][out] + rng.choice(np.asarray(prof.outlier_delays), size=int(out.sum()))
    missing = rng.random(n) < params.missing_timestamp_rate
    stop_ts[missing] = np.nan

    # Headways from the generated day itself (observed from arrivals, scheduled from the schedule).
    dir_id = c.pat_dir_id[pat].astype(np.int64)
    trunk_key = (c.pat_trunk_code[pat] * 2 + dir_id) * len(c.stop_ids) + cols["stop"]
    branch_code = c.pat_branch_code[pat]
    branch_key = (branch_code * 2 + dir_id) * len(c.stop_ids) + cols["stop"]
    has_branch = branch_code >= 0
    headway_trunk = _headways(trunk_key, arr_true, np.ones(n, dtype=bool))
    headway_branch = _headways(branch_key, arr_true, has_branch)
    sched_hw_trunk = _headways(trunk_key, cols["sched"], sched_ok)
    sched_hw_branch = _headways(branch_key, cols["sched"], sched_ok & has_branch)

    order = np.lexsort((cols["pos"], trip, arr_true))  # a feed in time order
    trip_ids = np.char.add(f"{SYNTH_PREFIX}{service_date}-", np.char.zfill(np.arange(n_trips).astype(str), 6))
    route_of_pat = np.array([c.route_code[p.route_id] for p in c.patterns])
    vehicle = np.empty(n_trips, dtype=np.int64)
    for r, (lo, size) in c.vehicle_slice.items():
        mine = route_of_pat[pat_of_trip] == c.route_code[r]
        vehicle[mine] = lo + rng.integers(0, size, size=int(mine.sum()))
    stop_count = c.lengths[pat_of_trip].astype(np.int16)

    o = order
    t, pt, st = trip[o], pat[o], cols["stop"][o]
    t_idx, p_idx_arr, s_idx = pa.array(t), pa.array(pt), pa.array(st)
    v_idx = pa.array(vehicle[t])
    sok = sched_ok[o]
    sched_val = cols["sched"][o]
    columns = {
        "stop_sequence": pa.array(cols["seq"][o].astype(np.int16), pa.int16()),
        "stop_id": c.stop_ids.take(s_idx),
        "parent_station": c.parent.take(s_idx),
        "move_timestamp": _int_array(cols["move"][o]),
        "stop_timestamp": _int_array(stop_ts[o]),
        "travel_time_seconds": _int_array(np.where(missing[o], np.nan, cols["travel"][o])),
        "dwell_time_seconds": _int_array(cols["dwell"][o]),
        "headway_trunk_seconds": _int_array(headway_trunk[o]),
        "headway_branch_seconds": _int_array(headway_branch[o]),
        "service_date": pa.array(np.full(n, service_date, dtype=np.int64), pa.int64()),
        "route_id": c.pat_route.take(p_idx_arr),
        "direction_id": pa.array(c.pat_dir_id[pt], pa.bool_()),
        "start_time": _int_array(cols["start"][o]),
        "vehicle_id": c.vehicle_id.take(v_idx),
        "branch_route_id": c.pat_branch.take(p_idx_arr),
        "trunk_route_id": c.pat_trunk.take(p_idx_arr),
        "stop_count": pa.array(stop_count[t], pa.int16()),
        "trip_id": pa.array(trip_ids).take(t_idx),
        "vehicle_label": c.vehicle_label.take(v_idx),
        "vehicle_consist": c.vehicle_consist.take(v_idx),
        "direction": c.pat_dir.take(p_idx_arr),
        "direction_destination": c.pat_dest.take(p_idx_arr),
        "scheduled_arrival_time": _int_array(sched_val, sok),
        "scheduled_departure_time": _int_array(sched_val, sok),
        "scheduled_travel_time": _int_array(cols["sched_travel"][o], sok),
        "scheduled_headway_branch": _int_array(sched_hw_branch[o]),
        "scheduled_headway_trunk": _int_array(sched_hw_trunk[o]),
    }
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in LAMP_2024_SCHEMA], schema=LAMP_2024_SCHEMA)


def generate(
    profile: SynthProfile, n_events: int, seed: int = 0, *, params: SynthParams | None = None, **overrides
) -> Iterator[pa.Table]:
    """Yield exactly ``n_events`` SYNTHETIC LAMP rows as tables, one service day (or chunk) at a time.

    Deterministic for (profile, n_events, seed, params): each day has its own random stream, so the
    output does not depend on how it is chunked. ``overrides`` set fields of :class:`SynthParams`.
    """
    if n_events < 1:
        raise ConfigError(f"n_events must be >= 1, got {n_events}")
    params = params or SynthParams(**overrides)
    c = _Compiled(profile)
    for day, budget in enumerate(_day_budgets(n_events, _events_per_day(profile, params))):
        table = _generate_day(c, params, seed, day, budget)
        step = params.chunk_rows or table.num_rows
        for lo in range(0, table.num_rows, step):
            yield table.slice(lo, step)


# --- files ------------------------------------------------------------------------------------


@dataclass
class SynthResult:
    """What ``write_synthetic`` wrote."""

    paths: list[str]
    rows_per_file: list[int]
    n_events: int
    seed: int
    service_days: int
    trips: int
    trips_split_across_files: int
    marker: str  # the SYNTHETIC.md path
    profile_summary: dict


def _file_boundaries(n_events: int, files: int, budgets: list[int]) -> list[int]:
    """Row where each file starts, kept away from day ends so that running trips straddle two files."""
    day_ends = np.cumsum(budgets)[:-1]
    margin = max(1, min(5000, min(budgets) // 4))
    bounds = [i * n_events // files for i in range(files + 1)]
    for i in range(1, files):
        near = day_ends[np.abs(day_ends - bounds[i]) < margin] if len(day_ends) else []
        if len(near):
            moved = int(near[0]) + margin
            if bounds[i - 1] < moved < bounds[i + 1]:
                bounds[i] = moved
    return bounds


def _marker_text(meta: dict) -> str:
    summary = meta["profile_summary"]
    return f"""# SYNTHETIC DATA -- not real MBTA observations

These files were generated by `mbta_ray.synth` for scale benchmarks. Every `trip_id` starts with
`{SYNTH_PREFIX}`; every parquet file carries the schema-metadata key `{METADATA_KEY.decode()}`.
Do not use them to train or evaluate a model meant for real service.

- events: {meta["n_events"]:,} in {len(meta["files"])} file(s), {meta["service_days"]} service day(s)
  from {meta["params"]["start_date"]}; trips: {meta["trips"]:,}, of which {meta["trips_split_across_files"]:,}
  continue from one file into the next (on purpose: the ETL must rejoin them)
- seed: {meta["seed"]}; generator parameters and the full fitted profile: `{PARAMS_FILE}`
- fitted to: `{summary["source"]}` (sha256 {summary["source_sha256"]}), {summary["routes"]} routes,
  {summary["patterns"]} route patterns, {summary["stops"]} stops
- injected for the quarantine paths: missing stop_timestamp ({meta["params"]["missing_timestamp_rate"]:.2%}),
  repeated stop visits ({meta["params"]["duplicate_rate"]:.3%}), out-of-bounds delays (fitted rate),
  unscheduled trips (fitted rate)

Regenerate: `mbta-ray data synth --events {meta["n_events"]} --seed {meta["seed"]} --files {len(meta["files"])} --out <dir>`
"""


def write_synthetic(
    out: str | Path,
    n_events: int,
    seed: int = 0,
    files: int = 1,
    *,
    profile: SynthProfile | None = None,
    lamp_path: str | Path = DEFAULT_LAMP_SAMPLE,
    params: SynthParams | None = None,
    row_group_rows: int = 131_072,
    **overrides,
) -> SynthResult:
    """Write ``n_events`` SYNTHETIC LAMP events into ``files`` parquet files, streaming by day.

    ``out`` is a folder (files ``lamp_synth_part-NNN.parquet`` and ``SYNTHETIC.md`` go in it) or,
    with ``files=1``, a ``.parquet`` path (the marker goes beside it as ``<stem>.SYNTHETIC.md``).
    """
    if files < 1 or files > n_events:
        raise ConfigError(f"files must be between 1 and n_events ({n_events}), got {files}")
    params = params or SynthParams(**overrides)
    profile = profile or fit_profile(lamp_path)
    out = Path(out)
    if out.suffix == ".parquet":
        if files != 1:
            raise ConfigError("a .parquet output path takes files=1; give a folder for several files")
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = [out]
        marker = out.with_name(out.stem + "." + MARKER_FILE)
        params_path = out.with_name(out.stem + "." + PARAMS_FILE)
    else:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"lamp_synth_part-{i:03d}.parquet" for i in range(files)]
        marker, params_path = out / MARKER_FILE, out / PARAMS_FILE

    budgets = _day_budgets(n_events, _events_per_day(profile, params))
    bounds = _file_boundaries(n_events, files, budgets)
    file_meta = {
        "synthetic": True,
        "generator": "mbta_ray.synth",
        "seed": seed,
        "n_events": n_events,
        "profile_source": profile.source["file"],
        "profile_source_sha256": profile.source["sha256"],
        "note": "SYNTHETIC benchmark data, not real MBTA observations",
    }
    schema = LAMP_2024_SCHEMA.with_metadata({METADATA_KEY: json.dumps(file_meta).encode()})

    first_file: dict[str, int] = {}
    straddling: set[str] = set()
    rows = [0] * files
    written = 0
    i = 0
    writer = pq.ParquetWriter(paths[0], schema)
    try:
        for chunk in generate(profile, n_events, seed, params=params):
            while chunk.num_rows:
                room = bounds[i + 1] - written
                if room == 0:
                    writer.close()
                    i += 1
                    writer = pq.ParquetWriter(paths[i], schema)
                    continue
                piece, chunk = chunk.slice(0, room), chunk.slice(room)
                writer.write_table(piece, row_group_size=row_group_rows)
                for trip in pc.unique(piece["trip_id"]).to_pylist():
                    seen = first_file.setdefault(trip, i)
                    if seen != i:
                        straddling.add(trip)
                rows[i] += piece.num_rows
                written += piece.num_rows
    finally:
        writer.close()

    meta = {
        "synthetic": True,
        "generator": "mbta_ray.synth",
        "n_events": n_events,
        "seed": seed,
        "params": {**asdict(params), "events_per_day": _events_per_day(profile, params)},
        "service_days": len(budgets),
        "files": [{"path": p.name, "rows": r} for p, r in zip(paths, rows)],
        "trips": len(first_file),
        "trips_split_across_files": len(straddling),
        "profile_summary": profile.summary(),
        "profile": profile.to_dict(),
    }
    params_path.write_text(json.dumps(meta, indent=1))
    marker.write_text(_marker_text(meta))
    return SynthResult(
        [str(p) for p in paths],
        rows,
        n_events,
        seed,
        len(budgets),
        len(first_file),
        len(straddling),
        str(marker),
        profile.summary(),
    )


def is_synthetic(path: str | Path) -> bool:
    """True when a parquet file was written by this module (its schema metadata says so)."""
    meta = pq.read_schema(path).metadata or {}
    return METADATA_KEY in meta and json.loads(meta[METADATA_KEY]).get("synthetic") is True


__all__ = [
    "SynthProfile",
    "SynthParams",
    "SynthResult",
    "fit_profile",
    "generate",
    "write_synthetic",
    "is_synthetic",
    "LAMP_2024_SCHEMA",
    "SYNTH_PREFIX",
    "METADATA_KEY",
]
