"""From validated prediction requests to predictions, through the ETL's own feature code.

A request (vehicle at u, stops ahead) becomes the same pair columns ``features.pair_events`` builds
from observed trips, then ``features.compute_features`` adds the model features with the model's
GTFS stops and training-split segment medians: one source of truth for training and serving.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from mbta_ray.features import compute_features
from mbta_ray.gtfs import Stops
from mbta_ray.models import METADATA_FILE, load_predictor
from mbta_ray.schema import TARGET
from mbta_ray.serve.schemas import PredictRequest, PredictResponse, StopPrediction
from mbta_ray.sources.base import mode_for_route
from mbta_ray.timeutil import TIMEZONE

logger = logging.getLogger(__name__)
_TZ = ZoneInfo(TIMEZONE)
#: A service day runs past midnight (GTFS times up to ~27:00): before 03:00 local belongs to the
#: previous day's service when the request does not say.
SERVICE_DAY_ROLLOVER = dt.timedelta(hours=3)
SEGMENT_MEDIANS_FILE = "segment_medians.parquet"


def service_date_of(when: dt.datetime) -> dt.date:
    """The GTFS service day of a UTC time when none is given: the local date, 03:00 rollover."""
    return (when.astimezone(_TZ) - SERVICE_DAY_ROLLOVER).date()


def request_pairs(requests: list[PredictRequest]) -> pd.DataFrame:
    """Pair columns (as ``features.pair_events`` names them) for every (request, stop ahead)."""
    rows = []
    for i, r in enumerate(requests):
        mode = r.mode.value if r.mode is not None else str(mode_for_route(pd.Series([r.route_id]))[0])
        prev = r.previous_stop
        delay_prev = ((prev.actual_arrival - prev.scheduled_arrival).total_seconds()
                      if prev is not None and prev.scheduled_arrival is not None else np.nan)
        for j, stop in enumerate(r.stops_ahead, start=1):
            rows.append({
                "request": i, "mode": mode, "route_id": r.route_id, "direction_id": r.direction_id,
                "trip_id": r.trip_id, "from_stop_id": r.stop_id, "to_stop_id": stop.stop_id, "stops_ahead": j,
                "service_date": r.service_date or service_date_of(r.actual_arrival),
                "actual_arrival_u": r.actual_arrival, "scheduled_arrival_u": r.scheduled_arrival,
                "scheduled_arrival_s": stop.scheduled_arrival, "delay_prev": delay_prev,
                "headway_u": r.headway_seconds, "scheduled_headway_u": r.scheduled_headway_seconds,
            })
    df = pd.DataFrame(rows)
    for col in ("actual_arrival_u", "scheduled_arrival_u", "scheduled_arrival_s"):
        df[col] = pd.to_datetime(df[col], utc=True)
    df["direction_id"] = df["direction_id"].astype("int8")
    df["stops_ahead"] = df["stops_ahead"].astype("int16")
    for col in ("delay_prev", "headway_u", "scheduled_headway_u"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


class ModelRunner:
    """A packaged model folder with what its features need at serving time."""

    def __init__(self, model_dir: str | Path, version: str | None = None, stops_path: str | None = None) -> None:
        from mbta_ray.etl import DEFAULT_STOPS

        self.model_dir = Path(model_dir)
        self.metadata = json.loads((self.model_dir / METADATA_FILE).read_text())
        self.version = version or self.metadata.get("version") or self.model_dir.name
        self.predict_rows = load_predictor(self.model_dir)
        medians = self.model_dir / SEGMENT_MEDIANS_FILE
        self.segment_medians = pd.read_parquet(medians) if medians.is_file() else None
        if self.segment_medians is None:
            logger.warning("%s has no %s: historical medians are missing features", model_dir, SEGMENT_MEDIANS_FILE)
        path = stops_path or (self.metadata.get("gtfs_stops") or {}).get("path")
        if not path or not Path(path).is_file():
            path = DEFAULT_STOPS  # the embedded GTFS stops the default dataset was built with
        self.stops = Stops.load(path)

    def features(self, requests: list[PredictRequest]) -> pd.DataFrame:
        return compute_features(request_pairs(requests), self.stops, self.segment_medians)

    def predict(self, requests: list[PredictRequest]) -> list[PredictResponse]:
        """Predicted travel time, arrival and delay for every stop ahead of every request."""
        rows = self.features(requests)
        travel = np.asarray(self.predict_rows(rows), dtype="float64")
        if not np.isfinite(travel).all():  # a model bug, never the client's: fail loudly
            raise RuntimeError(f"model {self.version} returned non-finite predictions")
        rows[TARGET] = travel
        out = []
        for i, r in enumerate(requests):
            part = rows[rows["request"] == i]
            preds = []
            for _, p in part.iterrows():
                arrival = r.actual_arrival + dt.timedelta(seconds=float(p[TARGET]))
                sched = r.stops_ahead[int(p["stops_ahead"]) - 1].scheduled_arrival
                preds.append(StopPrediction(
                    stop_id=p["to_stop_id"], stops_ahead=int(p["stops_ahead"]),
                    predicted_travel_seconds=round(float(p[TARGET]), 1), predicted_arrival=arrival,
                    scheduled_arrival=sched,
                    predicted_delay_seconds=round((arrival - sched).total_seconds(), 1) if sched else None))
            out.append(PredictResponse(route_id=r.route_id, trip_id=r.trip_id, stop_id=r.stop_id,
                                       model_version=self.version, predictions=preds))
        return out
