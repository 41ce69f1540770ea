"""The Ray Data ETL on a real local Ray cluster: accounting, splits, trips across files, versioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import lamp_rows, write_lamp

from mbta_ray import etl, sources, versioning
from mbta_ray.etl import EtlConfig, ingest
from mbta_ray.realtime.features import REALTIME_FEATURES
from mbta_ray.schema import EXAMPLE_SCHEMA, FEATURE_CODE_VERSION, QUARANTINE_SCHEMA, SPLITS

BASE = 1707321600  # 2024-02-07T16:00:00Z = 11:00 EST on the service day 2024-02-07


def _stops(path: Path, ids: list[str]) -> str:
    pq.write_table(
        pa.table(
            {"stop_id": ids, "stop_lat": [42.0 + i * 0.01 for i in range(len(ids))], "stop_lon": [-71.0] * len(ids)}
        ),
        path,
    )
    return str(path)


def _trip(trip: str, start: int, n: int, delay: int = 60, route: str = "Red") -> list[dict]:
    """n stops S0..S{n-1}, 2 minutes apart, ``delay`` seconds late (scheduled 11:00 EST + offset)."""
    stops = [(f"S{i}", 10 * (i + 1), BASE + start + 120 * i + delay, 11 * 3600 + start + 120 * i) for i in range(n)]
    return lamp_rows(trip, route, stops)


@pytest.fixture()
def tiny(tmp_path: Path) -> dict:
    """Ten trips over two files; trip T0 straddles the files; bad rows of each kind."""
    trips = {f"T{i}": _trip(f"T{i}", start=600 * i, n=6) for i in range(10)}
    t0 = trips["T0"]
    bad = [
        {**t0[1], "stop_timestamp": None},  # missing actual arrival (a 7th row of T0 at seq 20)
        {**t0[2]},  # exact repeat of a stop visit -> duplicate
        {**t0[3], "stop_sequence": 45, "stop_id": "S9", "stop_timestamp": t0[3]["stop_timestamp"] + 9000},  # 2.5 h late
        {**t0[4], "stop_sequence": 55, "stop_id": "NOPE"},  # not a GTFS stop
    ]
    file1 = t0[:3] + [r for i in range(1, 5) for r in trips[f"T{i}"]] + bad[:2]
    file2 = t0[3:] + [r for i in range(5, 10) for r in trips[f"T{i}"]] + bad[2:]
    f1 = write_lamp(tmp_path / "part1.parquet", file1, row_group_size=4)
    f2 = write_lamp(tmp_path / "part2.parquet", file2, row_group_size=4)
    stops = _stops(tmp_path / "stops.parquet", [f"S{i}" for i in range(10)])
    return {"inputs": [str(f1), str(f2)], "stops": stops, "root": tmp_path / "art", "rows": len(file1) + len(file2)}


def _read_split(path: Path, split: str) -> pd.DataFrame:
    return pq.read_table(path / split).to_pandas()


def test_tiny_ingest_accounts_for_every_row_and_keeps_trips_whole(ray_local, tiny, monkeypatch):
    """Pieces of 4 rows cut trips in two, across files and blocks: no pair may be lost."""
    monkeypatch.setattr(sources, "PIECE_ROWS", 4)
    result = ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=3), stops_path=tiny["stops"])
    c = result.manifest["counts"]
    assert result.created
    assert c["rows_in"] == tiny["rows"] == 64
    assert c["quarantined_by_reason"] == {
        "delay_out_of_bounds": 1,
        "duplicate_event": 1,
        "missing_actual_arrival": 1,
        "unknown_stop": 1,
    }
    assert c["rows_in"] == c["rows_out"] + c["quarantined"]
    # 10 trips x 6 stops with k=3: per trip 3+3+3+2+1+0 = 12 pairs.
    assert c["examples"] == c["examples_expected"] == 120
    frames = {s: _read_split(result.path, s) for s in SPLITS}
    assert sum(len(f) for f in frames.values()) == 120
    trips = {s: set(f.trip_key) for s, f in frames.items()}
    assert not (trips["train"] & trips["valid"]) and not (trips["train"] & trips["test"])
    assert not (trips["valid"] & trips["test"])
    assert frames["train"].trip_start.max() < frames["valid"].trip_start.min()
    assert frames["valid"].trip_start.max() < frames["test"].trip_start.min()
    t0 = frames["train"][frames["train"].trip_id == "T0"]
    assert len(t0) == 12 and set(t0.from_stop_id) | set(t0.to_stop_id) == {f"S{i}" for i in range(6)}
    assert (t0.travel_seconds == 120 * t0.stops_ahead).all()
    assert (t0.delay_u == 60).all() and (t0.scheduled_seconds_ahead == 120 * t0.stops_ahead).all()
    # Quarantined rows name their file and row.
    q = pq.read_table(result.path / "quarantine").to_pandas()
    assert q.columns.tolist() == QUARANTINE_SCHEMA.names
    late = q[q.reason == "delay_out_of_bounds"].iloc[0]
    # part2: 3 rows of T0, 30 rows of T5..T9, then the late row.
    assert late.source_file == "part2.parquet" and late.source_row == 33
    assert set(q.source_file) == {"part1.parquet", "part2.parquet"}
    for split in SPLITS:
        assert pq.read_schema(next((result.path / split).glob("*.parquet"))).names == EXAMPLE_SCHEMA.names


def test_same_inputs_is_a_noop_and_config_changes_the_version(ray_local, tiny):
    """Re-running reports the existing version; a different K is a different version."""
    first = ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=2), stops_path=tiny["stops"])
    mtime = (first.path / "manifest.json").stat().st_mtime_ns
    again = ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=2), stops_path=tiny["stops"])
    assert not again.created and again.version == first.version
    assert (first.path / "manifest.json").stat().st_mtime_ns == mtime
    other = ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=1), stops_path=tiny["stops"])
    assert other.version != first.version
    listed = {m["version"] for m in versioning.list_versions(tiny["root"], "mbta")}
    assert listed == {first.version, other.version}
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert [i["sha256"] for i in manifest["inputs"]] == [sources.inspect_input(p).sha256 for p in tiny["inputs"]]
    assert manifest["config"]["k"] == 2 and manifest["feature_code_version"]
    # A holdout window (a race's) is another version: its arrivals are quarantined as held_out.
    window = (pd.Timestamp(BASE + 3000, unit="s", tz="UTC").isoformat(), "2024-02-07T17:00:00Z")
    held = ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=2, holdout=window), stops_path=tiny["stops"])
    raw = pd.concat(pd.read_parquet(p) for p in tiny["inputs"])
    expected = int(raw["stop_timestamp"].between(BASE + 3000, BASE + 3600 - 1).sum())
    assert held.version not in listed and expected > 0
    assert held.manifest["counts"]["quarantined_by_reason"]["held_out"] == expected


def test_failure_mid_write_leaves_no_half_version(ray_local, tiny, monkeypatch):
    """A crash after the splits were written leaves neither a version nor a temporary folder."""

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(etl, "_publish_splits", boom)
    with pytest.raises(OSError, match="disk full"):
        ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=2), stops_path=tiny["stops"])
    folder = versioning.datasets_dir(tiny["root"], "mbta")
    assert list(folder.iterdir()) == []
    assert versioning.list_versions(tiny["root"]) == []
    monkeypatch.undo()
    ok = ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=2), stops_path=tiny["stops"])
    assert ok.created and [p.name for p in folder.iterdir()] == [ok.version]


def test_every_row_quarantined_is_an_empty_dataset_not_a_crash(ray_local, tiny, tmp_path):
    """No stop of the inputs is in the schedule: every row goes to the quarantine with its reason,
    the splits are empty but readable, and the counts still add up."""
    stops = _stops(tmp_path / "other_stops.parquet", ["X1", "X2"])
    result = ingest(tiny["inputs"], root=tiny["root"], config=EtlConfig(k=3), stops_path=stops)
    c = result.manifest["counts"]
    assert c["rows_in"] == c["quarantined"] == tiny["rows"] and c["rows_out"] == 0
    assert c["examples"] == c["examples_expected"] == 0
    assert c["quarantined_by_reason"]["unknown_stop"] >= tiny["rows"] - 2  # the two null-field rows aside
    for split in SPLITS:
        assert pq.read_table(result.path / split).num_rows == 0
    assert pq.read_table(result.path / "quarantine").num_rows == tiny["rows"]


def test_bad_input_fails_before_any_work_naming_the_file(ray_local, tmp_path):
    """A file missing a required column is refused up front with its name and the columns."""
    bad = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"route_id": ["Red"], "stop_id": ["S1"]}), bad)
    with pytest.raises(sources.InputError, match="broken.parquet"):
        ingest([str(bad)], root=tmp_path / "art")
    assert not (tmp_path / "art" / "datasets" / "mbta").exists() or not any(
        (tmp_path / "art" / "datasets" / "mbta").iterdir()
    )


@pytest.fixture(scope="module")
def embedded(ray_local, tmp_path_factory):
    """The default ingest of the embedded real MBTA samples (what `make run` does)."""
    return ingest(root=tmp_path_factory.mktemp("art"))


def test_embedded_real_data_ingest(embedded):
    """All three real sources are read, every row accounted for, trips never cross splits."""
    c = embedded.manifest["counts"]
    assert c["rows_in"] == 44_198 + 40_273 + 155_166  # the whole LAMP day, TransitMaster, the GTFS-rt hour
    assert c["rows_in"] == c["rows_out"] + c["quarantined"]
    assert c["examples"] == c["examples_expected"] > 100_000
    assert {"missing_actual_arrival", "non_revenue", "not_an_arrival", "duplicate_event"} <= set(
        c["quarantined_by_reason"]
    )
    frames = pd.concat([_read_split(embedded.path, s).assign(split=s) for s in SPLITS])
    assert (frames.groupby("trip_key").split.nunique() == 1).all()
    assert set(frames["source"]) == {"lamp", "tm", "gtfsrt"}
    assert set(frames["mode"]) == {"subway", "bus", "commuter_rail"}
    assert (frames.travel_seconds >= 0).all()
    gtfsrt = frames[frames.source == "gtfsrt"]
    assert gtfsrt.has_schedule.eq(0).all() and gtfsrt.delay_u.isna().all()
    for source, group in frames.groupby("source"):  # time order within each source
        starts = group.groupby("split").trip_start
        assert starts.max()["train"] <= starts.min()["valid"], source
        assert starts.max()["valid"] <= starts.min()["test"], source
    q = pq.read_table(embedded.path / "quarantine").to_pandas()
    assert len(q) == c["quarantined"] and q.reason.notna().all() and q.source_row.notna().all()
    assert (embedded.path / "segment_medians.parquet").is_file()


def test_out_of_range_ids_are_quarantined_not_fatal():
    """A TransitMaster-style direction code of 300 or a fractional stop sequence: bad_value rows."""
    from mbta_ray.sources import to_event_table

    frame = pd.DataFrame(
        {
            "mode": ["bus"] * 3,
            "service_date": pd.to_datetime(["2024-08-11"] * 3),
            "route_id": ["1"] * 3,
            "direction_id": [1.0, 300.0, 0.0],
            "trip_id": ["T"] * 3,
            "vehicle_id": ["V"] * 3,
            "stop_id": ["A", "B", "C"],
            "stop_sequence": [1.0, 2.0, 2.5],
            "actual_arrival": pd.to_datetime(["2024-08-11T12:00Z"] * 3),
            "scheduled_arrival": pd.NaT,
            "dwell_seconds": float("nan"),
            "headway_seconds": float("nan"),
            "scheduled_headway_seconds": float("nan"),
            "reason": pd.Series([pd.NA] * 3, dtype="string"),
            "detail": pd.Series([pd.NA] * 3, dtype="string"),
        }
    )
    t = to_event_table(frame, "tm", "x.parquet", 0).to_pandas()
    assert t.reason.fillna("ok").tolist() == ["ok", "bad_value", "bad_value"]
    assert "direction_id" in t.detail[1] and "stop_sequence" in t.detail[2]


def test_code_changes_make_a_new_version():
    """The dataset version covers the readers' and features' code, not only a hand-bumped number."""
    inputs, config = [("lamp", "ab" * 32)], EtlConfig().version_dict()
    assert versioning.compute_version(inputs, config, "1+aaa") != versioning.compute_version(inputs, config, "1+bbb")
    assert etl.code_version().startswith(FEATURE_CODE_VERSION + "+")


REALTIME = list(REALTIME_FEATURES)


def _realtime_trips(tmp_path: Path, late_shift: int = 0, cut: int = 0) -> dict:
    """Twelve Red-line trips of 6 stops, 5 minutes apart and with varied running times; trips
    starting at or after ``cut`` s run ``late_shift`` s slower between stops (what happens later)."""
    trips = []
    for i in range(12):
        start = 300 * i
        slower = late_shift if start >= cut else 0
        stops = []
        t = start
        for j in range(6):
            stops.append((f"S{j}", 10 * (j + 1), BASE + t, 11 * 3600 + 120 * j + start))
            t += 100 + 7 * ((i * 3 + j) % 5) + slower
        trips.extend(lamp_rows(f"R{i}", "Red", stops))
    path = write_lamp(tmp_path / f"rt-{late_shift}.parquet", trips)
    return {"inputs": [str(path)], "stops": _stops(tmp_path / "stops.parquet", [f"S{j}" for j in range(6)])}


def _examples_of(result) -> pd.DataFrame:
    return pd.concat([_read_split(result.path, s) for s in SPLITS], ignore_index=True)


def _blue_feed(tmp_path: Path) -> tuple[str, list[str]]:
    """The embedded GTFS-realtime hour's Blue line, its first 25 minutes of snapshots (real
    in-transit reports and positions), in the archive's own layout; and the stops it names."""
    import pyarrow.compute as pc

    from mbta_ray.paths import GTFSRT_VEHICLE_POSITIONS

    table = pq.read_table(GTFSRT_VEHICLE_POSITIONS)
    keep = pc.and_(
        pc.equal(table["vehicle.trip.route_id"], "Blue"),
        pc.less(table["feed_timestamp"], pc.min(table["feed_timestamp"]).as_py() + 1500),
    )
    path = tmp_path / "blue_vp.parquet"
    pq.write_table(table.filter(keep), path)
    return str(path), sorted(set(table.filter(keep)["vehicle.stop_id"].drop_null().to_pylist()))


