"""Accuracy on the embedded real data: the best tuned models vs the persistence baseline, per mode.

    python bench/accuracy.py [--root artifacts] [--dataset VERSION] [--samples 12] [--families xgboost dnn]

Runs the real search (`mbta_ray.tune.run_search`: BayesOptSearch over Ray Train trials) for each
family on a dataset version (default: the newest; `make run` makes the embedded one), then scores the
best model of each on the test split against the baselines on the rows every prediction covers.
Goal (issue 4): MAE <= 0.75 x persistence on subway and <= 0.55 x on bus.
Appends a section to bench/RESULTS.md (``--no-record`` to skip).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GOALS = {"subway": 0.75, "bus": 0.55}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "artifacts"))
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--families", nargs="+", default=["xgboost", "dnn"])
    ap.add_argument("--storage", default=str(ROOT / "bench" / "out" / "accuracy"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import ray

    from mbta_ray import versioning
    from mbta_ray.runtime import ensure_ray
    from mbta_ray.tune import TuneSettings, run_search

    version = args.dataset or versioning.list_versions(args.root)[0]["version"]
    ensure_ray(num_cpus=os.cpu_count(), dashboard=True, quiet=True)
    results = []
    for family in args.families:
        t0 = time.perf_counter()
        settings = TuneSettings(family=family, num_samples=args.samples, max_concurrent=1, storage=args.storage)
        r = run_search(settings, args.root, version)
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        print(
            f"{family}: {r['trials']} trials, best valid MAE {r['best_valid_mae']:.1f} in {r['wall_s']:.0f} s",
            flush=True,
        )
    ray.shutdown()
    lines = table(results)
    print("\n".join(lines))
    if not args.no_record:
        from results_md import append

        append(
            f"Dataset {version} (embedded real data, time-ordered splits per source: test = the last "
            f"15 % of each source's trips). Each family: {args.samples} BayesOpt trials "
            "(mbta_ray/configs/tune.yaml), one at a time, 1 Ray Train worker; the best trial's model is scored "
            "on the test split. MAE in seconds of travel time u -> s, on the test rows that every model "
            "and baseline covers (persistence needs a schedule at u and s, the historical median a "
            "segment seen in training).",
            lines,
        )


def table(results: list[dict]) -> list[str]:
    """Markdown: per mode, every model's and baseline's MAE on common rows and its ratio to persistence."""
    report = {}
    for r in results:
        report.update(r["report"])
    modes = sorted({m for e in report.values() for m, v in e["common"]["by_mode"].items() if v["n"]})
    pers = report["persistence"]["common"]["by_mode"]
    lines = [
        "| model | " + " | ".join(f"{m} MAE (x persistence)" for m in modes) + " | all modes MAE | rows |",
        "|---|" + "---:|" * (len(modes) + 2),
    ]
    for name, e in report.items():
        cells = []
        for m in modes:
            v = e["common"]["by_mode"][m]
            cells.append(f"{v['mae']:.1f} ({v['mae'] / pers[m]['mae']:.2f}x)" if v["n"] else "-")
        o = e["common"]["overall"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {o['mae']:.1f} | {o['n']:,} |")
    lines.append("")
    for r in results:
        fam = r["family"]
        verdicts = []
        for mode, goal in GOALS.items():
            v, p = report[fam]["common"]["by_mode"].get(mode), pers.get(mode)
            if v and v["n"] and p:
                ratio = v["mae"] / p["mae"]
                verdicts.append(f"{mode} {ratio:.2f}x (goal <= {goal}: {'met' if ratio <= goal else 'NOT met'})")
        lines.append(
            f"- {fam}: {r['trials']} trials in {r['wall_s']:.0f} s, best valid MAE "
            f"{r['best_valid_mae']:.1f}; " + "; ".join(verdicts)
        )
    return lines


if __name__ == "__main__":
    main()
