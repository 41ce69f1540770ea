"""``mbta-ray data fetch``: MBTA's public archives by service date into a cache: a local folder,
or a gs:// / s3:// URI (``storage.open_root``; files are downloaded and checked in a local staging
folder, then uploaded).

Sources, each in its published layout (``--performance-url`` and ``--cdn-url`` point elsewhere, e.g.
a mirror or a test server with the same paths):

- ``lamp-subway``: LAMP subway on-time performance, one parquet per service date, listed in
  ``{performance}/lamp/subway-on-time-performance-v1/index.csv`` (service_date, file_url,
  size_bytes, ...). A date in the range that the index does not list is reported, not fetched.
- ``lamp-bus``: LAMP bus vehicle events, ``{performance}/lamp/bus_vehicle_events/{YYYYMMDD}.parquet``
  (no index: a 404 says the day has no file).
- ``gtfs``: the static GTFS in force on each date, from ``{cdn}/archive/archived_feeds.txt``
  (feed_start_date, feed_end_date, archive_url): one zip per feed, fetched once for all its dates.

Downloads run in parallel with retries and exponential backoff (a connection error, a timeout, an
HTTP 429 or 5xx, a body shorter than announced, or one with no length that fails its check); a
partial file is kept as ``<name>.part`` and resumed with an HTTP Range request only when it is known
to be the same file (``_download``). Each finished file is checked (parquet: its footer; zip: its
CRCs), and its size and sha256 are recorded in ``<cache>/fetch.json`` with the URL and the dates it
covers; a file already there as recorded (a local cache: its sha256; an object store: its size) is
not fetched again. Ctrl-C stops the downloads between chunks and keeps what finished. A 404 for a day
is reported and skipped; a file that fails its check, or that the cache folder has no room for (a
folder in its place), is reported by URL and path while the other files go on. An index row that
cannot be read is reported by URL and row and skipped; the days it may concern are reported missing
with that row as the reason, never given another file. A damaged ``fetch.json`` entry is reported
and its file fetched again (the entry is kept until a good record replaces it). Nothing is ever
written outside the cache: file names come from this module's layouts, never from the server.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import signal
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from mbta_ray.errors import ConfigError, DataError, MbtaRayError
from mbta_ray.paths import sha256_file
from mbta_ray.storage import Root, hide, open_root

T = TypeVar("T")

PERFORMANCE_URL = "https://performancedata.mbta.com"
CDN_URL = "https://cdn.mbta.com"
SOURCES = ("lamp-subway", "lamp-bus", "gtfs")
LAMP_SUBWAY_DIR = "lamp/subway-on-time-performance-v1"
MANIFEST = "fetch.json"
_CHUNK = 1 << 16
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
#: A path under the cache as the layouts below make them (source folders and checked names).
_SAFE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Bounds of the options: beyond them urllib3 or the backoff overflows, or the servers are hammered.
MAX_PARALLEL = 64
MAX_RETRIES = 10  # with 1 s backoff the last wait is 512 s, about 17 minutes in all
MAX_TIMEOUT_S = 3600.0
MAX_BACKOFF_S = 60.0
#: An index's size_bytes above this is not a MBTA file (a day's LAMP file is about a megabyte).
_MAX_SIZE = 10**12


class FetchError(MbtaRayError):
    """A file that could not be fetched or failed its check; the message names the URL."""


class _Missing(Exception):
    """The server has no such file (HTTP 404)."""


class _Stopped(Exception):
    """The user interrupted the fetch: downloads stop at their next chunk, partial files kept."""


class _Retry(Exception):
    """A failure worth trying again (connection, timeout, 429/5xx, a short body)."""


@dataclass(frozen=True)
class Item:
    """One file to fetch: its source, URL, path under the cache and the service dates it covers."""

    source: str
    url: str
    path: str  # relative to the cache, from this module's layouts only
    dates: tuple[str, ...]
    size: int | None = None  # announced by an index, when it says


@dataclass
class FetchReport:
    """What a fetch did: files fetched or already cached, days missing, files failed (with why)."""

    fetched: list[dict] = field(default_factory=list)
    cached: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)  # {"source", "date", "reason"}
    failed: list[dict] = field(default_factory=list)  # {"source", "url", "dates", "reason"}
    #: index rows skipped and damaged fetch.json entries: {"source", "where" (URL and row, or
    #: manifest and entry), "reason"}
    warnings: list[dict] = field(default_factory=list)
    bytes: int = 0
    #: The user stopped it (Ctrl-C): what finished is recorded, partial files are kept to resume.
    interrupted: bool = False

    def summary(self) -> str:
        warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        stopped = ", interrupted" if self.interrupted else ""
        return (
            f"{len(self.fetched)} file(s) fetched ({self.bytes:,} bytes), {len(self.cached)} already cached, "
            f"{len(self.missing)} day(s) missing, {len(self.failed)} failed{warned}{stopped}"
        )


#: Service dates MBTA's archives can have (LAMP and the GTFS archive start in the 2010s).
_FIRST_YEAR, _LAST_YEAR = 2000, 2099


def parse_date(value: str, option: str) -> dt.date:
    """A user's YYYY-MM-DD date (only that form: Python also takes 20240101 or 2024-W05-1)."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(value)):
            raise ValueError(value)
        day = dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {value!r}: give a date as YYYY-MM-DD") from None
    if not _FIRST_YEAR <= day.year <= _LAST_YEAR:
        raise ConfigError(f"{option} {value}: a service date from {_FIRST_YEAR} to {_LAST_YEAR}")
    return day


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every date from ``start`` to ``end``, both included."""
    if end < start:
        raise ConfigError(f"--until {end} is before --from {start}")
    if (end - start).days > 3660:
        raise ConfigError(f"--from {start} --until {end}: more than ten years of days")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


# --- planning: which files cover which dates -------------------------------------------------------


def plan(
    sources: Iterable[str],
    dates: list[dt.date],
    performance_url: str = PERFORMANCE_URL,
    cdn_url: str = CDN_URL,
    get: Callable[[str], bytes] | None = None,
) -> tuple[list[Item], list[dict], list[dict]]:
    """The files to fetch for ``dates`` from each source, the days no file covers (with why), and
    the index rows skipped as unreadable (``FetchReport.warnings``)."""
    get = get or _get_small
    items: list[Item] = []
    missing: list[dict] = []
    warnings: list[dict] = []
    for source in sources:
        if source == "lamp-subway":
            found, gone, bad = _plan_lamp_subway(dates, performance_url.rstrip("/"), get)
        elif source == "lamp-bus":
            found, gone, bad = _plan_lamp_bus(dates, performance_url.rstrip("/")), [], []
        elif source == "gtfs":
            found, gone, bad = _plan_gtfs(dates, cdn_url.rstrip("/"), get)
        else:
            raise ConfigError(f"--source {source!r}: one of {', '.join(SOURCES)}")
        items += found
        missing += gone
        warnings += bad
    return items, missing, warnings


@dataclass(frozen=True)
class _BadRow:
    """An index row that cannot be used: its line in the index, the day it names when that much
    could be read, and why."""

    line: int
    day: str | None
    why: str


def _plan_lamp_subway(dates: list[dt.date], base: str, get) -> tuple[list[Item], list[dict], list[dict]]:
    index_url = f"{base}/{LAMP_SUBWAY_DIR}/index.csv"
    listed, bad = _read_lamp_index(get(index_url), index_url)
    items, missing = [], []
    for d in dates:
        day = d.isoformat()
        if day in listed:
            name = f"{day}-subway-on-time-performance-v1.parquet"
            items.append(
                Item("lamp-subway", f"{base}/{LAMP_SUBWAY_DIR}/{name}", f"lamp-subway/{name}", (day,), listed[day])
            )
            continue
        # A day only a bad row names is missing for that row; a day no row names may be in a row
        # whose date could not be read, and says so.
        mine = [b for b in bad if b.day == day]
        unread = [b.line for b in bad if b.day is None]
        if mine:
            reason = f"{index_url}: row {mine[0].line}: {mine[0].why}"
        elif unread:
            reason = f"not listed in {index_url} (row(s) {', '.join(map(str, unread))} could not be read)"
        else:
            reason = f"not listed in {index_url}"
        missing.append({"source": "lamp-subway", "date": day, "reason": reason})
    return items, missing, _row_warnings("lamp-subway", index_url, bad)


def _read_lamp_index(data: bytes, index_url: str) -> tuple[dict[str, int | None], list[_BadRow]]:
    """The LAMP index's days with their announced sizes (None when it gives none), and its bad
    rows; a DataError when it has rows but none can be used."""
    rows, width = _csv_rows(data, index_url, ("service_date",))
    listed: dict[str, int | None] = {}
    bad: list[_BadRow] = []
    conflicted: set[str] = set()
    for line, row in rows:
        raw = (row.get("service_date") or "").strip()
        try:
            day = dt.date.fromisoformat(raw[:10]).isoformat()  # the index may add a time of day
        except ValueError:
            bad.append(_BadRow(line, None, f"service_date {raw!r} is not YYYY-MM-DD"))
            continue
        why = _width_problem(row, width)
        if why is None:
            try:
                size = _size_bytes(row.get("size_bytes"))
            except ValueError as exc:
                why = str(exc)
            else:
                if day in conflicted or (day in listed and listed[day] != size):
                    # Which is the file? Neither size can be checked: the day is missing.
                    listed.pop(day, None)
                    conflicted.add(day)
                    bad.append(_BadRow(line, day, f"{day} is listed more than once, with other size_bytes"))
                else:
                    listed[day] = size
                continue
        bad.append(_BadRow(line, day, why))
    if bad and not listed:
        raise _unusable(index_url, bad)
    return listed, bad


def _unusable(index_url: str, bad: list[_BadRow]) -> DataError:
    """An index whose rows are all bad is refused: a server sending that is broken, not missing days."""
    more = f"; {len(bad) - 1} more bad row(s)" if len(bad) > 1 else ""
    return DataError(f"{index_url}: no usable row (row {bad[0].line}: {bad[0].why}{more})")


def _size_bytes(value: str | None) -> int | None:
    """An index's size_bytes: None when blank, else a whole number of bytes (written as an integer
    or an integral float); a ValueError saying why otherwise."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number.is_integer() and 0 < number <= _MAX_SIZE):
        raise ValueError(f"size_bytes {text!r} is not a size in bytes (a whole number from 1 to {_MAX_SIZE:,})")
    return int(number)