def test_realtime_features_in_the_dataset_equal_the_state_and_never_look_ahead(ray_local, tmp_path):
    """Parity: the ETL's real-time features (Ray Data, grouped by route, direction and day) equal
    what a NetworkState answers at each example's moment (the arrival at u + the elapsed time), built
    from the same events (LAMP) or the same feed's every snapshot (GTFS-realtime: departures and
    positions too). Leak: making every trip that starts after a moment run slower changes no
    feature at that moment."""
    from mbta_ray.features import POSITION_COLUMNS, progress
    from mbta_ray.gtfs import Stops
    from mbta_ray.paths import DEFAULT_STOPS
    from mbta_ray.realtime.features import observations_from_events, realtime_features
    from mbta_ray.realtime.feeds import read_vehicle_positions
    from mbta_ray.realtime.state import NetworkState, trip_key
    from mbta_ray.sources import read_file
    from mbta_ray.timeutil import epoch_seconds

    data = _realtime_trips(tmp_path)
    feed, blue_stops = _blue_feed(tmp_path)
    real = pq.read_table(DEFAULT_STOPS, columns=["stop_id", "stop_lat", "stop_lon"]).to_pandas()
    stops_path = tmp_path / "stops_all.parquet"
    stops_table = pd.concat([pd.read_parquet(data["stops"]), real[real["stop_id"].isin(blue_stops)]])
    stops_table.to_parquet(stops_path, index=False)
    result = ingest([*data["inputs"], feed], root=tmp_path / "art", config=EtlConfig(k=3), stops_path=str(stops_path))
    ex = _examples_of(result).sort_values(["trip_key", "from_stop_sequence", "stops_ahead"], ignore_index=True)
    lamp, rt = (ex["source"] == "lamp").to_numpy(), (ex["source"] == "gtfsrt").to_numpy()
    assert lamp.sum() > 100 and rt.sum() > 100
    assert (ex["recent_travel_n"] > 0).mean() > 0.5 and ex["headway_ahead_s"].notna().mean() > 0.5
    # Half the moments are the arrival at u, the others drawn before the next stop's arrival.
    next_stop = ex[ex["stops_ahead"] == 1].set_index(["trip_key", "from_stop_sequence"])["actual_arrival_s"]
    gap = (
        next_stop.reindex(pd.MultiIndex.from_frame(ex[["trip_key", "from_stop_sequence"]])).to_numpy()
        - ex["actual_arrival_u"].to_numpy()
    ) / pd.Timedelta(seconds=1)
    assert 0.3 < (ex["elapsed_s"] == 0).mean() < 0.7 and ((ex["elapsed_s"] >= 0) & (ex["elapsed_s"] < gap)).all()
    assert ex.groupby(["trip_key", "from_stop_sequence"])["elapsed_s"].nunique().eq(1).all()  # one moment per u

    events = read_file(data["inputs"][0]).to_pandas()
    state = NetworkState()
    state.observe(observations_from_events(events))
    state.observe(read_vehicle_positions([feed]).frame)
    arrival_u = epoch_seconds(ex["actual_arrival_u"])
    moment = arrival_u + ex["elapsed_s"].astype("int64")
    # The hop into s starts at the stop before it on the trip (u for the next stop).
    hop_from = np.where(ex["stops_ahead"] == 1, ex["from_stop_id"], ex["to_stop_id"].shift(1))
    service = pd.to_datetime(ex["service_date"]).dt.strftime("%Y%m%d")
    queries = pd.DataFrame(
        {
            "trip_key": [trip_key(d, r, t) for d, r, t in zip(service, ex["route_id"], ex["trip_id"])],
            "route_id": ex["route_id"],
            "direction_id": ex["direction_id"],
            "from_stop_id": ex["from_stop_id"],
            "from_stop_sequence": ex["from_stop_sequence"].astype("float64"),
            "to_stop_id": ex["to_stop_id"],
            "hop_from_stop_id": hop_from,
            "arrival_u": arrival_u,
            "moment": moment,
        }
    )
    known = realtime_features(state, queries)
    pd.testing.assert_frame_equal(ex[REALTIME], known[REALTIME], check_dtype=False)
    assert ex["recent_hop_s"].notna().mean() > 0.5
    # Departures (arrival + LAMP's dwell, 30 s here) are known for the moments drawn after them.
    left = ex["departed_s"].notna().to_numpy()
    assert (
        0.1 < left[lamp].mean() < 0.5
        and (ex.loc[left & lamp, "elapsed_s"] - ex.loc[left & lamp, "departed_s"] == 30).all()
    )
    # The feed's own reports: departures, and where the vehicle was since (LAMP has no positions).
    located = ex["progress"].notna().to_numpy()
    assert left[rt].mean() > 0.2 and located[rt].mean() > 0.2 and not located[lamp].any()
    expected = progress(
        ex[["from_stop_id", "to_stop_id", "stops_ahead"]].join(known[list(POSITION_COLUMNS)]),
        Stops.load(str(stops_path)),
    )
    np.testing.assert_allclose(ex["progress"], expected)
    assert ((ex.loc[located, "progress"] >= 0) & (ex.loc[located, "progress"] <= 1)).all()
    # The chained path: each hop's recent time, else the training median of the hop, else its
    # distance at the route's median pace (seconds per metre over its training segments), summed from u.
    medians = pd.read_parquet(result.path / "segment_medians.parquet")
    hop_median = medians.set_index(["route_id", "from_stop_id", "to_stop_id"])["hist_median_travel_s"]
    all_stops = Stops.load(str(stops_path))
    pace = (
        pd.Series(
            medians["hist_median_travel_s"].to_numpy()
            / all_stops.distance_m(medians["from_stop_id"], medians["to_stop_id"]),
            index=medians["route_id"].to_numpy(),
        )
        .groupby(level=0)
        .median()
    )
    by_distance = pace.reindex(ex["route_id"]).to_numpy() * all_stops.distance_m(pd.Series(hop_from), ex["to_stop_id"])
    hop = (
        ex["recent_hop_s"]
        .fillna(
            pd.Series(
                hop_median.reindex(list(zip(ex["route_id"], hop_from, ex["to_stop_id"]))).to_numpy(), index=ex.index
            )
        )
        .fillna(pd.Series(by_distance, index=ex.index))
    )
    path = hop.groupby((ex["stops_ahead"] == 1).cumsum()).transform(lambda h: h.cumsum().where(h.notna().cummin()))
    np.testing.assert_allclose(ex["path_travel_s"], path)
    assert ex["path_travel_s"].notna().mean() > 0.95

    cut = 300 * 6  # trips R6.. start at or after this
    (tmp_path / "slow").mkdir()
    slower = _realtime_trips(tmp_path / "slow", late_shift=40, cut=cut)
    changed = ingest(slower["inputs"], root=tmp_path / "art2", config=EtlConfig(k=3), stops_path=slower["stops"])
    ex2 = _examples_of(changed).sort_values(["trip_key", "from_stop_sequence", "stops_ahead"], ignore_index=True)
    ex, moment = ex[lamp].reset_index(drop=True), moment[lamp].reset_index(drop=True)
    before = moment < BASE + cut
    assert (
        before.sum() > 20
        and (ex2.loc[~before.to_numpy(), REALTIME] != ex.loc[~before.to_numpy(), REALTIME]).any().any()
    )
    pd.testing.assert_frame_equal(ex2.loc[before.to_numpy(), REALTIME], ex.loc[before.to_numpy(), REALTIME])


