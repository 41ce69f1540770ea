"""`mbta-ray data fetch` against a real local HTTP server with MBTA's URL layouts: a 404 day, a
connection dropped mid-file (resumed with a Range request), a corrupt file, a day the index does not
list, the GTFS feed in force per date. No test reaches the internet."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import signal
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mbta_ray import fetch
from mbta_ray.errors import ConfigError, DataError
from mbta_ray.paths import LAMP_SAMPLE


class ArchiveServer:
    """Serves ``files`` (path -> bytes) with HTTP Range support; a path in ``drop_once`` has its
    connection closed halfway through the first time it is asked for, one in ``busy_once`` answers
    503 the first time. Knobs for the adversarial tests: ``etag`` sends each file's ETag and honours
    If-Range; ``redirects`` (path -> Location) answer 302; a path in ``no_length`` is sent without
    Content-Length (so a drop is a clean end of the body); one in ``restart_ranges`` answers a Range
    request with 206 and the whole file from byte 0."""

    def __init__(self, files: dict[str, bytes], drop_once: set[str] = frozenset(), busy_once: set[str] = frozenset()):
        self.files, self.drop_once, self.busy_once = dict(files), set(drop_once), set(busy_once)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.if_ranges: list[str | None] = []
        self.etag = False
        self.redirects: dict[str, str] = {}
        self.no_length: set[str] = set()
        self.restart_ranges: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 -- the http.server API
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                server.if_ranges.append(self.headers.get("If-Range"))
                body = server.files.get(self.path)
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"' if body is not None and server.etag else None
                if rng and etag and self.headers.get("If-Range") not in (None, etag):
                    rng = None  # the file changed since the partial one: the whole of it
                if self.path in server.busy_once:
                    server.busy_once.discard(self.path)
                    self.send_error(503)
                    return
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                if start >= len(body):
                    self.send_error(416)
                    return
                if rng and self.path in server.restart_ranges:
                    start = 0
                part = body[start:]
                self.send_response(206 if rng else 200)
                if self.path not in server.no_length:
                    self.send_header("Content-Length", str(len(part)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                if self.path in server.drop_once:
                    server.drop_once.discard(self.path)
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.connection.close()  # the rest never comes
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _zip(name: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("stops.txt", f"stop_id,stop_name\n{name},{name}\n")
    return out.getvalue()


@pytest.fixture
def archive(tmp_path):
    lamp = LAMP_SAMPLE.read_bytes()  # a real LAMP file (parquet)
    bus = pd.DataFrame({"service_date": ["20240207"], "route_id": ["1"]}).to_parquet()
    subway = "/lamp/subway-on-time-performance-v1"
    index = "service_date,file_url,size_bytes,last_modified\n" + "".join(
        f"{d},https://performancedata.mbta.com{subway}/{d}-subway-on-time-performance-v1.parquet,{size},2024-02-09\n"
        for d, size in (("2024-02-06", len(lamp)), ("2024-02-07", len(lamp)), ("2024-02-08", 1000))
    )  # 2024-02-09 is not listed; 02-08 is corrupt on the server
    feeds = (
        "feed_start_date,feed_end_date,feed_version,archive_url,archive_note\n"
        "20240207,20240315,Winter 2024 v2,{url}/archive/20240207.zip,\n"
        "20231215,20240210,Winter 2024,{url}/archive/20231215.zip,\n"
    )
    files = {
        f"{subway}/index.csv": index.encode(),
        f"{subway}/2024-02-06-subway-on-time-performance-v1.parquet": lamp,
        f"{subway}/2024-02-07-subway-on-time-performance-v1.parquet": lamp,
        f"{subway}/2024-02-08-subway-on-time-performance-v1.parquet": b"PAR1 but not really" + b"\0" * 981,
        "/lamp/bus_vehicle_events/20240206.parquet": bus,
        "/lamp/bus_vehicle_events/20240207.parquet": bus,
        "/lamp/bus_vehicle_events/20240209.parquet": bus,  # 20240208 has no file: a 404
        "/archive/20240207.zip": _zip("new"),
        "/archive/20231215.zip": _zip("old"),
    }
    server = ArchiveServer(
        files,
        drop_once={f"{subway}/2024-02-07-subway-on-time-performance-v1.parquet"},
        busy_once={"/archive/archived_feeds.txt", "/lamp/bus_vehicle_events/20240206.parquet"},
    )
    server.files["/archive/archived_feeds.txt"] = feeds.format(url=server.url).encode()
    yield server
    server.close()


def _fetch(server: ArchiveServer, cache: Path, **kw) -> fetch.FetchReport:
    return fetch.fetch(
        fetch.SOURCES, dt.date(2024, 2, 6), dt.date(2024, 2, 9), cache,
        performance_url=server.url, cdn_url=server.url, parallel=3, retries=2, backoff_s=0.01, timeout_s=5, **kw,
    )  # fmt: skip


def test_fetch_downloads_resumes_reports_and_records(archive, tmp_path):
    cache = tmp_path / "cache"
    seen: dict[str, int] = {}
    report = _fetch(archive, cache, progress=lambda path, n, total: seen.__setitem__(path, seen.get(path, 0) + n))
    fetched = {f["path"] for f in report.fetched}
    old_zip, new_zip = (fetch._gtfs_path(f"{archive.url}/archive/{d}.zip") for d in ("20231215", "20240207"))
    assert fetched == {
        "lamp-subway/2024-02-06-subway-on-time-performance-v1.parquet",
        "lamp-subway/2024-02-07-subway-on-time-performance-v1.parquet",
        "lamp-bus/20240206.parquet",
        "lamp-bus/20240207.parquet",
        "lamp-bus/20240209.parquet",
        old_zip,
        new_zip,
    }
    # GTFS zips are named by their URL's name and a digest of the URL (two feeds never share a file).
    assert old_zip.startswith("gtfs/20231215-") and new_zip.startswith("gtfs/20240207-")
    # Missing days are reported, never fatal: the bus 404 and the subway day the index does not list.
    assert {(m["source"], m["date"]) for m in report.missing} == {
        ("lamp-bus", "2024-02-08"),
        ("lamp-subway", "2024-02-09"),
    }
    assert any("404" in m["reason"] for m in report.missing)
    # The corrupt file is named by its URL and not kept.
    (failed,) = report.failed
    assert failed["dates"] == ["2024-02-08"] and "2024-02-08-subway-on-time-performance-v1.parquet" in failed["reason"]
    assert "not a readable parquet" in failed["reason"] or "the index says" in failed["reason"]
    assert not list(cache.glob("lamp-subway/2024-02-08*"))
    # The dropped connection was resumed from where it stopped (a Range request), and the file is whole.
    dropped = "/lamp/subway-on-time-performance-v1/2024-02-07-subway-on-time-performance-v1.parquet"
    ranges = archive.gets(dropped)
    assert ranges[0] is None and len(ranges) == 2 and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert (
        cache / "lamp-subway/2024-02-07-subway-on-time-performance-v1.parquet"
    ).read_bytes() == LAMP_SAMPLE.read_bytes()
    assert not list(cache.rglob("*.part"))
    # A busy server (503) is asked again, for an index and for a file alike.
    assert len(archive.gets("/archive/archived_feeds.txt")) == 2
    assert len(archive.gets("/lamp/bus_vehicle_events/20240206.parquet")) == 2
    # Each service date gets the GTFS in force that day (the newest feed where two overlap).
    manifest = json.loads((cache / fetch.MANIFEST).read_text())
    files = manifest["files"]
    assert files[old_zip]["dates"] == ["2024-02-06"]
    assert files[new_zip]["dates"] == ["2024-02-07", "2024-02-08", "2024-02-09"]
    for path, record in files.items():  # size and checksum recorded per file
        data = (cache / path).read_bytes()
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["url"].startswith(archive.url)
    assert seen["lamp-bus/20240206.parquet"] == files["lamp-bus/20240206.parquet"]["size"]
    # A second run fetches nothing it already has.
    before = len(archive.requests)
    again = _fetch(archive, cache)
    assert not again.fetched and len(again.cached) == 7 and len(again.failed) == 1
    assert {p for p, _ in archive.requests[before:]} <= {
        "/lamp/subway-on-time-performance-v1/index.csv",
        "/archive/archived_feeds.txt",
        "/lamp/bus_vehicle_events/20240208.parquet",
        "/lamp/subway-on-time-performance-v1/2024-02-08-subway-on-time-performance-v1.parquet",
    }


def test_fetch_cli_says_what_happened_in_lines(archive, tmp_path):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    runner = CliRunner()
    cache = tmp_path / "c"
    args = ["data", "fetch", "--from", "2024-02-06", "--until", "2024-02-07", "--cache", str(cache)]
    args += ["--performance-url", archive.url, "--cdn-url", archive.url, "--source", "lamp-bus", "--source", "gtfs"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fetched lamp-bus/20240206.parquet" in result.output and "0 failed" in result.output
    bad = runner.invoke(app, ["data", "fetch", "--from", "2024-02-30", "--cache", str(cache)])
    assert bad.exit_code == 2 and "--from '2024-02-30'" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["data", "fetch", "--from", "2024-02-06", "--source", "lamp-train", "--cache", str(cache)])
    assert bad.exit_code == 2 and "--source 'lamp-train'" in bad.output
    failing = runner.invoke(
        app,
        ["data", "fetch", "--from", "2024-02-08", "--source", "lamp-subway", "--cache", str(cache),
         "--performance-url", archive.url, "--retries", "0"],
    )  # fmt: skip
    assert failing.exit_code == 1 and "failed lamp-subway 2024-02-08" in failing.output
    # Ingest from the cache: its options go together, and a range with no subway file says what to fetch.
    for bad_args, says in (
        (["--cache", str(cache)], "--cache and --from go together"),
        (["x.parquet", "--cache", str(cache), "--from", "2024-02-06"], "INPUTS or --cache"),
        (["--cache", str(cache), "--from", "2024-03-01"], "run `mbta-ray data fetch --from 2024-03-01"),
        (["--cache", str(cache), "--from", "2024-02-06"], "not a valid 'lamp_bus' file"),  # the test's 2 columns
    ):
        bad = runner.invoke(app, ["data", "ingest", *bad_args, "--root", str(tmp_path / "art")])
        assert bad.exit_code == 2 and says in bad.output and "Traceback" not in bad.output, bad.output


def test_date_range_and_its_errors():
    assert fetch.date_range(dt.date(2024, 2, 28), dt.date(2024, 3, 1)) == [
        dt.date(2024, 2, 28),
        dt.date(2024, 2, 29),
        dt.date(2024, 3, 1),
    ]
    with pytest.raises(ConfigError, match="before --from"):
        fetch.date_range(dt.date(2024, 3, 1), dt.date(2024, 2, 1))


def _gtfs_zip(stop_ids: list[str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        rows = "".join(f"{s},{s},,{42.0 + i * 0.01},-71.0\n" for i, s in enumerate(stop_ids))
        z.writestr("stops.txt", "stop_id,stop_name,parent_station,stop_lat,stop_lon\n" + rows)
    return out.getvalue()


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_ingest_from_the_cache_by_date_checks_each_day_against_its_gtfs(ray_local, tmp_path, where, request):
    """Three fetched LAMP days and two GTFS feeds: stop S4 is in the older feed only, so its rows
    are good on the day that feed is in force and quarantined on the later days; the days split
    train / valid / test. The same from a cache in an S3 bucket."""
    from conftest import write_lamp

    from mbta_ray.etl import EtlConfig, ingest
    from tests.test_etl import _days_trips

    subway = "/lamp/subway-on-time-performance-v1"
    files, index = {}, "service_date,file_url,size_bytes\n"
    for day, rows in _days_trips(3, per_day=2).items():
        iso = f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}"
        data = write_lamp(tmp_path / f"{iso}.parquet", rows).read_bytes()
        files[f"{subway}/{iso}-subway-on-time-performance-v1.parquet"] = data
        index += f"{iso},x,{len(data)}\n"
    files[f"{subway}/index.csv"] = index.encode()
    files["/archive/old.zip"] = _gtfs_zip(["S0", "S1", "S2", "S3", "S4"])
    files["/archive/new.zip"] = _gtfs_zip(["S0", "S1", "S2", "S3"])
    server = ArchiveServer(files)
    server.files["/archive/archived_feeds.txt"] = (
        "feed_start_date,feed_end_date,archive_url\n"
        f"20240206,20240331,{server.url}/archive/new.zip\n"
        f"20240101,20240205,{server.url}/archive/old.zip\n"
    ).encode()
    cache = tmp_path / "cache" if where == "folder" else request.getfixturevalue("s3_bucket")
    stage = fetch.ingest_staging(tmp_path / "art", cache)
    try:
        report = fetch.fetch(
            ["lamp-subway", "gtfs"], dt.date(2024, 2, 5), dt.date(2024, 2, 7), cache,
            performance_url=server.url, cdn_url=server.url, retries=0, timeout_s=5, staging=tmp_path / "staging",
        )  # fmt: skip
    finally:
        server.close()
    assert not report.failed and not report.missing
    cached = fetch.cached_inputs(cache, dt.date(2024, 2, 5), dt.date(2024, 2, 7), stage=stage)
    assert len(cached.inputs) == 3 and not cached.missing_days
    assert [(Path(p).name.split("-")[0], [str(d) for d in days]) for p, days in cached.gtfs_feeds] == [
        ("new", ["2024-02-06", "2024-02-07"]),
        ("old", ["2024-02-05"]),
    ]
    result = ingest(cached.inputs, root=tmp_path / "art", config=EtlConfig(k=2), gtfs_feeds=cached.gtfs_feeds)
    q = pq.read_table(result.path / "quarantine").to_pandas()
    unknown = q[q.reason == "unknown_stop"]
    assert set(unknown.stop_id) == {"S4"}
    assert sorted(pd.to_datetime(unknown.service_date).dt.strftime("%Y-%m-%d").unique()) == ["2024-02-06", "2024-02-07"]
    assert result.manifest["counts"]["quarantined_by_reason"] == {"unknown_stop": 4}  # 2 trips x 2 days
    assert result.manifest["days_by_split"]["lamp"] == {
        "train": ["2024-02-05"], "valid": ["2024-02-06"], "test": ["2024-02-07"]
    }  # fmt: skip
    assert [Path(f["path"]).name.split("-")[0] for f in result.manifest["gtfs_feeds"]] == ["new", "old"]
    assert Path(result.manifest["gtfs_stops"]["path"]).name.startswith("new-")  # what a model trained on it serves with
    # The range names the days: asked for one outside the cache, it says what to fetch.
    with pytest.raises(DataError, match="data fetch --from 2024-03-01"):
        fetch.cached_inputs(cache, dt.date(2024, 3, 1), dt.date(2024, 3, 2), stage=stage)


def test_gtfs_zips_are_read_in_place_and_each_day_has_its_own_stops(tmp_path):
    from mbta_ray.gtfs import Stops, stop_table

    old, new = tmp_path / "old.zip", tmp_path / "new.zip"
    old.write_bytes(_gtfs_zip(["A", "B", "GONE"]))
    new.write_bytes(_gtfs_zip(["A", "B", "NEW"]))
    assert Stops.load(str(new)).coords.index.tolist() == ["A", "B", "NEW"]
    assert stop_table(str(old))["stop_id"].tolist() == ["A", "B", "GONE"]
    d1, d2, d3 = dt.date(2024, 2, 5), dt.date(2024, 2, 6), dt.date(2024, 3, 1)
    stops = Stops.from_feeds([(str(new), [d2]), (str(old), [d1])])
    ids = pd.Series(["GONE", "GONE", "NEW", "NEW", "GONE", "ELSEWHERE"])
    days = pd.Series([d1, d2, d1, d2, d3, d2])
    # Each row against its day's feed; a day no feed covers: against any of them.
    assert stops.known(ids, days).tolist() == [True, False, False, True, True, False]
    assert stops.known(ids).tolist() == [True, True, True, True, True, False]
    with pytest.raises(DataError, match="already have a GTFS feed"):
        Stops.from_feeds([(str(new), [d1, d2]), (str(old), [d1])])
    no_stops = tmp_path / "bad.zip"
    with zipfile.ZipFile(no_stops, "w") as z:
        z.writestr("routes.txt", "route_id\nRed\n")
    with pytest.raises(DataError, match="without stops.txt"):
        Stops.load(str(no_stops))
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.zip"):
        Stops.load(str(tmp_path / "junk.zip"))


@pytest.mark.parametrize(
    ("lat", "why"), [("abc", "stop_lat 'abc' is not a coordinate"), ("999", "stop_lat '999' is not a coordinate")]
)
def test_a_stop_whose_coordinates_are_no_coordinates_is_refused_naming_it(tmp_path, lat, why):
    """A stop in the wrong place would put every distance to it wrong: an error naming the feed,
    the stop and the value; a stop without coordinates (GTFS allows it for nodes) is fine."""
    from mbta_ray.gtfs import Stops, stop_table

    feed = tmp_path / "feed.zip"
    with zipfile.ZipFile(feed, "w") as z:
        z.writestr("stops.txt", f"stop_id,stop_name,parent_station,stop_lat,stop_lon\nA,A,,42.1,-71\nB,B,,{lat},-71\n")
    for read in (Stops.load, stop_table):
        with pytest.raises(DataError, match=f"feed.zip: stop B: {why} in \\[-90, 90\\]"):
            read(str(feed))
    with zipfile.ZipFile(feed, "w") as z:
        z.writestr("stops.txt", "stop_id,stop_name,parent_station,stop_lat,stop_lon\nA,A,,42.1,-71\nN,N,,,\n")
    assert Stops.load(str(feed)).coords.loc["A"].tolist() == [42.1, -71.0]
    assert stop_table(str(feed))["lat"].isna().tolist() == [False, True]


def test_cached_inputs_give_each_day_one_feed_and_say_what_is_missing(tmp_path):
    """Two zips claiming a day (the archive index changed between fetches): the one fetched last
    wins; a LAMP day no zip covers is named."""
    cache = tmp_path / "c"
    files = {
        "lamp-subway/2024-02-05-subway-on-time-performance-v1.parquet": (b"a", "lamp-subway", ["2024-02-05"], "t1"),
        "lamp-subway/2024-02-06-subway-on-time-performance-v1.parquet": (b"b", "lamp-subway", ["2024-02-06"], "t1"),
        "gtfs/a.zip": (b"zip-a", "gtfs", ["2024-02-05"], "2024-02-01T00:00:00+00:00"),
        "gtfs/b.zip": (b"zip-b", "gtfs", ["2024-02-05"], "2024-02-09T00:00:00+00:00"),
    }
    manifest = {"files": {}}
    for path, (data, source, dates, when) in files.items():
        (cache / path).parent.mkdir(parents=True, exist_ok=True)
        (cache / path).write_bytes(data)
        manifest["files"][path] = {
            "source": source, "dates": dates, "size": len(data), "fetched_at": when,
            "sha256": hashlib.sha256(data).hexdigest(),
        }  # fmt: skip
    (cache / fetch.MANIFEST).write_text(json.dumps(manifest))
    got = fetch.cached_inputs(cache, dt.date(2024, 2, 5), dt.date(2024, 2, 7))
    assert [(Path(p).name, [str(d) for d in ds]) for p, ds in got.gtfs_feeds] == [("b.zip", ["2024-02-05"])]
    assert got.days_without_gtfs == ["2024-02-06"] and got.missing_days == ["2024-02-07"]
    assert [spec.rsplit("::", 1)[1] for spec in got.inputs] == ["lamp", "lamp"]
    (cache / "gtfs/b.zip").write_bytes(b"zip-B")  # the same size, other bytes
    with pytest.raises(DataError, match=r"gtfs/b.zip: changed since it was fetched \(its sha256\)"):
        fetch.cached_inputs(cache, dt.date(2024, 2, 5), dt.date(2024, 2, 5))
    (cache / "gtfs/b.zip").write_bytes(b"changed")
    with pytest.raises(DataError, match="missing or changed"):
        fetch.cached_inputs(cache, dt.date(2024, 2, 5), dt.date(2024, 2, 5))


def test_a_malformed_url_is_one_error_not_retried():
    with pytest.raises(fetch.FetchError, match="performancedata.mbta.com/lamp"):
        fetch.plan(["lamp-subway"], [dt.date(2024, 2, 5)], performance_url="performancedata.mbta.com")


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3-compatible HTTP server on 127.0.0.1 (moto's), with an empty bucket; yields the
    ``s3://`` URI of a folder in it, endpoint and region in its query (as a user of MinIO would)."""
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")  # moto accepts any; pyarrow must not look further
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override=http://{host}:{port}&region=us-east-1"
    import uuid

    import pyarrow.fs as pafs

    bucket = f"mbta-archive-{uuid.uuid4().hex[:8]}"  # moto's buckets outlive its server in this process
    pafs.FileSystem.from_uri(f"s3://{bucket}?{query}&allow_bucket_creation=true")[0].create_dir(bucket)
    yield f"s3://{bucket}/cache?{query}"
    server.stop()


