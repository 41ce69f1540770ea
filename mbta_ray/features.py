"""Turn stop events into example rows: (u -> s) pairs and their features.

``pair_events`` is the ETL half (it needs observed trips). ``compute_features`` is shared: the ETL
calls it per batch of pairs and the server per batch of requests, so the two cannot drift apart.
Statistics learned from the training split (``segment_medians``) travel with the dataset and model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mbta_ray.columns import codes_in
from mbta_ray.errors import DataError
from mbta_ray.gtfs import Stops
from mbta_ray.schema import EXAMPLE_COLUMNS, TARGET, TRIP_KEY
from mbta_ray.timeutil import day_of_week, is_holiday, seconds_into_service_day, tod_sin_cos

#: Columns that identify a segment for the historical median.
SEGMENT_KEY = ["route_id", "from_stop_id", "to_stop_id"]
HIST_MEDIAN = "hist_median_travel_s"
PATH_TRAVEL = "path_travel_s"
PROGRESS = "progress"
#: Where the vehicle last reported itself once it left u (``realtime.features`` or a request's
#: ``position``): the inputs of ``progress``, not features themselves.
POSITION_COLUMNS = ("vehicle_lat", "vehicle_lon")


def trip_starts(trip: np.ndarray) -> np.ndarray:
    """True at the first row of each trip, for rows sorted by trip (the one trip-boundary rule)."""
    return np.r_[True, trip[1:] != trip[:-1]] if len(trip) else np.zeros(0, dtype=bool)


def pair_events(events: pd.DataFrame, k: int) -> pd.DataFrame:
    """Pair every event u of a trip with each of the next ``k`` observed events s of that trip.

    ``events`` must hold whole trips of good events, sorted by trip and stop sequence (as
    ``validate.check_trips`` leaves them). Returns the raw pair columns ``compute_features`` needs.
    """
    n = len(events)
    if n == 0:
        return pd.DataFrame(columns=list(_PAIR_COLUMNS))
    starts = trip_starts(events[TRIP_KEY].to_numpy())
    trip_id_num = np.cumsum(starts) - 1
    first_index = np.flatnonzero(starts)
    pos = np.arange(n) - first_index[trip_id_num]
    delay = (events["actual_arrival"] - events["scheduled_arrival"]).dt.total_seconds().to_numpy()
    delay_prev = np.where(pos > 0, np.r_[np.nan, delay[:-1]], np.nan)
    trip_start = first_index[trip_id_num]  # row of each row's trip start

    u, s, ahead = pair_positions(events, k)
    if len(u) == 0:
        return pd.DataFrame(columns=list(_PAIR_COLUMNS))

    def take(col: str, idx: np.ndarray):
        # The column's own array type: to_numpy() would turn strings and zoned times into Python
        # objects that the frame below then parses back (most of the pairing's time at 10M events).
        return events[col].array.take(idx)

    out = pd.DataFrame(
        {
            "source": take("source", u),
            TRIP_KEY: take(TRIP_KEY, u),
            "trip_id": take("trip_id", u),
            "service_date": take("service_date", u),
            "vehicle_id": take("vehicle_id", u),
            "mode": take("mode", u),
            "route_id": take("route_id", u),
            "direction_id": take("direction_id", u),
            "from_stop_id": take("stop_id", u),
            "to_stop_id": take("stop_id", s),
            "hop_from_stop_id": take("stop_id", s - 1),  # the observed stop before s (u when s is next)
            "from_stop_sequence": take("stop_sequence", u),
            "to_stop_sequence": take("stop_sequence", s),
            "stops_ahead": ahead,
            "actual_arrival_u": take("actual_arrival", u),
            "scheduled_arrival_u": take("scheduled_arrival", u),
            "scheduled_arrival_s": take("scheduled_arrival", s),
            "actual_arrival_s": take("actual_arrival", s),
            "delay_prev": delay_prev[u],
            "headway_u": take("headway_seconds", u),
            "scheduled_headway_u": take("scheduled_headway_seconds", u),
            "trip_start": take("actual_arrival", trip_start[u]),
        }
    )
    return out


def pair_positions(events: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions (u, s) and stops ahead of the pairs ``pair_events`` builds, in its order.

    For callers that need a few pair columns only (the training-split segment medians): building
    them from positions is much cheaper than the full pair frame.
    """
    n = len(events)
    if n == 0:
        return np.array([], "int64"), np.array([], "int64"), np.array([], "int16")
    starts = trip_starts(events[TRIP_KEY].to_numpy())
    trip_num = np.cumsum(starts) - 1
    first_index = np.flatnonzero(starts)
    sizes = np.diff(np.r_[first_index, n])
    remaining = sizes[trip_num] - 1 - (np.arange(n) - first_index[trip_num])
    u_parts, ahead_parts = [], []
    for j in range(1, k + 1):
        u = np.flatnonzero(remaining >= j)
        if len(u) == 0:
            break
        u_parts.append(u)
        ahead_parts.append(np.full(len(u), j, dtype="int16"))
    if not u_parts:
        return np.array([], "int64"), np.array([], "int64"), np.array([], "int16")
    u, ahead = np.concatenate(u_parts), np.concatenate(ahead_parts)
    order = np.lexsort((ahead, u))  # trip order, then stops ahead
    u, ahead = u[order], ahead[order]
    return u, u + ahead, ahead


