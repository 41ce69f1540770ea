"""The network state known at a moment t, from GTFS-realtime VehiclePositions (one implementation
for the ETL's real-time features, the replay race and the live service).

Fed observations (``feeds.VEHICLE_COLUMNS`` rows) in any order, it answers "what was known at t"
and never looks past t: an observation becomes known at its ``feed_timestamp`` (when the feed
published it), so every query filters on that, whatever else has been fed since.

- A trip's arrival at a stop is its first ``STOPPED_AT`` there (as MBTA's prediction_analyzer
  scores predictions): the earliest vehicle timestamp among the STOPPED_AT reports of that stop
  visit known at t. A later snapshot that reports an earlier time (out of order) lowers it from
  the moment it is known; duplicate snapshots change nothing.
- Stop visits are told apart by stop sequence (a loop route visits a stop twice), by stop id where
  a feed has no sequence.
- Where a trip's vehicle is at t: its report with the latest vehicle timestamp known at t (the stop
  it is at or heading to, status, position), and its last arrival before then; when it left a
  stop (its first report after the arrival that no longer has it STOPPED_AT there).
- Segments: per route, direction and stop, the arrivals of every trip, so "the last N vehicles that
  went u -> s" and "when did the vehicle ahead pass u" are answered from other trips' arrivals; and
  the positions vehicles reported on their way there, so "how long did the last vehicles take from
  here" is answered for a vehicle between stops.
A trip is ``start_date|route_id|trip_id`` (trip ids repeat across days); a vehicle that switches
trips starts a new trip.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import pandas as pd

from mbta_ray.realtime.feeds import STOPPED_AT
from mbta_ray.schema import Mode, mode_for_route
from mbta_ray.timeutil import clock_time_epoch

#: Earth's mean radius (m), for the short distances between position reports.
EARTH_M = 6_371_000.0
#: How near another vehicle's report must be to a position to say how long the rest of the way takes.
NEAR_M = 150.0
#: How near vehicles stood for their stops to be one place: a terminal's tracks (Braintree-01 and -02,
#: Oak Grove-01 and 70036) stand metres apart, consecutive stops of a line hundreds of metres.
SAME_PLACE_M = 60.0
#: How far back "the vehicle ahead" (``last_passed``) is looked for.
HEADWAY_MAX_AGE_S = 6 * 3600
#: How far a vehicle's clock may run ahead of the feed's: a report is assumed to describe an arrival
#: no later than this after its publication (searches stop early on it).
CLOCK_SKEW_S = 600


def _metres(lat: float, lon: float, lat0: float, lon0: float, scale: float) -> float:
    """Metres from (lat0, lon0) to (lat, lon), flat-earth (``scale``: cos(lat0)): exact enough for
    the few hundred metres the state compares positions over."""
    return EARTH_M * math.hypot(math.radians(lat - lat0), math.radians(lon - lon0) * scale)


@functools.lru_cache(maxsize=4096)
def _is_subway(route_id: object) -> bool:
    """Whether a route is a subway line (``schema.mode_for_route``), the routes ``_sharing`` pools."""
    return bool(mode_for_route(pd.Series([route_id], dtype="object")).iloc[0] == Mode.SUBWAY.value)


def trip_key(start_date: object, route_id: object, trip_id: object) -> str:
    """The state's trip identity (the same string wherever a trip is named)."""
    return f"{start_date}|{route_id}|{trip_id}"


def trip_keys(start_date: pd.Series, route_id: pd.Series, trip_id: pd.Series) -> pd.Series:
    """``trip_key`` of many rows at once (the same strings), as a string Series on ``trip_id``'s index."""
    parts = [pd.Series(p).reset_index(drop=True).astype("string") for p in (start_date, route_id, trip_id)]
    if any(p.isna().any() for p in parts):  # the f-string's spelling of a missing value
        keys = [trip_key(*k) for k in zip(start_date, route_id, trip_id)]
        return pd.Series(keys, index=trip_id.index, dtype="string")
    joined = parts[0] + "|" + parts[1] + "|" + parts[2]
    return pd.Series(joined.array, index=trip_id.index, dtype="string")