@pytest.fixture
def gcs_bucket():
    """A GCS emulator (gcp-storage-emulator) on 127.0.0.1 with a bucket; yields (path in it, a
    pyarrow GcsFileSystem talking to it anonymously: a gs:// URI would look for real credentials)."""
    import socket
    import uuid

    import pyarrow.fs as pafs
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bucket = f"mbta-archive-{uuid.uuid4().hex[:8]}"
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    yield f"{bucket}/cache", pafs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{port}", scheme="http")
    server.stop()


@pytest.fixture(params=["s3", "gcs"])
def object_store(request) -> tuple[str, object]:
    """(cache, filesystem) for fetch: an s3:// URI (filesystem None), or a path in a GcsFileSystem."""
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket"), None
    return request.getfixturevalue("gcs_bucket")


def test_fetch_into_an_object_store_cache_and_ingest_from_it(archive, object_store, tmp_path):
    """Files are downloaded (resumed, checked) in a local staging folder, then uploaded; fetch.json
    lives in the bucket; a second run fetches nothing; ``cached_inputs`` copies a range's files to a
    local folder and checks each against its recorded sha256."""
    from mbta_ray.storage import open_root

    cache, fs = object_store
    staging = tmp_path / "staging"
    report = _fetch(archive, cache, staging=staging, filesystem=fs)
    assert len(report.fetched) == 7 and len(report.failed) == 1 and len(report.missing) == 2
    bucket = open_root(cache, fs)
    assert not bucket.local
    manifest = json.loads(bucket.read_bytes(bucket.path(fetch.MANIFEST)))
    for path, record in manifest["files"].items():
        data = bucket.read_bytes(bucket.path(path))
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    lamp_path = "lamp-subway/2024-02-07-subway-on-time-performance-v1.parquet"
    assert bucket.read_bytes(bucket.path(lamp_path)) == LAMP_SAMPLE.read_bytes()  # resumed in staging, whole
    assert bucket.size(bucket.path("lamp-subway/2024-02-08-subway-on-time-performance-v1.parquet")) is None
    assert not [p for p in staging.rglob("*") if p.is_file()]  # uploaded copies are not kept twice
    before = len(archive.requests)
    again = _fetch(archive, cache, staging=staging, filesystem=fs)
    assert not again.fetched and len(again.cached) == 7
    assert not any(p.endswith((".zip", "20240206.parquet")) for p, _ in archive.requests[before:])

    stage = tmp_path / "stage"
    cached = fetch.cached_inputs(cache, dt.date(2024, 2, 6), dt.date(2024, 2, 7), stage=stage, filesystem=fs)
    paths = [Path(spec.rsplit("::", 1)[0]) for spec in cached.inputs]
    assert len(paths) == 4 and all(p.is_relative_to(stage) and p.is_file() for p in paths)
    assert (stage / lamp_path).read_bytes() == LAMP_SAMPLE.read_bytes()
    assert [Path(p).name.split("-")[0] for p, _ in cached.gtfs_feeds] == ["20240207", "20231215"]
    # A bucket object changed behind the manifest's back: a new size is caught at once, the same
    # size with other bytes by the checksum of the copy.
    (stage / lamp_path).unlink()
    with bucket.fs.open_output_stream(bucket.path(lamp_path)) as f:
        f.write(b"x" * len(LAMP_SAMPLE.read_bytes()))
    with pytest.raises(DataError, match="sha256"):
        fetch.cached_inputs(cache, dt.date(2024, 2, 7), dt.date(2024, 2, 7), stage=stage, filesystem=fs)
    assert not (stage / lamp_path).exists()
    with bucket.fs.open_output_stream(bucket.path(lamp_path)) as f:
        f.write(b"short")
    with pytest.raises(DataError, match="missing or changed"):
        fetch.cached_inputs(cache, dt.date(2024, 2, 7), dt.date(2024, 2, 7), stage=stage, filesystem=fs)
    with pytest.raises(ConfigError, match="needs a local folder"):
        fetch.cached_inputs(cache, dt.date(2024, 2, 7), dt.date(2024, 2, 7), filesystem=fs)


