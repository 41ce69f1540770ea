"""LAMP bus vehicle events (``lamp/bus_vehicle_events/YYYYMMDD.parquet``, MBTA's LAMP project): one
row per stop of a bus trip, joined from GTFS-realtime, TransitMaster and the schedule.

Ids are GTFS ids (route "1", "SL1"; GTFS stop ids), so stops are checked against GTFS. The arrival
is LAMP's own ``stop_arrival_dt`` where present, else TransitMaster's, else GTFS-realtime's.

Times: LAMP's schema declares its ``*_dt`` columns in UTC, and a file that says so (a time zone on
the parquet timestamp, or an offset in the text) is read as it says. A file whose times carry no
zone is read as UTC or as Boston local time, whichever its own values say (``naive_zone``): a
service day runs from 03:00 to 27:00 local, so local times have early-morning buses (before 07:00
of the service date) and nothing past 27:00, while UTC times, 4-5 h later, have none before 07:00
and the late-night buses past 27:00. A batch that has neither (a midday extract) is read as UTC,
LAMP's convention.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pandas as pd

from mbta_ray.schema import TIMEZONE, Reason, mode_for_route
from mbta_ray.sources.base import Reader, RowIssues, first_present, numeric, text
from mbta_ray.timeutil import parse_service_date

ARRIVAL = ("stop_arrival_dt", "tm_actual_arrival_dt", "gtfs_arrival_dt")
DEPARTURE = ("stop_departure_dt", "tm_actual_departure_dt", "gtfs_departure_dt")
SCHEDULED = ("tm_scheduled_time_dt",)
VEHICLE = ("vehicle_id", "vehicle_label")
HEADWAY = ("route_direction_headway_seconds",)
SCHEDULED_HEADWAY = ("plan_route_direction_headway_seconds",)

#: Hours after the service date's midnight that only one reading of naive times can have: before
#: EARLY only local times (first buses ~04:30 local = 08:30-09:30 UTC), from LATE only UTC times
#: (the last buses, ~01:30 local = 05:30-06:30 UTC of the next day: hour 29-30).
EARLY_H, LATE_H = 7, 27


def naive_zone(times: pd.Series, service_date: pd.Series) -> str:
    """ "local" or "UTC": how naive timestamps of service-day events read (see the module doc)."""
    hours = (times - pd.to_datetime(service_date)).dt.total_seconds() / 3600
    early, late = int((hours < EARLY_H).sum()), int((hours >= LATE_H).sum())
    return "local" if early > late else "UTC"


def _parsed(df: pd.DataFrame, name: str, issues: RowIssues) -> pd.Series:
    """Column ``name`` as timestamps, zoned (converted to UTC) or naive as the file has them;
    unparseable text is flagged ``bad_value`` naming the field."""
    raw = df[name]
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        values = raw
    else:
        as_text = raw.astype("string").str.strip()
        values = pd.to_datetime(as_text, errors="coerce", format="ISO8601")
        issues.flag(values.isna() & as_text.notna() & (as_text != ""), Reason.BAD_VALUE,
                    "field " + name + ": " + as_text.fillna("") + " is not a time")  # fmt: skip
    return values.dt.tz_convert("UTC") if _zoned(values) else values


def _zoned(values: pd.Series) -> bool:
    return getattr(values.dt, "tz", None) is not None


def _as_utc(values: pd.Series, zone: str) -> pd.Series:
    if not _zoned(values):
        where = ZoneInfo(TIMEZONE) if zone == "local" else "UTC"
        values = values.dt.tz_localize(where, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    return values.astype("datetime64[us, UTC]")


def _first(columns: list[pd.Series], index: pd.Index) -> pd.Series:
    out = pd.Series(pd.NaT, index=index, dtype="datetime64[us, UTC]")
    for values in columns:
        out = out.where(out.notna(), values)
    return out


def canonicalize(df: pd.DataFrame) -> pd.DataFrame:
    issues = RowIssues(df.index)
    service_date = parse_service_date(df["service_date"])
    issues.flag(service_date.isna() & df["service_date"].notna(), Reason.BAD_VALUE, "field service_date: not a date")
    parsed = {n: _parsed(df, n, issues) for n in ARRIVAL + DEPARTURE + SCHEDULED if n in df.columns}
    naive = [v for n, v in parsed.items() if n in ARRIVAL and not _zoned(v)]
    zone = naive_zone(pd.concat(naive), pd.concat([service_date] * len(naive))) if naive else "UTC"
    utc = {n: _as_utc(v, zone) for n, v in parsed.items()}
    arrival, departure, scheduled = (
        _first([utc[n] for n in names if n in utc], df.index) for names in (ARRIVAL, DEPARTURE, SCHEDULED)
    )
    issues.flag(arrival.isna(), Reason.MISSING_ACTUAL_ARRIVAL, "no " + "/".join(ARRIVAL))
    route = text(df, "route_id")
    vehicle = first_present(df, VEHICLE)
    out = pd.DataFrame(index=df.index)
    out["mode"] = mode_for_route(route)
    out["service_date"] = service_date
    out["route_id"] = route
    out["direction_id"] = numeric(df, "direction_id", issues)
    out["trip_id"] = text(df, "trip_id")
    out["vehicle_id"] = text(df, vehicle) if vehicle else pd.NA
    out["stop_id"] = text(df, "stop_id")
    out["stop_sequence"] = numeric(df, "stop_sequence", issues)
    out["actual_arrival"] = arrival
    out["scheduled_arrival"] = scheduled
    out["dwell_seconds"] = (departure - arrival).dt.total_seconds().where(departure >= arrival)
    out["headway_seconds"] = numeric(df, HEADWAY[0], issues) if HEADWAY[0] in df.columns else float("nan")
    planned = SCHEDULED_HEADWAY[0]
    out["scheduled_headway_seconds"] = numeric(df, planned, issues) if planned in df.columns else float("nan")
    out["reason"], out["detail"] = issues.reason, issues.detail
    return out


READER = Reader(
    name="lamp_bus",
    required=(
        ("service_date",),
        ("route_id",),
        ("direction_id",),
        ("trip_id",),
        ("stop_id",),
        ("stop_sequence",),
        ARRIVAL,
    ),
    canonicalize=canonicalize,
    optional=DEPARTURE + SCHEDULED + VEHICLE + HEADWAY + SCHEDULED_HEADWAY,
)
