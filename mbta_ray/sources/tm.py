"""TransitMaster bus stop crossings (MBTA's LAMP Springboard export).

Times are seconds into the service day (``CALENDAR_ID`` is 1YYYYMMDD). Ids are TransitMaster-internal
integers, not GTFS ids, so route and stop ids get a ``tm-`` prefix: they can never be mistaken for a
GTFS stop (and get a made-up distance). At the first point of a trip (``CROSSING_TYPE_ID`` 2) the
recorded arrival is the end of the vehicle's layover from its previous trip, so the trip's own
observation there is its departure, measured against the scheduled departure.
"""

from __future__ import annotations

import pandas as pd

from mbta_ray.schema import TM_ID_PREFIX as ID_PREFIX
from mbta_ray.schema import Mode, Reason
from mbta_ray.sources.base import Reader, RowIssues, int_text, numeric, service_time, text
from mbta_ray.timeutil import parse_service_date

#: CROSSING_TYPE_ID of a trip's first point.
TRIP_START_CROSSING = 2


def canonicalize(df: pd.DataFrame) -> pd.DataFrame:
    issues = RowIssues(df.index)
    calendar = numeric(df, "CALENDAR_ID", issues)
    # CALENDAR_ID is 1YYYYMMDD: drop the leading 1 (a float series: parse_service_date takes only
    # whole eight-digit numbers, so 1.5 or inf is no date rather than a failed cast).
    service_date = parse_service_date(calendar % 100_000_000)
    issues.flag(service_date.isna() & calendar.notna(), Reason.BAD_VALUE,
                lambda: "field CALENDAR_ID: " + df["CALENDAR_ID"].astype("string").str.strip() + " is not a date 1YYYYMMDD")  # fmt: skip
    arrival = numeric(df, "ACT_ARRIVAL_TIME", issues)
    departure = numeric(df, "ACT_DEPARTURE_TIME", issues)
    crossing = numeric(df, "CROSSING_TYPE_ID", issues) if "CROSSING_TYPE_ID" in df else None
    if crossing is not None:
        starts = crossing == TRIP_START_CROSSING
        arrival = arrival.where(~starts | departure.isna(), departure)
    issues.flag(arrival.isna(), Reason.MISSING_ACTUAL_ARRIVAL, "no ACT_ARRIVAL_TIME")
    if "IsRevenue" in df.columns:
        revenue = text(df, "IsRevenue")
        issues.flag(revenue.notna() & (revenue != "R"), Reason.NON_REVENUE, lambda: "IsRevenue=" + revenue.fillna(""))
    if "CANCELLED_FLAG" in df.columns:
        # bool in parquet, 'True'/'False' text in a CSV export
        cancelled = text(df, "CANCELLED_FLAG").str.lower().isin(["true", "1"])
        issues.flag(cancelled, Reason.NON_REVENUE, "CANCELLED_FLAG")
    sequence = numeric(df, "PATTERN_GEO_NODE_SEQ", issues)
    out = pd.DataFrame(index=df.index)
    out["mode"] = Mode.BUS.value
    out["service_date"] = service_date
    out["route_id"] = ID_PREFIX + int_text(numeric(df, "ROUTE_ID", issues), "ROUTE_ID", issues)
    out["direction_id"] = numeric(df, "ROUTE_DIRECTION_ID", issues)  # TM code, a category only
    out["trip_id"] = int_text(numeric(df, "TRIP_ID", issues), "TRIP_ID", issues)
    out["vehicle_id"] = (
        int_text(numeric(df, "VEHICLE_ID", issues), "VEHICLE_ID", issues) if "VEHICLE_ID" in df else pd.NA
    )
    out["stop_id"] = ID_PREFIX + int_text(numeric(df, "GEO_NODE_ID", issues), "GEO_NODE_ID", issues)
    out["stop_sequence"] = sequence
    out["actual_arrival"] = service_time(service_date, arrival, "ACT_ARRIVAL_TIME", issues)
    out["scheduled_arrival"] = service_time(
        service_date, numeric(df, "SCHEDULED_TIME", issues), "SCHEDULED_TIME", issues
    )
    out["dwell_seconds"] = (departure - arrival).where(departure >= arrival)
    out["headway_seconds"] = float("nan")
    out["scheduled_headway_seconds"] = float("nan")
    out["reason"], out["detail"] = issues.reason, issues.detail
    return out


READER = Reader(
    name="tm",
    required=(
        ("CALENDAR_ID",),
        ("ROUTE_ID",),
        ("ROUTE_DIRECTION_ID",),
        ("TRIP_ID",),
        ("GEO_NODE_ID",),
        ("PATTERN_GEO_NODE_SEQ",),
        ("SCHEDULED_TIME",),
        ("ACT_ARRIVAL_TIME",),
        ("ACT_DEPARTURE_TIME",),
    ),
    canonicalize=canonicalize,
    gtfs_stop_ids=False,
    optional=("VEHICLE_ID", "IsRevenue", "CANCELLED_FLAG", "CROSSING_TYPE_ID"),
)