def test_fetch_cli_into_s3_names_the_bucket_not_its_query(archive, s3_bucket, tmp_path, monkeypatch):
    """The CLI takes an s3:// cache as given (not as a local path) and never prints the URI's query,
    which may hold keys."""
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default staging folder
    args = ["data", "fetch", "--from", "2024-02-06", "--until", "2024-02-07", "--cache", s3_bucket]
    args += ["--performance-url", archive.url, "--cdn-url", archive.url, "--source", "lamp-bus"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fetched lamp-bus/20240207.parquet" in result.output
    assert f"{s3_bucket.split('?')[0]}/fetch.json" in result.output and "endpoint_override" not in result.output
    assert (tmp_path / "xdg" / "mbta_ray" / "fetch-staging").is_dir()
    assert not Path("s3:").exists() and not (Path.cwd() / "s3:").exists()
    # Ingest copies the range's files under ROOT/fetched/ and reads them there (this test's bus file
    # has 2 columns: the reader names the copy).
    art = tmp_path / "art"
    bad = CliRunner().invoke(app, ["data", "ingest", "--cache", s3_bucket, "--from", "2024-02-07", "--root", str(art)])
    assert bad.exit_code == 2 and "not a valid 'lamp_bus' file" in bad.output, bad.output
    (copy,) = (art / "fetched").glob("*/lamp-bus/20240207.parquet")
    assert copy.read_bytes() == archive.files["/lamp/bus_vehicle_events/20240207.parquet"]
    assert "endpoint_override" not in bad.output


def test_a_cache_uri_pyarrow_cannot_open_is_named():
    with pytest.raises(ConfigError, match="--cache 'nosuch://bucket/x'"):
        fetch.fetch(["gtfs"], dt.date(2024, 2, 5), dt.date(2024, 2, 5), "nosuch://bucket/x")


def test_object_store_failures_are_one_error_without_keys(tmp_path, monkeypatch):
    """An endpoint nobody listens on: fetch and ingest say which cache and what failed, in one
    error, and neither the URI's query nor its user:secret part is repeated."""
    import socket

    from mbta_ray.storage import shown

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"s3://KEYID:SECRETKEY@mbta/cache?region=us-east-1&endpoint_override=http://127.0.0.1:{port}"
    assert shown(uri) == "s3://mbta/cache" and shown("/data/a?b") == "/data/a?b"  # a local name is a name
    with pytest.raises(fetch.FetchError, match=r"^s3://mbta/cache: reading the cache failed") as err:
        fetch.fetch(["gtfs"], dt.date(2024, 2, 5), dt.date(2024, 2, 5), uri, staging=tmp_path, retries=0)
    assert "SECRETKEY" not in str(err.value) and "endpoint_override" not in str(err.value)
    with pytest.raises(DataError, match=r"^s3://mbta/cache: reading fetch.json failed") as err:
        fetch.cached_inputs(uri, dt.date(2024, 2, 5), dt.date(2024, 2, 5), stage=tmp_path)
    assert "SECRETKEY" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot open it") as err:
        fetch.fetch(["gtfs"], dt.date(2024, 2, 5), dt.date(2024, 2, 5), "s3a://KEYID:SECRETKEY@b/x?secret=1")
    assert "SECRETKEY" not in str(err.value) and "secret=1" not in str(err.value)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("timeout_s", 0, "--timeout 0:"),
        ("timeout_s", -1, "--timeout -1:"),
        ("timeout_s", float("nan"), "--timeout nan:"),
        ("timeout_s", float("inf"), "--timeout inf:"),
        ("parallel", 0, "--parallel 0:"),
        ("parallel", 10**6, "--parallel 1000000:"),
        ("retries", -1, "--retries -1:"),
        ("retries", 10**6, "--retries 1000000:"),  # 2 ** 10**6 seconds of backoff overflow a float
        ("backoff_s", float("nan"), "backoff_s nan:"),
    ],
)
def test_out_of_range_options_are_named_before_any_request(tmp_path, option, value, says):
    """urllib3 refuses a timeout of 0 or less, overflows on inf; each is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=f"^{says}"):
        fetch.fetch(["gtfs"], dt.date(2024, 2, 5), dt.date(2024, 2, 5), tmp_path / "c", **{option: value})
    assert not (tmp_path / "c").exists()


def test_fetch_cli_names_a_bad_timeout_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    for value in ("0", "-1", "nan", "inf"):
        args = ["data", "fetch", "--from", "2024-02-06", "--cache", str(tmp_path / "c"), f"--timeout={value}"]
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code == 2 and f"--timeout {value}:" in bad.output and "Traceback" not in bad.output


def test_bad_lamp_index_rows_are_reported_by_row_and_skipped(tmp_path):
    """Each bad row of index.csv is a warning naming the URL and row; its day is missing with that
    row as the reason (never fetched unchecked); a row whose date cannot be read is named for the
    days the index does not list; an index with no usable row is refused."""
    lamp = LAMP_SAMPLE.read_bytes()
    subway = "/lamp/subway-on-time-performance-v1"
    index = (
        "service_date,file_url,size_bytes\n"
        f"2024-02-06,x,{len(lamp)}\n"  # row 2: the good one
        "2024-02-07,x,abc\n"  # 3
        "2024-02-08,x,inf\n"  # 4
        "2024-02-09,x\n"  # 5: a short row
        "2024-02-10,x,-5\n"  # 6
        "2024-02-11,x,1e30\n"  # 7
        "Feb 12,x,5\n"  # 8: which day?
    )
    files = {f"{subway}/index.csv": index.encode()}
    for day in ("2024-02-06", "2024-02-07", "2024-02-08", "2024-02-09", "2024-02-10", "2024-02-11", "2024-02-12"):
        files[f"{subway}/{day}-subway-on-time-performance-v1.parquet"] = lamp
    server = ArchiveServer(files)
    index_url = f"{server.url}{subway}/index.csv"
    try:
        report = fetch.fetch(
            ["lamp-subway"], dt.date(2024, 2, 6), dt.date(2024, 2, 12), tmp_path / "c",
            performance_url=server.url, retries=0, timeout_s=5,
        )  # fmt: skip
        assert [f["dates"] for f in report.fetched] == [["2024-02-06"]] and not report.failed
        reasons = {m["date"]: m["reason"] for m in report.missing}
        assert reasons["2024-02-07"] == f"{index_url}: row 3: size_bytes 'abc' is not a size in bytes (a whole number from 1 to 1,000,000,000,000)"  # fmt: skip
        assert reasons["2024-02-08"].startswith(f"{index_url}: row 4: size_bytes 'inf'")
        assert reasons["2024-02-09"] == f"{index_url}: row 5: 2 field(s), the header has 3"
        assert reasons["2024-02-10"].startswith(f"{index_url}: row 6: size_bytes '-5'")
        assert reasons["2024-02-11"].startswith(f"{index_url}: row 7: size_bytes '1e30'")
        assert reasons["2024-02-12"] == f"not listed in {index_url} (row(s) 8 could not be read)"
        assert [w["where"] for w in report.warnings] == [f"{index_url} row {n}" for n in range(3, 9)]
        assert report.warnings[-1]["reason"] == "service_date 'Feb 12' is not YYYY-MM-DD: skipped"
        assert report.summary().endswith("6 day(s) missing, 0 failed, 6 warning(s)")
        # Nothing usable at all: the index is refused, naming it and its first bad row.
        server.files[f"{subway}/index.csv"] = b"service_date,size_bytes\n2024-02-07,abc\n2024-02-08\n"
        with pytest.raises(DataError, match=r"index.csv: no usable row \(row 2: size_bytes 'abc'.*; 1 more bad row"):
            fetch.plan(["lamp-subway"], [dt.date(2024, 2, 7)], performance_url=server.url)
    finally:
        server.close()


def test_bad_gtfs_index_rows_are_reported_and_never_replaced_by_an_older_feed(tmp_path):
    """A short row of archived_feeds.txt may be the feed in force on any day: a day an older feed
    would cover is missing (naming the row), not given that older feed; a newer feed still wins
    where it covers the day. A row with a bad URL stands only for its own dates."""
    server = ArchiveServer({"/archive/new.zip": _zip("new"), "/archive/old.zip": _zip("old")})
    server.files["/archive/archived_feeds.txt"] = (
        "feed_start_date,feed_end_date,archive_url\n"
        f"20240201,20240229,{server.url}/archive/new.zip\n"  # row 2
        "20240115\n"  # row 3: a short row, its dates unknown
        f"20231201,20240131,{server.url}/archive/old.zip\n"  # row 4
        "20231101,20231130,http://elsewhere/feeds/\n"  # row 5: no .zip name
        f"20231001,20231130,{server.url}/archive/old.zip\n"  # row 6
    ).encode()
    index_url = f"{server.url}/archive/archived_feeds.txt"
    try:
        days = [dt.date(2024, 2, 1), dt.date(2024, 1, 31), dt.date(2023, 11, 15), dt.date(2023, 10, 15)]
        items, missing, warnings = fetch.plan(["gtfs"], days, cdn_url=server.url)
        new, old = (fetch._gtfs_path(f"{server.url}/archive/{n}.zip") for n in ("new", "old"))
        assert [(i.path, i.dates) for i in items] == [(new, ("2024-02-01",))]
        reasons = {m["date"]: m["reason"] for m in missing}
        assert reasons == {
            "2024-01-31": f"{index_url}: row 3: 1 field(s), the header has 3, and it may be the feed in force",
            "2023-11-15": f"{index_url}: row 3: 1 field(s), the header has 3, and it may be the feed in force",
            "2023-10-15": f"{index_url}: row 3: 1 field(s), the header has 3, and it may be the feed in force",
        }
        assert [(w["where"], w["reason"]) for w in warnings] == [
            (f"{index_url} row 3", "1 field(s), the header has 3: skipped"),
            (f"{index_url} row 5", "archive_url 'http://elsewhere/feeds/' does not end in a plain .zip file name: skipped"),
        ]  # fmt: skip
        # Without the short row: the bad URL's row is in force on its own dates only.
        lines = server.files["/archive/archived_feeds.txt"].decode().splitlines(keepends=True)
        server.files["/archive/archived_feeds.txt"] = "".join(lines[:2] + lines[3:]).encode()
        items, missing, _ = fetch.plan(["gtfs"], days, cdn_url=server.url)
        assert [(i.path, i.dates) for i in items] == [
            (new, ("2024-02-01",)),
            (old, ("2024-01-31", "2023-10-15")),
        ]
        assert [(m["date"], m["reason"]) for m in missing] == [
            ("2023-11-15", f"{index_url}: row 4: archive_url 'http://elsewhere/feeds/' does not end in a plain .zip file name (the feed in force then)"),
        ]  # fmt: skip
        server.files["/archive/archived_feeds.txt"] = b"feed_start_date,feed_end_date,archive_url\n20240201,20240229\n"
        with pytest.raises(DataError, match=r"archived_feeds.txt: no usable row \(row 2: 2 field\(s\)"):
            fetch.plan(["gtfs"], days, cdn_url=server.url)
    finally:
        server.close()


def test_damaged_manifest_entries_are_fetched_again_and_named(archive, tmp_path):
    """fetch.json entries of the wrong shape (an int, no dates, dates as one string) are warned
    about and their files fetched again, which repairs them; a damaged entry for other days is kept
    as it is. ``cached_inputs`` names a damaged entry that may concern its range."""
    cache = tmp_path / "c"
    lamp = "lamp-subway/2024-02-06-subway-on-time-performance-v1.parquet"
    size = len(LAMP_SAMPLE.read_bytes())
    (cache / "lamp-subway").mkdir(parents=True)
    (cache / lamp).write_bytes(LAMP_SAMPLE.read_bytes())  # the right size: only the entry is damaged
    entries = {
        lamp: 5,
        "lamp-bus/20240206.parquet": {"size": 1, "source": "lamp-bus"},
        "lamp-bus/20240207.parquet": {"size": 1, "source": "lamp-bus", "dates": "2024-02-07"},
        "lamp-bus/20240301.parquet": {"size": "big", "source": "lamp-bus", "dates": ["2024-03-01"]},
    }
    (cache / fetch.MANIFEST).write_text(json.dumps({"files": entries}))
    report = fetch.fetch(
        ["lamp-subway", "lamp-bus"], dt.date(2024, 2, 6), dt.date(2024, 2, 7), cache,
        performance_url=archive.url, retries=2, backoff_s=0.01, timeout_s=5,
    )  # fmt: skip
    fetched = {f["path"] for f in report.fetched}
    assert fetched == {
        lamp,
        "lamp-bus/20240206.parquet",
        "lamp-bus/20240207.parquet",
        "lamp-subway/2024-02-07-subway-on-time-performance-v1.parquet",
    }
    where = f"{cache}/{fetch.MANIFEST} entry"
    assert [(w["where"], w["reason"]) for w in report.warnings] == [
        (f"{where} 'lamp-bus/20240206.parquet'", "'dates' is null, not a list of YYYY-MM-DD dates: its file is fetched again"),
        (f"{where} 'lamp-bus/20240207.parquet'", "'dates' is \"2024-02-07\", not a list of YYYY-MM-DD dates: its file is fetched again"),
        (f"{where} 'lamp-bus/20240301.parquet'", "'size' is \"big\", not a number of bytes: kept; a fetch of its dates repairs it"),
        (f"{where} {lamp!r}", "not an object but 5: its file is fetched again"),
    ]  # fmt: skip
    files = json.loads((cache / fetch.MANIFEST).read_text())["files"]
    assert files[lamp]["dates"] == ["2024-02-06"] and files[lamp]["size"] == size
    assert files["lamp-bus/20240207.parquet"]["dates"] == ["2024-02-07"]
    assert files["lamp-bus/20240301.parquet"] == entries["lamp-bus/20240301.parquet"]  # kept, not lost
    assert all(fetch.entry_problem(r) is None for p, r in files.items() if p != "lamp-bus/20240301.parquet")
    # The ingest side: a damaged entry outside the range is passed over, one inside it is named.
    assert len(fetch.cached_inputs(cache, dt.date(2024, 2, 6), dt.date(2024, 2, 6)).inputs) == 2
    with pytest.raises(DataError, match=r"fetch.json: entry 'lamp-bus/20240301.parquet': 'size' is \"big\""):
        fetch.cached_inputs(cache, dt.date(2024, 3, 1), dt.date(2024, 3, 1))
    files["lamp-bus/20240207.parquet"]["dates"] = "2024-02-07"  # a string is not read as its characters
    (cache / fetch.MANIFEST).write_text(json.dumps({"files": files}))
    with pytest.raises(DataError, match=r"entry 'lamp-bus/20240207.parquet': 'dates' is \"2024-02-07\""):
        fetch.cached_inputs(cache, dt.date(2024, 2, 6), dt.date(2024, 2, 6))


def test_something_in_the_way_in_the_cache_fails_that_file_only(archive, tmp_path):
    """A folder where a file or its .part goes, a file where a source's folder goes: that file
    fails with a message naming the path; the other files are fetched."""
    cache = tmp_path / "c"
    subway = cache / "lamp-subway"
    (subway / "2024-02-06-subway-on-time-performance-v1.parquet").mkdir(parents=True)
    (subway / "2024-02-07-subway-on-time-performance-v1.parquet.part").mkdir()
    (cache / "lamp-bus").write_text("not a folder")
    report = _fetch(archive, cache)
    assert {f["path"] for f in report.fetched} == {
        fetch._gtfs_path(f"{archive.url}/archive/{d}.zip") for d in ("20231215", "20240207")
    }
    reasons = {(f["source"], *f["dates"]): f["reason"] for f in report.failed}
    assert reasons[("lamp-subway", "2024-02-06")].endswith(
        f"cannot write {subway}/2024-02-06-subway-on-time-performance-v1.parquet: it is a folder; move it away"
    )
    assert reasons[("lamp-subway", "2024-02-07")].endswith(
        f"cannot write {subway}/2024-02-07-subway-on-time-performance-v1.parquet.part: it is not a plain file; move it away"
    )
    for day in ("2024-02-06", "2024-02-07", "2024-02-09"):  # 02-08 is a 404 before anything is written
        assert reasons[("lamp-bus", day)].endswith(f"{cache}/lamp-bus is a file, not a folder; move it away"), reasons
    assert (cache / "lamp-bus").read_text() == "not a folder"  # left as it was


def _bus_server(days: dict[str, bytes]) -> ArchiveServer:
    return ArchiveServer({f"/lamp/bus_vehicle_events/{d}.parquet": body for d, body in days.items()})


def _fetch_bus(server: ArchiveServer, cache: Path, first: str, last: str | None = None, **kw) -> fetch.FetchReport:
    options = {"parallel": 1, "retries": 2, "backoff_s": 0.01, "timeout_s": 5, **kw}
    first_day = dt.date.fromisoformat(first)
    return fetch.fetch(
        ["lamp-bus"], first_day, dt.date.fromisoformat(last) if last else first_day, cache,
        performance_url=server.url, cdn_url=server.url, **options,
    )  # fmt: skip


def _parquet(n: int, seed: int = 0) -> bytes:
    return pd.DataFrame({"service_date": ["20240207"] * n, "route_id": [str(seed + i) for i in range(n)]}).to_parquet()


def test_a_partial_file_is_resumed_only_when_it_is_known_to_be_the_same_file(tmp_path):
    """Never splice two versions: a .part left by something else is fetched afresh; one this module
    left with the server's ETag is resumed with If-Range (and comes whole if the file changed); a
    206 that does not continue the partial file starts again from zero."""
    new, old = _parquet(40_000, seed=1), _parquet(40_000, seed=2)  # larger than two chunks
    assert new != old
    server = _bus_server({"20240206": new})
    server.etag = True
    cache = tmp_path / "c"
    dest = cache / "lamp-bus/20240206.parquet"
    try:
        dest.parent.mkdir(parents=True)
        Path(str(dest) + ".part").write_bytes(old[: len(old) // 2])  # of unknown origin
        report = _fetch_bus(server, cache, "2024-02-06")
        assert dest.read_bytes() == new and [r for _, r in server.requests] == [None]
        assert not list(cache.rglob("*.part*"))
        # A drop in a first run leaves the .part with the ETag beside it; the next run resumes it.
        dest.unlink()
        (cache / fetch.MANIFEST).unlink()
        server.drop_once.add("/lamp/bus_vehicle_events/20240206.parquet")
        report = _fetch_bus(server, cache, "2024-02-06", retries=0)
        assert report.failed and "partial file is kept to resume" in report.failed[0]["reason"]
        assert Path(str(dest) + ".part.json").is_file()
        server.requests.clear()
        server.if_ranges.clear()
        report = _fetch_bus(server, cache, "2024-02-06")
        assert dest.read_bytes() == new and not report.failed
        assert server.requests[0][1].startswith("bytes=") and server.if_ranges[0].startswith('"')
        # The file changed on the server since the partial one: If-Range brings the whole new file.
        dest.unlink()
        (cache / fetch.MANIFEST).unlink()
        server.drop_once.add("/lamp/bus_vehicle_events/20240206.parquet")
        _fetch_bus(server, cache, "2024-02-06", retries=0)
        server.files["/lamp/bus_vehicle_events/20240206.parquet"] = old
        report = _fetch_bus(server, cache, "2024-02-06")
        assert dest.read_bytes() == old and not report.failed
        # A server that answers a Range with the file from byte 0: restarted, never appended.
        server.etag = False
        server.files["/lamp/bus_vehicle_events/20240207.parquet"] = new
        server.drop_once.add("/lamp/bus_vehicle_events/20240207.parquet")
        server.restart_ranges.add("/lamp/bus_vehicle_events/20240207.parquet")
        report = _fetch_bus(server, cache, "2024-02-07")
        assert (cache / "lamp-bus/20240207.parquet").read_bytes() == new and not report.failed
    finally:
        server.close()


def test_damaged_zips_bad_redirects_and_cut_transfers_fail_one_file_each(tmp_path):
    """A zip whose deflate stream is corrupt, a redirect to a URL that cannot be parsed: that file
    fails, named, and the others are fetched; a body cut short with no Content-Length to tell is
    fetched again (it fails its check), not given up at once."""
    good = _zip("new")
    broken = bytearray(_zip_deflated("stops"))
    broken[45:60] = b"\xff" * 15  # inside the compressed data of stops.txt
    server = ArchiveServer(
        {
            "/archive/a.zip": bytes(broken),
            "/archive/b.zip": good,
            "/lamp/bus_vehicle_events/20240206.parquet": _parquet(500),
        }
    )
    server.files["/archive/archived_feeds.txt"] = (
        "feed_start_date,feed_end_date,archive_url\n"
        f"20240207,20240207,{server.url}/archive/a.zip\n"
        f"20240206,20240206,{server.url}/archive/b.zip\n"
        f"20240205,20240205,{server.url}/archive/c.zip\n"
    ).encode()
    server.redirects["/archive/c.zip"] = "http://[::1/x"
    server.no_length.add("/lamp/bus_vehicle_events/20240206.parquet")
    server.drop_once.add("/lamp/bus_vehicle_events/20240206.parquet")
    try:
        report = fetch.fetch(
            ["gtfs", "lamp-bus"], dt.date(2024, 2, 5), dt.date(2024, 2, 7), tmp_path / "c",
            performance_url=server.url, cdn_url=server.url, parallel=2, retries=2, backoff_s=0.01, timeout_s=5,
        )  # fmt: skip
    finally:
        server.close()
    reasons = {f["dates"][0]: f["reason"] for f in report.failed}
    assert "not a readable zip file" in reasons["2024-02-07"] and "a.zip" in reasons["2024-02-07"]
    assert reasons["2024-02-05"].startswith(f"{server.url}/archive/c.zip: ") and "IPv6" in reasons["2024-02-05"]
    assert {f["path"].split("/")[0] for f in report.fetched} == {"gtfs", "lamp-bus"}
    assert len(server.gets("/lamp/bus_vehicle_events/20240206.parquet")) == 2  # cut, checked, fetched again
    assert not list((tmp_path / "c").rglob("*.part"))


def _zip_deflated(name: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "stops.txt",
            "stop_id,stop_name,stop_lat,stop_lon\n" + "".join(f"{name}{i},{name},42,-71\n" for i in range(200)),
        )
    return out.getvalue()


def test_two_feeds_named_alike_keep_their_own_files_and_a_mirror_serves_the_cdn_urls(tmp_path):
    """Feeds whose URLs end in the same name get a file each, and every day its own feed; an index
    that lists MBTA's CDN URLs (a mirror of it) is fetched from the mirror."""
    server = ArchiveServer({"/archive/old/MBTA_GTFS.zip": _zip("old"), "/archive/new/MBTA_GTFS.zip": _zip("new")})
    server.files["/archive/archived_feeds.txt"] = (
        "feed_start_date,feed_end_date,archive_url\n"
        "20240207,20240315,https://cdn.mbta.com/archive/new/MBTA_GTFS.zip\n"
        f"20231215,20240206,{server.url}/archive/old/MBTA_GTFS.zip\n"
    ).encode()
    cache = tmp_path / "c"
    try:
        report = fetch.fetch(
            ["gtfs"], dt.date(2024, 2, 6), dt.date(2024, 2, 8), cache,
            performance_url=server.url, cdn_url=server.url, retries=0, timeout_s=5,
        )  # fmt: skip
    finally:
        server.close()
    assert not report.failed and not report.missing
    by_dates = {tuple(f["dates"]): f for f in report.fetched}
    assert by_dates[("2024-02-06",)]["url"] == f"{server.url}/archive/old/MBTA_GTFS.zip"
    assert by_dates[("2024-02-07", "2024-02-08")]["url"] == f"{server.url}/archive/new/MBTA_GTFS.zip"
    paths = [f["path"] for f in report.fetched]
    assert len(set(paths)) == 2 and all(p.startswith("gtfs/MBTA_GTFS-") for p in paths)


