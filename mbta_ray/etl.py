"""The ETL (a Ray Data read, then Ray tasks over buckets): MBTA source files -> validated events
-> (u -> s) example rows -> versioned splits.

Stages (Ray Data for the read, Ray tasks over buckets after it, so the same code runs on a laptop
or a multi-node cluster that shares the output folder):

1. read (a Ray Data pipeline): one task per file piece; each reader maps its format to canonical
   events and row checks flag bad rows (``map_batches``); each task writes its rows into the folder
   of their bucket's group (the bucket: a hash of route, direction and service day, so whole lines
   and days, so whole trips), the only pass over the input and no shuffle.
2. trip checks: per group of buckets, a task reads its folder, checks the trips bucket by bucket,
   and writes the clean events once (one file per bucket) and the quarantined ones; it returns the
   buckets' trip table.
3. splits: each trip goes to train/valid/test by its start time (per source, since the sources cover
   different periods), so no trip is in two splits and valid/test come after train; a source of
   several service days splits at day boundaries (``split_cutoffs``).
4. segment medians from the training pairs (a task counts its buckets' pairs' travel times per
   segment into part folders by segment; one task per part takes the exact medians), then
   pairs + features for all splits (per bucket again), written as parquet per split. A task
   takes several buckets in turn (``_bucket_groups``, ``_map_buckets``). Neither pass holds more
   than a bucket of events at a time (the counts pass holds the segments of its group's training
   pairs: four columns, ~5 rows per event), and nothing is shuffled (issue 16: the three sort shuffles
   of the materialized events were 80 % of the ETL's time at 10 M events, and the object store most
   of its memory). The real-time features of a bucket's lines come from
   ``realtime.history.EventHistory``: sorted searches over stop events, a ``NetworkState`` replay
   for GTFS-realtime lines.

Every source row ends up as a good event or in the quarantine table with its reason, and the written
pair count is checked against an independent count from the trip sizes.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from mbta_ray import paths, versioning
from mbta_ray.config import EtlConfig
from mbta_ray.defaults import DATASET_NAME
from mbta_ray.errors import ConfigError, MissingFileError
from mbta_ray.features import (
    HIST_MEDIAN,
    SEGMENT_KEY,
    TRAVEL_COUNT,
    compute_features,
    example_frame,
    expected_pair_count,
    medians_from_counts,
    pair_events,
    pair_positions,
    travel_counts,
    trip_starts,
)
from mbta_ray.gtfs import Stops
from mbta_ray.models.bundle import SEGMENT_MEDIANS_FILE
from mbta_ray.paths import DEFAULT_INPUTS, DEFAULT_STOPS
from mbta_ray.realtime.features import observations_from_events
from mbta_ray.realtime.feeds import read_vehicle_positions
from mbta_ray.realtime.history import EventHistory
from mbta_ray.realtime.state import trip_keys as state_trip_keys
from mbta_ray.runtime import ensure_ray, use_system_arrow_pool
from mbta_ray.schema import (
    EXAMPLE_SCHEMA,
    FEATURE_CODE_VERSION,
    FEATURES,
    QUARANTINE_SCHEMA,
    SPLITS,
    TARGET,
    TRIP_KEY,
    conform,
)
from mbta_ray.sources import InputFile, inspect_input, plan_pieces, read_piece
from mbta_ray.sources.gtfsrt import READER as GTFSRT_READER
from mbta_ray.timeutil import epoch_seconds
from mbta_ray.validate import ValidationConfig, check_rows, check_trips, trip_keys

# Every ETL process imports this module before its first task runs (a Ray worker to unpickle the
# task, the driver, the pandas baseline): all of them allocate Arrow memory with the system allocator.
use_system_arrow_pool()

#: Events after the trip checks carry these besides the quarantine schema's columns.
#: (``reason`` is null on the clean ones: the files written per bucket must say it may be.)
_WORK_SCHEMA = (
    QUARANTINE_SCHEMA.set(
        QUARANTINE_SCHEMA.get_field_index("reason"), QUARANTINE_SCHEMA.field("reason").with_nullable(True)
    )
    .append(pa.field(TRIP_KEY, pa.string()))
    .append(pa.field("bucket", pa.int64()))
)
#: The work files (the read's rows, the clean buckets, the travel counts) are read back once or
#: twice and deleted: LZ4 writes and reads them faster than parquet's default Snappy (500,000 clean
#: events: written in 0.16 s against 0.22 s, read back into pandas in 0.09 s against 0.13 s).
_WORK_COMPRESSION = "lz4"
#: The read's rows carry their bucket's group too: the folder they are written to.
_ROWS_SCHEMA = _WORK_SCHEMA.append(pa.field("group", pa.int64()))
_TRIP_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        (TRIP_KEY, pa.string()),
        ("trip_start", EXAMPLE_SCHEMA.field("trip_start").type),
        ("trip_size", pa.int64()),
        ("service_date", pa.date32()),
    ]
)
_SEGMENT_SCHEMA = pa.schema(
    [("route_id", pa.string()), ("from_stop_id", pa.string()), ("to_stop_id", pa.string()), (TARGET, pa.float64())]
)
#: The travel counts files (``features.travel_counts`` of the segments).
_COUNTS_SCHEMA = _SEGMENT_SCHEMA.append(pa.field(TRAVEL_COUNT, pa.int64()))
#: ``segment_medians.parquet`` (``features.medians_from_counts``), whatever pandas made of an empty one.
_MEDIANS_SCHEMA = pa.schema(
    [*(pa.field(key, pa.string()) for key in SEGMENT_KEY), (HIST_MEDIAN, pa.float64()), ("n", pa.int64())]
)
_SPLIT_EXAMPLE_SCHEMA = EXAMPLE_SCHEMA.append(pa.field("split", pa.string()))


class EtlIntegrityError(RuntimeError):
    """An internal count check failed: the dataset would be wrong, so nothing is written. A bug,
    not a user's mistake: it is not an ``MbtaRayError`` and keeps its traceback."""


