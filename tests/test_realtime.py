"""GTFS-realtime readers (real snapshots in three forms, broken ones) and the network state."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbta_ray.errors import ConfigError, MissingFileError
from mbta_ray.realtime import feeds
from mbta_ray.realtime.state import NetworkState, trip_key

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FEEDS = Path(__file__).resolve().parent / "fixtures" / "feeds"
VP_JSON = FEEDS / "vehicle_positions_enhanced_2022-07-05T12-35-16Z.json.gz"
TU_JSON = FEEDS / "trip_updates_enhanced_2022-05-08T06-04-57Z.json.gz"
EMPTY, BLANK = FEEDS / "empty.json.gz", FEEDS / "one_blank_record.json.gz"
VP_ARCHIVE = FEEDS / "vehicle_positions_2023-05-08T12_first.parquet"
TU_ARCHIVE = FEEDS / "trip_updates_2023-05-08T12_first.parquet"


def _to_protobuf(json_path: Path, out: Path) -> Path:
    """The JSON snapshot as GTFS-realtime protobuf (MBTA's enhanced-only fields dropped)."""
    from google.protobuf import json_format
    from google.transit import gtfs_realtime_pb2

    message = json.loads(gzip.decompress(json_path.read_bytes()))
    feed = json_format.ParseDict(message, gtfs_realtime_pb2.FeedMessage(), ignore_unknown_fields=True)
    out.write_bytes(feed.SerializeToString())
    return out


# --- readers --------------------------------------------------------------------------------------


def test_real_enhanced_json_snapshots_read_with_every_skip_counted():
    vp = feeds.read_vehicle_positions([VP_JSON])
    raw = json.loads(gzip.decompress(VP_JSON.read_bytes()))
    assert vp.report.snapshots == 1 and vp.report.rows == len(vp.frame) > 600
    assert len(vp.frame) + sum(vp.report.skipped_rows.values()) == len(raw["entity"])
    assert set(vp.frame["status"]) <= set(feeds.STATUSES) and vp.frame["timestamp"].gt(1.6e9).all()
    assert (vp.frame["feed_timestamp"] == raw["header"]["timestamp"]).all()
    red = vp.frame[vp.frame["route_id"] == "Red"]
    assert len(red) > 5 and red["latitude"].between(42, 43).all()
    tu = feeds.read_trip_updates([TU_JSON])
    updates = sum(
        len(e["trip_update"].get("stop_time_update", []))
        for e in json.loads(gzip.decompress(TU_JSON.read_bytes()))["entity"]
    )
    assert len(tu.frame) + sum(tu.report.skipped_rows.values()) >= updates > 1000
    assert tu.frame["arrival_time"].notna().any() and tu.frame["stop_id"].notna().all()


def test_degenerate_real_snapshots():
    """A feed with no entities is a snapshot with no rows; a blank entity is a counted skip."""
    empty = feeds.read_vehicle_positions([EMPTY])
    assert (
        empty.report.snapshots == 1 and empty.frame.empty and list(empty.frame.columns) == list(feeds.VEHICLE_COLUMNS)
    )
    blank = feeds.read_vehicle_positions([BLANK])
    assert blank.frame.empty and blank.report.skipped_rows == {"entity without vehicle": 1}
    assert feeds.read_trip_updates([BLANK]).report.skipped_rows == {"entity without trip_update": 1}


def test_protobuf_json_and_archive_forms_read_the_same(tmp_path):
    """The same snapshot as protobuf reads as it does as JSON; an archive's rows match it too."""
    for reader, source in ((feeds.read_vehicle_positions, VP_JSON), (feeds.read_trip_updates, TU_JSON)):
        pb = _to_protobuf(source, tmp_path / f"{source.name}.pb")
        from_json, from_pb = reader([source]).frame, reader([pb]).frame
        pd.testing.assert_frame_equal(from_json, from_pb)
        plain = tmp_path / "plain.json"  # not gzipped: the form comes from the bytes, not the name
        plain.write_bytes(gzip.decompress(source.read_bytes()))
        pd.testing.assert_frame_equal(reader([plain]).frame, from_json)
    archive = feeds.read_vehicle_positions([VP_ARCHIVE])
    assert archive.report.snapshots == len(pq.read_table(VP_ARCHIVE, columns=["feed_timestamp"]).column(0).unique())
    mixed = feeds.read_vehicle_positions([VP_ARCHIVE, VP_JSON, EMPTY])
    assert len(mixed.frame) == len(archive.frame) + feeds.read_vehicle_positions([VP_JSON]).report.rows
    assert mixed.frame["feed_timestamp"].is_monotonic_increasing


def test_a_folder_stands_for_its_files(tmp_path):
    (tmp_path / "snaps" / ".hidden").mkdir(parents=True)
    for name in ("a.json.gz", "b.json.gz"):
        (tmp_path / "snaps" / name).write_bytes(VP_JSON.read_bytes())
    (tmp_path / "snaps" / ".hidden" / "x").write_text("not a feed")
    feed = feeds.read_vehicle_positions([tmp_path / "snaps"])
    assert feed.report.files == 2 and feed.report.snapshots == 2 and not feed.report.skipped_snapshots
    (tmp_path / "none").mkdir()
    with pytest.raises(MissingFileError, match="none: a folder with no feed files"):
        feeds.read_vehicle_positions([tmp_path / "none"])
    with pytest.raises(MissingFileError, match="nope.pb: no such file"):
        feeds.read_vehicle_positions([tmp_path / "nope.pb"])


def _broken_files(tmp_path: Path) -> dict[str, Path]:
    good = VP_JSON.read_bytes()
    files = {
        "truncated gzip": good[: len(good) // 2],
        "not valid JSON": gzip.compress(b'{"header": {"timestamp": 1}, "entity": [}'),
        "no header.timestamp": gzip.compress(b'{"entity": []}'),
        "not a GTFS-realtime protobuf": b"\x08\x96\x01 garbage \xff\xff\xff\xff",
        "a GTFS-realtime feed is a JSON object": b"[1, 2, 3]",
        "not a readable parquet file": b"PAR1 truncated",
        "JSON nested too deeply": b'{"header": {"timestamp": 1700000000}, "entity": ' + b"[" * 100_000,
        "is not a time in epoch seconds": b'{"header": {"timestamp": 1700000000000}, "entity": []}',  # ms
        "no header.timestamp (got 'inf')": b'{"header": {"timestamp": Infinity}, "entity": []}',
    }
    out = {}
    for why, data in files.items():
        path = tmp_path / f"bad-{len(out)}.feed"
        path.write_bytes(data)
        out[why] = path
    return out


def test_broken_snapshots_are_skipped_and_reported_by_name_never_ending_a_replay(tmp_path):
    broken = _broken_files(tmp_path)
    feed = feeds.read_vehicle_positions([VP_JSON, *broken.values(), BLANK])
    assert feed.report.snapshots == 2 and feed.report.rows == feeds.read_vehicle_positions([VP_JSON]).report.rows
    skipped = dict(feed.report.skipped_snapshots)
    for why, path in broken.items():
        assert why in skipped[str(path)], (why, skipped)
    assert "9 snapshot(s) skipped" in feed.report.summary()
    for why, path in broken.items():  # alone, a broken file is an error naming it and saying why
        with pytest.raises(feeds.FeedError, match="no VehiclePositions snapshot could be read") as err:
            feeds.read_vehicle_positions([path])
        assert str(path) in str(err.value) and why in str(err.value)


def test_a_corrupt_row_group_of_an_archive_is_skipped_and_counted(tmp_path):
    table = pq.read_table(VP_ARCHIVE)
    path = tmp_path / "archive.parquet"
    pq.write_table(table, path, row_group_size=len(table) // 4 + 1, compression="snappy")
    whole = feeds.read_vehicle_positions([path])
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = col.data_page_offset
    data[start + 8 : start + 200] = b"\x00" * 192  # smash the second row group's first pages
    path.write_bytes(bytes(data))
    feed = feeds.read_vehicle_positions([path])
    assert feed.report.skipped_snapshots and "row group 1" in feed.report.skipped_snapshots[0][0]
    assert 0 < len(feed.frame) < len(whole.frame)


def test_rows_with_bad_values_are_skipped_with_the_field_named(tmp_path):
    snapshot = {
        "header": {"timestamp": 1700000000},
        "entity": [
            {
                "id": "1",
                "vehicle": {
                    "current_status": "STOPPED_AT",
                    "stop_id": "70061",
                    "timestamp": "soon",
                    "trip": {"trip_id": "t1", "route_id": "Red", "direction_id": 0},
                },
            },
            {
                "id": "2",
                "vehicle": {
                    "current_status": "PARKED",
                    "stop_id": "70061",
                    "timestamp": 1700000000,
                    "trip": {"trip_id": "t2", "route_id": "Red", "direction_id": 0},
                },
            },
            {
                "id": "3",
                "vehicle": {
                    "current_status": 1,
                    "stop_id": "70063",
                    "timestamp": 1699999990,
                    "trip": {"trip_id": "t3", "route_id": "Red", "direction_id": 0},
                },
            },
        ],
    }

    def entity(trip: str, **changes) -> dict:
        vehicle = {"current_status": "STOPPED_AT", "stop_id": "70061", "timestamp": 1700000000}
        vehicle["trip"] = {"trip_id": trip, "route_id": "Red", "direction_id": changes.pop("direction_id", 0)}
        return {"id": trip, "vehicle": vehicle | changes}

    snapshot["entity"] += [
        entity("t4", timestamp=1700000000000),  # milliseconds
        entity("t5", timestamp=-5),
        entity("t6", direction_id=300),  # would overflow the int8 column
        entity("t7", direction_id=0.5),
        entity("t8", position={"latitude": 420.0, "longitude": -71.0}),
        entity("t9", position={"latitude": 42.0, "longitude": -710.0}),
        entity("t10", vehicle={"id": {"a": [[[[]]]]}}),  # nested, not a value we read: not a reason to skip
    ]
    for trip, start in (("t11", "25:10:00"), ("t12", "8am")):  # a start time is optional: a bad one is dropped
        snapshot["entity"].append(entity(trip))
        snapshot["entity"][-1]["vehicle"]["trip"]["start_time"] = start
    snapshot["entity"].append(entity("t13", position={"latitude": 420.0, "longitude": -71.0}))  # skipped anyway:
    snapshot["entity"][-1]["vehicle"]["trip"]["start_time"] = "٨:00:00"  # its odd start time is not counted
    path = tmp_path / "vp.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(snapshot).encode())  # a byte-order mark is still JSON
    feed = feeds.read_vehicle_positions([path])
    assert feed.report.skipped_rows == {
        "vehicle.timestamp is not a number": 1,
        "vehicle.current_status is not a GTFS-realtime status": 1,
        "vehicle.timestamp is not a time in epoch seconds": 2,
        "vehicle.trip.direction_id is not 0 or 1": 2,
        "vehicle.position.latitude is not a latitude": 2,
        "vehicle.position.longitude is not a longitude": 1,
    }
    assert feed.frame["status"].tolist() == ["STOPPED_AT"] * 4  # the enum number 1, as archives store it
    assert feed.frame["trip_id"].tolist() == ["t3", "t10", "t11", "t12"]
    assert feed.frame["start_time"].tolist()[2:] == ["25:10:00", pd.NA]
    assert feed.report.ignored_fields == {"vehicle.trip.start_time is not HH:MM:SS (row kept without it)": 1}
    assert "fields ignored: 1 vehicle.trip.start_time" in feed.report.summary()
    twice = feeds.read_vehicle_positions([path, path])  # the same snapshot twice: its rows and notes once
    assert twice.report.ignored_fields == feed.report.ignored_fields and twice.frame.equals(feed.frame)
    one = feeds.read_snapshot(path.read_bytes(), "VehiclePositions", "vp.json").feed
    assert one.report.ignored_fields == feed.report.ignored_fields and "_ignored" not in one.frame
    clean = feeds.read_vehicle_positions([VP_JSON])
    assert not clean.report.ignored_fields and "fields ignored" not in clean.report.summary()


# --- state ----------------------------------------------------------------------------------------

T0 = 1_700_000_000


def vp(rows: list[tuple], lag: int = 5) -> pd.DataFrame:
    """Rows (vehicle timestamp offset, trip, status, stop, sequence[, known offset][, vehicle])."""
    out = []
    for r in rows:
        ts, trip, status, stop, seq = r[:5]
        known = r[5] if len(r) > 5 and r[5] is not None else ts + lag
        out.append(
            {
                "feed_timestamp": T0 + known,
                "timestamp": T0 + ts,
                "vehicle_id": r[6] if len(r) > 6 else f"v-{trip}",
                "trip_id": trip,
                "route_id": "Red",
                "direction_id": 0,
                "start_date": "20231114",
                "stop_id": stop,
                "stop_sequence": float(seq),
                "status": status,
                "latitude": 42.3,
                "longitude": -71.1,
            }
        )
    frame = pd.DataFrame(out, columns=list(feeds.VEHICLE_COLUMNS))
    frame["direction_id"] = frame["direction_id"].astype("Int8")
    return frame


def key(trip: str) -> str:
    return trip_key("20231114", "Red", trip)


def test_an_arrival_is_the_first_stopped_at_known_from_its_snapshot():
    s = NetworkState()
    s.observe(
        vp(
            [
                (0, "t1", "IN_TRANSIT_TO", "A", 1),
                (100, "t1", "STOPPED_AT", "A", 1),
                (110, "t1", "STOPPED_AT", "A", 1),
                (150, "t1", "IN_TRANSIT_TO", "B", 2),
                (200, "t1", "INCOMING_AT", "B", 2),
                (230, "t1", "STOPPED_AT", "B", 2),
            ]
        )
    )
    assert s.arrivals(key("t1"), T0 + 104) == []  # reported at 100, published at 105
    (a,) = s.arrivals(key("t1"), T0 + 105)
    assert (a.stop_id, a.time, a.known_at) == ("A", T0 + 100, T0 + 105)
    assert [(x.stop_id, x.time) for x in s.arrivals(key("t1"), T0 + 1000)] == [("A", T0 + 100), ("B", T0 + 230)]
    now = s.position(key("t1"), T0 + 160)
    assert (now.status, now.stop_id, now.timestamp) == ("IN_TRANSIT_TO", "B", T0 + 150)
    assert s.last_arrival(key("t1"), T0 + 160).stop_id == "A"
    assert s.position(key("t1"), T0 + 4) is None and list(s.trips(T0 + 4)) == []


def test_a_vehicle_switching_trips_starts_a_new_trip():
    s = NetworkState()
    s.observe(
        vp(
            [
                (0, "t1", "STOPPED_AT", "A", 1, None, "v1"),
                (60, "t1", "STOPPED_AT", "B", 2, None, "v1"),
                (300, "t2", "STOPPED_AT", "B", 1, None, "v1"),
                (400, "t2", "IN_TRANSIT_TO", "A", 2, None, "v1"),
            ]
        )
    )
    assert [a.stop_id for a in s.arrivals(key("t1"), T0 + 1000)] == ["A", "B"]
    assert [a.stop_id for a in s.arrivals(key("t2"), T0 + 1000)] == ["B"]
    assert s.position(key("t1"), T0 + 1000).timestamp == T0 + 60  # t1 ended where v1 left it
    assert s.position(key("t2"), T0 + 1000).stop_id == "A"


def test_out_of_order_and_duplicate_snapshots():
    """A snapshot fed twice changes nothing; an older report fed late lowers the arrival only from the
    moment it was published; a stale position never replaces a newer one."""
    s = NetworkState()
    rows = vp([(100, "t1", "STOPPED_AT", "A", 1, 130), (150, "t1", "IN_TRANSIT_TO", "B", 2, 160)])
    s.observe(rows)
    s.observe(rows)
    assert [a.time for a in s.arrivals(key("t1"), T0 + 200)] == [T0 + 100]
    s.observe(vp([(90, "t1", "STOPPED_AT", "A", 1, 170)]))  # published late, measured earlier
    assert s.arrival_at(key("t1"), "A", T0 + 165).time == T0 + 100
    assert s.arrival_at(key("t1"), "A", T0 + 170).time == T0 + 90
    assert s.position(key("t1"), T0 + 200).stop_id == "B"  # the report from 90 s is older than 150 s
    s.observe(vp([(80, "t1", "STOPPED_AT", "A", 1, 120)]))  # a snapshot older than any fed: known sooner
    assert s.arrival_at(key("t1"), "A", T0 + 125).time == T0 + 80
    assert s.last_passed("Red", 0, "A", T0 + 125).time == T0 + 80


def test_a_loop_route_visits_a_stop_twice():
    s = NetworkState()
    s.observe(
        vp([(0, "t1", "STOPPED_AT", "L", 1), (100, "t1", "STOPPED_AT", "M", 2), (200, "t1", "STOPPED_AT", "L", 3)])
    )
    assert [(a.stop_id, a.stop_sequence) for a in s.arrivals(key("t1"), T0 + 999)] == [("L", 1), ("M", 2), ("L", 3)]
    assert s.arrival_at(key("t1"), "L", T0 + 999).time == T0  # the first visit, unless the sequence says
    assert s.arrival_at(key("t1"), "L", T0 + 999, stop_sequence=3.0).time == T0 + 200


def test_recent_travel_and_the_vehicle_ahead_use_other_trips_known_at_t():
    s = NetworkState()
    s.observe(
        vp(
            [
                (0, "t1", "STOPPED_AT", "A", 1),
                (100, "t1", "STOPPED_AT", "B", 2),
                (300, "t2", "STOPPED_AT", "A", 1),
                (420, "t2", "STOPPED_AT", "B", 2),
                (600, "t3", "STOPPED_AT", "A", 1),
                (690, "t3", "STOPPED_AT", "B", 2),
            ]
        )
    )
    got = s.recent_travel("Red", 0, "A", "B", T0 + 700)
    assert [(tr.trip_key, tr.travel_s) for tr in got] == [(key("t3"), 90.0), (key("t2"), 120.0), (key("t1"), 100.0)]
    assert got[0].age_s == 10.0
    assert [tr.trip_key for tr in s.recent_travel("Red", 0, "A", "B", T0 + 694)] == [
        key("t2"),
        key("t1"),
    ]  # t3 at B not yet published
    assert [tr.trip_key for tr in s.recent_travel("Red", 0, "A", "B", T0 + 700, n=1, exclude=key("t3"))] == [key("t2")]
    assert s.recent_travel("Red", 1, "A", "B", T0 + 700) == [] and s.recent_travel("Red", 0, "B", "A", T0 + 700) == []
    assert s.last_passed("Red", 0, "A", T0 + 700, exclude=key("t3")).time == T0 + 300
    assert s.last_passed("Red", 0, "A", T0 + 604).time == T0 + 300


_events = st.lists(
    st.tuples(
        st.integers(0, 600),  # vehicle timestamp offset
        st.sampled_from(["t1", "t2", "t3"]),
        st.sampled_from(["STOPPED_AT", "IN_TRANSIT_TO"]),
        st.integers(1, 4),  # stop (and sequence)
        st.integers(0, 120),  # publication lag
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_events, st.integers(0, 800))
def test_nothing_after_t_changes_an_answer_at_t(events, t):
    """The state fed everything answers at t exactly as one fed only what was published by t, also
    where another route shares the stops (t3 runs as Mattapan: the shared answers take it in)."""
    rows = vp([(ts, trip, status, f"S{stop}", stop, ts + lag) for ts, trip, status, stop, lag in events])
    from mbta_ray.realtime.requests import _hop

    rows.loc[rows["trip_id"] == "t3", "route_id"] = "Mattapan"
    keys = {"t1": key("t1"), "t2": key("t2"), "t3": trip_key("20231114", "Mattapan", "t3")}
    full, past = NetworkState(), NetworkState()
    full.observe(rows.sample(frac=1.0, random_state=t))  # any feeding order
    past.observe(rows[rows["feed_timestamp"] <= T0 + t])
    at = T0 + t
    for trip in ("t1", "t2", "t3"):
        assert full.arrivals(keys[trip], at) == past.arrivals(keys[trip], at)
        assert full.position(keys[trip], at) == past.position(keys[trip], at)
        for u, v in (("S1", "S2"), ("S1", "S3"), ("S2", "S4")):
            for shared in (False, True):
                assert full.recent_travel("Red", 0, u, v, at, exclude=keys[trip], shared=shared) == past.recent_travel(
                    "Red", 0, u, v, at, exclude=keys[trip], shared=shared
                )
            hops = [_hop(x, keys[trip], x.position(keys[trip], at), u, v, at) for x in (full, past)]
            assert hops[0] == hops[1]
    for stop in ("S1", "S2", "S3", "S4"):
        assert full.last_passed("Red", 0, stop, at) == past.last_passed("Red", 0, stop, at)
        for trip in ("t1", "t2", "t3"):
            assert full.remaining_from("Red", 0, stop, 42.3, -71.1, at, exclude=keys[trip]) == past.remaining_from(
                "Red", 0, stop, 42.3, -71.1, at, exclude=keys[trip]
            )
            assert full.dwell_and_run("Red", 0, "S1", stop, at, exclude=keys[trip]) == past.dwell_and_run(
                "Red", 0, "S1", stop, at, exclude=keys[trip]
            )
            assert full.dwell_and_run("Red", 0, {"S1", "S2"}, stop, at, exclude=keys[trip]) == past.dwell_and_run(
                "Red", 0, {"S1", "S2"}, stop, at, exclude=keys[trip]
            )
    assert full.stops_near("Red", 0, 42.3, -71.1, at) == past.stops_near("Red", 0, 42.3, -71.1, at)
    assert sorted(full.trips(at)) == sorted(past.trips(at))


def test_remaining_time_from_where_the_last_vehicles_were():
    """Other trips' reports near a point on the way to a stop, and how long after them they arrived;
    the request's moment anchors a vehicle between stops on it."""
    from types import SimpleNamespace

    from mbta_ray.realtime.requests import expected_arrivals, position_anchor

    rows = vp(
        [
            (0, "t1", "IN_TRANSIT_TO", "B", 2),
            (40, "t1", "IN_TRANSIT_TO", "B", 2),
            (100, "t1", "STOPPED_AT", "B", 2),  # t1: 60 s from the second point to B
            (300, "t2", "IN_TRANSIT_TO", "B", 2),
            (350, "t2", "STOPPED_AT", "B", 2),  # t2: 50 s from its first point
            (600, "t3", "STOPPED_AT", "A", 1),
            (640, "t3", "IN_TRANSIT_TO", "B", 2),
        ]
    )
    # Along the way: 0 m (t1 at 0), 1 km (t1 at 40, t2 at 300, t3 at 640).
    north = [0.0, 1000.0, 1000.0, 1000.0, 1000.0, 0.0, 1000.0]
    rows["latitude"] = 42.3 + np.degrees(np.asarray(north) / 6_371_000.0)
    s = NetworkState()
    s.observe(rows)
    at = T0 + 650
    lat = float(rows["latitude"].iloc[-1])
    assert s.remaining_from("Red", 0, "B", lat, -71.1, at, exclude=key("t3")) == [50.0, 60.0]  # newest first
    assert s.remaining_from("Red", 0, "B", lat, -71.1, at, exclude=key("t3"), n=1) == [50.0]
    assert s.remaining_from("Red", 0, "B", 42.3, -71.1, at, exclude=key("t3")) == [100.0]  # t1 from 0 m
    assert s.remaining_from("Red", 0, "B", lat + 0.01, -71.1, at) == []  # 1.1 km away: nobody passed there
    assert s.remaining_from("Red", 0, "B", lat, -71.1, T0 + 352, exclude=key("t3")) == [60.0]  # t2 at B not known
    assert s.remaining_from("Red", 0, "B", lat, -71.1, at, max_age_s=300) == []  # reports older than 5 min

    # The anchor: t3 reported at 640 on its way to B; the last vehicles took 55 s (median) from there.
    def answer(*times, path=(None, None, None)):
        stops = ("B", "C", "D")
        return SimpleNamespace(
            predictions=[
                SimpleNamespace(
                    stop_id=x, predicted_arrival=pd.Timestamp(T0 + t, unit="s", tz="UTC"), path_travel_seconds=p
                )
                for x, t, p in zip(stops, times, path)
            ]
        )

    got = expected_arrivals(s, key("t3"), at, answer(720, 700, 900))
    assert got == [T0 + 695.0, T0 + 695.0, T0 + 875.0]  # 720 -> 695: every stop moved by -25 s, in order
    assert expected_arrivals(s, key("t2"), at, answer(720, 700, 900)) == [T0 + 720.0, T0 + 720.0, T0 + 900.0]
    # Where the line's time for a hop is known, the stop follows the one before by it.
    assert expected_arrivals(s, key("t3"), at, answer(720, 700, 900, path=(60.0, 210.0, None))) == [
        T0 + 695.0,
        T0 + 845.0,  # B + 150 s (the path's B -> C hop), not the model's B -> C step (0 s)
        T0 + 1025.0,  # C + the model's C -> D step (its times made monotone: 720 -> 900): no path to D
    ]
    assert expected_arrivals(s, key("t2"), at, answer(720, 700, 900, path=(None, 50.0, 110.0)))[-1] == T0 + 780.0
    # Not heard from for longer than the last vehicles took (55 s): it is held short of B, and it
    # arrives when the slower of them would have from this point (t1: 60 - 57 s more), else now.
    assert position_anchor(s, key("t3"), T0 + 690, "B") == T0 + 695.0
    assert position_anchor(s, key("t3"), T0 + 697, "B") == T0 + 700.0
    assert position_anchor(s, key("t3"), T0 + 720, "B") == T0 + 720.0


def test_routes_that_share_a_stop_share_its_approach_and_stay():
    """The Green Line's branches share the trunk's platforms: a Green-C train heading to a trunk stop
    is timed from the Green-D trains that went there (the other direction's, and a stop of D's own
    branch, say nothing about it), and each answer still only uses what was known at its moment."""
    rows = vp(
        [
            (0, "d1", "STOPPED_AT", "A", 1),
            (40, "d1", "IN_TRANSIT_TO", "K", 2),  # d1 (Green-D): 40 s at A, then 80 s to K
            (120, "d1", "STOPPED_AT", "K", 2),
            (200, "x1", "IN_TRANSIT_TO", "K", 2),  # x1: Green-D the other way (direction 1): ignored
            (230, "x1", "STOPPED_AT", "K", 2),
            (300, "d2", "IN_TRANSIT_TO", "Q", 2),  # d2: Green-D to Q, a stop C trains never make
            (330, "d2", "STOPPED_AT", "Q", 2),
            (600, "c1", "STOPPED_AT", "A", 1),
            (650, "c1", "IN_TRANSIT_TO", "K", 2),  # c1 (Green-C), at the point d1 passed at 40
        ]
    )
    rows["route_id"] = ["Green-D"] * 7 + ["Green-C"] * 2
    rows.loc[rows["trip_id"] == "x1", "direction_id"] = 1
    s = NetworkState()
    s.observe(rows)
    c1 = trip_key("20231114", "Green-C", "c1")
    at = T0 + 660
    assert s.remaining_from("Green-C", 0, "K", 42.3, -71.1, at, exclude=c1) == [80.0]
    assert s.dwell_and_run("Green-C", 0, "A", "K", at, exclude=c1) == [(40.0, 80.0)]
    assert s.remaining_from("Green-C", 0, "Q", 42.3, -71.1, at, exclude=c1) == [30.0]  # asked: D's own
    assert s.remaining_from("Green-C", 1, "K", 42.3, -71.1, at) == [30.0]  # direction 1: x1 alone
    assert s.remaining_from("Green-C", 0, "K", 42.3, -71.1, T0 + 124) == []  # d1 at K not yet published
    # The anchor of the trip: c1 reported at 650 where d1 took 80 s more to K.
    from mbta_ray.realtime.requests import position_anchor

    assert position_anchor(s, c1, at, "K") == T0 + 730.0
    # Buses keep to their own route: two that share a stop may come to it by different streets.
    buses = rows.assign(route_id=["39"] * 7 + ["57"] * 2)
    b = NetworkState()
    b.observe(buses)
    assert b.remaining_from("57", 0, "K", 42.3, -71.1, at) == [] and b.dwell_and_run("57", 0, "A", "K", at) == []
    assert b.remaining_from("39", 0, "K", 42.3, -71.1, at) == [80.0]


def test_a_late_fed_report_of_a_visit_under_another_track_or_no_direction_is_taken_in():
    """``observe`` takes rows in any order: an earlier-published report of a visit fed after a later
    one, naming another track of the stop or no direction, moves the visit's arrival earlier (it
    raised a KeyError before)."""
    for variant in ("track", "direction"):
        rows = vp([(100, "t1", "STOPPED_AT", "70036", 1, 100), (90, "t1", "STOPPED_AT", "70036", 1, 90)])
        if variant == "track":
            rows.loc[1, "stop_id"] = "Oak Grove-02"
        else:
            rows["direction_id"] = pd.array([0, pd.NA], dtype="Int8")
        late, in_order = NetworkState(), NetworkState()
        late.observe(rows)  # the report published at 100 first
        in_order.observe(rows.iloc[::-1])
        for t in (T0 + 95, T0 + 200):
            assert [a.time for a in late.arrivals(key("t1"), t)] == [T0 + 90], variant  # known since 90
            assert late.arrivals(key("t1"), t) == in_order.arrivals(key("t1"), t), variant


def test_the_stops_after_the_next_follow_the_hops_of_every_route_that_makes_them():
    """Each stop after the next follows the one before by the hop's recent time, taken from the
    trains of every route that makes it (the model's answer's own path says only what its route
    did): here a Green-D train's K -> L, not the answer's path, nor the model's step."""
    from types import SimpleNamespace

    from mbta_ray.realtime.requests import expected_arrivals

    rows = vp(
        [
            (0, "d1", "STOPPED_AT", "K", 2),
            (100, "d1", "STOPPED_AT", "L", 3),  # d1 (Green-D): K -> L in 100 s
            (200, "d2", "STOPPED_AT", "K", 2),
            (320, "d2", "STOPPED_AT", "L", 3),  # d2: 120 s
            (300, "c0", "STOPPED_AT", "L", 3),
            (600, "c1", "STOPPED_AT", "J", 1),  # c1 (Green-C) at J: the model answers K, L, M
        ]
    )
    rows["route_id"] = ["Green-D"] * 4 + ["Green-C"] * 2
    s = NetworkState()
    s.observe(rows)
    c1 = trip_key("20231114", "Green-C", "c1")
    at = T0 + 610
    assert [tr.travel_s for tr in s.recent_travel("Green-C", 0, "K", "L", at, shared=True)] == [120.0, 100.0]
    assert s.recent_travel("Green-C", 0, "K", "L", at) == []  # no C train made K -> L
    assert s.recent_travel("Green-C", 0, "K", "L", T0 + 310, shared=True)[0].trip_key.endswith("d1")  # d2 at L: later

    def answer(*times, path):
        return SimpleNamespace(
            predictions=[
                SimpleNamespace(
                    stop_id=x, predicted_arrival=pd.Timestamp(T0 + t, unit="s", tz="UTC"), path_travel_seconds=p
                )
                for x, t, p in zip(("K", "L", "M"), times, path, strict=True)
            ]
        )

    got = expected_arrivals(s, c1, at, answer(700, 760, 900, path=(90.0, 150.0, 300.0)))
    # K from the model (no one went J -> K); L = K + 110 s (the D trains' median), not + 60 (the path)
    # nor + 60 (the model); M = L + 150 s (the path: no train made L -> M).
    assert got == [T0 + 700.0, T0 + 810.0, T0 + 960.0]


def test_a_trip_not_yet_at_any_stop_starts_from_the_arrival_it_is_on_its_way_to():
    """A vehicle that took its trip over between stops (no STOPPED_AT on it yet) is predicted from
    the arrival expected at the stop it heads to, and the API request is the one a client would send
    from there: valid, with no moment, departure or position, and the traversals as old as they will
    be then; all of it from what was known at the moment."""
    from mbta_ray.realtime.requests import expected_arrivals, trip_start, vehicle_request
    from mbta_ray.serve.schemas import PredictRequest

    rows = vp(
        [
            (40, "t1", "IN_TRANSIT_TO", "B", 2),
            (100, "t1", "STOPPED_AT", "B", 2),
            (250, "t1", "STOPPED_AT", "C", 3),  # t1: 60 s from the point to B, B -> C 150 s
            (300, "t2", "IN_TRANSIT_TO", "B", 2),
            (350, "t2", "STOPPED_AT", "B", 2),
            (480, "t2", "STOPPED_AT", "C", 3),  # t2: 50 s, B -> C 130 s
            (640, "t3", "IN_TRANSIT_TO", "B", 2),  # t3 on its way to B, never stood at a stop of its trip
            (700, "t3", "STOPPED_AT", "B", 2),  # published at 705: after the moment
            (640, "t4", "STOPPED_AT", "A", 1),
        ]
    )
    s = NetworkState()
    s.observe(rows)
    at = T0 + 650
    start = trip_start(s, key("t3"), at)
    assert (start.stop_id, start.stop_sequence, start.time, start.known_at) == ("B", 2.0, T0 + 695, at)  # 640 + 55
    assert start.expected and not s.last_arrival(key("t1"), at).expected
    # Held short of B for longer than the others took from there: expected now, i.e. a second on.
    assert trip_start(s, key("t3"), T0 + 702).time == T0 + 703
    assert trip_start(s, key("t3"), T0 + 705).time == T0 + 700  # once seen, the arrival itself
    assert trip_start(s, key("t4"), at).stop_id == "A"  # a trip standing at its first stop: that arrival
    assert trip_start(s, key("t3"), T0 + 644) is None  # its report is not known yet
    lone = NetworkState()
    lone.observe(rows[rows["trip_id"] == "t3"])
    assert trip_start(lone, key("t3"), at) is None  # no other vehicle went that way: nothing to expect
    past = NetworkState()  # what happened after the moment changes nothing at it
    past.observe(rows[rows["feed_timestamp"] <= at])
    assert trip_start(past, key("t3"), at) == start

    request = vehicle_request(s, key("t3"), start, "Red", 0, "t3", None, ["C"], at)
    sent = PredictRequest.model_validate(request.model_dump(mode="json"))  # what a client may send
    assert sent.moment is None and sent.departure is None and sent.position is None
    assert sent.actual_arrival.timestamp() == T0 + 695 and sent.stop_id == "B"
    assert sent.headway_ahead_seconds == 345.0  # t2 reached B at 350
    (c,) = sent.stops_ahead
    assert (c.recent_travel.median_seconds, c.recent_travel.vehicles) == (140.0, 2)
    assert c.recent_travel.age_seconds == (650 - 480) + 45  # as old as it will be at the arrival at B
    assert c.recent_hop_seconds == 140.0
    # The stops after B are never expected before B itself.
    from types import SimpleNamespace

    early = SimpleNamespace(
        predictions=[
            SimpleNamespace(
                stop_id="C", predicted_arrival=pd.Timestamp(T0 + 660, unit="s", tz="UTC"), path_travel_seconds=None
            )
        ]
    )
    assert expected_arrivals(s, key("t3"), at, early) == [T0 + 695.0]


def test_arrivals_far_ahead_are_published_a_little_early_and_in_order():
    """What riders are told: the expected time, earlier by half the centre of MBTA's accuracy window
    for how far ahead it is (0 s up to 1.5 min ahead; 7.5 s at 4.5 min, 15 s at 9 min, 30 s from
    21 min on; straight between), never before the moment, and in the order of the expected times."""
    from types import SimpleNamespace

    from mbta_ray.realtime.requests import expected_arrivals, published_arrivals, rider_time

    at = T0
    assert [rider_time(at + h, at) - at for h in (0, 60, 90, 270, 540, 1260, 3000)] == [
        0.0,
        60.0,
        90.0,
        270.0 - 7.5,
        540.0 - 15.0,
        1260.0 - 30.0,
        3000.0 - 30.0,
    ]
    assert rider_time(at + 180, at) == at + 180 - 0.5 * 7.5  # half way from 90 s (0) to 270 s (15)
    assert rider_time(at - 50, at) == at  # an arrival already due is published as now
    ahead = np.linspace(0, 2400, 2401)
    told = np.array([rider_time(at + h, at) for h in ahead])
    assert (np.diff(told) > 0).all()  # a later stop is never published before an earlier one
    s = NetworkState()
    s.observe(vp([(0, "t1", "STOPPED_AT", "A", 1)]))
    answer = SimpleNamespace(
        predictions=[
            SimpleNamespace(
                stop_id=x, predicted_arrival=pd.Timestamp(at + t, unit="s", tz="UTC"), path_travel_seconds=None
            )
            for x, t in (("B", 60), ("C", 600), ("D", 1500))
        ]
    )
    expected = expected_arrivals(s, key("t1"), at, answer)
    assert expected == [at + 60.0, at + 600.0, at + 1500.0]  # no anchor known: the model's times
    assert published_arrivals(s, key("t1"), at, answer) == [rider_time(a, at) for a in expected]


def test_the_real_hour_replays_into_state_quickly():
    """The archive's first snapshots, fed as a live service would (snapshot by snapshot), answer as
    the state fed all at once does."""
    frame = feeds.read_vehicle_positions([VP_ARCHIVE]).frame
    whole, live = NetworkState(), NetworkState()
    whole.observe(frame)
    for _, snapshot in frame.groupby("feed_timestamp", sort=True):
        live.observe(snapshot)
    t = int(frame["feed_timestamp"].quantile(0.7))
    keys = sorted(whole.trips(t))
    assert len(keys) > 20
    assert [whole.arrivals(k, t) for k in keys] == [live.arrivals(k, t) for k in keys]
    assert sum(len(whole.arrivals(k, t)) for k in keys) > 10
    assert np.all([whole.position(k, t) == live.position(k, t) for k in keys])


# --- the race -------------------------------------------------------------------------------------

RACE_T0 = 1_683_547_200  # 2023-05-08T12:00:00Z


def _archive(rows: list[dict], fields: dict[str, str], path: Path) -> Path:
    frame = pd.DataFrame([{fields.get(k, k): v for k, v in r.items()} for r in rows])
    frame.to_parquet(path, index=False)
    return path


def _tiny_replay(tmp_path: Path, took_over: bool = False) -> tuple[Path, Path]:
    """Red line, stops A-D (sequences 10-40). t1 and t2 ran ahead; t3 is raced; t4 starts later;
    with ``took_over``, t5's vehicle takes its trip over on the way to B (no stop of t5 before)."""
    stops = {"A": 10, "B": 20, "C": 30, "D": 40, "E": 50}
    reports = []

    def stopped(trip: str, stop: str, at: int, status: str = "STOPPED_AT") -> None:
        reports.append(
            {
                "feed_timestamp": RACE_T0 + at + 5,
                "timestamp": RACE_T0 + at,
                "vehicle_id": f"v-{trip}",
                "trip_id": trip,
                "route_id": "Red",
                "direction_id": 0,
                "start_date": "20230508",
                "stop_id": stop,
                "stop_sequence": stops[stop],
                "status": status,
                "latitude": 42.4,
                "longitude": -71.1,
            }
        )

    for stop, at in zip("ABCD", (0, 120, 300, 420)):
        stopped("t1", stop, at)
    for stop, at in zip("ABCD", (200, 330, 520, 650)):
        stopped("t2", stop, at)
    stopped("t3", "A", 600)
    stopped("t3", "B", 660, "IN_TRANSIT_TO")
    for stop, at in zip("BCD", (740, 950, 1080)):
        stopped("t3", stop, at)
    stopped("t4", "A", 900)
    stopped("t9", "A", 3000, "IN_TRANSIT_TO")  # the data run 30 min past the last moment
    if took_over:
        stopped("t5", "B", 780, "IN_TRANSIT_TO")
        for stop, at in zip("BC", (850, 1040)):
            stopped("t5", stop, at)
    vp = _archive(reports, feeds.VEHICLE_FIELDS, tmp_path / "vp.parquet")

    predictions = []

    def predicted(moment: int, trip: str, stop: str, at: int, route: str = "Red") -> None:
        predictions.append(
            {
                "feed_timestamp": RACE_T0 + moment,
                "trip_id": trip,
                "route_id": route,
                "direction_id": 0,
                "start_date": "20230508",
                "stop_id": stop,
                "stop_sequence": stops[stop],
                "arrival_time": RACE_T0 + at,
            }
        )

    for stop, at in zip("BCDE", (760, 1000, 1250, 1300)):  # moment 680: t3
        predicted(680, "t3", stop, at)
    predicted(680, "t4", "C", 1200)  # t4 has not started at 680
    predicted(680, "t3", "D", 2600, route="1")  # a bus route: not in the subway race
    predicted(690, "t3", "B", 700)  # the second snapshot of the minute: not a moment
    for stop, at in zip("BCD", (810, 960, 1090)):  # moment 800: t3 (B already arrived, at 740)
        predicted(800, "t3", stop, at)
    predicted(800, "t3", "E", 2700)  # beyond 30 min: not matched
    if took_over:
        predicted(800, "t5", "B", 870)
        predicted(800, "t5", "C", 1050)
    tu = _archive(predictions, feeds.TRIP_UPDATE_FIELDS, tmp_path / "tu.parquet")
    return vp, tu


def test_the_race_on_a_tiny_replay_matches_hand_computed_scores(tmp_path):
    from mbta_ray.realtime import race
    from mbta_ray.realtime.requests import expected_arrivals, rider_time
    from mbta_ray.serve.inference import ModelRunner
    from mbta_ray.serve.schemas import PredictRequest
    from tests.test_registry import make_model

    vp, tu = _tiny_replay(tmp_path)
    runner = ModelRunner(make_model(tmp_path / "m", 60.0, rounds=6), version="tiny")
    result = race.run([vp], [tu], runner, tmp_path / "out")
    s = result.summary
    assert s["rows"] == {"mbta_matched": 8, "in_scope": 6, "scored": 5, "not_started": 1}
    assert s["rows_left_out"] == {"already_arrived": 1, "no_actual": 1}
    assert s["window"]["moments"] == 2 and s["window_cut"] and s["coverage"] == 1.0
    # The first moment (680) is 675 s after the first VehiclePositions snapshot (5): said, not refused.
    assert s["window"]["history_s"] == 675 and s["short_history"].startswith("only 11 min of VehiclePositions")
    bins = {b["bin"]: b for b in s["bins"]}
    # MBTA: errors +20, +10 (0-3); +50, +10 (3-6); +170 (6-12: arrived 170 s early, not accurate).
    assert bins["0-3 min"]["n"] == 2 and bins["0-3 min"]["mbta"] == pytest.approx(
        {"mae": 15.0, "rmse": (250.0) ** 0.5, "bias": 15.0, "accurate": 1.0}
    )
    assert bins["3-6 min"]["mbta"]["mae"] == 30.0 and bins["3-6 min"]["mbta"]["accurate"] == 1.0
    assert bins["6-12 min"]["n"] == 1 and bins["6-12 min"]["mbta"]["bias"] == 170.0
    assert bins["6-12 min"]["mbta"]["accurate"] == 0.0
    assert bins["12-30 min"]["n"] == 0 and bins["12-30 min"]["mbta"]["mae"] is None
    # The rule: u = A at 600 then B at 740; medians of t1/t2 over the same u -> s.
    rule = {b: bins[b]["recent_segment"] for b in bins}
    assert rule["0-3 min"]["mae"] == 20.0 and rule["0-3 min"]["bias"] == -20.0  # 725 vs 740, 925 vs 950
    assert rule["3-6 min"]["mae"] == 35.0 and rule["6-12 min"]["bias"] == -45.0  # 910/950, 1050/1080; 1035/1080
    # The model: what the API answers for the same vehicle (u, its stops ahead in order, and the
    # real-time inputs worked out by hand from t1 and t2: recent travel (median, n, age), the hop
    # into each stop (A->B 120/130, B->C 180/190, C->D 120/130 s: medians 125, 185, 125), headway).
    rows = result.rows.set_index(["feed_timestamp", "stop_id"])
    vp_feed, tu_feed = feeds.read_vehicle_positions([vp]), feeds.read_trip_updates([tu])
    state = NetworkState()
    state.observe(vp_feed.frame)
    race_requests, _, _ = race.model_requests(result.rows, tu_feed.frame, state, runner)
    cases = (
        # (moment, u, arrival at u, headway, left u at (t3 in transit to B at 660; not yet left B at 800), ...)
        (
            680,
            "A",
            600,
            400.0,
            660,
            {"B": (125.0, 350.0, 125.0), "C": (310.0, 160.0, 185.0), "D": (435.0, 30.0, 125.0)},
        ),
        (800, "B", 740, 410.0, None, {"C": (185.0, 280.0, 185.0), "D": (310.0, 150.0, 125.0)}),
    )
    checked = 0
    for moment, u, at_u, headway, left, ahead in cases:
        request = PredictRequest.model_validate(
            {
                "route_id": "Red",
                "direction_id": 0,
                "stop_id": u,
                "trip_id": "t3",
                "actual_arrival": pd.Timestamp(RACE_T0 + at_u, unit="s", tz="UTC").isoformat(),
                "moment": pd.Timestamp(RACE_T0 + moment, unit="s", tz="UTC").isoformat(),
                "headway_ahead_seconds": headway,
                "departure": None if left is None else pd.Timestamp(RACE_T0 + left, unit="s", tz="UTC").isoformat(),
                "position": None if left is None else {"latitude": 42.4, "longitude": -71.1},  # its report at 660
                "stops_ahead": [
                    {
                        "stop_id": x,
                        "recent_travel": {"median_seconds": m, "vehicles": 2, "age_seconds": age},
                        "recent_hop_seconds": hop,
                    }
                    for x, (m, age, hop) in ahead.items()
                ],
            }
        )
        (answer,) = runner.predict([request])
        assert answer.missing_inputs == ([] if left is not None else ["departure", "position"])
        raced = [r for r in race_requests if r.moment.timestamp() == RACE_T0 + moment]
        pd.testing.assert_frame_equal(runner.features(raced), runner.features([request]), check_like=True)
        # The race scores that answer as the live feed publishes it: anchored where the vehicle is
        # (expected_arrivals, tested by hand above), then told riders (rider_time).
        t3 = trip_key("20230508", "Red", "t3")
        expected = expected_arrivals(state, t3, RACE_T0 + moment, answer)
        assert expected == sorted(expected) and min(expected) >= RACE_T0 + moment
        for p, arrival in zip(answer.predictions, expected, strict=True):
            if (RACE_T0 + moment, p.stop_id) not in rows.index:
                continue  # a stop ahead MBTA did not predict: not raced
            row = rows.loc[(RACE_T0 + moment, p.stop_id)]
            assert row["model_expected"] == pytest.approx(arrival, abs=1e-3)
            assert row["model"] == pytest.approx(rider_time(arrival, RACE_T0 + moment), abs=1e-3)
            checked += 1
    assert checked == 5  # every scored row (moment 680: B, C, D; 800: C, D)
    saved = json.loads((tmp_path / "out" / "race.json").read_text())
    assert saved["bins"] == s["bins"] and (tmp_path / "out" / "race.png").stat().st_size > 1000
    assert set(saved) >= {"model_version", "window", "rows", "coverage", "bins"}


def test_the_race_scores_a_trip_from_the_stop_its_vehicle_is_on_its_way_to(tmp_path):
    """t5's vehicle reported itself on its way to B (at 780) before any stop of t5: at the moment
    800 it is expected at B when t3 got there from the same point (80 s later: 860), and its later
    stops are the model's from there; coverage stays whole."""
    from mbta_ray.realtime import race
    from mbta_ray.serve.inference import ModelRunner
    from tests.test_registry import make_model

    vp, tu = _tiny_replay(tmp_path, took_over=True)
    runner = ModelRunner(make_model(tmp_path / "m", 60.0, rounds=6), version="tiny")
    result = race.run([vp], [tu], runner, tmp_path / "out")
    assert result.summary["coverage"] == 1.0 and result.summary["rows"]["scored"] == 7
    rows = result.rows[result.rows["trip_id"] == "t5"].set_index("stop_id")
    assert rows.loc["B", "model_expected"] == RACE_T0 + 860 and rows.loc["B", "model"] == RACE_T0 + 860
    assert rows.loc["B", "actual"] == RACE_T0 + 850
    # C: the model's answer to the request sent as of the arrival expected at B.
    state = NetworkState()
    state.observe(feeds.read_vehicle_positions([vp]).frame)
    tu_frame = feeds.read_trip_updates([tu]).frame
    asked, _, leads = race.model_requests(result.rows, tu_frame, state, runner)
    (request,) = [r for r in asked if r.trip_id == "t5"]
    assert request.stop_id == "B" and request.actual_arrival.timestamp() == RACE_T0 + 860 and request.moment is None
    assert [x.stop_id for x in request.stops_ahead] == ["C"]
    (answer,) = runner.predict([request])
    assert rows.loc["C", "model_expected"] == pytest.approx(
        max(RACE_T0 + 860, answer.predictions[0].predicted_arrival.timestamp())
    )
    assert sorted(leads.values()) == [(RACE_T0 + 800, RACE_T0 + 860.0)]


def test_the_race_verdict_is_bin_by_bin():
    """A bin is won with a lower MAE and an accurate share at or above MBTA's; bins without rows
    do not count."""
    from mbta_ray.realtime import race

    def b(label, n, mbta, model):
        return {
            "bin": label,
            "n": n,
            "mbta": dict(zip(("mae", "accurate"), mbta)),
            "model": dict(zip(("mae", "accurate"), model)),
        }

    summary = {
        "bins": [
            b("0-3 min", 9, (19.0, 0.94), (19.2, 0.95)),  # MAE behind
            b("3-6 min", 9, (42.9, 0.94), (40.0, 0.94)),  # level on the share: won
            b("6-12 min", 9, (74.7, 0.96), (66.0, 0.95)),  # share behind
            b("12-30 min", 0, (None, None), (None, None)),
        ]
    }
    assert race.wins(summary) == {"0-3 min": False, "3-6 min": True, "6-12 min": False}
    assert race.verdict(summary).endswith("in 1 of 3 bins; not in 0-3 min, 6-12 min")
    assert race.verdict({"bins": summary["bins"][3:]}) == "no bin has rows to compare the model and MBTA on"


def test_the_race_window_and_its_errors(tmp_path, monkeypatch):
    from mbta_ray.errors import DataError
    from mbta_ray.realtime import race
    from mbta_ray.serve.inference import ModelRunner
    from tests.test_registry import make_model

    vp, tu = _tiny_replay(tmp_path)
    runner = ModelRunner(make_model(tmp_path / "m", 60.0, rounds=3), version="tiny")
    monkeypatch.setattr(race, "MIN_HISTORY_S", 795)  # the moment (800) has exactly that much history
    one = race.run([vp], [tu], runner, tmp_path / "o1", start=RACE_T0 + 700, end=RACE_T0 + 900)
    assert one.summary["window"]["moments"] == 1 and one.summary["rows"]["mbta_matched"] == 3
    assert one.summary["window"]["history_s"] == 795 and one.summary["short_history"] is None
    with pytest.raises(
        DataError,
        match=r"no TripUpdates snapshot in the window from .* until .* at least 30 min before .* the TripUpdates run from",
    ):
        race.run([vp], [tu], runner, tmp_path / "o2", start=RACE_T0 + 1000, end=RACE_T0 + 1100)
    with pytest.raises(ConfigError, match="--from 'noon' is not an ISO time"):
        race.parse_time("noon", "--from")
    assert (
        race.parse_time("2023-05-08T12:00:00Z", "--from") == RACE_T0 == race.parse_time("2023-05-08T08:00-04:00", "x")
    )


def test_the_race_takes_trip_updates_without_direction_or_sequences_and_dates_with_dashes(tmp_path):
    """GTFS-realtime lets a TripUpdate leave out direction_id and stop_sequence (stop ids in order
    say the same), and a flattened archive may spell start_date 2023-05-08: the same race. The same
    TripUpdates given twice count once."""
    from mbta_ray.realtime import race
    from mbta_ray.serve.inference import ModelRunner
    from tests.test_registry import make_model

    vp, tu = _tiny_replay(tmp_path)
    runner = ModelRunner(make_model(tmp_path / "m", 60.0, rounds=6), version="tiny")
    reference = race.run([vp], [tu], runner, tmp_path / "ref").summary
    fields = feeds.TRIP_UPDATE_FIELDS
    sparse = pd.read_parquet(tu).drop(columns=[fields["direction_id"], fields["stop_sequence"]])
    sparse[fields["start_date"]] = "2023-05-08"
    sparse.to_parquet(tmp_path / "sparse.parquet", index=False)
    for name, files in (("sparse", [tmp_path / "sparse.parquet"]), ("twice", [tu, tu])):
        summary = race.run([vp], files, runner, tmp_path / name).summary
        assert summary["bins"] == reference["bins"] and summary["rows"] == reference["rows"], name
        assert summary["coverage"] == reference["coverage"] == 1.0
    twice = {"the same row again (a snapshot read twice)": len(pd.read_parquet(tu))}
    assert summary["feeds"]["trip_updates"]["skipped_rows"] == twice


def test_the_race_refuses_a_bad_out_and_an_empty_race_before_replaying_and_says_why(tmp_path):
    from mbta_ray.errors import ConfigError, DataError
    from mbta_ray.realtime import race
    from mbta_ray.serve.inference import ModelRunner
    from tests.test_registry import make_model

    vp, tu = _tiny_replay(tmp_path)
    runner = ModelRunner(make_model(tmp_path / "m", 60.0, rounds=3), version="tiny")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="a_file: cannot be created"):
        race.run([vp], [tu], runner, tmp_path / "a_file")
    fields = feeds.TRIP_UPDATE_FIELDS
    bus = pd.read_parquet(tu).assign(**{fields["route_id"]: "1"})  # only bus routes: not the subway race
    bus.to_parquet(tmp_path / "bus.parquet", index=False)
    with pytest.raises(DataError, match="MBTA predicted no subway arrival 0-30 min ahead .* nothing to score"):
        race.run([vp], [tmp_path / "bus.parquet"], runner, tmp_path / "o")
    ms = pd.read_parquet(vp).assign(feed_timestamp=lambda f: f["feed_timestamp"] * 1000)
    ms.to_parquet(tmp_path / "ms.parquet", index=False)
    with pytest.raises(DataError, match="no usable vehicle reports.* feed_timestamp is not a time in epoch seconds"):
        race.run([tmp_path / "ms.parquet"], [tu], runner, tmp_path / "o")


def test_a_published_feed_is_read_as_a_rider_saw_it_at_each_moment():
    from mbta_ray.realtime.race import as_published

    def row(t, trip, stop, arrival, date="20230508"):
        return {"feed_timestamp": t, "trip_id": trip, "start_date": date, "stop_id": stop, "arrival_time": arrival}

    published = pd.DataFrame(
        [
            row(100, "A", "s1", 300.0),
            row(100, "A", "s2", 400.0),
            row(100, "B", "s1", 500.0, date="20230507"),  # another service day's trip B
            row(130, "A", "s1", 310.0),  # newer than moment 120: not seen then
            row(200, "A", "s1", 150.0),  # already past at moment 250
            row(200, "A", "s2", np.nan),  # no arrival published
        ]
    )
    scope = pd.DataFrame(
        [
            row(120, "A", "s1", np.nan),  # -> 300 (the snapshot of 100, not the later 130)
            row(120, "A", "s2", np.nan),  # -> 400
            row(120, "B", "s1", np.nan),  # -> NaN: B of 20230508 was not published
            row(99, "A", "s1", np.nan),  # -> NaN: nothing published yet
            row(250, "A", "s1", np.nan),  # -> 250: an arrival past at the moment counts as the moment
            row(250, "A", "s2", np.nan),  # -> NaN: no arrival in the newest snapshot
            row(400, "A", "s1", np.nan),  # -> NaN: the newest snapshot is 200 s old (> max_lag_s 60)
        ]
    )
    got = as_published(scope, published, max_lag_s=60)
    np.testing.assert_array_equal(got, [300.0, 400.0, np.nan, np.nan, 250.0, np.nan, np.nan])
    assert np.isnan(as_published(scope, published.iloc[:0])).all()


def test_a_vehicle_standing_at_a_stop_leaves_and_arrives_as_the_last_vehicles_did():
    from types import SimpleNamespace

    from mbta_ray.realtime.requests import expected_arrivals, standing_anchor

    s = NetworkState()
    s.observe(
        vp(
            [
                (0, "t1", "STOPPED_AT", "A", 1),
                (30, "t1", "IN_TRANSIT_TO", "B", 2),  # t1 stood 30 s at A, then 90 s to B
                (120, "t1", "STOPPED_AT", "B", 2),
                (300, "t2", "STOPPED_AT", "A", 1),
                (350, "t2", "IN_TRANSIT_TO", "B", 2),  # t2: 50 s, then 70 s
                (420, "t2", "STOPPED_AT", "B", 2),
                (600, "t3", "STOPPED_AT", "A", 1),
                (610, "t3", "STOPPED_AT", "A", 1),  # t3 standing at A since 600
            ]
        )
    )
    at = T0 + 620
    assert s.dwell_and_run("Red", 0, "A", "B", at, exclude=key("t3")) == [(50.0, 70.0), (30.0, 90.0)]
    assert s.dwell_and_run("Red", 0, "A", "B", T0 + 400, exclude=key("t3")) == [(30.0, 90.0)]  # t2 at B not yet
    assert s.dwell_and_run("Red", 0, "A", "B", at, max_age_s=100) == []
    # t3 leaves at 600 + 40 (the median stay) and takes 80 s (the median run): B at 720.
    assert standing_anchor(s, key("t3"), at, "B") == T0 + 720.0
    assert standing_anchor(s, key("t3"), T0 + 700, "B") == T0 + 780.0  # stood longer than any: it leaves now
    # Stood 45 s, past the median stay (40 s): t2 stood 50 s, so 5 s more.
    assert standing_anchor(s, key("t3"), T0 + 645, "B") == T0 + 650.0 + 80.0
    assert standing_anchor(s, key("t2"), at, "B") is None  # t2 stands at B, its last stop: nothing ahead known
    answer = SimpleNamespace(
        predictions=[
            SimpleNamespace(
                stop_id=x, predicted_arrival=pd.Timestamp(T0 + t, unit="s", tz="UTC"), path_travel_seconds=None
            )
            for x, t in (("B", 700), ("C", 900))
        ]
    )
    assert expected_arrivals(s, key("t3"), at, answer) == [T0 + 720.0, T0 + 920.0]


def test_a_vehicle_waiting_at_a_terminal_leaves_as_the_last_ones_from_its_other_tracks_did():
    """A terminal has several tracks (stop ids Braintree-01, Braintree-02, and the arrival platform
    70105, metres apart): where no vehicle left from this vehicle's track recently, the last ones
    from the other tracks of the same place say how long it stands and runs; a stop down the line
    is another place."""
    from mbta_ray.realtime.requests import standing_anchor

    rows = vp(
        [
            (0, "t1", "STOPPED_AT", "T-01", 1),
            (600, "t1", "IN_TRANSIT_TO", "B", 2),  # t1: stood 600 s at track 1, then 120 s to B
            (720, "t1", "STOPPED_AT", "B", 2),
            (300, "t2", "STOPPED_AT", "T-02", 1),
            (1100, "t2", "IN_TRANSIT_TO", "B", 2),  # t2: 800 s at track 2, then 100 s
            (1200, "t2", "STOPPED_AT", "B", 2),
            (1000, "t3", "STOPPED_AT", "T-MAIN", 1),  # t3 arrives at the terminal's main platform id...
            (1010, "t3", "STOPPED_AT", "T-01", 1),  # ...and stands at track 1 (the same visit)
            (1250, "t3", "STOPPED_AT", "T-01", 1),
            (0, "t9", "STOPPED_AT", "C", 1),  # C: a stop 1 km away, where no one waits for B
            (30, "t9", "IN_TRANSIT_TO", "B", 2),
            (90, "t9", "STOPPED_AT", "B", 2),
        ]
    )
    north = {"T-01": 0.0, "T-02": 12.0, "T-MAIN": 5.0, "B": 2000.0, "C": 1000.0}
    rows["latitude"] = 42.3 + np.degrees(rows["stop_id"].map(north).to_numpy() / 6_371_000.0)
    s = NetworkState()
    s.observe(rows)
    at = T0 + 1260
    lat = float(rows["latitude"].iloc[0])
    assert s.stops_near("Red", 0, lat, -71.1, at) == {"T-01", "T-02", "T-MAIN"}
    assert s.stops_near("Red", 0, lat, -71.1, T0 + 200) == {"T-01"}  # T-02 first stood at 300 (known 305)
    assert s.stops_near("Red", 1, lat, -71.1, at) == set()  # the other direction: none
    # From track 1 alone: t1 (600 s, 120 s); from the place's tracks: t2 and t1, newest first.
    assert s.dwell_and_run("Red", 0, "T-01", "B", at, exclude=key("t3")) == [(600.0, 120.0)]
    tracks = {"T-01", "T-02", "T-MAIN"}
    assert s.dwell_and_run("Red", 0, tracks, "B", at, exclude=key("t3")) == [(800.0, 100.0), (600.0, 120.0)]
    # t3's last arrival is at T-MAIN (no one left from there): the other tracks say it leaves at
    # 1000 + 700 (the median stay) and takes 110 s (the median run): B at 1810.
    assert s.dwell_and_run("Red", 0, "T-MAIN", "B", at, exclude=key("t3")) == []
    assert standing_anchor(s, key("t3"), at, "B") == T0 + 1810.0
    # Before t2 reached B (1205) only t1's stay and run were known.
    assert standing_anchor(s, key("t3"), T0 + 1150, "B") == T0 + 1000 + 600.0 + 120.0


def test_a_trip_waiting_at_its_first_stop_where_no_stay_is_known_leaves_on_its_schedule():
    """Trains at some terminals are seldom seen standing before they leave (the trip is assigned as
    they go): no stay to go by. A trip standing at its first stop then leaves at its scheduled start
    (GTFS-realtime's trip.start_time; now once that has passed), and runs as the last vehicles did
    from near where it stands, else from near the other tracks of the place."""
    from mbta_ray.realtime.requests import standing_anchor

    rows = vp(
        [
            (0, "t0", "STOPPED_AT", "T-01", 1),  # t0 stood at track 1 (50 m north of track 2)...
            (0, "t1", "IN_TRANSIT_TO", "B", 2),  # ...t1 and t2 were only seen leaving, 180 m north:
            (120, "t1", "STOPPED_AT", "B", 2),  # 120 s from there to B
            (400, "t2", "IN_TRANSIT_TO", "B", 2),
            (500, "t2", "STOPPED_AT", "B", 2),  # 100 s
            (600, "t3", "STOPPED_AT", "T-02", 1),  # t3 waits at track 2
            (900, "t3", "STOPPED_AT", "T-02", 1),
        ]
    )
    north = [50.0, 180.0, 2000.0, 180.0, 2000.0, 0.0, 0.0]
    rows["latitude"] = 42.3 + np.degrees(np.array(north) / 6_371_000.0)
    # 2023-11-14 is EST: its service day starts at 05:00 UTC, so T0 (22:13:20 UTC) is 17:13:20.
    rows["start_time"] = ["17:00:00", "17:05:00", "17:05:00", "17:10:00", "17:10:00", "17:40:00", "17:40:00"]
    s = NetworkState()
    s.observe(rows)
    sched = T0 + (40 - 13) * 60 - 20  # 17:40:00
    assert s.scheduled_start(key("t3"), T0 + 910) == sched and s.scheduled_start(key("t3"), T0 + 10) is None
    assert s.position(key("t3"), T0 + 910).start_time == "17:40:00"
    assert s.dwell_and_run("Red", 0, {"T-01", "T-02"}, "B", T0 + 910, exclude=key("t3")) == []
    # Not within 150 m of track 2: the runs are found from track 1, where t0 stood.
    assert s.remaining_from("Red", 0, "B", float(rows["latitude"].iloc[5]), -71.1, T0 + 910) == []
    assert standing_anchor(s, key("t3"), T0 + 910, "B") == sched + 110.0
    assert standing_anchor(s, key("t3"), sched + 30, "B") == sched + 30 + 110.0  # late: it leaves now
    assert standing_anchor(s, key("t3"), T0 + 450, "B") is None  # t3 not yet there
    # Until t2's arrival at B is known (published late here), only t1's run.
    late = rows.copy()
    late.loc[4, "feed_timestamp"] = T0 + 1000
    s2 = NetworkState()
    s2.observe(late)
    assert standing_anchor(s2, key("t3"), T0 + 910, "B") == sched + 120.0
    # A start more than an hour ahead is no wait (another day's schedule, a wrong date): not used.
    s4 = NetworkState()
    s4.observe(rows.assign(start_time=["17:00:00"] * 5 + ["19:40:00"] * 2))
    assert (
        s4.scheduled_start(key("t3"), T0 + 910) == sched + 7200
        and standing_anchor(s4, key("t3"), T0 + 910, "B") is None
    )
    # Nor one more than an hour behind (a start date a day off, a trip long under way).
    s6 = NetworkState()
    s6.observe(rows.assign(start_time=["17:00:00"] * 5 + ["15:40:00"] * 2))
    assert standing_anchor(s6, key("t3"), T0 + 910, "B") is None
    # Once under way (it arrived somewhere before), the start says nothing of when it leaves.
    s5 = NetworkState()
    under_way = vp([(500, "t3", "STOPPED_AT", "Z", 0)])
    under_way["latitude"], under_way["start_time"] = 42.29, "17:40:00"
    s5.observe(pd.concat([rows, under_way], ignore_index=True))
    assert len(s5.arrivals(key("t3"), T0 + 910)) == 2 and standing_anchor(s5, key("t3"), T0 + 910, "B") is None
    # Without a schedule, it says nothing either.
    s3 = NetworkState()
    s3.observe(rows.assign(start_time=pd.NA))
    assert s3.scheduled_start(key("t3"), T0 + 910) is None and standing_anchor(s3, key("t3"), T0 + 910, "B") is None


# --- real-time features ---------------------------------------------------------------------------


def _queries(rows: list[tuple]) -> pd.DataFrame:
    """(trip, u, u sequence, s, arrival at u offset, moment offset) -> query rows."""
    return pd.DataFrame(
        [
            {"trip_key": key(trip), "route_id": "Red", "direction_id": 0, "from_stop_id": u,
             "from_stop_sequence": float(seq), "to_stop_id": s, "arrival_u": T0 + a_u, "moment": T0 + at}
            for trip, u, seq, s, a_u, at in rows
        ]
    )  # fmt: skip


def test_realtime_features_by_hand():
    from mbta_ray.realtime.features import realtime_features

    s = NetworkState()
    s.observe(vp([(0, "t1", "STOPPED_AT", "A", 1), (100, "t1", "STOPPED_AT", "B", 2),
                  (300, "t2", "STOPPED_AT", "A", 1), (420, "t2", "STOPPED_AT", "B", 2),
                  (600, "t3", "STOPPED_AT", "A", 1), (750, "t3", "STOPPED_AT", "B", 2)]))  # fmt: skip
    got = realtime_features(s, _queries([("t3", "A", 1, "B", 600, 605), ("t3", "A", 1, "B", 600, 700),
                                         ("t2", "A", 1, "B", 300, 305), ("t1", "A", 1, "B", 0, 5)]))  # fmt: skip
    assert np.isnan(got[["departed_s", "vehicle_lat", "vehicle_lon"]].to_numpy()).all()  # nobody has left
    assert got.iloc[0].drop(["departed_s", "vehicle_lat", "vehicle_lon"]).to_dict() == {
        "recent_travel_s": 110.0,  # t1 100 s, t2 120 s
        "recent_travel_n": 2.0,
        "recent_travel_age_s": 605.0 - 420.0,
        "recent_hop_s": 110.0,  # the first stop ahead: its hop is u -> s
        "elapsed_s": 5.0,
        "headway_ahead_s": 300.0,  # t2 left A 300 s before t3
    }
    assert got.iloc[1]["elapsed_s"] == 100.0 and got.iloc[1]["recent_travel_n"] == 2.0
    assert got.iloc[2][["recent_travel_s", "recent_travel_n", "headway_ahead_s"]].tolist() == [100.0, 1.0, 300.0]
    first = got.iloc[3]
    assert first["recent_travel_n"] == 0.0 and np.isnan(first["recent_travel_s"]) and np.isnan(first["headway_ahead_s"])
    # A stop two ahead: its hop is from the stop before it (B -> C: t1 60 s, t2 80 s; t2's C known
    # at 500, so at 499 only t1's hop counts).
    s.observe(vp([(160, "t1", "STOPPED_AT", "C", 3), (500, "t2", "STOPPED_AT", "C", 3)]))
    query = _queries([("t3", "A", 1, "C", 600, 700), ("t9", "A", 1, "C", 450, 499)]).assign(hop_from_stop_id="B")
    two = realtime_features(s, query)
    assert two["recent_travel_s"].tolist()[0] == 180.0 and two["recent_hop_s"].tolist() == [70.0, 60.0]
    # t3 reported in transit to B at 640 (published at 645): it left A then, as known from 645 on.
    s.observe(vp([(640, "t3", "IN_TRANSIT_TO", "B", 2)]))
    left = realtime_features(s, _queries([("t3", "A", 1, "B", 600, 700), ("t3", "A", 1, "B", 600, 644)]))
    np.testing.assert_array_equal(left["departed_s"], [60.0, np.nan])
    # Its position once it left is where it reported itself then; none before it is known to have left.
    np.testing.assert_array_equal(left[["vehicle_lat", "vehicle_lon"]].to_numpy(), [[42.3, -71.1], [np.nan] * 2])


def test_realtime_features_from_stop_events_ignore_everything_after_the_moment():
    """Features from the ETL's events (each known at its arrival) change nothing at t when every
    event after t is dropped."""
    from mbta_ray.realtime.features import observations_from_events, realtime_features

    rng = np.random.default_rng(3)
    events = []
    for trip in range(8):
        t = 300 * trip + int(rng.integers(0, 100))
        for seq, stop in enumerate("ABCD", start=1):
            events.append({"trip_id": f"t{trip}", "route_id": "Red", "direction_id": 0, "service_date": "2023-11-14",
                           "stop_id": stop, "stop_sequence": seq, "vehicle_id": f"v{trip}",
                           "actual_arrival": pd.Timestamp(T0 + t, unit="s", tz="UTC")})  # fmt: skip
            t += int(rng.integers(60, 240))
    events = pd.DataFrame(events)
    obs = observations_from_events(events)
    assert list(obs.columns) == list(feeds.VEHICLE_COLUMNS) and (obs["status"] == "STOPPED_AT").all()
    full = NetworkState()
    full.observe(obs)
    queries = _queries([(f"t{i}", "B", 2, "D", 0, 0) for i in range(8)])
    starts = obs[obs["stop_id"] == "B"].set_index("trip_id")["timestamp"]
    queries["arrival_u"] = [int(starts[f"t{i}"]) for i in range(8)]
    queries["moment"] = queries["arrival_u"] + 30
    queries["trip_key"] = [trip_key("20231114", "Red", f"t{i}") for i in range(8)]
    got = realtime_features(full, queries)
    assert got["recent_travel_n"].iloc[-1] > 0
    for i, moment in enumerate(queries["moment"]):
        past = NetworkState()
        past.observe(obs[obs["feed_timestamp"] <= moment])
        pd.testing.assert_frame_equal(realtime_features(past, queries.iloc[[i]]), got.iloc[[i]])


# --- the ETL's vectorized features (realtime.history) against the state ---------------------------


def _assert_history_equals_state(events: pd.DataFrame, queries: pd.DataFrame) -> None:
    from mbta_ray.realtime.features import observations_from_events, realtime_features
    from mbta_ray.realtime.history import EventHistory

    obs = observations_from_events(events)
    # One state per service day: a day's history never sees another day's vehicles.
    day = queries["trip_key"].str.split("|").str[0].to_numpy()
    want = []
    for d in sorted(set(day)):
        state = NetworkState()
        state.observe(obs[obs["start_date"] == d])
        want.append(realtime_features(state, queries[day == d]))
    expected = pd.concat(want).reindex(queries.index)
    pd.testing.assert_frame_equal(EventHistory(obs).features(queries), expected)


@pytest.mark.parametrize("sample", ["lamp_subway_2024-02-07.parquet", "tm_stop_crossing_2024-08-11_arrivals.parquet"])
def test_event_history_equals_the_state_on_real_events(sample):
    """The ETL's sorted searches give what a NetworkState replay gives, on real LAMP subway events
    and real TransitMaster bus events (loop routes: a stop visited twice), at the ETL's own moments."""
    from mbta_ray.etl import _sorted_trips, realtime_queries
    from mbta_ray.features import pair_events
    from mbta_ray.paths import SAMPLES_DIR
    from mbta_ray.schema import TRIP_KEY
    from mbta_ray.sources import read_file
    from mbta_ray.validate import ValidationConfig, check_rows, check_trips, trip_keys

    events = check_rows(read_file(str(SAMPLES_DIR / sample)).to_pandas(), ValidationConfig(), None)
    events = events[events["reason"].isna()].assign(**{TRIP_KEY: lambda d: trip_keys(d)})
    # The busiest lines (the most other vehicles), and the busiest with a loop (a stop visited twice).
    loop = events.groupby(["route_id", TRIP_KEY])["stop_id"].agg(lambda s: s.duplicated().any())
    loop_routes = loop[loop].index.get_level_values(0)
    routes = {
        *events["route_id"].value_counts().index[:2],
        *events.loc[events["route_id"].isin(loop_routes), "route_id"].mode(),
    }
    events = _sorted_trips(check_trips(events[events["route_id"].isin(routes)]).query("reason.isna()"))
    queries = realtime_queries(pair_events(events, 6))
    looping = (
        queries["trip_key"].str.split("|").str[-1].isin(loop[loop].index.get_level_values(1).str.split("|").str[-1])
    )
    assert sample.startswith("lamp") or looping.sum() > 100
    queries = pd.concat([queries.sample(2500, random_state=0), queries[looping].head(500)])
    _assert_history_equals_state(events, queries)


_EVENT_TRIPS = st.lists(
    st.tuples(
        st.integers(0, 20_000),  # start offset
        st.sampled_from([0, 1]),  # direction
        st.lists(st.tuples(st.sampled_from("ABCDE"), st.integers(0, 900), st.sampled_from([None, 0, 20, 90])),
                 min_size=1, max_size=6),  # (stop, gap before it, dwell)
        st.booleans(),  # a repeated stop sequence (the state's path for that line)
    ),
    min_size=1,
    max_size=7,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(trips=_EVENT_TRIPS, picks=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99), st.sampled_from("ABCDE"),
                                                    st.sampled_from("ABCDE"), st.integers(0, 4000)), min_size=1, max_size=12))  # fmt: skip
def test_event_history_equals_the_state_on_any_events(trips, picks):
    """Any stop events (ties in time, loops, missing and overlong dwells, a repeated stop sequence,
    both directions, two service days interleaved in time, gaps past the age limits) and any
    queries: the same answers as the state of the query's service day."""
    rows = []
    for i, (start, direction, stops, repeat) in enumerate(trips):
        t = T0 + start
        day = "2023-11-14" if i % 2 else "2023-11-15"  # two service days, interleaved in time
        for seq, (stop, gap, dwell) in enumerate(stops, start=1):
            t += gap
            rows.append({"trip_id": f"t{i}", "route_id": "Red", "direction_id": direction, "service_date": day,
                         "stop_id": stop, "stop_sequence": 1 if repeat and seq == 2 else seq, "vehicle_id": f"v{i}",
                         "actual_arrival": pd.Timestamp(t, unit="s", tz="UTC"), "dwell_seconds": dwell})  # fmt: skip
    events = pd.DataFrame(rows).astype({"dwell_seconds": "float64"})
    queries = []
    for trip, visit, s, hop, after in picks:
        own = events[events["trip_id"] == f"t{trip % (len(trips) + 1)}"]  # sometimes a trip with no events
        at = own.iloc[visit % len(own)] if len(own) else events.iloc[visit % len(events)]
        arrival = int(at["actual_arrival"].timestamp())
        day = "20231114" if (trip % (len(trips) + 1)) % 2 else "20231115"
        queries.append({"trip_key": trip_key(day, "Red", f"t{trip % (len(trips) + 1)}"), "route_id": "Red",
                        "direction_id": int(at["direction_id"]), "from_stop_id": at["stop_id"],
                        "from_stop_sequence": float(at["stop_sequence"]), "to_stop_id": s, "hop_from_stop_id": hop,
                        "arrival_u": arrival, "moment": arrival + after})  # fmt: skip
    _assert_history_equals_state(events, pd.DataFrame(queries))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.integers(0, 3000)), min_size=1, max_size=6), min_size=1, max_size=30))
