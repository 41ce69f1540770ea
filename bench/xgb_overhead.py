"""Distribution overhead: XGBoostTrainer (Ray Train) with 1 and 2 workers vs plain xgboost.train,
same data, same parameters, same number of rounds (no early stopping), in one run.

    python bench/xgb_overhead.py [--root artifacts] [--dataset VERSION] [--rounds 200]
    python bench/xgb_overhead.py --synthetic-events 300000   # a larger, SYNTHETIC dataset

Uses a dataset version (default: the newest under --root; `make run` makes one). Reports wall time
of each and the ratio to plain xgboost.train, and the valid MAE of each (the same model quality is
expected: distributed hist builds the same trees up to floating-point order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "artifacts"))
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument(
        "--synthetic-events",
        type=int,
        default=0,
        help="ingest this many SYNTHETIC LAMP events (mbta_ray.synth) into bench/out/overhead and use that",
    )
    args = ap.parse_args()

    import numpy as np
    import ray
    import xgboost as xgb

    from mbta_ray import versioning
    from mbta_ray.config import WorkerResources
    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import xgboost_model
    from mbta_ray.models.data import load_split, load_split_pandas
    from mbta_ray.runtime import ensure_ray
    from mbta_ray.schema import TARGET

    ensure_ray(num_cpus=args.cpus, dashboard=False, quiet=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.synthetic_events:
        from mbta_ray.etl import ingest
        from mbta_ray.synth import write_synthetic

        args.root = str(ROOT / "bench" / "out" / "overhead")
        synth = write_synthetic(Path(args.root) / "synthetic", args.synthetic_events, seed=0, files=2)
        args.dataset = ingest([str(p) for p in synth.paths], root=args.root).version
    version = args.dataset or versioning.list_versions(args.root)[0]["version"]
    train_df = load_split_pandas(args.root, version, "train")
    valid_df = load_split_pandas(args.root, version, "valid")
    enc = FeatureEncoder.fit(train_df)
    params = {"eta": 0.1, "max_depth": 8, "num_boost_round": args.rounds, "early_stopping_rounds": args.rounds + 1}
    rows = []

    # Plain xgboost.train in this process, all cores.
    t0 = time.perf_counter()
    # The same matrices as the trainer's workers build (residual on the persistence prior).
    dtrain = xgboost_model.dmatrix(train_df, enc, residual=True)
    dvalid = xgboost_model.dmatrix(valid_df, enc, residual=True)
    booster = xgb.train(
        {
            "objective": "reg:absoluteerror",
            "eval_metric": "mae",
            "tree_method": "hist",
            "eta": 0.1,
            "max_depth": 8,
            "nthread": args.cpus,
            "base_score": 0.0,
        },
        dtrain,
        num_boost_round=args.rounds,
        evals=[(dvalid, "valid")],
        verbose_eval=False,
    )
    plain_s = time.perf_counter() - t0
    mae = float(np.abs(booster.predict(dvalid) - valid_df[TARGET].to_numpy()).mean())
    rows.append({"run": f"xgboost.train, nthread={args.cpus}", "wall_s": plain_s, "valid_mae": mae})

    datasets = {"train": load_split(args.root, version, "train"), "valid": load_split(args.root, version, "valid")}
    for workers in (1, 2):
        # Leave one CPU for Ray Data to feed the workers.
        cpus = max(0.5, (args.cpus - 1) / workers)
        t0 = time.perf_counter()
        trainer = xgboost_model.make_trainer(
            params,
            enc,
            datasets,
            WorkerResources(workers, cpus),
            ray.train.RunConfig(name=f"overhead-{workers}", storage_path=str(ROOT / "bench" / "out" / "ray")),
        )
        result = trainer.fit()
        wall = time.perf_counter() - t0
        rows.append(
            {
                "run": f"XGBoostTrainer, {workers} worker(s) x {cpus:g} CPU",
                "wall_s": wall,
                "valid_mae": float(result.metrics["valid-mae"]),
            }
        )
    ray.shutdown()
    info = {
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "dataset": version,
        "train_rows": len(train_df),
        "rounds": args.rounds,
    }
    print(json.dumps(info))
    print("| run | wall s | x plain | valid MAE |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['wall_s']:.1f} | {r['wall_s'] / plain_s:.2f} | {r['valid_mae']:.1f} |")


if __name__ == "__main__":
    main()
