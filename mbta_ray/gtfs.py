"""Static GTFS reference data: stop coordinates for distances and the set of known stop ids, from a
stops table (parquet, stops.txt) or a GTFS zip, or from several zips each in force on some days."""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mbta_ray.columns import codes_in
from mbta_ray.errors import DataError

_EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Stops:
    """GTFS stops indexed by stop_id (lat/lon in degrees); where several feeds were loaded
    (``from_feeds``), the stop ids of the feed in force on each service date."""

    coords: pd.DataFrame  # index stop_id, columns lat, lon
    #: (service days, stop ids) per feed; None: one stops table for every day
    feeds: tuple[tuple[frozenset[dt.date], frozenset[str]], ...] | None = None

    @classmethod
    def load(cls, path: str) -> Stops:
        """Read a GTFS stops table (parquet, stops.txt/CSV, or a GTFS zip's stops.txt)."""
        return cls(_coords(_read_stops(str(path), ["stop_id", "stop_lat", "stop_lon"])))

    @classmethod
    def from_feeds(cls, feeds: Sequence[tuple[str, Collection[dt.date]]]) -> Stops:
        """GTFS zips (or stops tables), each with the service days it is in force on (a day in one
        feed only: ``fetch`` gives each day the newest feed in force), newest first: a row is checked
        against the stops of its service date's feed; coordinates are the newest feed's."""
        if not feeds:
            raise DataError("no GTFS feed given")
        frames, spans, seen = [], [], set()
        for path, days in feeds:
            days = frozenset(days)
            if days & seen:
                raise DataError(f"{path}: days {sorted(str(d) for d in days & seen)} already have a GTFS feed")
            seen |= days
            df = _read_stops(str(path), ["stop_id", "stop_lat", "stop_lon"])
            frames.append(df)
            spans.append((days, frozenset(df["stop_id"].dropna().astype(str))))
        return cls(_coords(pd.concat(frames, ignore_index=True)), tuple(spans))

    def known(self, stop_ids: pd.Series, service_dates: pd.Series | None = None) -> pd.Series:
        """True where the stop id is in GTFS: in the feed of the row's service date where feeds by
        day were loaded and the date is given (a day no feed covers: in any of them)."""
        out = stop_ids.isin(self.coords.index)
        if self.feeds is None or service_dates is None:
            return out
        days = pd.to_datetime(service_dates, errors="coerce").dt.date
        for feed_days, ids in self.feeds:
            mine = days.isin(feed_days)
            out[mine] = stop_ids[mine].isin(ids)
        return out

    def distance_m(self, from_ids: pd.Series, to_ids: pd.Series) -> np.ndarray:
        """Great-circle distance between stops; NaN where either stop is not in GTFS."""
        lat, lon = self._lat_lon(from_ids)
        return self.distance_to_m(to_ids, lat, lon)

    def distance_to_m(self, stop_ids: pd.Series, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Great-circle distance from points to stops; NaN where the stop is not in GTFS."""
        return haversine_m(lat, lon, *self._lat_lon(stop_ids))

    def _lat_lon(self, stop_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates of each stop (NaN where unknown), looked up as arrow strings: no Python
        object per row (these run over every example row)."""
        where = codes_in(self.coords.index, stop_ids)
        table = self.coords[["lat", "lon"]].to_numpy(dtype="float64")
        found = np.vstack([table, [np.nan, np.nan]])[where]  # -1 (unknown) picks the NaN row
        return found[:, 0], found[:, 1]


def _read_stops(path: str, cols: list[str]) -> pd.DataFrame:
    """The columns ``cols`` of a stops table: parquet, stops.txt/CSV, or the stops.txt in a GTFS zip
    (read in place), coordinates as float64. DataError naming the file for anything else."""
    df = _stops_columns(path, cols, dict.fromkeys(cols, "string"))
    for column, limit in _COORDINATE_LIMITS.items():
        if column in df.columns:
            df[column] = _coordinate(df, column, limit, path)
    return df


#: GTFS coordinates: WGS84 degrees. Empty is allowed (GTFS leaves nodes and boarding areas without).
_COORDINATE_LIMITS = {"stop_lat": 90.0, "stop_lon": 180.0}


def _coordinate(df: pd.DataFrame, column: str, limit: float, path: str) -> pd.Series:
    """A coordinate column as float64; a DataError naming the file, stop and value for one that is
    given but is no coordinate (a stop in the wrong place would put every distance to it wrong)."""
    raw = df[column].astype("string").str.strip()
    values = pd.to_numeric(raw.mask(raw == ""), errors="coerce").astype("float64")
    bad = (raw.notna() & (raw != "") & values.isna()) | (values.abs() > limit)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: stop {df['stop_id'].iloc[i]}: {column} {raw.iloc[i]!r} is not a coordinate in "
            f"[-{limit:.0f}, {limit:.0f}] ({int(bad.sum())} such row(s))"
        )
    return values


def _stops_columns(path: str, cols: list[str], text: dict[str, str]) -> pd.DataFrame:
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                if "stops.txt" not in z.namelist():
                    nested = [n for n in z.namelist() if n.endswith("/stops.txt")]
                    where = f" (it has {nested[0]}: GTFS puts the files at the top of the zip)" if nested else ""
                    raise DataError(f"{path}: a zip without stops.txt is not a GTFS feed{where}")
                with z.open("stops.txt") as f:
                    return pd.read_csv(f, usecols=cols, dtype=text)
        if path.lower().endswith((".txt", ".csv")):
            return pd.read_csv(path, usecols=cols, dtype=text)
        return pq.read_table(path, columns=cols).to_pandas()
    except DataError:
        raise
    except (ValueError, KeyError, pa.ArrowException, zipfile.BadZipFile) as exc:  # missing columns, not a table
        raise DataError(f"{path}: not a GTFS stops table with {', '.join(cols)} ({exc})") from exc


def _coords(df: pd.DataFrame) -> pd.DataFrame:
    df = df.dropna(subset=["stop_id"]).drop_duplicates("stop_id")
    df["stop_id"] = df["stop_id"].astype("string")
    coords = df.set_index("stop_id").rename(columns={"stop_lat": "lat", "stop_lon": "lon"})
    return coords[["lat", "lon"]]


def stop_table(path: str) -> pd.DataFrame:
    """GTFS stops with what a page and a station lookup need: stop_id, stop_name, parent_station,
    lat, lon (strings as ``string``, coordinates as float64)."""
    cols = ["stop_id", "stop_name", "parent_station", "stop_lat", "stop_lon"]
    df = _read_stops(str(path), cols)
    df = df.dropna(subset=["stop_id"]).drop_duplicates("stop_id")
    df = df.astype({"stop_id": "string", "stop_name": "string", "parent_station": "string"})
    return df.rename(columns={"stop_lat": "lat", "stop_lon": "lon"})


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
