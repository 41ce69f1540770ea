"""Source readers: real samples, hand-made fixtures in each public layout, and broken inputs.

Expected timestamps are computed by hand (not with mbta_ray.timeutil), using the GTFS service-day
rule: second 0 of a service day is local noon minus 12 h. For America/New_York that is 05:00 UTC on
EST days and 04:00 UTC on EDT days; on 2024-03-10 (spring forward) noon is EDT, so 04:00 UTC; on
2024-11-03 (fall back) noon is EST, so 05:00 UTC. None of these tests needs Ray.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mbta_ray import timeutil
from mbta_ray.schema import QUARANTINE_SCHEMA, Reason
from mbta_ray.sources import InputError, detect_format, inspect_input, read_file
from mbta_ray.sources.base import RowIssues, numeric
from mbta_ray.sources.massdot import seconds_from_1900_base

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = Path(__file__).resolve().parent.parent / "mbta_ray" / "data" / "samples"

LAMP_SAMPLE = SAMPLES / "lamp_subway_2024-02-07_10k.parquet"
TM_SAMPLE = SAMPLES / "tm_stop_crossing_2024-08-11_arrivals.parquet"
GTFSRT_SAMPLE = SAMPLES / "gtfsrt_vehicle_positions_2023-05-08T12.parquet"
MASSDOT_CSV = FIXTURES / "massdot_bus_arrival_departure_sample.csv"
MASSDOT_CAMEL_CSV = FIXTURES / "massdot_bus_arrival_departure_camelcase.csv"
LAMP_2023_SCHEDULED_CSV = FIXTURES / "lamp_2023_with_schedule.csv"
LAMP_2023_UNSCHEDULED_CSV = FIXTURES / "lamp_2023_without_schedule.csv"
LAMP_BAD_STOP_TIMESTAMP_CSV = FIXTURES / "lamp_2024_bad_stop_timestamp.csv"
LAMP_BAD_VALUES_CSV = FIXTURES / "lamp_2024_bad_values.csv"

LAMP_2024_HEADER = "service_date,route_id,direction_id,trip_id,stop_id,stop_sequence,stop_timestamp\n"


def utc(text: str) -> pd.Timestamp:
    """A UTC timestamp from 'YYYY-MM-DD HH:MM:SS'."""
    return pd.Timestamp(text, tz="UTC")


def rows(table: pa.Table) -> list[dict]:
    """Table rows as dicts (timestamps as pandas Timestamps, missing values as None)."""
    frame = table.to_pandas()
    return [
        {k: (None if not isinstance(v, (list, str)) and pd.isna(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


def assert_event_schema(table: pa.Table) -> None:
    """The table has exactly the quarantine-capable event schema (names, order and types)."""
    assert table.schema.names == QUARANTINE_SCHEMA.names
    assert [f.type for f in table.schema] == [f.type for f in QUARANTINE_SCHEMA]


def assert_source_rows(table: pa.Table, n: int) -> None:
    """``source_row`` numbers the file's data rows 0..n-1, in order."""
    assert table.num_rows == n
    assert table["source_row"].to_pylist() == list(range(n))


def reason_counts(table: pa.Table) -> dict:
    """{reason: count} over the table, None for good rows."""
    counts = table["reason"].value_counts().to_pylist()
    return {c["values"]: c["counts"] for c in counts}


# --- real samples -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lamp_table() -> pa.Table:
    return read_file(str(LAMP_SAMPLE))


@pytest.fixture(scope="module")
def tm_table() -> pa.Table:
    return read_file(str(TM_SAMPLE))


@pytest.fixture(scope="module")
def gtfsrt_table() -> pa.Table:
    return read_file(str(GTFSRT_SAMPLE))


@pytest.mark.parametrize(
    ("path", "fmt", "n"),
    [(LAMP_SAMPLE, "lamp", 10_000), (TM_SAMPLE, "tm", 40_273), (GTFSRT_SAMPLE, "gtfsrt", 155_166)],
    ids=["lamp", "tm", "gtfsrt"],
)
def test_sample_format_detected_from_columns(path: Path, fmt: str, n: int) -> None:
    """Each real sample is identified by its columns alone, with its row count and checksum."""
    meta = pq.read_metadata(path)
    assert meta.num_rows == n
    assert detect_format(str(path), meta.schema.to_arrow_schema().names).name == fmt
    inp = inspect_input(str(path))
    assert (inp.format, inp.container, inp.num_rows) == (fmt, "parquet", n)
    assert inp.path == str(path)
    assert inp.size_bytes == path.stat().st_size
    assert inp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("table_fixture", "path", "source"),
    [("lamp_table", LAMP_SAMPLE, "lamp"), ("tm_table", TM_SAMPLE, "tm"), ("gtfsrt_table", GTFSRT_SAMPLE, "gtfsrt")],
    ids=["lamp", "tm", "gtfsrt"],
)
def test_sample_read_keeps_every_row_in_event_schema(
    request: pytest.FixtureRequest, table_fixture: str, path: Path, source: str
) -> None:
    """Reading a sample yields one event row per file row, numbered 0..n-1, in the event schema."""
    table = request.getfixturevalue(table_fixture)
    assert_event_schema(table)
    assert_source_rows(table, pq.read_metadata(path).num_rows)
    assert set(table["source"].to_pylist()) == {source}
    assert set(table["source_file"].to_pylist()) == {path.name}
    # Every row either is good or says why not.
    frame = table.to_pandas()
    assert (frame["reason"].isna() == frame["detail"].isna()).all()


def test_lamp_sample_row_0_hand_checked(lamp_table: pa.Table) -> None:
    """LAMP row 0: stop_timestamp 1707351135 and scheduled 69360 s (19:16 EST) on 2024-02-07."""
    assert rows(lamp_table.slice(0, 1))[0] == {
        "source": "lamp",
        "source_file": LAMP_SAMPLE.name,
        "source_row": 0,
        "mode": "subway",
        "service_date": dt.date(2024, 2, 7),
        "route_id": "Green-C",
        "direction_id": 1,  # True in the file
        "trip_id": "ADDED-1581778236",
        "vehicle_id": "G-10263",
        "stop_id": "70224",
        "stop_sequence": 250,
        "actual_arrival": utc("2024-02-08 00:12:15"),
        "scheduled_arrival": utc("2024-02-08 00:16:00"),
        "dwell_seconds": 24.0,
        "headway_seconds": 190.0,
        "scheduled_headway_seconds": 540.0,
        "reason": None,
        "detail": None,
    }


def test_lamp_sample_past_midnight_and_trunk_headway(lamp_table: pa.Table) -> None:
    """Row 37 (Mattapan): scheduled 88380 s = 24:33 EST -> next day 05:33 UTC; no branch headway,
    so the trunk headways (580 s observed, 720 s scheduled) are used."""
    row = rows(lamp_table.slice(37, 1))[0]
    assert (row["route_id"], row["mode"], row["stop_id"], row["trip_id"]) == ("Mattapan", "subway", "70264", "59623795")
    assert row["actual_arrival"] == utc("2024-02-08 05:31:48")  # stop_timestamp 1707370308
    assert row["scheduled_arrival"] == utc("2024-02-08 05:33:00")
    assert (row["headway_seconds"], row["scheduled_headway_seconds"]) == (580.0, 720.0)


def test_lamp_sample_branch_headway_wins_over_trunk(lamp_table: pa.Table) -> None:
    """Row 10 (Red): branch headways (1278/1200 s) are preferred to trunk ones (617/480 s)."""
    row = rows(lamp_table.slice(10, 1))[0]
    assert row["route_id"] == "Red"
    assert (row["headway_seconds"], row["scheduled_headway_seconds"]) == (1278.0, 1200.0)


def test_lamp_sample_reasons_and_modes(lamp_table: pa.Table) -> None:
    """The 61 rows without stop_timestamp are quarantined as missing_actual_arrival, nothing else;
    CR-* routes are commuter rail, everything else in this file is subway."""
    raw = pq.read_table(LAMP_SAMPLE, columns=["stop_timestamp", "route_id"]).to_pandas()
    frame = lamp_table.to_pandas()
    assert reason_counts(lamp_table) == {None: 9_939, "missing_actual_arrival": 61}
    missing = frame["reason"] == "missing_actual_arrival"
    assert missing.tolist() == raw["stop_timestamp"].isna().tolist()
    assert set(frame.loc[missing, "detail"]) == {"no stop_timestamp/vp_stop_timestamp"}
    assert frame.loc[missing, "actual_arrival"].isna().all()
    assert frame["service_date"].eq(dt.date(2024, 2, 7)).all()
    is_cr = raw["route_id"].str.startswith("CR-")
    assert set(frame.loc[is_cr, "mode"]) == {"commuter_rail"}
    assert set(frame.loc[~is_cr, "mode"]) == {"subway"}


