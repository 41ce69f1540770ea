"""Serving's request -> features -> prediction path, without Ray: parity with the ETL's features and
offline predictions, and request validation that names the field."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from mbta_ray.features import compute_features, pair_events, segment_medians
from mbta_ray.schema import FEATURE_NAMES, TARGET
from mbta_ray.serve.inference import ModelRunner, service_date_of
from mbta_ray.serve.schemas import MAX_STOPS_AHEAD, PredictRequest
from tests.test_features import STOPS, events
from tests.test_registry import make_model

TRIP = [
    ("A", 10, "2024-03-12T12:01:00Z", "2024-03-12T12:00:00Z"),
    ("B", 20, "2024-03-12T12:06:30Z", "2024-03-12T12:05:00Z"),
    ("C", 30, "2024-03-12T12:12:00Z", "2024-03-12T12:10:00Z"),
    ("D", 40, "2024-03-12T12:20:00Z", None),
]


def request_at_b(**overrides) -> PredictRequest:
    body = {
        "route_id": "Red",
        "direction_id": 0,
        "trip_id": "T1",
        "stop_id": "B",
        "actual_arrival": "2024-03-12T12:06:30Z",
        "scheduled_arrival": "2024-03-12T08:05:00-04:00",
        "service_date": "2024-03-12",
        "headway_seconds": 300,
        "scheduled_headway_seconds": 360,
        "previous_stop": {
            "stop_id": "A",
            "actual_arrival": "2024-03-12T12:01:00Z",
            "scheduled_arrival": "2024-03-12T12:00:00Z",
        },
        "stops_ahead": [{"stop_id": "C", "scheduled_arrival": "2024-03-12T12:10:00Z"}, {"stop_id": "D"}],
    }
    body.update(overrides)
    return PredictRequest.model_validate(body)


@pytest.fixture()
def offline(tmp_path):
    """The ETL's example rows for this trip, and a model folder with those stops and medians."""
    ev = events(TRIP, service_date="2024-03-12")
    stops = pd.concat(
        [STOPS.coords, pd.DataFrame({"lat": [42.02], "lon": [-71.0]}, index=pd.Index(["D"], dtype="string"))]
    )
    from mbta_ray.gtfs import Stops

    stops = Stops(stops)
    pairs = pair_events(ev, k=3)
    medians = segment_medians(compute_features(pairs, stops))
    rows = compute_features(pairs, stops, medians)
    stops_file = tmp_path / "stops.parquet"
    stops.coords.rename(columns={"lat": "stop_lat", "lon": "stop_lon"}).rename_axis("stop_id").reset_index().to_parquet(
        stops_file
    )
    model_dir = make_model(tmp_path / "model", 100.0)
    medians.to_parquet(model_dir / "segment_medians.parquet")
    return rows, ModelRunner(model_dir, version="v-test", stops_path=str(stops_file))


def test_request_features_equal_the_etl_features(offline):
    rows, runner = offline
    expected = rows[rows["from_stop_id"] == "B"].sort_values("stops_ahead").reset_index(drop=True)
    got = runner.features([request_at_b()]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[list(FEATURE_NAMES)], expected[list(FEATURE_NAMES)], check_dtype=False)
    assert got["mode"].tolist() == ["subway", "subway"]  # from the route id
    # Without a service date the GTFS day is derived from the arrival (local time, 03:00 rollover).
    derived = runner.features([request_at_b(service_date=None)]).reset_index(drop=True)
    pd.testing.assert_frame_equal(derived[list(FEATURE_NAMES)], got[list(FEATURE_NAMES)])


def test_predictions_equal_offline_predictions(offline):
    rows, runner = offline
    expected = rows[rows["from_stop_id"] == "B"].sort_values("stops_ahead")
    offline_pred = runner.predict_rows(expected)
    (resp,) = runner.predict([request_at_b()])
    assert resp.model_version == "v-test" and [p.stop_id for p in resp.predictions] == ["C", "D"]
    np.testing.assert_allclose([p.predicted_travel_seconds for p in resp.predictions], offline_pred, atol=0.05)
    c, d = resp.predictions
    # The arrival is u's arrival plus the travel time shown (0.1 s), so a client can recompute it.
    assert c.predicted_arrival == dt.datetime(2024, 3, 12, 12, 6, 30, tzinfo=dt.UTC) + dt.timedelta(
        seconds=c.predicted_travel_seconds
    )
    assert c.predicted_delay_seconds == pytest.approx(
        (c.predicted_arrival - c.scheduled_arrival).total_seconds(), abs=0.05
    )
    assert d.scheduled_arrival is None and d.predicted_delay_seconds is None
    assert np.isfinite(expected[TARGET]).all()
    # The line's path u -> s (the features' path_travel_s) is in the answer, for a publisher to
    # chain stop to stop; with each hop's recent time given, it is their running sum.
    np.testing.assert_allclose([p.path_travel_seconds for p in resp.predictions], expected["path_travel_s"], atol=0.05)
    ahead = [{"stop_id": "C", "recent_hop_seconds": 320}, {"stop_id": "D", "recent_hop_seconds": 410}]
    (hopped,) = runner.predict([request_at_b(stops_ahead=ahead)])
    assert [p.path_travel_seconds for p in hopped.predictions] == [320.0, 730.0]


