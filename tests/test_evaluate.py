"""Evaluation metrics and baselines on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mbta_ray.evaluate import accurate, baseline_predictions, horizon_bin, metrics, report


def test_horizon_bins_and_edges():
    """Edges belong to the lower bin; beyond 30 min has no standard."""
    assert horizon_bin([0, 179, 180, 181, 360, 720, 1800, 1801]).tolist() == [
        "0-3",
        "0-3",
        "0-3",
        "3-6",
        "3-6",
        "6-12",
        "12-30",
        "30+",
    ]


def test_accuracy_windows_are_asymmetric_like_mbta():
    """At 3-6 min a vehicle may come up to 120 s later than predicted but only 90 s earlier."""
    actual = np.array([300.0, 300.0, 300.0, 300.0, 100.0, 2000.0])
    pred = np.array([180.0, 179.0, 390.0, 391.0, 161.0, 0.0])  # lateness +120, +121, -90, -91, -61
    out = accurate(pred, actual)
    assert out[:5].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert math.isnan(out[5])


def test_metrics_by_hand():
    """MAE, RMSE, bias, R2 and accurate share on four rows."""
    actual = np.array([100.0, 200.0, 300.0, 400.0])
    pred = np.array([110.0, 190.0, 330.0, 400.0])  # errors +10, -10, +30, 0
    m = metrics(pred, actual)
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(12.5)
    assert m["rmse"] == pytest.approx(math.sqrt((100 + 100 + 900 + 0) / 4))
    assert m["bias"] == pytest.approx(7.5)
    assert m["r2"] == pytest.approx(1 - 1100 / 50000)
    assert m["accurate"] == 1.0
    assert metrics(np.array([np.nan]), np.array([5.0]))["n"] == 0


def test_baselines_by_hand():
    """schedule, persistence and historical median from the example columns."""
    df = pd.DataFrame(
        {
            "actual_arrival_u": pd.to_datetime(["2024-02-07T12:01:00Z", "2024-02-07T12:00:00Z"]),
            "scheduled_arrival_s": pd.to_datetime(["2024-02-07T12:10:00Z", None], utc=True),
            "scheduled_seconds_ahead": [600.0, np.nan],
            "hist_median_travel_s": [570.0, 200.0],
            "travel_seconds": [580.0, 210.0],
            "mode": ["subway", "bus"],
        }
    )
    b = baseline_predictions(df)
    assert b["schedule"].tolist()[0] == 540.0 and math.isnan(b["schedule"].tolist()[1])
    assert b["persistence"].tolist()[0] == 600.0
    assert b["historical_median"].tolist() == [570.0, 200.0]
    r = report(df, b)
    assert r["persistence"]["overall"]["n"] == 1 and r["persistence"]["overall"]["mae"] == 20.0
    assert r["historical_median"]["by_mode"]["bus"]["mae"] == 10.0
    assert r["schedule"]["by_horizon"]["6-12"]["mae"] == 40.0
    # Like for like: only the first row has every baseline, so "common" scores that row alone.
    assert r["historical_median"]["common"]["overall"]["n"] == 1
    assert r["historical_median"]["common"]["overall"]["mae"] == 10.0
    assert r["persistence"]["common"]["by_mode"]["subway"]["mae"] == 20.0
    assert r["persistence"]["common"]["by_mode"]["bus"]["n"] == 0
