"""Where things are: the artifact root, the embedded real samples, package data, and the two
digests of files (``sha256_file``) and of the package's own code (``code_version``).

One module owns these so that the readers, the ETL, the registry and serving agree without
importing each other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: Default artifact root: datasets, experiments and the registry go under it.
DEFAULT_ROOT = "artifacts"

SAMPLES_DIR = PACKAGE_DIR / "data" / "samples"
#: A random 10k-row sample of the LAMP day (its trips are fragmented: tests and the synthesizer).
LAMP_SAMPLE = SAMPLES_DIR / "lamp_subway_2024-02-07_10k.parquet"
#: The whole LAMP subway service day 2024-02-07 (3,264 trips, a median of 12 observed stops each).
LAMP_DAY = SAMPLES_DIR / "lamp_subway_2024-02-07.parquet"
#: One hour of GTFS-realtime VehiclePositions and MBTA's TripUpdates (its predictions), 2023-05-08 12 UTC.
GTFSRT_VEHICLE_POSITIONS = SAMPLES_DIR / "gtfsrt_vehicle_positions_2023-05-08T12.parquet"
GTFSRT_TRIP_UPDATES = SAMPLES_DIR / "gtfsrt_trip_updates_2023-05-08T12.parquet"
#: The embedded real data that ``make run`` ingests.
DEFAULT_INPUTS: tuple[str, ...] = (
    str(LAMP_DAY),
    str(SAMPLES_DIR / "tm_stop_crossing_2024-08-11_arrivals.parquet"),
    str(GTFSRT_VEHICLE_POSITIONS),
)
#: The race ``make run`` runs on the embedded hour: MBTA's moments 12:20-12:30 UTC, with the
#: VehiclePositions before them as state; the ETL holds out every arrival from 12:20 on.
DEFAULT_RACE_WINDOW = ("2023-05-08T12:20:00Z", "2023-05-08T12:30:00Z")
#: The embedded GTFS stops (2023-04) the default dataset is checked against.
DEFAULT_STOPS = str(SAMPLES_DIR / "gtfs_stops_2023-04.parquet")

#: Search spaces shipped inside the package (so a non-editable install finds them).
DEFAULT_TUNE_SPACE = PACKAGE_DIR / "configs" / "tune.yaml"


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes (streamed): the one checksum of inputs and model files."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version(parts: tuple[str, ...] | None = None) -> str:
    """A 12-hex digest of the package's source: of the modules/packages named in ``parts``
    (relative to the package, e.g. ``("etl.py", "sources")``), or of every module when None."""
    digest = hashlib.sha256()
    paths = (
        sorted(PACKAGE_DIR.rglob("*.py"))
        if parts is None
        else [
            p
            for name in parts
            for p in (
                sorted((PACKAGE_DIR / name).rglob("*.py")) if (PACKAGE_DIR / name).is_dir() else [PACKAGE_DIR / name]
            )
        ]
    )
    for path in paths:
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
