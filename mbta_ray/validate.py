"""Checks that send bad events to quarantine with a reason (never dropped silently).

Row checks need one row at a time and run per batch; trip checks need a whole trip (duplicates,
order along the trip) and run where the ETL has grouped trips together.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mbta_ray.defaults import MAX_ABS_DELAY_S
from mbta_ray.gtfs import Stops
from mbta_ray.schema import TRIP_KEY, Reason
from mbta_ray.sources import READERS


@dataclass(frozen=True)
class ValidationConfig:
    """Bounds for what counts as a plausible event."""

    #: |actual - scheduled| beyond this is a schedule mismatch or a broken clock, not a delay.
    max_abs_delay_s: float = MAX_ABS_DELAY_S
    #: Events arriving in [from, until) (UTC ISO times) are held out: kept for a race, never trained on.
    holdout: tuple[str, str] | None = None


def _flag(df: pd.DataFrame, mask: pd.Series, reason: Reason, detail: str | pd.Series) -> None:
    mask = mask.fillna(False).astype(bool) & df["reason"].isna()
    if mask.any():
        df.loc[mask, "reason"] = reason.value
        df.loc[mask, "detail"] = detail[mask] if isinstance(detail, pd.Series) else detail


def check_rows(df: pd.DataFrame, config: ValidationConfig, stops: Stops | None) -> pd.DataFrame:
    """Flag rows with missing ids, implausible delays or unknown GTFS stops (in place; returned)."""
    for column, reason in (
        ("service_date", Reason.MISSING_SERVICE_DATE),
        ("route_id", Reason.MISSING_ROUTE_ID),
        ("trip_id", Reason.MISSING_TRIP_ID),
        ("stop_id", Reason.MISSING_STOP_ID),
    ):
        _flag(df, df[column].isna(), reason, f"no {column}")
    _flag(df, df["stop_sequence"].isna(), Reason.BAD_VALUE, "field stop_sequence: missing")
    delay = (df["actual_arrival"] - df["scheduled_arrival"]).dt.total_seconds()
    _flag(
        df,
        delay.abs() > config.max_abs_delay_s,
        Reason.DELAY_OUT_OF_BOUNDS,
        "delay "
        + delay.round().astype("Int64").astype("string").fillna("")
        + f" s beyond +/-{config.max_abs_delay_s:.0f} s",
    )
    if config.holdout is not None:
        start, until = (pd.Timestamp(t) for t in config.holdout)
        held = (df["actual_arrival"] >= start) & (df["actual_arrival"] < until)
        _flag(df, held, Reason.HELD_OUT, f"arrival in the holdout window {config.holdout[0]} .. {config.holdout[1]}")
    if stops is not None:
        gtfs_rows = df["source"].map(lambda s: READERS[s].gtfs_stop_ids)
        unknown = gtfs_rows & df["stop_id"].notna() & ~stops.known(df["stop_id"], df["service_date"])
        _flag(df, unknown, Reason.UNKNOWN_STOP, "stop_id " + df["stop_id"].fillna("") + " not in GTFS stops")
    return df


def trip_keys(df: pd.DataFrame) -> pd.Series:
    """Trip identity: trip ids are only unique within a source, service day and route."""
    return (
        df["source"].astype("string")
        + "|"
        + df["service_date"].astype("string")
        + "|"
        + df["route_id"].astype("string")
        + "|"
        + df["trip_id"].astype("string")
    )


def check_trips(df: pd.DataFrame) -> pd.DataFrame:
    """Flag repeat observations of a stop visit (keeping the earliest) and arrivals out of order along
    the trip (a lone late spike, else an arrival earlier than a previous stop's). ``df`` holds whole trips and only unflagged rows.

    Returns the rows sorted by trip, stop sequence and arrival.
    """
    df = df.sort_values([TRIP_KEY, "stop_sequence", "actual_arrival"], kind="stable").reset_index(drop=True)
    dup = df.duplicated([TRIP_KEY, "stop_sequence", "stop_id"], keep="first")
    _flag(df, dup, Reason.DUPLICATE_EVENT, "repeat of trip stop visit (earliest kept)")
    by_trip = df[TRIP_KEY]
    # A single late spike (12:05, 13:30, 12:10) is the bad row, not the stops after it: flag a row
    # that is later than the next one while its neighbours are in order.
    good = df["reason"].isna()
    us = df["actual_arrival"].astype("datetime64[us, UTC]").astype("int64").where(good)
    prev = us.groupby(by_trip, sort=False).shift(1)
    nxt = us.groupby(by_trip, sort=False).shift(-1)
    spike = good & (us > nxt) & (prev.isna() | (prev <= nxt))
    _flag(df, spike, Reason.ARRIVAL_OUT_OF_ORDER, "arrival later than at the next stop of the trip")
    # Then the running latest arrival over the trip's good rows: a row earlier than it went back in time.
    good = df["reason"].isna()
    us = us.where(good)
    running = us.groupby(by_trip, sort=False).cummax().groupby(by_trip, sort=False).ffill()
    previous = running.groupby(by_trip, sort=False).shift(1)
    _flag(
        df, good & (us < previous), Reason.ARRIVAL_OUT_OF_ORDER, "arrival earlier than at a previous stop of the trip"
    )
    return df
