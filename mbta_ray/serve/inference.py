"""From validated prediction requests to predictions, through the ETL's own feature code.

A request (vehicle at u, stops ahead) becomes the same pair columns ``features.pair_events`` builds
from observed trips, then ``features.compute_features`` adds the model features with the model's
GTFS stops and training-split segment medians: one source of truth for training and serving.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from mbta_ray.features import PATH_TRAVEL, POSITION_COLUMNS, REALTIME_DEFAULTS, compute_features, median_lookup
from mbta_ray.gtfs import Stops
from mbta_ray.models import bundle
from mbta_ray.paths import DEFAULT_STOPS
from mbta_ray.schema import TIMEZONE, TM_ID_PREFIX, mode_for_route
from mbta_ray.serve.schemas import REALTIME_INPUTS, PredictRequest, PredictResponse, StopPrediction

logger = logging.getLogger(__name__)
_TZ = ZoneInfo(TIMEZONE)
#: A service day runs past midnight (GTFS times up to ~27:00): before 03:00 local belongs to the
#: previous day's service when the request does not say.
SERVICE_DAY_ROLLOVER = dt.timedelta(hours=3)


def service_date_of(when: dt.datetime) -> dt.date:
    """The GTFS service day of a UTC time when none is given: the local date, 03:00 rollover."""
    return (when.astimezone(_TZ) - SERVICE_DAY_ROLLOVER).date()


def request_pairs(requests: list[PredictRequest]) -> pd.DataFrame:
    """Pair columns (as ``features.pair_events`` names them) for every (request, stop ahead)."""
    rows = []
    for i, r in enumerate(requests):
        mode = r.mode.value if r.mode is not None else str(mode_for_route(pd.Series([r.route_id]))[0])
        prev = r.previous_stop
        delay_prev = (
            (prev.actual_arrival - prev.scheduled_arrival).total_seconds()
            if prev is not None and prev.scheduled_arrival is not None
            else np.nan
        )
        moment = r.moment or r.actual_arrival
        hop_from = r.stop_id
        for j, stop in enumerate(r.stops_ahead, start=1):
            recent = stop.recent_travel
            rows.append(
                {
                    "request": i,
                    "mode": mode,
                    "route_id": r.route_id,
                    "direction_id": r.direction_id,
                    "trip_id": r.trip_id,
                    "from_stop_id": r.stop_id,
                    "to_stop_id": stop.stop_id,
                    "hop_from_stop_id": hop_from,
                    "stops_ahead": j,
                    "service_date": r.service_date or service_date_of(r.actual_arrival),
                    "actual_arrival_u": r.actual_arrival,
                    "scheduled_arrival_u": r.scheduled_arrival,
                    "scheduled_arrival_s": stop.scheduled_arrival,
                    "delay_prev": delay_prev,
                    "headway_u": r.headway_seconds,
                    "scheduled_headway_u": r.scheduled_headway_seconds,
                    "recent_travel_s": recent.median_seconds if recent else None,
                    "recent_travel_n": recent.vehicles if recent else 0,
                    "recent_travel_age_s": recent.age_seconds if recent else None,
                    "recent_hop_s": stop.recent_hop_seconds,
                    "elapsed_s": (moment - r.actual_arrival).total_seconds(),
                    "departed_s": (moment - r.departure).total_seconds() if r.departure is not None else None,
                    "headway_ahead_s": r.headway_ahead_seconds,
                    "vehicle_lat": r.position.latitude if r.position else None,
                    "vehicle_lon": r.position.longitude if r.position else None,
                }
            )
            hop_from = stop.stop_id
    df = pd.DataFrame(rows)
    for col in ("actual_arrival_u", "scheduled_arrival_u", "scheduled_arrival_s"):
        df[col] = pd.to_datetime(df[col], utc=True)
    df["direction_id"] = df["direction_id"].astype("int8")
    df["stops_ahead"] = df["stops_ahead"].astype("int16")
    for col in ("delay_prev", "headway_u", "scheduled_headway_u", *REALTIME_DEFAULTS, *POSITION_COLUMNS):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def missing_inputs(request: PredictRequest) -> list[str]:
    """The real-time inputs (``schemas.REALTIME_INPUTS``) a request did not send."""
    sent = {
        "moment": request.moment is not None,
        "headway_ahead_seconds": request.headway_ahead_seconds is not None,
        "departure": request.departure is not None,
        "position": request.position is not None,
        "stops_ahead[].recent_travel": any(s.recent_travel is not None for s in request.stops_ahead),
        "stops_ahead[].recent_hop_seconds": any(s.recent_hop_seconds is not None for s in request.stops_ahead),
    }
    return [name for name in REALTIME_INPUTS if not sent[name]]


@dataclass(frozen=True)
class Refusal:
    """Why a request cannot be answered: an HTTP status, a detail for the client, a metrics reason.

    ``detail`` for a 422 is FastAPI's own list of {loc, msg, type}, so a client parses one format
    whether pydantic or the model refused the input.
    """

    status: int
    detail: str | list[dict]
    reason: str


@dataclass(frozen=True)
class Answer:
    """A caller's responses, already JSON (``PredictResponse`` each): serialized once, in the model
    replica by pydantic's Rust serializer, so the ingress passes bytes through instead of
    re-validating and re-encoding every response in Python (its largest per-request cost)."""

    model_version: str
    parts: list[bytes]

    def single(self) -> bytes:
        return self.parts[0]

    def batch(self) -> bytes:
        """A ``BatchResponse`` document."""
        return (
            b'{"model_version":'
            + json.dumps(self.model_version).encode()
            + b',"responses":['
            + b",".join(self.parts)
            + b"]}"
        )


class ModelRunner:
    """A packaged model folder with what its features need at serving time."""

    def __init__(self, model_dir: str | Path, version: str | None = None, stops_path: str | None = None) -> None:
        b = bundle.read_bundle(model_dir)
        self.model_dir = b.path
        self.metadata = b.metadata
        self.version = version or self.metadata.get("version") or self.model_dir.name
        self.predict_rows = b.predictor()
        self.encoder = b.encoder
        medians = b.segment_medians()
        # Looked up per batch: indexed once here instead of a merge (and its uniqueness check) per call.
        self.segment_medians = median_lookup(medians) if medians is not None else None
        if self.segment_medians is None:
            logger.warning(
                "%s has no %s: historical medians are missing features", model_dir, bundle.SEGMENT_MEDIANS_FILE
            )
        path = stops_path or (self.metadata.get("gtfs_stops") or {}).get("path")
        if not path or not Path(path).is_file():
            path = DEFAULT_STOPS  # the embedded GTFS stops the default dataset was built with
        self.stops = Stops.load(path)
        # Sets for the per-request input check (an isin over ~10k GTFS stops cost ~50 ms a request).
        vocab = self.encoder.vocab
        self._known = {
            "route_id": frozenset(vocab["route_id"]),
            "direction_id": frozenset(vocab["direction_id"]),
            "stop_id": frozenset(vocab["from_stop_id"])
            | frozenset(vocab["to_stop_id"])
            | frozenset(self.stops.coords.index.astype(str)),
        }

    def refusal(self, request: PredictRequest, loc: tuple = ("body",)) -> Refusal | None:
        """A 422 when the model cannot give a meaningful answer: a route or direction it never saw,
        or a stop the ETL would have quarantined, i.e. a GTFS-style id that is neither in GTFS nor in
        the model's vocabulary. TransitMaster ids (``tm-``) are never in GTFS and are accepted as
        the ETL accepts them (the test split has such stops unseen in training; offline evaluation
        scores them, so serving answers them too)."""
        errors = []
        for column, value, field, what in (
            ("route_id", request.route_id, "route_id", "route"),
            ("direction_id", str(request.direction_id), "direction_id", "direction"),
        ):
            if value not in self._known[column]:
                errors.append(
                    {
                        "loc": [*loc, field],
                        "type": f"unknown_{what}",
                        "input": getattr(request, field),
                        "msg": f"{what} {getattr(request, field)!r} is unknown to model {self.version} "
                        f"({len(self._known[column])} {what}s known)",
                    }
                )
                break  # an unknown route makes its directions meaningless
        stops = [(("stop_id",), request.stop_id)] + [
            (("stops_ahead", i, "stop_id"), s.stop_id) for i, s in enumerate(request.stops_ahead)
        ]
        for field, sid in stops:
            if sid not in self._known["stop_id"] and not sid.startswith(TM_ID_PREFIX):
                errors.append(
                    {
                        "loc": [*loc, *field],
                        "type": "unknown_stop",
                        "input": sid,
                        "msg": f"stop {sid!r} is neither in GTFS nor among model {self.version}'s stops",
                    }
                )
        return Refusal(422, errors, errors[0]["type"]) if errors else None

    def features(self, requests: list[PredictRequest]) -> pd.DataFrame:
        return compute_features(request_pairs(requests), self.stops, self.segment_medians)

    def predict(self, requests: list[PredictRequest]) -> list[PredictResponse]:
        """Predicted travel time, arrival and delay for every stop ahead of every request."""
        rows = self.features(requests)
        travel = np.asarray(self.predict_rows(rows), dtype="float64")
        # A vehicle that has not reached s by the moment arrives no earlier than the moment.
        travel = np.round(np.maximum(travel, rows["elapsed_s"].to_numpy(dtype="float64")), 1)
        if not np.isfinite(travel).all():  # a model bug, never the client's: fail loudly
            raise RuntimeError(f"model {self.version} returned non-finite predictions")
        # Rows come out in request order, stops in order (request_pairs builds them so and the
        # feature code keeps the order): slice per request instead of filtering per request.
        arrival = pd.to_datetime(rows["actual_arrival_u"], utc=True) + pd.to_timedelta(travel, unit="s")
        delay = np.round(
            (arrival - pd.to_datetime(rows["scheduled_arrival_s"], utc=True))
            .dt.total_seconds()
            .to_numpy(dtype="float64"),
            1,
        )
        arrivals = list(arrival.dt.to_pydatetime())
        path = np.round(rows[PATH_TRAVEL].to_numpy(dtype="float64"), 1)
        out, start = [], 0
        for r in requests:
            preds = []
            for j, stop in enumerate(r.stops_ahead):
                k = start + j
                preds.append(
                    StopPrediction.model_construct(
                        stop_id=stop.stop_id,
                        stop_sequence=stop.stop_sequence,
                        stops_ahead=j + 1,
                        predicted_travel_seconds=float(travel[k]),
                        predicted_arrival=arrivals[k],
                        scheduled_arrival=stop.scheduled_arrival,
                        predicted_delay_seconds=float(delay[k]) if stop.scheduled_arrival is not None else None,
                        path_travel_seconds=float(path[k]) if np.isfinite(path[k]) else None,
                    )
                )
            start += len(r.stops_ahead)
            out.append(
                PredictResponse.model_construct(
                    route_id=r.route_id,
                    trip_id=r.trip_id,
                    stop_id=r.stop_id,
                    model_version=self.version,
                    predictions=preds,
                    missing_inputs=missing_inputs(r),
                )
            )
        return out