def _width_problem(row: dict, width: int) -> str | None:
    """Why a row with another number of fields than the header is misaligned, or None: csv fills a
    short row with None and puts a long row's extra fields under the key None."""
    fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
    return None if fields == width else f"{fields} field(s), the header has {width}"


def _row_warnings(source: str, index_url: str, bad: list[_BadRow]) -> list[dict]:
    return [{"source": source, "where": f"{index_url} row {b.line}", "reason": f"{b.why}: skipped"} for b in bad]


def _plan_lamp_bus(dates: list[dt.date], base: str) -> list[Item]:
    return [
        Item("lamp-bus", f"{base}/lamp/bus_vehicle_events/{d:%Y%m%d}.parquet", f"lamp-bus/{d:%Y%m%d}.parquet", (d.isoformat(),))
        for d in dates
    ]  # fmt: skip


@dataclass(frozen=True)
class _Feed:
    """A row of the GTFS archive index: the dates it covers (every date when they could not be read)
    and its URL, or why it cannot be used."""

    line: int
    start: dt.date
    end: dt.date
    url: str | None
    why: str | None = None


def _plan_gtfs(dates: list[dt.date], base: str, get) -> tuple[list[Item], list[dict], list[dict]]:
    index_url = f"{base}/archive/archived_feeds.txt"
    feeds = _read_gtfs_index(get(index_url), index_url, base)
    by_url: dict[str, list[str]] = {}
    missing = []
    for d in dates:
        # The archive lists newest first; where feeds overlap, the newest one in force wins. A bad
        # row that may be that newest feed makes the day missing: an older feed would be misread.
        covering = [f for f in feeds if f.start <= d <= f.end]
        if not covering:
            missing.append({"source": "gtfs", "date": d.isoformat(), "reason": f"no feed in {index_url} covers it"})
            continue
        feed = min(covering, key=lambda f: f.line)
        if feed.url is None:
            unknown = feed.start == dt.date.min  # its dates could not be read
            reason = f"{index_url}: row {feed.line}: {feed.why}" + (
                ", and it may be the feed in force" if unknown else " (the feed in force then)"
            )
            missing.append({"source": "gtfs", "date": d.isoformat(), "reason": reason})
            continue
        by_url.setdefault(feed.url, []).append(d.isoformat())
    items = [Item("gtfs", url, _gtfs_path(url), tuple(days)) for url, days in by_url.items()]
    bad = [_BadRow(f.line, None, f.why) for f in feeds if f.why]
    return items, missing, _row_warnings("gtfs", index_url, bad)