@dataclass(frozen=True)
class Arrival:
    """A trip's arrival at a stop visit, as known at some moment."""

    stop_id: str
    stop_sequence: float  # NaN where the feed gives none
    time: int  # epoch s: the first STOPPED_AT's vehicle timestamp
    known_at: int  # epoch s: when the feed published the report that set ``time``
    #: Not seen but expected, at ``time`` (after ``known_at``): ``requests.trip_start``'s arrival at
    #: the stop a vehicle is on its way to before it has stood at any stop of its trip.
    expected: bool = False


@dataclass(frozen=True)
class Position:
    """Where a trip's vehicle was at its latest report known at some moment."""

    trip_key: str
    vehicle_id: str | None
    route_id: str
    direction_id: int | None
    status: str  # STOPPED_AT (at stop_id) or INCOMING_AT / IN_TRANSIT_TO (heading to stop_id)
    stop_id: str
    stop_sequence: float
    latitude: float
    longitude: float
    timestamp: int
    known_at: int
    start_time: str | None = None  # the trip's scheduled start (HH:MM:SS into its service day), if given


@dataclass(frozen=True)
class Traversal:
    """Another vehicle's trip over u -> s: arrival at s, travel time, how old at the query."""

    trip_key: str
    arrived: int
    travel_s: float
    age_s: float


class _Reports:
    """Reports of one thing (a stop visit, a trip's positions) sorted by known_at, with a running
    best so "the best known at t" is a bisect."""

    __slots__ = ("known", "values", "best")

    def __init__(self) -> None:
        self.known: list[int] = []
        self.values: list[tuple] = []
        self.best: list[int] = []  # best[i]: index of the best value among values[: i + 1]

    def add(self, known: int, value: tuple, better) -> None:
        i = bisect.bisect_right(self.known, known)
        self.known.insert(i, known)
        self.values.insert(i, value)
        del self.best[i:]
        for j in range(i, len(self.values)):  # appends are the rule: usually one step
            prev = self.best[j - 1] if j else None
            self.best.append(j if prev is None or better(self.values[j], self.values[prev]) else prev)

    def as_of(self, t: float) -> tuple | None:
        i = bisect.bisect_right(self.known, t)
        return self.values[self.best[i - 1]] if i else None


def _earlier(a: tuple, b: tuple) -> bool:
    return a[0] < b[0]


def _position_order(p: tuple) -> tuple:
    """Latest vehicle timestamp first; ties (two reports of one moment) broken on the report's own
    fields, so the answer never depends on the order reports were fed in."""
    num = [-math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in (p[8], p[9], p[10])]
    return (p[0], num[0], str(p[7]), str(p[6]), str(p[3] or ""), num[1], num[2], str(p[11] or ""))


def _later(a: tuple, b: tuple) -> bool:
    return _position_order(a) > _position_order(b)