def test_tm_sample_row_0_hand_checked(tm_table: pa.Table) -> None:
    """TM row 0: IsRevenue D -> non_revenue; arrival 53750 s on 2024-08-11 (EDT, origin 04:00 UTC)."""
    assert rows(tm_table.slice(0, 1))[0] == {
        "source": "tm",
        "source_file": TM_SAMPLE.name,
        "source_row": 0,
        "mode": "bus",
        "service_date": dt.date(2024, 8, 11),  # CALENDAR_ID 120240811
        "route_id": "tm-25985",
        "direction_id": 4,  # TransitMaster direction code, kept as a category
        "trip_id": "8301710",  # 8301710.0 in the file
        "vehicle_id": "1679",
        "stop_id": "tm-947",
        "stop_sequence": 1,
        "actual_arrival": utc("2024-08-11 18:55:50"),  # 53750 s = 14:55:50 EDT
        "scheduled_arrival": utc("2024-08-11 19:00:00"),  # 54000 s = 15:00 EDT
        "dwell_seconds": 357.0,  # departure 54107 - arrival 53750
        "headway_seconds": None,
        "scheduled_headway_seconds": None,
        "reason": "non_revenue",
        "detail": "IsRevenue=D",
    }


def test_tm_sample_trip_start_uses_departure(tm_table: pa.Table) -> None:
    """Row 6 is a trip start (CROSSING_TYPE_ID 2): arrival 55264 s is the previous layover's end, so
    the event time is the departure, 55564 s = 15:26:04 EDT, against scheduled 55500 s."""
    row = rows(tm_table.slice(6, 1))[0]
    assert (row["route_id"], row["stop_id"], row["trip_id"], row["stop_sequence"]) == (
        "tm-26003",
        "tm-488",
        "8301711",
        1,
    )
    assert row["actual_arrival"] == utc("2024-08-11 19:26:04")
    assert row["scheduled_arrival"] == utc("2024-08-11 19:25:00")
    assert row["reason"] is None


def test_tm_sample_all_crossings_vectorized(tm_table: pa.Table) -> None:
    """Over the whole file: trip starts use ACT_DEPARTURE_TIME, other crossings ACT_ARRIVAL_TIME,
    every id carries the tm- prefix, and only IsRevenue=D rows are quarantined (as non_revenue)."""
    raw = pq.read_table(TM_SAMPLE).to_pandas()
    frame = tm_table.to_pandas()
    origin = utc("2024-08-11 04:00:00")  # EDT: noon 16:00 UTC minus 12 h
    starts = raw["CROSSING_TYPE_ID"] == 2
    assert starts.sum() == 4_599
    expected_s = raw["ACT_ARRIVAL_TIME"].where(~starts, raw["ACT_DEPARTURE_TIME"])
    expected = origin + pd.to_timedelta(expected_s, unit="s")
    assert (frame["actual_arrival"] == expected).all()
    assert (frame["scheduled_arrival"] == origin + pd.to_timedelta(raw["SCHEDULED_TIME"], unit="s")).all()
    assert frame["route_id"].tolist() == ("tm-" + raw["ROUTE_ID"].astype(str)).tolist()
    assert frame["stop_id"].tolist() == ("tm-" + raw["GEO_NODE_ID"].astype(str)).tolist()
    assert frame["service_date"].eq(dt.date(2024, 8, 11)).all()
    assert set(frame["mode"]) == {"bus"}
    assert reason_counts(tm_table) == {None: 38_045, "non_revenue": 2_228}
    assert (frame["reason"].eq("non_revenue") == raw["IsRevenue"].eq("D")).all()
    assert set(frame.loc[frame["reason"].notna(), "detail"]) == {"IsRevenue=D"}


def test_gtfsrt_sample_rows_hand_checked(gtfsrt_table: pa.Table) -> None:
    """Row 0 is INCOMING_AT (not an arrival); row 5 is the vehicle's first STOPPED_AT at 70158."""
    first, stopped = rows(gtfsrt_table.slice(0, 1))[0], rows(gtfsrt_table.slice(5, 1))[0]
    common = {
        "source": "gtfsrt",
        "source_file": GTFSRT_SAMPLE.name,
        "mode": "subway",
        "service_date": dt.date(2023, 5, 8),
        "route_id": "Green-B",
        "direction_id": 1,
        "trip_id": "ADDED-1581518543",
        "vehicle_id": "G-10024",
        "stop_id": "70158",
        "stop_sequence": 590,
        "scheduled_arrival": None,
        "dwell_seconds": None,
        "headway_seconds": None,
        "scheduled_headway_seconds": None,
    }
    assert first == {
        **common,
        "source_row": 0,
        "actual_arrival": utc("2023-05-08 12:13:49"),
        "reason": "not_an_arrival",
        "detail": "vehicle.current_status=INCOMING_AT",
    }
    assert stopped == {
        **common,
        "source_row": 5,
        "actual_arrival": utc("2023-05-08 12:15:20"),
        "reason": None,
        "detail": None,
    }


def test_gtfsrt_sample_reasons_and_no_schedule(gtfsrt_table: pa.Table) -> None:
    """Only STOPPED_AT snapshots are kept; the feed has no schedule, so scheduled_arrival is null."""
    frame = gtfsrt_table.to_pandas()
    assert reason_counts(gtfsrt_table) == {None: 67_252, "not_an_arrival": 87_914}
    assert frame["detail"].value_counts().to_dict() == {
        "vehicle.current_status=INCOMING_AT": 53_033,
        "vehicle.current_status=IN_TRANSIT_TO": 34_881,
    }
    assert gtfsrt_table["scheduled_arrival"].null_count == gtfsrt_table.num_rows
    assert gtfsrt_table["actual_arrival"].null_count == 0
    assert set(frame["mode"]) == {"subway"}


# --- LAMP 2023 layout ---------------------------------------------------------------------------


def _lamp_2023_parquet(csv_path: Path, out: Path) -> Path:
    """The CSV fixture as parquet with LAMP's column types (int date, bool direction, Int64 times)."""
    frame = pd.read_csv(csv_path, dtype={"pm_trip_id": str, "stop_id": str})
    frame["direction_id"] = frame["direction_id"].astype(bool)
    for col in frame.columns:
        if col.endswith(("_timestamp", "_seconds", "_time", "_trunk", "_branch")):
            frame[col] = frame[col].astype("Int64")
    frame.to_parquet(out, index=False)
    return out


LAMP_2023_EXPECTED = [
    # Red, 2023-03-15 (EDT, origin 04:00 UTC): scheduled 25200 s = 07:00 EDT.
    {
        "route_id": "Red",
        "direction_id": 0,
        "trip_id": "55458882",
        "stop_id": "70061",
        "stop_sequence": 1,
        "vehicle_id": "R-5463D3A4",
        "mode": "subway",
        "actual_arrival": utc("2023-03-15 11:01:30"),
        "scheduled_arrival": utc("2023-03-15 11:00:00"),
        "dwell_seconds": 45.0,
        "headway_seconds": 540.0,
        "scheduled_headway_seconds": 480.0,
        "reason": None,
        "detail": None,
    },
    # Orange: scheduled 90000 s = 25:00, i.e. 01:00 EDT the next morning.
    {
        "route_id": "Orange",
        "direction_id": 1,
        "trip_id": "55460001",
        "stop_id": "70036",
        "stop_sequence": 1,
        "vehicle_id": "O-5466D2B1",
        "mode": "subway",
        "actual_arrival": utc("2023-03-16 05:02:00"),
        "scheduled_arrival": utc("2023-03-16 05:00:00"),
        "dwell_seconds": None,
        "headway_seconds": None,
        "scheduled_headway_seconds": None,
        "reason": None,
        "detail": None,
    },
    # Green-E: no vp_stop_timestamp; scheduled 30000 s = 08:20 EDT; only the trunk scheduled headway.
    {
        "route_id": "Green-E",
        "direction_id": 0,
        "trip_id": "55470002",
        "stop_id": "70260",
        "stop_sequence": 30,
        "vehicle_id": "G-10082",
        "mode": "subway",
        "actual_arrival": None,
        "scheduled_arrival": utc("2023-03-15 12:20:00"),
        "dwell_seconds": None,
        "headway_seconds": None,
        "scheduled_headway_seconds": 420.0,
        "reason": "missing_actual_arrival",
        "detail": "no stop_timestamp/vp_stop_timestamp",
    },
]


