"""The live service: a real local HTTP server (in the test) serves protobuf VehiclePositions snapshots
built from the embedded GTFS-realtime hour, one snapshot per request, with faults on demand; the
tracker (and, in the last test, the real Serve app) consumes it."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from mbta_ray.errors import ConfigError
from mbta_ray.paths import GTFSRT_VEHICLE_POSITIONS
from mbta_ray.realtime import feeds
from mbta_ray.realtime.live import (
    HttpSource,
    LiveConfig,
    LiveTracker,
    ReplaySource,
    looped,
    open_source,
    uncertainty_s,
)
from mbta_ray.serve.inference import ModelRunner
from tests.test_registry import make_model

_STATUS = {"INCOMING_AT": 0, "STOPPED_AT": 1, "IN_TRANSIT_TO": 2}


@pytest.fixture(scope="module")
def hour() -> pd.DataFrame:
    return feeds.read_vehicle_positions([GTFSRT_VEHICLE_POSITIONS]).frame


def snapshot_bytes(rows: pd.DataFrame, header_ts: int, shift: int = 0) -> bytes:
    """A VehiclePositions FeedMessage of normalized rows (vehicle timestamps moved by ``shift``)."""
    from google.transit import gtfs_realtime_pb2

    message = gtfs_realtime_pb2.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.timestamp = int(header_ts)
    for i, r in enumerate(rows.itertuples(index=False)):
        e = message.entity.add()
        e.id = f"{r.vehicle_id}-{i}"
        v = e.vehicle
        v.trip.trip_id, v.trip.route_id, v.trip.start_date = r.trip_id, r.route_id, r.start_date
        if r.direction_id is not pd.NA:
            v.trip.direction_id = int(r.direction_id)
        if r.start_time is not pd.NA:
            v.trip.start_time = r.start_time
        v.vehicle.id = r.vehicle_id
        v.stop_id = r.stop_id
        if np.isfinite(r.stop_sequence):
            v.current_stop_sequence = int(r.stop_sequence)
        v.current_status = _STATUS[r.status]
        v.timestamp = int(r.timestamp) + shift
        if np.isfinite(r.latitude):
            v.position.latitude, v.position.longitude = float(r.latitude), float(r.longitude)
    return message.SerializeToString()


class FeedServer:
    """Serves the hour's snapshots in order, one per request (every ``step``-th snapshot); ``faults``
    (a queue) replaces the next answers: ("status", 500), ("bytes", b"..."), ("sleep", s), "stale"
    (an older snapshot), "again" (the last answer's bytes again), "empty" (a header, no entities);
    ``paused`` answers the last bytes again until cleared. With ``live_clock`` each
    snapshot is moved to the time it is served (header = now), as a live feed would be."""

    def __init__(self, hour: pd.DataFrame, step: int = 3, live_clock: bool = False) -> None:
        self.groups = [g for _, g in hour.groupby("feed_timestamp", sort=True)][::step]
        self.faults: deque = deque()
        self.served = 0
        self.paused = False
        self.last = b""
        self.live_clock = live_clock
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                status, body = outer.answer()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout fault)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/VehiclePositions.pb"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def snapshot(self, i: int) -> bytes:
        g = self.groups[min(i, len(self.groups) - 1)]
        ts = int(g["feed_timestamp"].iloc[0])
        shift = int(time.time()) - ts if self.live_clock else 0
        return snapshot_bytes(g, ts + shift, shift)

    def answer(self) -> tuple[int, bytes]:
        fault = self.faults.popleft() if self.faults else None
        if fault is None and not self.paused:
            self.served += 1
            self.last = self.snapshot(self.served - 1)
            return 200, self.last
        if fault is None or fault == "again":  # paused, or asked for: the very same bytes again
            return 200, self.last
        if fault == "stale":
            return 200, self.snapshot(max(self.served - 2, 0)) if not self.live_clock else self._older()
        if fault == "empty":
            return 200, snapshot_bytes(
                self.groups[0].iloc[:0], int(time.time()) if self.live_clock else self.ts(self.served)
            )
        kind, value = fault
        if kind == "sleep":
            time.sleep(value)
            return 200, self.snapshot(self.served)
        return (value, b"server error") if kind == "status" else (200, value)

    def _older(self) -> bytes:
        g = self.groups[0]
        return snapshot_bytes(g, int(time.time()) - 3600, 0)

    def ts(self, i: int) -> int:
        return int(self.groups[min(i, len(self.groups) - 1)]["feed_timestamp"].iloc[0])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def red_model(tmp_path_factory) -> ModelRunner:
    """A real tiny XGBoost model that knows the Red and Orange lines (tests.test_registry)."""
    return ModelRunner(make_model(tmp_path_factory.mktemp("live-model"), mae=90.0))


def _tracker(server: FeedServer, **config) -> LiveTracker:
    cfg = LiveConfig.from_dict({"feed_url": server.url, "timeout_s": 1.0, **config})
    tracker = LiveTracker(HttpSource(server.url, cfg.timeout_s), cfg)
    # The test's clock: just after the feed (before its first snapshot: any time after it).
    tracker.source._clock = lambda: (tracker.latest or 2_000_000_000) + 1.0
    return tracker


def _predict(tracker: LiveTracker, runner: ModelRunner) -> list:
    now = tracker.now()
    pairs = [(v, r) for v, r in tracker.requests(now) if runner.refusal(r) is None]
    responses = runner.predict([r for _, r in pairs]) if pairs else []
    tracker.publish(now, list(zip([v for v, _ in pairs], responses, strict=True)))
    return pairs


def test_live_config_names_the_bad_key():
    with pytest.raises(ConfigError, match="poll_s"):
        LiveConfig.from_dict({"poll_s": -1})
    with pytest.raises(ConfigError, match="feed_ulr"):
        LiveConfig.from_dict({"feed_ulr": "http://x"})
    with pytest.raises(ConfigError, match="replay_start"):
        LiveConfig.from_dict({"replay_start": "yesterday"})
    with pytest.raises(ConfigError, match="feed_url"):
        open_source(LiveConfig.from_dict({"feed_url": "/no/such/file.pb"}), GTFSRT_VEHICLE_POSITIONS)
    assert uncertainty_s(30) == 60 and uncertainty_s(900) == 360


def test_trip_updates_from_a_polled_feed_equal_the_models_predictions(hour, red_model):
    from google.transit import gtfs_realtime_pb2

    from mbta_ray.realtime.requests import position_anchor, rider_time, standing_anchor

    server = FeedServer(hour, step=3)
    try:
        tracker = _tracker(server)
        for _ in range(150):  # ~15 minutes of the hour, a snapshot every ~6 s
            assert tracker.poll(), tracker.last_error
        pairs = _predict(tracker, red_model)
    finally:
        server.close()
    assert tracker.health()["status"] == "ok" and tracker.snapshots == 150
    assert len(pairs) >= 5, "Red-line vehicles with a last stop and stops ahead"
    message = gtfs_realtime_pb2.FeedMessage()
    message.ParseFromString(tracker.trip_updates_pb())  # what /gtfs-rt/TripUpdates.pb sends
    assert message.header.incrementality == gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    assert message.header.timestamp == int(tracker.now())
    published = {
        (e.trip_update.trip.trip_id, u.stop_id): (u.arrival.time, u.arrival.uncertainty)
        for e in message.entity
        for u in e.trip_update.stop_time_update
    }
    # The same requests answered again by the model: the feed says exactly what it predicts, each
    # stop never before the moment nor before the stop before; the first one at the anchor where
    # the vehicle is on its way there or standing at a stop, each later one the stop before plus the
    # hop as the line does it now (the last trains' that made it, of any route; else the response's
    # path), else the model's step; each told a little early where it is far ahead (``rider_time``).
    now = tracker.now()
    expected, anchored, chained = {}, 0, 0
    for (v, _), response in zip(pairs, red_model.predict([r for _, r in pairs]), strict=True):
        pos = tracker.state.position(v.trip_key, now)
        first = response.predictions[0].stop_id
        anchor = position_anchor(tracker.state, v.trip_key, now, first)
        if anchor is None:
            anchor = standing_anchor(tracker.state, v.trip_key, now, first)
        anchored += anchor is not None
        modelled = np.maximum.accumulate([max(now, p.predicted_arrival.timestamp()) for p in response.predictions])
        arrival = max(now, anchor if anchor is not None else modelled[0])
        for j, p in enumerate(response.predictions):
            if j:
                before = response.predictions[j - 1]
                done = tracker.state.recent_travel(
                    pos.route_id, pos.direction_id, before.stop_id, p.stop_id, now, 5, v.trip_key, shared=True
                )
                path = (before.path_travel_seconds, p.path_travel_seconds)
                if done:
                    arrival += float(np.median([tr.travel_s for tr in done]))
                elif None not in path:
                    arrival += max(0.0, path[1] - path[0])
                else:
                    arrival += modelled[j] - modelled[j - 1]
                chained += bool(done) or None not in path
            expected[(v.trip_id, p.stop_id)] = round(rider_time(arrival, now))
    assert anchored >= 2, "vehicles anchored on where they are"
    assert chained >= 10, "stops after the next one, by the line's hops"
    assert set(published) == set(expected)
    for k, (arrival, uncertainty) in published.items():
        assert arrival == expected[k]
        assert uncertainty == uncertainty_s(arrival - now)
    # Stops ahead follow the line: each trip's stops in one TripUpdate, in the order vehicles went.
    for e in message.entity:
        stops = [u.stop_id for u in e.trip_update.stop_time_update]
        assert len(stops) == len(set(stops))
        times = [u.arrival.time for u in e.trip_update.stop_time_update]
        assert times == sorted(times)
    # A stop's arrivals: soonest first and the same times as the TripUpdates.
    stop = next(iter(published))[1]
    arrivals = tracker.arrivals({stop})
    assert arrivals and [a["seconds_away"] for a in arrivals] == sorted(a["seconds_away"] for a in arrivals)
    for a in arrivals:
        assert published[(a["trip_id"], stop)][0] == round(pd.Timestamp(a["predicted_arrival"]).timestamp())


def test_at_a_race_moment_the_live_feed_publishes_what_the_race_scores(red_model, tmp_path):
    """The live path and the race are one computation: replayed to a race moment, the tracker
    publishes exactly the race's model arrivals for the trips and stops the race scores there (the
    stops ahead learned from the feed, where the race takes MBTA's stop lists)."""
    from mbta_ray.paths import DEFAULT_RACE_WINDOW, GTFSRT_TRIP_UPDATES
    from mbta_ray.realtime import race

    start = race.parse_time(DEFAULT_RACE_WINDOW[0], "from")
    raced = race.run([GTFSRT_VEHICLE_POSITIONS], [GTFSRT_TRIP_UPDATES], red_model, tmp_path, start, start + 60)
    moment = int(raced.rows["feed_timestamp"].iloc[0])
    tracker = LiveTracker(
        ReplaySource([GTFSRT_VEHICLE_POSITIONS], start=moment, clock=lambda: 0.0), LiveConfig.from_dict({})
    )
    assert tracker.poll() and tracker.now() == moment
    _predict(tracker, red_model)
    published = {(p.vehicle.trip_id, p.stop_id): p.arrival for p in tracker.predictions}
    rows = raced.rows[np.isfinite(raced.rows["model"])]
    assert len(rows) > 100
    got = np.array([published.get(k, np.nan) for k in zip(rows["trip_id"], rows["stop_id"])])
    missing = rows.loc[~np.isfinite(got), ["route_id", "trip_id", "stop_id"]]
    # Missing: Red trips before the Ashmont/Braintree split, whose branch the feed does not say
    # (the tracker follows the branch most vehicles took; MBTA's schedule knows it).
    assert np.isfinite(got).mean() >= 0.9, missing.drop_duplicates("trip_id").to_string()
    ok = np.isfinite(got)
    np.testing.assert_allclose(got[ok], rows["model"].to_numpy()[ok], atol=1e-6)


def test_a_trip_taken_over_between_stops_is_published_from_the_stop_it_heads_to(tmp_path):
    """t5's vehicle took its trip over on the way to B (no stop of t5 yet): the feed publishes B at
    the arrival expected there (t3 took 80 s from the same point: 780 + 80) and the stops after B
    from it, as the race scores them (test_realtime)."""
    from google.transit import gtfs_realtime_pb2

    from mbta_ray.realtime import race
    from tests.test_realtime import RACE_T0, _tiny_replay

    vp, tu = _tiny_replay(tmp_path, took_over=True)
    runner = ModelRunner(make_model(tmp_path / "m", 60.0, rounds=6), version="tiny")
    tracker = LiveTracker(ReplaySource([vp], start=RACE_T0 + 800, clock=lambda: 0.0), LiveConfig.from_dict({}))
    assert tracker.poll() and tracker.now() == RACE_T0 + 800  # the race's moment
    _predict(tracker, runner)
    t5 = sorted((p for p in tracker.predictions if p.vehicle.trip_id == "t5"), key=lambda p: p.stops_ahead)
    assert [(p.stop_id, p.stops_ahead) for p in t5][:2] == [("B", 0), ("C", 1)]
    assert t5[0].arrival == RACE_T0 + 860
    assert all(a.arrival <= b.arrival for a, b in zip(t5, t5[1:]))  # in order, none before B
    raced = race.run([vp], [tu], runner, tmp_path / "race").rows
    raced = raced[(raced["trip_id"] == "t5") & (raced["feed_timestamp"] == RACE_T0 + 800)].set_index("stop_id")
    assert {p.stop_id: p.arrival for p in t5 if p.stop_id in raced.index} == pytest.approx(raced["model"].to_dict())
    feed = gtfs_realtime_pb2.FeedMessage.FromString(tracker.trip_updates_pb(tracker.now()))
    (entity,) = [e for e in feed.entity if e.trip_update.trip.trip_id == "t5"]
    assert [u.stop_id for u in entity.trip_update.stop_time_update][:2] == ["B", "C"]


def test_every_feed_fault_keeps_the_last_good_state_and_says_degraded(hour, red_model):
    server = FeedServer(hour, step=3)
    try:
        tracker = _tracker(server)
        for _ in range(60):
            tracker.poll()
        _predict(tracker, red_model)
        good = (tracker.latest, len(tracker.vehicles), len(tracker.predictions))
        assert good[2] > 0
        faults = [
            (("status", 500), "http_error", "HTTP 500"),
            (("bytes", b"\x00garbage\xff" * 10), "garbage", "not a GTFS-realtime"),
            (("sleep", 2.0), "timeout", "no answer within"),
            ("stale", "stale", "older than"),
            ("empty", "empty", "no vehicles"),
        ]
        server.faults.append("again")  # the same snapshot again: polled faster than the feed updates
        assert tracker.poll() is False and tracker.health()["status"] == "ok" and not tracker.errors
        for fault, reason, words in faults:
            server.faults.append(fault)
            assert tracker.poll() is False
            health = tracker.health()
            assert health["status"] == "degraded" and words in health["reason"], health
            assert tracker.errors[reason] == 1
            assert (tracker.latest, len(tracker.vehicles), len(tracker.predictions)) == good  # nothing lost
            assert tracker.current(), "predictions stay while the feed is younger than max_age_s"
            assert tracker.poll() is True and tracker.health()["status"] == "ok"  # and it recovers
            good = (tracker.latest, len(tracker.vehicles), len(tracker.predictions))
    finally:
        server.close()
    # Unreachable: nothing listens any more.
    assert tracker.poll() is False and tracker.errors["unreachable"] == 1
    assert "unreachable" in tracker.health()["reason"]
    # An old feed: predictions are withdrawn, not served stale.
    tracker.source._clock = lambda: tracker.latest + tracker.config.max_age_s + 1
    assert tracker.current() == [] and len(tracker.trip_updates().entity) == 0
    assert "old" in tracker.health()["reason"]


def test_a_feed_url_is_named_without_its_query_or_credentials():
    """Health, logs and errors name the feed; a key in its query or user:secret@ never shows."""
    cfg = LiveConfig.from_dict({})
    source = HttpSource("http://user:s3cret@127.0.0.1:9/VehiclePositions.pb?api_key=SECRET", 1.0)
    tracker = LiveTracker(source, cfg)
    tracker.poll()
    health = json.dumps(tracker.health())
    assert "127.0.0.1:9/VehiclePositions.pb" in health, health
    assert "SECRET" not in health and "s3cret" not in health


def test_vehicles_time_out_and_a_trip_follows_its_new_vehicle(hour):
    rows = hour[hour["feed_timestamp"] == hour["feed_timestamp"].min()].head(3).copy()
    cfg = LiveConfig.from_dict({"vehicle_timeout_s": 60})
    tracker = LiveTracker(HttpSource("http://127.0.0.1:9/", 1.0, clock=lambda: 0.0), cfg)
    tracker.take(rows)
    t0 = int(rows["feed_timestamp"].iloc[0])
    assert {v.vehicle_id for v in tracker.active(t0)} == set(rows["vehicle_id"])
    swapped = rows.iloc[[0]].assign(vehicle_id="NEW", feed_timestamp=t0 + 30, timestamp=t0 + 30)
    tracker.take(swapped)
    trip = rows["trip_id"].iloc[0]
    assert [v.vehicle_id for v in tracker.active(t0 + 30) if v.trip_id == trip] == ["NEW"]
    assert {v.vehicle_id for v in tracker.active(t0 + 80)} == {"NEW"}  # the others not heard for 80 s


def test_a_replay_follows_its_virtual_clock():
    now = [0.0]
    source = ReplaySource([GTFSRT_VEHICLE_POSITIONS], speed=10.0, clock=lambda: now[0])
    first = source.fetch()
    assert first is not None and first.timestamp == source.times[0]
    assert source.fetch() is None  # the clock has not moved
    now[0] = 6.0  # 60 s of feed
    second = source.fetch()
    assert second.timestamp <= source.times[0] + 60 and second.feed.frame["feed_timestamp"].nunique() > 20
    assert second.feed.frame["feed_timestamp"].min() > first.timestamp
    # At the archive's end a looping replay starts again, with a fresh state; one that does not loop
    # stays at its end (its feed ages: degraded, predictions withdrawn).
    tracker = LiveTracker(source, LiveConfig.from_dict({"replay_speed": 10}))
    assert looped(tracker) is None
    now[0] = (source.times[-1] - source.times[0]) / 10  # the clock at the last snapshot
    assert tracker.poll() and tracker.latest == source.times[-1] and looped(tracker) is None  # not yet past it
    now[0] += 1
    assert looped(LiveTracker(source, LiveConfig.from_dict({"replay_loop": False}))) is None
    again = looped(tracker)
    assert again is not None and again is not tracker and not again.vehicles
    assert again.poll() and again.latest == source.times[0] and tracker.latest == source.times[-1]
    with pytest.raises(ConfigError, match="replay_loop"):
        LiveConfig.from_dict({"replay_loop": "yes"})


def test_the_serve_app_publishes_a_live_feed_and_survives_its_faults(ray_local, hour, tmp_path):
    from google.transit import gtfs_realtime_pb2
    from ray import serve

    from mbta_ray.registry import Registry, evaluation_of
    from mbta_ray.serve.app import build, deploy

    port = 8771
    url = f"http://127.0.0.1:{port}"
    registry = Registry(tmp_path)
    model_dir = make_model(tmp_path / "m", mae=90.0)
    assert registry.promote(registry.register(model_dir, evaluation=evaluation_of(model_dir))["version"]).accepted
    server = FeedServer(hour, step=3, live_clock=True)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        one = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
        live = {"feed_url": server.url, "poll_s": 0.3, "timeout_s": 1.0, "max_age_s": 60}
        serve.run(build({"registry": str(tmp_path)}, one, live=live), name="live", route_prefix="/", blocking=False)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                health = requests.get(f"{url}/live/healthz", timeout=5)
                if health.status_code == 200 and health.json().get("snapshots", 0) >= 5:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        vehicles = requests.get(f"{url}/vehicles", timeout=10)
        assert vehicles.status_code == 200 and len(vehicles.json()["vehicles"]) > 20
        message = gtfs_realtime_pb2.FeedMessage()
        deadline = time.time() + 120
        while time.time() < deadline:  # stops ahead are learned as the Red line's trains pass by
            pb = requests.get(f"{url}/gtfs-rt/TripUpdates.pb", timeout=10)
            assert pb.status_code == 200 and pb.headers["content-type"] == "application/x-protobuf"
            message.ParseFromString(pb.content)
            if len(message.entity) >= 3:
                break
            time.sleep(0.5)
        assert len(message.entity) >= 3, "the model knows the Red line: its trips get TripUpdates"
        # The test feed runs ~20x real time: hold it (the same snapshot again, no fault) so the answers
        # below describe one published state.
        server.paused = True
        time.sleep(1.0)
        message.ParseFromString(requests.get(f"{url}/gtfs-rt/TripUpdates.pb", timeout=10).content)
        assert message.header.incrementality == gtfs_realtime_pb2.FeedHeader.FULL_DATASET
        update = max((e.trip_update for e in message.entity), key=lambda u: len(u.stop_time_update))
        stop = update.stop_time_update[-1].stop_id  # the furthest: still ahead at the next publish
        arrivals = requests.get(f"{url}/stops/{stop}/arrivals", timeout=10).json()["arrivals"]
        assert [a["seconds_away"] for a in arrivals] == sorted(a["seconds_away"] for a in arrivals)
        assert update.trip.trip_id in {a["trip_id"] for a in arrivals}
        lines = requests.get(f"{url}/lines", timeout=10).json()["lines"]
        assert lines and all(len(x["stops"]) >= 2 and "lat" in x["stops"][0] for x in lines)
        _the_page_shows_vehicles_and_a_stops_arrivals(url, tmp_path / "live-page.png")
        health = requests.get(f"{url}/live/healthz", timeout=10).json()
        assert health["status"] == "ok", health
        # Each publish is timed from its poll's fetch to the serialized feed.
        assert health["publish_s"]["n"] >= 1 and 0 < health["publish_s"]["p50"] <= health["publish_s"]["max"]
        server.paused = False
        js = requests.get(f"{url}/gtfs-rt/TripUpdates.pb?format=json", timeout=10)
        assert js.status_code == 200 and "header" in js.json()
        assert requests.get(f"{url}/stops/place-pktrm/arrivals", timeout=10).json()["stops"][0]
        assert requests.get(f"{url}/stops/no-such-stop/arrivals", timeout=10).status_code == 404
        assert requests.get(f"{url}/stops/bad%20%3Cid%3E/arrivals", timeout=10).status_code == 422
        for fault in (("status", 500), ("bytes", b"garbage")):
            server.faults.extend([fault] * 20)
            seen = None
            deadline = time.time() + 30
            while time.time() < deadline:
                r = requests.get(f"{url}/healthz", timeout=10)
                assert r.status_code < 500 or r.status_code == 503, r.text
                if r.json().get("live", {}).get("status") == "degraded":
                    seen = r.json()
                    break
                time.sleep(0.3)
            assert seen is not None and "live feed" in seen.get("detail", ""), seen
            for path in ("/vehicles", "/gtfs-rt/TripUpdates.pb", "/stops/place-pktrm/arrivals"):
                assert requests.get(f"{url}{path}", timeout=10).status_code == 200
            server.faults.clear()
        # A model switch (`mbta-ray serve reload`) keeps the running feed (not the default replay).
        version = deploy(str(tmp_path), name="live")
        deadline = time.time() + 60
        while requests.get(f"{url}/healthz", timeout=10).json().get("model_version") != version:
            assert time.time() < deadline, "the model did not switch"
            time.sleep(0.3)
        after = requests.get(f"{url}/live/healthz", timeout=10).json()
        assert after["feed"] == server.url, after
    finally:
        serve.shutdown()
        server.close()


def test_record_archives_a_feed_that_every_reader_takes(hour, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mbta_ray.realtime.record import record
    from mbta_ray.sources import inspect_input, read_file

    server = FeedServer(hour, step=3)
    server.faults.extend(["stale", ("status", 503), ("bytes", b"not a feed")])
    logged: list[str] = []
    try:
        report = record(
            server.url, tmp_path / "rec", every_s=0.01, snapshots=7, flush_every=3, timeout_s=2, log=logged.append
        )
    finally:
        server.close()
    assert report.snapshots == 7 and len(report.files) == 3  # 3 + 3 + the last one at the end
    assert report.skipped["failed polls"] == 2 and any("HTTP 503" in m for m in logged)
    # The served snapshots, exactly: the first 7 of the hour (every 3rd), read back in the archive form.
    # (The stale fault came first: it repeated snapshot 0, which the recorder had not seen yet.)
    recorded = feeds.read_vehicle_positions([tmp_path / "rec"]).frame
    served = pd.concat(server.groups[:7]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        recorded.drop(columns=["direction_id"]), served.drop(columns=["direction_id"]), check_dtype=False
    )
    assert recorded["direction_id"].tolist() == served["direction_id"].tolist()
    # `mbta-ray data ingest` recognises the files as GTFS-realtime archives and reads from them the
    # same stop events (arrivals, and every other row quarantined with its reason) as from the
    # embedded archive's rows of the same snapshots.
    assert {inspect_input(f).format for f in report.files} == {"gtfsrt"}
    table = pq.read_table(GTFSRT_VEHICLE_POSITIONS)
    stamps = pa.array(sorted(served["feed_timestamp"].unique()), table["feed_timestamp"].type)
    pq.write_table(table.filter(pc.is_in(table["feed_timestamp"], stamps)), tmp_path / "embedded.parquet")
    key = ["trip_id", "stop_id", "actual_arrival", "reason", "detail"]

    def events(paths: list) -> pd.DataFrame:
        frame = pa.concat_tables(read_file(str(p)) for p in paths).to_pandas()
        return frame.drop(columns=["source_file", "source_row"]).sort_values(key).reset_index(drop=True)

    ours, theirs = events(report.files), events([tmp_path / "embedded.parquet"])
    # (The test server builds its snapshots from the normalized hour, which has no report without a
    # stop: the embedded rows without one are not served.)
    theirs = theirs[theirs["stop_id"].notna()].reset_index(drop=True)
    assert (ours["reason"].isna()).sum() > 10, "arrivals among the events"
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)


def test_record_skips_snapshots_no_reader_could_hold_and_keeps_recording(hour, tmp_path):
    """A number of 5,000 digits (Python's JSON refuses it), a lone surrogate (no UTF-8 holds it) and a
    vehicle time past int64 (no parquet integer holds it): the poll or the entity is skipped and
    counted, the rest is recorded and written, nothing ends the recording."""
    from mbta_ray.realtime.record import record

    def vehicle(trip: str, timestamp: object) -> dict:
        return {"id": trip, "vehicle": {"trip": {"trip_id": trip, "route_id": "Red", "direction_id": 0},
                "stop_id": "70061", "current_status": "STOPPED_AT", "timestamp": timestamp}}  # fmt: skip

    def snapshot(stamp: int, *entities: dict) -> bytes:
        return json.dumps({"header": {"timestamp": stamp}, "entity": list(entities)}).encode()

    early = int(hour["feed_timestamp"].min()) - 600  # before the hour: the hour's snapshots are newer
    server = FeedServer(hour, step=3)
    server.faults.extend(
        [
            ("bytes", b'{"header": {"timestamp": 1683547000}, "entity": [], "x": ' + b"9" * 5000 + b"}"),
            ("bytes", snapshot(early, vehicle("t1", early), vehicle("\ud800", early))),
            ("bytes", snapshot(early + 1, vehicle("t2", 2**70))),
        ]
    )
    logged: list[str] = []
    try:
        report = record(server.url, tmp_path / "rec", every_s=0.01, snapshots=4, timeout_s=2, log=logged.append)
    finally:
        server.close()
    assert report.snapshots == 4 and report.skipped["failed polls"] == 1, report.summary()
    assert any("not valid JSON" in m for m in logged), logged
    assert report.skipped["vehicle.trip.trip_id is not valid text"] == 1, report.summary()
    recorded = feeds.read_vehicle_positions([tmp_path / "rec"])
    assert recorded.report.skipped_rows["vehicle.timestamp is not a time in epoch seconds"] == 1
    assert "t1" in set(recorded.frame["trip_id"]) and "t2" not in set(recorded.frame["trip_id"])


def test_record_cli_refuses_bad_options_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    for args, words in (
        (["--url", "ftp://example.org/x.pb"], "http(s) URL"),
        (["--url", "http://127.0.0.1:9/x.pb", "--duration", "soon"], "--duration"),
        (["--url", "http://127.0.0.1:9/x.pb", "--kind", "alerts"], "--kind"),
        (["--url", "http://127.0.0.1:9/x.pb", "--timeout", "-1"], "--timeout"),
        (["--url", "http://127.0.0.1:9/x.pb", "--snapshots", "0"], "--snapshots"),
    ):
        result = CliRunner().invoke(app, ["live", "record", *args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output


def _the_page_shows_vehicles_and_a_stops_arrivals(url: str, screenshot: Path) -> None:
    """The page in Debian's headless chromium (the Makefile installs it): it loads only from the app,
    draws the lines and vehicles, and a click on a stop lists that stop's arrivals."""
    import shutil

    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = requests.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text), "the page loads nothing from elsewhere"
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "Debian's chromium and chromium-driver are missing: run `make browser`"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--window-size=1200,800"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(f"{url}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "circle.vehicle")) > 0)
        assert len(driver.find_elements(By.CSS_SELECTOR, "polyline.line")) > 0
        # The stop predicted furthest ahead (the feed is held: it stays ahead).
        feed = requests.get(f"{url}/gtfs-rt/TripUpdates.pb?format=json", timeout=10).json()
        updates = [u for e in feed.get("entity", []) for u in e["trip_update"]["stop_time_update"]]
        stop = max(updates, key=lambda u: int(u["arrival"]["time"]))["stop_id"]
        dot = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'circle.stop[data-stop="{stop}"]'))
        # A real click event on the stop's dot (a vehicle drawn on top of it must not take it).
        driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", dot)
        try:
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#arrivals tr.arrival")) > 0)
        except TimeoutException:
            table = driver.find_element(By.ID, "arrivals").get_attribute("innerHTML")[:300]
            api = requests.get(f"{url}/stops/{stop}/arrivals", timeout=10).text[:300]
            title = driver.find_element(By.ID, "stop-title").text
            raise AssertionError(f"no arrivals shown for {stop}: title {title!r}, table {table!r}, api {api}") from None
        assert stop in driver.find_element(By.ID, "stop-title").text
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()


