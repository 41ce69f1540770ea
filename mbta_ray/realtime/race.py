"""The race: our model against MBTA's own published predictions, on the same moments, trips and stops.

``run`` replays VehiclePositions into a ``NetworkState`` and, at each TripUpdates snapshot in the
window (default: the first of each minute, as MBTA's prediction_analyzer polls), takes every subway
stop MBTA predicted 0-30 min ahead for a trip in progress (the vehicle has reported a position on
that trip at or before the moment) that has not yet arrived there (as known at the moment). The
actual arrival is the first STOPPED_AT of that trip at that stop in the whole replay. Three
predictions per row, each from what was known at the moment only:

- ``mbta``: MBTA's published arrival time;
- ``model``: the registry's model, from the trip's last arrival u known at the moment (the same
  request the API takes: route, direction, u, its arrival, the stops ahead in order, and the
  real-time inputs from the state: the moment, the headway to the vehicle ahead, when it left u and
  where it is since, each segment's and hop's recent travel time by other vehicles);
- ``recent_segment``: the last arrival at u + the median u -> s travel time of the last 5 other
  vehicles that did u -> s (known at the moment).
A prediction for a vehicle that has not arrived is never earlier than the moment itself (for the
model and the rule; MBTA publishes its own); the model's arrivals along a trip never go backwards,
the next stop is anchored on where the vehicle is (on its way there: the last vehicles' time from
there; standing at a stop: their stay and run), and each stop after it follows the stop before by
the hop's recent time where other vehicles did it, and the times far ahead are published a little
early (``requests.published_arrivals``: what the live service publishes; race.json also scores the
times before that shift, as ``model_expected``). The stops ahead of a trip, in order, come from the trip's TripUpdates
stop list at the moment (its pattern, which static GTFS would also give), never from MBTA's times.
Rows are binned by MBTA's predicted horizon and scored on MBTA's accuracy windows.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mbta_ray.errors import ConfigError, DataError
from mbta_ray.evaluate import HORIZON_BINS, accurate_in_bins, horizon_bin
from mbta_ray.realtime import feeds
from mbta_ray.realtime.features import realtime_features
from mbta_ray.realtime.requests import expected_arrivals, rider_time, trip_start, vehicle_request
from mbta_ray.realtime.state import NetworkState, trip_key
from mbta_ray.schema import mode_for_route
from mbta_ray.timeutil import iso_z, parse_utc

#: Predictions further ahead than this are out of the race (MBTA's standard stops at 30 min).
MAX_HORIZON_S = 1800
#: VehiclePositions wanted before the first moment: the anchors and the recent hops come from other
#: vehicles' last traversals, and with less the model falls back on itself (bench/RESULTS.md, the
#: race by window: with 5-19 min its MAE trails MBTA's in every bin up to 12 min, with 25 min it leads).
MIN_HISTORY_S = 1200
METHODS = ("mbta", "model", "recent_segment")


@dataclass
class RaceResult:
    """The race.json document and the scored rows behind it."""

    summary: dict
    rows: pd.DataFrame = field(repr=False)


def parse_time(value: str, option: str) -> int:
    """An ISO time (with offset, or UTC when none) as epoch seconds; a clear error naming the option."""
    return int(parse_utc(value, option).timestamp())


# --- steps ---------------------------------------------------------------------------------------


def moments(trip_updates: pd.DataFrame, start: int | None, end: int | None, last_allowed: int) -> np.ndarray:
    """The first TripUpdates snapshot of each minute within [start, end) and <= last_allowed."""
    snaps = np.sort(trip_updates["feed_timestamp"].unique())
    keep = snaps <= last_allowed
    if start is not None:
        keep &= snaps >= start
    if end is not None:
        keep &= snaps < end
    snaps = snaps[keep]
    minute = snaps // 60
    return snaps[np.r_[True, minute[1:] != minute[:-1]]] if len(snaps) else snaps


def rows_in_scope(trip_updates: pd.DataFrame, at: np.ndarray, state: NetworkState) -> tuple[pd.DataFrame, dict]:
    """MBTA's subway predictions 0-30 min ahead at each moment, with the actual arrival, the trip's
    progress, and counts of what is left out and why."""
    tu = trip_updates[trip_updates["feed_timestamp"].isin(at)]
    tu = tu[(mode_for_route(tu["route_id"]) == "subway").to_numpy() & tu["arrival_time"].notna().to_numpy()]
    horizon = tu["arrival_time"] - tu["feed_timestamp"]
    matched = tu[(horizon >= 0) & (horizon <= MAX_HORIZON_S)].copy()
    counts = {"mbta_matched": len(matched), "in_scope": 0, "scored": 0, "not_started": 0, "no_actual": 0}
    counts["already_arrived"] = 0
    keep, actual = [], []
    matched["trip_key"] = [trip_key(*k) for k in zip(matched["start_date"], matched["route_id"], matched["trip_id"])]
    for r in matched.itertuples(index=False):
        key = r.trip_key
        seq = None if math.isnan(r.stop_sequence) else r.stop_sequence
        if state.position(key, r.feed_timestamp) is None:
            counts["not_started"] += 1
            keep.append(False)
            actual.append(np.nan)
            continue
        if state.arrival_at(key, r.stop_id, r.feed_timestamp, seq) is not None:
            counts["already_arrived"] += 1
            keep.append(False)
            actual.append(np.nan)
            continue
        counts["in_scope"] += 1
        arrival = state.arrival_at(key, r.stop_id, math.inf, seq)
        keep.append(arrival is not None)
        actual.append(float(arrival.time) if arrival is not None else np.nan)
        counts["no_actual" if arrival is None else "scored"] += 1
    matched["actual"] = actual
    scope = matched[np.asarray(keep, dtype=bool)].copy()
    scope["horizon_s"] = scope["arrival_time"] - scope["feed_timestamp"]
    scope["bin"] = horizon_bin(scope["horizon_s"])
    return scope.reset_index(drop=True), counts


def recent_segment(scope: pd.DataFrame, state: NetworkState) -> np.ndarray:
    """Last arrival at u + the ``recent_travel_s`` feature for u -> s: the median travel time of the
    last ``realtime.features.RECENT_N`` other vehicles (NaN: none known)."""
    out = np.full(len(scope), np.nan)
    for i, r in enumerate(scope.itertuples(index=False)):
        t = r.feed_timestamp
        last = state.last_arrival(r.trip_key, t)
        if last is None:
            continue
        query = pd.DataFrame(
            {
                "trip_key": [r.trip_key],
                "route_id": [r.route_id],
                "direction_id": [_direction(r.direction_id, state.position(r.trip_key, t))],
                "from_stop_id": [last.stop_id],
                "from_stop_sequence": [last.stop_sequence],
                "to_stop_id": [r.stop_id],
                "arrival_u": [last.time],
                "moment": [t],
            }
        )
        recent = realtime_features(state, query)["recent_travel_s"].iloc[0]
        if np.isfinite(recent):
            out[i] = max(float(t), last.time + float(recent))
    return out


def model_predictions(
    scope: pd.DataFrame, trip_updates: pd.DataFrame, state: NetworkState, runner
) -> tuple[np.ndarray, np.ndarray]:
    """The model's arrival time for each row as published (``requests.published_arrivals``), and as
    expected before it is told to riders (``requests.expected_arrivals``); NaN where it cannot answer."""
    published, expected = np.full(len(scope), np.nan), np.full(len(scope), np.nan)
    requests, targets, leads = model_requests(scope, trip_updates, state, runner)
    for row, (t, arrival) in leads.items():  # u itself, where the trip starts from an expected arrival
        expected[row], published[row] = arrival, rider_time(arrival, t)
    if not requests:
        return published, expected
    for response, (t, key, where) in zip(runner.predict(requests), targets, strict=True):
        for arrival, row in zip(expected_arrivals(state, key, t, response), where, strict=True):
            if row is not None:
                expected[row] = arrival
                published[row] = rider_time(arrival, t)  # what published_arrivals gives, from the same times
    return published, expected


def model_requests(
    scope: pd.DataFrame, trip_updates: pd.DataFrame, state: NetworkState, runner
) -> tuple[list, list, dict[int, tuple[int, float]]]:
    """One API request per trip and moment (where the trip starts from then, ``requests.trip_start``:
    its last arrival u, or the one its vehicle is on its way to make; its stops after u in order; the
    real-time inputs from the state), and for each the moment, the trip and the scope row of each
    stop ahead (None for a stop not raced); and the scope rows of the u's still ahead, with the
    moment and the expected arrival there (scored where the model answers the stop after u: a trip
    heading to the last stop of its list is not, as the live feed does not publish it)."""
    stop_lists = {
        k: g.sort_values("stop_sequence", kind="stable")  # NaN sequences keep the feed's order
        for k, g in trip_updates[trip_updates["feed_timestamp"].isin(scope["feed_timestamp"].unique())].groupby(
            ["feed_timestamp", "trip_id"], sort=False
        )
    }
    requests, targets, leads = [], [], {}
    for (t, trip), rows in scope.groupby(["feed_timestamp", "trip_id"], sort=False):
        first = rows.iloc[0]
        last = trip_start(state, first["trip_key"], t)
        if last is None:
            continue
        # u still ahead (its arrival expected, not seen): its own row, if raced, is that arrival,
        # scored where the model answers the stops after it (as the live service publishes it).
        lead = _row_of(rows, last) if last.expected else None
        listed = _after(stop_lists[(t, trip)], last)
        wanted = dict(zip(zip(rows["stop_id"], _visit(rows["stop_sequence"])), rows.index))
        where = [wanted.get(k) for k in zip(listed["stop_id"], _visit(listed["stop_sequence"]))]
        raced = [i for i, w in enumerate(where) if w is not None]
        where = where[: raced[-1] + 1 if raced else int(lead is not None)]  # no stop past the last one raced
        if not where:
            continue
        stop_ids = listed["stop_id"].iloc[: len(where)].tolist()
        direction = _direction(first["direction_id"], state.position(first["trip_key"], t))
        if direction is None:
            continue  # no direction in either feed: the model cannot be asked (counted in coverage)
        request = vehicle_request(
            state, first["trip_key"], last, first["route_id"], direction, trip, _day(first["start_date"]), stop_ids, t
        )
        if runner.refusal(request) is not None:
            continue
        requests.append(request)
        targets.append((t, first["trip_key"], where))
        if lead is not None:
            leads[lead] = (int(t), float(last.time))
    return requests, targets, leads


def _row_of(rows: pd.DataFrame, arrival) -> int | None:
    """The scope row of a trip's stop visit (its stop id, and its sequence where both give one)."""
    seqs = rows["stop_sequence"].to_numpy(dtype="float64")
    same = (rows["stop_id"] == arrival.stop_id).to_numpy() & (
        np.isnan(seqs) | math.isnan(arrival.stop_sequence) | (seqs == arrival.stop_sequence)
    )
    return int(rows.index[same][0]) if same.any() else None


