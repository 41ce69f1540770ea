"""Request and response models of the prediction API (pydantic v2).

Field names follow ``mbta_ray.schema`` (stop, route, direction, arrival times) so a request maps
onto the same pair columns the ETL builds. Validation errors name the field and the reason (FastAPI
turns them into 422s); limits keep one request cheap.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mbta_ray.schema import Mode

#: At most this many stops ahead per request (the models were trained on 1..K, K = 10 by default;
#: further stops are allowed but extrapolate).
MAX_STOPS_AHEAD = 20
#: A batch request holds at most this many vehicle requests.
MAX_BATCH = 256
#: Times further than this from the arrival at u are refused (a typo'd date, not a prediction).
MAX_SCHEDULE_GAP = dt.timedelta(hours=6)
EARLIEST = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
#: Later than this is no observation either; checked on the wall-clock value, before any conversion
#: to UTC (9999-12-31T23:00-05:00 overflows datetime when converted).
LATEST_YEAR = 2100


StopId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\- ]+$")]  # "Oak Grove-02" is real
RouteId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\- ]+$")]


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must include a UTC offset, e.g. 2024-08-11T14:05:00-04:00")
    if not EARLIEST.year <= value.year < LATEST_YEAR:
        raise ValueError(f"is outside {EARLIEST.year}-{LATEST_YEAR - 1}: not a plausible observation time")
    if value < EARLIEST:
        raise ValueError(f"is before {EARLIEST:%Y-%m-%d}: not a plausible observation time")
    return value.astimezone(dt.UTC)


AwareTime = Annotated[dt.datetime, AfterValidator(_aware)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RecentTravel(_Strict):
    """What the other vehicles of the line did recently over u -> this stop (a client that follows
    the real-time feed knows it: ``mbta_ray.realtime``)."""

    median_seconds: Annotated[float, Field(ge=0, le=21_600)] = Field(
        description="median u -> s travel time of the last vehicles that did it"
    )
    vehicles: Annotated[int, Field(ge=1, le=50)] = Field(description="how many vehicles that median has")
    age_seconds: Annotated[float, Field(ge=0, le=21_600)] = Field(
        description="how long before the prediction moment the latest of them reached this stop"
    )


class StopAhead(_Strict):
    """A stop the vehicle has not reached yet."""

    stop_id: StopId
    stop_sequence: Annotated[int, Field(ge=0, le=100_000)] | None = Field(
        None, description="its position on the trip (GTFS stop_sequence); a loop route visits a stop twice"
    )
    scheduled_arrival: AwareTime | None = Field(None, description="scheduled arrival at this stop, if known")
    recent_travel: RecentTravel | None = Field(None, description="real-time input: other vehicles' recent u -> s")
    recent_hop_seconds: Annotated[float, Field(ge=0, le=21_600)] | None = Field(
        None,
        description="real-time input: median travel time of the last vehicles from the stop before this one "
        "(stop_id for the first stop ahead) to this one",
    )


class VehiclePosition(_Strict):
    """Where the vehicle last reported itself (WGS84 degrees, as GTFS-realtime gives it)."""

    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]


class PreviousStop(_Strict):
    """The stop observed before u on this trip (gives the delay trend)."""

    stop_id: StopId
    actual_arrival: AwareTime
    scheduled_arrival: AwareTime | None = None


class PredictRequest(_Strict):
    """A vehicle's latest observation at stop u and the stops ahead to predict."""

    route_id: RouteId
    direction_id: Annotated[int, Field(ge=0, le=9, description="GTFS direction 0/1 (TransitMaster data: its own 3/4)")]
    stop_id: StopId = Field(description="stop u, where the vehicle was just observed")
    stop_sequence: Annotated[int, Field(ge=0, le=100_000)] | None = Field(
        None, description="u's position on the trip (GTFS stop_sequence), if known"
    )
    actual_arrival: AwareTime = Field(description="when the vehicle arrived at u")
    scheduled_arrival: AwareTime | None = Field(None, description="scheduled arrival at u, if known")
    trip_id: Annotated[str, Field(max_length=128)] | None = None
    mode: Mode | None = Field(None, description="default: from the route id (CR-*, subway lines, else bus)")
    service_date: dt.date | None = Field(None, description="default: the GTFS service day of actual_arrival")
    previous_stop: PreviousStop | None = None
    headway_seconds: Annotated[float, Field(ge=0, le=86_400)] | None = None
    scheduled_headway_seconds: Annotated[float, Field(ge=0, le=86_400)] | None = None
    stops_ahead: Annotated[list[StopAhead], Field(min_length=1, max_length=MAX_STOPS_AHEAD)]
    moment: AwareTime | None = Field(
        None, description="real-time input: when the prediction is made (default: actual_arrival; up to 6 h after)"
    )
    headway_ahead_seconds: Annotated[float, Field(ge=0, le=86_400)] | None = Field(
        None, description="real-time input: actual_arrival - the previous vehicle's arrival at u (route, direction)"
    )
    departure: AwareTime | None = Field(
        None,
        description="real-time input: when the vehicle left u, if it has by the moment (from actual_arrival to moment)",
    )
    position: VehiclePosition | None = Field(
        None,
        description="real-time input: the vehicle's latest reported position since it left u (needs departure); "
        "gives its progress towards the next stop",
    )

    @model_validator(mode="after")
    def _times_are_consistent(self) -> PredictRequest:
        now = dt.datetime.now(dt.UTC)
        if self.actual_arrival > now + dt.timedelta(days=1):
            raise ValueError(f"actual_arrival {self.actual_arrival.isoformat()} is more than a day in the future")
        prev = self.previous_stop
        for name, t in [
            ("scheduled_arrival", self.scheduled_arrival),
            ("previous_stop.actual_arrival", prev.actual_arrival if prev else None),
            ("previous_stop.scheduled_arrival", prev.scheduled_arrival if prev else None),
        ] + [(f"stops_ahead[{i}].scheduled_arrival", s.scheduled_arrival) for i, s in enumerate(self.stops_ahead)]:
            if t is not None and abs(t - self.actual_arrival) > MAX_SCHEDULE_GAP:
                raise ValueError(f"{name} is more than {MAX_SCHEDULE_GAP} from actual_arrival")
        if self.service_date is not None and abs((self.service_date - self.actual_arrival.date()).days) > 1:
            raise ValueError(f"service_date {self.service_date} is more than a day from actual_arrival")
        if self.moment is not None and not dt.timedelta(0) <= self.moment - self.actual_arrival <= MAX_SCHEDULE_GAP:
            raise ValueError(f"moment must be from actual_arrival to {MAX_SCHEDULE_GAP} after it")
        if self.departure is not None and not self.actual_arrival <= self.departure <= (
            self.moment or self.actual_arrival
        ):
            raise ValueError("departure must be from actual_arrival to moment (a vehicle that has not left sends none)")
        if self.position is not None and self.departure is None:
            raise ValueError("position is where the vehicle is since it left u: send its departure too")
        if self.previous_stop is not None and self.previous_stop.actual_arrival > self.actual_arrival:
            raise ValueError("previous_stop.actual_arrival is after actual_arrival at u")
        # Stops ahead are identified by their position, not their id: a loop route visits a stop
        # twice (the ETL trains on such pairs). Where sequences are given they must go forward.
        seqs = [self.stop_sequence] + [s.stop_sequence for s in self.stops_ahead]
        known = [(i, q) for i, q in enumerate(seqs) if q is not None]
        for (_, a), (j, b) in zip(known, known[1:]):
            if b <= a:
                raise ValueError(f"stops_ahead[{j - 1}].stop_sequence {b} is not after the one before it ({a})")
        # Nor may a stop follow itself (a loop comes back to a stop later, never at once), and a
        # schedule never runs backwards along a trip (a client's mix-up, which would make the
        # schedule features negative and the arrivals out of order).
        ids = [self.stop_id] + [s.stop_id for s in self.stops_ahead]
        for j in range(1, len(ids)):
            if ids[j] == ids[j - 1]:
                before = "stop_id (u)" if j == 1 else f"stops_ahead[{j - 2}]"
                raise ValueError(f"stops_ahead[{j - 1}].stop_id {ids[j]!r} is the same stop as {before}")
        times = [("scheduled_arrival", self.scheduled_arrival)] + [
            (f"stops_ahead[{i}].scheduled_arrival", s.scheduled_arrival) for i, s in enumerate(self.stops_ahead)
        ]
        known_times = [(name, t) for name, t in times if t is not None]
        for (name_a, a), (name_b, b) in zip(known_times, known_times[1:]):
            if b < a:
                raise ValueError(
                    f"{name_b} {b.isoformat()} is before {name_a} {a.isoformat()}: a schedule runs forward"
                )
        return self


