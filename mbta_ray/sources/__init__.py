"""Readers that map each public MBTA format to the canonical stop event (``schema.EVENT_SCHEMA``).

``inspect_input`` identifies a file (format detected from its columns, or named), checksums it and
splits it into read pieces; ``read_piece`` turns one piece into canonical event tables, each row
carrying its file and 0-based row so a quarantined row can be found in the source.
"""

from __future__ import annotations

import csv
import errno
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mbta_ray.errors import MbtaRayError
from mbta_ray.paths import sha256_file
from mbta_ray.schema import QUARANTINE_SCHEMA, Reason, conform
from mbta_ray.sources import gtfsrt, lamp, lamp_bus, massdot, tm
from mbta_ray.sources.base import Reader, csv_header, open_csv
from mbta_ray.timeutil import SERVICE_SECONDS_RANGE, service_day_origin

#: Known formats, in detection order.
READERS: dict[str, Reader] = {
    r.name: r for r in (lamp.READER, lamp_bus.READER, tm.READER, massdot.READER, gtfsrt.READER)
}

#: A read piece holds at most about this many rows (parquet row groups are combined up to it).
PIECE_ROWS = 1_000_000
_CSV_BLOCK_BYTES = 16 << 20


class InputError(MbtaRayError, ValueError):
    """An input file cannot be read: the message names the file and what is wrong."""


@dataclass(frozen=True)
class InputFile:
    """A source file identified for ingest."""

    path: str
    format: str
    container: str  # parquet or csv
    sha256: str
    size_bytes: int
    num_rows: int

    def to_dict(self) -> dict:
        return asdict(self)