def _after(listed: pd.DataFrame, last) -> pd.DataFrame:
    """A trip's TripUpdates stop list after its last arrival u: by stop sequence where both have
    one, else after u's place in the list (GTFS-realtime may give stop ids alone), each visit once."""
    seqs = listed["stop_sequence"].to_numpy(dtype="float64")
    if not math.isnan(last.stop_sequence) and np.isfinite(seqs).all():
        return listed[seqs > last.stop_sequence].drop_duplicates("stop_sequence")
    ids = listed["stop_id"].tolist()
    start = len(ids) - ids[::-1].index(last.stop_id) if last.stop_id in ids else 0
    rest = listed.iloc[start:]
    return rest[~rest.duplicated(["stop_id", "stop_sequence"])]


def _visit(sequences: pd.Series) -> list:
    """Stop sequences as dictionary keys (NaN, which never equals itself, as None)."""
    return [None if q != q else q for q in sequences.tolist()]


def _direction(value: object, position) -> int | None:
    """The trip's direction from its TripUpdate, else from where its vehicle reported (None: neither)."""
    if value is not None and value is not pd.NA and value == value:
        return int(value)
    return position.direction_id if position is not None and position.direction_id is not None else None


def _day(start_date: object) -> dt.date | None:
    """A trip's start date (YYYYMMDD, as the feed reader normalized it); None lets the API take the
    service day of the arrival."""
    try:
        return dt.datetime.strptime(str(start_date), "%Y%m%d").date()
    except ValueError:
        return None


