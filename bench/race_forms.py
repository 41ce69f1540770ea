"""The race from each form of the feed: the embedded hour as flattened parquet archives, as MBTA's
enhanced-JSON snapshots (one gzipped file per snapshot) and as GTFS-realtime protobuf snapshots.

    python bench/race_forms.py [--root artifacts] [--model VERSION] [--work DIR] [--no-record]

Writes the hour's 630 TripUpdates and 1,624 VehiclePositions snapshots as ``*.json.gz`` and ``*.pb``
files under --work (the parquet rows nested back into their messages; protobuf through
``gtfs-realtime-bindings``, which drops MBTA's non-standard fields), races the production model
(or --model) on each form with the default window, and checks that the three tables are the same.
Records each form's race wall time: the goal (issue 14) is an hour of feed in under 5 minutes on
2 CPUs, whatever form it comes in.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _value(v: object) -> object:
    """A parquet cell as a JSON value (None: absent from the message)."""
    if isinstance(v, np.ndarray | list):
        return None  # consist and carriage lists: nothing the readers use
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else (int(v) if float(v).is_integer() else float(v))
    return v


def nest(row: dict, prefix: str) -> dict:
    """The ``prefix``-ed dotted columns of a flattened row as the nested message they came from."""
    out: dict = {}
    for key, raw in row.items():
        value = _value(raw)
        if value is None or not key.startswith(prefix):
            continue
        *path, leaf = key[len(prefix) :].split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def trip_update_snapshots(archive: Path) -> dict[int, dict]:
    """The archive's TripUpdates snapshots as feed messages (one entity per trip, its stop updates in
    the archive's order)."""
    frame = pd.read_parquet(archive)
    stu = [c for c in frame.columns if c.startswith("trip_update.stop_time_update.")]
    trip = [c for c in frame.columns if c.startswith("trip_update.") and c not in stu]
    out = {}
    for stamp, snapshot in frame.groupby("feed_timestamp"):
        entities = []
        for eid, rows in snapshot.groupby("id", sort=False):
            body = nest(rows.iloc[0][trip].to_dict(), "trip_update.")
            body["stop_time_update"] = [nest(r, "trip_update.stop_time_update.") for r in rows[stu].to_dict("records")]
            entities.append({"id": str(eid), "trip_update": body})
        out[int(stamp)] = {"header": {"gtfs_realtime_version": "2.0", "timestamp": int(stamp)}, "entity": entities}
    return out


def vehicle_snapshots(archive: Path) -> dict[int, dict]:
    """The archive's VehiclePositions snapshots as feed messages."""
    frame = pd.read_parquet(archive)
    out = {}
    for stamp, snapshot in frame.groupby("feed_timestamp"):
        entities = [{"id": str(r["id"]), "vehicle": nest(r, "vehicle.")} for r in snapshot.to_dict("records")]
        out[int(stamp)] = {"header": {"gtfs_realtime_version": "2.0", "timestamp": int(stamp)}, "entity": entities}
    return out


def write_forms(snapshots: dict[int, dict], folder: Path, name: str) -> tuple[Path, Path]:
    """Each snapshot as ``name_<t>.json.gz`` under folder/json and ``name_<t>.pb`` under folder/pb."""
    from google.protobuf import json_format
    from google.transit import gtfs_realtime_pb2

    as_json, as_pb = folder / "json", folder / "pb"
    as_json.mkdir(parents=True, exist_ok=True)
    as_pb.mkdir(parents=True, exist_ok=True)
    for stamp, message in snapshots.items():
        (as_json / f"{name}_{stamp}.json.gz").write_bytes(gzip.compress(json.dumps(message).encode()))
        feed = json_format.ParseDict(message, gtfs_realtime_pb2.FeedMessage(), ignore_unknown_fields=True)
        (as_pb / f"{name}_{stamp}.pb").write_bytes(feed.SerializeToString())
    return as_json, as_pb


def main() -> None:
    from mbta_ray.paths import DEFAULT_RACE_WINDOW, GTFSRT_TRIP_UPDATES, GTFSRT_VEHICLE_POSITIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "artifacts"))
    ap.add_argument("--model", default=None, help="registry version (default: production)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "race_forms"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    from race import model_runner

    from mbta_ray.realtime import race

    runner = model_runner(args.root, args.model)
    version = runner.version
    work = Path(args.work)
    began = time.perf_counter()
    vp_json, vp_pb = write_forms(vehicle_snapshots(GTFSRT_VEHICLE_POSITIONS), work / "vp", "vp")
    tu_json, tu_pb = write_forms(trip_update_snapshots(GTFSRT_TRIP_UPDATES), work / "tu", "tu")
    print(f"wrote the snapshots in {time.perf_counter() - began:.0f} s", flush=True)
    forms = {
        "parquet archives": ([GTFSRT_VEHICLE_POSITIONS], [GTFSRT_TRIP_UPDATES]),
        "enhanced JSON, gzipped": ([vp_json], [tu_json]),
        "protobuf": ([vp_pb], [tu_pb]),
    }
    window = (race.parse_time(DEFAULT_RACE_WINDOW[0], "--from"), race.parse_time(DEFAULT_RACE_WINDOW[1], "--until"))
    lines = [
        "| form | files (VP + TU) | MB on disk | race wall s | same table as parquet |",
        "|---|---|---|---|---|",
    ]
    reference = None
    for form, (vp, tu) in forms.items():
        summary = race.run(vp, tu, runner, work / "race" / form.split()[0], *window).summary
        table = race.table(summary)
        reference = reference or table
        files = [f for p in (*vp, *tu) for f in (sorted(Path(p).iterdir()) if Path(p).is_dir() else [Path(p)])]
        megabytes = sum(f.stat().st_size for f in files) / 2**20
        lines.append(
            f"| {form} | {len(files):,} | {megabytes:.0f} | {summary['seconds']} | {'yes' if table == reference else 'NO'} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(["", *(" | ".join(r) for r in reference)]))
    if not args.no_record:
        from results_md import append

        append(f"The race of {version} from each form of the embedded hour, window {DEFAULT_RACE_WINDOW}.", lines)
    if any(line.endswith("| NO |") for line in lines):
        sys.exit("the forms' races differ")


if __name__ == "__main__":
    main()
