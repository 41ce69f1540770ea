"""The race: the production model vs MBTA's own published predictions vs the recent-segment rule.

    python bench/race.py [--root artifacts] [--model VERSION] [--vehicle-positions F...]
                         [--trip-updates F...] [--from ISO] [--until ISO] [--sweep MIN] [--no-record]

Defaults: the embedded GTFS-realtime hour (2023-05-08 12 UTC) with moments 12:20-12:30 UTC, which
`make run` holds out of the dataset, and the production model under --root. Runs `mbta_ray.realtime.
race.run` (the code behind `mbta-ray race`) and appends the table, row accounting, coverage and wall
time to bench/RESULTS.md. Goal (issue 14): MAE below MBTA's and "accurate" share at or above MBTA's
in every horizon bin, coverage >= 99 % of the rows in scope, the whole race in under 5 minutes for an
hour of feed on 2 CPUs.

``--sweep MIN`` races each MIN-minute window of [--from, --until) on its own instead, and tabulates
MBTA and the model per window with how much VehiclePositions history each window's first moment had:
how far the race depends on the other vehicles' recent traversals (windows before 12:20 on the
embedded hour were in `make run`'s training data, which can only flatter the model there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from mbta_ray.paths import DEFAULT_RACE_WINDOW, GTFSRT_TRIP_UPDATES, GTFSRT_VEHICLE_POSITIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "artifacts"))
    ap.add_argument("--model", default=None, help="registry version (default: production)")
    ap.add_argument("--vehicle-positions", nargs="+", default=[str(GTFSRT_VEHICLE_POSITIONS)])
    ap.add_argument("--trip-updates", nargs="+", default=[str(GTFSRT_TRIP_UPDATES)])
    ap.add_argument("--from", dest="start", default=DEFAULT_RACE_WINDOW[0])
    ap.add_argument("--until", default=DEFAULT_RACE_WINDOW[1])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "race"))
    ap.add_argument("--sweep", type=int, default=None, metavar="MIN", help="race each MIN-minute window apart")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    from mbta_ray.realtime import race

    runner = model_runner(args.root, args.model)
    version = runner.version
    start, until = race.parse_time(args.start, "--from"), race.parse_time(args.until, "--until")
    if args.sweep:
        sweep(args, race, runner, start, until)
        return
    result = race.run(
        args.vehicle_positions,
        args.trip_updates,
        runner,
        args.out,
        start,
        until,
    )
    lines = report(result.summary)
    print("\n".join(lines))
    if not args.no_record:
        from results_md import append

        meta = runner.metadata
        append(
            f"Race of {version} ({meta.get('family')}, dataset {(meta.get('dataset') or {}).get('version')}) "
            f"against MBTA's published predictions, window {result.summary['window']['from']} .. "
            f"{result.summary['window']['until']}.",
            lines,
        )


def model_runner(root: str, model: str | None):
    """The registry's model ``model`` (default: production) under ``root``, ready to predict."""
    from mbta_ray.registry import Registry
    from mbta_ray.serve.inference import ModelRunner

    reg = Registry(root)
    version = model or (reg.production() or {}).get("version")
    if not version:
        sys.exit(f"no production model under {root}: run `make run` first")
    return ModelRunner(reg.fetch(version), version=version)


def sweep(args, race, runner, start: int, until: int) -> None:
    """Race each ``args.sweep``-minute window of [start, until) apart; print and record one table."""
    from mbta_ray.timeutil import iso_z

    lines = [
        "| window (UTC) | history | MBTA horizon | n | mbta MAE (s) / accurate | model MAE (s) / accurate |",
        "|---|---|---|---|---|---|",
    ]
    for lo in range(start, until, args.sweep * 60):
        hi = min(lo + args.sweep * 60, until)
        s = race.run(args.vehicle_positions, args.trip_updates, runner, f"{args.out}/{lo}", lo, hi).summary
        window = f"{iso_z(lo)[11:16]}-{iso_z(hi)[11:16]}"
        for b in s["bins"]:
            cells = [
                "-" if b[m]["mae"] is None else f"{b[m]['mae']:.1f} / {100 * b[m]['accurate']:.1f}%"
                for m in ("mbta", "model")
            ]
            lines.append(
                f"| {window} | {s['window']['history_s'] / 60:.0f} min | {b['bin']} | {b['n']} | "
                + " | ".join(cells)
                + " |"
            )
        print("\n".join(lines[-len(s["bins"]) :]), flush=True)
    if not args.no_record:
        from results_md import append

        append(f"Race of {runner.version} by window: each {args.sweep}-minute window raced on its own.", lines)


def report(s: dict) -> list[str]:
    """The race table as markdown, then rows, coverage and whether each goal is met."""
    from mbta_ray.realtime.race import METHODS, wins

    lines = [
        "| MBTA horizon | n | " + " | ".join(f"{m} MAE (s) / accurate" for m in METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for b in s["bins"]:
        cells = []
        for m in METHODS:
            e = b[m]
            extra = f" (n={e['n']})" if "n" in e else ""
            cells.append("-" if e["mae"] is None else f"{e['mae']:.1f} / {100 * e['accurate']:.1f}%{extra}")
        lines.append(f"| {b['bin']} | {b['n']} | " + " | ".join(cells) + " |")
    beats = list(wins(s).values())
    r = s["rows"]
    if "model_expected" in s["bins"][0]:  # the model's times before they are told to riders a little early
        lines += [
            "",
            "The model's expected times, before the rider shift (requests.rider_time): "
            + ", ".join(
                f"{b['bin']} {b['model_expected']['mae']:.1f} / {100 * b['model_expected']['accurate']:.1f}%"
                for b in s["bins"]
                if b["model_expected"]["mae"] is not None
            )
            + ".",
        ]
    lines += [
        "",
        f"Rows: {r['mbta_matched']} MBTA predictions 0-30 min ahead at {s['window']['moments']} moments, "
        f"{r['in_scope']} in scope, {r['scored']} scored, {r['not_started']} not started; left out: "
        f"{s['rows_left_out']}. Coverage: model {100 * s['coverage']:.1f}%, recent-segment rule "
        f"{100 * s['recent_segment_coverage']:.1f}%. Race wall time {s['seconds']} s.",
        f"Goal (beat MBTA in every bin, coverage >= 99%): "
        f"{'met' if beats and all(beats) and s['coverage'] >= 0.99 else 'NOT met'} "
        f"(model beats MBTA in {sum(beats)} of {len(beats)} bins with rows).",
    ]
    return lines


if __name__ == "__main__":
    main()