def _read_gtfs_index(data: bytes, index_url: str, base: str) -> list[_Feed]:
    """The archive index's rows as feeds (URLs on MBTA's CDN moved to the mirror ``base``, when it
    is one), a bad row as one with ``why`` (and no URL); a DataError when it has rows but none can
    be used."""
    rows, width = _csv_rows(data, index_url, ("feed_start_date", "feed_end_date", "archive_url"))
    feeds = []
    for line, row in rows:
        why = _width_problem(row, width)
        if why is None:
            try:
                start = dt.datetime.strptime(row["feed_start_date"].strip(), "%Y%m%d").date()
                end = dt.datetime.strptime(row["feed_end_date"].strip(), "%Y%m%d").date()
            except ValueError:
                why = "feed_start_date/feed_end_date are not YYYYMMDD"
            else:
                url = row["archive_url"].strip()
                if end < start:
                    why = f"feed_end_date {end:%Y%m%d} is before feed_start_date {start:%Y%m%d}"
                elif _zip_name(url) is None:
                    # Its dates are known: it stands only where it would be in force.
                    feeds.append(
                        _Feed(line, start, end, None, f"archive_url {url!r} does not end in a plain .zip file name")
                    )
                    continue
                else:
                    feeds.append(_Feed(line, start, end, _on_mirror(url, base)))
                    continue
        feeds.append(_Feed(line, dt.date.min, dt.date.max, None, why))  # its dates unknown: it may cover any
    if feeds and all(f.url is None for f in feeds):
        raise _unusable(index_url, [_BadRow(f.line, None, f.why) for f in feeds])
    return feeds


def _zip_name(url: str) -> str | None:
    """The file name a GTFS archive URL's path ends in (not its query), or None when that is not a
    plain .zip name."""
    name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return name if _SAFE_NAME.match(name) and name.lower().endswith(".zip") else None


def _gtfs_path(url: str) -> str:
    """Where a GTFS zip goes in the cache: its name with a digest of its URL, so that two feeds
    whose URLs end in the same name (``old/MBTA_GTFS.zip``, ``new/MBTA_GTFS.zip``) never share a file."""
    name = _zip_name(url) or "feed.zip"
    return f"gtfs/{name[:-4]}-{hashlib.sha256(url.encode()).hexdigest()[:10]}.zip"


