"""Static GTFS reference data: stop coordinates for distances and the set of known stop ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mbta_ray.errors import DataError

_EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Stops:
    """GTFS stops indexed by stop_id (lat/lon in degrees)."""

    coords: pd.DataFrame  # index stop_id, columns lat, lon

    @classmethod
    def load(cls, path: str) -> Stops:
        """Read a GTFS stops table (parquet, or stops.txt/CSV)."""
        cols = ["stop_id", "stop_lat", "stop_lon"]
        try:
            if str(path).lower().endswith((".txt", ".csv")):
                df = pd.read_csv(path, usecols=cols, dtype={"stop_id": "string"})
            else:
                df = pq.read_table(path, columns=cols).to_pandas()
        except (ValueError, KeyError, pa.ArrowException) as exc:  # missing columns, not a table
            raise DataError(f"{path}: not a GTFS stops table with {', '.join(cols)} ({exc})") from exc
        df = df.dropna(subset=["stop_id"]).drop_duplicates("stop_id")
        df["stop_id"] = df["stop_id"].astype("string")
        coords = df.set_index("stop_id").rename(columns={"stop_lat": "lat", "stop_lon": "lon"})
        return cls(coords[["lat", "lon"]].astype("float64"))

    def known(self, stop_ids: pd.Series) -> pd.Series:
        """True where the stop id is in GTFS."""
        return stop_ids.isin(self.coords.index)

    def distance_m(self, from_ids: pd.Series, to_ids: pd.Series) -> np.ndarray:
        """Great-circle distance between stops; NaN where either stop is not in GTFS."""
        a = self.coords.reindex(from_ids.astype("string").to_numpy())
        return self.distance_to_m(to_ids, a["lat"].to_numpy(), a["lon"].to_numpy())

    def distance_to_m(self, stop_ids: pd.Series, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Great-circle distance from points to stops; NaN where the stop is not in GTFS."""
        b = self.coords.reindex(stop_ids.astype("string").to_numpy())
        return haversine_m(lat, lon, b["lat"].to_numpy(), b["lon"].to_numpy())


def stop_table(path: str) -> pd.DataFrame:
    """GTFS stops with what a page and a station lookup need: stop_id, stop_name, parent_station,
    lat, lon (strings as ``string``, coordinates as float64)."""
    cols = ["stop_id", "stop_name", "parent_station", "stop_lat", "stop_lon"]
    try:
        if str(path).lower().endswith((".txt", ".csv")):
            df = pd.read_csv(path, usecols=cols, dtype=dict.fromkeys(cols[:3], "string"))
        else:
            df = pq.read_table(path, columns=cols).to_pandas()
    except (ValueError, KeyError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a GTFS stops table with {', '.join(cols)} ({exc})") from exc
    df = df.dropna(subset=["stop_id"]).drop_duplicates("stop_id")
    df = df.astype({"stop_id": "string", "stop_name": "string", "parent_station": "string"})
    return df.rename(columns={"stop_lat": "lat", "stop_lon": "lon"}).astype({"lat": "float64", "lon": "float64"})


def station_platforms(table: pd.DataFrame) -> dict[str, frozenset[str]]:
    """Each stop id (of ``stop_table``) to the stop ids it stands for: a parent station
    (``place-pktrm``) to its platforms and itself, any other stop to itself."""
    out: dict[str, set[str]] = {sid: {sid} for sid in table["stop_id"]}
    for sid, parent in zip(table["stop_id"], table["parent_station"]):
        if isinstance(parent, str) and parent:
            out.setdefault(parent, {parent}).add(sid)
    return {k: frozenset(v) for k, v in out.items()}


def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres between arrays of points in degrees."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(x, dtype="float64")) for x in (lat1, lon1, lat2, lon2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(h))
