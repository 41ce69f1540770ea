"""Shared fixtures: one real local Ray cluster for the whole test session, and small real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mbta_ray.runtime import local_only_ray

SAMPLES = Path(__file__).resolve().parent.parent / "mbta_ray" / "data" / "samples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# The test cluster (and test_jobs' head node) listens on 127.0.0.1 only, as `make run` does.
local_only_ray()


#: Test modules that start a Ray head node of their own (not through the ``ray_local`` fixture).
_OWN_CLUSTER_MODULES = {"test_jobs"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a Ray cluster ``ray`` (``make test-fast`` runs the others)."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) or item.module.__name__ in _OWN_CLUSTER_MODULES:
            item.add_marker(pytest.mark.ray)


def start_local_ray() -> None:
    """The test session's local cluster (2 CPUs, like CI)."""
    import ray

    # The dashboard serves the State API, which Ray Train's placement-group cleaner needs to
    # free a Tune trial's workers when the trial is stopped (ASHA): without it they leak and
    # the next trial waits forever.
    ray.init(num_cpus=2, include_dashboard=True, logging_level="ERROR", log_to_driver=False)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster, started once (test_jobs stops it while its own head node runs)."""
    import ray

    if not ray.is_initialized():
        start_local_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


def lamp_rows(
    trip_id: str,
    route: str,
    stops: list[tuple[str, int, int, int]],
    service_date: int = 20240207,
    direction: bool = False,
    vehicle: str = "V1",
) -> list[dict]:
    """LAMP 2024-layout rows for one trip: stops are (stop_id, stop_sequence, actual epoch s,
    scheduled seconds into the service day)."""
    return [
        {
            "stop_sequence": seq,
            "stop_id": stop,
            "stop_timestamp": actual,
            "service_date": service_date,
            "route_id": route,
            "direction_id": direction,
            "trip_id": trip_id,
            "vehicle_id": vehicle,
            "scheduled_arrival_time": sched,
            "dwell_time_seconds": 30,
            "headway_branch_seconds": 300,
            "headway_trunk_seconds": 300,
            "scheduled_headway_branch": 360,
            "scheduled_headway_trunk": 360,
        }
        for stop, seq, actual, sched in stops
    ]


def write_lamp(path: Path, rows: list[dict], row_group_size: int | None = None) -> Path:
    """Write LAMP rows as parquet with the real file's column types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("stop_sequence", pa.int16()),
            ("stop_id", pa.string()),
            ("stop_timestamp", pa.int64()),
            ("service_date", pa.int64()),
            ("route_id", pa.string()),
            ("direction_id", pa.bool_()),
            ("trip_id", pa.string()),
            ("vehicle_id", pa.string()),
            ("scheduled_arrival_time", pa.int64()),
            ("dwell_time_seconds", pa.int64()),
            ("headway_branch_seconds", pa.int64()),
            ("headway_trunk_seconds", pa.int64()),
            ("scheduled_headway_branch", pa.int64()),
            ("scheduled_headway_trunk", pa.int64()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path
