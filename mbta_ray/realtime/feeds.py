"""GTFS-realtime VehiclePositions and TripUpdates, in the three forms a user has, as one table each.

Forms (detected from the bytes, not the name):
- protobuf (``VehiclePositions.pb``, ``TripUpdates.pb``): one snapshot per file, parsed with
  ``gtfs-realtime-bindings``;
- MBTA's enhanced JSON (``VehiclePositions_enhanced.json``), gzipped or not: one snapshot per file;
- flattened snapshot archives (parquet, as LAMP archives the feeds): one row per entity (and per
  stop_time_update) per snapshot, ``feed_timestamp`` naming the snapshot.
A folder stands for the files in it (sorted, recursively; hidden files skipped).

The protobuf and JSON forms are flattened to the archives' dotted column names (``vehicle.trip.trip_id``)
so one normalization serves all three. A snapshot that cannot be read (corrupt gzip, JSON or
protobuf, no header timestamp) is skipped and reported with its file and reason; an entity without
the fields a row needs is skipped and counted by reason. A replay of many snapshots is never stopped
by one bad one; ``FeedError`` only when nothing at all could be read.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mbta_ray.errors import DataError, MissingFileError
from mbta_ray.timeutil import EPOCH_RANGE

#: Normalized VehiclePositions: one row per vehicle per snapshot. Times are epoch seconds (UTC).
VEHICLE_COLUMNS = (
    "feed_timestamp",  # when the feed published the snapshot: when the row became known
    "timestamp",  # when the vehicle measured its position (<= feed_timestamp in a sane feed)
    "vehicle_id",
    "trip_id",
    "route_id",
    "direction_id",
    "start_date",  # YYYYMMDD (the trip's service date)
    "start_time",  # HH:MM:SS into the service day (may pass 24:00): the trip's scheduled start, if given
    "stop_id",
    "stop_sequence",
    "status",  # STOPPED_AT, INCOMING_AT, IN_TRANSIT_TO
    "latitude",
    "longitude",
)

#: Normalized TripUpdates: one row per stop_time_update per snapshot.
TRIP_UPDATE_COLUMNS = (
    "feed_timestamp",
    "trip_id",
    "route_id",
    "direction_id",
    "start_date",
    "vehicle_id",
    "stop_id",
    "stop_sequence",
    "arrival_time",  # predicted arrival, epoch s (NaN: none given, e.g. the first stop)
    "departure_time",
    "schedule_relationship",  # of the stop: SCHEDULED, SKIPPED, NO_DATA (null: SCHEDULED)
)

STATUSES = ("INCOMING_AT", "STOPPED_AT", "IN_TRANSIT_TO")
#: The status whose first report at a stop is the arrival there (as prediction_analyzer scores it).
STOPPED_AT = "STOPPED_AT"
#: The protobuf enum's numbers, for archives that store them as integers.
STATUS_NUMBERS = {str(i): s for i, s in enumerate(STATUSES)}

#: Normalized column <- flattened (archive / JSON path) column.
VEHICLE_FIELDS = {
    "timestamp": "vehicle.timestamp",
    "vehicle_id": "vehicle.vehicle.id",
    "trip_id": "vehicle.trip.trip_id",
    "route_id": "vehicle.trip.route_id",
    "direction_id": "vehicle.trip.direction_id",
    "start_date": "vehicle.trip.start_date",
    "start_time": "vehicle.trip.start_time",
    "stop_id": "vehicle.stop_id",
    "stop_sequence": "vehicle.current_stop_sequence",
    "status": "vehicle.current_status",
    "latitude": "vehicle.position.latitude",
    "longitude": "vehicle.position.longitude",
}
_STU = "trip_update.stop_time_update"
TRIP_UPDATE_FIELDS = {
    "trip_id": "trip_update.trip.trip_id",
    "route_id": "trip_update.trip.route_id",
    "direction_id": "trip_update.trip.direction_id",
    "start_date": "trip_update.trip.start_date",
    "vehicle_id": "trip_update.vehicle.id",
    "stop_id": f"{_STU}.stop_id",
    "stop_sequence": f"{_STU}.stop_sequence",
    "arrival_time": f"{_STU}.arrival.time",
    "departure_time": f"{_STU}.departure.time",
    "schedule_relationship": f"{_STU}.schedule_relationship",
}
_NUMERIC = {"timestamp", "direction_id", "stop_sequence", "latitude", "longitude", "arrival_time", "departure_time"}
#: A row is skipped (and counted) when one of these is missing.
_VEHICLE_REQUIRED = ("trip_id", "route_id", "timestamp", "status", "stop_id")
_TRIP_UPDATE_REQUIRED = ("trip_id", "route_id", "stop_id")

#: The times a row has, each checked to be epoch seconds (``timeutil.EPOCH_RANGE``).
_TIMES = ("timestamp", "arrival_time", "departure_time")
#: A trip's start time: HH:MM:SS into its service day (GTFS times pass 24:00 after midnight).
_START_TIME = r"[0-6]?[0-9]:[0-5][0-9]:[0-5][0-9]"
#: ``_normalize``'s note, per row it keeps, of a field it dropped (counted in ``FeedReport.ignored_fields``).
_IGNORED = "_ignored"
#: Byte-order marks a JSON snapshot may start with (``json.loads`` decodes each).
_JSON_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")

#: Files larger than this are refused (a snapshot is a few MB; an hour's archive tens of MB).
MAX_FILE_BYTES = 4 << 30
#: A gzipped snapshot larger than this once decompressed is refused before it is all in memory (a
#: gzip bomb: 1 MB of gzip can hold 1 GB). MBTA's enhanced JSON is ~10 MB.
MAX_SNAPSHOT_BYTES = 256 << 20
#: A snapshot with more entities than this is refused (MBTA runs ~1,200 vehicles at the peak; each
#: entity costs the live tracker a prediction request, so the poll would no longer keep up).
MAX_ENTITIES = 10_000
#: How far a time may lie after the moment it was said to be known: a vehicle's report after its
#: snapshot's header, a snapshot's header after the clock reading it (clocks drift a little).
FUTURE_SLACK_S = 60


class FeedError(DataError):
    """A feed file or snapshot cannot be read; the message names it and says why."""


@dataclass
class FeedReport:
    """What a read took in and what it skipped, and why (nothing is skipped silently)."""

    kind: str
    files: int = 0
    snapshots: int = 0
    rows: int = 0
    skipped_snapshots: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    skipped_rows: Counter = field(default_factory=Counter)  # why -> count
    ignored_fields: Counter = field(default_factory=Counter)  # why -> count: the row kept without the field

    def summary(self) -> str:
        text = f"{self.kind}: {self.snapshots} snapshot(s) from {self.files} file(s), {self.rows} row(s)"
        if self.skipped_snapshots:
            text += f"; {len(self.skipped_snapshots)} snapshot(s) skipped (first: {self.skipped_snapshots[0][0]}: "
            text += f"{self.skipped_snapshots[0][1]})"
        if self.skipped_rows:
            text += "; rows skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped_rows.most_common())
        if self.ignored_fields:
            text += "; fields ignored: " + ", ".join(f"{n} {why}" for why, n in self.ignored_fields.most_common())
        return text

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "snapshots": self.snapshots,
            "rows": self.rows,
            "skipped_snapshots": [{"where": w, "why": y} for w, y in self.skipped_snapshots],
            "skipped_rows": dict(self.skipped_rows),
            "ignored_fields": dict(self.ignored_fields),
        }


@dataclass
class Feed:
    """A normalized feed table (sorted by feed_timestamp, then timestamp) and its report."""

    frame: pd.DataFrame
    report: FeedReport


@dataclass
class Snapshot:
    """One snapshot read from bytes: its header timestamp (epoch s) and its rows."""

    timestamp: int
    feed: Feed


def read_vehicle_positions(paths: Iterable[str | os.PathLike]) -> Feed:
    """VehiclePositions from files in any of the three forms (mixed is fine), as one table."""
    return _read(paths, "VehiclePositions")


def read_trip_updates(paths: Iterable[str | os.PathLike]) -> Feed:
    """TripUpdates from files in any of the three forms, as one table (one row per stop update)."""
    return _read(paths, "TripUpdates")


# --- files and forms --------------------------------------------------------------------------------


def expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named, a folder standing for its files (sorted, recursive, hidden ones skipped)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                found = sorted(
                    p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)
                )
            except OSError as exc:  # a subfolder that cannot be listed (permissions, /proc)
                raise MissingFileError(f"{path}: cannot list {exc.filename or path} ({exc.strerror or exc})") from None
            if not found:
                raise MissingFileError(f"{path}: a folder with no feed files in it")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        elif path.exists():
            raise MissingFileError(f"{path}: not a regular file")
        else:
            raise MissingFileError(f"{path}: no such file")
    if not out:
        raise MissingFileError("no feed files given")
    return out


def _form(head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.lstrip()[:1] in (b"{", b"[") or head.startswith(_JSON_BOMS):
        return "json"
    return "protobuf"


def _read(paths: Iterable[str | os.PathLike], kind: str) -> Feed:
    files = expand(paths)
    report = FeedReport(kind=kind, files=len(files))
    frames: list[pd.DataFrame] = []
    for path in files:
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise FeedError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a feed file may have")
            with open(path, "rb") as f:
                head = f.read(8)
            if _form(head) == "parquet":
                frames.extend(_archive_frames(path, kind, report))
            else:
                _, flat = _snapshot_rows(path.read_bytes(), path, kind)
                report.snapshots += 1
                frames.append(pd.DataFrame(flat) if flat else pd.DataFrame())
        except FeedError as exc:
            report.skipped_snapshots.append((str(path), str(exc).removeprefix(f"{path}: ")))
        except OSError as exc:
            report.skipped_snapshots.append((str(path), f"cannot be read ({exc.strerror or exc})"))
    if report.snapshots == 0:
        why = (
            "; ".join(f"{w}: {y}" for w, y in report.skipped_snapshots[:3]) or f"{', '.join(map(str, files))}: no rows"
        )
        raise FeedError(f"no {kind} snapshot could be read ({why})")
    fields = VEHICLE_FIELDS if kind == "VehiclePositions" else TRIP_UPDATE_FIELDS
    frame = _normalize(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), kind, fields, report)
    # The same snapshot given twice (a file twice, or in two archives) says nothing new: its rows
    # would count twice in a race.
    twice = frame.duplicated(subset=[c for c in frame.columns if c != _IGNORED])
    if twice.any():
        report.skipped_rows["the same row again (a snapshot read twice)"] += int(twice.sum())
        frame = frame[~twice].reset_index(drop=True)
    frame = _count_ignored(frame, report)
    report.rows = len(frame)
    return Feed(frame, report)


# --- snapshots: JSON and protobuf -------------------------------------------------------------------


def read_snapshot(data: bytes, kind: str, where: str) -> Snapshot:
    """One snapshot (protobuf, JSON or gzipped JSON bytes, e.g. fetched from a feed URL) as a table
    and its header timestamp (an empty snapshot still has one); ``where`` names it in errors.
    Raises ``FeedError`` for a snapshot that cannot be read."""
    if kind not in ("VehiclePositions", "TripUpdates"):
        raise ValueError(f"kind must be VehiclePositions or TripUpdates, got {kind!r}")
    if _form(data[:8]) == "parquet":
        raise FeedError(f"{where}: a parquet archive, not one snapshot")
    report = FeedReport(kind=kind, files=1, snapshots=1)
    timestamp, flat = _snapshot_rows(data, where, kind)
    fields = VEHICLE_FIELDS if kind == "VehiclePositions" else TRIP_UPDATE_FIELDS
    frame = _count_ignored(_normalize(pd.DataFrame(flat) if flat else pd.DataFrame(), kind, fields, report), report)
    report.rows = len(frame)
    return Snapshot(timestamp, Feed(frame, report))


def flatten_snapshot(data: bytes, kind: str, where: str) -> tuple[int, list[dict], Counter]:
    """One snapshot's header timestamp and its entities as rows in the archives' flattened layout
    (what ``mbta-ray live record`` writes), and the entities left out, by reason."""
    if kind not in ("VehiclePositions", "TripUpdates"):
        raise ValueError(f"kind must be VehiclePositions or TripUpdates, got {kind!r}")
    timestamp, rows = _snapshot_rows(data, where, kind)
    skipped = Counter(r["_skip"] for r in rows if "_skip" in r)
    return timestamp, [r for r in rows if "_skip" not in r], skipped


def _snapshot_rows(data: bytes, path: Path | str, kind: str) -> tuple[int, list[dict]]:
    """One snapshot (JSON, gzipped JSON or protobuf bytes): its header timestamp and its entities as
    flattened rows with feed_timestamp."""
    form = _form(data[:8])
    if form == "gzip":
        data = _gunzip(data, path)
        form = _form(data[:8])
        if form == "parquet":
            raise FeedError(f"{path}: a gzipped parquet file, not a snapshot")
    if form == "json":
        try:
            message = json.loads(data)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
            raise FeedError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
        except RecursionError:
            raise FeedError(f"{path}: JSON nested too deeply to be a GTFS-realtime feed") from None
    else:
        message = _protobuf_to_dict(path, data)
    if not isinstance(message, dict):
        raise FeedError(f"{path}: a GTFS-realtime feed is a JSON object, got {type(message).__name__}")
    header = message.get("header")
    stamp = header.get("timestamp") if isinstance(header, dict) else None
    try:
        feed_timestamp = int(stamp)
    except (TypeError, ValueError, OverflowError):
        raise FeedError(f"{path}: no header.timestamp (got {str(stamp)[:40]!r})") from None
    if not EPOCH_RANGE[0] <= feed_timestamp < EPOCH_RANGE[1]:
        raise FeedError(f"{path}: header.timestamp {feed_timestamp} is not a time in epoch seconds")
    entities = message.get("entity", [])
    if not isinstance(entities, list):
        raise FeedError(f"{path}: entity is not a list")
    if len(entities) > MAX_ENTITIES:
        raise FeedError(f"{path}: {len(entities):,} entities, more than the {MAX_ENTITIES:,} a snapshot may have")
    rows: list[dict] = []
    for entity in entities:
        try:
            rows.extend(_entity_rows(entity, kind, feed_timestamp))
        except RecursionError:  # an entity nested deeper than any GTFS-realtime message
            rows.append({"feed_timestamp": feed_timestamp, "_skip": "entity nested too deeply"})
    return feed_timestamp, rows


def _gunzip(data: bytes, path: Path | str) -> bytes:
    """Gzip (one member or several) decompressed, at most ``MAX_SNAPSHOT_BYTES`` of it: a
    ``FeedError`` for more, or for a corrupt or truncated stream."""
    out, rest = [], data
    try:
        while rest:
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out.append(inflate.decompress(rest, MAX_SNAPSHOT_BYTES + 1 - sum(map(len, out))))
            if sum(map(len, out)) > MAX_SNAPSHOT_BYTES or inflate.unconsumed_tail:
                raise FeedError(f"{path}: more than {MAX_SNAPSHOT_BYTES} bytes once decompressed")
            if not inflate.eof:
                raise FeedError(f"{path}: corrupt or truncated gzip (the stream ends early)")
            rest = inflate.unused_data.lstrip(b"\0")  # the next member; zero padding is no member
    except zlib.error as exc:
        raise FeedError(f"{path}: corrupt or truncated gzip ({exc})") from exc
    return b"".join(out)


def _protobuf_to_dict(path: Path | str, data: bytes) -> dict:
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from google.transit import gtfs_realtime_pb2

    feed = gtfs_realtime_pb2.FeedMessage()
    try:
        feed.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise FeedError(f"{path}: not a GTFS-realtime protobuf feed ({exc})") from exc
    if not feed.HasField("header") or not feed.header.IsInitialized():
        raise FeedError(f"{path}: not a GTFS-realtime protobuf feed (no valid header)")
    return json_format.MessageToDict(feed, preserving_proto_field_name=True)


def _flatten(value: object, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out)
    elif not isinstance(value, list):  # lists (consist, multi_carriage_details) carry nothing we use
        out[prefix] = value


def _valid_text(row: dict) -> dict:
    """The row, or a marker row naming the first field whose text no UTF-8 can hold (a lone
    surrogate, which JSON can carry and pandas, parquet and protobuf cannot)."""
    for key, value in row.items():
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return {"feed_timestamp": row["feed_timestamp"], "_skip": f"{key} is not valid text"}
    return row


def _entity_rows(entity: object, kind: str, feed_timestamp: int) -> Iterator[dict]:
    """An entity's flattened rows; one without the kind's message yields a marker row to be counted."""
    for row in _message_rows(entity, kind, feed_timestamp):
        yield _valid_text(row)


def _message_rows(entity: object, kind: str, feed_timestamp: int) -> Iterator[dict]:
    key = "vehicle" if kind == "VehiclePositions" else "trip_update"
    if not isinstance(entity, dict) or not isinstance(entity.get(key), dict):
        yield {"feed_timestamp": feed_timestamp, "_skip": f"entity without {key}"}
        return
    base: dict = {"feed_timestamp": feed_timestamp}
    body = entity[key]
    if key == "vehicle":
        _flatten(body, key, base)
        yield base
        return
    updates = body.get("stop_time_update")
    _flatten({k: v for k, v in body.items() if k != "stop_time_update"}, key, base)
    if not isinstance(updates, list) or not updates:
        yield {**base, "_skip": "trip_update without stop_time_update"}
        return
    for update in updates:
        row = dict(base)
        if isinstance(update, dict):
            _flatten(update, _STU, row)
        yield row


# --- archives: parquet --------------------------------------------------------------------------------


def _archive_frames(path: Path, kind: str, report: FeedReport) -> Iterator[pd.DataFrame]:
    """A flattened archive, row group by row group (a corrupt one is skipped and counted)."""
    fields = VEHICLE_FIELDS if kind == "VehiclePositions" else TRIP_UPDATE_FIELDS
    try:
        archive = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for a bad footer
        raise FeedError(f"{path}: not a readable parquet file ({exc})") from exc
    names = set(archive.schema_arrow.names)
    missing = [c for c in ("feed_timestamp", fields["trip_id"], fields["stop_id"]) if c not in names]
    if missing:
        raise FeedError(f"{path}: not a {kind} archive (no column {', '.join(missing)})")
    columns = ["feed_timestamp", *(c for c in fields.values() if c in names)]
    snapshots: set = set()
    for i in range(archive.num_row_groups):
        try:
            frame = archive.read_row_group(i, columns=columns).to_pandas()
        except Exception as exc:  # noqa: BLE001 -- corrupt pages surface as OSError/ArrowInvalid/...
            report.skipped_snapshots.append((f"{path} row group {i}", f"corrupt ({type(exc).__name__}: {exc})"))
            continue
        snapshots.update(pd.unique(frame["feed_timestamp"].dropna()))
        yield frame
    report.snapshots += len(snapshots)


# --- normalization -----------------------------------------------------------------------------------


def _normalize(raw: pd.DataFrame, kind: str, fields: dict[str, str], report: FeedReport) -> pd.DataFrame:
    columns = VEHICLE_COLUMNS if kind == "VehiclePositions" else TRIP_UPDATE_COLUMNS
    required = _VEHICLE_REQUIRED if kind == "VehiclePositions" else _TRIP_UPDATE_REQUIRED
    if raw.empty:
        return _empty(columns)
    skip = raw["_skip"] if "_skip" in raw else pd.Series(pd.NA, index=raw.index, dtype="object")
    out = pd.DataFrame(index=raw.index)
    ignored = pd.Series(None, index=raw.index, dtype="object")  # why a kept row lost a field
    out["feed_timestamp"] = pd.to_numeric(raw["feed_timestamp"], errors="coerce")
    for name in columns[1:]:
        source = raw[fields[name]] if fields[name] in raw else pd.Series(np.nan, index=raw.index)
        if name in _NUMERIC:
            values = pd.to_numeric(source, errors="coerce").astype("float64")
            bad = values.isna() & source.notna() & (source.astype("string").str.strip() != "")
            skip = skip.where(skip.notna() | ~bad, f"{fields[name]} is not a number")
            out[name] = values
        else:
            out[name] = _text(source)
    if "start_date" in out:
        # GTFS-realtime's YYYYMMDD; a feed with dashes means the same day (one spelling, or the two
        # feeds' trip keys would never meet).
        dated = out["start_date"].str.replace(r"^(\d{4})-(\d{2})-(\d{2})$", r"\1\2\3", regex=True)
        day = pd.to_datetime(dated, format="%Y%m%d", errors="coerce")
        bad = dated.notna() & day.isna()
        skip = skip.where(skip.notna() | ~bad, f"{fields['start_date']} is not a date YYYYMMDD")
        out["start_date"] = dated
    if "start_time" in out:
        # Optional: a row with a malformed start time keeps its position, without the schedule
        # (counted by ``_read`` once the rows skipped and read twice are out).
        odd = out["start_time"].notna() & ~out["start_time"].str.fullmatch(_START_TIME, na=False)
        out["start_time"] = out["start_time"].mask(odd)
        ignored = ignored.where(~odd, f"{fields['start_time']} is not HH:MM:SS (row kept without it)")
    for name in ("feed_timestamp", *(t for t in _TIMES if t in out)):
        where = fields.get(name, name)
        odd = out[name].notna() & ~out[name].between(*EPOCH_RANGE, inclusive="left")
        skip = skip.where(skip.notna() | ~odd, f"{where} is not a time in epoch seconds")
    for name, bound in (("latitude", 90.0), ("longitude", 180.0)):
        if name in out:
            odd = out[name].notna() & ~out[name].between(-bound, bound)
            skip = skip.where(skip.notna() | ~odd, f"{fields[name]} is not a {name}")
    odd = out["direction_id"].notna() & ~out["direction_id"].isin((0, 1))
    skip = skip.where(skip.notna() | ~odd, f"{fields['direction_id']} is not 0 or 1")
    if "stop_sequence" in out:
        # Optional, a uint32 where given: one that is no such number is dropped, the row kept.
        seq = out["stop_sequence"]
        odd = seq.notna() & ~((seq >= 0) & (seq == seq.round()) & (seq < 2**32))
        out["stop_sequence"] = seq.mask(odd)
        ignored = ignored.where(~odd, f"{fields['stop_sequence']} is not a stop sequence (row kept without it)")
    if kind == "VehiclePositions":
        # GTFS-realtime's default status: a producer may leave it out for a vehicle on its way.
        out["status"] = out["status"].fillna("IN_TRANSIT_TO").where(out["stop_id"].notna(), out["status"])
        # A report after its snapshot's header was not known when the snapshot says (and, newest
        # winning, would pin the vehicle to it): a clock or a producer gone wrong.
        odd = out["timestamp"] > out["feed_timestamp"] + FUTURE_SLACK_S
        skip = skip.where(skip.notna() | ~odd, f"{fields['timestamp']} is after the feed's header.timestamp")
        out["status"] = out["status"].replace(STATUS_NUMBERS)
        bad_status = out["status"].notna() & ~out["status"].isin(STATUSES)
        skip = skip.where(skip.notna() | ~bad_status, "vehicle.current_status is not a GTFS-realtime status")
    skip = skip.where(skip.notna() | out["feed_timestamp"].notna(), "no feed_timestamp")
    for name in required:
        skip = skip.where(skip.notna() | out[name].notna(), f"no {fields[name]}")
    report.skipped_rows.update(skip.dropna().astype(str).tolist())
    out = out[skip.isna()]
    out["feed_timestamp"] = out["feed_timestamp"].astype("int64")
    if kind == "VehiclePositions":
        out["timestamp"] = out["timestamp"].astype("int64")
        order = ["feed_timestamp", "timestamp", "trip_id"]
    else:
        order = ["feed_timestamp", "trip_id", "stop_sequence"]
    out["direction_id"] = out["direction_id"].astype("Int8")
    out[_IGNORED] = ignored[skip.isna()]
    return out[[*columns, _IGNORED]].sort_values(order, kind="stable").reset_index(drop=True)


def _count_ignored(frame: pd.DataFrame, report: FeedReport) -> pd.DataFrame:
    """Count the fields ``_normalize`` dropped from rows it kept (the rows that are still there),
    and the frame without its note of them."""
    if _IGNORED not in frame:
        return frame
    report.ignored_fields.update(frame[_IGNORED].dropna().astype(str).tolist())
    return frame.drop(columns=[_IGNORED])


def _text(values: pd.Series) -> pd.Series:
    """Values as stripped strings, blanks missing (numbers as their text: an integer stop id, also
    when JSON or a float column wrote it 70061.0)."""
    text = values.astype("string").str.strip()
    numbers = pd.api.types.is_float_dtype(values.dtype) or (
        values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) != "string"  # a C scan
    )
    if numbers:
        whole = values.map(lambda v: isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) < 2**53)
        whole = whole.to_numpy(dtype=bool)
        if whole.any():
            text[whole] = [str(int(v)) for v in values[whole]]
    return text.mask(text == "")


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64" if c in _NUMERIC else "string") for c in columns})
    frame["feed_timestamp"] = frame["feed_timestamp"].astype("int64")
    if "timestamp" in frame:
        frame["timestamp"] = frame["timestamp"].astype("int64")
    frame["direction_id"] = frame["direction_id"].astype("Int8")
    return frame
