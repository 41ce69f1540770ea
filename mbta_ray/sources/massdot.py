"""MassDOT "Bus Arrival Departure Times" CSVs (MBTA open data portal, one file per month).

Direction is ``Inbound``/``Outbound`` (GTFS direction 1/0 for MBTA buses), route ids are zero-padded
(``01`` is GTFS route ``1``), and ``scheduled``/``actual`` are wall-clock times on a 1900-01-01 base
(``1900-01-02`` for times past midnight), written either ``1900-01-01 05:05:00`` or
``1900-01-01T05:05:00Z`` -- the ``Z`` notwithstanding, they are local times. Headways are seconds.
Older releases use CamelCase headers (``ServiceDate``, ``Route``...); both are accepted.
"""

from __future__ import annotations

import pandas as pd

from mbta_ray.schema import Mode, Reason
from mbta_ray.sources.base import Reader, RowIssues, numeric, text
from mbta_ray.timeutil import parse_service_date, service_seconds_to_utc

ALIASES = {
    "ServiceDate": "service_date", "Route": "route_id", "Direction": "direction_id",
    "HalfTripId": "half_trip_id", "Stop": "stop_id", "Timepoint": "time_point_id",
    "TimepointOrder": "time_point_order", "PointType": "point_type",
    "StandardType": "standard_type", "Scheduled": "scheduled", "Actual": "actual",
    "ScheduledHeadway": "scheduled_headway", "Headway": "headway",
}  # fmt: skip
_CANONICAL = ("service_date", "route_id", "direction_id", "half_trip_id", "stop_id",
              "time_point_order", "scheduled", "actual")  # fmt: skip
_BASE = pd.Timestamp("1900-01-01")
DIRECTIONS = {"outbound": 0, "inbound": 1}


def seconds_from_1900_base(values: pd.Series, column: str, issues: RowIssues) -> pd.Series:
    """'1900-01-02T00:10:00Z' -> 87,000 seconds into the service day; bad strings are flagged."""
    raw = values.astype("string").str.strip().str.rstrip("Z").str.replace("T", " ", regex=False)
    raw = raw.mask(raw.isin(["", "-"]))
    parsed = pd.to_datetime(raw, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    issues.flag(
        parsed.isna() & raw.notna(),
        Reason.BAD_VALUE,
        lambda: "field " + column + ": " + raw.fillna("") + " is not a 1900-01-01-based time",
    )
    return (parsed - _BASE).dt.total_seconds()


def _headway(df: pd.DataFrame, column: str, issues: RowIssues) -> pd.Series:
    if column not in df.columns:
        return pd.Series(float("nan"), index=df.index)
    return numeric(df.assign(**{column: text(df, column).mask(text(df, column) == "-")}), column, issues)


def canonicalize(df: pd.DataFrame) -> pd.DataFrame:
    df = df.rename(columns=ALIASES)
    issues = RowIssues(df.index)
    service_date = parse_service_date(df["service_date"])
    issues.flag(service_date.isna() & df["service_date"].notna(), Reason.BAD_VALUE, "field service_date: not a date")
    actual = seconds_from_1900_base(df["actual"], "actual", issues)
    scheduled = seconds_from_1900_base(df["scheduled"], "scheduled", issues)
    issues.flag(actual.isna(), Reason.MISSING_ACTUAL_ARRIVAL, "no actual time")
    direction_text = text(df, "direction_id").str.lower()
    direction = direction_text.map(DIRECTIONS).astype("float64")
    issues.flag(
        direction.isna() & direction_text.notna(),
        Reason.BAD_VALUE,
        lambda: "field direction_id: " + direction_text.fillna("") + " is not Inbound/Outbound",
    )
    route = text(df, "route_id")
    # Zero-padded numeric routes ('01', '009') are GTFS '1', '9'; 'SL1', 'CT2' stay as they are.
    route = route.str.replace(r"^0+(?=\d)", "", regex=True)
    out = pd.DataFrame(index=df.index)
    out["mode"] = Mode.BUS.value
    out["service_date"] = service_date
    out["route_id"] = route
    out["direction_id"] = direction
    out["trip_id"] = text(df, "half_trip_id")
    out["vehicle_id"] = pd.NA  # not published in this dataset
    out["stop_id"] = text(df, "stop_id")
    out["stop_sequence"] = numeric(df, "time_point_order", issues)
    out["actual_arrival"] = service_seconds_to_utc(service_date, actual)
    out["scheduled_arrival"] = service_seconds_to_utc(service_date, scheduled)
    out["dwell_seconds"] = float("nan")
    out["headway_seconds"] = _headway(df, "headway", issues)
    out["scheduled_headway_seconds"] = _headway(df, "scheduled_headway", issues)
    out["reason"], out["detail"] = issues.reason, issues.detail
    return out


_REVERSE = {v: k for k, v in ALIASES.items()}
READER = Reader(
    name="massdot",
    required=tuple((name, _REVERSE[name]) for name in _CANONICAL),
    canonicalize=canonicalize,
    optional=("headway", "scheduled_headway", "Headway", "ScheduledHeadway"),
)
