"""Feature values computed by hand on tiny trips, including a trip past midnight and DST dates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mbta_ray.features import (
    compute_features,
    expected_pair_count,
    pair_events,
    path_travel,
    segment_medians,
    travel_prior,
)
from mbta_ray.gtfs import Stops
from mbta_ray.schema import FEATURE_NAMES, TARGET
from mbta_ray.timeutil import seconds_into_service_day, service_seconds_to_utc
from mbta_ray.validate import TRIP_KEY, check_trips

UTC = "UTC"


def events(rows: list[tuple], service_date: str = "2024-03-10", trip: str = "T1") -> pd.DataFrame:
    """Canonical events for one trip: rows are (stop_id, seq, actual ISO UTC, scheduled ISO UTC|None)."""
    df = pd.DataFrame(
        {
            "source": "lamp",
            "mode": "subway",
            "route_id": "Red",
            "direction_id": 0,
            "trip_id": trip,
            "vehicle_id": "V1",
            "service_date": pd.Timestamp(service_date),
            "stop_id": [r[0] for r in rows],
            "stop_sequence": [r[1] for r in rows],
            "actual_arrival": pd.to_datetime([r[2] for r in rows], utc=True),
            "scheduled_arrival": pd.to_datetime([r[3] for r in rows], utc=True),
            "headway_seconds": 300.0,
            "scheduled_headway_seconds": 360.0,
            "reason": pd.Series([pd.NA] * len(rows), dtype="string"),
            "detail": pd.Series([pd.NA] * len(rows), dtype="string"),
        }
    )
    df[TRIP_KEY] = "lamp|" + service_date + "|Red|" + trip
    return df


STOPS = Stops(
    pd.DataFrame(
        {"lat": [42.0, 42.005, 42.01], "lon": [-71.0, -71.0, -71.0]}, index=pd.Index(["A", "B", "C"], dtype="string")
    )
)


def test_pairs_and_features_on_a_dst_spring_forward_trip():
    """2024-03-10 (clocks spring forward): 08:00 scheduled is 12:00 UTC; every value by hand."""
    ev = events(
        [
            ("A", 10, "2024-03-10T12:01:00Z", "2024-03-10T12:00:00Z"),
            ("B", 20, "2024-03-10T12:06:30Z", "2024-03-10T12:05:00Z"),
            ("C", 30, "2024-03-10T12:12:00Z", "2024-03-10T12:10:00Z"),
        ]
    )
    pairs = pair_events(ev, k=2)
    assert list(zip(pairs.from_stop_id, pairs.to_stop_id, pairs.stops_ahead)) == [
        ("A", "B", 1),
        ("A", "C", 2),
        ("B", "C", 1),
    ]
    f = compute_features(pairs, STOPS).set_index(["from_stop_id", "to_stop_id"])
    ac, bc = f.loc[("A", "C")], f.loc[("B", "C")]
    assert ac[TARGET] == 660.0
    assert ac.scheduled_seconds_ahead == 600.0
    assert ac.delay_u == 60.0 and math.isnan(ac.delay_prev)
    assert bc.delay_u == 90.0 and bc.delay_prev == 60.0
    assert ac.has_schedule == 1 and ac.day_of_week == 6  # Sunday
    # Service-day second 0 on a spring-forward day is 04:00 UTC (noon EDT - 12 h): 12:01 UTC is 08:01.
    seconds = 8 * 3600 + 60
    assert ac.tod_sin == pytest.approx(math.sin(2 * math.pi * seconds / 86400))
    assert ac.tod_cos == pytest.approx(math.cos(2 * math.pi * seconds / 86400))
    assert ac.distance_m == pytest.approx(1111.95, abs=0.05)  # 0.01 degree of latitude
    assert ac.headway_u == 300.0 and ac.scheduled_headway_u == 360.0
    assert set(FEATURE_NAMES) <= set(f.reset_index().columns)


def test_no_schedule_gives_missing_schedule_features_not_invented_ones():
    """GTFS-realtime-like events (no schedule): schedule features are NaN and has_schedule is 0."""
    ev = events([("A", 1, "2024-03-10T12:01:00Z", None), ("B", 2, "2024-03-10T12:03:00Z", None)])
    f = compute_features(pair_events(ev, k=3))
    row = f.iloc[0]
    assert row[TARGET] == 120.0 and row.has_schedule == 0
    assert all(
        math.isnan(row[c])
        for c in ("scheduled_seconds_ahead", "delay_u", "delay_prev", "distance_m", "hist_median_travel_s")
    )


def test_trip_past_midnight_keeps_service_day_seconds():
    """A 2024-02-07 trip scheduled at 24:10 (86,400 + 600 s) is at 2024-02-08 05:10 UTC (EST)."""
    sched = service_seconds_to_utc(pd.Series([pd.Timestamp("2024-02-07")]), pd.Series([87_000]))
    assert sched.iloc[0] == pd.Timestamp("2024-02-08T05:10:00Z")
    ev = events(
        [
            ("A", 1, "2024-02-08T05:11:00Z", "2024-02-08T05:10:00Z"),
            ("B", 2, "2024-02-08T05:15:00Z", "2024-02-08T05:14:00Z"),
        ],
        service_date="2024-02-07",
    )
    f = compute_features(pair_events(ev, k=1), STOPS)
    secs = seconds_into_service_day(
        pd.Series([pd.Timestamp("2024-02-07")]), pd.Series([pd.Timestamp("2024-02-08T05:11:00Z")])
    )
    assert secs.iloc[0] == 87_060  # past 24:00, still the 7th's service day
    assert f.tod_sin.iloc[0] == pytest.approx(math.sin(2 * math.pi * 660 / 86400))
    assert f.day_of_week.iloc[0] == 2  # the service day (Wednesday), not the calendar day
    assert f.delay_u.iloc[0] == 60.0 and f[TARGET].iloc[0] == 240.0


def test_holiday_is_the_service_days_not_the_clocks():
    """A trip of the service day before Thanksgiving 2024 running past midnight is not on holiday
    service; Thanksgiving's own trips are."""
    late = events(
        [("A", 1, "2024-11-28T05:20:00Z", None), ("B", 2, "2024-11-28T05:24:00Z", None)], service_date="2024-11-27"
    )
    feast = events([("A", 1, "2024-11-28T15:00:00Z", None), ("B", 2, "2024-11-28T15:04:00Z", None)], "2024-11-28")
    assert compute_features(pair_events(late, k=1)).holiday.tolist() == [0]
    assert compute_features(pair_events(feast, k=1)).holiday.tolist() == [1]