def test_a_rerun_fetches_again_what_changed_on_disk_or_upstream(tmp_path):
    """A cached file altered since (same size, other bytes) or one the index now announces at
    another size is fetched again, with a warning saying why; an untouched one is not."""
    lamp = LAMP_SAMPLE.read_bytes()
    subway = "/lamp/subway-on-time-performance-v1"
    name = "2024-02-06-subway-on-time-performance-v1.parquet"
    index = f"service_date,size_bytes\n2024-02-06,{len(lamp)}\n"
    server = ArchiveServer({f"{subway}/index.csv": index.encode(), f"{subway}/{name}": lamp})
    cache = tmp_path / "c"
    run = lambda: fetch.fetch(  # noqa: E731
        ["lamp-subway"], dt.date(2024, 2, 6), dt.date(2024, 2, 6), cache,
        performance_url=server.url, cdn_url=server.url, retries=0, timeout_s=5,
    )  # fmt: skip
    try:
        assert len(run().fetched) == 1
        assert len(run().cached) == 1
        data = bytearray((cache / "lamp-subway" / name).read_bytes())
        data[100:110] = b"0123456789"
        (cache / "lamp-subway" / name).write_bytes(bytes(data))
        again = run()
        assert len(again.fetched) == 1 and "changed since it was fetched" in again.warnings[0]["reason"]
        assert (cache / "lamp-subway" / name).read_bytes() == lamp
        server.files[f"{subway}/{name}"] = lamp + b"\0" * 10  # not parquet any more: fails its check
        server.files[f"{subway}/index.csv"] = f"service_date,size_bytes\n2024-02-06,{len(lamp) + 10}\n".encode()
        changed = run()
        assert f"the index now says {len(lamp) + 10:,} bytes" in changed.warnings[0]["reason"]
        assert changed.failed and not changed.cached
    finally:
        server.close()