def _on_mirror(url: str, cdn: str) -> str:
    """An archive URL on MBTA's CDN, moved to the ``--cdn-url`` mirror the index came from (a mirror
    of the index lists the CDN's URLs; a mirror is used for the zips too, e.g. offline)."""
    parts, home = urllib.parse.urlsplit(url), urllib.parse.urlsplit(CDN_URL)
    if cdn.rstrip("/") == CDN_URL or (parts.scheme, parts.netloc) != (home.scheme, home.netloc):
        return url
    return cdn.rstrip("/") + urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))


def _csv_rows(data: bytes, where: str, required: tuple[str, ...]) -> tuple[list[tuple[int, dict]], int]:
    """The rows of a CSV index, each with its line number in the file, and the header's width."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{where}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    names = [str(n).strip() for n in reader.fieldnames or []]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # which of the two is the value? DictReader would keep the last silently
        raise DataError(f"{where}: columns named more than once: {', '.join(twice)}")
    absent = [c for c in required if c not in (reader.fieldnames or [])]
    if absent:
        raise DataError(f"{where}: no column {', '.join(absent)} (columns: {', '.join(reader.fieldnames or [])})")
    try:
        rows = [(reader.line_num, row) for row in reader]  # line_num: where the row ends, as an editor counts
    except csv.Error as exc:
        raise DataError(f"{where}: line {reader.line_num}: not CSV ({exc})") from None
    return rows, len(reader.fieldnames or [])


def _get_small(url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5) -> bytes:
    """An index file's bytes, with the downloads' retries (a 404: no such index)."""
    import requests

    def attempt() -> bytes:
        r = requests.get(url, timeout=timeout_s)
        _raise_for_status(url, r.status_code, r.reason, missing=lambda: FetchError(f"{url}: HTTP 404 (no such index)"))
        return r.content

    return _with_retries(url, attempt, retries, backoff_s)


def _raise_for_status(url: str, status: int, reason: str, missing: Callable[[], Exception]) -> None:
    """One rule for every request: a 404 is ``missing()``; 429 and 5xx are worth another try (the
    server is busy or failing, not the request); any other 4xx is a ``FetchError``."""
    if status == 404:
        raise missing()
    if status == 429 or status >= 500:
        raise _Retry(f"HTTP {status}")
    if status >= 400:
        raise FetchError(f"{url}: HTTP {status} {reason}")


def _with_retries(
    url: str, attempt: Callable[[], T], retries: int, backoff_s: float, kept: Callable[[], str] = lambda: ""
) -> T:
    """``attempt()``, tried again after a connection error, a timeout, a broken chunked answer or a
    retryable status, waiting ``backoff_s`` x 1, 2, 4, ... between tries (never after the last)."""
    import requests

    last: Exception | None = None
    for n in range(retries + 1):
        if n:
            time.sleep(backoff_s * 2 ** (n - 1))
        try:
            return attempt()
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Retry) as exc:
            last = exc
        except (requests.RequestException, ValueError) as exc:  # a malformed URL, a bad redirect: no retry mends it
            raise FetchError(f"{url}: {exc}") from None
    raise FetchError(f"{url}: failed after {retries + 1} attempts ({last}){kept()}")


# --- downloading --------------------------------------------------------------------------------------


def download(
    item: Item,
    cache: Path,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Fetch one file into the cache (resuming a partial one), check it and return its record;
    ``_Missing`` for a 404, ``FetchError`` when it cannot be had, or cannot be written where it goes
    (the message names the URL and the path)."""
    import requests

    dest = cache / item.path
    part = dest.with_name(dest.name + ".part")
    _make_room(item.url, dest, part)
    try:
        return _download(item, dest, part, retries, backoff_s, timeout_s, progress)
    except OSError as exc:  # the local disk (full, read-only, ...): this file fails, the others go on
        if isinstance(exc, requests.RequestException):
            raise  # never here: _with_retries turns them into FetchError
        raise FetchError(f"{item.url}: writing it to {dest} failed ({exc})") from None