def _days_trips(days: int, per_day: int = 3) -> dict[int, list[dict]]:
    """``per_day`` trips on each of ``days`` consecutive service days from 2024-02-05."""
    out = {}
    for d in range(days):
        service_date = int((pd.Timestamp("2024-02-05") + pd.Timedelta(days=d)).strftime("%Y%m%d"))
        rows = []
        for i in range(per_day):
            start = 86400 * (d - 2) + 900 * i  # BASE is 2024-02-07: day 2
            stops = [
                (f"S{j}", 10 * (j + 1), BASE + start + 120 * j + 60, 11 * 3600 + 900 * i + 120 * j) for j in range(5)
            ]
            rows += lamp_rows(f"D{d}T{i}", "Red", stops, service_date=service_date)
        out[service_date] = rows
    return out


def test_several_service_days_split_by_day(ray_local, tmp_path):
    """Train on the earlier days, valid and test on later ones, whole days each; the manifest says
    which days went where."""
    inputs = [str(write_lamp(tmp_path / f"{day}.parquet", rows)) for day, rows in _days_trips(5).items()]
    stops = _stops(tmp_path / "stops.parquet", [f"S{i}" for i in range(5)])
    result = ingest(inputs, root=tmp_path / "art", config=EtlConfig(k=2), stops_path=stops)
    days = result.manifest["days_by_split"]["lamp"]
    assert days == {
        "train": ["2024-02-05", "2024-02-06", "2024-02-07"],
        "valid": ["2024-02-08"],
        "test": ["2024-02-09"],
    }
    for split, expected in days.items():
        frame = _read_split(result.path, split)
        assert sorted(pd.to_datetime(frame["service_date"]).dt.strftime("%Y-%m-%d").unique()) == expected
        assert frame["day_of_week"].nunique() == len(expected)  # Mon..Wed, Thu, Fri