def test_one_source_whose_index_fails_does_not_stop_the_others(tmp_path):
    server = _bus_server({"20240206": _parquet(10)})  # no index.csv: a 404 for lamp-subway's index
    try:
        report = fetch.fetch(
            ["lamp-subway", "lamp-bus"], dt.date(2024, 2, 6), dt.date(2024, 2, 7), tmp_path / "c",
            performance_url=server.url, cdn_url=server.url, retries=0, timeout_s=5,
        )  # fmt: skip
    finally:
        server.close()
    (failed,) = report.failed
    assert failed["source"] == "lamp-subway" and failed["dates"] == ["2024-02-06..2024-02-07"]
    assert "index.csv: HTTP 404" in failed["reason"]
    assert [f["path"] for f in report.fetched] == ["lamp-bus/20240206.parquet"]


def test_ctrl_c_stops_the_downloads_records_what_finished_and_a_rerun_resumes(tmp_path):
    """An interrupt (here from the first chunk of the second file) stops every download at its
    next chunk and starts no other: the report says so, the finished file is recorded, and the
    partial one is resumed by the next run (If-Range with its ETag)."""
    days = {f"2024020{d}": _parquet(100_000, seed=d) for d in (5, 6, 7)}  # several chunks each
    server = _bus_server(days)
    server.etag = True
    cache = tmp_path / "c"
    chunks: list[str] = []

    def progress(path: str, n: int, total) -> None:
        chunks.append(path)
        if path.endswith("20240206.parquet") and chunks.count(path) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: it wakes the main thread's wait
            time.sleep(0.5)  # the main thread takes it: this download's next chunk sees it stopped

    try:
        report = _fetch_bus(server, cache, "2024-02-05", "2024-02-07", progress=progress)
        assert report.interrupted and report.summary().endswith(", interrupted")
        assert [f["path"] for f in report.fetched] == ["lamp-bus/20240205.parquet"]
        assert json.loads((cache / fetch.MANIFEST).read_text())["files"].keys() == {"lamp-bus/20240205.parquet"}
        assert (cache / "lamp-bus/20240206.parquet.part").is_file()
        assert not server.gets("/lamp/bus_vehicle_events/20240207.parquet")  # never started
        again = _fetch_bus(server, cache, "2024-02-05", "2024-02-07")
        assert not again.interrupted and len(again.fetched) == 2 and len(again.cached) == 1
        assert server.gets("/lamp/bus_vehicle_events/20240206.parquet")[-1].startswith("bytes=")
        for d, body in days.items():
            assert (cache / f"lamp-bus/{d}.parquet").read_bytes() == body
    finally:
        server.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "20240101"], "--from '20240101': give a date as YYYY-MM-DD"),
        (["--from", "2024-W05-1"], "give a date as YYYY-MM-DD"),
        (["--from", "0001-01-01"], "a service date from 2000 to 2099"),
        (["--from", "2024-02-06", "--cache", ""], "--cache '': give a folder"),
        (["--from", "2024-02-06", "--performance-url", "performancedata.mbta.com"], "--performance-url"),
        (["--from", "2024-02-06", "--cdn-url", "ftp://cdn.mbta.com"], "--cdn-url 'ftp://cdn.mbta.com'"),
    ],
)
def test_fetch_options_that_are_no_date_or_server_are_named(tmp_path, args, says):
    from typer.testing import CliRunner

    from mbta_ray.cli import app

    cache = ["--cache", str(tmp_path / "c")] if "--cache" not in args else []
    result = CliRunner().invoke(app, ["data", "fetch", *args, *cache])
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, result.output


