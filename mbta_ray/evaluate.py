"""Honest evaluation: arrival-time error metrics for models and the three baselines.

Error convention: ``error = predicted - actual`` arrival (seconds; positive = predicted too late).
MBTA's accuracy standard (mbta/prediction_analyzer) allows the vehicle to arrive a little later than
predicted rather than earlier, so "accurate" means ``actual - predicted`` within the window of the
horizon bin (horizon = actual a_s - a_u):

====== ============ ==========================================
bin    horizon      accurate when actual - predicted is within
====== ============ ==========================================
0-3    0-3 min      -60 .. +60 s
3-6    3-6 min      -90 .. +120 s
6-12   6-12 min     -150 .. +210 s
12-30  12-30 min    -240 .. +360 s
30+    > 30 min     (no standard: not counted in the share)
====== ============ ==========================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mbta_ray.schema import TARGET

#: (label, horizon from s, to s, allowed actual-predicted from, to)
HORIZON_BINS: tuple[tuple[str, float, float, float, float], ...] = (
    ("0-3", 0, 180, -60, 60),
    ("3-6", 180, 360, -90, 120),
    ("6-12", 360, 720, -150, 210),
    ("12-30", 720, 1800, -240, 360),
)
BEYOND = "30+"


def horizon_bin(horizon_s: np.ndarray | pd.Series) -> np.ndarray:
    """Label of each horizon's MBTA bin ('0-3', '3-6', '6-12', '12-30', '30+')."""
    h = np.asarray(horizon_s, dtype="float64")
    out = np.full(h.shape, BEYOND, dtype=object)
    for label, lo, hi, _, _ in reversed(HORIZON_BINS):
        out[(h >= lo) & (h < hi)] = label
    # The first bin includes exactly 0 s and the edges belong to the lower bin, as in the standard.
    for label, _, hi, _, _ in HORIZON_BINS:
        out[h == hi] = label
    return out


def accurate(predicted_s: np.ndarray, actual_s: np.ndarray) -> np.ndarray:
    """Per row: 1.0 accurate, 0.0 not, NaN beyond 30 min (no standard). Inputs are travel seconds,
    binned by the actual horizon."""
    return accurate_in_bins(predicted_s, actual_s, horizon_bin(actual_s))


def accurate_in_bins(predicted: np.ndarray, actual: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Per row: 1.0 when ``actual - predicted`` is within the window of the row's bin label, 0.0
    when not, NaN for '30+' (the race bins by MBTA's predicted horizon, evaluation by the actual one)."""
    pred = np.asarray(predicted, dtype="float64")
    act = np.asarray(actual, dtype="float64")
    lateness = act - pred  # > 0: the vehicle came later than predicted
    out = np.full(act.shape, np.nan)
    for label, _, _, lo, hi in HORIZON_BINS:
        m = bins == label
        out[m] = ((lateness[m] >= lo) & (lateness[m] <= hi)).astype("float64")
    return out


def metrics(predicted_s: np.ndarray, actual_s: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R2 (of the travel-time target), bias and accurate share over rows with a prediction."""
    pred = np.asarray(predicted_s, dtype="float64")
    act = np.asarray(actual_s, dtype="float64")
    ok = np.isfinite(pred) & np.isfinite(act)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, "mae": math.nan, "rmse": math.nan, "r2": math.nan, "bias": math.nan, "accurate": math.nan}
    err = pred[ok] - act[ok]
    ss_tot = float(((act[ok] - act[ok].mean()) ** 2).sum())
    acc = accurate(pred[ok], act[ok])
    return {
        "n": n,
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else math.nan,
        "bias": float(err.mean()),
        "accurate": float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan,
    }


def baseline_predictions(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Travel-seconds predictions of the three baselines (NaN where a baseline has no input).

    - schedule: arrive at s on schedule: scheduled_s - actual_u
    - persistence: the delay at u persists: scheduled_s + d_u - actual_u = scheduled_s - scheduled_u
    - historical median: median travel u -> s on this route in the training split
    """
    sched_s = pd.to_datetime(df["scheduled_arrival_s"], utc=True)
    actual_u = pd.to_datetime(df["actual_arrival_u"], utc=True)
    return {
        "schedule": (sched_s - actual_u).dt.total_seconds(),
        "persistence": df["scheduled_seconds_ahead"].astype("float64"),
        "historical_median": df["hist_median_travel_s"].astype("float64"),
    }


def report(df: pd.DataFrame, predictions: Mapping[str, np.ndarray | pd.Series]) -> dict:
    """Metrics of each named prediction overall, by mode and by horizon bin.

    ``df`` holds test examples (target, mode, ...); ``predictions`` maps a name (model or baseline)
    to travel-seconds predictions aligned with ``df``. Each prediction is scored on the rows it covers
    (``overall``, ``by_mode``, ``by_horizon``) and, so that the comparison is like for like, on the
    rows that every prediction covers (``common``: overall and by mode; a baseline without a
    schedule or segment history has no prediction for some rows).
    """
    actual = df[TARGET].to_numpy(dtype="float64")
    bins = horizon_bin(actual)
    modes = [str(m) for m in sorted(df["mode"].dropna().unique())]
    mode_masks = {m: (df["mode"] == m).to_numpy() for m in modes}
    preds = {name: np.asarray(pred, dtype="float64") for name, pred in predictions.items()}
    common = np.isfinite(actual)
    for pred in preds.values():
        common &= np.isfinite(pred)
    out: dict = {}
    for name, pred in preds.items():
        entry = {
            "overall": metrics(pred, actual),
            "by_mode": {},
            "by_horizon": {},
            "common": {
                "overall": metrics(pred[common], actual[common]),
                "by_mode": {m: metrics(pred[common & k], actual[common & k]) for m, k in mode_masks.items()},
            },
        }
        for mode, m in mode_masks.items():
            entry["by_mode"][mode] = metrics(pred[m], actual[m])
        for label in [b[0] for b in HORIZON_BINS] + [BEYOND]:
            m = bins == label
            if m.any():
                entry["by_horizon"][label] = metrics(pred[m], actual[m])
        out[name] = entry
    return out