def test_split_cutoffs_by_day_and_by_time():
    def trips(days: dict[str, int]) -> pd.DataFrame:
        rows = []
        for day, n in days.items():
            for i in range(n):
                start = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=10, minutes=10 * i)
                rows.append({"source": "lamp", "trip_start": start, "service_date": pd.Timestamp(day).date()})
        return pd.DataFrame(rows)

    fractions = (0.7, 0.15, 0.15)
    # One day: by start time, 70 / 15 / 15 % of the trips.
    one = trips({"2024-02-07": 20})
    split = etl.assign_splits(one, etl.split_cutoffs(one, fractions))
    assert split.value_counts().to_dict() == {"train": 14, "valid": 3, "test": 3}
    # Two days: train on the first, valid and test share the second by start time.
    two = trips({"2024-02-07": 10, "2024-02-08": 10})
    split = etl.assign_splits(two, etl.split_cutoffs(two, fractions))
    assert (split[:10] == "train").all() and (split[10:15] == "valid").all() and (split[15:] == "test").all()
    # Ten days: 7 / 2 / 1 whole days (at least one each); uneven days do not move the cut.
    ten = trips({f"2024-02-{d:02d}": 3 + d for d in range(1, 11)})
    split = etl.assign_splits(ten, etl.split_cutoffs(ten, fractions))
    days = etl.days_by_split(ten, split)["lamp"]
    assert [len(days[s]) for s in SPLITS] == [7, 2, 1]
    assert days["train"][-1] < days["valid"][0] <= days["valid"][-1] < days["test"][0]
    # No valid or test wanted: all train.
    split = etl.assign_splits(ten, etl.split_cutoffs(ten, (1.0, 0.0, 0.0)))
    assert (split == "train").all()


