"""The ETL transform in plain pandas, in one process: the baseline ``bench/etl.py`` measures Ray Data
against.

It uses the same building blocks as ``mbta_ray.etl`` (readers, ``validate``, ``features``, the split
rules) in the same order, so both must produce the same counts:

1. read every piece of every file (``plan_pieces`` / ``read_piece``) and run ``check_rows`` per batch;
2. ``trip_keys``, then ``check_trips`` on all good events at once (the whole event table in memory);
3. trip table -> split cutoffs (``etl.split_cutoffs``) and the independent pair count;
4. ``pair_events`` + ``assign_splits`` -> ``segment_medians`` on the training pairs;
5. ``pair_events`` + ``compute_features`` for every split, written as parquet per split, plus the
   quarantine table and the segment medians.

Steps 4-5 run over chunks of whole trips (``pair_chunk_events`` events each, like the Ray ETL's
buckets): with whole synthetic trips, K=10 gives about 7 pairs per event, so at 10M events one pair
frame would be ~70M rows and not fit in 24 GB. ``pair_chunk_events=0`` pairs everything at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mbta_ray.etl import DEFAULT_STOPS, EtlConfig, assign_splits, plan_inputs, split_cutoffs
from mbta_ray.features import (
    SEGMENT_KEY,
    compute_features,
    example_frame,
    expected_pair_count,
    pair_events,
    segment_medians,
)
from mbta_ray.gtfs import Stops
from mbta_ray.schema import EXAMPLE_SCHEMA, QUARANTINE_SCHEMA, SPLITS, TARGET, conform
from mbta_ray.sources import plan_pieces, read_piece
from mbta_ray.validate import TRIP_KEY, ValidationConfig, check_rows, check_trips, trip_keys


def _trip_chunks(trip_key: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Row ranges of ``size`` rows or so that never cut a trip (rows sorted by trip)."""
    n = len(trip_key)
    if n == 0:
        return []
    if size <= 0 or size >= n:
        return [(0, n)]
    starts = np.flatnonzero(np.r_[True, trip_key[1:] != trip_key[:-1]])
    idx = np.searchsorted(starts, np.arange(size, n, size))  # first trip starting at or after each cut
    bounds = sorted({0, n, *(int(c) for c in starts[idx[idx < len(starts)]])})
    return list(zip(bounds[:-1], bounds[1:]))


def _travel_seconds(pairs: pd.DataFrame) -> pd.Series:
    return (
        pd.to_datetime(pairs["actual_arrival_s"], utc=True) - pd.to_datetime(pairs["actual_arrival_u"], utc=True)
    ).dt.total_seconds()


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
    vconf = ValidationConfig(max_abs_delay_s=config.max_abs_delay_s)
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

    trips = (
        clean.groupby(TRIP_KEY, sort=False)
        .agg(source=("source", "first"), trip_start=("actual_arrival", "min"), trip_size=("actual_arrival", "size"))
        .reset_index()
    )
    cutoffs = split_cutoffs(trips, config.split_fractions)
    expected_pairs = expected_pair_count(trips["trip_size"].to_numpy(), config.k)
    lap("trip table + split cutoffs")

    chunks = _trip_chunks(clean[TRIP_KEY].to_numpy(), pair_chunk_events)
    # Segment keys as categories so that the training pairs of a big run stay small in memory.
    route_cat = pd.CategoricalDtype(sorted(clean["route_id"].dropna().unique()))
    stop_cat = pd.CategoricalDtype(sorted(clean["stop_id"].dropna().unique()))
    segments = []
    whole_pairs = None
    for lo, hi in chunks:
        pairs = pair_events(clean.iloc[lo:hi], config.k)
        if len(chunks) == 1:
            whole_pairs = pairs
        train = pairs[(assign_splits(pairs, cutoffs) == "train").to_numpy()]
        segments.append(
            pd.DataFrame(
                {
                    "route_id": train["route_id"].astype(route_cat),
                    "from_stop_id": train["from_stop_id"].astype(stop_cat),
                    "to_stop_id": train["to_stop_id"].astype(stop_cat),
                    TARGET: _travel_seconds(train).to_numpy(),
                }
            )
        )
    medians = (
        segment_medians(pd.concat(segments, ignore_index=True))
        if segments
        else pd.DataFrame(columns=SEGMENT_KEY + ["hist_median_travel_s", "n"])
    )
    del segments
    medians = medians[medians["n"] >= config.min_segment_pairs].reset_index(drop=True)  # as the ETL does
    for key in SEGMENT_KEY:
        medians[key] = medians[key].astype("string")
    lap("pairs (train) + segment medians")

    writers = {}
    split_rows = dict.fromkeys(SPLITS, 0)
    try:
        for s in SPLITS:
            (out / s).mkdir(exist_ok=True)
            writers[s] = pq.ParquetWriter(out / s / "part-000.parquet", EXAMPLE_SCHEMA)
        for lo, hi in chunks:
            pairs = whole_pairs if whole_pairs is not None else pair_events(clean.iloc[lo:hi], config.k)
            feats = compute_features(pairs, stops, medians)
            split = assign_splits(feats, cutoffs).to_numpy()
            examples = example_frame(feats)
            for s in SPLITS:
                part = examples[split == s]
                split_rows[s] += len(part)
                writers[s].write_table(conform(pa.Table.from_pandas(part, preserve_index=False), EXAMPLE_SCHEMA))
            del pairs, feats, examples
    finally:
        for w in writers.values():
            w.close()
    del whole_pairs
    lap("pairs + features + write splits")

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