def test_row_nanmedians_equal_numpys(rows):
    """The recent travel median per row is numpy's nanmedian, for rows of any width with missing
    values anywhere (at least one value per row, as the history asks), halves and ties included."""
    from mbta_ray.realtime.history import _row_nanmedians

    width = max(len(r) for r in rows)
    values = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        values[i, : len(row)] = [np.nan if v is None else v / 2 for v in row]
    values = values[(~np.isnan(values)).any(axis=1)]
    np.testing.assert_array_equal(_row_nanmedians(values), np.nanmedian(values, axis=1))


def test_a_snapshot_reads_ids_numbers_and_defaults_as_gtfs_realtime_means_them():
    """A stop id JSON wrote as 70061.0 is stop 70061; a vehicle without current_status is on its
    way (the field's default), not dropped; a current_stop_sequence that is no uint32 is dropped and
    counted, the row kept."""
    snap = {
        "header": {"timestamp": 1683547200},
        "entity": [
            {"id": "1", "vehicle": {"trip": {"trip_id": "T1", "route_id": "Red", "start_date": "20230508"},
                                    "stop_id": 70061.0, "timestamp": 1683547190, "current_stop_sequence": -3}},
            {"id": "2", "vehicle": {"trip": {"trip_id": "T2", "route_id": "Red", "start_date": "20230508"},
                                    "stop_id": "70063", "timestamp": 1683547190, "current_status": "STOPPED_AT",
                                    "current_stop_sequence": 1.5}},
            {"id": "3", "vehicle": {"trip": {"trip_id": "T3", "route_id": "Red", "start_date": "20230508"},
                                    "stop_id": "70065", "timestamp": 1683547190, "current_stop_sequence": 7}},
        ],
    }  # fmt: skip
    snapshot = feeds.read_snapshot(json.dumps(snap).encode(), "VehiclePositions", "x.json")
    frame = snapshot.feed.frame.set_index("trip_id")
    assert frame["stop_id"].to_dict() == {"T1": "70061", "T2": "70063", "T3": "70065"}
    assert frame["status"].to_dict() == {"T1": "IN_TRANSIT_TO", "T2": "STOPPED_AT", "T3": "IN_TRANSIT_TO"}
    assert frame["stop_sequence"].isna().tolist() == [True, True, False] and frame.loc["T3", "stop_sequence"] == 7
    assert snapshot.feed.report.ignored_fields == {
        "vehicle.current_stop_sequence is not a stop sequence (row kept without it)": 2
    }