def _make_room(url: str, dest: Path, part: Path) -> None:
    """Create ``dest``'s folder; a FetchError naming the path when something in the cache is in
    the way (a file where a folder goes, a folder where the file goes, anything but a plain file
    where its .part goes)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in reversed(dest.parents) if p.exists() and not p.is_dir()), dest.parent)
        raise FetchError(f"{url}: cannot write {dest}: {blocking} is a file, not a folder; move it away") from None
    if dest.is_dir() and not dest.is_symlink():  # a link is replaced by the file, a folder is not
        raise FetchError(f"{url}: cannot write {dest}: it is a folder; move it away")
    # The .part is written through: a link could point outside the cache, a fifo would block.
    for own in (part, _meta_path(part)):
        if own.is_symlink() or (own.exists() and not own.is_file()):
            raise FetchError(f"{url}: cannot write {own}: it is not a plain file; move it away")


def _download(
    item: Item,
    dest: Path,
    part: Path,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    progress: Callable[[int], None],
) -> dict:
    """``download``'s work, once ``dest``'s folder is there. A partial file is resumed only when it
    is known to be a start of the same file: written by this call, or by an earlier run that saved
    the server's validator (ETag or Last-Modified) beside it, which the Range request sends as
    If-Range (a changed file then comes whole). The answer must continue the partial file exactly
    (Content-Range); anything else starts again from zero."""
    import requests

    meta = _meta_path(part)
    ours = {"resumable": False}  # the .part was written by this call's own attempts

    def attempt() -> int:
        have = part.stat().st_size if part.exists() else 0
        validator = None if ours["resumable"] else _saved_validator(meta, item.url)
        if have and not ours["resumable"] and validator is None:
            have = 0  # a partial file of unknown origin: never spliced onto another version
        headers = {"Range": f"bytes={have}-", **({"If-Range": validator} if validator else {})} if have else {}
        with requests.get(item.url, headers=headers, stream=True, timeout=timeout_s) as r:
            if r.status_code == 416:  # nothing after what we have: start again from zero
                _discard(part, meta, ours)
                raise _Retry("HTTP 416 for the partial file")
            _raise_for_status(item.url, r.status_code, r.reason, missing=lambda: _Missing(item.url))
            resumed = r.status_code == 206 and have > 0
            if resumed and not _continues(r.headers.get("Content-Range"), have):
                _discard(part, meta, ours)
                raise _Retry(f"the server sent bytes {r.headers.get('Content-Range')}, not from byte {have:,}")
            if not resumed:  # the whole file from zero: remember what it is, to resume it later
                _save_validator(meta, item.url, r.headers)
            length = r.headers.get("Content-Length")
            expected = (have if resumed else 0) + int(length) if length and length.isdigit() else None
            ours["resumable"] = True
            with open(part, "ab" if resumed else "wb") as f:  # no 206: the server starts from zero
                for chunk in r.iter_content(_CHUNK):
                    f.write(chunk)
                    progress(len(chunk))
        size = part.stat().st_size
        if expected is not None and size < expected:
            raise _Retry(f"connection closed after {size:,} of {expected:,} bytes")
        if expected is None:  # nothing said how long it is: a cut transfer shows only in the check
            try:
                _check(part, item)
            except FetchError as exc:
                _discard(part, meta, ours)
                raise _Retry(f"{exc} (no Content-Length: the transfer may have been cut)") from None
        return size

    size = _with_retries(item.url, attempt, retries, backoff_s, kept=lambda: _kept(part))
    if item.size is not None and size != item.size:
        _discard(part, meta, ours)
        raise FetchError(f"{item.url}: {size:,} bytes, the index says {item.size:,}: removed")
    try:
        _check(part, item)
    except FetchError:
        _discard(part, meta, ours)
        raise
    record = {"url": item.url, "source": item.source, "dates": list(item.dates), "size": size}
    record["sha256"] = sha256_file(part)
    record["fetched_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return record


def _meta_path(part: Path) -> Path:
    """Beside a partial file: the URL it is from and the server's validator for it."""
    return part.with_name(part.name + ".json")


def _validator(headers) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (a weak ETag may not be used)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _save_validator(meta: Path, url: str, headers) -> None:
    validator = _validator(headers)
    if validator is None:
        meta.unlink(missing_ok=True)  # nothing to check a later resume against: a later run starts afresh
    else:
        meta.write_text(json.dumps({"url": url, "validator": validator}))


def _saved_validator(meta: Path, url: str) -> str | None:
    """The validator an earlier run saved for the partial file of ``url``, or None (none, another
    URL's, unreadable)."""
    try:
        saved = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(saved, dict) and saved.get("url") == url and isinstance(saved.get("validator"), str)
    return saved["validator"] if ok else None