def test_real_ids_with_spaces_are_valid():
    # LAMP subway stop ids such as "Oak Grove-02" (a platform) are real GTFS ids.
    req = request_at_b(stop_id="Oak Grove-02", previous_stop=None, stops_ahead=[{"stop_id": "Malden Center-01"}])
    assert req.stop_id == "Oak Grove-02"


def test_service_day_rolls_over_at_3am_local():
    assert service_date_of(dt.datetime(2024, 8, 12, 5, 30, tzinfo=dt.UTC)) == dt.date(2024, 8, 11)  # 01:30 EDT
    assert service_date_of(dt.datetime(2024, 8, 12, 7, 30, tzinfo=dt.UTC)) == dt.date(2024, 8, 12)  # 03:30 EDT


@pytest.mark.parametrize(
    "override, where, why",
    [
        ({"actual_arrival": "2024-03-12T12:06:30"}, "actual_arrival", "must include a UTC offset"),
        ({"direction_id": 12}, "direction_id", "less than or equal to 9"),
        ({"stops_ahead": []}, "stops_ahead", "at least 1 item"),
        (
            {"stops_ahead": [{"stop_id": f"S{i}"} for i in range(MAX_STOPS_AHEAD + 1)]},
            "stops_ahead",
            "at most 20 items",
        ),
        # A stop twice or u again ahead is a loop route (valid, see the test below); positions that
        # go backwards are not.
        (
            {"stop_sequence": 20, "stops_ahead": [{"stop_id": "C", "stop_sequence": 20}]},
            "",
            "stops_ahead[0].stop_sequence 20 is not after the one before it (20)",
        ),
        (
            {"stops_ahead": [{"stop_id": "C", "scheduled_arrival": "2024-03-14T12:10:00Z"}]},
            "",
            r"stops_ahead[0].scheduled_arrival is more than 6:00:00 from actual_arrival",
        ),
        (
            {
                "actual_arrival": "2099-01-01T00:00:00Z",
                "scheduled_arrival": None,
                "previous_stop": None,
                "stops_ahead": [{"stop_id": "C"}],
            },
            "",
            "more than a day in the future",
        ),
        ({"actual_arrival": "1999-01-01T00:00:00Z"}, "actual_arrival", "not a plausible observation time"),
        ({"stop_id": "B; DROP TABLE"}, "stop_id", "String should match pattern"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"headway_seconds": -5}, "headway_seconds", "greater than or equal to 0"),
        ({"service_date": "9999-01-01"}, "", "more than a day from actual_arrival"),
        ({"departure": "2024-03-12T11:00:00Z"}, "", "departure must be from actual_arrival to moment"),
        (
            {"moment": "2024-03-12T12:08:00Z", "departure": "2024-03-12T12:09:00Z"},
            "",
            "departure must be from actual_arrival to moment",
        ),
        ({"departure": "12:06"}, "departure", "valid datetime"),
        # A stop never follows itself (a loop comes back later), and a schedule runs forward.
        ({"stops_ahead": [{"stop_id": "B"}]}, "", "stops_ahead[0].stop_id 'B' is the same stop as stop_id (u)"),
        (
            {"stops_ahead": [{"stop_id": "C"}, {"stop_id": "C"}]},
            "",
            "stops_ahead[1].stop_id 'C' is the same stop as stops_ahead[0]",
        ),
        (
            {
                "stops_ahead": [
                    {"stop_id": "C", "scheduled_arrival": "2024-03-12T12:30:00Z"},
                    {"stop_id": "D", "scheduled_arrival": "2024-03-12T12:10:00Z"},
                ]
            },
            "",
            "stops_ahead[1].scheduled_arrival 2024-03-12T12:10:00+00:00 is before stops_ahead[0].scheduled_arrival",
        ),
        (
            {"scheduled_arrival": "2024-03-12T12:15:00Z"},  # u after C's 12:10
            "",
            "stops_ahead[0].scheduled_arrival 2024-03-12T12:10:00+00:00 is before scheduled_arrival",
        ),
        ({"position": {"latitude": 42.3, "longitude": -71.1}}, "", "send its departure too"),
        (
            {"moment": "2024-03-12T12:08:00Z", "departure": "2024-03-12T12:07:00Z", "position": {"latitude": 91}},
            "position",
            "less than or equal to 90",
        ),
    ],
)
def test_bad_requests_name_the_field_and_the_reason(override, where, why):
    with pytest.raises(ValidationError) as err:
        request_at_b(**override)
    errors = err.value.errors()
    assert any(where == ".".join(str(p) for p in e["loc"][:1]) or not where for e in errors), errors
    assert any(why in e["msg"] for e in errors), errors