def as_published(scope: pd.DataFrame, published: pd.DataFrame, max_lag_s: float = 60) -> np.ndarray:
    """Each race row's arrival in a published TripUpdates feed (``feeds``' flattened layout, e.g.
    the live service's feed as a client fetched it): from the newest published snapshot at or
    before the row's moment (what a rider saw then), at most ``max_lag_s`` older; the same trip
    (trip_id and start_date) and stop. NaN where it published none. Like the model's, an arrival
    already past at the moment counts as the moment."""
    out = np.full(len(scope), np.nan)
    if published.empty or scope.empty:
        return out
    stamps = np.sort(published["feed_timestamp"].unique())
    moment = scope["feed_timestamp"].to_numpy(dtype="int64")
    pos = np.searchsorted(stamps, moment, side="right") - 1
    seen = np.where(pos >= 0, stamps[np.clip(pos, 0, None)], -1)
    fresh = (pos >= 0) & (moment - seen <= max_lag_s)
    keys = ["feed_timestamp", "trip_id", "start_date", "stop_id"]
    first = published.dropna(subset=["arrival_time"]).drop_duplicates(keys)  # a stop twice: its first
    lookup = pd.DataFrame(
        {"feed_timestamp": seen, "trip_id": scope["trip_id"].to_numpy(), "start_date": scope["start_date"].to_numpy(),
         "stop_id": scope["stop_id"].to_numpy()}
    ).merge(first[[*keys, "arrival_time"]], on=keys, how="left")  # fmt: skip
    arrival = lookup["arrival_time"].to_numpy(dtype="float64")
    ok = fresh & np.isfinite(arrival)
    out[ok] = np.maximum(arrival[ok], moment[ok])
    return out


