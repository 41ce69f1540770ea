"""The one source of truth for mbta_ray's data contracts.

Every reader maps its source format to :data:`EVENT_SCHEMA` (one row per trip x stop observation);
the feature builder turns pairs of events into rows of :data:`EXAMPLE_SCHEMA`, whose model inputs are
listed in :data:`FEATURES`. ETL, training and serving all import these names from here, so a feature
cannot exist in one stage and not in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pandas as pd
import pyarrow as pa

#: Bump when the feature code changes in a way that changes its output: it is part of a dataset
#: version hash, so old datasets are never silently mixed with new features.
FEATURE_CODE_VERSION = "5"

#: Local time of every MBTA source (schedules and service days are local wall-clock time).
TIMEZONE = "America/New_York"

UTC_TS = pa.timestamp("us", tz="UTC")


class Mode(str, Enum):
    """Transit mode of a route."""

    SUBWAY = "subway"
    BUS = "bus"
    COMMUTER_RAIL = "commuter_rail"


#: Subway and light-rail route ids (everything else that is not CR-* is a bus route).
_SUBWAY_ROUTES = {"Red", "Orange", "Blue", "Mattapan", "Green"}


def mode_for_route(route_ids: pd.Series) -> pd.Series:
    """Infer the mode from GTFS route ids (CR-* commuter rail, Red/Orange/Blue/Green-*/Mattapan subway)."""
    r = route_ids.astype("string")
    mode = pd.Series(Mode.BUS.value, index=r.index, dtype="string")
    mode[r.str.startswith("CR-").fillna(False)] = Mode.COMMUTER_RAIL.value
    subway = r.isin(_SUBWAY_ROUTES) | r.str.startswith("Green-").fillna(False)
    mode[subway.fillna(False)] = Mode.SUBWAY.value
    return mode


#: TransitMaster route and stop ids get this prefix: they are not GTFS ids and must never collide
#: with one (serving accepts them as the ETL does, though they are not in GTFS stops).
TM_ID_PREFIX = "tm-"

#: The identity of a trip: trip ids are only unique within a source, service day and route.
TRIP_KEY = "trip_key"


# --- canonical stop event -----------------------------------------------------------------------

#: Columns that every reader produces, in this order.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # reader name: lamp, lamp_bus, tm, massdot, gtfsrt
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),  # 0-based row in source_file
        pa.field("mode", pa.string()),
        pa.field("service_date", pa.date32()),
        pa.field("route_id", pa.string()),
        pa.field("direction_id", pa.int8()),
        pa.field("trip_id", pa.string()),
        pa.field("vehicle_id", pa.string()),
        pa.field("stop_id", pa.string()),
        pa.field("stop_sequence", pa.int32()),
        pa.field("actual_arrival", UTC_TS),
        pa.field("scheduled_arrival", UTC_TS),  # null where the source has no schedule
        pa.field("dwell_seconds", pa.float64()),
        pa.field("headway_seconds", pa.float64()),
        pa.field("scheduled_headway_seconds", pa.float64()),
    ]
)

#: Quarantined rows keep their canonical columns (as far as they could be parsed) plus why.
QUARANTINE_SCHEMA = EVENT_SCHEMA.append(pa.field("reason", pa.string(), nullable=False)).append(
    pa.field("detail", pa.string())
)


class Reason(str, Enum):
    """Why a row was quarantined. Values are what the quarantine table and manifest show."""

    MISSING_ACTUAL_ARRIVAL = "missing_actual_arrival"
    MISSING_TRIP_ID = "missing_trip_id"
    MISSING_STOP_ID = "missing_stop_id"
    MISSING_ROUTE_ID = "missing_route_id"
    MISSING_SERVICE_DATE = "missing_service_date"
    BAD_VALUE = "bad_value"
    DELAY_OUT_OF_BOUNDS = "delay_out_of_bounds"
    UNKNOWN_STOP = "unknown_stop"
    NON_REVENUE = "non_revenue"
    NOT_AN_ARRIVAL = "not_an_arrival"
    DUPLICATE_EVENT = "duplicate_event"
    ARRIVAL_OUT_OF_ORDER = "arrival_out_of_order"
    #: Not bad: inside the ETL's holdout window, kept out so a race over it is honest.
    HELD_OUT = "held_out"


# --- examples: (u -> s) pairs -------------------------------------------------------------------


class Kind(str, Enum):
    """How a model should treat a feature column."""

    CATEGORICAL = "categorical"
    NUMERIC = "numeric"


@dataclass(frozen=True)
class Feature:
    """One model input column."""

    name: str
    dtype: pa.DataType
    kind: Kind
    doc: str
    #: True when the value can be missing (NaN/null) by design, e.g. no schedule in the source.
    optional: bool = False


#: The model inputs, in model order. Missing values are NaN (numeric) or null (categorical).
FEATURES: tuple[Feature, ...] = (
    Feature("mode", pa.string(), Kind.CATEGORICAL, "subway, bus or commuter_rail"),
    Feature("route_id", pa.string(), Kind.CATEGORICAL, "route of the trip"),
    Feature("direction_id", pa.int8(), Kind.CATEGORICAL, "0 or 1"),
    Feature("from_stop_id", pa.string(), Kind.CATEGORICAL, "stop u, where the vehicle is now"),
    Feature("to_stop_id", pa.string(), Kind.CATEGORICAL, "stop s, the one predicted"),
    Feature("stops_ahead", pa.int16(), Kind.NUMERIC, "observed stops from u to s (1..K)"),
    Feature("tod_sin", pa.float64(), Kind.NUMERIC, "sin of local service-day seconds at u"),
    Feature("tod_cos", pa.float64(), Kind.NUMERIC, "cos of local service-day seconds at u"),
    Feature("day_of_week", pa.int8(), Kind.NUMERIC, "service day, 0 = Monday"),
    Feature("holiday", pa.int8(), Kind.NUMERIC, "1 on a Massachusetts holiday (timeutil.HOLIDAY_CALENDAR)"),
    Feature("has_schedule", pa.int8(), Kind.NUMERIC, "1 when u and s have scheduled times"),
    Feature("scheduled_seconds_ahead", pa.float64(), Kind.NUMERIC, "scheduled s - scheduled u", True),
    Feature("delay_u", pa.float64(), Kind.NUMERIC, "actual - scheduled arrival at u", True),
    Feature("delay_prev", pa.float64(), Kind.NUMERIC, "delay at the stop observed before u", True),
    Feature("headway_u", pa.float64(), Kind.NUMERIC, "observed headway at u, seconds", True),
    Feature("scheduled_headway_u", pa.float64(), Kind.NUMERIC, "scheduled headway at u, seconds", True),
    Feature("distance_m", pa.float64(), Kind.NUMERIC, "great-circle u -> s from GTFS stops", True),
    Feature(
        "hist_median_travel_s",
        pa.float64(),
        Kind.NUMERIC,
        "median travel u -> s per (route, u, s) in the training split",
        True,
    ),
    # Real time: what the network state knew at the prediction moment (realtime/features.py).
    Feature(
        "recent_travel_s",
        pa.float64(),
        Kind.NUMERIC,
        "median u -> s travel of the last 5 other vehicles, known at the moment",
        True,
    ),
    Feature("recent_travel_n", pa.float64(), Kind.NUMERIC, "how many other vehicles that median has (0-5)"),
    Feature("recent_travel_age_s", pa.float64(), Kind.NUMERIC, "seconds since the latest of them reached s", True),
    Feature(
        "recent_hop_s",
        pa.float64(),
        Kind.NUMERIC,
        "median travel of the last 5 other vehicles over the hop into s (from the stop before s)",
        True,
    ),
    Feature(
        "path_travel_s",
        pa.float64(),
        Kind.NUMERIC,
        "sum of the hops u -> s: each hop's recent time, else its training median (features.path_travel)",
        True,
    ),
    Feature("elapsed_s", pa.float64(), Kind.NUMERIC, "seconds from the arrival at u to the prediction moment"),
    Feature(
        "departed_s",
        pa.float64(),
        Kind.NUMERIC,
        "seconds since the vehicle left u, if known at the moment to have left (NaN: still at u)",
        True,
    ),
    Feature(
        "progress",
        pa.float64(),
        Kind.NUMERIC,
        "0..1 of the way from u to the next stop at the vehicle's latest reported position, once it left u",
        True,
    ),
    Feature(
        "headway_ahead_s",
        pa.float64(),
        Kind.NUMERIC,
        "arrival at u - the previous vehicle's arrival at u (route, direction)",
        True,
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.kind is Kind.CATEGORICAL)
NUMERIC_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.kind is Kind.NUMERIC)

#: What a model predicts: seconds from the actual arrival at u to the actual arrival at s.
TARGET = "travel_seconds"

#: Columns kept beside features and target for splitting, baselines and evaluation (never inputs).
META_FIELDS: tuple[pa.Field, ...] = (
    pa.field("source", pa.string()),
    pa.field(TRIP_KEY, pa.string()),
    pa.field("trip_id", pa.string()),
    pa.field("service_date", pa.date32()),
    pa.field("vehicle_id", pa.string()),
    pa.field("from_stop_sequence", pa.int32()),
    pa.field("to_stop_sequence", pa.int32()),
    pa.field("actual_arrival_u", UTC_TS),
    pa.field("scheduled_arrival_u", UTC_TS),
    pa.field("scheduled_arrival_s", UTC_TS),
    pa.field("actual_arrival_s", UTC_TS),
    pa.field("trip_start", UTC_TS),  # first observed arrival of the trip: orders the splits
)

EXAMPLE_SCHEMA = pa.schema(
    [pa.field(f.name, f.dtype) for f in FEATURES] + [pa.field(TARGET, pa.float64())] + list(META_FIELDS)
)
EXAMPLE_COLUMNS = EXAMPLE_SCHEMA.names

SPLITS: tuple[str, ...] = ("train", "valid", "test")


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema`` (missing columns become nulls)."""
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            arrays.append(table[field.name].cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema.remove_metadata())