def test_fall_back_day_origin_is_noon_minus_12h():
    """2024-11-03 (clocks fall back): 08:00 scheduled is 13:00 UTC, i.e. 08:00 EST on the clock."""
    t = service_seconds_to_utc(pd.Series([pd.Timestamp("2024-11-03")]), pd.Series([8 * 3600]))
    assert t.iloc[0] == pd.Timestamp("2024-11-03T13:00:00Z")


def test_pair_count_formula_matches_pairing_on_random_trips():
    """The independent count the ETL checks against equals what pair_events produces."""
    rng = np.random.default_rng(0)
    for k in (1, 3, 10):
        sizes = rng.integers(1, 25, size=40)
        rows = []
        for t, n in enumerate(sizes):
            for i in range(n):
                rows.append((f"T{t:03d}", i, pd.Timestamp("2024-02-07T12:00Z") + pd.Timedelta(minutes=i)))
        ev = pd.DataFrame(rows, columns=["trip", "stop_sequence", "actual_arrival"])
        ev = events([("A", 1, "2024-02-07T12:00Z", None)] * len(ev)).assign(
            **{
                TRIP_KEY: ev.trip.to_numpy(),
                "stop_sequence": ev.stop_sequence.to_numpy(),
                "actual_arrival": ev.actual_arrival.to_numpy(),
            }
        )
        assert len(pair_events(ev, k)) == expected_pair_count(sizes, k)


