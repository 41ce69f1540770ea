"""Synthetic LAMP events: read by the real LAMP reader, deterministic, exact in size, trips that
straddle files, and labelled synthetic everywhere. Small and fast (no Ray)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mbta_ray import synth
from mbta_ray.sources import inspect_input, read_file

N_EVENTS = 12_000


@pytest.fixture(scope="module")
def profile() -> synth.SynthProfile:
    return synth.fit_profile()


@pytest.fixture(scope="module")
def written(profile, tmp_path_factory) -> synth.SynthResult:
    out = tmp_path_factory.mktemp("synth")
    return synth.write_synthetic(out, N_EVENTS, seed=7, files=3, profile=profile)


def test_profile_fits_the_real_sample(profile):
    real = pq.read_table(synth.DEFAULT_LAMP_SAMPLE)
    assert profile.source["rows"] == real.num_rows
    assert {p.route_id for p in profile.patterns} <= set(real["route_id"].to_pylist())
    assert all(len(p.stop_sequence) >= 2 and p.stop_sequence == sorted(p.stop_sequence) for p in profile.patterns)
    assert "*" in profile.delay and 0.0 <= profile.delay["*"].a <= 1.0
    assert profile.estimated_day_rows > real.num_rows  # the sample is a part of a day
    # The profile round-trips through JSON (it is stored beside the data).
    again = synth.SynthProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again.to_dict() == profile.to_dict()


def test_columns_and_types_match_the_real_lamp_file(profile):
    real = pq.read_schema(synth.DEFAULT_LAMP_SAMPLE)
    table = next(synth.generate(profile, 500, seed=1))
    expected = pa.schema([f for f in real if not f.name.startswith("__index_level")])
    assert table.schema.remove_metadata().equals(expected)
    assert table.schema.equals(synth.LAMP_2024_SCHEMA)


def test_read_by_the_lamp_reader(written):
    for path in written.paths:
        assert inspect_input(path).format == "lamp"  # detected from the columns
    events = read_file(written.paths[1]).to_pandas()
    assert len(events) == written.rows_per_file[1]
    assert (events["source"] == "lamp").all()
    good = events[events["reason"].isna()]
    assert good["actual_arrival"].notna().all() and good["scheduled_arrival"].notna().mean() > 0.95
    assert set(events["mode"]) <= {"subway", "commuter_rail"}


def test_exact_event_count(profile, written):
    assert sum(written.rows_per_file) == N_EVENTS
    assert sum(pq.read_metadata(p).num_rows for p in written.paths) == N_EVENTS
    assert sum(t.num_rows for t in synth.generate(profile, 54_321, seed=2)) == 54_321  # two service days


def test_deterministic_for_a_seed(profile):
    a = pa.concat_tables(synth.generate(profile, 3_000, seed=11))
    b = pa.concat_tables(synth.generate(profile, 3_000, seed=11, chunk_rows=700))  # chunking changes nothing
    c = pa.concat_tables(synth.generate(profile, 3_000, seed=12))
    assert a.equals(b)
    assert not a.equals(c)


def test_whole_trips_and_quarantine_paths(profile):
    df = pa.concat_tables(synth.generate(profile, 20_000, seed=3)).to_pandas()
    per_trip = df.groupby("trip_id").agg(n=("stop_id", "size"), stops=("stop_count", "first"))
    # Whole trips (only the last trip of a day may end early); duplicates add a row to a few trips.
    assert (per_trip["n"] >= per_trip["stops"]).mean() > 0.99
    assert 0.002 < df["stop_timestamp"].isna().mean() < 0.01
    assert df.duplicated(["trip_id", "stop_sequence", "stop_id"]).sum() >= 1


def test_trips_straddle_files(written):
    assert written.trips_split_across_files > 0
    trips = [set(pc.unique(pq.read_table(p, columns=["trip_id"])["trip_id"]).to_pylist()) for p in written.paths]
    assert trips[0] & trips[1] and trips[1] & trips[2]


def test_labelled_synthetic(written):
    for path in written.paths:
        assert synth.is_synthetic(path)
        ids = pq.read_table(path, columns=["trip_id"])["trip_id"]
        assert pc.all(pc.starts_with(ids, synth.SYNTH_PREFIX)).as_py()
    marker = open(written.marker).read()
    assert "SYNTHETIC" in marker and written.profile_summary["source_sha256"] in marker
    meta = json.loads(open(written.marker.replace(synth.MARKER_FILE, synth.PARAMS_FILE)).read())
    assert meta["synthetic"] is True and meta["n_events"] == N_EVENTS and meta["profile"]["source"]["sha256"]


def test_real_files_are_not_synthetic():
    assert not synth.is_synthetic(synth.DEFAULT_LAMP_SAMPLE)


def test_single_file_output(profile, tmp_path):
    result = synth.write_synthetic(tmp_path / "one.parquet", 800, seed=1, profile=profile)
    assert result.paths == [str(tmp_path / "one.parquet")] and result.rows_per_file == [800]
    assert (tmp_path / f"one.{synth.MARKER_FILE}").is_file() and synth.is_synthetic(result.paths[0])