def _without_schedule(expected: list[dict]) -> list[dict]:
    return [{**r, "scheduled_arrival": None, "scheduled_headway_seconds": None} for r in expected]


@pytest.mark.parametrize("container", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("csv_path", "expected"),
    [(LAMP_2023_SCHEDULED_CSV, LAMP_2023_EXPECTED), (LAMP_2023_UNSCHEDULED_CSV, _without_schedule(LAMP_2023_EXPECTED))],
    ids=["with_schedule", "without_schedule"],
)
def test_lamp_2023_layout(tmp_path: Path, container: str, csv_path: Path, expected: list[dict]) -> None:
    """2023 names (vp_stop_timestamp, pm_trip_id) read as LAMP from CSV and parquet; without
    scheduled_arrival_time the scheduled arrival is null, never invented."""
    path = csv_path if container == "csv" else _lamp_2023_parquet(csv_path, tmp_path / "lamp2023.parquet")
    inp = inspect_input(str(path))
    assert (inp.format, inp.container, inp.num_rows) == ("lamp", container, 3)
    table = read_file(str(path))
    assert_event_schema(table)
    assert_source_rows(table, 3)
    got = [{k: v for k, v in r.items() if k in expected[0]} for r in rows(table)]
    assert got == expected
    assert table["service_date"].to_pylist() == [dt.date(2023, 3, 15)] * 3


def test_lamp_csv_with_true_false_direction(tmp_path: Path) -> None:
    """A CSV export of LAMP parquet writes the bool direction_id as True/False: read as 1/0."""
    path = tmp_path / "lamp_export.csv"
    pq.read_table(LAMP_SAMPLE).slice(0, 5).to_pandas().to_csv(path, index=False)
    table = read_file(str(path))
    assert table["direction_id"].to_pylist() == [1, 0, 1, 0, 0]
    assert table["reason"].null_count == 5
    parquet_rows = rows(read_file(str(LAMP_SAMPLE)).slice(0, 5))
    for a, b in zip(rows(table), parquet_rows, strict=True):
        assert {**a, "source_file": None} == {**b, "source_file": None}


# --- MassDOT Bus Arrival Departure Times -------------------------------------------------------


@pytest.fixture(scope="module")
def massdot_rows() -> list[dict]:
    table = read_file(str(MASSDOT_CSV))
    assert_event_schema(table)
    assert_source_rows(table, 10)
    return rows(table)


def test_massdot_detected() -> None:
    """Both the snake_case and the older CamelCase headers are detected as massdot (CSV)."""
    for path, n in ((MASSDOT_CSV, 10), (MASSDOT_CAMEL_CSV, 2)):
        inp = inspect_input(str(path))
        assert (inp.format, inp.container, inp.num_rows) == ("massdot", "csv", n)


def test_massdot_ids_and_directions(massdot_rows: list[dict]) -> None:
    """Zero-padded routes lose their zeros ('01' -> '1', '09' -> '9'), 'SL1' and '116' stay;
    Outbound is 0 and Inbound 1; half_trip_id is the trip id; time_point_order the sequence."""
    assert [r["route_id"] for r in massdot_rows] == ["1", "1", "SL1", "116", "9", "9", "1", "1", "1", "SL1"]
    assert [r["direction_id"] for r in massdot_rows] == [1, 1, 0, 0, 0, 0, 1, 1, 1, None]
    assert massdot_rows[0]["trip_id"] == "61234567"
    assert massdot_rows[0]["stop_id"] == "110"
    assert [r["stop_sequence"] for r in massdot_rows[:4]] == [1, 2, 1, 3]
    assert {r["mode"] for r in massdot_rows} == {"bus"}
    assert {r["vehicle_id"] for r in massdot_rows} == {None}
    assert {r["dwell_seconds"] for r in massdot_rows} == {None}


def test_massdot_times_across_dst_and_midnight(massdot_rows: list[dict]) -> None:
    """Wall-clock times on the 1900-01-01 base become UTC by the GTFS service-day rule."""
    times = [(r["service_date"], r["scheduled_arrival"], r["actual_arrival"]) for r in massdot_rows[:6]]
    assert times == [
        # 2024-03-10, spring forward: noon is EDT, origin 04:00 UTC; 07:00 -> 11:00 UTC.
        (dt.date(2024, 3, 10), utc("2024-03-10 11:00:00"), utc("2024-03-10 11:02:10")),
        (dt.date(2024, 3, 10), utc("2024-03-10 11:10:00"), utc("2024-03-10 11:13:05")),
        # 2024-03-09 (EST, origin 05:00 UTC): 25:30 -> 2024-03-10 06:30 UTC (01:30 EST).
        (dt.date(2024, 3, 9), utc("2024-03-10 06:30:00"), utc("2024-03-10 06:31:00")),
        # 2024-03-11 (EDT, origin 04:00 UTC): 23:55 and 1900-01-02 00:10 = 24:10.
        (dt.date(2024, 3, 11), utc("2024-03-12 03:55:00"), utc("2024-03-12 04:10:00")),
        # 2024-11-03, fall back: noon is EST, origin 05:00 UTC; 07:00 -> 12:00 UTC ('T'-less time).
        (dt.date(2024, 11, 3), utc("2024-11-03 12:00:00"), utc("2024-11-03 12:01:30")),
        # ... and 01:30 -> 06:30 UTC (the second, EST, 01:30 on the clock).
        (dt.date(2024, 11, 3), utc("2024-11-03 06:30:00"), utc("2024-11-03 06:29:00")),
    ]
    assert all(r["reason"] is None for r in massdot_rows[:6])


def test_massdot_headways_in_seconds(massdot_rows: list[dict]) -> None:
    """Headways are seconds as given; empty or '-' is missing (not a bad value)."""
    assert [(r["scheduled_headway_seconds"], r["headway_seconds"]) for r in massdot_rows[:6]] == [
        (600.0, 645.0),
        (600.0, None),
        (None, None),
        (None, None),
        (900.0, 870.0),
        (1800.0, 1750.0),
    ]


def test_massdot_bad_rows_are_flagged_not_dropped(massdot_rows: list[dict]) -> None:
    """Empty actual -> missing_actual_arrival; garbage times and directions -> bad_value naming the
    field; the parts of those rows that did parse are kept."""
    flagged = [(r["source_row"], r["reason"], r["detail"]) for r in massdot_rows if r["reason"]]
    assert flagged == [
        (6, "missing_actual_arrival", "no actual time"),
        (7, "bad_value", "field actual: 7:12 PM is not a 1900-01-01-based time"),
        (8, "bad_value", "field scheduled: noon is not a 1900-01-01-based time"),
        (9, "bad_value", "field direction_id: northbound is not Inbound/Outbound"),
    ]
    assert (massdot_rows[6]["actual_arrival"], massdot_rows[6]["scheduled_arrival"]) == (
        None,
        utc("2024-03-10 11:20:00"),
    )
    assert (massdot_rows[7]["actual_arrival"], massdot_rows[7]["scheduled_arrival"]) == (
        None,
        utc("2024-03-10 11:10:00"),
    )
    assert (massdot_rows[8]["actual_arrival"], massdot_rows[8]["scheduled_arrival"]) == (
        utc("2024-03-10 16:03:00"),
        None,
    )
    assert massdot_rows[9]["actual_arrival"] == utc("2024-03-10 12:01:00")


def test_massdot_camelcase_header() -> None:
    """The older CamelCase header reads to the same canonical values (space-separated times)."""
    got = [
        {
            k: r[k]
            for k in (
                "service_date",
                "route_id",
                "direction_id",
                "trip_id",
                "stop_id",
                "stop_sequence",
                "scheduled_arrival",
                "actual_arrival",
                "scheduled_headway_seconds",
                "headway_seconds",
                "reason",
            )
        }
        for r in rows(read_file(str(MASSDOT_CAMEL_CSV)))
    ]
    assert got == [
        # 2019-01-02 is EST: origin 05:00 UTC.
        {
            "service_date": dt.date(2019, 1, 2),
            "route_id": "1",
            "direction_id": 0,
            "trip_id": "41234567",
            "stop_id": "110",
            "stop_sequence": 1,
            "scheduled_arrival": utc("2019-01-02 10:05:00"),
            "actual_arrival": utc("2019-01-02 10:06:40"),
            "scheduled_headway_seconds": 900.0,
            "headway_seconds": 960.0,
            "reason": None,
        },
        {
            "service_date": dt.date(2019, 1, 2),
            "route_id": "SL4",
            "direction_id": 1,
            "trip_id": "41200001",
            "stop_id": "17091",
            "stop_sequence": 2,
            "scheduled_arrival": utc("2019-01-03 05:45:00"),
            "actual_arrival": utc("2019-01-03 05:44:00"),
            "scheduled_headway_seconds": None,
            "headway_seconds": None,
            "reason": None,
        },
    ]


