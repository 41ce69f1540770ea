"""The live tracker: VehiclePositions snapshots in, the network state kept current, and what the
live service publishes out (GTFS-realtime TripUpdates, a stop's next arrivals, the vehicles).

Sources (``open_source``, chosen from ``feed_url``):
- an http(s) URL answering protobuf or MBTA's enhanced JSON (gzipped or not), fetched each poll;
- a local snapshot file that something rewrites in place, re-read when it changes;
- recorded archives (parquet, ``feeds``' flattened layout; a file or a folder), replayed on a
  virtual clock: ``replay_start`` (default: the first snapshot) advancing ``replay_speed`` times
  real time, each poll taking every snapshot published up to the clock; at the archive's end it
  starts again from ``replay_start`` with a fresh state (``replay_loop``, the default).

Faults never stop the tracker: an unreachable or slow feed (timeout), an HTTP error, bytes that are
no feed, a snapshot older than the last one, or an empty one are counted by reason and logged (the
same snapshot again is no fault: a poll faster than the feed updates);
the last good state is kept. The tracker is ``degraded`` (with the reason and the feed's age) while
the last poll failed or the newest snapshot is older than ``max_age_s``; predictions are withdrawn
(not served stale) once it is older than that. A vehicle not reported for ``vehicle_timeout_s`` is
dropped; a trip that changes vehicle follows its newest report.

The stops ahead of a trip come from the stops vehicles were seen to go to next on the same route and
direction (learned from the feed as it runs: a trip's current stop changing from u to s), so a newly
started tracker predicts further ahead as the line's vehicles pass by. They end at a branch point
(Red's JFK/UMass southbound): the feed does not say a trip's branch, so the stops past it are
predicted once the trip has taken one.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.client
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from mbta_ray.errors import ConfigError
from mbta_ray.evaluate import HORIZON_BINS
from mbta_ray.realtime import feeds
from mbta_ray.realtime.feeds import FeedError, Snapshot
from mbta_ray.realtime.requests import published_arrivals, rider_time, trip_start, vehicle_request
from mbta_ray.realtime.state import HEADWAY_MAX_AGE_S, NetworkState, trip_key
from mbta_ray.storage import shown
from mbta_ray.timeutil import iso_z, parse_utc

logger = logging.getLogger(__name__)

#: The live deployment's settings and their defaults (``user_config`` / serve_config.yaml).
LIVE_DEFAULTS: dict[str, object] = {
    "feed_url": None,  # None: replay the embedded GTFS-realtime hour
    "poll_s": 5.0,  # as mbta/concentrate and TheTransitClock poll
    "max_age_s": 120.0,
    "timeout_s": 4.0,
    "vehicle_timeout_s": 300.0,
    "replay_speed": 1.0,
    "replay_start": None,  # ISO time; None: the archive's first snapshot
    "max_stops_ahead": 20,
    "replay_loop": True,  # replays only: at the archive's end, start again from replay_start
}
#: A stop whose second most common next stop took at least this share of the vehicles is a branch
#: point: a trip's stops are predicted up to it, and on once the trip has shown its branch. (A next
#: stop seen rarely is a stop a vehicle passed between two snapshots, not a branch.)
BRANCH_SHARE = 0.2
#: How many publishes the tracker keeps the timings of (for /live/healthz and bench/live.py).
PUBLISH_LOG = 2000
#: The history the state keeps of a live feed: the longest look-back a feature has (the vehicle
#: ahead, up to 6 h). Once the oldest snapshot kept is ``COMPACT_EVERY_S`` older than that, the
#: state is rebuilt from the snapshots within it: memory stays bounded on a feed that runs for days.
STATE_WINDOW_S = HEADWAY_MAX_AGE_S
COMPACT_EVERY_S = 3600
#: A feed answer larger than this is refused (MBTA's whole VehiclePositions is ~1 MB).
MAX_FEED_BYTES = 64 << 20
_USER_AGENT = "mbta-ray-live/1 (+https://github.com/)"


@dataclass(frozen=True)
class LiveConfig:
    feed_url: str | None
    poll_s: float
    max_age_s: float
    timeout_s: float
    vehicle_timeout_s: float
    replay_speed: float
    replay_start: str | None
    max_stops_ahead: int
    replay_loop: bool

    @classmethod
    def from_dict(cls, raw: dict | None) -> LiveConfig:
        """Validated settings; ``ConfigError`` names the key that is wrong."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(LIVE_DEFAULTS))
        if unknown:
            raise ConfigError(f"live config: unknown key(s) {', '.join(unknown)} (known: {', '.join(LIVE_DEFAULTS)})")
        values = {**LIVE_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
        for key in ("poll_s", "max_age_s", "timeout_s", "vehicle_timeout_s", "replay_speed"):
            try:
                values[key] = float(values[key])
            except (TypeError, ValueError):
                raise ConfigError(f"live config: {key} must be a number, got {values[key]!r}") from None
            if not math.isfinite(values[key]) or values[key] <= 0:
                raise ConfigError(f"live config: {key} must be a positive number, got {values[key]!r}")
        try:
            values["max_stops_ahead"] = int(values["max_stops_ahead"])
        except (TypeError, ValueError):
            raise ConfigError(
                f"live config: max_stops_ahead must be an integer, got {values['max_stops_ahead']!r}"
            ) from None
        if not 1 <= values["max_stops_ahead"] <= 20:
            raise ConfigError(f"live config: max_stops_ahead must be 1-20, got {values['max_stops_ahead']}")
        if not isinstance(values["replay_loop"], bool):
            raise ConfigError(f"live config: replay_loop must be true or false, got {values['replay_loop']!r}")
        if values["replay_start"] is not None:
            values["replay_start"] = str(values["replay_start"])
            parse_utc(values["replay_start"], "live config: replay_start")
        if values["feed_url"] is not None:
            values["feed_url"] = str(values["feed_url"])
        return cls(**values)

    def to_user_config(self) -> dict:
        """The settings as a deployment's user_config (what serve_config.yaml shows)."""
        return {k: getattr(self, k) for k in LIVE_DEFAULTS}


# --- sources ------------------------------------------------------------------------------------------


class Source(Protocol):
    """Where snapshots come from. ``fetch`` returns the new snapshot(s) (None: nothing new) or raises
    ``FeedError`` naming the source; ``now`` is the source's clock (virtual for a replay)."""

    name: str

    def fetch(self) -> Snapshot | None: ...

    def now(self) -> float: ...


class HttpSource:
    """A feed URL, fetched each poll with a timeout."""

    def __init__(self, url: str, timeout_s: float, clock: Callable[[], float] = time.time) -> None:
        # The name (health, logs, errors) never shows the URL's query or user:secret@: keys live there.
        self.url, self.name, self.timeout_s, self._clock = url, shown(url), timeout_s, clock

    def now(self) -> float:
        return self._clock()

    def fetch(self) -> Snapshot:
        return feeds.read_snapshot(fetch_bytes(self.url, self.timeout_s), "VehiclePositions", self.name)


def fetch_bytes(url: str, timeout_s: float) -> bytes:
    """A feed URL's answer (http or https); ``FeedError`` naming the URL (without its query or
    credentials) and what went wrong."""
    where = shown(url)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where!r} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    deadline = time.monotonic() + timeout_s  # for the whole answer: a server dripping bytes is slow too
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 -- http(s) only
            data = _read_until(answer, deadline, where, timeout_s)
            length = answer.headers.get("Content-Length")
    except urllib.error.HTTPError as exc:
        raise FeedError(f"{where}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FeedError(f"{where}: unreachable ({exc.reason})") from None
    except TimeoutError:
        raise FeedError(f"{where}: no answer within {timeout_s:g} s") from None
    except OSError as exc:  # a connection reset or dropped mid-answer
        raise FeedError(f"{where}: connection failed ({exc})") from None
    if len(data) > MAX_FEED_BYTES:
        raise FeedError(f"{where}: answer larger than {MAX_FEED_BYTES} bytes")
    if length and length.isdigit() and len(data) < int(length):
        raise FeedError(f"{where}: connection failed (closed after {len(data):,} of {int(length):,} bytes)")
    return data


def _read_until(answer, deadline: float, where: str, timeout_s: float) -> bytes:
    """An answer's body, at most ``MAX_FEED_BYTES + 1`` bytes, read by the ``deadline``."""
    chunks, size = [], 0
    while size <= MAX_FEED_BYTES:
        if time.monotonic() > deadline:
            raise FeedError(f"{where}: no answer within {timeout_s:g} s (the body came too slowly)")
        try:
            chunk = answer.read1(min(1 << 16, MAX_FEED_BYTES + 1 - size))  # what has come: no waiting for all
        except http.client.IncompleteRead as exc:  # closed before its Content-Length
            raise FeedError(f"{where}: connection failed (closed after {len(exc.partial):,} more bytes)") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class FileSource:
    """A snapshot file rewritten in place; read again when its size or modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path, self.name = path, str(path)
        self._seen: tuple | None = None

    def now(self) -> float:
        return time.time()

    def fetch(self) -> Snapshot | None:
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) == self._seen:
                return None
            with self.path.open("rb") as f:
                data = f.read(MAX_FEED_BYTES + 1)
        except OSError as exc:
            raise FeedError(f"{self.name}: cannot be read ({exc.strerror or exc})") from None
        self._seen = (stat.st_mtime_ns, stat.st_size)
        if len(data) > MAX_FEED_BYTES:
            raise FeedError(f"{self.name}: larger than {MAX_FEED_BYTES} bytes")
        return feeds.read_snapshot(data, "VehiclePositions", self.name)


class ReplaySource:
    """Recorded snapshots on a virtual clock: ``start`` plus ``speed`` x the real time since the first
    poll. Each fetch returns every snapshot published since the last one, up to the clock."""

    def __init__(
        self, paths: Sequence[str | Path], speed: float = 1.0, start: float | None = None, clock=time.monotonic
    ) -> None:
        self.name = ", ".join(str(p) for p in paths)
        feed = feeds.read_vehicle_positions(paths)  # FeedError when nothing can be read
        self.frame = feed.frame
        self._stamps = self.frame["feed_timestamp"].to_numpy()
        self.times = np.unique(self._stamps)
        self.start = float(start) if start is not None else float(self.times[0])
        self.speed, self._clock = speed, clock
        self._t0: float | None = None
        self._delivered = -math.inf

    def now(self) -> float:
        if self._t0 is None:
            self._t0 = self._clock()
        return self.start + (self._clock() - self._t0) * self.speed

    def finished(self) -> bool:
        """Every snapshot delivered and the clock past the last one."""
        return self._delivered >= self.times[-1] and self.now() > self.times[-1]

    def rewound(self) -> ReplaySource:
        """The same replay from its start again, on a clock that starts at the next poll."""
        again = object.__new__(ReplaySource)
        again.__dict__.update(self.__dict__)
        again._t0, again._delivered = None, -math.inf
        return again

    def fetch(self) -> Snapshot | None:
        # The frame is sorted by feed_timestamp (feeds normalizes so): the new rows are one slice.
        times = self._stamps
        lo = int(np.searchsorted(times, self._delivered, side="right"))
        hi = int(np.searchsorted(times, self.now(), side="right"))
        if hi <= lo:
            return None
        rows = self.frame.iloc[lo:hi]
        self._delivered = float(times[hi - 1])
        report = feeds.FeedReport(
            kind="VehiclePositions", snapshots=int(rows["feed_timestamp"].nunique()), rows=len(rows)
        )
        return Snapshot(int(self._delivered), feeds.Feed(rows, report))


def open_source(config: LiveConfig, default_archive: str | Path) -> Source:
    """The source ``config.feed_url`` names (None: replay ``default_archive``)."""
    url = config.feed_url
    if url is None:
        return _replay([default_archive], config)
    if url.startswith(("http://", "https://")):
        return HttpSource(url, config.timeout_s)
    path = Path(url.removeprefix("file://"))
    if path.is_dir() or (path.is_file() and path.read_bytes()[:4] == b"PAR1"):
        return _replay([path], config)
    if not path.exists():
        raise ConfigError(f"live config: feed_url {url!r} is neither an http(s) URL nor an existing file or folder")
    return FileSource(path)


def _replay(paths: list, config: LiveConfig) -> ReplaySource:
    start = parse_utc(config.replay_start, "replay_start").timestamp() if config.replay_start else None
    return ReplaySource(paths, speed=config.replay_speed, start=start)


def looped(tracker: LiveTracker) -> LiveTracker | None:
    """A new tracker replaying from the start again when ``tracker``'s replay has ended and
    ``replay_loop`` is on (a fresh state: the replayed time starts over); None otherwise."""
    source = tracker.source
    if not (tracker.config.replay_loop and isinstance(source, ReplaySource) and source.finished()):
        return None
    logger.info("live: the replay of %s ended; starting it again", source.name)
    return LiveTracker(source.rewound(), tracker.config)


# --- the tracker --------------------------------------------------------------------------------------


@dataclass
class Vehicle:
    """A vehicle's newest report."""

    vehicle_id: str
    trip_key: str
    trip_id: str
    route_id: str
    direction_id: int | None
    start_date: str | None  # optional in GTFS-realtime
    stop_id: str
    stop_sequence: float
    status: str
    latitude: float
    longitude: float
    timestamp: int  # when the vehicle measured it
    feed_timestamp: int  # when the feed published it

    def to_dict(self, now: float) -> dict:
        return {
            "vehicle_id": self.vehicle_id,
            "trip_id": self.trip_id,
            "route_id": self.route_id,
            "direction_id": self.direction_id,
            "start_date": self.start_date,
            "status": self.status,
            "stop_id": self.stop_id,
            "stop_sequence": None if math.isnan(self.stop_sequence) else int(self.stop_sequence),
            "latitude": None if math.isnan(self.latitude) else self.latitude,
            "longitude": None if math.isnan(self.longitude) else self.longitude,
            "updated_at": iso_z(self.timestamp),
            "age_s": round(max(0.0, now - self.timestamp), 1),
        }


@dataclass
class Prediction:
    """One predicted arrival of a trip at a stop."""

    vehicle: Vehicle
    stop_id: str
    stops_ahead: int
    arrival: float  # epoch s

    def uncertainty_s(self, now: float) -> int:
        return uncertainty_s(self.arrival - now)


def uncertainty_s(seconds_away: float) -> int:
    """The uncertainty a TripUpdate states for an arrival this far ahead: the late edge of MBTA's
    accuracy window for its horizon bin (what MBTA itself calls an accurate prediction there)."""
    for _, lo, hi, _, late in HORIZON_BINS:
        if lo <= seconds_away < hi:
            return int(late)
    return int(HORIZON_BINS[-1][4])


def _locked(method):
    """Run a tracker method holding its lock."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


@dataclass
class LiveTracker:
    """The state of the network as the feed says, and the predictions published from it."""

    source: Source
    config: LiveConfig
    state: NetworkState = field(default_factory=NetworkState)
    errors: Counter = field(default_factory=Counter)
    skipped_rows: Counter = field(default_factory=Counter)  # of the newest snapshot taken, by why
    snapshots: int = 0
    latest: int | None = None  # header timestamp of the newest good snapshot
    last_error: str | None = None
    last_poll_ok: bool = False
    predictions: list[Prediction] = field(default_factory=list)
    predicted_at: float | None = None  # the moment the published predictions were made at
    vehicles: dict[str, Vehicle] = field(default_factory=dict)
    #: Seconds from a poll's start (the fetch) to the TripUpdates published, and the feed's age then
    #: (how long the newest snapshot waited for the poll), for the last publishes.
    publish_s: deque = field(default_factory=lambda: deque(maxlen=PUBLISH_LOG), repr=False)
    publish_lag_s: deque = field(default_factory=lambda: deque(maxlen=PUBLISH_LOG), repr=False)
    _feed: tuple | None = field(default=None, repr=False)  # (FeedMessage, its bytes) as published
    _next: dict[tuple, Counter] = field(default_factory=dict)  # (route, direction, u) -> next stops
    _current: dict[str, tuple[str, float]] = field(default_factory=dict)  # trip -> (stop, sequence)
    #: What the state was built from, oldest first (``compact`` rebuilds it from a window of them).
    _taken: deque = field(default_factory=deque, repr=False)
    #: The live deployment polls in a worker thread while HTTP readers ask on its event loop: every
    #: public method holds this lock (a fetch, which may wait for the network, does not).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # --- input ---

    def poll(self) -> bool:
        """Fetch and take in what is new; True when the state changed. Never raises for a feed fault."""
        try:
            snapshot = self.source.fetch()
        except FeedError as exc:
            with self.lock:
                return self._fault(_reason(str(exc)), str(exc))
        except Exception as exc:  # noqa: BLE001 -- a feed must never take the service down
            with self.lock:
                return self._fault("unexpected", f"{self.source.name}: {type(exc).__name__}: {exc}")
        with self.lock:
            changed = self._ingest(snapshot)
        if changed:
            self.compact()
        return changed

    def compact(self) -> bool:
        """Forget what is older than ``STATE_WINDOW_S`` before the newest snapshot, once there is
        ``COMPACT_EVERY_S`` of it: a new state from the snapshots within the window, built outside
        the lock (only the polling thread takes snapshots in) and swapped in; the trips and
        vehicles not seen since go too. True when it did."""
        if self.latest is None or not self._taken:
            return False
        start = self.latest - STATE_WINDOW_S
        if int(self._taken[0]["feed_timestamp"].min()) >= start - COMPACT_EVERY_S:
            return False
        kept = [f for f in self._taken if int(f["feed_timestamp"].max()) >= start]
        state = NetworkState()
        if kept:
            state.observe(pd.concat(kept, ignore_index=True))
        trips = {trip_key(*k) for f in kept for k in zip(f["start_date"], f["route_id"], f["trip_id"])}
        with self.lock:
            self.state, self._taken = state, deque(kept)
            self._current = {k: v for k, v in self._current.items() if k in trips}
            self.vehicles = {k: v for k, v in self.vehicles.items() if v.feed_timestamp >= start}
        return True

    def _ingest(self, snapshot: Snapshot | None) -> bool:
        if snapshot is None:
            self.last_poll_ok = True
            return False
        if snapshot.timestamp == self.latest:  # polled faster than the feed updates: nothing new
            self.last_poll_ok = True
            return False
        ahead = snapshot.timestamp - self.now()
        if ahead > feeds.FUTURE_SLACK_S:  # taken, it would make every real snapshot after it "stale"
            return self._fault(
                "future",
                f"{self.source.name}: snapshot of {iso_z(snapshot.timestamp)} is {ahead:,.0f} s ahead of this clock",
            )
        if self.latest is not None and snapshot.timestamp < self.latest:
            return self._fault(
                "stale",
                f"{self.source.name}: snapshot of {iso_z(snapshot.timestamp)} is older than {iso_z(self.latest)}",
            )
        if snapshot.feed.frame.empty:
            return self._fault("empty", f"{self.source.name}: snapshot of {iso_z(snapshot.timestamp)} has no vehicles")
        self.take(snapshot.feed.frame)
        self.skipped_rows = Counter(snapshot.feed.report.skipped_rows)
        self.latest = snapshot.timestamp
        self.snapshots += 1
        self.last_poll_ok, self.last_error = True, None
        return True

    def _fault(self, reason: str, message: str) -> bool:
        self.errors[reason] += 1
        self.last_poll_ok, self.last_error = False, message
        logger.warning("live feed: %s", message)
        return False

    @_locked
    def take(self, frame: pd.DataFrame) -> None:
        """Add normalized VehiclePositions rows to the state, the vehicles and the stop order."""
        self.state.observe(frame)
        self._taken.append(frame)
        cols = ("feed_timestamp", "timestamp", "vehicle_id", "trip_id", "route_id", "direction_id", "start_date")
        more = ("stop_id", "stop_sequence", "status", "latitude", "longitude")
        ordered = frame.sort_values(["feed_timestamp", "timestamp"], kind="stable")
        for row in zip(*(ordered[c].tolist() for c in (*cols, *more)), strict=True):
            known, stamp, vehicle, trip, route, direction, start, stop, seq, status, lat, lon = row
            direction = None if direction is pd.NA or direction is None else int(direction)
            key = trip_key(start, route, trip)
            seq = float("nan") if seq is pd.NA or seq is None else float(seq)
            self._learn_order(key, route, direction, stop, seq)
            vid = vehicle if isinstance(vehicle, str) else f"trip:{key}"  # a feed without vehicle ids
            old = self.vehicles.get(vid)
            if old is None or (stamp, known) >= (old.timestamp, old.feed_timestamp):
                self.vehicles[vid] = Vehicle(
                    vid, key, trip, route, direction, start if isinstance(start, str) else None, stop, seq, status,
                    _num(lat), _num(lon), int(stamp), int(known),
                )  # fmt: skip

    def _learn_order(self, key: str, route: str, direction: int | None, stop: str, seq: float) -> None:
        previous = self._current.get(key)
        if previous is not None and not (math.isnan(seq) or math.isnan(previous[1])) and seq < previous[1]:
            # A report behind where the trip had got to (a glitch, or a second vehicle on the trip):
            # no move, and the trip stays where it was (else the move on from it would be a new,
            # false next stop: one glitch made a branch point that cut every trip's stops ahead).
            return
        self._current[key] = (stop, seq)
        if previous is None or previous[0] == stop:
            return
        if not (math.isnan(seq) or math.isnan(previous[1])) and seq == previous[1]:
            return  # another stop at the same sequence: a correction, not a move forward
        self._next.setdefault((route, direction, previous[0]), Counter())[stop] += 1

    # --- what is known now ---

    def now(self) -> float:
        return self.source.now()

    def feed_age_s(self, now: float | None = None) -> float | None:
        return None if self.latest is None else max(0.0, (self.now() if now is None else now) - self.latest)

    @_locked
    def health(self, now: float | None = None) -> dict:
        """``ok``, ``degraded`` (why, and how old the feed is) or ``starting`` (no snapshot yet)."""
        now = self.now() if now is None else now
        age = self.feed_age_s(now)
        out = {"feed": self.source.name, "snapshots": self.snapshots, "errors": dict(self.errors)}
        # Rows of the newest snapshot taken that no vehicle could be read from, by why: a feed
        # half broken is still "ok", but says so.
        out["skipped_rows"] = dict(self.skipped_rows)
        out["feed_age_s"] = None if age is None else round(age, 1)
        out["feed_timestamp"] = None if self.latest is None else iso_z(self.latest)
        out.update(self.timings())
        if self.latest is None:
            status, reason = "starting", self.last_error or "no snapshot yet"
        elif age > self.config.max_age_s:
            status = "degraded"
            reason = (
                f"the newest snapshot is {age:.0f} s old (max_age_s {self.config.max_age_s:g}); predictions withdrawn"
            )
            if self.last_error:
                reason += f"; last error: {self.last_error}"
        elif not self.last_poll_ok:
            status, reason = "degraded", f"last poll failed: {self.last_error}"
        else:
            status, reason = "ok", None
        out.update(status=status, reason=reason)
        return out

    @_locked
    def active(self, now: float) -> list[Vehicle]:
        """Vehicles reported within ``vehicle_timeout_s`` (older ones are dropped), one per trip
        (the newest report: a trip that changed vehicle follows the new one)."""
        for vid in [v for v, x in self.vehicles.items() if now - x.feed_timestamp > self.config.vehicle_timeout_s]:
            del self.vehicles[vid]
        by_trip: dict[str, Vehicle] = {}
        for v in self.vehicles.values():
            best = by_trip.get(v.trip_key)
            if best is None or (v.timestamp, v.feed_timestamp) > (best.timestamp, best.feed_timestamp):
                by_trip[v.trip_key] = v
        return sorted(by_trip.values(), key=lambda v: (v.route_id, v.trip_id))

    @_locked
    def stops_after(self, route: str, direction: int | None, stop: str) -> list[str]:
        """The stops after ``stop`` in order, as vehicles on the route and direction went (the most
        common next stop each time), up to ``max_stops_ahead``; stops at a loop, an unknown next,
        or a branch point (a second next stop taken by ``BRANCH_SHARE`` of the vehicles or more)."""
        out: list[str] = []
        seen = {stop}
        while len(out) < self.config.max_stops_ahead:
            following = self._next.get((route, direction, stop))
            if not following:
                break
            (stop, _), *other = following.most_common(2)
            if other and other[0][1] >= BRANCH_SHARE * following.total():
                break  # a branch (Red at JFK/UMass): the feed does not say which way this trip goes
            if stop in seen:
                break
            seen.add(stop)
            out.append(stop)
        return out

    def _stops_ahead(self, v: Vehicle, last) -> list[str]:
        """The stops a vehicle will arrive at, in order, given its trip's last arrival ``last``."""
        known = not (math.isnan(v.stop_sequence) or math.isnan(last.stop_sequence))
        if v.stop_id != last.stop_id and (not known or v.stop_sequence > last.stop_sequence):
            # In transit to (or just at) a stop after u: that stop first.
            return [v.stop_id, *self.stops_after(v.route_id, v.direction_id, v.stop_id)]
        # At u, or at another stop id with u's sequence (a terminal's track: Oak Grove's 70036 then
        # Oak Grove-02), where the vehicle already is: what follows the stop it is at.
        here = v.stop_id if known and v.stop_sequence == last.stop_sequence else last.stop_id
        return self.stops_after(v.route_id, v.direction_id, here)

    @_locked
    def lines(self) -> list[dict]:
        """Each route and direction's stops in the order vehicles were seen to go, one list per
        branch (for a page to draw): [{"route_id", "direction_id", "stops": [stop_id, ...]}]."""
        out = []
        graph: dict[tuple, dict[str, str]] = {}
        for (route, direction, u), following in self._next.items():
            graph.setdefault((route, direction), {})[u] = following.most_common(1)[0][0]
        for (route, direction), edges in sorted(graph.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            heads = sorted(set(edges) - set(edges.values())) or sorted(edges)[:1]
            for head in heads:
                stops, stop = [head], head
                while stop in edges and edges[stop] not in stops:
                    stop = edges[stop]
                    stops.append(stop)
                out.append({"route_id": route, "direction_id": direction, "stops": stops})
        return out

    def requests(self, now: float) -> list[tuple[Vehicle, object]]:
        """The API request of every active vehicle with a start (``requests.trip_start``) and stops ahead.
        Not under the lock (only ``active`` takes it): the state changes only in the polling thread,
        which calls this between its polls, and readers (health, arrivals, the feed) must not wait
        the seconds a large snapshot's requests take."""
        out = []
        for v in self.active(now):
            last = trip_start(self.state, v.trip_key, now)
            if last is None:
                continue  # not yet at any stop of this trip, and not known to be on its way to one
            stops = self._stops_ahead(v, last)
            stops = stops[: self.config.max_stops_ahead]
            if not stops:
                continue
            try:
                service_date = dt.datetime.strptime(v.start_date, "%Y%m%d").date()
            except (TypeError, ValueError):
                service_date = dt.datetime.fromtimestamp(now, dt.UTC).date()
            out.append(
                (
                    v,
                    vehicle_request(
                        self.state,
                        v.trip_key,
                        last,
                        v.route_id,
                        v.direction_id or 0,
                        v.trip_id,
                        service_date,
                        stops,
                        now,
                    ),
                )
            )
        return out

    @_locked
    def publish(self, now: float, answered: list[tuple[Vehicle, object]]) -> None:
        """Keep the predictions of (vehicle, PredictResponse) pairs made at ``now`` as
        ``requests.published_arrivals`` sets them, and build the TripUpdates feed from them once:
        what ``/gtfs-rt/TripUpdates.pb`` serves until the next."""
        out = []
        for vehicle, response in answered:
            arrivals = published_arrivals(self.state, vehicle.trip_key, now, response)
            start = trip_start(self.state, vehicle.trip_key, now)
            if start is not None and start.expected:  # on its way to u: u's expected arrival first
                out.append(Prediction(vehicle, start.stop_id, 0, rider_time(start.time, now)))
            for p, arrival in zip(response.predictions, arrivals, strict=True):
                out.append(Prediction(vehicle, p.stop_id, p.stops_ahead, arrival))
        message = self._feed_message(now, out)  # first: a failure keeps the last published pair whole
        self._feed = (message, message.SerializeToString())
        self.predictions, self.predicted_at = out, now

    @_locked
    def note_publish(self, seconds: float) -> None:
        """Record how long the last publish took from its poll's start (the caller times the whole
        step: fetch, state, requests, the model, the feed)."""
        self.publish_s.append(seconds)
        if self.latest is not None and self.predicted_at is not None:
            self.publish_lag_s.append(max(0.0, self.predicted_at - self.latest))

    @_locked
    def timings(self) -> dict:
        """p50 / p99 / max of the recorded publish times and feed ages at publish (seconds)."""
        out = {}
        for name, values in (("publish_s", self.publish_s), ("feed_age_at_publish_s", self.publish_lag_s)):
            if values:
                v = np.fromiter(values, float)
                out[name] = {
                    "n": len(v),
                    "p50": round(float(np.percentile(v, 50)), 4),
                    "p99": round(float(np.percentile(v, 99)), 4),
                    "max": round(float(v.max()), 4),
                }
        return out

    @_locked
    def current(self, now: float | None = None) -> list[Prediction]:
        """The published predictions still worth serving: none while the feed is older than
        ``max_age_s``; arrivals already past dropped."""
        now = self.now() if now is None else now
        age = self.feed_age_s(now)
        if age is None or age > self.config.max_age_s:
            return []
        return [p for p in self.predictions if p.arrival >= now - 30]

    # --- outputs ---

    @_locked
    def trip_updates(self, now: float | None = None):
        """The published GTFS-realtime FeedMessage (FULL_DATASET, header timestamp = the moment its
        predictions were made): one TripUpdate per trip with predictions. Empty before the first
        publish and while the feed is older than ``max_age_s`` (withdrawn, not served stale)."""
        return self._published(now)[0]

    @_locked
    def trip_updates_pb(self, now: float | None = None) -> bytes:
        """``trip_updates`` serialized (once per publish)."""
        return self._published(now)[1]

    def _published(self, now: float | None) -> tuple:
        now = self.now() if now is None else now
        age = self.feed_age_s(now)
        if self._feed is None or age is None or age > self.config.max_age_s:
            message = self._feed_message(now, [])
            return message, message.SerializeToString()
        return self._feed

    @staticmethod
    def _feed_message(now: float, predictions: list[Prediction]):
        from google.transit import gtfs_realtime_pb2

        message = gtfs_realtime_pb2.FeedMessage()
        message.header.gtfs_realtime_version = "2.0"
        message.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
        message.header.timestamp = int(now)
        by_trip: dict[str, list[Prediction]] = {}
        for p in predictions:
            by_trip.setdefault(p.vehicle.trip_key, []).append(p)
        for key, preds in by_trip.items():
            v = preds[0].vehicle
            entity = message.entity.add()
            entity.id = key
            update = entity.trip_update
            update.trip.trip_id = v.trip_id
            update.trip.route_id = v.route_id
            if v.direction_id is not None:
                update.trip.direction_id = v.direction_id
            if isinstance(v.start_date, str) and v.start_date:  # optional: may be missing (NA)
                update.trip.start_date = v.start_date
            update.vehicle.id = v.vehicle_id
            update.timestamp = int(v.timestamp)
            for p in sorted(preds, key=lambda p: p.stops_ahead):
                stu = update.stop_time_update.add()
                stu.stop_id = p.stop_id
                stu.arrival.time = int(round(p.arrival))
                stu.arrival.uncertainty = p.uncertainty_s(now)
        return message

    @_locked
    def arrivals(self, stop_ids: set[str], now: float | None = None, limit: int = 20) -> list[dict]:
        """The next arrivals at any of ``stop_ids`` (a station's platforms), soonest first."""
        now = self.now() if now is None else now
        found = sorted((p for p in self.current(now) if p.stop_id in stop_ids), key=lambda p: p.arrival)
        return [
            {
                "stop_id": p.stop_id,
                "route_id": p.vehicle.route_id,
                "direction_id": p.vehicle.direction_id,
                "trip_id": p.vehicle.trip_id,
                "vehicle_id": p.vehicle.vehicle_id,
                "predicted_arrival": iso_z(p.arrival),
                "seconds_away": round(max(0.0, p.arrival - now), 1),
                "uncertainty_s": p.uncertainty_s(now),
                "observation_age_s": round(max(0.0, now - p.vehicle.timestamp), 1),
            }
            for p in found[:limit]
        ]


def _num(x) -> float:
    return float("nan") if x is None or x is pd.NA else float(x)


def _reason(message: str) -> str:
    """A short metric label for a feed error message."""
    for needle, label in (
        ("HTTP ", "http_error"),
        ("unreachable", "unreachable"),
        ("no answer within", "timeout"),
        ("connection failed", "unreachable"),
        ("larger than", "too_large"),
        ("more than", "too_large"),
        ("ahead of this clock", "future"),
        ("cannot be read", "unreadable"),
    ):
        if needle in message:
            return label
    return "garbage"