_PAIR_COLUMNS = (
    "source", TRIP_KEY, "trip_id", "service_date", "vehicle_id", "mode", "route_id", "direction_id",
    "from_stop_id", "to_stop_id", "hop_from_stop_id", "from_stop_sequence", "to_stop_sequence", "stops_ahead",
    "actual_arrival_u", "scheduled_arrival_u", "scheduled_arrival_s", "actual_arrival_s",
    "delay_prev", "headway_u", "scheduled_headway_u", "trip_start",
)  # fmt: skip


def expected_pair_count(trip_sizes: np.ndarray, k: int) -> int:
    """Pairs that ``pair_events`` must produce for trips of these sizes (an independent count)."""
    n = np.asarray(trip_sizes, dtype="int64")
    full = np.clip(n - k, 0, None)  # events with k or more later events give k pairs each
    part = np.minimum(n, k)  # the last min(n, k) events give 0, 1, ..., min(n,k)-1
    return int((full * k + part * (part - 1) // 2).sum())


def compute_features(
    pairs: pd.DataFrame, stops: Stops | None = None, segment_medians: pd.DataFrame | pd.Series | None = None
) -> pd.DataFrame:
    """Add the model features (``schema.FEATURES``) and, where s was observed, the target.

    Needs per row: mode, route_id, direction_id, from/to_stop_id, stops_ahead, service_date,
    actual_arrival_u, scheduled_arrival_u/_s (may be null), delay_prev, headway_u,
    scheduled_headway_u. Missing inputs give NaN features, never guessed values.
    """
    out = pairs.copy()
    arrival_u = pd.to_datetime(out["actual_arrival_u"], utc=True)
    sched_u = pd.to_datetime(out["scheduled_arrival_u"], utc=True)
    sched_s = pd.to_datetime(out["scheduled_arrival_s"], utc=True)
    service_seconds = seconds_into_service_day(out["service_date"], arrival_u)
    out["tod_sin"], out["tod_cos"] = tod_sin_cos(service_seconds)
    out["day_of_week"] = day_of_week(out["service_date"])
    out["holiday"] = is_holiday(out["service_date"])
    out["scheduled_seconds_ahead"] = (sched_s - sched_u).dt.total_seconds()
    out["delay_u"] = (arrival_u - sched_u).dt.total_seconds()
    out["has_schedule"] = out["scheduled_seconds_ahead"].notna().astype("int8")
    out["distance_m"] = stops.distance_m(out["from_stop_id"], out["to_stop_id"]) if stops is not None else np.nan
    for col in ("delay_prev", "headway_u", "scheduled_headway_u"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    if "actual_arrival_s" in out.columns:
        out[TARGET] = (pd.to_datetime(out["actual_arrival_s"], utc=True) - arrival_u).dt.total_seconds()
    out = add_segment_medians(out, segment_medians)
    out = add_realtime_defaults(out)
    out[PATH_TRAVEL] = path_travel(out, segment_medians, stops)
    out[PROGRESS] = progress(out, stops)
    return out


#: The real-time feature values of a row that has none (a prediction at the arrival at u, nothing
#: known about other vehicles): what a client that sends no real-time input gets.
REALTIME_DEFAULTS = {
    "recent_travel_s": np.nan,
    "recent_travel_n": 0.0,
    "recent_travel_age_s": np.nan,
    "recent_hop_s": np.nan,
    "elapsed_s": 0.0,
    "departed_s": np.nan,
    "headway_ahead_s": np.nan,
}


def add_realtime_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """The real-time columns as float64, filled with ``REALTIME_DEFAULTS`` where absent or null
    (the ETL and the race compute them with ``realtime.features``; a request may send them)."""
    for col, default in REALTIME_DEFAULTS.items():
        values = pd.to_numeric(df[col], errors="coerce") if col in df.columns else pd.Series(np.nan, index=df.index)
        df[col] = values.astype("float64").fillna(default) if not np.isnan(default) else values.astype("float64")
    return df


def median_lookup(medians: pd.DataFrame) -> pd.Series:
    """The segment medians as a Series keyed by ``SEGMENT_KEY``, for repeated lookups (serving)."""
    keyed = medians.set_index(SEGMENT_KEY)[HIST_MEDIAN].astype("float64")
    if not keyed.index.is_unique:
        raise DataError(f"segment medians repeat a segment ({', '.join(SEGMENT_KEY)})")
    return keyed


def add_segment_medians(df: pd.DataFrame, medians: pd.DataFrame | pd.Series | None) -> pd.DataFrame:
    """Join the training split's median travel time per segment (NaN for unseen segments).

    ``medians`` is the medians table or its ``median_lookup`` (built once, for many small calls).
    """
    df = df.drop(columns=[HIST_MEDIAN], errors="ignore")
    if medians is None or medians.empty:
        df[HIST_MEDIAN] = np.nan
        return df
    if isinstance(medians, pd.Series):
        keys = pd.MultiIndex.from_arrays(
            [df[c].astype(medians.index.levels[i].dtype) for i, c in enumerate(SEGMENT_KEY)], names=SEGMENT_KEY
        )
        df[HIST_MEDIAN] = medians.reindex(keys).to_numpy(dtype="float64")
        return df
    df[HIST_MEDIAN] = _segment_lookup(medians, df)
    return df


def _segment_lookup(medians: pd.DataFrame, df: pd.DataFrame) -> np.ndarray:
    """``medians``' HIST_MEDIAN for each row of ``df`` by SEGMENT_KEY (NaN where absent): a left
    join done on integer codes, since a merge on three string columns hashed every example row's
    strings as Python objects (the ETL's biggest feature cost)."""
    table_key, row_key = np.zeros(len(medians), "int64"), np.zeros(len(df), "int64")
    missing = np.zeros(len(df), dtype=bool)
    for col in SEGMENT_KEY:
        levels = pd.Index(pd.unique(medians[col].astype("string")), dtype="string")
        row_codes = codes_in(levels, df[col])
        missing |= row_codes < 0
        table_key = table_key * (len(levels) + 1) + codes_in(levels, medians[col])
        row_key = row_key * (len(levels) + 1) + row_codes
    keys = pd.Index(table_key)
    if not keys.is_unique:
        raise DataError(f"segment medians repeat a segment ({', '.join(SEGMENT_KEY)})")
    where = np.where(missing, -1, keys.get_indexer(row_key))
    values = np.r_[medians[HIST_MEDIAN].to_numpy(dtype="float64"), np.nan]
    return values[where]  # -1 picks the NaN


def path_travel(df: pd.DataFrame, medians: pd.DataFrame | pd.Series | None, stops: Stops | None = None) -> np.ndarray:
    """Travel u -> s as the sum of its hops (stop before s -> s, ``hop_from_stop_id``): each hop's
    recent time by other vehicles (``recent_hop_s``) where known at the moment, else the training
    split's median for the hop, else the hop's GTFS distance at its route's typical pace
    (``hop_by_distance``). NaN where a hop has none of these.

    Rows must come as the ETL and the server build them: the stops ahead of one u in order, each
    group starting at stops_ahead 1 (a row that does not continue its group gets NaN). Why: a
    whole u -> s traversal by other vehicles is rare for far stops in a short history, while its
    short hops are done every few minutes (measured on the embedded hour: chained hops beat the
    direct u -> s median at every horizon).
    """
    if "hop_from_stop_id" not in df.columns or len(df) == 0:
        return np.full(len(df), np.nan)
    hops = pd.DataFrame(
        {
            "route_id": df["route_id"].array,
            "from_stop_id": df["hop_from_stop_id"].array,
            "to_stop_id": df["to_stop_id"].array,
        }
    )  # .array: arrow strings stay arrow strings
    hist = add_segment_medians(hops, medians)[HIST_MEDIAN].to_numpy(dtype="float64")
    recent = pd.to_numeric(df["recent_hop_s"], errors="coerce").to_numpy(dtype="float64")
    hop = np.where(np.isfinite(recent), recent, hist)
    unknown = ~np.isfinite(hop)
    if unknown.any() and stops is not None:
        hop[unknown] = hop_by_distance(hops[unknown], medians, stops)
    group, in_order = _stop_groups(df)
    bad = pd.Series(~np.isfinite(hop) | ~in_order).groupby(group).cummax()
    total = pd.Series(np.where(np.isfinite(hop), hop, 0.0)).groupby(group).cumsum()
    return np.where(bad.to_numpy(), np.nan, total.to_numpy())


def hop_by_distance(hops: pd.DataFrame, medians: pd.DataFrame | pd.Series | None, stops: Stops) -> np.ndarray:
    """Seconds for hops (``SEGMENT_KEY`` columns) that have no training median: their GTFS
    distance times the route's median pace over its training segments (seconds per metre, dwells
    included), else the median pace of all routes. Why: a stop the training data never saw (a
    platform id, a line closed that day) would otherwise leave the whole path unknown and the
    prior at the training mean of all segments (703 s for one stop, measured on the Red line).
    NaN where a stop has no coordinates or no pace is known."""
    if medians is None or len(medians) == 0 or len(hops) == 0:
        return np.full(len(hops), np.nan)
    table = medians.reset_index() if isinstance(medians, pd.Series) else medians
    metres = stops.distance_m(table["from_stop_id"], table["to_stop_id"])
    with np.errstate(invalid="ignore", divide="ignore"):
        pace = pd.Series(table[HIST_MEDIAN].to_numpy(dtype="float64") / metres, index=table["route_id"].to_numpy())
    pace = pace[np.isfinite(pace.to_numpy()) & (metres > 0)]
    if pace.empty:
        return np.full(len(hops), np.nan)
    by_route = pace.groupby(level=0).median()
    route_pace = by_route.reindex(hops["route_id"].to_numpy()).to_numpy(dtype="float64")
    route_pace = np.where(np.isfinite(route_pace), route_pace, float(pace.median()))
    return route_pace * stops.distance_m(hops["from_stop_id"], hops["to_stop_id"])


def _stop_groups(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group (the stops ahead of one u, starting at stops_ahead 1) and whether the row
    continues its group in order (False: the rows are not one u's stops in order)."""
    ahead = pd.to_numeric(df["stops_ahead"], errors="coerce").to_numpy(dtype="float64")
    start = ahead == 1
    group = np.cumsum(start)
    continues = np.r_[False, ahead[1:] == ahead[:-1] + 1]
    bad = pd.Series(~(start | continues) | (group == 0)).groupby(group).cummax().to_numpy()
    return group, ~bad


def progress(df: pd.DataFrame, stops: Stops | None) -> np.ndarray:
    """How far the vehicle has come from u towards the next stop, 0..1 by straight-line distance,
    from its latest reported position (``vehicle_lat`` / ``vehicle_lon``, set once it has left u).
    The same for every stop ahead of one u. NaN without a position (still at u, or a source with
    none), without GTFS coordinates, or where rows are not one u's stops in order."""
    if stops is None or len(df) == 0 or not set(POSITION_COLUMNS) <= set(df.columns):
        return np.full(len(df), np.nan)
    group, in_order = _stop_groups(df)
    # The next stop is the to-stop of the group's first row (stops_ahead 1); none before any group.
    starts = np.flatnonzero(pd.to_numeric(df["stops_ahead"], errors="coerce").to_numpy() == 1)
    first_row = np.where(group > 0, starts[np.maximum(group - 1, 0)] if len(starts) else -1, -1)
    next_stop = pd.Series(df["to_stop_id"].astype("string").array.take(first_row, allow_fill=True))
    lat, lon = (pd.to_numeric(df[c], errors="coerce").to_numpy(dtype="float64") for c in POSITION_COLUMNS)
    hop_m = stops.distance_m(df["from_stop_id"].reset_index(drop=True), next_stop)
    left_m = stops.distance_to_m(next_stop, lat, lon)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.clip(1.0 - left_m / hop_m, 0.0, 1.0)
    return np.where(in_order & (hop_m > 0) & np.isfinite(share), share, np.nan)


def travel_prior(df: pd.DataFrame, fallback_s: float) -> np.ndarray:
    """A prior travel time u -> s that the models learn a correction to (seconds, float64).

    The chained hop times (``path_travel_s``: other vehicles' recent hops, else their training
    medians) where known, else persistence (scheduled s - scheduled u, i.e. the delay at u carries
    over) where both stops have a schedule, else the training split's median for the segment, else
    ``fallback_s``. Learning the residual from this prior, instead of travel time from scratch, is
    what lets a model beat the baselines on held-out hours: the prior carries what the line is doing
    now (and the per-segment history) to segments and times of day the training rows cover thinly.
    The path comes first because a live client has no schedule for most trips, and a prior that
    means the same with and without one keeps training and serving alike.
    """
    sched = pd.to_numeric(df["scheduled_seconds_ahead"], errors="coerce").to_numpy(dtype="float64")
    hist = pd.to_numeric(df[HIST_MEDIAN], errors="coerce").to_numpy(dtype="float64")
    path = (
        pd.to_numeric(df[PATH_TRAVEL], errors="coerce").to_numpy(dtype="float64")
        if PATH_TRAVEL in df.columns
        else np.full(len(df), np.nan)
    )
    prior = np.where(np.isfinite(path), path, np.where(np.isfinite(sched), sched, hist))
    return np.where(np.isfinite(prior), prior, float(fallback_s))


def segment_medians(pairs: pd.DataFrame) -> pd.DataFrame:
    """Median travel seconds per (route, u, s) over ``pairs`` (pass the training split only)."""
    grouped = pairs.groupby(SEGMENT_KEY, observed=True, sort=True)[TARGET]
    return grouped.agg(hist_median_travel_s="median", n="size").reset_index()


#: The column of ``travel_counts``: how many pairs of a segment took that travel time.
TRAVEL_COUNT = "pairs"


def travel_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """How many of ``pairs`` (SEGMENT_KEY + TARGET) took each travel time per segment. Counts of
    disjoint sets of pairs add up, so parts computed apart (the ETL's groups of buckets) combine
    into the exact ``segment_medians`` (``medians_from_counts``) without gathering every pair:
    travel times are whole seconds, so a segment has a few hundred distinct values, not its
    thousands of pairs."""
    keys = SEGMENT_KEY + [TARGET]
    return pairs.groupby(keys, observed=True, sort=False).size().rename(TRAVEL_COUNT).reset_index()


def medians_from_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """``segment_medians``' table from ``travel_counts`` of any parts: per segment the median
    (the mean of the two middle values for an even count, as pandas' median) and n."""
    counts = counts.groupby(SEGMENT_KEY + [TARGET], observed=True, sort=True)[TRAVEL_COUNT].sum().reset_index()
    if counts.empty:
        # The dtypes a non-empty result has (the keys' are the input's), so parts concatenate.
        return counts[SEGMENT_KEY].assign(**{HIST_MEDIAN: np.array([], "float64"), "n": np.array([], "int64")})
    n_rows = counts[TRAVEL_COUNT].to_numpy(dtype="int64")
    travel = counts[TARGET].to_numpy(dtype="float64")
    cum = np.cumsum(n_rows)  # rows sorted by segment, then travel: positions in the expanded order
    group = counts.groupby(SEGMENT_KEY, observed=True, sort=False).ngroup().to_numpy()
    start = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    n = np.add.reduceat(n_rows, start)
    base = cum[start] - n_rows[start]
    lo = travel[np.searchsorted(cum, base + (n - 1) // 2, side="right")]
    hi = travel[np.searchsorted(cum, base + n // 2, side="right")]
    out = counts.iloc[start][SEGMENT_KEY].reset_index(drop=True)
    out[HIST_MEDIAN] = (lo + hi) / 2
    out["n"] = n
    return out


def example_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Columns of an example row, in schema order (features, target, meta)."""
    return df[[c for c in EXAMPLE_COLUMNS if c in df.columns]]


__all__ = [
    "trip_starts",
    "pair_events",
    "travel_prior",
    "path_travel",
    "hop_by_distance",
    "progress",
    "pair_positions",
    "compute_features",
    "segment_medians",
    "travel_counts",
    "medians_from_counts",
    "expected_pair_count",
    "add_segment_medians",
    "add_realtime_defaults",
    "median_lookup",
    "example_frame",
]