def _continues(content_range: str | None, have: int) -> bool:
    """Whether a 206's Content-Range (``bytes START-END/TOTAL``) starts right after the partial file."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (content_range or "").strip())
    return bool(m) and int(m.group(1)) == have


def _discard(part: Path, meta: Path, ours: dict) -> None:
    part.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    ours["resumable"] = False


def _kept(part: Path) -> str:
    return "; the partial file is kept to resume" if part.exists() and part.stat().st_size else ""


def _check(path: Path, item: Item) -> None:
    """A parquet's footer and schema read, a zip's directory read; FetchError naming the URL."""
    if item.path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pq.ParquetFile(path).schema_arrow  # noqa: B018 -- reading the footer is the check
        except Exception as exc:  # noqa: BLE001 -- any reader error means a corrupt file
            raise FetchError(f"{item.url}: not a readable parquet file ({exc}): removed") from None
    elif item.path.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except Exception as exc:  # noqa: BLE001 -- BadZipFile, zlib.error, EOFError, encrypted: all corrupt here
            raise FetchError(f"{item.url}: not a readable zip file ({type(exc).__name__}: {exc}): removed") from None
        if bad is not None:
            raise FetchError(f"{item.url}: {bad} in the zip fails its CRC: removed")


# --- the whole fetch -------------------------------------------------------------------------------


def read_manifest(cache: Root) -> dict:
    """``<cache>/fetch.json``: per cached file its URL, source, dates, size and sha256. Its entries
    are returned as they are, damaged ones too (so that writing it back loses nothing): check each
    with ``entry_problem`` before use."""
    path = cache.path(MANIFEST)
    data = cache.read_bytes(path)
    if data is None:
        return {"files": {}}
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); remove it to fetch again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path}: not a fetch manifest (no 'files' object); remove it to fetch again")
    return manifest


def entry_problem(record: object) -> str | None:
    """Why a ``fetch.json`` entry cannot be trusted (not an object; its dates, size, source or
    sha256 not what this module writes), or None when it can."""
    if not isinstance(record, dict):
        return f"not an object but {json.dumps(record)[:40]}"
    if _entry_dates(record) is None:
        return f"'dates' is {json.dumps(record.get('dates'))[:40]}, not a list of YYYY-MM-DD dates"
    size = record.get("size")
    if type(size) is not int or size < 0:  # type(): a bool is an int too
        return f"'size' is {json.dumps(size)[:40]}, not a number of bytes"
    if record.get("source") not in SOURCES:
        return f"'source' is {json.dumps(record.get('source'))[:40]}, not one of {', '.join(SOURCES)}"
    if "sha256" in record and not (isinstance(record["sha256"], str) and _SHA256.fullmatch(record["sha256"])):
        return "'sha256' is not a sha256 digest"
    return None


def _entry_dates(record: object) -> list[str] | None:
    """A manifest entry's service dates, or None when they are missing or not YYYY-MM-DD strings
    (a string is not read as its characters)."""
    dates = record.get("dates") if isinstance(record, dict) else None
    if not isinstance(dates, list):
        return None
    for d in dates:
        try:
            if not isinstance(d, str) or dt.date.fromisoformat(d).isoformat() != d:
                return None
        except ValueError:
            return None
    return dates


def default_staging(cache: Root) -> Path:
    """Where downloads for an object-store cache wait (and resume) before their upload: a local
    folder per cache URI, under ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "mbta_ray" / "fetch-staging" / _staging_key(cache)


def _staging_key(cache: Root) -> str:
    """A folder name per cache: a hash of its URI without query or keys (so changing a key or an
    option keeps the folder)."""
    return hashlib.sha256(cache.name.encode()).hexdigest()[:16]