def test_line_day_buckets_hash_each_rows_route_direction_and_day():
    """Hashed once per distinct line-day, the bucket is still the per-row hash of its text, so a
    line-day never splits, whatever the batch; a missing part puts the row in the bucket of ""."""
    import datetime as dt

    rng = np.random.default_rng(7)
    n = 5_000
    df = pd.DataFrame(
        {
            "route_id": pd.array(rng.choice(["Red", "Orange", "1", None], n), dtype="str"),
            "direction_id": pd.array(rng.choice([0, 1], n), dtype="Int8"),
            "service_date": rng.choice([dt.date(2024, 2, d) for d in (6, 7)] + [None], n),
        }
    )
    df.loc[3, "direction_id"] = pd.NA
    text = (
        df["route_id"].astype("string")
        + "|"
        + df["direction_id"].astype("string")
        + "|"
        + df["service_date"].astype("string")
    )
    expected = pd.util.hash_array(text.fillna("").to_numpy(dtype=object)) % 97
    got = etl._line_day_buckets(df, 97)
    assert got.dtype == np.int64 and len(got) == n
    np.testing.assert_array_equal(got, expected)
    # The bucket of a row depends on its line-day alone, not on the rest of the batch: its order,
    # its size, or whether a missing direction made pandas read the column as float64.
    np.testing.assert_array_equal(etl._line_day_buckets(df.iloc[::-1], 97), expected[::-1])
    np.testing.assert_array_equal(etl._line_day_buckets(df.iloc[:10], 97), expected[:10])
    as_float = df.assign(direction_id=df["direction_id"].astype("float64"))
    np.testing.assert_array_equal(etl._line_day_buckets(as_float, 97), expected)