class NetworkState:
    """What the VehiclePositions fed so far say, queried as of any moment t."""

    def __init__(self) -> None:
        # trip -> visit key -> STOPPED_AT reports (time, known_at, stop_id, stop_sequence)
        self._visits: dict[str, dict[object, _Reports]] = {}
        # trip -> position reports (timestamp, known_at, Position fields...)
        self._positions: dict[str, _Reports] = {}
        # (route, direction, stop_id) -> sorted known_at, and the (trip, visit key) first seen then
        self._at_stop: dict[tuple, tuple[list[int], list[tuple[str, object]]]] = {}
        # (trip, visit key) -> the _at_stop key it is filed under (its first report's route, direction, stop)
        self._filed: dict[tuple[str, object], tuple] = {}
        # trip -> stop_id -> its visit keys (a loop route has two), so a stop is found without a scan
        self._stop_visits: dict[str, dict[str, list]] = {}
        # (route, direction, stop_id) -> sorted known_at, and the positioned reports of vehicles
        # heading there (timestamp, trip, latitude, longitude): where they were how long before arriving
        self._heading: dict[tuple, tuple[list[int], list[tuple]]] = {}
        # (route, direction) -> stop_id -> (known_at, latitude, longitude) of the first STOPPED_AT
        # report there (the earliest published): where vehicles stand at that stop
        self._stood: dict[tuple, dict[str, tuple[int, float, float]]] = {}
        # (stop_id, direction) -> the routes whose vehicles headed or stood there: lines that share a
        # stop (the Green Line's branches on the trunk) share how long its approach and stay take
        self._routes_at: dict[tuple, set[str]] = {}
        self.rows_seen = 0

    # --- feeding ---------------------------------------------------------------------------------

    def observe(self, frame: pd.DataFrame) -> None:
        """Add normalized VehiclePositions rows (``feeds.VEHICLE_COLUMNS``), in any order."""
        if frame.empty:
            return
        cols = [frame[c].tolist() for c in ("feed_timestamp", "timestamp", "vehicle_id", "trip_id", "route_id")]
        more = [
            frame[c].tolist()
            for c in ("direction_id", "start_date", "stop_id", "stop_sequence", "status", "latitude", "longitude")
        ]
        # Optional: the ETL's stop events carry no schedule start.
        starts = frame["start_time"].tolist() if "start_time" in frame else [None] * len(frame)
        for row in zip(*cols, *more, starts, strict=True):
            self._observe_row(*row)
        self.rows_seen += len(frame)

    def _observe_row(
        self,
        known,
        timestamp,
        vehicle,
        trip,
        route,
        direction,
        start_date,
        stop,
        seq,
        status,
        lat,
        lon,
        start_time=None,
    ) -> None:
        key = trip_key(start_date, route, trip)
        known, timestamp = int(known), int(timestamp)
        direction = None if direction is None or direction is pd.NA else int(direction)
        seq = float("nan") if seq is None or seq is pd.NA else float(seq)
        position = (
            timestamp,
            known,
            key,
            None if vehicle is pd.NA else vehicle,
            route,
            direction,
            status,
            stop,
            seq,
            float("nan") if lat is None or lat is pd.NA else float(lat),
            float("nan") if lon is None or lon is pd.NA else float(lon),
            None if start_time is None or start_time is pd.NA or start_time != start_time else str(start_time),
        )
        self._positions.setdefault(key, _Reports()).add(known, position, _later)
        self._routes_at.setdefault((stop, direction), set()).add(route)
        if status != STOPPED_AT:
            if not (math.isnan(position[9]) or math.isnan(position[10])):
                known_list, entries = self._heading.setdefault((route, direction, stop), ([], []))
                i = bisect.bisect_right(known_list, known)
                known_list.insert(i, known)
                entries.insert(i, (timestamp, key, position[9], position[10]))
            return
        if not (math.isnan(position[9]) or math.isnan(position[10])):
            stood = self._stood.setdefault((route, direction), {})
            if stop not in stood or known < stood[stop][0]:
                stood[stop] = (known, position[9], position[10])
        visit = seq if not math.isnan(seq) else stop
        visits = self._visits.setdefault(key, {})
        if visit not in visits:
            visits[visit] = _Reports()
            self._stop_visits.setdefault(key, {}).setdefault(stop, []).append(visit)
            self._filed[(key, visit)] = (route, direction, stop)
            known_list, entries = self._at_stop.setdefault((route, direction, stop), ([], []))
            i = bisect.bisect_right(known_list, known)
            known_list.insert(i, known)
            entries.insert(i, (key, visit))
        elif known < visits[visit].known[0]:  # an older snapshot fed late: it was known sooner
            self._reindex_visit(key, visit, known)
        visits[visit].add(known, (timestamp, known, stop, seq), _earlier)

    def _reindex_visit(self, key, visit, known) -> None:
        # Where the visit was filed, not this report's stop and direction: a visit's reports may name
        # another track of the stop, or lack the direction (a KeyError before, on such feeds).
        known_list, entries = self._at_stop[self._filed[(key, visit)]]
        i = entries.index((key, visit))
        del known_list[i], entries[i]
        j = bisect.bisect_right(known_list, known)
        known_list.insert(j, known)
        entries.insert(j, (key, visit))

    # --- queries (each as of t, never past it) ----------------------------------------------------

    def _arrival(self, key: str, visit: object, t: float) -> Arrival | None:
        reports = self._visits.get(key, {}).get(visit)
        best = reports.as_of(t) if reports is not None else None
        return Arrival(best[2], best[3], best[0], best[1]) if best else None

    def arrivals(self, key: str, t: float) -> list[Arrival]:
        """The trip's arrivals known at t, in time order."""
        found = (self._arrival(key, visit, t) for visit in self._visits.get(key, {}))
        return sorted((a for a in found if a is not None), key=lambda a: (a.time, a.stop_sequence))

    def arrival_at(self, key: str, stop_id: str, t: float, stop_sequence: float | None = None) -> Arrival | None:
        """The trip's (first) arrival at ``stop_id`` known at t (at that visit, given its sequence)."""
        visits = self._visits.get(key, {})
        if stop_sequence is not None and not math.isnan(stop_sequence) and stop_sequence in visits:
            a = self._arrival(key, stop_sequence, t)
            return a if a is not None and a.stop_id == stop_id else None
        candidates = self._stop_visits.get(key, {}).get(stop_id, ())
        found = [a for a in (self._arrival(key, v, t) for v in candidates) if a is not None and a.stop_id == stop_id]
        return min(found, key=lambda a: a.time) if found else None

    def position(self, key: str, t: float) -> Position | None:
        """The trip's latest report (by vehicle timestamp) known at t."""
        reports = self._positions.get(key)
        best = reports.as_of(t) if reports is not None else None
        if best is None:
            return None
        timestamp, known, *rest = best
        return Position(
            rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6], rest[7], rest[8], timestamp, known, rest[9]
        )

    def scheduled_start(self, key: str, t: float) -> float | None:
        """Epoch seconds the trip is scheduled to leave its first stop, from its latest report known
        at t (GTFS-realtime's ``trip.start_time`` on its ``start_date``; None: not given)."""
        pos = self.position(key, t)
        if pos is None or pos.start_time is None:
            return None
        return clock_time_epoch(key.split("|", 1)[0], pos.start_time)

    def departure(self, key: str, arrival: Arrival, t: float) -> int | None:
        """When the trip's vehicle left the stop of ``arrival``, as known at t: the earliest vehicle
        timestamp after the arrival of a report that no longer has it STOPPED_AT that stop (None:
        not known to have left)."""
        reports = self._positions.get(key)
        if reports is None:
            return None
        left = None
        for p in reports.values[: bisect.bisect_right(reports.known, t)]:
            if (
                p[0] > arrival.time
                and (p[6] != STOPPED_AT or p[7] != arrival.stop_id)
                and (left is None or p[0] < left)
            ):
                left = p[0]
        return left

    def last_arrival(self, key: str, t: float) -> Arrival | None:
        """The trip's most recent arrival known at t."""
        arrivals = self.arrivals(key, t)
        return arrivals[-1] if arrivals else None

    def trips(self, t: float) -> Iterator[str]:
        """Trips with a position report known at t (trips in progress, or done)."""
        return (key for key, reports in self._positions.items() if reports.known and reports.known[0] <= t)

    def _recent_at_stop(self, route, direction, stop, t, max_age_s: float = math.inf) -> Iterator[tuple[str, Arrival]]:
        """Trips' arrivals at ``stop`` known at t, most recently published first, back to reports
        published ``max_age_s`` before t (an arrival is never later than its report)."""
        known_list, entries = self._at_stop.get((route, direction, stop), ([], []))
        for i in range(bisect.bisect_right(known_list, t) - 1, -1, -1):
            if t - known_list[i] > max_age_s:
                break
            key, visit = entries[i]
            arrival = self._arrival(key, visit, t)
            if arrival is not None:
                yield key, arrival

    def recent_travel(
        self,
        route_id: str,
        direction_id: int | None,
        from_stop: str,
        to_stop: str,
        t: float,
        n: int = 5,
        exclude: str | None = None,
        max_age_s: float = 3 * 3600,
        shared: bool = False,
    ) -> list[Traversal]:
        """The last ``n`` other trips that went ``from_stop`` -> ``to_stop`` with both arrivals known at
        t (most recent arrival at ``to_stop`` first), arriving there within ``max_age_s`` of t: trips
        of the route, or with ``shared`` of every route that stops at ``to_stop`` (``_sharing``; the
        model's features take the route's own, as the ETL computes them)."""
        if shared:
            merged = [
                tr
                for route in self._sharing(route_id, direction_id, to_stop)
                for tr in self.recent_travel(route, direction_id, from_stop, to_stop, t, n, exclude, max_age_s)
            ]
            return sorted(merged, key=lambda tr: (-tr.arrived, tr.trip_key))[:n]
        found: dict[str, Traversal] = {}
        known_list, entries = self._at_stop.get((route_id, direction_id, to_stop), ([], []))
        for i in range(bisect.bisect_right(known_list, t) - 1, -1, -1):
            if t - known_list[i] > max_age_s:
                break
            if len(found) >= n and known_list[i] + CLOCK_SKEW_S < sorted(tr.arrived for tr in found.values())[-n]:
                break  # reports published earlier arrived earlier still: none can be among the last n
            key, visit = entries[i]
            at_s = self._arrival(key, visit, t)
            if at_s is None or key == exclude or key in found or t - at_s.time > max_age_s:
                continue
            at_u = self.arrival_at(key, from_stop, t)
            if at_u is None or at_u.time > at_s.time or (at_u.time == at_s.time and at_u.stop_id == at_s.stop_id):
                continue
            found[key] = Traversal(key, at_s.time, float(at_s.time - at_u.time), float(t - at_s.time))
        # Ties broken on the trip, so the answer never depends on the order reports were fed in.
        return sorted(found.values(), key=lambda tr: (-tr.arrived, tr.trip_key))[:n]

    def last_passed(
        self,
        route_id: str,
        direction_id: int | None,
        stop_id: str,
        t: float,
        exclude: str | None = None,
        before: float | None = None,
    ) -> Arrival | None:
        """The latest arrival at ``stop_id`` by another trip on the route and direction, known at t
        (and earlier than ``before``: the vehicle ahead of one that arrived then), within
        ``HEADWAY_MAX_AGE_S``."""
        best: tuple | None = None
        for key, arrival in self._recent_at_stop(route_id, direction_id, stop_id, t, max_age_s=HEADWAY_MAX_AGE_S):
            if before is not None and arrival.time >= before:
                continue
            if key != exclude and (best is None or (arrival.time, key) > (best[0].time, best[1])):
                best = (arrival, key)
        return best[0] if best else None

    def _sharing(self, route_id: str, direction_id: int | None, stop_id: str) -> list[str]:
        """The route, then every other subway route whose vehicles went to ``stop_id`` in the same
        direction (a stop id is one platform: the Green Line's branches share the trunk's). Buses and
        commuter rail keep to their route: two that share a stop may reach it by different streets or
        tracks. Any moment's answer filters on what was known then; this list only says where to look."""
        if not _is_subway(route_id):
            return [route_id]
        others = {r for r in self._routes_at.get((stop_id, direction_id), set()) - {route_id} if _is_subway(r)}
        return [route_id, *sorted(others)]

    def remaining_from(
        self,
        route_id: str,
        direction_id: int | None,
        stop_id: str,
        latitude: float,
        longitude: float,
        t: float,
        exclude: str | None = None,
        n: int = 5,
        max_m: float = NEAR_M,
        max_age_s: float = 1800,
    ) -> list[float]:
        """How long the last ``n`` other trips heading to ``stop_id`` (on any route that stops there:
        ``_sharing``) took to arrive there from the point of their way nearest (within ``max_m``) to
        ``latitude, longitude``: seconds from that report to their arrival, most recent arrival
        first. Only reports and arrivals known at t, published within ``max_age_s`` before it
        (TheTransitClock's "where the last vehicles were")."""
        nearest: dict[str, tuple[float, int]] = {}
        scale = math.cos(math.radians(latitude))
        for route in self._sharing(route_id, direction_id, stop_id):
            known_list, entries = self._heading.get((route, direction_id, stop_id), ([], []))
            hi = bisect.bisect_right(known_list, t)
            lo = bisect.bisect_left(known_list, t - max_age_s)
            for timestamp, key, lat, lon in entries[lo:hi]:
                if key == exclude:
                    continue
                d = _metres(lat, lon, latitude, longitude, scale)
                if d <= max_m and (key not in nearest or (d, timestamp) < nearest[key]):
                    nearest[key] = (d, timestamp)
        found = []
        for key, (_, timestamp) in nearest.items():
            arrival = self.arrival_at(key, stop_id, t)
            if arrival is not None and arrival.time >= timestamp:
                found.append((arrival.time, key, float(arrival.time - timestamp)))
        return [r for _, _, r in sorted(found, reverse=True)[:n]]

    def stops_near(
        self,
        route_id: str,
        direction_id: int | None,
        latitude: float,
        longitude: float,
        t: float,
        max_m: float = SAME_PLACE_M,
    ) -> set[str]:
        """The route and direction's stops where vehicles stood within ``max_m`` of a point, as known
        at t: the other tracks of a terminal a vehicle stands at."""
        scale = math.cos(math.radians(latitude))
        return {
            stop
            for stop, (known, lat, lon) in self._stood.get((route_id, direction_id), {}).items()
            if known <= t and _metres(lat, lon, latitude, longitude, scale) <= max_m
        }

    def stood_at(self, route_id: str, direction_id: int | None, stop_id: str, t: float) -> tuple[float, float] | None:
        """Where the route and direction's vehicles stood at ``stop_id`` (the first report there), as
        known at t; None: no vehicle known to have stood there with a position."""
        known = self._stood.get((route_id, direction_id), {}).get(stop_id)
        return (known[1], known[2]) if known is not None and known[0] <= t else None

    def dwell_and_run(
        self,
        route_id: str,
        direction_id: int | None,
        from_stop: str | Collection[str],
        to_stop: str,
        t: float,
        exclude: str | None = None,
        n: int = 5,
        max_age_s: float = 1800,
    ) -> list[tuple[float, float]]:
        """(seconds standing at ``from_stop``, seconds from leaving it to arriving at ``to_stop``) of
        the last ``n`` other trips (of any route that stops at ``to_stop``: ``_sharing``) that went
        ``from_stop`` -> ``to_stop``, as known at t (arrivals at ``to_stop`` published within
        ``max_age_s``), most recent first. ``from_stop`` may be several stops (one place's tracks):
        a trip's latest arrival at any of them before ``to_stop``."""
        froms = [from_stop] if isinstance(from_stop, str) else sorted(from_stop)
        found = []
        arrivals = (
            arrival
            for route in self._sharing(route_id, direction_id, to_stop)
            for arrival in self._recent_at_stop(route, direction_id, to_stop, t, max_age_s=max_age_s)
        )
        for key, at_s in arrivals:
            if key == exclude or any(key == f[1] for f in found):
                continue
            before = [a for a in (self.arrival_at(key, u, t) for u in froms) if a is not None and a.time < at_s.time]
            if not before:
                continue
            at_u = max(before, key=lambda a: (a.time, a.stop_id))
            left = self.departure(key, at_u, t)
            if left is None or left > at_s.time:
                continue
            found.append((at_s.time, key, float(left - at_u.time), float(at_s.time - left)))
        return [(dwell, run) for *_, dwell, run in sorted(found, reverse=True)[:n]]