def test_massdot_seconds_from_1900_base() -> None:
    """'1900-01-02T00:10:00Z' is second 87,000 of the service day; both spellings parse."""
    values = pd.Series(
        ["1900-01-01T00:00:00Z", "1900-01-01 07:02:10", "1900-01-02T00:10:00Z", "", "-", None, "25:10:00"]
    )
    issues = RowIssues(values.index)
    got = seconds_from_1900_base(values, "actual", issues).tolist()
    assert got[:3] == [0.0, 25_330.0, 87_000.0]
    assert all(math.isnan(v) for v in got[3:])
    assert issues.reason.isna().tolist() == [True] * 6 + [False]
    assert issues.detail[6] == "field actual: 25:10:00 is not a 1900-01-01-based time"


@pytest.mark.parametrize("dtype", [object, "string"])
def test_numeric_flags_only_text_that_is_not_a_number(dtype) -> None:
    """Missing, blank and 'nan' are missing values; other text that is no number is bad_value naming
    the field and the text; a reason already recorded wins; the index may repeat labels."""
    raw = ["12", " 7.5 ", None, "", "  ", " NaN ", "forty", "x1", "3"]
    df = pd.DataFrame({"stop_sequence": pd.Series(raw, dtype=dtype)}, index=[0, 1, 2, 3, 4, 5, 6, 6, 8])
    issues = RowIssues(df.index)
    issues.flag(pd.Series([False] * 7 + [True, False], index=df.index), Reason.MISSING_ACTUAL_ARRIVAL, "earlier")
    got = numeric(df, "stop_sequence", issues)
    assert got.iloc[[0, 1, 8]].tolist() == [12.0, 7.5, 3.0] and got.iloc[2:8].isna().all()
    assert issues.reason.tolist()[6:8] == ["bad_value", "missing_actual_arrival"]
    assert issues.reason.iloc[[0, 1, 2, 3, 4, 5, 8]].isna().all()
    assert issues.detail.tolist()[6:8] == ["field stop_sequence: forty is not a number", "earlier"]
    # Numbers need no text at all: a float column with NaN flags nothing.
    clean = RowIssues(pd.RangeIndex(3))
    assert numeric(pd.DataFrame({"v": [1.0, float("nan"), 2.0]}), "v", clean).isna().tolist() == [False, True, False]
    assert clean.reason.isna().all()


# --- TransitMaster details ----------------------------------------------------------------------

TM_HEADER = (
    "CALENDAR_ID,ROUTE_ID,ROUTE_DIRECTION_ID,TRIP_ID,VEHICLE_ID,GEO_NODE_ID,PATTERN_GEO_NODE_SEQ,"
    "SCHEDULED_TIME,ACT_ARRIVAL_TIME,ACT_DEPARTURE_TIME,CROSSING_TYPE_ID,IsRevenue,CANCELLED_FLAG\n"
)


def test_tm_csv_trip_start_cancelled_and_revenue(tmp_path: Path) -> None:
    """TM as CSV: a trip start with a departure uses it, one without keeps the arrival; a
    cancelled crossing (text 'True') and IsRevenue=D are non_revenue; an empty IsRevenue is not."""
    path = tmp_path / "tm.csv"
    path.write_text(
        TM_HEADER
        + "120240811,25985,4,8301710.0,1679,947,1,54000,53750,54107,2,R,False\n"
        + "120240811,25985,4,8301710.0,1679,130,4,54120,54239,54273,0,R,False\n"
        + "120240811,25985,4,8301712.0,1679,947,1,56000,55900,,2,R,False\n"
        + "120240811,25985,4,8301713.0,1679,947,1,57000,56900,57010,0,R,True\n"
        + "120240811,25985,4,8301714.0,1679,947,1,58000,57900,57910,0,D,False\n"
        + "120240811,25985,4,,1679,947,1,59000,58900,58910,0,,False\n"
    )
    table = read_file(str(path))
    assert_event_schema(table)
    got = [
        (r["trip_id"], r["stop_id"], r["actual_arrival"], r["dwell_seconds"], r["reason"], r["detail"])
        for r in rows(table)
    ]
    assert got == [
        ("8301710", "tm-947", utc("2024-08-11 19:01:47"), 0.0, None, None),  # departure 54107
        ("8301710", "tm-130", utc("2024-08-11 19:03:59"), 34.0, None, None),  # arrival 54239
        ("8301712", "tm-947", utc("2024-08-11 19:31:40"), None, None, None),  # no departure: 55900
        ("8301713", "tm-947", utc("2024-08-11 19:48:20"), 110.0, "non_revenue", "CANCELLED_FLAG"),
        ("8301714", "tm-947", utc("2024-08-11 20:05:00"), 10.0, "non_revenue", "IsRevenue=D"),
        (None, "tm-947", utc("2024-08-11 20:21:40"), 10.0, None, None),  # left to validation
    ]
    assert set(table["route_id"].to_pylist()) == {"tm-25985"}
    assert set(table["service_date"].to_pylist()) == {dt.date(2024, 8, 11)}


# --- GTFS-RT details ----------------------------------------------------------------------------


def test_gtfsrt_null_status_is_not_an_arrival(tmp_path: Path) -> None:
    """A snapshot without current_status is not an arrival (and does not crash the reader)."""
    path = tmp_path / "vp.parquet"
    pq.write_table(
        pa.table(
            {
                "vehicle.current_status": pa.array(["STOPPED_AT", None, "IN_TRANSIT_TO"], pa.string()),
                "vehicle.timestamp": pa.array([1683548120, 1683548130, 1683548140], pa.uint64()),
                "vehicle.trip.trip_id": ["t1"] * 3,
                "vehicle.trip.route_id": ["CR-Lowell", "Red", "1"],
                "vehicle.trip.direction_id": pa.array([0, 0, 1], pa.uint8()),
                "vehicle.trip.start_date": ["20230508"] * 3,
                "vehicle.stop_id": ["70061", "70063", "64"],
                "vehicle.current_stop_sequence": [1.0, 2.0, 3.0],
            }
        ),
        path,
    )
    table = read_file(str(path))
    assert_event_schema(table)
    assert table["reason"].to_pylist() == [None, "not_an_arrival", "not_an_arrival"]
    assert table["detail"].to_pylist() == [None, "vehicle.current_status=null", "vehicle.current_status=IN_TRANSIT_TO"]
    assert table["mode"].to_pylist() == ["commuter_rail", "subway", "bus"]
    assert table["vehicle_id"].null_count == 3  # no vehicle.vehicle.id column
    assert table["actual_arrival"][0].as_py() == dt.datetime(2023, 5, 8, 12, 15, 20, tzinfo=dt.UTC)


# --- bad values inside a readable file ----------------------------------------------------------


def test_lamp_bad_stop_timestamp_quarantines_only_that_row() -> None:
    """stop_timestamp 'abc' on row 1: bad_value naming the field; rows 0, 2, 3 are fine."""
    table = read_file(str(LAMP_BAD_STOP_TIMESTAMP_CSV))
    assert_event_schema(table)
    assert_source_rows(table, 4)
    got = [(r["reason"], r["detail"], r["actual_arrival"], r["scheduled_arrival"]) for r in rows(table)]
    assert got == [
        (None, None, utc("2024-02-07 11:21:00"), utc("2024-02-07 11:20:00")),  # 22800 s = 06:20 EST
        ("bad_value", "field stop_timestamp: abc is not a number", None, utc("2024-02-07 11:22:00")),
        (None, None, utc("2024-02-07 11:24:00"), utc("2024-02-07 11:24:00")),
        (None, None, utc("2024-02-07 11:25:00"), utc("2024-02-07 11:25:00")),
    ]


