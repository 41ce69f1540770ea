"""GTFS-realtime VehiclePositions archives (flattened, as LAMP archives them) as stop events.

The column names are ``realtime.feeds``' (which reads every form of the feed for the real-time
state); this reader turns an archive's arrivals into canonical events for the batch ETL.

A vehicle reports every few seconds; only ``STOPPED_AT`` snapshots are arrivals, and a vehicle
standing at a stop reports several. The arrival is the first ``STOPPED_AT`` per trip and stop: later
snapshots of the same stop visit are quarantined as duplicates by the ETL's trip-level check (which
keeps the earliest), the rest as ``not_an_arrival``. There is no schedule in this feed.
"""

from __future__ import annotations

import pandas as pd

from mbta_ray.realtime.feeds import STATUS_NUMBERS, STOPPED_AT
from mbta_ray.realtime.feeds import VEHICLE_FIELDS as F
from mbta_ray.schema import Reason, mode_for_route
from mbta_ray.sources.base import Reader, RowIssues, epoch_seconds, epoch_time, gtfs_direction, numeric, text
from mbta_ray.timeutil import parse_service_date

STATUS = F["status"]


def canonicalize(df: pd.DataFrame) -> pd.DataFrame:
    issues = RowIssues(df.index)
    status = text(df, STATUS).replace(STATUS_NUMBERS)  # the enum's number, as some archives store it
    not_stopped = (status != STOPPED_AT).fillna(True)  # a null status is no arrival either
    issues.flag(not_stopped, Reason.NOT_AN_ARRIVAL, lambda: STATUS + "=" + status.fillna("null"))
    timestamp = epoch_seconds(df, F["timestamp"], issues)
    issues.flag(timestamp.isna(), Reason.MISSING_ACTUAL_ARRIVAL, "no vehicle.timestamp")
    start_date = text(df, F["start_date"])
    service_date = parse_service_date(start_date)
    issues.flag(service_date.isna() & start_date.notna(), Reason.BAD_VALUE,
                lambda: "field " + F["start_date"] + ": " + start_date + " is not a date YYYYMMDD")  # fmt: skip
    route = text(df, F["route_id"])
    out = pd.DataFrame(index=df.index)
    out["mode"] = mode_for_route(route)
    out["service_date"] = service_date
    out["route_id"] = route
    out["direction_id"] = gtfs_direction(numeric(df, F["direction_id"], issues), F["direction_id"], issues)
    out["trip_id"] = text(df, F["trip_id"])
    out["vehicle_id"] = text(df, F["vehicle_id"]) if F["vehicle_id"] in df else pd.NA
    out["stop_id"] = text(df, F["stop_id"])
    out["stop_sequence"] = numeric(df, F["stop_sequence"], issues)
    out["actual_arrival"] = epoch_time(timestamp, F["timestamp"], issues)
    out["scheduled_arrival"] = pd.NaT
    out["dwell_seconds"] = float("nan")
    out["headway_seconds"] = float("nan")
    out["scheduled_headway_seconds"] = float("nan")
    out["reason"], out["detail"] = issues.reason, issues.detail
    return out


READER = Reader(
    name="gtfsrt",
    required=(
        (STATUS,),
        (F["timestamp"],),
        (F["trip_id"],),
        (F["route_id"],),
        (F["direction_id"],),
        (F["start_date"],),
        (F["stop_id"],),
        (F["stop_sequence"],),
    ),
    canonicalize=canonicalize,
    optional=(F["vehicle_id"],),
)