def _container(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    return "parquet"


def _columns_and_rows(path: str, container: str) -> tuple[list[str], int]:
    try:
        if container == "parquet":
            meta = pq.read_metadata(path)
            return meta.schema.to_arrow_schema().names, meta.num_rows
        header = csv_header(path)
        with open_csv(path) as f:
            reader = csv.reader(f)
            next(reader, None)  # the header
            rows = sum(1 for row in reader if row)  # blank lines are no rows (pyarrow skips them)
        return header, rows
    except (OSError, EOFError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read as {container}: {exc}") from exc


def detect_format(path: str, columns: list[str]) -> Reader:
    """The reader whose required columns ``columns`` has; else an error naming what is missing."""
    for reader in READERS.values():
        if not reader.missing_columns(columns):
            return reader
    closest = min(READERS.values(), key=lambda r: len(r.missing_columns(columns)))
    raise InputError(
        f"{path}: unknown input format. Known formats: {', '.join(READERS)}; the closest, "
        f"{closest.name!r}, lacks columns {closest.missing_columns(columns)}. "
        "Name the format explicitly (path::format) if it is one of these."
    )


def inspect_input(path: str, fmt: str | None = None) -> InputFile:
    """Identify, check and checksum one input file. Raises InputError naming the file."""
    path = os.path.abspath(path)
    try:
        os.stat(path)  # follows symlinks: a loop or a dangling link fails here, with its own reason
    except OSError as exc:
        reasons = {errno.ENOENT: "no such file", errno.ELOOP: "symlink loop"}
        raise InputError(f"{path}: {reasons.get(exc.errno, (exc.strerror or 'cannot be read').lower())}") from exc
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory; give the files in it (e.g. {path}/*.parquet)")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: file is empty")
    container = _container(path)
    columns, num_rows = _columns_and_rows(path, container)
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:  # which of the two would a reader take? Neither: the file is ambiguous
        raise InputError(f"{path}: columns named more than once: {twice}")
    if fmt is None:
        reader = detect_format(path, columns)
    else:
        if fmt not in READERS:
            raise InputError(f"{path}: unknown format {fmt!r}; known: {', '.join(READERS)}")
        reader = READERS[fmt]
        missing = reader.missing_columns(columns)
        if missing:
            raise InputError(f"{path}: not a valid {fmt!r} file: missing columns {missing}")
    if num_rows == 0:
        raise InputError(f"{path}: file has no rows")
    if container == "parquet":
        _check_value_columns(path, reader)
    return InputFile(path, reader.name, container, sha256_file(path), os.path.getsize(path), num_rows)


def plan_pieces(inp: InputFile) -> list[dict]:
    """Split a file into read pieces (row-group ranges for parquet; whole file for CSV)."""
    reader = READERS[inp.format]
    hint = reader.file_hint(inp.path, inp.container) if reader.file_hint else {}
    base = {"path": inp.path, "format": inp.format, "container": inp.container, "hint": hint}
    if inp.container == "csv":
        return [{**base, "row_groups": [], "row_offset": 0}]
    meta = pq.read_metadata(inp.path)
    pieces, groups, offset, start = [], [], 0, 0
    for i in range(meta.num_row_groups):
        groups.append(i)
        offset += meta.row_group(i).num_rows
        if offset - start >= PIECE_ROWS:
            pieces.append({**base, "row_groups": groups, "row_offset": start})
            groups, start = [], offset
    if groups:
        pieces.append({**base, "row_groups": groups, "row_offset": start})
    return pieces


def _check_value_columns(path: str, reader: Reader) -> None:
    """Every column a reader uses holds single values: a struct, list or map would be read as its
    Python text ("{'x': 1}" as a route id)."""
    schema = pq.read_schema(path)
    for name in _used_columns(reader, schema.names):
        kind = schema.field(name).type
        if pa.types.is_nested(kind):
            raise InputError(f"{path}: column {name} holds {kind} values, not numbers, text or times")


def _utf8(batch: pa.RecordBatch, path: str) -> pa.RecordBatch:
    """Binary columns as text (a parquet writer may store strings without their UTF-8 annotation);
    an error naming the column where the bytes are not UTF-8."""
    for i, f in enumerate(batch.schema):
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_fixed_size_binary(f.type):
            try:
                column = batch.column(i).cast(pa.binary()).cast(pa.string())
            except pa.ArrowInvalid as exc:
                raise InputError(f"{path}: column {f.name} holds bytes that are not UTF-8 text: {exc}") from exc
            batch = batch.set_column(i, f.name, column)
    return batch


def _used_columns(reader: Reader, available: list[str]) -> list[str]:
    wanted = {c for group in reader.required for c in group} | set(reader.optional)
    return [c for c in available if c in wanted]


def _raw_batches(piece: dict, reader: Reader) -> Iterator[pd.DataFrame]:
    path = piece["path"]
    if piece["container"] == "parquet":
        groups = piece["row_groups"]
        try:  # a valid footer over corrupt pages fails only here, inside a read task
            pf = pq.ParquetFile(path)
            cols = _used_columns(reader, pf.schema_arrow.names)
            for batch in pf.iter_batches(batch_size=256_000, row_groups=groups, columns=cols):
                yield _utf8(batch, path).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            where = f"row groups {groups[0]}-{groups[-1]}" if len(groups) > 1 else f"row group {groups[0]}"
            raise InputError(f"{path}: cannot read parquet {where} (rows from {piece['row_offset']}): {exc}") from exc
        return
    # CSV: everything as text, so one bad value quarantines one row instead of failing the file.
    header, _ = _columns_and_rows(path, "csv")
    cols = _used_columns(reader, header)
    options = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in header},
        include_columns=cols,
        strings_can_be_null=True,
    )
    # The header as detection read it (names stripped: "a, b" is columns a and b), not pyarrow's.
    read = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, column_names=header, skip_rows=1)
    try:
        stream = pacsv.open_csv(path, read_options=read, convert_options=options)
        for batch in stream:
            yield batch.to_pandas()
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path}: malformed CSV: {exc}") from exc


_INT_RANGES = {"direction_id": (-128, 127), "stop_sequence": (-(2**31), 2**31 - 1)}  # TransitMaster has -1


def _flag_first(frame: pd.DataFrame, bad: pd.Series, detail: pd.Series) -> None:
    """``bad_value`` with ``detail`` on the rows of ``bad`` that have no reason yet."""
    first = bad & frame["reason"].isna()
    if first.any():
        frame.loc[first, "reason"] = Reason.BAD_VALUE.value
        frame.loc[first, "detail"] = detail[first]


def _check_integers(frame: pd.DataFrame) -> None:
    """Non-integer or out-of-range ids become bad_value rows (and null), not a crashed ingest."""
    for column, (lo, hi) in _INT_RANGES.items():
        v = frame[column].astype("float64")
        bad = v.notna() & ((v < lo) | (v > hi) | (v != v.round()))
        if bad.any():
            _flag_first(frame, bad, f"field {column}: " + v.astype("string") + f" is not an integer in [{lo}, {hi}]")
            frame.loc[bad, column] = float("nan")


def _epoch_us(when: pd.Series) -> np.ndarray:
    """UTC times as epoch microseconds (NaT: the smallest int64)."""
    return when.astype("datetime64[us, UTC]").dt.tz_convert(None).to_numpy(dtype="datetime64[us]").view("int64")


def _check_service_day(frame: pd.DataFrame) -> None:
    """Times outside their service day (``timeutil.SERVICE_SECONDS_RANGE`` of its start: a day
    before to three after) are ``bad_value``: a year-3000 arrival or one a week off its date is
    garbage, and kept it would make the good stops of its trip look out of order."""
    days = pd.to_datetime(frame["service_date"])
    codes, unique = pd.factorize(days)
    if not len(unique):
        return
    origin_us = _epoch_us(service_day_origin(pd.Series(unique)))
    start = origin_us[codes] + np.int64(SERVICE_SECONDS_RANGE[0] * 1_000_000)
    end = origin_us[codes] + np.int64(SERVICE_SECONDS_RANGE[1] * 1_000_000)
    for column in ("actual_arrival", "scheduled_arrival"):
        when = pd.to_datetime(frame[column], utc=True)
        us = _epoch_us(when)
        bad = pd.Series(when.notna().to_numpy() & (codes >= 0) & ((us < start) | (us >= end)), index=frame.index)
        if bad.any():
            detail = (
                f"field {column}: "
                + when.dt.strftime("%Y-%m-%dT%H:%M:%SZ").astype("string").fillna("")
                + " is not within service day "
                + days.dt.strftime("%Y-%m-%d").astype("string").fillna("")
            )
            _flag_first(frame, bad, detail)


#: Durations an event may carry (seconds): none negative, none longer than a day.
_DURATION_RANGE = (0.0, 86_400.0)


def _check_durations(frame: pd.DataFrame) -> None:
    """Dwell and headway values that are no duration (negative, inf, 1e300) are ``bad_value``: they
    would reach the features as they are."""
    lo, hi = _DURATION_RANGE
    for column in ("dwell_seconds", "headway_seconds", "scheduled_headway_seconds"):
        v = frame[column].astype("float64")
        bad = v.notna() & ~v.between(lo, hi)
        if bad.any():
            _flag_first(
                frame, bad, f"field {column}: " + v.astype("string") + f" is not seconds in [{lo:.0f}, {hi:.0f}]"
            )


def to_event_table(frame: pd.DataFrame, source: str, source_file: str, row_offset: int) -> pa.Table:
    """Canonical pandas frame (reader output) -> Arrow table in the quarantine-capable event schema."""
    _check_integers(frame)
    _check_service_day(frame)
    _check_durations(frame)
    n = len(frame)
    cols = {
        "source": pa.array([source] * n, pa.string()),
        "source_file": pa.array([source_file] * n, pa.string()),
        "source_row": pa.array(range(row_offset, row_offset + n), pa.int64()),
        "service_date": pa.array(pd.to_datetime(frame["service_date"]), pa.timestamp("us")).cast(pa.date32()),
        "actual_arrival": pa.array(
            pd.to_datetime(frame["actual_arrival"], utc=True), QUARANTINE_SCHEMA.field("actual_arrival").type
        ),
        "scheduled_arrival": pa.array(
            pd.to_datetime(frame["scheduled_arrival"], utc=True), QUARANTINE_SCHEMA.field("scheduled_arrival").type
        ),
        "direction_id": pa.array(frame["direction_id"].round().astype("Int8"), pa.int8()),
        "stop_sequence": pa.array(frame["stop_sequence"].round().astype("Int32"), pa.int32()),
    }
    for name in ("mode", "route_id", "trip_id", "vehicle_id", "stop_id", "reason", "detail"):
        cols[name] = pa.array(frame[name].astype("string"), pa.string())
    for name in ("dwell_seconds", "headway_seconds", "scheduled_headway_seconds"):
        cols[name] = pa.array(frame[name].astype("float64"), pa.float64(), from_pandas=True)
    return conform(pa.table(cols), QUARANTINE_SCHEMA)


def read_piece(piece: dict) -> Iterator[pa.Table]:
    """Read one piece and yield canonical event tables (``reason`` set on rows already rejected)."""
    reader = READERS[piece["format"]]
    offset = piece["row_offset"]
    name = os.path.basename(piece["path"])
    for raw in _raw_batches(piece, reader):
        raw = raw.reset_index(drop=True)
        yield to_event_table(reader.canonicalize(raw, **piece.get("hint", {})), reader.name, name, offset)
        offset += len(raw)


def read_file(path: str, fmt: str | None = None) -> pa.Table:
    """Read a whole file into one canonical table, on the driver (tests, small files, serving)."""
    inp = inspect_input(path, fmt)
    tables = [t for piece in plan_pieces(inp) for t in read_piece(piece)]
    return pa.concat_tables(tables)