def test_lamp_bad_values_name_their_field() -> None:
    """Each unparseable field quarantines its row as bad_value, with the field in the detail."""
    table = read_file(str(LAMP_BAD_VALUES_CSV))
    assert_source_rows(table, 4)
    got = rows(table)
    assert [(r["reason"], r["detail"]) for r in got] == [
        ("bad_value", "field scheduled_arrival_time: x22800 is not a number"),
        ("bad_value", "field stop_sequence: forty is not a number"),
        ("bad_value", "field service_date: not a date"),
        ("bad_value", "field direction_id: west is not a number"),
    ]
    # What did parse is kept: actual arrivals everywhere, the ISO service date on row 3.
    assert [r["actual_arrival"] for r in got] == [
        utc("2024-02-07 11:21:00"),
        utc("2024-02-07 11:22:00"),
        utc("2024-02-07 11:24:00"),
        utc("2024-02-07 11:25:00"),
    ]
    assert [r["service_date"] for r in got] == [dt.date(2024, 2, 7)] * 2 + [None, dt.date(2024, 2, 7)]
    assert [r["scheduled_arrival"] for r in got] == [None, utc("2024-02-07 11:22:00"), None, utc("2024-02-07 11:25:00")]


def test_times_out_of_any_plausible_range_are_bad_values_not_a_crashed_read(tmp_path: Path) -> None:
    """Epoch seconds in milliseconds, 1e30, inf, or seconds into a service day past three days would
    overflow a timestamp: each quarantines its row as bad_value naming the field."""
    lamp = pd.read_parquet(LAMP_SAMPLE).head(4)
    lamp["stop_timestamp"] = [1707304860.0, 1e30, float("inf"), 1707304860000.0]
    lamp["scheduled_arrival_time"] = [22800.0, 22800.0, 22800.0, 1e20]
    lamp.to_parquet(tmp_path / "lamp.parquet")
    got = [(r["reason"], r["detail"]) for r in rows(read_file(str(tmp_path / "lamp.parquet"), "lamp"))]
    assert got == [
        (None, None),
        ("bad_value", "field stop_timestamp: 1e+30 is not a time in epoch seconds"),
        ("bad_value", "field stop_timestamp: inf is not a time in epoch seconds"),
        ("bad_value", "field stop_timestamp: 1707304860000.0 is not a time in epoch seconds"),
    ]
    tm = pd.read_parquet(TM_SAMPLE)
    tm = tm[tm["IsRevenue"] == "R"].head(2)
    tm["ACT_ARRIVAL_TIME"] = [1e30, 3e5]
    tm.to_parquet(tmp_path / "tm.parquet")
    got = [r["detail"] for r in rows(read_file(str(tmp_path / "tm.parquet"), "tm"))]
    assert got == [
        "field ACT_ARRIVAL_TIME: 1e+30 is not seconds into a service day",
        "field ACT_ARRIVAL_TIME: 300000.0 is not seconds into a service day",
    ]
    vp = pa.table(
        {
            "vehicle.current_status": ["STOPPED_AT"] * 4,
            "vehicle.timestamp": [1683548120.0, 1683548120000.0, -5.0, 1683548120.0],
            "vehicle.trip.trip_id": ["t1", "t2", "t3", "t4"],
            "vehicle.trip.route_id": ["Red"] * 4,
            "vehicle.trip.direction_id": [0, 1, 1, 300],  # 300: out of the int8 column, and no GTFS direction
            "vehicle.trip.start_date": ["20230508"] * 4,
            "vehicle.stop_id": ["70061"] * 4,
            "vehicle.current_stop_sequence": [1.0, 2.0, 3.0, 4.0],
        }
    )
    pq.write_table(vp, tmp_path / "vp.parquet")
    table = read_file(str(tmp_path / "vp.parquet"))
    assert [r["detail"] for r in rows(table)] == [
        None,
        "field vehicle.timestamp: 1683548120000.0 is not a time in epoch seconds",
        "field vehicle.timestamp: -5.0 is not a time in epoch seconds",
        "field vehicle.trip.direction_id: 300.0 is not 0 or 1",
    ]
    assert table["direction_id"].to_pylist() == [0, 1, 1, None]
    # The status as the protobuf enum's number (as some archives store it) is the same status.
    numbered = vp.set_column(0, "vehicle.current_status", pa.array(["1", "2", "1", "1"]))
    pq.write_table(numbered, tmp_path / "vp1.parquet")
    assert [r["reason"] for r in rows(read_file(str(tmp_path / "vp1.parquet")))][0] is None