def score(scope: pd.DataFrame, predictions: dict[str, np.ndarray]) -> list[dict]:
    """Per MBTA horizon bin: MBTA and the model on the same rows (those with an actual arrival that
    the model answered): n, MAE, RMSE, bias, accurate share; the recent-segment rule on those of
    them it could answer (its own n)."""
    actual = scope["actual"].to_numpy(dtype="float64")
    bins = scope["bin"].to_numpy()
    base = np.isfinite(actual) & np.isfinite(predictions["mbta"]) & np.isfinite(predictions["model"])
    out = []
    for label, *_ in HORIZON_BINS:
        rows = base & (bins == label)
        entry: dict = {"bin": f"{label} min", "n": int(rows.sum())}
        for method, pred in predictions.items():
            m = rows & np.isfinite(pred)
            entry[method] = _errors(pred[m], actual[m], label)
            if method not in ("mbta", "model"):
                entry[method]["n"] = int(m.sum())
        out.append(entry)
    return out


def _errors(predicted: np.ndarray, actual: np.ndarray, label: str) -> dict:
    if len(actual) == 0:
        return {"mae": None, "rmse": None, "bias": None, "accurate": None}
    err = predicted - actual
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "bias": float(err.mean()),
        "accurate": float(accurate_in_bins(predicted, actual, np.full(len(actual), label)).mean()),
    }


# --- the whole race ---------------------------------------------------------------------------------


