"""``mbta-ray live record``: archive a GTFS-realtime feed's snapshots as parquet, in the flattened
layout the readers take (one row per entity per snapshot, ``feed_timestamp`` naming the snapshot,
dotted column names such as ``vehicle.trip.trip_id``), so a user builds their own history: the
race, the live replay and ``mbta-ray data ingest`` read these files as they read LAMP's archives.

A poll that fails (unreachable, timeout, HTTP error, bytes that are no feed) or brings a snapshot
not newer than the last is counted and logged, never the end of a recording. Rows are written every
``flush_every`` snapshots and at the end (also on Ctrl-C), each file atomically (a temporary file
renamed), named by its first snapshot's time, so a crash loses at most the rows not yet flushed.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mbta_ray.errors import ConfigError
from mbta_ray.realtime import feeds
from mbta_ray.realtime.feeds import FeedError
from mbta_ray.realtime.live import fetch_bytes
from mbta_ray.storage import shown

KINDS = {"vehicle-positions": "VehiclePositions", "trip-updates": "TripUpdates"}


@dataclass
class RecordReport:
    """What a recording took in, wrote and skipped (by reason)."""

    snapshots: int = 0
    rows: int = 0
    files: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> polls or entities left out

    def summary(self) -> str:
        text = f"{self.snapshots} snapshot(s), {self.rows} row(s) in {len(self.files)} file(s)"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return text


def parse_duration(value: str | None) -> float | None:
    """Seconds from ``90``, ``90s``, ``30m`` or ``2h`` (None: no limit); ``ConfigError`` otherwise."""
    if value is None:
        return None
    text = str(value).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ConfigError(f"--duration {value!r}: give seconds or a number with s, m or h (e.g. 30m)") from None
    if not seconds > 0:
        raise ConfigError(f"--duration {value!r} must be positive")
    return seconds


def record(
    url: str,
    out: Path,
    kind: str = "vehicle-positions",
    every_s: float = 5.0,
    duration_s: float | None = None,
    snapshots: int | None = None,
    flush_every: int = 60,
    timeout_s: float = 4.0,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> RecordReport:
    """Poll ``url`` every ``every_s`` until ``duration_s`` passed or ``snapshots`` were taken (or
    Ctrl-C), writing parquet archives into ``out``."""
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    if not (every_s > 0 and math.isfinite(every_s)):
        raise ConfigError(f"--every {every_s}: must be a positive number of seconds")
    if flush_every < 1:
        raise ConfigError(f"--flush-every {flush_every}: must be at least 1")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {shown(url)!r}: an http(s) URL of a GTFS-realtime feed")
    if not 0 < timeout_s < math.inf:
        raise ConfigError(f"--timeout {timeout_s}: must be a positive number of seconds")
    if snapshots is not None and snapshots < 1:
        raise ConfigError(f"--snapshots {snapshots}: must be at least 1")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot be created ({exc.strerror or exc})") from None
    report, pending, latest = RecordReport(), [], None
    started = time.monotonic()
    try:
        while (duration_s is None or time.monotonic() - started < duration_s) and (
            snapshots is None or report.snapshots < snapshots
        ):
            polled = time.monotonic()
            try:
                stamp, rows, skipped = feeds.flatten_snapshot(fetch_bytes(url, timeout_s), KINDS[kind], shown(url))
            except FeedError as exc:
                report.skipped["failed polls"] += 1
                log(f"skipped: {exc}")
            except Exception as exc:  # noqa: BLE001 -- a bad feed must never end a recording
                report.skipped["failed polls"] += 1
                log(f"skipped: {shown(url)}: unexpected {type(exc).__name__}: {str(exc)[:200]}")
            else:
                if latest is not None and stamp <= latest:
                    report.skipped["snapshots not newer than the last"] += 1
                else:
                    latest = stamp
                    report.snapshots += 1
                    report.skipped.update(skipped)
                    pending.extend(rows)
                    if report.snapshots % flush_every == 0:
                        _flush(pending, out, KINDS[kind], report)
                        pending = []
            sleep(max(0.0, every_s - (time.monotonic() - polled)))
    except KeyboardInterrupt:
        log("interrupted: writing what was recorded")
    finally:  # whatever ends the loop, what was recorded is written
        _flush(pending, out, KINDS[kind], report)
    return report


def _flush(rows: list[dict], out: Path, kind: str, report: RecordReport) -> None:
    if not rows:
        return
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # a field that came as text and as a number: keep it as text
        values = frame[column].dropna()
        mixed = values.map(type).nunique() > 1
        huge = values.map(lambda v: isinstance(v, int) and not -(2**63) <= v < 2**63).any()  # no int64 holds it
        if mixed or huge:
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    first = dt.datetime.fromtimestamp(int(frame["feed_timestamp"].min()), dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{kind}_{first}.parquet"
    n = 1
    while path.exists():  # a second recording into the same folder never overwrites the first
        path = out / f"{kind}_{first}_{n}.parquet"
        n += 1
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    report.rows += len(frame)
    report.files.append(str(path))
