"""The live service under the embedded hour's whole subway fleet: snapshot -> published TripUpdates
time, the CPU it costs, and the race computed from the feed it actually published.

    python bench/live.py [--root artifacts] [--speeds 1 10] [--real-minutes 7] [--idle 20]
                         [--port 8790] [--no-record]

One local Ray cluster and the real Serve app (``mbta_ray.serve.app.build``: Api, Predictor with the
registry's production model, Live), on 127.0.0.1. Phases, each a new ``user_config`` of the Live
deployment (reconfigured in place: the same replica processes throughout):

- ``idle``: a one-snapshot archive, read once; then ``--idle`` seconds of polling with nothing new.
  The CPU of the replicas and of the whole cluster then is the baseline of the same run.
- for each speed: the embedded GTFS-realtime hour (about 94 subway vehicles, a snapshot every ~2.2 s)
  replayed at that speed with ``poll_s = 5 / speed`` (one delivery per 5 s of feed time, MBTA's and
  TheTransitClock's poll). Real speed runs ``--real-minutes`` from 12:19 (its first poll takes in the
  19 minutes before as history: timed apart); other speeds run the whole hour from 12:00. Meanwhile
  ``mbta-ray live record`` (``realtime.record.record``, in a thread) archives the app's own
  ``/gtfs-rt/TripUpdates.pb`` as a client would, polling twice per publish.

Measured per speed: the time from a poll's start (the fetch) to the TripUpdates feed published
(state updated, every active vehicle's request built, one ``Predictor.predict_live`` call, the feed
built and serialized), p50 / p99 / max over the publishes after the first; the feed's age when
published (the wait for the poll, inherent to polling); CPU seconds per wall second of the Live and
Predictor replicas and of all Ray processes, next to the idle baseline. Then the race of issue 14
(``realtime.race.run``, MBTA's moments 12:20-12:30) and, on the same rows, the arrival the published
feed showed at each moment (``race.as_published``): its MAE next to the race's model MAE per bin.
Goal (issue 15, 2 cores): p99 under 1 s, under 25 % of one core at real speed, and the published
feed's accuracy equal to the race's. Appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
APP = "mbta-live-bench"
HOUR = "2023-05-08T12:00:00Z"
REAL_START = "2023-05-08T12:19:00Z"
FEED_POLL_S = 5.0  # seconds of feed time between polls


def get(url: str, timeout: float = 10.0):
    import requests

    return requests.get(url, timeout=timeout)


def wait_live(base: str, feed: str, timeout_s: float = 180) -> dict:
    """Until /live/healthz reports a snapshot taken from ``feed`` (the new config's source)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            h = get(f"{base}/live/healthz", 5).json()
            if h.get("snapshots", 0) >= 1 and feed in str(h.get("feed")):
                return h
        except Exception:  # noqa: BLE001 -- starting up
            pass
        time.sleep(0.2)
    sys.exit(f"the live deployment did not take a snapshot from {feed} within {timeout_s:.0f} s")


class Cpu:
    """CPU seconds (user + system) of the replica processes of each deployment and of the whole
    cluster (every process under this driver: GCS, raylet, workers, Serve)."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil

    def processes(self) -> dict[str, list]:
        groups: dict[str, list] = {"Live": [], "Predictor": [], "cluster": []}
        for p in self.psutil.Process(os.getpid()).children(recursive=True):
            groups["cluster"].append(p)
            try:
                title = " ".join(p.cmdline())
            except self.psutil.Error:
                continue
            for name in ("Live", "Predictor"):
                if f"ServeReplica:{APP}:{name}" in title:
                    groups[name].append(p)
        return groups

    def seconds(self) -> dict[str, float]:
        out = {}
        for name, procs in self.processes().items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except self.psutil.Error:  # a process that ended
                    pass
            out[name] = total
        return out


def measure(base: str, handle, cpu: Cpu, seconds: float, record_to: Path | None, fetch_every: float) -> dict:
    """CPU share per group over ``seconds`` of wall time, the Live replica's publish timings, and
    (with ``record_to``) the app's TripUpdates archived as a client polled them."""
    from mbta_ray.realtime.record import record

    recorder = None
    if record_to is not None:
        url = f"{base}/gtfs-rt/TripUpdates.pb"
        recorder = threading.Thread(
            target=lambda: record(url, record_to, "trip-updates", fetch_every, seconds, log=lambda _: None),
            daemon=True,
        )
        recorder.start()
    before, t0 = cpu.seconds(), time.perf_counter()
    time.sleep(seconds)
    after, wall = cpu.seconds(), time.perf_counter() - t0
    if recorder is not None:
        recorder.join()
    share = {k: (after[k] - before.get(k, 0.0)) / wall for k in after}
    timings = handle.timings.remote().result()
    health = get(f"{base}/live/healthz").json()
    return {"cpu": share, "wall_s": wall, "timings": timings, "health": health}


def stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    if not len(v):
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(v), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def one_snapshot_archive(folder: Path) -> Path:
    """The hour's first snapshot alone, as an archive (the idle phase's feed)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mbta_ray.paths import GTFSRT_VEHICLE_POSITIONS

    table = pq.read_table(GTFSRT_VEHICLE_POSITIONS)
    first = pc.min(table["feed_timestamp"])
    out = folder / "one_snapshot.parquet"
    pq.write_table(table.filter(pc.equal(table["feed_timestamp"], first)), out)
    return out


def race_published(rows, published_dir: Path, start: int, end: int) -> list[dict]:
    """Per MBTA bin, on the race rows with moments in [start, end): the race's model and the
    published feed, on the rows both answered."""
    from mbta_ray.evaluate import HORIZON_BINS
    from mbta_ray.realtime import feeds
    from mbta_ray.realtime.race import as_published

    published = feeds.read_trip_updates([published_dir]).frame
    rows = rows[(rows["feed_timestamp"] >= start) & (rows["feed_timestamp"] < end)]
    pub = as_published(rows, published, max_lag_s=2 * FEED_POLL_S + 5)
    actual, model = rows["actual"].to_numpy(float), rows["model"].to_numpy(float)
    answered = np.isfinite(actual) & np.isfinite(model)
    out = []
    for label, *_ in HORIZON_BINS:
        inbin = answered & (rows["bin"].to_numpy() == label)
        both = inbin & np.isfinite(pub)
        out.append(
            {
                "bin": f"{label} min",
                "n_model": int(inbin.sum()),
                "n": int(both.sum()),
                "model_mae": float(np.abs(model[both] - actual[both]).mean()) if both.any() else None,
                "published_mae": float(np.abs(pub[both] - actual[both]).mean()) if both.any() else None,
                "mean_abs_diff": float(np.abs(pub[both] - model[both]).mean()) if both.any() else None,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "artifacts"), help="artifact root with a production model")
    ap.add_argument("--speeds", nargs="+", type=float, default=[1.0, 10.0])
    ap.add_argument("--real-minutes", type=float, default=7.0, help="minutes of wall time at speed 1")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle baseline")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "live"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import ray
    from ray import serve

    from mbta_ray.paths import DEFAULT_RACE_WINDOW, GTFSRT_TRIP_UPDATES, GTFSRT_VEHICLE_POSITIONS
    from mbta_ray.realtime import race
    from mbta_ray.registry import Registry
    from mbta_ray.serve.app import build
    from mbta_ray.serve.inference import ModelRunner

    registry = str(Path(args.root).resolve())
    reg = Registry(registry)
    prod = reg.production()
    if prod is None:
        sys.exit(f"no production model under {args.root}: run `make run` first")
    version = prod["version"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    window = (race.parse_time(DEFAULT_RACE_WINDOW[0], "from"), race.parse_time(DEFAULT_RACE_WINDOW[1], "until"))

    print(f"race of {version} on the embedded hour (the reference the published feed is compared with)")
    runner = ModelRunner(reg.fetch(version), version=version)
    raced = race.run([GTFSRT_VEHICLE_POSITIONS], [GTFSRT_TRIP_UPDATES], runner, out / "race", *window)

    base = f"http://127.0.0.1:{args.port}"
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cpu = Cpu()
            idle_feed = one_snapshot_archive(Path(tmp))
            serve.run(build({"registry": registry, "version": version}, live={"feed_url": str(idle_feed)}),
                      name=APP, route_prefix="/")  # fmt: skip
            wait_live(base, str(idle_feed))
            handle = serve.get_deployment_handle("Live", app_name=APP)
            time.sleep(3)  # the first publish and its model call done
            print(f"idle baseline: {args.idle:.0f} s")
            results["idle"] = measure(base, handle, cpu, args.idle, None, 1.0)
            for speed in args.speeds:
                start = REAL_START if speed == 1 else HOUR
                seconds = args.real_minutes * 60 if speed == 1 else 3600 / speed
                poll = FEED_POLL_S / speed
                # One pass (a loop would start a new state, and new timings, at the hour's end).
                config = {"replay_speed": speed, "replay_start": start, "poll_s": poll, "replay_loop": False}
                print(f"{speed:g}x: replay from {start}, poll every {poll:g} s, {seconds:.0f} s")
                serve.run(build({"registry": registry, "version": version}, live=config), name=APP, route_prefix="/")
                began = race.parse_time(start, "start")
                wait_live(base, str(GTFSRT_VEHICLE_POSITIONS))
                recorded = out / f"published_{speed:g}x"
                for old in recorded.glob("*.parquet") if recorded.exists() else []:
                    old.unlink()
                m = measure(base, handle, cpu, seconds, recorded, poll / 2)
                m["speed"], m["start"], m["poll_s"] = speed, start, poll
                end = began + int(seconds * speed) - 60  # moments the feed had time to publish for
                m["race"] = race_published(raced.rows, recorded, max(window[0], began + 60), min(window[1], end))
                results[f"{speed:g}x"] = m
        finally:
            serve.shutdown()
            ray.shutdown()
    lines = report(results, raced.summary)
    print("\n".join(lines))
    if not args.no_record:
        from results_md import append

        append(
            f"The live service (Serve app, Live deployment) on the embedded hour, model {version} under "
            f"{args.root}; {os.cpu_count()} CPUs for the whole cluster, bench client and recorder included.",
            lines,
        )


def report(results: dict, race_summary: dict) -> list[str]:
    idle = results["idle"]["cpu"]
    lines = [
        "| speed | publishes | snapshot -> published p50 / p99 / max (s) | first publish (s) | "
        "feed age at publish p50 / p99 (s) | CPU Live + Predictor (% of a core) | CPU whole cluster (%) |",
        "|---|---|---|---|---|---|---|",
        f"| idle | - | - | - | - | {100 * (idle['Live'] + idle['Predictor']):.1f} | {100 * idle['cluster']:.1f} |",
    ]
    goals = []
    for name, m in results.items():
        if name == "idle":
            continue
        raw = m["timings"]
        steady = stats(raw["publish_s"][1:])
        lag = stats(raw["feed_age_at_publish_s"][1:])
        c = m["cpu"]
        live_cpu = c["Live"] + c["Predictor"]
        first = f"{raw['publish_s'][0]:.2f}" if raw["publish_s"] else "-"
        lines.append(
            f"| {name} (poll {m['poll_s']:g} s) | {steady['n']} | {steady['p50']:.3f} / {steady['p99']:.3f} / "
            f"{steady['max']:.3f} | {first} | {lag['p50']:.1f} / {lag['p99']:.1f} | {100 * live_cpu:.1f} | "
            f"{100 * c['cluster']:.1f} |"
        )
        goals.append((name, steady["p99"], live_cpu, m))
    lines += [
        "",
        f"Race reference: model {race_summary['model_version']}, window {race_summary['window']['from']} .. "
        f"{race_summary['window']['until']}, {race_summary['rows']['scored']} rows scored.",
        "",
        "| speed | MBTA horizon | rows (model) | rows (both) | race model MAE (s) | published MAE (s) | "
        "mean abs diff (s) |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    for name, _, _, m in goals:
        for b in m["race"]:
            lines.append(
                f"| {name} | {b['bin']} | {b['n_model']} | {b['n']} | {f(b['model_mae'])} | "
                f"{f(b['published_mae'])} | {f(b['mean_abs_diff'])} |"
            )
    for name, p99, live_cpu, m in goals:
        covered = sum(b["n"] for b in m["race"]) / max(1, sum(b["n_model"] for b in m["race"]))
        worst = max(
            (abs(b["published_mae"] - b["model_mae"]) / b["model_mae"] for b in m["race"] if b["n"]), default=None
        )
        lines.append(
            f"Goal at {name}: p99 {p99:.3f} s (< 1 s: {'met' if p99 < 1 else 'NOT met'}); CPU "
            f"{100 * live_cpu:.1f} % of a core"
            + (f" (< 25 % at real speed: {'met' if live_cpu < 0.25 else 'NOT met'})" if m["speed"] == 1 else "")
            + f"; published feed covers {100 * covered:.1f} % of the race rows the model answered, its MAE "
            + ("-" if worst is None else f"within {100 * worst:.1f} %")
            + " of the race's in every bin."
        )
    return lines


if __name__ == "__main__":
    main()