def test_csv_forms_a_user_has_read_like_the_plain_file(tmp_path: Path) -> None:
    """A gzipped CSV, a header with spaces after its commas, float service dates (20240207.0, as a
    spreadsheet saves them): the same events as the plain CSV; a fractional or absurd date is a
    bad value of its row, not a crashed read."""
    import gzip

    lamp = pd.read_parquet(LAMP_SAMPLE).head(6)
    plain = tmp_path / "lamp.csv"
    lamp.to_csv(plain, index=False)
    (tmp_path / "lamp.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    text = plain.read_text().splitlines()
    (tmp_path / "spaced.csv").write_text("\n".join([", ".join(text[0].split(",")), *text[1:]]) + "\n")
    expected = rows(read_file(str(plain)))
    for name in ("lamp.csv.gz", "spaced.csv"):
        got = rows(read_file(str(tmp_path / name)))
        assert [{k: v for k, v in r.items() if k != "source_file"} for r in got] == [
            {k: v for k, v in r.items() if k != "source_file"} for r in expected
        ], name
    dated = lamp.assign(service_date=[20240207.0, 20240207.5, 1e300, float("inf"), 20240207.0, 20240207.0])
    dated.to_parquet(tmp_path / "dated.parquet")
    got = rows(read_file(str(tmp_path / "dated.parquet"), "lamp"))
    assert [r["reason"] for r in got] == [None, "bad_value", "bad_value", "bad_value", None, None]
    assert got[1]["detail"] == "field service_date: not a date"


def test_a_gtfs_direction_other_than_0_or_1_is_a_bad_value(tmp_path: Path) -> None:
    lamp = pd.read_parquet(LAMP_SAMPLE).head(2).assign(direction_id=[7, 1])
    lamp.to_parquet(tmp_path / "lamp.parquet")
    got = rows(read_file(str(tmp_path / "lamp.parquet"), "lamp"))
    assert [r["detail"] for r in got] == ["field direction_id: 7.0 is not 0 or 1", None]


def test_a_file_with_a_column_named_twice_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text(LAMP_2024_HEADER.strip() + ",stop_id\n20240207,Red,0,t1,70061,1,1707304860,70063\n")
    assert "columns named more than once: ['stop_id']" in _error(path)


# --- broken inputs ------------------------------------------------------------------------------


def _error(path: Path, fmt: str | None = None) -> str:
    """The InputError message for reading ``path``; it always starts with the absolute path."""
    with pytest.raises(InputError) as info:
        read_file(str(path), fmt)
    message = str(info.value)
    assert message.startswith(f"{os.path.abspath(path)}: "), message
    return message


def test_missing_required_column_is_listed(tmp_path: Path) -> None:
    """A LAMP file without stop_id: detection names lamp as closest and lists the missing column."""
    path = tmp_path / "no_stop.csv"
    path.write_text(
        "service_date,route_id,direction_id,trip_id,stop_sequence,stop_timestamp\n20240207,Red,0,t1,1,1707304860\n"
    )
    message = _error(path)
    assert "unknown input format" in message
    assert "'lamp', lacks columns ['stop_id']" in message
    assert _error(path, "lamp").endswith("not a valid 'lamp' file: missing columns ['stop_id']")


def test_missing_columns_lists_all_and_alternatives(tmp_path: Path) -> None:
    """Several missing columns are all listed; a column with 2023/2024 names shows both."""
    path = tmp_path / "lamp_partial.parquet"
    pq.write_table(
        pa.table(
            {
                "service_date": [20240207],
                "route_id": ["Red"],
                "direction_id": [True],
                "trip_id": ["t1"],
                "stop_sequence": [1],
            }
        ),
        path,
    )
    assert _error(path, "lamp").endswith(
        "not a valid 'lamp' file: missing columns ['stop_id', 'stop_timestamp|vp_stop_timestamp']"
    )


def test_unknown_format(tmp_path: Path) -> None:
    """A file no reader matches is refused, naming the known formats."""
    path = tmp_path / "weather.csv"
    path.write_text("date,temp_f,wind_mph\n2024-02-07,31,12\n")
    message = _error(path)
    assert "unknown input format. Known formats: lamp, lamp_bus, tm, massdot, gtfsrt" in message


def test_unknown_format_name(tmp_path: Path) -> None:
    """Naming a format that does not exist is an error too."""
    assert _error(LAMP_SAMPLE, "xml").endswith("unknown format 'xml'; known: lamp, lamp_bus, tm, massdot, gtfsrt")


def test_explicit_wrong_format() -> None:
    """inspect_input(lamp_file, 'tm') refuses the file and says which TM columns are missing."""
    with pytest.raises(InputError) as info:
        inspect_input(str(LAMP_SAMPLE), "tm")
    message = str(info.value)
    assert message.startswith(f"{LAMP_SAMPLE}: not a valid 'tm' file: missing columns [")
    for column in ("CALENDAR_ID", "ROUTE_ID", "GEO_NODE_ID", "ACT_ARRIVAL_TIME"):
        assert f"'{column}'" in message


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    """A 0-byte file is refused as empty."""
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    assert _error(path).endswith(": file is empty")


@pytest.mark.parametrize(
    "trailer", ["", "\n", "\n\n", "\r\n\r\n"], ids=["no_newline", "newline", "blank_line", "crlf_blank"]
)
def test_csv_header_only(tmp_path: Path, trailer: str) -> None:
    """A CSV with a header (and at most blank lines) but no data rows has no rows."""
    path = tmp_path / "header_only.csv"
    path.write_text(LAMP_2024_HEADER.rstrip("\n") + trailer, newline="")
    assert _error(path).endswith(": file has no rows")


def test_parquet_zero_rows(tmp_path: Path) -> None:
    """A parquet file with LAMP columns and no rows is refused (after detection)."""
    path = tmp_path / "zero.parquet"
    pq.write_table(pq.read_table(LAMP_SAMPLE).slice(0, 0), path)
    assert _error(path).endswith(": file has no rows")


def test_nonexistent_path(tmp_path: Path) -> None:
    """A missing path is named."""
    assert _error(tmp_path / "nope" / "lamp.parquet").endswith(": no such file")


def test_a_directory_or_a_symlink_loop_is_named_as_such(tmp_path: Path) -> None:
    """Not "no such file": say what the path is."""
    assert _error(tmp_path).endswith(": is a directory; give the files in it (e.g. " + f"{tmp_path}/*.parquet)")
    (tmp_path / "a.parquet").symlink_to(tmp_path / "b.parquet")
    (tmp_path / "b.parquet").symlink_to(tmp_path / "a.parquet")
    assert _error(tmp_path / "a.parquet").endswith(": symlink loop")
    (tmp_path / "dangling.parquet").symlink_to(tmp_path / "gone.parquet")
    assert _error(tmp_path / "dangling.parquet").endswith(": no such file")


def test_corrupt_parquet(tmp_path: Path) -> None:
    """Random bytes with a .parquet suffix cannot be read as parquet."""
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(bytes(range(256)) * 8)
    assert ": cannot read as parquet: " in _error(path)


def test_malformed_csv_row(tmp_path: Path) -> None:
    """A data row with more fields than the header is a malformed CSV, not a crash."""
    path = tmp_path / "ragged.csv"
    path.write_text(
        LAMP_2024_HEADER + "20240207,Red,0,t1,70061,1,1707304860\n20240207,Red,0,t1,70063,2,1707304920,extra\n"
    )
    assert ": malformed CSV: " in _error(path)


# --- timeutil -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service_date", "seconds", "expected"),
    [
        ("2024-02-07", 0, "2024-02-07 05:00:00"),  # EST: origin is local midnight, 05:00 UTC
        ("2024-02-07", 69_360, "2024-02-08 00:16:00"),  # 19:16 EST
        ("2024-08-11", 54_000, "2024-08-11 19:00:00"),  # 15:00 EDT
        ("2024-02-07", 90_000, "2024-02-08 06:00:00"),  # 25:00 = 01:00 EST next day
        ("2024-08-11", 87_000, "2024-08-12 04:10:00"),  # 24:10 = 00:10 EDT next day
        # Spring forward, 2024-03-10: noon EDT = 16:00 UTC, origin 04:00 UTC (23:00 EST the day before).
        ("2024-03-10", 0, "2024-03-10 04:00:00"),
        ("2024-03-10", 5_400, "2024-03-10 05:30:00"),  # 01:30 by the rule = 00:30 EST on the clock
        ("2024-03-10", 28_800, "2024-03-10 12:00:00"),  # 08:00 EDT: wall clock right
        ("2024-03-09", 91_800, "2024-03-10 06:30:00"),  # 25:30 Saturday = 01:30 EST Sunday
        # Fall back, 2024-11-03: noon EST = 17:00 UTC, origin 05:00 UTC (01:00 EDT).
        ("2024-11-03", 0, "2024-11-03 05:00:00"),
        ("2024-11-03", 5_400, "2024-11-03 06:30:00"),  # 01:30 = the second (EST) 01:30
        ("2024-11-03", 28_800, "2024-11-03 13:00:00"),  # 08:00 EST: wall clock right
        ("2024-11-02", 91_800, "2024-11-03 05:30:00"),  # 25:30 Saturday (EDT origin 04:00 UTC)
    ],
)
def test_service_seconds_to_utc(service_date: str, seconds: int, expected: str) -> None:
    """Service-day seconds -> UTC by the GTFS rule (noon minus 12 h), hand-computed."""
    got = timeutil.service_seconds_to_utc(pd.Series([service_date]), pd.Series([seconds]))
    assert str(got.dtype) == "datetime64[us, UTC]"
    assert got.iloc[0] == utc(expected)
    back = timeutil.seconds_into_service_day(pd.Series([service_date]), got)
    assert back.iloc[0] == seconds
    # A GTFS-realtime trip's start time (HH:MM:SS on a YYYYMMDD start date) counts the same way.
    h, rest = divmod(seconds, 3600)
    clock = f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"
    assert timeutil.clock_time_epoch(service_date.replace("-", ""), clock) == got.iloc[0].timestamp()


def test_clock_time_epoch_of_malformed_values_is_none() -> None:
    assert timeutil.clock_time_epoch("2024-02-07", "08:00:00") is None  # GTFS-realtime dates are YYYYMMDD
    for clock in ("8am", "08:00", "-1:00:00", "", "²:00:00", "٨:00:00"):
        assert timeutil.clock_time_epoch("20240207", clock) is None


def test_service_seconds_to_utc_missing_values() -> None:
    """Missing seconds or dates give NaT, and the other rows are unaffected."""
    got = timeutil.service_seconds_to_utc(
        pd.Series(pd.to_datetime(["2024-02-07", "2024-02-07", None])), pd.Series([60.0, None, 60.0])
    )
    assert got.iloc[0] == utc("2024-02-07 05:01:00")
    assert got.iloc[1:].isna().all()


def test_parse_service_date_spellings() -> None:
    """20240207 as int or text and '2024-02-07' parse; junk becomes NaT."""
    assert timeutil.parse_service_date(pd.Series([20240207, 20241103])).tolist() == [
        pd.Timestamp("2024-02-07"),
        pd.Timestamp("2024-11-03"),
    ]
    got = timeutil.parse_service_date(pd.Series(["20240207", "2024-03-10", " 2024-11-03 ", "notadate", None]))
    assert got.iloc[:3].tolist() == [pd.Timestamp("2024-02-07"), pd.Timestamp("2024-03-10"), pd.Timestamp("2024-11-03")]
    assert got.iloc[3:].isna().all()


def test_day_of_week_and_tod() -> None:
    """Monday is 0; the time-of-day encoding has a 24 h period (25:00 encodes like 01:00)."""
    assert timeutil.day_of_week(pd.Series(["2024-02-05", "2024-03-10"])).tolist() == [0, 6]
    sin, cos = timeutil.tod_sin_cos(pd.Series([3_600.0, 90_000.0, 21_600.0]))
    assert sin[0] == pytest.approx(sin[1]) and cos[0] == pytest.approx(cos[1])
    assert (sin[2], cos[2]) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))