def fetch(
    sources: Iterable[str],
    start: dt.date,
    end: dt.date,
    cache: str | Path,
    performance_url: str = PERFORMANCE_URL,
    cdn_url: str = CDN_URL,
    parallel: int = 4,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: Callable[[str, int, int | None], None] | None = None,
    staging: Path | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> FetchReport:
    """Fetch every source's files for the dates ``start``..``end`` into ``cache`` (a folder, or a
    gs:// / s3:// URI: each file is downloaded and checked in the local ``staging`` folder, then
    uploaded and its size checked there); ``progress(path, bytes, total)`` is called as bytes arrive.
    Missing days, failed files, skipped index rows and damaged manifest entries are reported, not
    raised; an option out of its range is a ConfigError naming it."""
    _check_options(parallel, retries, backoff_s, timeout_s)
    _check_server(performance_url, "--performance-url")
    _check_server(cdn_url, "--cdn-url")
    sources = list(dict.fromkeys(sources))
    days = date_range(start, end)
    if str(cache).strip() == "":
        raise ConfigError("--cache '': give a folder or a gs:// / s3:// URI")
    root = open_root(cache, filesystem, what="--cache")
    local_dir = Path(root.base) if root.local else (staging or default_staging(root))
    get = partial(_get_small, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    with root.reporting("reading the cache", FetchError):
        local_dir.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(root)
        report = FetchReport()
        items = []
        for source in sources:  # one source's index failing does not stop the others
            try:
                found, gone, bad = plan([source], days, performance_url, cdn_url, get)
            except (FetchError, DataError) as exc:
                span = [days[0].isoformat()] + ([f"..{days[-1].isoformat()}"] if len(days) > 1 else [])
                report.failed.append({"source": source, "url": "", "dates": ["".join(span)], "reason": str(exc)})
                continue
            items += found
            report.missing += gone
            report.warnings += bad
        todo = []
        planned = {item.path for item in items}
        for path, record in sorted(manifest["files"].items()):
            why = entry_problem(record)
            if why:  # kept as it is: a good record replaces it once its file is fetched again
                then = "its file is fetched again" if path in planned else "kept; a fetch of its dates repairs it"
                report.warnings.append(
                    {"source": "cache", "where": f"{root.name}/{MANIFEST} entry {path!r}", "reason": f"{why}: {then}"}
                )
        for item in items:
            known = manifest["files"].get(item.path)
            why = _stale(root, item, known)
            if why is None:
                known["dates"] = sorted(set(known["dates"]) | set(item.dates))
                report.cached.append({"path": item.path, **known})
                continue
            if why:
                report.warnings.append({"source": item.source, "where": f"{root.name}/{item.path}", "reason": why})
            todo.append(item)
    _download_all(todo, root, local_dir, manifest, report, parallel, retries, backoff_s, timeout_s, progress)
    _write_manifest(root, manifest)
    report.missing.sort(key=lambda m: (m["source"], m["date"]))
    return report


def _stale(root: Root, item: Item, known: object) -> str | None:
    """None when the cache has ``item``'s file as recorded; else "" (not cached) or why it is
    fetched again: the file changed since (a local cache's is checked against its sha256, an
    object store's by its size), or the index now announces another size."""
    if not known or entry_problem(known):
        return ""  # not there, or a damaged entry (warned about above)
    size = root.size(root.path(item.path))
    if size is None:
        return f"listed in {MANIFEST} but not in the cache: fetched again"
    if item.size is not None and item.size != known["size"]:
        return f"the index now says {item.size:,} bytes, {known['size']:,} were fetched: fetched again"
    changed = root.local and "sha256" in known and sha256_file(Path(root.path(item.path))) != known["sha256"]
    if size != known["size"] or changed:
        return f"changed since it was fetched (not the recorded size and sha256 of {MANIFEST}): fetched again"
    return None


def _download_all(
    todo: list[Item],
    root: Root,
    local_dir: Path,
    manifest: dict,
    report: FetchReport,
    parallel: int,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    progress: Callable[[str, int, int | None], None] | None,
) -> None:
    """Download ``todo`` in parallel into ``report`` and ``manifest`` (written after each file, so
    an interrupted fetch keeps its records). Ctrl-C stops every download at its next chunk, drops
    the ones not started, records what finished and marks the report interrupted; a second Ctrl-C
    stops at once."""
    stop = threading.Event()

    def interrupted(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        report.interrupted = True

    def one(item: Item) -> dict:
        if stop.is_set():  # queued before the interrupt: never started
            raise _Stopped

        def chunk(n: int) -> None:
            if stop.is_set():
                raise _Stopped
            if progress:
                progress(item.path, n, item.size)

        record = download(item, local_dir, retries, backoff_s, timeout_s, progress=chunk)
        if not root.local:
            _upload(root, local_dir / item.path, item, record["size"])
        return record

    def settle(item: Item, future) -> None:
        try:
            record = future.result()
        except _Missing:
            for day in item.dates:
                report.missing.append({"source": item.source, "date": day, "reason": f"HTTP 404 for {item.url}"})
        except FetchError as exc:
            report.failed.append(
                {"source": item.source, "url": item.url, "dates": list(item.dates), "reason": str(exc)}
            )
        except (_Stopped, CancelledError):
            pass  # its partial file (if any) is kept; the next run resumes it
        else:
            manifest["files"][item.path] = record
            report.fetched.append({"path": item.path, **record})
            report.bytes += record["size"]
            _write_manifest(root, manifest)

    # Ctrl-C is taken as "stop" (the main thread's wait is woken by the signal): the downloads
    # stop between chunks and every result is settled here, none lost half-recorded.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupted) if main else None
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        futures = {pool.submit(one, item): item for item in todo}
        for future in as_completed(futures):
            settle(futures[future], future)
            if stop.is_set():
                for waiting in futures:
                    waiting.cancel()  # not started yet: never started
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if main:
            signal.signal(signal.SIGINT, previous)


def _check_server(url: str, option: str) -> None:
    """A server option is an http(s) URL with a host: a ConfigError naming it before any request."""
    parts = urllib.parse.urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{option} {url!r}: give the server as http(s)://host[:port][/path]")


def _check_options(parallel: int, retries: int, backoff_s: float, timeout_s: float) -> None:
    """A ConfigError naming the option whose value is out of its range (urllib3 refuses a timeout
    of 0 or less and overflows on inf; a huge retry count overflows the backoff)."""
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ConfigError(f"--parallel {parallel}: from 1 to {MAX_PARALLEL}")
    if not 0 <= retries <= MAX_RETRIES:
        raise ConfigError(f"--retries {retries}: from 0 to {MAX_RETRIES}")
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise ConfigError(f"--timeout {timeout_s:g}: seconds, more than 0 and at most {MAX_TIMEOUT_S:g}")
    if not (math.isfinite(backoff_s) and 0 <= backoff_s <= MAX_BACKOFF_S):
        raise ConfigError(f"backoff_s {backoff_s:g}: seconds, from 0 to {MAX_BACKOFF_S:g}")


def _upload(root: Root, local: Path, item: Item, size: int) -> None:
    """Put a checked download into an object-store cache and drop the local copy; an upload that
    fails or lands short is a FetchError (the file is fetched again on the next run)."""
    dest = root.path(item.path)
    try:
        root.upload(local, dest)
        landed = root.size(dest)
    except OSError as exc:
        landed, why = None, f"upload to {root.name}/{item.path} failed ({hide(str(exc), root.uri)})"
    else:
        why = f"{root.name}/{item.path} has {landed} bytes after the upload, not {size:,}"
    local.unlink()  # checked or not, a staged copy is never reused: the next run downloads afresh
    if landed != size:
        raise FetchError(f"{item.url}: {why}")


def _write_manifest(cache: Root, manifest: dict) -> None:
    with cache.reporting(f"writing {MANIFEST}", FetchError):
        cache.write_bytes(cache.path(MANIFEST), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


# --- from the cache to an ingest --------------------------------------------------------------------


@dataclass
class CachedInputs:
    """What ``data ingest --cache`` reads for a range of service dates."""

    inputs: list[str]  # 'path::format' specs for ``etl.ingest``
    gtfs_feeds: list[tuple[str, list[dt.date]]]  # zips with the days each is in force on, newest first
    missing_days: list[str] = field(default_factory=list)  # days in the range with no LAMP file
    days_without_gtfs: list[str] = field(default_factory=list)  # LAMP days no cached GTFS zip covers


def cached_inputs(
    cache: str | Path,
    start: dt.date,
    end: dt.date,
    stage: Path | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> CachedInputs:
    """The cached files (``fetch.json``) covering ``start``..``end``: the LAMP subway and bus days,
    and the GTFS zip in force on each of them. A file listed but gone or changed since (its size) is
    an error naming it; nothing cached for the range is an error saying what to fetch. An object-store
    cache's files are copied to the local (or shared) folder ``stage`` first, each checked against its
    recorded sha256 (a copy already there that matches is reused). A damaged entry that may cover
    the range is an error naming it (``data fetch`` for its dates repairs it)."""
    root = open_root(cache, filesystem, what="--cache")
    if not root.local and stage is None:
        raise ConfigError(f"--cache {root.name}: an object-store cache needs a local folder to copy its files to")
    with root.reporting(f"reading {MANIFEST}"):
        files = read_manifest(root)["files"]
    days = {d.isoformat() for d in date_range(start, end)}
    inputs, zips = [], {}
    formats = {"lamp-subway": "lamp", "lamp-bus": "lamp_bus"}
    newest: dict[str, tuple[str, str]] = {}  # day -> (fetched_at, zip): a day two zips claim gets the last fetched
    covered: set[str] = set()
    for path, record in sorted(files.items()):
        dates = _entry_dates(record)
        if dates is not None and not days & set(dates):
            continue  # a damaged entry for other days does not stop this range
        why = entry_problem(record)
        if why:
            raise DataError(
                f"{root.name}/{MANIFEST}: entry {path!r}: {why}; `mbta-ray data fetch` for its dates fetches "
                "it again and repairs the entry"
            )
        mine = sorted(days & set(dates))
        full = _local_copy(root, path, record, stage)
        source = record.get("source")
        if source in formats:
            inputs.append(f"{full}::{formats[source]}")
            covered.update(mine)
        elif source == "gtfs":
            for d in mine:
                newest[d] = max(newest.get(d, ("", "")), (str(record.get("fetched_at", "")), str(full)))
    if not inputs:
        raise DataError(
            f"{root.name}: no LAMP file cached for {start}..{end}; run `mbta-ray data fetch --from {start} "
            f"--until {end} --cache {root.name}` first"
        )
    for d, (_, path) in newest.items():
        zips.setdefault(path, []).append(dt.date.fromisoformat(d))
    feeds = sorted(((p, sorted(ds)) for p, ds in zips.items()), key=lambda f: max(f[1]), reverse=True)  # newest first
    return CachedInputs(inputs, feeds, sorted(days - covered), sorted(covered - set(newest)))


def ingest_staging(root: str | Path, cache: str | Path) -> Path | None:
    """Where ``data ingest`` copies an object-store cache's files: ``<root>/fetched/<hash of the
    URI>`` (under the artifacts root, which every node of a cluster shares); None for a local cache."""
    where = open_root(cache, what="--cache")
    return None if where.local else Path(root) / "fetched" / _staging_key(where)


def _local_copy(root: Root, path: str, record: dict, stage: Path | None) -> Path:
    """The cached file ``path`` as a local file: itself in a local cache, else a checked copy in
    ``stage``. A listed file that is gone or has changed is a DataError naming it."""
    if not _SAFE_PATH.fullmatch(path) or ".." in path.split("/"):
        raise DataError(f"{root.name}/{MANIFEST}: {path!r} is not a path this module writes")
    where = root.path(path)
    with root.reporting(f"reading {path}"):
        if root.size(where) != record.get("size"):
            raise DataError(f"{root.name}/{path}: listed in {MANIFEST} but missing or changed; fetch it again")
        if root.local:
            if "sha256" in record and sha256_file(Path(where)) != record["sha256"]:
                raise DataError(f"{root.name}/{path}: changed since it was fetched (its sha256); fetch it again")
            return Path(where)
        local = stage / path
        if local.is_file() and sha256_file(local) == record.get("sha256"):
            return local  # copied before, and still what was fetched
        root.download(where, local)
    if sha256_file(local) != record.get("sha256"):
        local.unlink()
        raise DataError(f"{root.name}/{path}: its sha256 is not the one {MANIFEST} records; fetch it again")
    return local