@dataclass
class IngestResult:
    name: str
    version: str
    path: Path
    created: bool
    manifest: dict = field(default_factory=dict)


# --- stage functions (run inside Ray tasks) -----------------------------------------------------


def _read_pieces(batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
    for piece_json in batch["piece"]:
        yield from read_piece(json.loads(piece_json))


def _row_checks(table: pa.Table, config: ValidationConfig, stops: Stops | None, group_of: np.ndarray) -> pa.Table:
    """Row checks on a batch of events; their trip keys, buckets and the buckets' groups
    (``group_of[bucket]``)."""
    df = table.to_pandas()
    df = check_rows(df, config, stops)
    keys = trip_keys(df)
    df[TRIP_KEY] = keys
    df["bucket"] = _line_day_buckets(df, len(group_of))
    df["group"] = group_of[df["bucket"].to_numpy()]
    return conform(pa.Table.from_pandas(df, preserve_index=False), _ROWS_SCHEMA)


_LINE_DAY = ("route_id", "direction_id", "service_date")


def _line_day_buckets(df: pd.DataFrame, buckets: int) -> np.ndarray:
    """Each event's bucket: a hash of its route, direction and service day, so every event of a
    line-day lands in one bucket, its trips stay whole and the real-time features see the other
    vehicles of the line. The hash is of the text "route|direction|date" (stable across processes,
    unlike hash()), taken once per distinct line-day of the batch: as text for every row it was a
    third of the row checks."""
    line_day = df.groupby(list(_LINE_DAY), dropna=False, sort=False).ngroup().to_numpy()
    _, first, inverse = np.unique(line_day, return_index=True, return_inverse=True)
    one = df.iloc[first]
    # As an integer: a batch with a missing direction reads int8 as float64 ("1.0"), and its line-days
    # must hash as in batches without one.
    direction = one["direction_id"].astype("Int64").astype("string")
    text = one["route_id"].astype("string") + "|" + direction + "|"
    text = (text + one["service_date"].astype("string")).fillna("")  # a missing part: bucket of ""
    return (pd.util.hash_array(text.to_numpy(dtype=object)) % buckets).astype("int64")[inverse]


def _trip_checks(df: pd.DataFrame) -> pd.DataFrame:
    """Trip checks on the good rows; rows the row checks flagged pass through, so that one read of
    the input feeds both the clean events and the quarantine."""
    good = df["reason"].isna()
    parts = [df[~good]] + ([check_trips(df[good])] if good.any() else [])
    return pd.concat(parts, ignore_index=True)


def _sorted_trips(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values([TRIP_KEY, "stop_sequence", "actual_arrival"], kind="stable").reset_index(drop=True)


def _as_days(df: pd.DataFrame) -> pd.DataFrame:
    """``service_date`` as datetime64: pandas reads Arrow's date32 as Python dates, whose groupby
    ``min`` runs in Python (40 % of a bucket's trip checks)."""
    return df.assign(service_date=pd.to_datetime(df["service_date"]))


def _trip_table(df: pd.DataFrame) -> pa.Table:
    """Per-block partial trip table (a trip may span blocks: ``_combine_trips`` merges the parts)."""
    g = _as_days(df).groupby(TRIP_KEY, sort=False)
    trips = g.agg(
        source=("source", "first"),
        trip_start=("actual_arrival", "min"),
        trip_size=("actual_arrival", "size"),
        service_date=("service_date", "min"),
    ).reset_index()
    return conform(pa.Table.from_pandas(trips, preserve_index=False), _TRIP_SCHEMA)


def _combine_trips(parts: pd.DataFrame) -> pd.DataFrame:
    g = _as_days(parts).groupby(TRIP_KEY, sort=False)
    return g.agg(
        source=("source", "first"),
        trip_start=("trip_start", "min"),
        trip_size=("trip_size", "sum"),
        service_date=("service_date", "min"),
    ).reset_index()


def assign_splits(pairs: pd.DataFrame, cutoffs: dict[str, tuple[pd.Timestamp, pd.Timestamp]]) -> pd.Series:
    """train before the first cutoff of the trip's source, valid before the second, test after."""
    split = pd.Series("train", index=pairs.index, dtype="string")
    for source, (valid_from, test_from) in cutoffs.items():
        mine = pairs["source"] == source
        start = pd.to_datetime(pairs["trip_start"], utc=True)
        split[mine & (start >= valid_from)] = "valid"
        split[mine & (start >= test_from)] = "test"
    return split


def _train_segments(df: pd.DataFrame, k: int, cutoffs: dict) -> pa.Table:
    """(route, u, s, travel seconds) of the training pairs, from pair positions (no pair frame)."""
    events = _sorted_trips(df)
    u, s, _ = pair_positions(events, k)
    arrival = events["actual_arrival"].astype("datetime64[us, UTC]")
    first = trip_starts(events[TRIP_KEY].to_numpy())
    trip_start = arrival.where(pd.Series(first, index=events.index)).ffill()  # as pair_events sets it
    split = assign_splits(
        pd.DataFrame(
            {"source": events["source"].to_numpy()[u], "trip_start": trip_start.to_numpy(dtype="datetime64[us]")[u]}
        ),
        cutoffs,
    )
    train = (split == "train").to_numpy()
    u, s = u[train], s[train]
    us = arrival.to_numpy(dtype="datetime64[us]").astype("int64")
    route, stop = pa.array(events["route_id"]), pa.array(events["stop_id"])
    out = pa.table(
        {
            "route_id": route.take(u),
            "from_stop_id": stop.take(u),
            "to_stop_id": stop.take(s),
            TARGET: pa.array((us[s] - us[u]) / 1e6, pa.float64()),
        }
    )
    return conform(out, _SEGMENT_SCHEMA)


#: Pairs and features are built this many events (whole trips) at a time inside a bucket: the pair
#: frame is ~7x the events and its pandas intermediates several times that.
_PAIR_CHUNK_EVENTS = 50_000


def _trip_ranges(trip: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Row ranges of about ``size`` rows that never cut a trip (rows sorted by trip)."""
    n = len(trip)
    if n <= size:
        return [(0, n)]
    starts = np.flatnonzero(trip_starts(trip))
    idx = np.searchsorted(starts, np.arange(size, n, size))
    bounds = sorted({0, n, *(int(c) for c in starts[idx[idx < len(starts)]])})
    return list(zip(bounds[:-1], bounds[1:]))


#: The source whose archives hold every snapshot (not only arrivals): its lines' state is built from them.
GTFSRT_SOURCE = GTFSRT_READER.name


def line_history(
    events: pd.DataFrame, feed_files: dict[str, tuple[str, ...]] | None = None, before: str | None = None
) -> EventHistory:
    """What a bucket's lines (routes, directions, days) say at any moment. GTFS-realtime lines from
    their archives' own reports, every snapshot known at its feed time: where the vehicles were in
    transit, when they left a stop, their positions (what the race and the live service see).
    Other sources from their stop events, each known at its arrival (departures from the dwell).
    ``feed_files``: the archives' paths by the name events carry in ``source_file``; ``before``: the
    holdout's start, no report published from then on is used."""
    from_feed = (events["source"] == GTFSRT_SOURCE).to_numpy()
    feed = [
        _line_reports(path, group, before)
        for name, group in events[from_feed].groupby("source_file", sort=True)
        for path in (feed_files or {}).get(str(name), ())
    ]
    return EventHistory(observations_from_events(events[~from_feed]), pd.concat(feed) if feed else None)


def _line_reports(path: str, events: pd.DataFrame, before: str | None) -> pd.DataFrame:
    """The VehiclePositions reports of ``path`` on the lines (route, direction, start date) of ``events``."""
    stat = os.stat(path)
    reports = _feed_reports(path, stat.st_mtime_ns, stat.st_size)
    lines = set(
        zip(
            events["route_id"].astype("string"),
            pd.to_numeric(events["direction_id"]).astype("int64"),
            pd.to_datetime(events["service_date"]).dt.strftime("%Y%m%d"),
        )
    )
    keys = zip(reports["route_id"], reports["direction_id"].fillna(-1).astype("int64"), reports["start_date"])
    keep = np.fromiter((k in lines for k in keys), dtype=bool, count=len(reports))
    if before is not None:
        keep &= (reports["feed_timestamp"] < int(pd.Timestamp(before).timestamp())).to_numpy()
    return reports[keep]


@functools.lru_cache(maxsize=2)
def _feed_reports(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """A VehiclePositions archive read once per worker and version of the file (each of its
    buckets asks for it)."""
    return read_vehicle_positions([path]).frame


#: Share of the vehicles at u whose prediction moment is drawn after the arrival (the rest are at it).
IN_TRANSIT_SHARE = 0.5


def prediction_moments(pairs: pd.DataFrame) -> np.ndarray:
    """Each pair's prediction moment, epoch s: one per (trip, u), deterministic. Half are the
    arrival at u; the other half a moment drawn uniformly between it and the arrival at the next
    observed stop, when the vehicle has left u or is still standing there. So the models see the
    time elapsed since u vary as a live client's moments do; what was known at such a moment is
    what the state answers there (nothing of the trip's own later stops)."""
    arrival_u = epoch_seconds(pairs["actual_arrival_u"]).to_numpy()
    # Rows come grouped by (trip, u) with stops ahead ascending: the first row of a group is u -> next.
    trip = pd.factorize(pairs[TRIP_KEY])[0]
    seq = pairs["from_stop_sequence"].to_numpy(dtype="float64")
    first = np.r_[True, (trip[1:] != trip[:-1]) | ~((seq[1:] == seq[:-1]) | (np.isnan(seq[1:]) & np.isnan(seq[:-1])))]
    group = np.cumsum(first) - 1
    # The draw hashes "trip_key|sequence" of each visit (once per visit, not per row): deterministic,
    # and the same wherever the visit's rows are computed.
    firsts = pairs.iloc[np.flatnonzero(first)]
    visit = firsts[TRIP_KEY].astype("string") + "|" + firsts["from_stop_sequence"].astype("string")
    draw = (pd.util.hash_array(visit.fillna("").to_numpy(dtype=object)) % 1_000_003 / 1_000_003)[group]
    next_arrival = pd.Series(np.where(first, epoch_seconds(pairs["actual_arrival_s"]).to_numpy(), np.nan)).ffill()
    gap = np.maximum(next_arrival.to_numpy() - arrival_u, 0)
    later = draw < IN_TRANSIT_SHARE
    delta = np.floor(gap * (draw / IN_TRANSIT_SHARE))  # uniform in [0, gap) given ``later``
    return (arrival_u + np.where(later, delta, 0)).astype("int64")


def realtime_for_pairs(pairs: pd.DataFrame, history: EventHistory) -> pd.DataFrame:
    """The pairs with their real-time features, each as of its prediction moment."""
    return pairs.join(history.features(realtime_queries(pairs)))


def realtime_queries(pairs: pd.DataFrame) -> pd.DataFrame:
    """The real-time feature queries (``realtime.features.QUERY_COLUMNS``) of the pairs, at their
    prediction moments."""
    arrival_u = epoch_seconds(pairs["actual_arrival_u"])
    days, day = pd.factorize(pairs["service_date"])  # a handful of days: format each once
    service = pd.Series(np.asarray(pd.to_datetime(pd.Series(day)).dt.strftime("%Y%m%d"), dtype=object)[days])
    return pd.DataFrame(
        {
            # .array keeps string columns arrow strings (to_numpy would make Python objects of them)
            "trip_key": state_trip_keys(service, pairs["route_id"], pairs["trip_id"]).array,
            "route_id": pairs["route_id"].array,
            "direction_id": pairs["direction_id"].to_numpy(),
            "from_stop_id": pairs["from_stop_id"].array,
            "from_stop_sequence": pairs["from_stop_sequence"].to_numpy(dtype="float64"),
            "to_stop_id": pairs["to_stop_id"].array,
            "hop_from_stop_id": pairs["hop_from_stop_id"].array,
            "arrival_u": arrival_u.to_numpy(),
            "moment": prediction_moments(pairs) if len(pairs) else arrival_u.to_numpy(),
        },
        index=pairs.index,
    )


def _examples(
    df: pd.DataFrame,
    k: int,
    cutoffs: dict,
    stops: Stops | None,
    medians: pd.DataFrame,
    feed_files: dict[str, tuple[str, ...]],
    before: str | None,
) -> pa.Table:
    events = _sorted_trips(df)
    history = line_history(events, feed_files, before)
    tables = []
    for lo, hi in _trip_ranges(events[TRIP_KEY].to_numpy(), _PAIR_CHUNK_EVENTS):
        pairs = realtime_for_pairs(pair_events(events.iloc[lo:hi], k), history)
        feats = compute_features(pairs, stops, medians)
        out = example_frame(feats).assign(split=assign_splits(feats, cutoffs).to_numpy())
        tables.append(conform(pa.Table.from_pandas(out, preserve_index=False), _SPLIT_EXAMPLE_SCHEMA))
    return pa.concat_tables(tables)


def _bucket_file(folder: Path, bucket: int) -> Path:
    return folder / f"bucket-{bucket:05d}.parquet"


def _check_groups(groups: list[int], work: str, quarantine: str) -> pa.Table:
    """Trip checks on each bucket of the groups (every file the read wrote for a group; a group's
    rows are read at once, 8 buckets or ~400,000 events at most), bucket by bucket: the clean
    events are written once per bucket, for the later passes; the quarantined ones to the
    quarantine. Returns the buckets' trip table (their trips are whole: a bucket holds whole lines
    and days)."""
    tables = [_TRIP_SCHEMA.empty_table()]
    for group in groups:
        rows = pq.read_table(Path(work) / "rows" / f"group={group}").to_pandas()
        for bucket, df in rows.groupby("bucket", sort=True):
            tables.append(_check_bucket(df, int(bucket), work, quarantine))
    return pa.concat_tables(tables)


def _check_bucket(df: pd.DataFrame, bucket: int, work: str, quarantine: str) -> pa.Table:
    """``_check_groups`` for one bucket's events."""
    checked = _trip_checks(df)
    bad = checked["reason"].notna()
    if bad.any():
        part = checked[bad].drop(columns=[TRIP_KEY, "bucket"])
        table = conform(pa.Table.from_pandas(part, preserve_index=False), QUARANTINE_SCHEMA)
        pq.write_table(table, _bucket_file(Path(quarantine), bucket))
    clean = checked[~bad]
    pq.write_table(
        conform(pa.Table.from_pandas(clean, preserve_index=False), _WORK_SCHEMA),
        _bucket_file(Path(work) / "clean", bucket),
        compression=_WORK_COMPRESSION,
    )
    return _trip_table(clean) if len(clean) else _TRIP_SCHEMA.empty_table()


def _clean_bucket(work: str, bucket: int, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(_bucket_file(Path(work) / "clean", int(bucket)), columns=columns).to_pandas()


#: What ``_train_segments`` reads of a clean bucket (a third of its columns: the rest is never
#: decoded in the travel counts pass).
_SEGMENT_INPUT = ["source", "route_id", "stop_id", "stop_sequence", "actual_arrival", TRIP_KEY]


def _bucket_segments(buckets: list[int], work: str, k: int, cutoffs: dict, parts: int) -> None:
    """The travel counts (``features.travel_counts``) of the buckets' training pairs, written into
    ``parts`` folders by a hash of the segment (so one segment's counts from every bucket meet in one
    folder), one file per folder for the whole group (a file per bucket and part made thousands of
    small files at 10 M events)."""
    # Counted over the group's pairs at once, not per bucket: a segment's travel times repeat more
    # often among more pairs, so a third fewer count rows to hash, write and read back.
    segments = [_train_segments(_clean_bucket(work, b, _SEGMENT_INPUT), k, cutoffs) for b in buckets]
    counts = travel_counts(pa.concat_tables(segments).to_pandas())
    part = pd.util.hash_pandas_object(counts[SEGMENT_KEY], index=False).to_numpy() % parts
    # Ordered by part once, then sliced (a boolean mask per part cost a fifth of the pass).
    order = np.argsort(part, kind="stable")
    table = pa.Table.from_pandas(counts, preserve_index=False).take(order)
    starts = np.searchsorted(part[order], np.arange(parts + 1))
    for p in range(parts):
        if starts[p + 1] > starts[p]:
            folder = Path(work) / "counts" / f"part={p}"
            folder.mkdir(exist_ok=True)  # not its parents: see _map_buckets
            # Named by the group's first bucket: unique, since no two groups share a bucket.
            part_counts = table.slice(starts[p], starts[p + 1] - starts[p])
            pq.write_table(part_counts, _bucket_file(folder, buckets[0]), compression=_WORK_COMPRESSION)


def _part_medians(parts: list[int], work: str) -> pd.DataFrame:
    """The exact medians of the segments whose counts are in the part folders (all of their counts)."""
    frames = []
    for p in parts:
        folder = Path(work) / "counts" / f"part={int(p)}"
        if folder.is_dir():
            frames.append(medians_from_counts(pq.read_table(folder).to_pandas()))
    if not frames:  # no segment in these parts: an empty frame of the dtypes read counts give
        frames.append(medians_from_counts(_COUNTS_SCHEMA.empty_table().to_pandas()))
    return pd.concat(frames)


def by_split(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Examples with their ``split`` column -> (split, its examples without it) for each split."""
    split = table["split"].to_numpy(zero_copy_only=False)
    examples = table.drop_columns(["split"])
    for s in SPLITS:
        yield s, examples.filter(pa.array(split == s))


def _bucket_examples(buckets: list[int], work: str, examples: str, **kwargs) -> None:
    """Each bucket's examples in turn (a task never holds two buckets' examples), written to one
    file per split for the group, ``examples/<split>/bucket-<first bucket>.parquet`` (a rerun of the
    task after a lost worker rewrites the same files). The rows are counted from the files later
    (``_accounting``)."""
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for b in buckets:
            for split, part in by_split(_examples(_clean_bucket(work, b), **kwargs)):
                if not part.num_rows:
                    continue
                if split not in writers:
                    folder = Path(examples) / split
                    folder.mkdir(exist_ok=True)  # not its parents: see _map_buckets
                    writers[split] = pq.ParquetWriter(_bucket_file(folder, buckets[0]), EXAMPLE_SCHEMA)
                writers[split].write_table(part)
    finally:
        for writer in writers.values():
            writer.close()


#: Buckets per task in the passes whose work per bucket is short (trip checks, travel counts: ~0.15 s
#: at 50,000 events): the trip tables and count files are one per task.
_LIGHT_BUCKETS_PER_TASK = 8
#: The same for the examples pass (~1.5 s per bucket): one examples file per task and split.
_EXAMPLE_BUCKETS_PER_TASK = 2


def _cluster_cpus() -> int:
    """The cluster's CPUs: what the bucket, part and task counts scale with."""
    return int(ray.cluster_resources().get("CPU", 1))


def _bucket_groups(buckets: list[int], per_task: int = 1) -> list[list[int]]:
    """``buckets`` in runs of ``per_task`` or so, one per task (at least 4 tasks per CPU where there
    are buckets enough, so that the last tasks finish together)."""
    tasks = min(len(buckets), max(4 * _cluster_cpus(), -(-len(buckets) // per_task)))
    return [[int(b) for b in run] for run in np.array_split(np.asarray(buckets, np.int64), max(1, tasks)) if len(run)]


def _map_buckets(fn: Callable[..., object], groups: list[list[int]], **shared: object) -> list:
    """``fn(group, **shared)`` for every group, one Ray task each (1 CPU), all submitted at once:
    the raylet queues them and a core that frees up starts the next at once. Each task reads its
    own buckets' files, so no pass after the read shuffles events. (Ray Data's streaming executor
    polls its tasks every 0.1 s and fetches their metadata on a second 0.1 s cycle: a core idled
    ~0.2 s between tasks, measured, 10 s of the examples pass at 10 M events.) ``shared`` goes to
    the object store once, not with every task. If a task fails, the others are cancelled before
    the error goes on (the staging folder they write in is about to be deleted; the tasks make
    only their own leaf folders, so one still running cannot bring it back)."""
    task = ray.remote(num_cpus=1)(fn)
    refs = {name: ray.put(value) for name, value in shared.items()}
    pending = [task.remote(group, **refs) for group in groups]
    try:
        return ray.get(pending)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


# --- driver -----------------------------------------------------------------------------------


def split_cutoffs(
    trips: pd.DataFrame, fractions: tuple[float, float, float]
) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """Per source, the trip start times where valid and test begin. A source of several service
    days splits by day, train on the earlier days and valid and test on later ones (so a model is
    tested on days it never saw, and the day of week means something): with two days valid and
    test share the second by start time. One day splits its trips by start time."""
    cutoffs = {}
    far = pd.Timestamp.max.tz_localize("UTC")
    for source, group in trips.groupby("source"):
        starts = pd.to_datetime(group["trip_start"], utc=True)
        days = sorted(group["service_date"].dropna().unique()) if "service_date" in group else []
        if len(days) >= 2 and fractions[1] + fractions[2] > 0:
            first_of = starts.groupby(group["service_date"].to_numpy()).min()
            valid_day, test_day = _split_days(len(days), fractions)
            valid_from = first_of[days[valid_day]]
            if test_day is None:  # two days: valid and test share the later one by start time
                later = starts[starts >= valid_from].sort_values().reset_index(drop=True)
                share = fractions[1] / (fractions[1] + fractions[2])
                test_from = later[min(int(np.floor(share * len(later))), len(later) - 1)] if fractions[2] > 0 else far
            else:
                test_from = first_of[days[test_day]] if fractions[2] > 0 else far
        else:
            ordered = starts.sort_values().reset_index(drop=True)
            n = len(ordered)
            i_valid = min(int(np.floor(fractions[0] * n)), n - 1)
            i_test = min(int(np.floor((fractions[0] + fractions[1]) * n)), n - 1)
            valid_from = ordered[i_valid] if fractions[1] + fractions[2] > 0 else far
            test_from = ordered[i_test] if fractions[2] > 0 else far
        cutoffs[str(source)] = (valid_from, max(valid_from, test_from))
    return cutoffs


def _split_days(n_days: int, fractions: tuple[float, float, float]) -> tuple[int, int | None]:
    """The index of the first valid day and of the first test day (None: valid and test share the
    last day) among ``n_days`` >= 2 ordered days: at least one day for train, and one for valid and
    test together (each one of its own from three days on, where both are wanted)."""
    if n_days == 2:
        return 1, None
    both = fractions[1] > 0 and fractions[2] > 0
    n_train = min(max(1, round(fractions[0] * n_days)), n_days - (2 if both else 1))
    if not both:  # the one of them wanted starts at n_train (the caller leaves the other empty)
        return n_train, n_train
    n_valid = min(max(1, round(fractions[1] * n_days)), n_days - n_train - 1)
    return n_train, n_train + n_valid


def parse_input_spec(spec: str) -> tuple[str, str | None]:
    """'path' or 'path::format' -> (path, format or None). A file whose own name has '::' in it is
    a path."""
    if "::" in spec and not os.path.exists(spec):
        path, fmt = spec.rsplit("::", 1)
        return path, fmt
    return spec, None


def plan_inputs(specs: list[str]) -> list[InputFile]:
    """Inspect every input before any work starts (fail fast, naming the file)."""
    if not specs:
        raise ConfigError("no inputs given")
    files = [inspect_input(*parse_input_spec(s)) for s in specs]
    seen: dict[str, str] = {}
    for spec, f in zip(specs, files):
        # One file twice (or one file by two names) would read its rows twice: duplicates to quarantine.
        key = os.path.realpath(f.path)
        if key in seen:
            raise ConfigError(f"{spec}: the same file as {seen[key]}; give each input once")
        seen[key] = spec
    return files


def _count_rows(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.rglob("*.parquet"))


def _publish_splits(examples_dir: Path, out: Path) -> None:
    """Move the examples tasks' folders to train/valid/test under ``out`` (a split no task wrote
    becomes an empty folder)."""
    for split in SPLITS:
        src = examples_dir / split
        dst = out / split
        if src.is_dir():
            os.rename(src, dst)
        else:
            dst.mkdir()  # an empty split stays a (empty) folder: readers see zero rows, not an error
            pq.write_table(EXAMPLE_SCHEMA.empty_table(), dst / "empty.parquet")
    shutil.rmtree(examples_dir)


def ingest(
    inputs: list[str] | None = None,
    *,
    root: str | Path = paths.DEFAULT_ROOT,
    name: str = DATASET_NAME,
    config: EtlConfig | None = None,
    stops_path: str | None = DEFAULT_STOPS,
    gtfs_feeds: list[tuple[str, list[dt.date]]] | None = None,
) -> IngestResult:
    """Build (or find) the dataset version for ``inputs`` and return where it is. ``gtfs_feeds``
    (GTFS zips with the service days each is in force on, newest first) replace ``stops_path``:
    each row's stop is checked against the schedule in force on its service date."""
    config = config or EtlConfig()
    files = plan_inputs(list(inputs or DEFAULT_INPUTS))
    feeds = [{**inspect_stops(path), "days": sorted(d.isoformat() for d in days)} for path, days in gtfs_feeds or []]
    # With feeds by day, the newest one is the dataset's stops file: what a model trained on it
    # serves with (coordinates, distances, the stops it answers for).
    stops_file = {k: feeds[0][k] for k in ("path", "sha256")} if feeds else inspect_stops(stops_path)
    checksums = [(f.format, f.sha256) for f in files]
    if stops_file:
        checksums.append(("gtfs_stops", stops_file["sha256"]))
    checksums += [("gtfs_feed", f"{f['sha256']}:{','.join(f['days'])}") for f in feeds]
    version = versioning.compute_version(checksums, config.version_dict(), code_version())
    if versioning.exists(root, name, version):
        return IngestResult(
            name,
            version,
            versioning.version_dir(root, name, version),
            False,
            versioning.load_manifest(root, name, version),
        )

    manifest: dict = {}

    def write(tmp: Path) -> None:
        if gtfs_feeds:
            stops = Stops.from_feeds(gtfs_feeds)
        else:
            stops = Stops.load(stops_path) if stops_path else None
        manifest.update(_run(files, stops, config, tmp))
        manifest.update(
            name=name,
            version=version,
            feature_code_version=code_version(),
            created_at=dt.datetime.now(dt.UTC).isoformat(),
            inputs=[f.to_dict() for f in files],
            gtfs_stops=stops_file,
            **({"gtfs_feeds": feeds} if feeds else {}),
            config=config.version_dict(),
            schema={
                "features": [
                    {"name": f.name, "type": str(f.dtype), "kind": f.kind.value, "optional": f.optional, "doc": f.doc}
                    for f in FEATURES
                ],
                "target": TARGET,
                "columns": EXAMPLE_SCHEMA.names,
            },
        )
        versioning.write_manifest(tmp, manifest)

    result = versioning.write_atomically(root, name, version, write)
    if not result.created:
        manifest = versioning.load_manifest(root, name, version)
    return IngestResult(name, version, result.path, result.created, manifest)


#: Modules whose code shapes a dataset: a change to any of them is a new dataset version.
_DATASET_CODE = ("schema.py", "timeutil.py", "gtfs.py", "validate.py", "features.py", "etl.py", "sources")


def code_version() -> str:
    """FEATURE_CODE_VERSION plus a digest of the readers', checks' and features' source code, so a
    fixed reader never silently reuses a dataset built by the broken one."""
    return f"{FEATURE_CODE_VERSION}+{paths.code_version(_DATASET_CODE)}"


def inspect_stops(stops_path: str | None) -> dict | None:
    if not stops_path:
        return None
    path = os.path.abspath(stops_path)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: GTFS stops file not found")
    return {"path": path, "sha256": paths.sha256_file(path)}


def _run(files: list[InputFile], stops: Stops | None, config: EtlConfig, out: Path) -> dict:
    """The pipeline (``_pipeline``) on Ray: train/valid/test, quarantine and segment medians under
    ``out``."""
    ensure_ray()
    return _pipeline(files, stops, config, out)


@dataclass
class _Checked:
    """Events after the row and trip checks, written once per bucket under ``work``."""

    work: Path
    sizes: dict[int, int]  # clean events per bucket, for every bucket with events
    trips: pd.DataFrame  # one row per trip of the clean events
    rows_in: int

    @property
    def buckets(self) -> list[int]:
        return sorted(self.sizes)

    def groups(self, per_task: int) -> list[list[int]]:
        """The buckets in groups (``_bucket_groups``), the largest groups first: the last tasks of a
        pass are small ones, so the cores finish it closer together."""
        groups = _bucket_groups(self.buckets, per_task)
        return sorted(groups, key=lambda g: -sum(self.sizes[b] for b in g))


@dataclass
class _Splits:
    """The trip table on the driver and where valid and test begin per source."""

    trips: pd.DataFrame
    cutoffs: dict[str, tuple[pd.Timestamp, pd.Timestamp]]
    expected_pairs: int


def _pipeline(files: list[InputFile], stops: Stops | None, config: EtlConfig, out: Path) -> dict:
    events = _read_and_check(files, stops, config, out)
    splits = _split(events, config)
    medians = _segment_medians(events, splits, config)
    _write_examples(events, splits, stops, medians, _feed_files(files), config, out)
    counts = _accounting(events, splits, medians, out)
    shutil.rmtree(events.work)
    return counts


def _read_and_check(files: list[InputFile], stops: Stops | None, config: EtlConfig, out: Path) -> _Checked:
    """Read every piece of every file and run the row checks, writing the events bucketed by line
    and day (the only pass over the input, and no shuffle: each read task writes its rows to their
    buckets' groups' folders); then the trip checks, bucket by bucket, which write the clean events
    once for the later passes and the quarantined ones to ``out/quarantine``. The read writes a
    folder per group of buckets (a trip-check task's), not per bucket: a file per bucket and read
    task was 4,000 small files at 10 M events, most of the read's writing and the checks' reading."""
    rows_in = sum(f.num_rows for f in files)
    buckets = max(2 * _cluster_cpus(), -(-rows_in // config.events_per_bucket))
    groups = _bucket_groups(list(range(buckets)), _LIGHT_BUCKETS_PER_TASK)
    group_of = np.repeat(np.arange(len(groups), dtype=np.int64), [len(g) for g in groups])  # runs in order
    vconf = ValidationConfig(max_abs_delay_s=config.max_abs_delay_s, holdout=config.holdout)
    pieces = [json.dumps(p) for f in files for p in plan_pieces(f)]
    work = out / "_work"
    (
        ray.data.from_items([{"piece": p} for p in pieces], override_num_blocks=len(pieces))
        .map_batches(_read_pieces, batch_size=1, batch_format="numpy")
        .map_batches(
            _row_checks,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"config": vconf, "stops": stops, "group_of": group_of},
        )
        .write_parquet(str(work / "rows"), partition_cols=["group"], compression=_WORK_COMPRESSION)
    )
    written = sorted(int(p.name.split("=", 1)[1]) for p in (work / "rows").glob("group=*") if p.is_dir())
    for folder in (work / "clean", out / "quarantine"):
        folder.mkdir(parents=True, exist_ok=True)
    quarantine = str(out / "quarantine")
    tables = _map_buckets(_check_groups, [[g] for g in written], work=str(work), quarantine=quarantine)
    shutil.rmtree(work / "rows")
    # Every bucket with events has its clean file (empty where all its events were quarantined).
    sizes = {
        int(p.stem.split("-", 1)[1]): pq.read_metadata(p).num_rows for p in (work / "clean").glob("bucket-*.parquet")
    }
    trips = pa.concat_tables([_TRIP_SCHEMA.empty_table(), *tables]).to_pandas()
    trips = _combine_trips(trips) if len(trips) else trips
    return _Checked(work, sizes, trips, rows_in)


def _split(events: _Checked, config: EtlConfig) -> _Splits:
    """The split cutoffs from the trip table (one row per trip, small next to the events)."""
    trips = events.trips
    return _Splits(
        trips,
        split_cutoffs(trips, config.split_fractions),
        expected_pair_count(trips["trip_size"].to_numpy(), config.k),
    )


def _segment_medians(events: _Checked, splits: _Splits, config: EtlConfig) -> pd.DataFrame:
    """Median travel time per (route, u, s) over the training pairs, where enough pairs back it.
    Each bucket counts its pairs' travel times per segment and writes the counts into part folders
    by segment; one task per part takes its segments' exact medians. Nothing is shuffled through the
    object store or gathered on the driver but the medians (a Ray Data groupby of every training
    pair took 1/6 of the ETL at 10M events; gathering the counts on the driver, 3.6 GiB there)."""
    parts = max(2 * _cluster_cpus(), -(-len(events.buckets) // 10))
    work = str(events.work)
    (events.work / "counts").mkdir()
    _map_buckets(
        _bucket_segments,
        events.groups(_LIGHT_BUCKETS_PER_TASK),
        work=work,
        k=config.k,
        cutoffs=splits.cutoffs,
        parts=parts,
    )
    frames = _map_buckets(_part_medians, _bucket_groups(list(range(parts))), work=work)
    medians = pd.concat(frames)  # a part without segments is an empty frame of the same dtypes
    medians = medians.sort_values(SEGMENT_KEY, kind="stable").reset_index(drop=True)
    return medians[medians["n"] >= config.min_segment_pairs].reset_index(drop=True)


def _feed_files(files: list[InputFile]) -> dict[str, tuple[str, ...]]:
    """The GTFS-realtime archives by the name their events carry (``source_file``, a base name:
    two archives of one name in different folders are both read, on their lines only)."""
    by_name: dict[str, list[str]] = {}
    for f in files:
        if f.format == GTFSRT_SOURCE:
            by_name.setdefault(os.path.basename(f.path), []).append(f.path)
    return {name: tuple(paths) for name, paths in by_name.items()}


def _write_examples(
    events: _Checked,
    splits: _Splits,
    stops: Stops | None,
    medians: pd.DataFrame,
    feed_files: dict[str, tuple[str, ...]],
    config: EtlConfig,
    out: Path,
) -> None:
    """Pairs and features per trip bucket -> train/valid/test parquet; the quarantine; the medians."""
    examples_dir = out / "_examples"
    examples_dir.mkdir()
    _map_buckets(
        _bucket_examples,
        events.groups(_EXAMPLE_BUCKETS_PER_TASK),
        work=str(events.work),
        examples=str(examples_dir),
        k=config.k,
        cutoffs=splits.cutoffs,
        stops=stops,
        medians=medians,
        feed_files=feed_files,
        before=config.holdout[0] if config.holdout else None,
    )
    _publish_splits(examples_dir, out)
    pq.write_table(
        conform(pa.Table.from_pandas(medians, preserve_index=False), _MEDIANS_SCHEMA), out / SEGMENT_MEDIANS_FILE
    )


def _accounting(events: _Checked, splits: _Splits, medians: pd.DataFrame, out: Path) -> dict:
    """Counts for the manifest, checked: every source row is out or quarantined, and the written
    pairs equal an independent count from the trip sizes. Raises ``EtlIntegrityError`` if not."""
    # Reasons from the written quarantine (small), not a second run of the pipeline.
    written = sorted((out / "quarantine").rglob("*.parquet"))
    reasons = pa.concat_tables([pq.read_table(p, columns=["reason"]) for p in written])["reason"] if written else []
    quarantined = {str(r): int(c) for r, c in pd.Series(reasons, dtype="string").value_counts().items()}
    rows_in, rows_out = events.rows_in, sum(events.sizes.values())
    split_rows = {s: _count_rows(out / s) for s in SPLITS}
    in_trips = int(splits.trips["trip_size"].sum()) if len(splits.trips) else 0  # clean events, counted by trip
    if rows_in != rows_out + sum(quarantined.values()) or in_trips != rows_out:
        raise EtlIntegrityError(
            f"row accounting broken: in={rows_in} out={rows_out} quarantined={quarantined} "
            f"(events in the trip table {in_trips})"
        )
    if sum(split_rows.values()) != splits.expected_pairs:
        raise EtlIntegrityError(
            f"pair count {sum(split_rows.values())} != {splits.expected_pairs} expected from trip sizes"
        )
    trip_split = assign_splits(splits.trips, splits.cutoffs)
    split_trips = trip_split.value_counts().to_dict()
    return {
        "counts": {
            "rows_in": rows_in,
            "rows_out": rows_out,
            "quarantined": sum(quarantined.values()),
            "quarantined_by_reason": dict(sorted(quarantined.items())),
            "trips": len(splits.trips),
            "trips_by_split": {s: int(split_trips.get(s, 0)) for s in SPLITS},
            "examples": sum(split_rows.values()),
            "examples_expected": splits.expected_pairs,
            "examples_by_split": split_rows,
            "segments_with_median": len(medians),
        },
        "split_cutoffs": {s: [a.isoformat(), b.isoformat()] for s, (a, b) in splits.cutoffs.items()},
        "days_by_split": days_by_split(splits.trips, trip_split),
    }


def days_by_split(trips: pd.DataFrame, split: pd.Series) -> dict[str, dict[str, list[str]]]:
    """Per source and split, the service days its trips come from (ISO dates, in order)."""
    out: dict[str, dict[str, list[str]]] = {}
    frame = pd.DataFrame({"source": trips["source"].to_numpy(), "split": split.to_numpy(),
                          "day": pd.to_datetime(trips["service_date"]).dt.strftime("%Y-%m-%d").to_numpy()})  # fmt: skip
    for (source, name), days in frame.dropna(subset=["day"]).groupby(["source", "split"])["day"]:
        out.setdefault(str(source), {s: [] for s in SPLITS})[str(name)] = sorted(days.unique().tolist())
    return out