def test_bucket_groups_cover_every_bucket_once_in_runs(monkeypatch):
    """Each bucket goes to exactly one task, in order and in runs of about ``per_task``, with at
    least 4 tasks per CPU where there are buckets enough, and never an empty task."""
    monkeypatch.setattr(etl, "_cluster_cpus", lambda: 2)
    buckets = [3, 5, 8, 13, 21, *range(300, 405)]
    groups = etl._bucket_groups(buckets, 8)
    assert [b for g in groups for b in g] == buckets
    assert len(groups) == 14 and {len(g) for g in groups} == {7, 8}  # 110 buckets: 12 tasks of 8, 2 of 7
    assert [len(g) for g in etl._bucket_groups(list(range(20)), 8)] == [3, 3, 3, 3, 2, 2, 2, 2]  # 4 per CPU
    assert etl._bucket_groups([7, 9], 8) == [[7], [9]]
    assert etl._bucket_groups([], 8) == []


def test_checked_groups_go_largest_first(monkeypatch, tmp_path):
    """A pass submits its largest groups of buckets first (the raylet starts queued tasks in order),
    so the last tasks are small and the cores finish together; the groups are still the runs of
    ``_bucket_groups``, each bucket in one."""
    monkeypatch.setattr(etl, "_cluster_cpus", lambda: 1)
    sizes = {0: 10, 1: 10, 2: 500, 3: 1, 4: 40, 5: 40, 6: 0, 7: 3}
    checked = etl._Checked(tmp_path, sizes, pd.DataFrame(), 0)
    groups = checked.groups(2)
    assert groups == [[2, 3], [4, 5], [0, 1], [6, 7]]
    assert sorted(b for g in groups for b in g) == sorted(sizes)