def test_holidays_are_the_observed_us_and_massachusetts_ones() -> None:
    """Patriots' Day (MA only), a holiday observed on the Monday after it fell on a Sunday, and
    Thanksgiving from a UTC-stamped date are holidays; an ordinary Wednesday and a missing date are
    not; the answer keeps the input's index."""
    dates = pd.Series(
        ["2024-04-15", "2022-12-26", "2022-12-25", "2024-02-07", None, "2024-11-28T00:00:00Z"],
        index=[10, 11, 12, 13, 14, 15],
    )
    got = timeutil.is_holiday(dates.iloc[:5])
    assert got.tolist() == [1, 1, 1, 0, 0] and got.index.tolist() == [10, 11, 12, 13, 14]
    assert timeutil.is_holiday(pd.to_datetime(dates.iloc[5:], utc=True)).tolist() == [1]
    assert timeutil.is_holiday(pd.Series(["2024-02-19"], dtype="datetime64[ms]")).tolist() == [1]  # Presidents' Day


# --- LAMP bus vehicle events --------------------------------------------------------------------

#: A bus trip of service date 2024-02-07 (EST): one stop at 05:10 local (10:10 UTC), one at 12:00
#: local (17:00 UTC), one at 00:40 local the next morning (05:40 UTC on 02-08): past midnight.
_BUS_UTC = ["2024-02-07T10:10:00", "2024-02-07T17:00:00", "2024-02-08T05:40:00"]
_BUS_LOCAL = ["2024-02-07T05:10:00", "2024-02-07T12:00:00", "2024-02-08T00:40:00"]


def _bus_file(
    path: Path, times: pa.Array, scheduled: pa.Array | None = None, day: dt.date = dt.date(2024, 2, 7)
) -> Path:
    n = len(times)
    columns = {
        "service_date": pa.array([day] * n, pa.date32()),
        "route_id": ["1"] * n,
        "direction_id": pa.array([0] * n, pa.int8()),
        "trip_id": ["61234567"] * n,
        "stop_id": ["64", "1", "10590"][:n],
        "stop_sequence": pa.array(list(range(1, n + 1)), pa.int64()),
        "vehicle_label": ["1850"] * n,
        "stop_arrival_dt": times,
        "tm_scheduled_time_dt": scheduled if scheduled is not None else times,
        "route_direction_headway_seconds": pa.array([600] * n, pa.int64()),
    }
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(
    "times",
    [
        pa.array(pd.to_datetime(_BUS_UTC).tz_localize("UTC"), pa.timestamp("us", tz="UTC")),  # LAMP's schema
        pa.array(pd.to_datetime(_BUS_UTC), pa.timestamp("us")),  # naive UTC
        pa.array(pd.to_datetime(_BUS_LOCAL), pa.timestamp("us")),  # naive Boston time
        pa.array([t + "Z" for t in _BUS_UTC]),  # ISO text with its zone
    ],
    ids=["utc-zoned", "naive-utc", "naive-local", "iso-text"],
)
def test_lamp_bus_times_read_the_same_whatever_the_file_says(tmp_path: Path, times: pa.Array) -> None:
    path = _bus_file(tmp_path / "20240207.parquet", times)
    assert inspect_input(str(path)).format == "lamp_bus"
    t = read_file(str(path)).to_pandas()
    expected = pd.to_datetime(_BUS_UTC).tz_localize("UTC")
    assert t["actual_arrival"].tolist() == list(expected)
    assert t["scheduled_arrival"].tolist() == list(expected)
    assert t["reason"].isna().all()
    assert t.loc[0, "mode"] == "bus" and t.loc[0, "route_id"] == "1" and t.loc[0, "vehicle_id"] == "1850"
    assert t.loc[0, "headway_seconds"] == 600


def test_lamp_bus_naive_zone_from_the_values() -> None:
    from mbta_ray.sources.lamp_bus import naive_zone

    day = pd.Series(pd.to_datetime(["2024-02-07"] * 3))
    assert naive_zone(pd.Series(pd.to_datetime(_BUS_LOCAL)), day) == "local"  # a bus before 07:00
    assert naive_zone(pd.Series(pd.to_datetime(_BUS_UTC)), day) == "UTC"  # one past 27:00
    midday = pd.Series(pd.to_datetime(["2024-02-07T12:00:00"] * 3))
    assert naive_zone(midday, day) == "UTC"  # nothing tells: LAMP's convention


def test_lamp_bus_bad_time_names_its_field(tmp_path: Path) -> None:
    path = _bus_file(tmp_path / "bad.parquet", pa.array(["2024-02-07T10:10:00Z", "soon", None]))
    t = read_file(str(path)).to_pandas()
    assert t.loc[1, "reason"] == "bad_value" and "stop_arrival_dt" in t.loc[1, "detail"]
    assert t.loc[2, "reason"] == "missing_actual_arrival"
    assert t.loc[0, "actual_arrival"] == pd.Timestamp("2024-02-07T10:10:00Z")


def test_lamp_bus_zone_is_decided_once_per_file(tmp_path: Path) -> None:
    """A naive local file: the zone comes from all its rows, so a batch of midday rows alone (which
    says nothing) is still read as local time."""
    from mbta_ray.sources.lamp_bus import canonicalize, file_zone

    path = _bus_file(tmp_path / "local.parquet", pa.array(pd.to_datetime(_BUS_LOCAL), pa.timestamp("us")))
    assert file_zone(str(path), "parquet") == {"zone": "local"}
    midday = pq.read_table(path).to_pandas().iloc[[1]].reset_index(drop=True)
    got = canonicalize(midday, zone="local")["actual_arrival"].iloc[0]
    assert got == pd.Timestamp("2024-02-07T17:00:00Z")
    assert canonicalize(midday)["actual_arrival"].iloc[0] == pd.Timestamp("2024-02-07T12:00:00Z")  # alone: UTC
    zoned = _bus_file(tmp_path / "utc.parquet", pa.array(pd.to_datetime(_BUS_UTC).tz_localize("UTC")))
    assert file_zone(str(zoned), "parquet") == {"zone": "UTC"}


def test_lamp_bus_text_offsets_across_a_dst_change_and_missing_local_hours(tmp_path: Path) -> None:
    # Spring forward (2024-03-10): each text time by its own offset; a zoneless one among them is bad.
    text = pa.array(["2024-03-10T01:30:00-05:00", "2024-03-10T04:30:00-04:00", "2024-03-10T05:00:00"])
    t = read_file(str(_bus_file(tmp_path / "dst.parquet", text, day=dt.date(2024, 3, 10)))).to_pandas()
    assert t.loc[0, "actual_arrival"] == pd.Timestamp("2024-03-10T06:30:00Z")
    assert t.loc[1, "actual_arrival"] == pd.Timestamp("2024-03-10T08:30:00Z")
    assert t.loc[2, "reason"] == "bad_value" and "with its zone" in t.loc[2, "detail"]
    # Naive local: 02:30 on that day never happened; the row says so instead of looking missing.
    naive = pa.array(pd.to_datetime(["2024-03-10T05:10:00", "2024-03-10T02:30:00", "2024-03-10T12:00:00"]))
    t = read_file(str(_bus_file(tmp_path / "gap.parquet", naive, day=dt.date(2024, 3, 10)))).to_pandas()
    assert t.loc[0, "actual_arrival"] == pd.Timestamp("2024-03-10T09:10:00Z")  # EDT
    assert t.loc[1, "reason"] == "bad_value" and "DST" in t.loc[1, "detail"]


def test_lamp_bus_text_with_hour_offsets_reads_each_by_its_own(tmp_path: Path) -> None:
    """Postgres writes offsets as -05 / -04 (no minutes): those are zones too, across a DST change,
    and a zoneless time among them is a bad value, not a crashed read."""
    text = pa.array(["2024-03-10 01:30:00-05", "2024-03-10 04:30:00-04", "2024-03-10 05:00:00+00", "2024-03-10 05:30"])
    t = read_file(str(_bus_file(tmp_path / "pg.parquet", text[:3], day=dt.date(2024, 3, 10)))).to_pandas()
    assert t["actual_arrival"].tolist() == [
        utc("2024-03-10 06:30:00"),
        utc("2024-03-10 08:30:00"),
        utc("2024-03-10 05:00:00"),
    ]
    assert t["reason"].isna().all()
    mixed = pa.array(["2024-03-10 04:30:00-04", "2024-03-10 05:30:00"])
    t = read_file(str(_bus_file(tmp_path / "mixed.parquet", mixed, day=dt.date(2024, 3, 10)))).to_pandas()
    assert pd.isna(t.loc[0, "reason"])
    assert t.loc[1, "reason"] == "bad_value" and "stop_arrival_dt" in t.loc[1, "detail"]


