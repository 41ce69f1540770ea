"""What every source reader shares: the reader contract and typed, quarantine-aware coercion."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import pandas as pd

from mbta_ray.schema import Reason
from mbta_ray.timeutil import EPOCH_RANGE, SERVICE_SECONDS_RANGE, service_seconds_to_utc


class RowIssues:
    """Per-row quarantine reasons for one batch; the first reason recorded for a row wins."""

    def __init__(self, index: pd.Index) -> None:
        self.reason = pd.Series(pd.NA, index=index, dtype="string")
        self.detail = pd.Series(pd.NA, index=index, dtype="string")

    def flag(
        self, mask: pd.Series | np.ndarray, reason: Reason, detail: str | pd.Series | Callable[[], str | pd.Series]
    ) -> None:
        """Record ``reason`` for rows in ``mask`` that have no reason yet. ``detail`` may be a function
        that builds it, called only when a row is flagged (a whole column as text is slow, and most
        batches have no bad row)."""
        mask = pd.Series(np.asarray(mask, dtype=bool), index=self.reason.index) & self.reason.isna()
        if not mask.any():
            return
        if callable(detail):
            detail = detail()
        self.reason[mask] = reason.value
        self.detail[mask] = detail[mask] if isinstance(detail, pd.Series) else detail


def numeric(df: pd.DataFrame, column: str, issues: RowIssues) -> pd.Series:
    """Column as float64; present-but-unparseable values are flagged ``bad_value`` naming the field."""
    raw = df[column]
    if pd.api.types.is_bool_dtype(raw.dtype):
        raw = raw.astype("Int64")
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    # Only the values that did not parse are looked at as text (all of a column as strings was
    # half of a LAMP file's read).
    failed = (values.isna() & raw.notna()).to_numpy()
    if failed.any():
        text = raw[failed].astype("string").str.strip()
        bad = np.zeros(len(raw), dtype=bool)
        bad[failed] = ((text != "") & (text.str.lower() != "nan")).to_numpy(dtype=bool, na_value=False)
        detail = pd.Series(pd.NA, index=raw.index, dtype="string")
        detail[failed] = ("field " + column + ": " + text + " is not a number").to_numpy()
        issues.flag(bad, Reason.BAD_VALUE, detail)
    return values


def epoch_seconds(df: pd.DataFrame, column: str, issues: RowIssues) -> pd.Series:
    """An epoch-seconds column (``numeric``'s output); one a writer stored as timestamps instead
    (naive ones read as UTC) is taken as the seconds they are, not as nanoseconds gone wrong."""
    raw = df[column]
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        when = raw.dt.tz_convert("UTC") if raw.dt.tz is not None else raw.dt.tz_localize("UTC")
        return ((when - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype("float64")
    return numeric(df, column, issues)


def epoch_time(seconds: pd.Series, column: str, issues: RowIssues) -> pd.Series:
    """Epoch seconds (``numeric``'s output) as UTC timestamps; a value outside
    ``timeutil.EPOCH_RANGE`` is flagged ``bad_value`` naming the field, and becomes NaT."""
    bad = seconds.notna() & ~seconds.between(*EPOCH_RANGE, inclusive="left")
    issues.flag(bad, Reason.BAD_VALUE, lambda: "field " + column + ": " + seconds.astype("string") + " is not a time in epoch seconds")  # fmt: skip
    return pd.to_datetime(seconds.mask(bad), unit="s", utc=True)


def service_time(dates: pd.Series, seconds: pd.Series, column: str, issues: RowIssues) -> pd.Series:
    """Seconds into the service day (``numeric``'s output) as UTC timestamps; a value outside
    ``timeutil.SERVICE_SECONDS_RANGE`` is flagged ``bad_value`` naming the field, and becomes NaT."""
    bad = seconds.notna() & ~seconds.between(*SERVICE_SECONDS_RANGE, inclusive="left")
    issues.flag(bad, Reason.BAD_VALUE, lambda: "field " + column + ": " + seconds.astype("string") + " is not seconds into a service day")  # fmt: skip
    return service_seconds_to_utc(dates, seconds.mask(bad))


def gtfs_direction(values: pd.Series, column: str, issues: RowIssues) -> pd.Series:
    """A GTFS direction_id (``numeric``'s output): 0 or 1; anything else is flagged ``bad_value``
    naming the field, and becomes NaN (TransitMaster's own codes are read by its reader, not here)."""
    bad = values.notna() & ~values.isin((0, 1))
    issues.flag(bad, Reason.BAD_VALUE, lambda: "field " + column + ": " + values.astype("string") + " is not 0 or 1")
    return values.mask(bad)


def text(df: pd.DataFrame, column: str) -> pd.Series:
    """Column as a stripped string; empty strings become missing. A float column's whole numbers
    read as integers (an id column with nulls is float in pandas: 70061.0 is stop "70061")."""
    raw = df[column]
    s = raw.astype("string").str.strip()
    if pd.api.types.is_float_dtype(raw.dtype):
        whole = (np.isfinite(raw) & (raw == raw.round()) & (raw.abs() < _EXACT_FLOAT_INT)).to_numpy()
        s[whole] = raw[whole].astype("int64").astype("string")
    return s.mask(s == "")


#: Integers a float64 holds exactly: ids beyond it would merge (2**53 and 2**53 + 1 read alike).
_EXACT_FLOAT_INT = 2**53


def int_text(values: pd.Series, column: str, issues: RowIssues) -> pd.Series:
    """Float ids (``numeric``'s output, e.g. 8301710.0 from a nullable int column) -> '8301710'. An
    id that is no whole number a float holds exactly (inf, 1.5, beyond 2**53) is flagged
    ``bad_value`` naming the field, and becomes missing."""
    bad = values.notna() & ~((values == values.round()) & (values.abs() < _EXACT_FLOAT_INT))
    issues.flag(bad, Reason.BAD_VALUE, lambda: "field " + column + ": " + values.astype("string") + " is not an integer id")  # fmt: skip
    return values.mask(bad).round().astype("Int64").astype("string")


def open_csv(path: str) -> TextIO:
    """A CSV file (gzipped where it ends in .gz) as text, without a byte order mark."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    return opener(path, "rt", newline="", encoding="utf-8-sig")


def csv_header(path: str) -> list[str]:
    """A CSV file's column names as readers see them: stripped ("a, b" is columns a and b)."""
    with open_csv(path) as f:
        header = next(csv.reader(f), None)
    return [h.strip() for h in header or []]


def first_present(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    """First of ``names`` that is a column of ``df``."""
    return next((n for n in names if n in df.columns), None)


@dataclass(frozen=True)
class Reader:
    """A source format: the columns that identify it and the function that canonicalizes a batch.

    ``required`` lists column groups; a file matches when, for every group, one of its names is a
    column (so the 2023 and 2024 LAMP layouts are one format). ``canonicalize`` gets a raw batch and
    returns the canonical event columns (without source/source_file/source_row) plus ``reason`` and
    ``detail`` (null for a good row).
    """

    name: str
    required: tuple[tuple[str, ...], ...]
    canonicalize: Callable[..., pd.DataFrame]
    #: True when stop ids are GTFS stop ids (so they can be checked against GTFS stops).
    gtfs_stop_ids: bool = True
    optional: tuple[str, ...] = field(default=())
    #: What a reader must decide once per file, not per batch (path, container -> JSON-able keyword
    #: arguments for ``canonicalize``): e.g. which time zone a file's naive times are in.
    file_hint: Callable[[str, str], dict] | None = None

    def missing_columns(self, columns: list[str] | set[str]) -> list[str]:
        """Required column groups not present, written as 'a' or 'a|b' (alternatives)."""
        cols = set(columns)
        return ["|".join(group) for group in self.required if not cols.intersection(group)]