def test_part_medians_of_parts_with_and_without_counts_share_dtypes(tmp_path):
    """A part with no counts gives an empty frame of the dtypes a part read from its counts files
    gives, so the driver's concatenation keeps string keys, float medians and integer counts."""
    from mbta_ray.features import travel_counts

    pairs = pd.DataFrame(
        {"route_id": ["Red"] * 3, "from_stop_id": ["a"] * 3, "to_stop_id": ["b"] * 3, "travel_seconds": [60.0, 90, 75]}
    )
    folder = tmp_path / "counts" / "part=0"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(travel_counts(pairs), preserve_index=False), folder / "bucket-00000.parquet")
    with_counts, without = etl._part_medians([0], str(tmp_path)), etl._part_medians([1], str(tmp_path))
    assert with_counts["hist_median_travel_s"].tolist() == [75.0] and with_counts["n"].tolist() == [3]
    assert len(without) == 0 and without.dtypes.to_dict() == with_counts.dtypes.to_dict()
    assert pd.concat([without, with_counts]).dtypes.to_dict() == with_counts.dtypes.to_dict()


def test_etl_processes_allocate_arrow_memory_with_the_system_allocator(ray_local):
    """The driver and the Ray workers that run ETL tasks use the system allocator for Arrow memory
    (importing the ETL sets it: mimalloc's kernel time was 16 % of the ETL's CPU), and a pool the
    user chose with ARROW_DEFAULT_MEMORY_POOL is kept."""
    import os
    import subprocess
    import sys

    import ray

    from mbta_ray.runtime import ARROW_POOL_ENV

    def pool_in_an_etl_task() -> str:
        from mbta_ray import etl  # noqa: F401 (what an ETL task's worker imports first)

        return pa.default_memory_pool().backend_name

    assert pa.default_memory_pool().backend_name == "system"
    assert ray.get(ray.remote(num_cpus=1)(pool_in_an_etl_task).remote()) == "system"
    code = "import mbta_ray.etl, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {**os.environ, ARROW_POOL_ENV: "mimalloc"}
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "mimalloc"