def test_a_day_the_index_lists_twice_with_two_sizes_is_missing_naming_the_row(tmp_path):
    from mbta_ray.fetch import _read_lamp_index

    index = b"service_date,size_bytes\n2024-02-06,10\n2024-02-06,10\n2024-02-07,10\n2024-02-07,12\n2024-02-07,10\n"
    listed, bad = _read_lamp_index(index, "http://x/index.csv")
    assert listed == {"2024-02-06": 10}  # the same row twice is one day
    assert [(b.line, b.day, b.why) for b in bad] == [
        (5, "2024-02-07", "2024-02-07 is listed more than once, with other size_bytes"),
        (6, "2024-02-07", "2024-02-07 is listed more than once, with other size_bytes"),
    ]


def test_a_zip_with_its_stops_in_a_folder_says_where_they_are(tmp_path):
    from mbta_ray.gtfs import Stops

    feed = tmp_path / "nested.zip"
    with zipfile.ZipFile(feed, "w") as z:
        z.writestr("gtfs/stops.txt", "stop_id,stop_lat,stop_lon\nA,42,-71\n")
    with pytest.raises(DataError, match="without stops.txt is not a GTFS feed \\(it has gtfs/stops.txt"):
        Stops.load(str(feed))


def test_an_index_with_a_column_named_twice_is_refused_naming_it():
    from mbta_ray.fetch import _read_lamp_index

    with pytest.raises(DataError, match="index.csv: columns named more than once: service_date"):
        _read_lamp_index(b"service_date,size_bytes,service_date\n2024-02-06,10,2024-02-07\n", "http://x/index.csv")