def test_trip_checks_flag_duplicates_and_time_travel():
    """Repeat visit -> duplicate_event (earliest kept); an arrival before the previous stop's -> flagged."""
    ev = events(
        [
            ("A", 1, "2024-03-10T12:00:00Z", None),
            ("A", 1, "2024-03-10T12:00:20Z", None),
            ("B", 2, "2024-03-10T12:05:00Z", None),
            ("C", 3, "2024-03-10T12:04:00Z", None),
            ("D", 4, "2024-03-10T12:09:00Z", None),
        ]
    )
    out = check_trips(ev)
    # B (12:05) and C (12:04) are inverted; A <= C <= D, so B is the one out of line.
    assert out.reason.fillna("ok").tolist() == ["ok", "duplicate_event", "arrival_out_of_order", "ok", "ok"]
    assert out.loc[out.reason.isna(), "actual_arrival"].is_monotonic_increasing


def test_segment_medians_feed_the_historical_feature():
    """Medians learned on one set of pairs are joined by (route, u, s); unseen segments stay NaN."""
    ev = events(
        [
            ("A", 1, "2024-03-10T12:00:00Z", None),
            ("B", 2, "2024-03-10T12:02:00Z", None),
            ("C", 3, "2024-03-10T12:05:00Z", None),
        ]
    )
    train = compute_features(pair_events(ev, k=2))
    med = segment_medians(train)
    assert med.set_index(["from_stop_id", "to_stop_id"]).loc[("A", "C"), "hist_median_travel_s"] == 300.0
    other = events([("A", 1, "2024-03-10T13:00:00Z", None), ("Z", 2, "2024-03-10T13:03:00Z", None)], trip="T2")
    f = compute_features(pair_events(other, k=1), segment_medians=med)
    assert math.isnan(f.hist_median_travel_s.iloc[0])
    f2 = compute_features(pair_events(ev, k=2), segment_medians=med)
    assert f2.hist_median_travel_s.tolist() == [120.0, 300.0, 180.0]


def test_a_lone_late_spike_is_the_row_flagged_not_the_stops_after_it():
    """12:00, 12:05, 13:30 (bad clock), 12:10, 12:15: only 13:30 is quarantined."""
    ev = events(
        [
            ("A", 1, "2024-03-10T12:00:00Z", None),
            ("B", 2, "2024-03-10T12:05:00Z", None),
            ("C", 3, "2024-03-10T13:30:00Z", None),
            ("D", 4, "2024-03-10T12:10:00Z", None),
            ("E", 5, "2024-03-10T12:15:00Z", None),
        ]
    )
    out = check_trips(ev)
    assert out.reason.fillna("ok").tolist() == ["ok", "ok", "arrival_out_of_order", "ok", "ok"]


def test_travel_prior_prefers_the_path_then_persistence_then_segment_median_then_fallback():
    df = pd.DataFrame(
        {
            "path_travel_s": [280.0, np.nan, np.nan, np.nan],
            "scheduled_seconds_ahead": [300.0, 300.0, np.nan, np.nan],
            "hist_median_travel_s": [250.0, 250.0, 240.0, np.nan],
        }
    )
    assert travel_prior(df, fallback_s=400.0).tolist() == [280.0, 300.0, 240.0, 400.0]


def test_path_travel_chains_recent_hops_else_their_medians():
    """Two vehicles' stops ahead: hops A->B (recent 100), B->C (no recent: median 50), C->D (neither:
    the path stops being known); then X->Y (median 70) and a row that does not continue its group."""
    medians = pd.DataFrame(
        {"route_id": ["Red"] * 3, "from_stop_id": ["A", "B", "X"], "to_stop_id": ["B", "C", "Y"],
         "hist_median_travel_s": [90.0, 50.0, 70.0]}
    )  # fmt: skip
    rows = pd.DataFrame(
        {
            "route_id": "Red",
            "from_stop_id": ["A", "A", "A", "X", "X"],
            "hop_from_stop_id": ["A", "B", "C", "X", "Y"],
            "to_stop_id": ["B", "C", "D", "Y", "Z"],
            "stops_ahead": [1, 2, 3, 1, 3],
            "recent_hop_s": [100.0, np.nan, np.nan, np.nan, 30.0],
        }
    )
    got = path_travel(rows, medians)
    np.testing.assert_array_equal(got, [100.0, 150.0, np.nan, 70.0, np.nan])
    assert np.isnan(path_travel(rows.drop(columns="hop_from_stop_id"), medians)).all()
    # With GTFS stops, C -> D (no recent time, no median) is its distance at the Red line's median
    # pace: A->B 90 s / 1000 m, B->C 50 s / 500 m, X->Y 70 s / 1000 m -> 0.09 s/m; C->D is 2000 m.
    deg = 1 / 111_195.0  # degrees of latitude per metre on the mean-radius sphere
    at = {"A": 0, "B": 1000, "C": 1500, "D": 3500, "X": 5000, "Y": 6000}
    stops = Stops(pd.DataFrame({"lat": [42 + m * deg for m in at.values()], "lon": -71.0}, index=list(at)))
    np.testing.assert_allclose(path_travel(rows, medians, stops), [100.0, 150.0, 330.0, 70.0, np.nan])