def test_lamp_bus_csv_header_with_spaces_reads_its_zone_like_the_plain_header(tmp_path: Path) -> None:
    """The zone is decided from the same (stripped) column names the read uses: a naive local file
    stays local, not UTC, whatever the header's spacing."""
    body = "20240207,1,0,t,64,1,2024-02-07 05:00:00\n20240207,1,0,t,1,2,2024-02-07 12:00:00\n"
    names = ["service_date", "route_id", "direction_id", "trip_id", "stop_id", "stop_sequence", "stop_arrival_dt"]
    plain, spaced = tmp_path / "plain.csv", tmp_path / "spaced.csv"
    plain.write_text(",".join(names) + "\n" + body)
    spaced.write_text(", ".join(names) + "\n" + body)
    got = [read_file(str(p)).to_pandas()["actual_arrival"].tolist() for p in (plain, spaced)]
    assert got[0] == got[1] == [utc("2024-02-07 10:00:00"), utc("2024-02-07 17:00:00")]


def test_times_outside_their_service_day_are_bad_values_naming_the_field(tmp_path: Path) -> None:
    """A year-3000 arrival, or one a week after its service date, is garbage: quarantined as such
    (kept, it would make its trip's good stops look out of order); an arrival after midnight is fine."""
    times = pd.to_datetime(["2024-02-08T05:40:00", "3000-01-01T00:00:00", "2024-02-14T10:00:00"]).tz_localize("UTC")
    path = _bus_file(tmp_path / "far.parquet", pa.array(times, pa.timestamp("us", tz="UTC")))
    t = read_file(str(path)).to_pandas()
    assert pd.isna(t.loc[0, "reason"])
    for i, when in ((1, "3000-01-01T00:00:00Z"), (2, "2024-02-14T10:00:00Z")):
        assert t.loc[i, "reason"] == "bad_value"
        assert t.loc[i, "detail"] == f"field actual_arrival: {when} is not within service day 2024-02-07"


def test_durations_and_directions_that_are_no_such_thing_are_bad_values(tmp_path: Path) -> None:
    n = 4
    columns = {
        "service_date": pa.array([dt.date(2024, 2, 7)] * n, pa.date32()),
        "route_id": ["1"] * n,
        "direction_id": pa.array([0, 0, 0, 7], pa.int8()),
        "trip_id": ["t"] * n,
        "stop_id": ["64", "1", "10590", "2"],
        "stop_sequence": pa.array([1, 2, 3, 4], pa.int64()),
        "stop_arrival_dt": pa.array(pd.to_datetime(_BUS_UTC * 2)[:n].tz_localize("UTC"), pa.timestamp("us", tz="UTC")),
        "route_direction_headway_seconds": pa.array([600.0, math.inf, -5.0, 600.0]),
    }
    pq.write_table(pa.table(columns), tmp_path / "d.parquet")
    t = read_file(str(tmp_path / "d.parquet")).to_pandas()
    assert pd.isna(t.loc[0, "reason"]) and t.loc[0, "headway_seconds"] == 600
    assert t.loc[1, "detail"] == "field headway_seconds: inf is not seconds in [0, 86400]"
    assert t.loc[2, "detail"] == "field headway_seconds: -5.0 is not seconds in [0, 86400]"
    assert t.loc[3, "reason"] == "bad_value" and t.loc[3, "detail"] == "field direction_id: 7.0 is not 0 or 1"


def test_tm_ids_and_calendar_ids_that_are_no_integers_are_bad_values(tmp_path: Path) -> None:
    header = "CALENDAR_ID,ROUTE_ID,ROUTE_DIRECTION_ID,TRIP_ID,GEO_NODE_ID,PATTERN_GEO_NODE_SEQ,SCHEDULED_TIME,ACT_ARRIVAL_TIME,ACT_DEPARTURE_TIME\n"
    body = [
        "120240811,1,5,inf,2000,1,20000,20010,20020",
        "120240811,1,5,99999999999999999999,2000,1,20000,20010,20020",
        "120240230,1,5,3,2000,1,20000,20010,20020",
        "120240811,1,5,9007199254740991,2000,1,20000,20010,20020",
    ]
    (tmp_path / "tm.csv").write_text(header + "\n".join(body) + "\n")
    t = read_file(str(tmp_path / "tm.csv")).to_pandas()
    assert t.loc[0, "detail"] == "field TRIP_ID: inf is not an integer id"
    assert t.loc[1, "detail"] == "field TRIP_ID: 1e+20 is not an integer id"
    assert t.loc[2, "detail"] == "field CALENDAR_ID: 120240230 is not a date 1YYYYMMDD"
    assert pd.isna(t.loc[3, "reason"]) and t.loc[3, "trip_id"] == "9007199254740991"  # 2**53 - 1: exact


def test_columns_of_the_wrong_kind_are_read_as_ids_or_refused_naming_them(tmp_path: Path) -> None:
    times = pa.array(pd.to_datetime(_BUS_UTC[:2]).tz_localize("UTC"), pa.timestamp("us", tz="UTC"))
    base = pq.read_table(_bus_file(tmp_path / "b.parquet", times))
    # A float id column (an int column with a null, in pandas): 64.0 is stop "64".
    floats = base.set_column(base.schema.get_field_index("stop_id"), "stop_id", pa.array([64.0, None]))
    pq.write_table(floats, tmp_path / "floats.parquet")
    assert read_file(str(tmp_path / "floats.parquet")).column("stop_id").to_pylist() == ["64", None]
    # Text stored as bytes reads as text; bytes that are not UTF-8 are refused naming the column.
    as_bytes = base.set_column(base.schema.get_field_index("stop_id"), "stop_id", pa.array([b"64", b"\xff"]))
    pq.write_table(as_bytes.slice(0, 1), tmp_path / "bytes.parquet")
    assert read_file(str(tmp_path / "bytes.parquet")).column("stop_id").to_pylist() == ["64"]
    pq.write_table(as_bytes, tmp_path / "binary.parquet")
    with pytest.raises(InputError, match="binary.parquet: column stop_id holds bytes that are not UTF-8"):
        read_file(str(tmp_path / "binary.parquet"))
    nested = base.set_column(base.schema.get_field_index("route_id"), "route_id", pa.array([{"x": 1}, {"x": 2}]))
    pq.write_table(nested, tmp_path / "nested.parquet")
    with pytest.raises(InputError, match=r"nested.parquet: column route_id holds struct<x: int64> values"):
        read_file(str(tmp_path / "nested.parquet"))


def test_inputs_are_each_given_once_and_a_name_with_double_colons_is_a_path(tmp_path: Path) -> None:
    from mbta_ray.errors import ConfigError
    from mbta_ray.etl import plan_inputs

    with pytest.raises(ConfigError, match="the same file as"):
        plan_inputs([str(LAMP_SAMPLE), str(LAMP_SAMPLE.parent / ".." / "samples" / LAMP_SAMPLE.name)])
    odd = tmp_path / "lamp::2024.parquet"
    odd.write_bytes(LAMP_SAMPLE.read_bytes())
    assert [f.format for f in plan_inputs([str(odd), f"{LAMP_SAMPLE}::lamp"])] == ["lamp", "lamp"]


def test_epoch_seconds_stored_as_timestamps_read_as_the_times_they_are(tmp_path: Path) -> None:
    """A LAMP file whose stop_timestamp a writer stored as a timestamp (zoned, or naive UTC) reads
    as those times, not as nanoseconds that are no time."""
    base = pq.read_table(LAMP_SAMPLE).slice(0, 3).replace_schema_metadata(None)  # no pandas dtypes to restore
    seconds = base.column("stop_timestamp").to_pandas()
    expected = read_file(str(LAMP_SAMPLE)).slice(0, 3).column("actual_arrival").to_pylist()
    for zone in ("UTC", None):
        stamps = pd.to_datetime(seconds, unit="s", utc=True)
        stamps = stamps if zone else stamps.dt.tz_localize(None)
        kind = pa.timestamp("us", tz=zone)
        table = base.set_column(base.schema.get_field_index("stop_timestamp"), "stop_timestamp", pa.array(stamps, kind))
        pq.write_table(table, tmp_path / f"ts-{zone}.parquet")
        got = read_file(str(tmp_path / f"ts-{zone}.parquet"))
        assert got.column("actual_arrival").to_pylist() == expected
        assert got.column("reason").to_pylist() == read_file(str(LAMP_SAMPLE)).slice(0, 3).column("reason").to_pylist()