class BatchRequest(_Strict):
    requests: Annotated[list[PredictRequest], Field(min_length=1, max_length=MAX_BATCH)]


class StopPrediction(BaseModel):
    stop_id: str
    stop_sequence: int | None = Field(None, description="as given in the request")
    stops_ahead: int = Field(description="position after u (1 = the next stop)")
    predicted_travel_seconds: float = Field(description="from the arrival at u to the arrival here")
    predicted_arrival: dt.datetime
    scheduled_arrival: dt.datetime | None = None
    predicted_delay_seconds: float | None = Field(None, description="predicted - scheduled arrival, if scheduled")
    path_travel_seconds: float | None = Field(
        None,
        description="the line's time from u to here now, hop by hop: each hop's recent time by other vehicles, "
        "else its training median, else its distance at the route's pace (None: a hop has none)",
    )


#: The real-time inputs a request may carry; an answer lists those it lacked (``missing_inputs``).
REALTIME_INPUTS = (
    "moment",
    "headway_ahead_seconds",
    "departure",
    "position",
    "stops_ahead[].recent_travel",
    "stops_ahead[].recent_hop_seconds",
)


class PredictResponse(BaseModel):
    route_id: str
    trip_id: str | None
    stop_id: str
    model_version: str
    predictions: list[StopPrediction]
    missing_inputs: list[str] = Field(
        default_factory=list,
        description="real-time inputs the request lacked: the model answered from the rest (less accurately)",
    )


class BatchResponse(BaseModel):
    model_version: str
    responses: list[PredictResponse]