# --- adversarial feeds ------------------------------------------------------------------------------


def _rows(specs: list[tuple], t0: int = 1_683_547_200) -> pd.DataFrame:
    """Normalized VehiclePositions rows from (seconds after t0, trip, stop, sequence[, vehicle])."""
    rows = []
    for spec in specs:
        dt_s, trip, stop, seq, *vehicle = spec
        rows.append(
            {
                "feed_timestamp": t0 + dt_s, "timestamp": t0 + dt_s, "vehicle_id": vehicle[0] if vehicle else f"v-{trip}",
                "trip_id": trip, "route_id": "Red", "direction_id": 0, "start_date": "20230508", "start_time": pd.NA,
                "stop_id": stop, "stop_sequence": float(seq), "status": "STOPPED_AT", "latitude": 42.3, "longitude": -71.1,
            }
        )  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["direction_id"] = frame["direction_id"].astype("Int8")
    return frame


def test_a_snapshot_from_the_future_is_a_fault_and_the_feed_goes_on(hour):
    """A header far ahead of the clock (a producer's clock gone wrong) is not taken: taken, it would
    make every real snapshot after it stale. So are vehicle reports far after their header."""
    server = FeedServer(hour, step=3)
    try:
        tracker = _tracker(server)
        assert tracker.poll() is True
        first = tracker.latest
        server.faults.append(("bytes", snapshot_bytes(hour.head(3), 4_102_000_000)))
        assert tracker.poll() is False and tracker.errors["future"] == 1
        assert "ahead of this clock" in tracker.health()["reason"] and tracker.latest == first
        assert tracker.poll() is True and tracker.latest > first and tracker.health()["status"] == "ok"
        assert tracker.health()["skipped_rows"] == {}
        # Half a snapshot unreadable: taken, still "ok", and health says what was skipped.
        rows = hour[hour["feed_timestamp"] == hour["feed_timestamp"].min()].head(4)
        half = pd.concat([rows.head(2), rows.tail(2).assign(timestamp=rows["timestamp"].tail(2) + 86400)])
        server.faults.append(("bytes", snapshot_bytes(half, tracker.latest + 5)))
        assert tracker.poll() is True and tracker.health()["status"] == "ok"
        assert tracker.health()["skipped_rows"] == {"vehicle.timestamp is after the feed's header.timestamp": 2}
    finally:
        server.close()
    rows = hour[hour["feed_timestamp"] == hour["feed_timestamp"].min()].head(2)
    snap = feeds.read_snapshot(
        snapshot_bytes(rows, int(rows["feed_timestamp"].iloc[0]), shift=30 * 86400), "VehiclePositions", "x"
    )
    assert snap.feed.frame.empty and snap.feed.report.skipped_rows == {
        "vehicle.timestamp is after the feed's header.timestamp": 2
    }


