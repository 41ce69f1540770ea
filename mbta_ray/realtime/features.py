"""Real-time features of (vehicle at u, stop s, moment t) rows, from the network state known at t.

One function for every caller: the ETL builds a ``NetworkState`` per route, direction and service
day from its stop events and asks it about each example's moment; the race and the live service ask
the state they replay or follow. The values therefore cannot differ between training and serving.

- ``recent_travel_s``: median u -> s travel time of the last ``RECENT_N`` other vehicles that did
  u -> s, both arrivals known at t (NaN: none known); ``recent_travel_n`` how many (0..N);
  ``recent_travel_age_s`` how long before t the most recent of them reached s.
- ``recent_hop_s``: the same median for the hop into s: from the stop before s on the vehicle's
  path (u itself for the first stop ahead) to s. Hops are short, so many vehicles have done them
  minutes ago even where few did the whole u -> s; ``features.path_travel`` chains them.
- ``elapsed_s``: t - the arrival at u (0 for a prediction made at the arrival).
- ``departed_s``: t - when the vehicle left u, if it is known at t to have left (NaN: still at u as
  far as anyone knows). MBTA's own predictions are far better once the vehicle has left (the race,
  bench/RESULTS.md): the dwell at u is the noise in "arrival at u + travel".
- ``headway_ahead_s``: the arrival at u - the last arrival at u by another vehicle of the route and
  direction before it, known at t (the headway the vehicle is running on).

Beside the features, ``vehicle_lat`` / ``vehicle_lon``: where the vehicle last reported itself at
t, once it is known to have left u (NaN: still at u, or no coordinates, as in LAMP's and
TransitMaster's events). ``features.compute_features`` turns them into ``progress`` with the GTFS
stop coordinates, for the ETL and a client that sends its vehicle's position alike.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mbta_ray.features import POSITION_COLUMNS
from mbta_ray.realtime.feeds import STOPPED_AT, VEHICLE_COLUMNS
from mbta_ray.realtime.state import NetworkState
from mbta_ray.timeutil import epoch_seconds

#: How many other vehicles' recent traversals the median takes (TheTransitClock uses a few).
RECENT_N = 5
#: Traversals older than this (at t) say nothing about now.
RECENT_MAX_AGE_S = 3 * 3600.0
REALTIME_FEATURES = (
    "recent_travel_s",
    "recent_travel_n",
    "recent_travel_age_s",
    "recent_hop_s",
    "elapsed_s",
    "departed_s",
    "headway_ahead_s",
)
#: What a query row needs.
QUERY_COLUMNS = (
    "trip_key",
    "route_id",
    "direction_id",
    "from_stop_id",
    "from_stop_sequence",
    "to_stop_id",
    "hop_from_stop_id",  # the stop before s on the path (optional: from_stop_id, the first stop ahead)
    "arrival_u",  # epoch s
    "moment",  # epoch s, >= arrival_u (earlier for an expected arrival at u: elapsed_s is then negative, and unused)
)


def realtime_features(state: NetworkState, queries: pd.DataFrame, n: int = RECENT_N) -> pd.DataFrame:
    """The ``REALTIME_FEATURES`` and ``POSITION_COLUMNS`` of each query row (same index), each from what
    was known at its moment."""
    out = {name: np.full(len(queries), np.nan) for name in (*REALTIME_FEATURES, *POSITION_COLUMNS)}
    if "hop_from_stop_id" not in queries.columns:  # every row is the first stop ahead: its hop is u -> s
        queries = queries.assign(hop_from_stop_id=queries["from_stop_id"])
    cols = [queries[c].tolist() for c in QUERY_COLUMNS]
    # The stops ahead of one vehicle at one moment share u's departure and its position since.
    left: dict[tuple, tuple[int | None, tuple[float, float]]] = {}
    for i, (key, route, direction, u, u_seq, s, hop_from, arrival_u, moment) in enumerate(zip(*cols, strict=True)):
        direction = None if direction is None or direction is pd.NA else int(direction)
        done = state.recent_travel(route, direction, u, s, moment, n=n, exclude=key, max_age_s=RECENT_MAX_AGE_S)
        out["recent_travel_n"][i] = len(done)
        out["recent_travel_s"][i] = _median_travel(done)
        if done:
            out["recent_travel_age_s"][i] = min(d.age_s for d in done)
        # The first stop ahead's hop is u -> s itself: asked once.
        hop = (
            done
            if hop_from == u
            else state.recent_travel(
                route, direction, hop_from, s, moment, n=n, exclude=key, max_age_s=RECENT_MAX_AGE_S
            )
        )
        out["recent_hop_s"][i] = _median_travel(hop)
        out["elapsed_s"][i] = float(moment) - float(arrival_u)
        if (key, u, arrival_u, moment) not in left:
            left[(key, u, arrival_u, moment)] = _left_u(state, key, u, u_seq, moment)
        departed, where = left[(key, u, arrival_u, moment)]
        if departed is not None:
            out["departed_s"][i] = float(moment) - float(departed)
            out["vehicle_lat"][i], out["vehicle_lon"][i] = where
        ahead = state.last_passed(route, direction, u, moment, exclude=key, before=arrival_u)
        if ahead is not None:
            out["headway_ahead_s"][i] = float(arrival_u) - float(ahead.time)
    return pd.DataFrame(out, index=queries.index)


def _left_u(state: NetworkState, key: str, u: str, u_seq: float, moment: float) -> tuple[int | None, tuple]:
    """When the vehicle left u (None: not known at the moment to have left), and where it last
    reported itself since (NaN, NaN: no coordinates, or its latest report is from before it left)."""
    nowhere = (math.nan, math.nan)
    at_u = state.arrival_at(key, u, moment, u_seq)
    departed = state.departure(key, at_u, moment) if at_u is not None else None
    if departed is None:
        return None, nowhere
    now = state.position(key, moment)
    if now is None or now.timestamp < departed or (now.status == STOPPED_AT and now.stop_id == u):
        return departed, nowhere
    return departed, (now.latitude, now.longitude)


def _median_travel(done: list) -> float:
    """Median travel seconds of some traversals (NaN: none)."""
    return float(np.median([d.travel_s for d in done])) if done else math.nan


def observations_from_events(events: pd.DataFrame) -> pd.DataFrame:
    """Canonical stop events (``schema.EVENT_SCHEMA`` columns, with a ``trip_key``-free identity) as
    VehiclePositions rows a ``NetworkState`` takes: one STOPPED_AT report per arrival, known at the
    arrival itself (the sources the ETL reads are published after the fact; the live feed is
    known at its snapshot time, which the race and the service use), and where the source has the
    dwell, one IN_TRANSIT_TO the trip's next stop at the departure (arrival + dwell; only where that
    is before the next arrival: a longer dwell is an error of the source, not a departure)."""
    events = events.reset_index(drop=True)  # positions below look rows up by label
    arrivals = _event_reports(events, epoch_seconds(events["actual_arrival"]), events["stop_id"], STOPPED_AT)
    arrivals["stop_sequence"] = pd.to_numeric(events["stop_sequence"]).astype("float64")
    if "dwell_seconds" not in events.columns or events.empty:
        return arrivals
    trip = ["service_date", "route_id", "trip_id"]
    ordered = events.sort_values([*trip, "stop_sequence"], kind="stable").index
    stops = arrivals[["timestamp", "stop_id", "stop_sequence"]].astype({"timestamp": "float64"}).loc[ordered]
    following = stops.groupby([events.loc[ordered, c] for c in trip], sort=False, dropna=False).shift(-1)
    following = following.reindex(events.index)
    departure = arrivals["timestamp"] + pd.to_numeric(events["dwell_seconds"], errors="coerce")
    ok = (departure > arrivals["timestamp"]) & (departure < following["timestamp"])
    if not ok.any():
        return arrivals
    departures = _event_reports(
        events[ok], departure[ok].astype("int64"), following.loc[ok, "stop_id"], "IN_TRANSIT_TO"
    )
    departures["stop_sequence"] = following.loc[ok, "stop_sequence"].astype("float64")
    return pd.concat([arrivals, departures])


def _event_reports(events: pd.DataFrame, seconds: pd.Series, stop_id: pd.Series, status: str) -> pd.DataFrame:
    """VehiclePositions rows for stop events: one report per event, known at ``seconds``."""
    service = pd.to_datetime(events["service_date"]).dt.strftime("%Y%m%d")
    frame = pd.DataFrame(
        {
            "feed_timestamp": seconds,
            "timestamp": seconds,
            "vehicle_id": events["vehicle_id"].astype("string") if "vehicle_id" in events else pd.NA,
            "trip_id": events["trip_id"].astype("string"),
            "route_id": events["route_id"].astype("string"),
            "direction_id": pd.to_numeric(events["direction_id"]).astype("Int8"),
            "start_date": service.astype("string"),
            "start_time": pd.Series(pd.NA, index=events.index, dtype="string"),  # the events carry no schedule start
            "stop_id": stop_id.astype("string"),
            "stop_sequence": math.nan,
            "status": status,
            "latitude": math.nan,
            "longitude": math.nan,
        },
        index=events.index,
    )
    return frame[list(VEHICLE_COLUMNS)]
