"""LAMP subway performance events (MBTA's LAMP project; parquet or CSV).

One row per trip x stop. The 2024 layout names the actual arrival ``stop_timestamp``; 2023 files
name it ``vp_stop_timestamp``. Both are epoch seconds. ``scheduled_arrival_time`` (seconds into the
service day, may pass 86,400) is optional: files without it give events with no schedule.
"""

from __future__ import annotations

import pandas as pd

from mbta_ray.schema import Reason, mode_for_route
from mbta_ray.sources.base import (
    Reader,
    RowIssues,
    epoch_seconds,
    epoch_time,
    first_present,
    gtfs_direction,
    numeric,
    service_time,
    text,
)
from mbta_ray.timeutil import parse_service_date

ACTUAL = ("stop_timestamp", "vp_stop_timestamp")
TRIP = ("trip_id", "pm_trip_id")
HEADWAY = ("headway_branch_seconds", "headway_trunk_seconds")
SCHEDULED_HEADWAY = ("scheduled_headway_branch", "scheduled_headway_trunk")


def _coalesce(df: pd.DataFrame, names: tuple[str, ...], issues: RowIssues) -> pd.Series:
    """First non-null numeric value among the columns ``names`` that exist."""
    out = pd.Series(float("nan"), index=df.index)
    for name in names:
        if name in df.columns:
            out = out.fillna(numeric(df, name, issues))
    return out


def _direction(df: pd.DataFrame, issues: RowIssues) -> pd.Series:
    """direction_id is a bool in LAMP parquet, so a CSV export of it reads True/False."""
    raw = df["direction_id"]
    if pd.api.types.is_string_dtype(raw.dtype):
        words = {"true": "1", "false": "0", "True": "1", "False": "0", "TRUE": "1", "FALSE": "0"}
        raw = raw.astype("string").str.strip().replace(words)
    return gtfs_direction(numeric(df.assign(direction_id=raw), "direction_id", issues), "direction_id", issues)


def canonicalize(df: pd.DataFrame) -> pd.DataFrame:
    issues = RowIssues(df.index)
    service_date = parse_service_date(df["service_date"])
    issues.flag(service_date.isna() & df["service_date"].notna(), Reason.BAD_VALUE, "field service_date: not a date")
    actual_s = epoch_seconds(df, first_present(df, ACTUAL), issues)
    issues.flag(actual_s.isna(), Reason.MISSING_ACTUAL_ARRIVAL, "no " + "/".join(ACTUAL))
    route = text(df, "route_id")
    out = pd.DataFrame(index=df.index)
    out["mode"] = mode_for_route(route)
    out["service_date"] = service_date
    out["route_id"] = route
    out["direction_id"] = _direction(df, issues)
    out["trip_id"] = text(df, first_present(df, TRIP))
    out["vehicle_id"] = text(df, "vehicle_id") if "vehicle_id" in df.columns else pd.NA
    out["stop_id"] = text(df, "stop_id")
    out["stop_sequence"] = numeric(df, "stop_sequence", issues)
    out["actual_arrival"] = epoch_time(actual_s, first_present(df, ACTUAL), issues)
    if "scheduled_arrival_time" in df.columns:
        sched = numeric(df, "scheduled_arrival_time", issues)
        out["scheduled_arrival"] = service_time(service_date, sched, "scheduled_arrival_time", issues)
    else:
        out["scheduled_arrival"] = pd.NaT
    out["dwell_seconds"] = _coalesce(df, ("dwell_time_seconds",), issues)
    out["headway_seconds"] = _coalesce(df, HEADWAY, issues)
    out["scheduled_headway_seconds"] = _coalesce(df, SCHEDULED_HEADWAY, issues)
    out["reason"], out["detail"] = issues.reason, issues.detail
    return out


READER = Reader(
    name="lamp",
    required=(("service_date",), ("route_id",), ("direction_id",), TRIP, ("stop_id",), ("stop_sequence",), ACTUAL),
    canonicalize=canonicalize,
    optional=("vehicle_id", "scheduled_arrival_time", "dwell_time_seconds") + HEADWAY + SCHEDULED_HEADWAY,
)
