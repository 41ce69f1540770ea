"""LAMP bus vehicle events (``lamp/bus_vehicle_events/YYYYMMDD.parquet``, MBTA's LAMP project): one
row per stop of a bus trip, joined from GTFS-realtime, TransitMaster and the schedule.

Ids are GTFS ids (route "1", "SL1"; GTFS stop ids), so stops are checked against GTFS. The arrival
is LAMP's own ``stop_arrival_dt`` where present, else TransitMaster's, else GTFS-realtime's.

Times: LAMP's schema declares its ``*_dt`` columns in UTC, and a time that says so (a time zone on
the parquet timestamp, or an offset in the text) is read as it says. A file whose times carry no
zone is read as UTC or as Boston local time, whichever its own values say (``naive_zone``, decided
once per file: ``file_zone``): a service day runs from 03:00 to 27:00 local, so local times have
early-morning buses (before 07:00 of the service date) and nothing past 27:00, while UTC times, 4-5 h
later, have none before 07:00 and the late-night buses past 27:00. A file that has neither (a midday
extract) is read as UTC, LAMP's convention. A naive local time that does not exist or is ambiguous
(the DST changes) is a ``bad_value`` row.
"""

from __future__ import annotations

import csv
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mbta_ray.schema import TIMEZONE, Reason, mode_for_route
from mbta_ray.sources.base import Reader, RowIssues, csv_header, first_present, gtfs_direction, numeric, text
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


def file_zone(path: str, container: str) -> dict:
    """``{"zone": "local" | "UTC"}`` for the whole file (``Reader.file_hint``): how its naive arrival
    times read, from all of them at once. {} when the file cannot be scanned (its read says why)."""
    try:
        if container == "parquet":
            names = pq.read_schema(path).names
            cols = ["service_date", *[c for c in ARRIVAL if c in names]]
            frame = pq.read_table(path, columns=cols).to_pandas()
        else:
            header = csv_header(path)  # stripped names, as the read itself takes them
            cols = [c for c in ("service_date", *ARRIVAL) if c in header]
            frame = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(header, pa.string()), include_columns=cols
                ),
            ).to_pandas()
        issues = RowIssues(frame.index)
        service_date = parse_service_date(frame["service_date"])
        naive = [v for v in (_parsed(frame, n, issues) for n in ARRIVAL if n in frame.columns) if not _zoned(v)]
    except (OSError, pa.ArrowException, UnicodeDecodeError, csv.Error, TypeError, ValueError):
        return {}
    if not naive:
        return {"zone": "UTC"}
    return {"zone": naive_zone(pd.concat(naive), pd.concat([service_date] * len(naive)))}


#: A time of day that ends in a zone: ``Z``, or an offset such as -05, -0500 or -05:00 (Postgres
#: writes LAMP's times with hour offsets, -05 in winter and -04 in summer).
_OFFSET = r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s?(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"


def _parsed(df: pd.DataFrame, name: str, issues: RowIssues) -> pd.Series:
    """Column ``name`` as timestamps: zoned ones in UTC, or naive as the file has them. Text with an
    offset is read as zoned (each row by its own offset, across a DST change too); among zoned text,
    a time without one is ``bad_value``, as is text that is no time, naming the field."""
    raw = df[name]
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        return raw.dt.tz_convert("UTC") if _zoned(raw) else raw
    as_text = raw.astype("string").str.strip().mask(lambda t: t == "")
    offset = as_text.str.contains(_OFFSET, regex=True).fillna(False).astype(bool)
    zoned = offset.any()
    values = pd.to_datetime(
        as_text.where(offset) if zoned else as_text, errors="coerce", utc=bool(zoned), format="ISO8601"
    )
    issues.flag(values.isna() & as_text.notna(), Reason.BAD_VALUE,
                lambda: "field " + name + ": " + as_text.fillna("") + (" is not a time with its zone" if zoned else " is not a time"))  # fmt: skip
    return values


def _zoned(values: pd.Series) -> bool:
    return getattr(values.dt, "tz", None) is not None


def _as_utc(values: pd.Series, zone: str, name: str, issues: RowIssues) -> pd.Series:
    if not _zoned(values):
        if zone == "local":
            local = values.dt.tz_localize(ZoneInfo(TIMEZONE), ambiguous="NaT", nonexistent="NaT")
            issues.flag(local.isna() & values.notna(), Reason.BAD_VALUE,
                        lambda: "field " + name + ": " + values.astype("string") + " is no single local time (DST change)")  # fmt: skip
            values = local.dt.tz_convert("UTC")
        else:
            values = values.dt.tz_localize("UTC")
    return values.astype("datetime64[us, UTC]")


def _first(columns: list[pd.Series], index: pd.Index) -> pd.Series:
    out = pd.Series(pd.NaT, index=index, dtype="datetime64[us, UTC]")
    for values in columns:
        out = out.where(out.notna(), values)
    return out


def canonicalize(df: pd.DataFrame, zone: str | None = None) -> pd.DataFrame:
    """A batch to canonical events; ``zone`` (``file_zone``) says how naive times read (None: from
    this batch's own values, for a caller without the file)."""
    issues = RowIssues(df.index)
    service_date = parse_service_date(df["service_date"])
    issues.flag(service_date.isna() & df["service_date"].notna(), Reason.BAD_VALUE, "field service_date: not a date")
    parsed = {n: _parsed(df, n, issues) for n in ARRIVAL + DEPARTURE + SCHEDULED if n in df.columns}
    if zone is None:
        naive = [v for n, v in parsed.items() if n in ARRIVAL and not _zoned(v)]
        zone = naive_zone(pd.concat(naive), pd.concat([service_date] * len(naive))) if naive else "UTC"
    utc = {n: _as_utc(v, zone, n, issues) for n, v in parsed.items()}
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
    out["direction_id"] = gtfs_direction(numeric(df, "direction_id", issues), "direction_id", issues)
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
    file_hint=file_zone,
)