def test_a_vehicle_without_start_date_is_published(hour, red_model):
    """start_date is optional in GTFS-realtime: its trip is published without one."""
    server = FeedServer(hour, step=3)
    try:
        tracker = _tracker(server)
        for _ in range(30):
            tracker.poll()
    finally:
        server.close()
    for v in tracker.vehicles.values():
        v.start_date = None
    _predict(tracker, red_model)
    feed = tracker.trip_updates()
    assert len(feed.entity) > 0 and not any(e.trip_update.trip.HasField("start_date") for e in feed.entity)
    assert all(v.to_dict(tracker.now())["start_date"] is None for v in tracker.vehicles.values())


def test_a_gzip_bomb_or_a_huge_snapshot_is_refused_before_it_is_all_in_memory(hour, monkeypatch):
    import gzip

    monkeypatch.setattr(feeds, "MAX_SNAPSHOT_BYTES", 1 << 20)
    bomb = gzip.compress(b" " * (4 << 20))
    with pytest.raises(feeds.FeedError, match="more than 1048576 bytes once decompressed"):
        feeds.read_snapshot(bomb, "VehiclePositions", "bomb.json.gz")
    text = json.dumps({"header": {"timestamp": 1_683_547_200}, "entity": []}).encode()
    two_members = gzip.compress(text[:20]) + gzip.compress(text[20:])  # as `cat a.gz b.gz` makes
    assert feeds.read_snapshot(two_members, "VehiclePositions", "two members").timestamp == 1_683_547_200
    monkeypatch.setattr(feeds, "MAX_ENTITIES", 5)
    with pytest.raises(feeds.FeedError, match="more than the 5 a snapshot may have"):
        feeds.read_snapshot(snapshot_bytes(hour.head(6), 1_683_547_200), "VehiclePositions", "big")