def run(
    vehicle_positions: Sequence[str | Path],
    trip_updates: Sequence[str | Path],
    runner,
    out_dir: str | Path,
    start: int | None = None,
    end: int | None = None,
) -> RaceResult:
    """Race ``runner`` (a ``serve.inference.ModelRunner``) against MBTA; writes race.json, race.png
    and rows.parquet under ``out_dir``."""
    began = time.perf_counter()
    out = Path(out_dir)
    try:  # before the replay: a bad --out must not cost the user the whole race first
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"the race's output folder {out}: cannot be created ({exc.strerror or exc})") from None
    vp = feeds.read_vehicle_positions(vehicle_positions)
    tu = feeds.read_trip_updates(trip_updates)
    if vp.frame.empty:
        raise DataError(
            f"the VehiclePositions hold no usable vehicle reports: nothing to replay ({vp.report.summary()})"
        )
    if tu.frame.empty:
        raise DataError(f"the TripUpdates hold no usable predictions: nothing to race ({tu.report.summary()})")
    state = NetworkState()
    state.observe(vp.frame)
    data_end = int(vp.frame["feed_timestamp"].max())
    # Every arrival up to 30 min after a moment must be observable: moments end 30 min before the data.
    last_allowed = data_end - MAX_HORIZON_S
    at = moments(tu.frame, start, end, last_allowed)
    if len(at) == 0:
        bounds = [f"from {iso_z(start)}" if start is not None else "", f"until {iso_z(end)}" if end is not None else ""]
        stamps = tu.frame["feed_timestamp"]
        raise DataError(
            f"no TripUpdates snapshot in the window {' '.join(b for b in bounds if b) or '(whole feed)'} at least 30 min "
            f"before the VehiclePositions end ({iso_z(data_end)}); the TripUpdates run from "
            f"{iso_z(int(stamps.min()))} to {iso_z(int(stamps.max()))}"
        )
    history_s = int(at[0]) - int(vp.frame["feed_timestamp"].min())
    scope, counts = rows_in_scope(tu.frame, at, state)
    if counts["mbta_matched"] == 0:
        raise DataError(
            f"MBTA predicted no subway arrival 0-30 min ahead at the {len(at)} moment(s) from {iso_z(int(at[0]))}"
            f" to {iso_z(int(at[-1]))}: nothing to score ({tu.report.summary()})"
        )
    published, expected = model_predictions(scope, tu.frame, state, runner)
    predictions = {
        "mbta": scope["arrival_time"].to_numpy(dtype="float64"),
        "model": published,
        "recent_segment": recent_segment(scope, state),
        "model_expected": expected,  # before requests.rider_time: what the shift early costs and buys
    }
    scored = np.isfinite(scope["actual"].to_numpy())
    model_ok = np.isfinite(predictions["model"]) & scored
    rule_ok = np.isfinite(predictions["recent_segment"]) & scored
    cut = end is None or end > last_allowed + 1
    summary = {
        "model_version": runner.version,
        "window": {
            "from": iso_z(start if start is not None else at[0]),
            "until": iso_z(min(end, last_allowed + 1) if end is not None else at[-1] + 1),
            "moments": int(len(at)),
            "history_s": history_s,
        },
        "short_history": (
            f"only {history_s / 60:.0f} min of VehiclePositions before the first moment: the race wants "
            f"{MIN_HISTORY_S // 60} min or more (other vehicles' recent traversals carry the predictions; "
            "start the feeds earlier or the window later)"
            if history_s < MIN_HISTORY_S
            else None
        ),
        "window_cut": (
            f"moments end at {iso_z(last_allowed)}, 30 min before the VehiclePositions end ({iso_z(data_end)})"
            if cut
            else None
        ),
        "rows": {k: counts[k] for k in ("mbta_matched", "in_scope", "scored", "not_started")},
        "rows_left_out": {"already_arrived": counts["already_arrived"], "no_actual": counts["no_actual"]},
        "coverage": float(model_ok.sum() / scored.sum()) if scored.any() else 0.0,
        "recent_segment_coverage": float(rule_ok.sum() / scored.sum()) if scored.any() else 0.0,
        "bins": score(scope, predictions),
        "feeds": {"vehicle_positions": vp.report.to_dict(), "trip_updates": tu.report.to_dict()},
        "seconds": round(time.perf_counter() - began, 1),
    }
    for method, pred in predictions.items():
        scope[method] = pred
    write(summary, scope, Path(out_dir))
    return RaceResult(summary, scope)


def write(summary: dict, scope: pd.DataFrame, out: Path) -> None:
    from mbta_ray.plots import race_bars

    out.mkdir(parents=True, exist_ok=True)
    (out / "race.json").write_text(json.dumps(summary, indent=2) + "\n")
    scope.to_parquet(out / "rows.parquet", index=False)
    race_bars(summary["bins"], METHODS, out / "race.png")


def wins(summary: dict) -> dict[str, bool]:
    """Per bin with rows: whether the model beats MBTA there (MAE below MBTA's and accurate share at
    or above it: issue 14's goal, bin by bin)."""
    return {
        b["bin"]: b["model"]["mae"] < b["mbta"]["mae"] and b["model"]["accurate"] >= b["mbta"]["accurate"]
        for b in summary["bins"]
        if b["n"]
    }


def verdict(summary: dict) -> str:
    """One line: in how many bins the model beats MBTA, and where it does not."""
    won = wins(summary)
    if not won:
        return "no bin has rows to compare the model and MBTA on"
    lost = [b for b, w in won.items() if not w]
    text = f"the model beats MBTA (lower MAE, accurate share at or above) in {sum(won.values())} of {len(won)} bins"
    return text + (f"; not in {', '.join(lost)}" if lost else "")


def table(summary: dict) -> list[list[str]]:
    """Rows of the printed table: bin, n, then MAE and accurate share per method."""

    def cell(m: dict) -> str:
        return "-" if m["mae"] is None else f"{m['mae']:.1f} s / {100 * m['accurate']:.1f}%"

    return [[b["bin"], str(b["n"]), *(cell(b[m]) for m in METHODS)] for b in summary["bins"]]