def test_progress_is_the_share_of_the_way_to_the_next_stop_by_hand():
    """Stops on a meridian 1000 m apart: a vehicle 250 m past A towards B has done 0.25 of the hop,
    for every stop ahead of it; one farther from the next stop than u counts 0; no position, an unknown stop or a row
    that does not continue its group give NaN."""
    from mbta_ray.features import progress
    from mbta_ray.gtfs import Stops

    deg = 1000 / 111_195.0  # metres per degree of latitude on the mean-radius sphere
    stops = Stops(pd.DataFrame({"lat": [42.0, 42.0 + deg, 42.0 + 2 * deg], "lon": [-71.0] * 3}, index=["A", "B", "C"]))
    rows = pd.DataFrame(
        {
            "from_stop_id": ["A", "A", "A", "B", "A", "A"],
            "to_stop_id": ["B", "C", "B", "C", "Q", "C"],
            "stops_ahead": [1, 2, 1, 1, 1, 3],
            "vehicle_lat": [42.0 + deg / 4, 42.0 + deg / 4, np.nan, 42.0 + 3 * deg, 42.0, 42.0],
            "vehicle_lon": -71.0,
        }
    )
    got = progress(rows, stops)
    np.testing.assert_allclose(got[:2], [0.25, 0.25], atol=1e-6)
    assert np.isnan(got[2]) and got[3] == 0.0 and np.isnan(got[4]) and np.isnan(got[5])
    assert np.isnan(progress(rows, None)).all() and np.isnan(progress(rows.drop(columns="vehicle_lat"), stops)).all()


def test_medians_from_travel_counts_of_parts_equal_the_medians_of_all_pairs():
    """Counts taken over disjoint parts (the ETL's buckets) add up to the exact medians: odd and
    even counts, half seconds, a segment split across parts, a missing route dropped as before."""
    import numpy as np

    from mbta_ray.features import SEGMENT_KEY, medians_from_counts, segment_medians, travel_counts

    rng = np.random.default_rng(7)
    n = 5000
    pairs = pd.DataFrame(
        {
            "route_id": rng.choice(["Red", "Blue", "1", None], n),
            "from_stop_id": rng.choice(list("abcde"), n),
            "to_stop_id": rng.choice(list("xyz"), n),
            TARGET: rng.integers(30, 400, n).astype("float64") + np.where(rng.random(n) < 0.2, 0.5, 0.0),
        }
    )
    expected = segment_medians(pairs)
    got = medians_from_counts(pd.concat([travel_counts(pairs.iloc[i::4]) for i in range(4)], ignore_index=True))
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert (expected["n"] % 2 == 0).any() and (expected["n"] % 2 == 1).any()  # both middles exercised
    two = pd.DataFrame(
        {"route_id": ["R", "R"], "from_stop_id": ["a", "a"], "to_stop_id": ["b", "b"], TARGET: [10.0, 13.0]}
    )
    assert medians_from_counts(travel_counts(two))["hist_median_travel_s"].tolist() == [11.5]
    empty = medians_from_counts(travel_counts(two.iloc[:0]))
    assert empty.columns.tolist() == SEGMENT_KEY + ["hist_median_travel_s", "n"]
    # The same dtypes with or without segments (the ETL concatenates parts of both kinds).
    assert empty.dtypes.to_dict() == medians_from_counts(travel_counts(two)).dtypes.to_dict()
