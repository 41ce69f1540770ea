"""The ETL transform in plain pandas, in one process: the baseline ``bench/etl.py`` measures Ray Data
against.

It uses the same building blocks as ``mbta_ray.etl`` (readers, ``validate``, the trip table and
split rules, the per-line-day segment and example builders) in the same order, so both must produce
the same counts and the same examples:

1. read every piece of every file (``plan_pieces`` / ``read_piece``) and run ``check_rows`` per batch;
2. ``trip_keys``, then ``check_trips`` on all good events at once (the whole event table in memory);
3. trip table -> split cutoffs (``etl.split_cutoffs``: by service day where a source has several)
   and the independent pair count;
4. segment medians from the training pairs (``etl._train_segments`` per chunk, their travel counts
   added up, ``features.medians_from_counts``, as the ETL does);
5. pairs + the real-time features (``etl._examples``: the lines' ``EventHistory``) + features for
   every split, written as parquet per split, plus the quarantine table and the segment medians.

Steps 4-5 stream over chunks of whole route-direction-service days (``pair_chunk_events`` events or
so each, like the Ray ETL's buckets: the real-time features need every vehicle of a line), since at
10M events one pair frame would be ~70M rows and not fit in 24 GB. ``pair_chunk_events=0`` takes
everything at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mbta_ray.etl import (
    DEFAULT_STOPS,
    EtlConfig,
    _examples,
    _feed_files,
    _train_segments,
    _trip_table,
    by_split,
    plan_inputs,
    split_cutoffs,
)
from mbta_ray.features import SEGMENT_KEY, expected_pair_count, medians_from_counts, travel_counts
from mbta_ray.gtfs import Stops
from mbta_ray.schema import EXAMPLE_SCHEMA, QUARANTINE_SCHEMA, SPLITS, conform
from mbta_ray.sources import plan_pieces, read_piece
from mbta_ray.validate import TRIP_KEY, ValidationConfig, check_rows, check_trips, trip_keys


def _line_day_chunks(events: pd.DataFrame, size: int) -> list[tuple[int, int]]:
    """Row ranges of ``size`` rows or so that never cut a line-day (rows sorted by line-day)."""
    n = len(events)
    if n == 0:
        return []
    if size <= 0 or size >= n:
        return [(0, n)]
    key = events["_line_day"].to_numpy()
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    idx = np.searchsorted(starts, np.arange(size, n, size))  # first line-day starting at or after each cut
    bounds = sorted({0, n, *(int(c) for c in starts[idx[idx < len(starts)]])})
    return list(zip(bounds[:-1], bounds[1:]))


def run(
    inputs: list[str],
    out: str | Path,
    config: EtlConfig | None = None,
    stops_path: str | None = DEFAULT_STOPS,
    pair_chunk_events: int = 200_000,
) -> dict:
    """Run the transform; write ``out``/{train,valid,test,quarantine}; return counts and timings."""
    config = config or EtlConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 3)
        t = now

    files = plan_inputs(list(inputs))
    stops = Stops.load(stops_path) if stops_path else None
    vconf = ValidationConfig(max_abs_delay_s=config.max_abs_delay_s, holdout=config.holdout)
    rows_in = sum(f.num_rows for f in files)

    frames = [
        check_rows(table.to_pandas(), vconf, stops)
        for f in files
        for piece in plan_pieces(f)
        for table in read_piece(piece)
    ]
    events = pd.concat(frames, ignore_index=True)
    del frames
    events[TRIP_KEY] = trip_keys(events)
    lap("read + row checks")

    bad = events["reason"].notna()
    quarantine = [events[bad]]
    checked = check_trips(events[~bad])
    del events
    bad = checked["reason"].notna()
    quarantine.append(checked[bad])
    clean = checked[~bad].reset_index(drop=True)  # still sorted by trip, stop sequence, arrival
    del checked, bad
    lap("trip checks")

    trips = _trip_table(clean).to_pandas()
    cutoffs = split_cutoffs(trips, config.split_fractions)
    expected_pairs = expected_pair_count(trips["trip_size"].to_numpy(), config.k)
    lap("trip table + split cutoffs")

    # Whole lines and days together: the real-time features see every vehicle of a line.
    clean["_line_day"] = (
        clean["route_id"].astype("string")
        + "|"
        + clean["direction_id"].astype("string")
        + "|"
        + clean["service_date"].astype("string")
    ).fillna("")
    clean = clean.sort_values(["_line_day", TRIP_KEY], kind="stable").reset_index(drop=True)
    chunks = _line_day_chunks(clean, pair_chunk_events)
    clean = clean.drop(columns="_line_day")
    counts = [travel_counts(_train_segments(clean.iloc[lo:hi], config.k, cutoffs).to_pandas()) for lo, hi in chunks]
    medians = (
        medians_from_counts(pd.concat(counts, ignore_index=True))
        if counts
        else pd.DataFrame(columns=SEGMENT_KEY + ["hist_median_travel_s", "n"])
    )
    del counts
    medians = medians[medians["n"] >= config.min_segment_pairs].reset_index(drop=True)  # as the ETL does
    for key in SEGMENT_KEY:
        medians[key] = medians[key].astype("string")
    lap("pairs (train) + segment medians")

    writers = {}
    split_rows = dict.fromkeys(SPLITS, 0)
    feed_files = _feed_files(files)
    before = config.holdout[0] if config.holdout else None
    try:
        for s in SPLITS:
            (out / s).mkdir(exist_ok=True)
            writers[s] = pq.ParquetWriter(out / s / "part-000.parquet", EXAMPLE_SCHEMA)
        for lo, hi in chunks:
            table = _examples(clean.iloc[lo:hi], config.k, cutoffs, stops, medians, feed_files, before)
            for s, part in by_split(table):
                split_rows[s] += part.num_rows
                writers[s].write_table(conform(part, EXAMPLE_SCHEMA))
            del table
    finally:
        for w in writers.values():
            w.close()
    lap("pairs + real-time features + features + write splits")

    q = pd.concat(quarantine, ignore_index=True)
    (out / "quarantine").mkdir(exist_ok=True)
    pq.write_table(
        conform(pa.Table.from_pandas(q, preserve_index=False), QUARANTINE_SCHEMA),
        out / "quarantine" / "part-000.parquet",
    )
    pq.write_table(pa.Table.from_pandas(medians, preserve_index=False), out / "segment_medians.parquet")
    by_reason = {str(r): int(n) for r, n in q["reason"].value_counts().sort_index().items()}
    lap("write quarantine")

    rows_out = len(clean)
    if rows_in != rows_out + len(q):
        raise AssertionError(f"row accounting broken: in={rows_in} out={rows_out} quarantined={len(q)}")
    if sum(split_rows.values()) != expected_pairs:
        raise AssertionError(f"pair count {sum(split_rows.values())} != {expected_pairs} expected")
    return {
        "counts": {
            "rows_in": rows_in,
            "rows_out": rows_out,
            "quarantined": len(q),
            "quarantined_by_reason": by_reason,
            "trips": len(trips),
            "examples": sum(split_rows.values()),
            "examples_expected": expected_pairs,
            "examples_by_split": split_rows,
            "segments_with_median": len(medians),
        },
        "timings_s": timings,
        "pair_chunks": len(chunks),
    }