def test_a_report_behind_its_trip_does_not_teach_a_false_next_stop():
    """One glitch (a trip reported back at a stop it had left), or a second vehicle on the trip,
    must not make a branch point: the stops ahead of A stay B, C, D."""
    tracker = LiveTracker(HttpSource("http://127.0.0.1:9/", 1.0, clock=lambda: 0.0), LiveConfig.from_dict({}))
    tracker.take(_rows([(0, "T1", "A", 1), (60, "T1", "B", 2), (120, "T1", "C", 3), (180, "T1", "D", 4)]))
    assert tracker.stops_after("Red", 0, "A") == ["B", "C", "D"]
    tracker.take(_rows([(200, "T2", "B", 2), (230, "T2", "A", 1), (260, "T2", "C", 3)]))
    tracker.take(_rows([(300, "T3", "C", 3), (310, "T3", "A", 1, "ghost"), (360, "T3", "D", 4)]))
    assert tracker.stops_after("Red", 0, "A") == ["B", "C", "D"]
    assert tracker.stops_after("Red", 0, "B") == ["C", "D"]


def test_the_state_keeps_a_window_of_history_on_a_feed_that_runs_for_days():
    """Trips older than ``STATE_WINDOW_S`` before the newest snapshot leave the state, the stop
    order's trip positions and the vehicles once the window is an hour past; newer ones stay."""
    from mbta_ray.realtime.live import COMPACT_EVERY_S, STATE_WINDOW_S

    tracker = LiveTracker(HttpSource("http://127.0.0.1:9/", 1.0, clock=lambda: 0.0), LiveConfig.from_dict({}))
    hours = int((STATE_WINDOW_S + COMPACT_EVERY_S) // 3600) + 2
    for h in range(hours):
        frame = _rows([(h * 3600, f"T{h}", "A", 1), (h * 3600 + 60, f"T{h}", "B", 2)])
        tracker.take(frame)
        tracker.latest = int(frame["feed_timestamp"].max())
        tracker.compact()
    newest = tracker.latest
    kept = {int(k.split("|T")[-1]) for k in tracker._current}
    t0 = 1_683_547_200
    oldest_allowed = newest - STATE_WINDOW_S - COMPACT_EVERY_S
    assert kept == set(range(min(kept), hours)) and t0 + 3600 * min(kept) + 60 >= oldest_allowed
    assert 0 not in kept and hours - 1 in kept
    assert all(v.feed_timestamp >= newest - STATE_WINDOW_S - COMPACT_EVERY_S for v in tracker.vehicles.values())
    assert len(tracker._taken) <= (STATE_WINDOW_S + COMPACT_EVERY_S) // 3600 + 1
    assert tracker.state.arrival_at(f"20230508|Red|T{hours - 1}", "B", newest) is not None
    assert tracker.state.arrival_at("20230508|Red|T0", "A", newest) is None
    assert tracker.stops_after("Red", 0, "A") == ["B"]  # what was learned stays


def test_a_feed_that_drips_its_bytes_times_out_as_a_whole():
    """The timeout is for the whole answer, not each read: a server sending a byte every 0.2 s
    is a timeout after ~1 s, not after its whole body."""
    from mbta_ray.realtime.live import fetch_bytes

    class Drip(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(feeds.FeedError, match="no answer within 1 s"):
            fetch_bytes(f"http://127.0.0.1:{server.server_address[1]}/vp.pb", 1.0)
        assert time.monotonic() - started < 3
    finally:
        server.shutdown()
        server.server_close()
