"""Service-day time arithmetic for MBTA sources.

MBTA schedules (GTFS, LAMP, TransitMaster, the MassDOT CSVs) give times as seconds into a *service
day*, which may pass 24:00 for trips after midnight. Following the GTFS reference, second 0 of a
service day is "noon minus 12 h" local time: on ordinary days that is local midnight, and on the two
DST-change days it keeps wall-clock times right (08:00 scheduled is 08:00 on the clock).
"""

from __future__ import annotations

import datetime as dt
import functools
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from mbta_ray.errors import ConfigError
from mbta_ray.schema import TIMEZONE

_TZ = ZoneInfo(TIMEZONE)
_SECONDS_PER_DAY = 86_400

#: Epoch seconds a source's or a feed's time must lie in (2001-09-09 .. 2100-01-01): anything else
#: is a unit mistake (milliseconds) or garbage, and would overflow a timestamp downstream.
EPOCH_RANGE = (1_000_000_000, 4_102_444_800)
#: Seconds into a service day a schedule or an event may have: a day before its origin (the
#: previous day, as some exports count) to three days after it (trips run past 24:00, never 72:00).
SERVICE_SECONDS_RANGE = (-_SECONDS_PER_DAY, 3 * _SECONDS_PER_DAY)


def service_day_origin(dates: pd.Series) -> pd.Series:
    """UTC timestamp of second 0 of each service day (noon local minus 12 h)."""
    days = pd.to_datetime(dates)
    noon_local = (days.dt.normalize() + pd.Timedelta(hours=12)).dt.tz_localize(_TZ)
    return noon_local.dt.tz_convert("UTC") - pd.Timedelta(hours=12)


def service_seconds_to_utc(dates: pd.Series, seconds: pd.Series) -> pd.Series:
    """Turn (service date, seconds into the service day) into UTC timestamps; NaN seconds -> NaT."""
    origin = service_day_origin(dates)
    delta = pd.to_timedelta(pd.to_numeric(seconds, errors="coerce"), unit="s")
    return (origin + delta).astype("datetime64[us, UTC]")


@functools.lru_cache(maxsize=64)
def _origin_epoch(service_date: str) -> float | None:
    """``service_day_origin`` of one YYYYMMDD date, as epoch seconds (cached: a replay asks per vehicle)."""
    try:
        day = dt.datetime.strptime(service_date, "%Y%m%d")
    except (TypeError, ValueError):
        return None
    return service_day_origin(pd.Series([day])).iloc[0].timestamp()


def clock_time_epoch(service_date: str, clock: str) -> float | None:
    """Epoch seconds of a GTFS clock time (``HH:MM:SS``, past 24:00 after midnight) on a service day
    (``YYYYMMDD``), as ``service_seconds_to_utc`` counts it; None when either is malformed."""
    origin = _origin_epoch(service_date)
    parts = str(clock).split(":")
    if origin is None or len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    hours, minutes, seconds = map(int, parts)
    return origin + hours * 3600 + minutes * 60 + seconds


def seconds_into_service_day(dates: pd.Series, when: pd.Series) -> pd.Series:
    """Seconds from the service day's origin to ``when`` (UTC); > 86,400 after midnight."""
    origin = service_day_origin(dates)
    return (pd.to_datetime(when, utc=True) - origin).dt.total_seconds()


def parse_service_date(values: pd.Series) -> pd.Series:
    """Parse service dates given as 20240207 (int or str), '2024-02-07' or date objects.

    Returns datetime64 at midnight (naive); unparseable values become NaT.
    """
    if pd.api.types.is_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype):
        number = values.astype("float64")
        # Only whole eight-digit numbers are dates (20240207.5, 1e300 or inf would not even cast).
        whole = number.where((number == number.round()) & number.between(10_000_000, 99_999_999))
        text = whole.astype("Int64").astype("string")
        return pd.to_datetime(text, format="%Y%m%d", errors="coerce")
    text = values.astype("string").str.strip()
    compact = pd.to_datetime(text.where(text.str.fullmatch(r"\d{8}")), format="%Y%m%d", errors="coerce")
    iso = pd.to_datetime(text.str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    return compact.fillna(iso)


def day_of_week(dates: pd.Series) -> pd.Series:
    """0 = Monday ... 6 = Sunday."""
    return pd.to_datetime(dates).dt.dayofweek.astype("int8")


#: Whose holidays: Massachusetts' calendar in the ``holidays`` package (the federal holidays as the
#: state observes them, e.g. not a federal Friday for a Saturday Veterans Day, plus Patriots' Day),
#: on their observed dates. MBTA runs reduced service on most of them; the model learns how much
#: from the data (Columbus and Veterans Day may run close to a weekday).
HOLIDAY_CALENDAR = {"country": "US", "subdiv": "MA", "observed": True}


@functools.lru_cache(maxsize=64)
def _holiday_dates(years: tuple[int, ...]) -> pd.DatetimeIndex:
    import holidays

    calendar = holidays.country_holidays(years=years, **HOLIDAY_CALENDAR)
    return pd.DatetimeIndex(sorted(calendar.keys()), dtype="datetime64[ns]")


def is_holiday(dates: pd.Series) -> pd.Series:
    """1 where the service date is a Massachusetts holiday (``HOLIDAY_CALENDAR``), else 0."""
    days = pd.to_datetime(dates)
    if days.dt.tz is not None:  # a date stamped at UTC midnight is still that date
        days = days.dt.tz_localize(None)
    days = days.dt.normalize().astype("datetime64[ns]")
    years = tuple(sorted({int(y) for y in days.dt.year.dropna().unique()}))
    return pd.Series(days.isin(_holiday_dates(years)), index=dates.index).astype("int8")


def tod_sin_cos(service_seconds: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Cyclical encoding of the time of day (24 h period, so 25:00 encodes like 01:00)."""
    angle = 2 * np.pi * (service_seconds.to_numpy(dtype="float64") % _SECONDS_PER_DAY) / _SECONDS_PER_DAY
    return np.sin(angle), np.cos(angle)


def epoch_seconds(when: pd.Series) -> pd.Series:
    """UTC timestamps (any resolution) as whole epoch seconds (int64), floored."""
    return ((pd.to_datetime(when, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("int64")


def iso_z(epoch: float) -> str:
    """Epoch seconds as an ISO UTC time ending in ``Z`` (what the race, the live service and its
    API write)."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def parse_utc(value: str, what: str) -> dt.datetime:
    """An ISO time a user gave (``Z`` or an offset; UTC when none) as an aware UTC datetime; a
    ``ConfigError`` naming ``what`` (the option or setting) when it is not one."""
    try:
        when = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not an ISO time such as 2023-05-08T12:20:00Z") from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