def test_batched_predictions_equal_one_at_a_time(offline):
    _, runner = offline
    reqs = [
        request_at_b(),
        request_at_b(
            stop_id="A",
            previous_stop=None,
            actual_arrival="2024-03-12T12:01:00Z",
            scheduled_arrival="2024-03-12T12:00:00Z",
            stops_ahead=[{"stop_id": "B"}, {"stop_id": "C"}, {"stop_id": "D"}],
        ),
    ]
    together = runner.predict(reqs + reqs[:1])
    alone = [runner.predict([r])[0] for r in reqs]
    assert [r.model_dump() for r in together] == [r.model_dump() for r in alone + alone[:1]]
    assert [p.stops_ahead for p in together[1].predictions] == [1, 2, 3]


@pytest.mark.parametrize(
    "override, loc, kind",
    [
        ({"route_id": "Purple"}, ["body", "route_id"], "unknown_route"),
        ({"direction_id": 7}, ["body", "direction_id"], "unknown_direction"),
        (
            {"stops_ahead": [{"stop_id": "C"}, {"stop_id": "nowhere"}]},
            ["body", "stops_ahead", 1, "stop_id"],
            "unknown_stop",
        ),
        ({"stop_id": "Z9", "previous_stop": None}, ["body", "stop_id"], "unknown_stop"),
    ],
)
def test_inputs_the_model_cannot_handle_are_refused_by_name(offline, override, loc, kind):
    _, runner = offline
    assert runner.refusal(request_at_b()) is None
    refusal = runner.refusal(request_at_b(**override))
    assert refusal is not None and refusal.status == 422 and refusal.reason == kind
    (error,) = refusal.detail
    assert error["loc"] == loc and error["type"] == kind and "v-test" in error["msg"], error


def test_transitmaster_stops_unseen_in_training_are_answered_as_the_etl_accepts_them(offline):
    _, runner = offline
    req = request_at_b(stops_ahead=[{"stop_id": "C"}, {"stop_id": "tm-8316"}])
    assert runner.refusal(req) is None
    (resp,) = runner.predict([req])
    assert np.isfinite([p.predicted_travel_seconds for p in resp.predictions]).all()


def test_stops_ahead_are_positions_a_loop_may_revisit_u():
    """A loop route (u again ahead, a stop twice) is valid; sequences, where given, must go forward."""
    req = request_at_b(
        stop_sequence=20,
        stops_ahead=[
            {"stop_id": "C", "stop_sequence": 30},
            {"stop_id": "B", "stop_sequence": 40},
            {"stop_id": "C", "stop_sequence": 50},
        ],
    )
    assert [s.stop_sequence for s in req.stops_ahead] == [30, 40, 50]
    with pytest.raises(ValidationError, match=r"stops_ahead\[1\].stop_sequence 25 is not after"):
        request_at_b(
            stop_sequence=20, stops_ahead=[{"stop_id": "C", "stop_sequence": 30}, {"stop_id": "B", "stop_sequence": 25}]
        )


def test_a_broken_production_version_is_not_fetched_again_every_poll(tmp_path):
    """The watcher of a degraded replica leaves the version that failed alone for FAILED_RETRY_S
    (files repaired in place are picked up after it), instead of fetching it on every poll."""
    import json

    from mbta_ray.registry import Registry, evaluation_of
    from mbta_ray.serve import app
    from tests.test_registry import make_model

    reg = Registry(tmp_path / "root")
    good_dir, bad_dir = make_model(tmp_path / "m1", 60.0, rounds=6), make_model(tmp_path / "m2", 50.0, rounds=6)
    good = reg.register(good_dir, evaluation=evaluation_of(good_dir))["version"]
    reg.promote(good)
    predictor = app.Predictor.func_or_class()
    predictor.reconfigure({"registry": str(tmp_path / "root"), "poll_s": 3600})  # the test polls by hand
    bad = reg.register(bad_dir, evaluation=evaluation_of(bad_dir))["version"]
    (Path(reg.base) / bad / "model.ubj").write_bytes(b"tampered")
    pointer = Path(reg.base) / "production.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "version": bad}))
    fetched = []
    fetch = predictor.registry.fetch
    predictor.registry.fetch = lambda version: (fetched.append(version), fetch(version))[1]

    def poll() -> None:
        with predictor._lock:
            predictor._load("production", predictor._generation, quiet=True)

    for _ in range(3):
        poll()
    assert fetched == [bad] and predictor.runner.version == good and bad in predictor.degraded
    predictor._failed = (bad, 0.0)  # the backoff has passed
    poll()
    assert fetched == [bad, bad] and predictor.degraded
