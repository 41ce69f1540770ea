"""Training data ingest, before and after streaming: rows/s and peak memory per training worker.

    python bench/train_ingest.py --synthetic-events 300000     # ~1.4 M training rows, SYNTHETIC
    python bench/train_ingest.py --root artifacts              # the newest dataset under --root

Same dataset, same Ray Train trainers, same parameters, in one run, for both families:
- XGBoost. before: the worker materializes its shard as pandas and builds a ``DMatrix`` (the code
  before issue 16); after: Ray Data encodes, the worker streams its shard into a ``QuantileDMatrix``
  (``xgboost_model.train_loop_per_worker``). Reported: rows/s of building the matrices, rows x
  rounds / s of boosting, the worker's peak RSS, valid MAE.
- DNN. before: the worker iterates pandas batches and encodes each one itself; after: Ray Data
  encodes, the worker reads ``iter_torch_batches`` (``dnn.train_loop_per_worker``). Reported:
  training rows/s of the last epoch, the worker's peak RSS, valid MAE.
One worker (the other CPU feeds it, as the tuner leaves one to Ray Data). Appends the table to
bench/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# --- the "before" training loops (the per-worker data path as it was before streaming) ------------


def xgb_before(config: dict) -> None:
    import ray.train
    import xgboost as xgb

    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import xgboost_model

    encoder = FeatureEncoder(**config["encoder"])
    started = time.perf_counter()
    dtrain = xgboost_model.dmatrix(ray.train.get_dataset_shard("train").materialize().to_pandas(), encoder, True)
    dvalid = xgboost_model.dmatrix(ray.train.get_dataset_shard("valid").materialize().to_pandas(), encoder, True)
    ingest = {"ingest_s": time.perf_counter() - started, "train_rows": dtrain.num_row()}
    xgb.train(
        _xgb_params(config),
        dtrain,
        num_boost_round=config["num_boost_round"],
        evals=[(dtrain, "train"), (dvalid, "valid")],
        verbose_eval=False,
        callbacks=[xgboost_model.ReportCallback(every=10_000, residual=True, ingest=ingest)],
    )


def _xgb_params(config: dict) -> dict:
    return {
        "objective": "reg:absoluteerror",
        "eval_metric": "mae",
        "tree_method": "hist",
        "eta": config["eta"],
        "max_depth": config["max_depth"],
        "nthread": config["nthread"],
        "base_score": 0.0,
        "seed": 0,
    }


def dnn_before(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from mbta_ray.defaults import VALID_METRIC
    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import dnn
    from mbta_ray.runtime import peak_rss_mib
    from mbta_ray.schema import TARGET

    def tensors(df, encoder, device):
        y = torch.from_numpy(df[TARGET].to_numpy(dtype="float32")).to(device)
        return (*dnn.encode_inputs(df, encoder, device), y)

    torch.manual_seed(0)
    encoder = FeatureEncoder(**config["encoder"])
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(dnn.DelayMLP(dnn.architecture(config, encoder)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    huber = torch.nn.HuberLoss(delta=120.0)
    batch_size = config["batch_size"]
    for epoch in range(config["epochs"]):
        model.train()
        rows, started = 0, time.perf_counter()
        for batch in ray.train.get_dataset_shard("train").iter_batches(
            batch_size=batch_size, batch_format="pandas", local_shuffle_buffer_size=batch_size * 8
        ):
            cats, nums, prior, y = tensors(batch, encoder, device)
            loss = huber(model(cats, nums, prior), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows += len(y)
        train_s = time.perf_counter() - started
        model.eval()
        err, n = 0.0, 0
        with torch.no_grad():
            for batch in ray.train.get_dataset_shard("valid").iter_batches(batch_size=8192, batch_format="pandas"):
                cats, nums, prior, y = tensors(batch, encoder, device)
                err += float((model(cats, nums, prior) - y).abs().sum())
                n += len(y)
        metrics = {
            VALID_METRIC: err / n,
            "epoch": epoch + 1,
            "train_rows": rows,
            "train_s": train_s,
            "worker_peak_rss_mib": peak_rss_mib(),
        }
        with tempfile.TemporaryDirectory() as tmp:  # Train reports metrics with a checkpoint
            dnn.save(model.module if hasattr(model, "module") else model, Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# --- the run -------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "artifacts"))
    ap.add_argument("--dataset", default=None)
    ap.add_argument(
        "--synthetic-events", type=int, default=0, help="ingest this many SYNTHETIC LAMP events and use them"
    )
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import ray

    from mbta_ray import versioning
    from mbta_ray.config import WorkerResources
    from mbta_ray.defaults import VALID_METRIC
    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import dnn, xgboost_model
    from mbta_ray.models.data import load_split
    from mbta_ray.runtime import ensure_ray

    ensure_ray(num_cpus=args.cpus, dashboard=False, quiet=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.synthetic_events:
        from mbta_ray.etl import ingest
        from mbta_ray.synth import write_synthetic

        args.root = str(ROOT / "bench" / "out" / f"train_ingest_{args.synthetic_events}")
        if not versioning.list_versions(args.root):
            synth = write_synthetic(Path(args.root) / "synthetic", args.synthetic_events, seed=0, files=4)
            ingest([str(p) for p in synth.paths], root=args.root)
    version = args.dataset or versioning.list_versions(args.root)[0]["version"]
    datasets = {s: load_split(args.root, version, s) for s in ("train", "valid")}
    encoder = FeatureEncoder.fit(datasets["train"])
    resources = WorkerResources(1, max(1, args.cpus - 1))
    storage = str(ROOT / "bench" / "out" / "ray")
    xgb_config = {"eta": 0.1, "max_depth": 8, "num_boost_round": args.rounds, "early_stopping_rounds": args.rounds + 1}
    dnn_config = {"hidden_width": 128, "hidden_layers": 2, "batch_size": 1024, "epochs": args.epochs, "lr": 1e-3}
    loop = {**xgb_config, "encoder": encoder.to_dict(), "nthread": resources.cpus_per_worker}

    def fit(name: str, trainer) -> dict:
        t0 = time.perf_counter()
        result = trainer.fit()
        if result.error:
            raise SystemExit(f"{name}: {result.error}")
        return {"run": name, "wall_s": time.perf_counter() - t0, **result.metrics}

    def run_config(name: str):
        return ray.train.RunConfig(name=f"ingest-{name}-{int(time.time())}", storage_path=storage)

    rows = []
    rows.append(
        fit(
            "xgboost before (pandas -> DMatrix)",
            ray.train.xgboost.XGBoostTrainer(
                xgb_before,
                train_loop_config={**loop, "residual": True},
                scaling_config=resources.scaling_config(),
                datasets=datasets,
                run_config=run_config("xgb-before"),
            ),
        )
    )
    rows.append(
        fit(
            "xgboost after (Ray Data -> QuantileDMatrix)",
            xgboost_model.make_trainer(xgb_config, encoder, datasets, resources, run_config("xgb-after")),
        )
    )
    rows.append(
        fit(
            "dnn before (pandas batches, encoded in the worker)",
            ray.train.torch.TorchTrainer(
                dnn_before,
                train_loop_config={**dnn_config, "encoder": encoder.to_dict()},
                scaling_config=resources.scaling_config(),
                datasets=datasets,
                run_config=run_config("dnn-before"),
            ),
        )
    )
    rows.append(
        fit(
            "dnn after (Ray Data encodes, iter_torch_batches)",
            dnn.make_trainer(dnn_config, encoder, datasets, resources, run_config("dnn-after")),
        )
    )
    ray.shutdown()

    n_train = rows[0]["train_rows"]
    lines = [
        "| run | wall s | ingest rows/s | train rows/s | worker peak RSS MiB | valid MAE |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ingest = f"{r['train_rows'] / r['ingest_s']:,.0f}" if "ingest_s" in r else ""
        per_round = args.rounds if r["run"].startswith("xgboost") else 1
        train = r["train_rows"] * per_round / r["train_s"]
        lines.append(
            f"| {r['run']} | {r['wall_s']:.1f} | {ingest} | {train:,.0f} | {r['worker_peak_rss_mib']:,.0f} "
            f"| {r[VALID_METRIC]:.1f} |"
        )
    ratios = (
        f"after / before: XGBoost peak RSS {rows[1]['worker_peak_rss_mib'] / rows[0]['worker_peak_rss_mib']:.2f}x, "
        f"ingest rows/s {rows[1]['train_rows'] / rows[1]['ingest_s'] / (n_train / rows[0]['ingest_s']):.2f}x; "
        f"DNN peak RSS {rows[3]['worker_peak_rss_mib'] / rows[2]['worker_peak_rss_mib']:.2f}x, "
        f"rows/s {rows[3]['train_rows'] / rows[3]['train_s'] / (rows[2]['train_rows'] / rows[2]['train_s']):.2f}x."
    )
    description = (
        f"Dataset {version} under {args.root}: {n_train:,} training rows. One worker x "
        f"{resources.cpus_per_worker:g} CPU; XGBoost {args.rounds} rounds (depth 8), DNN {args.epochs} epochs "
        f"(2 x 128, batch 1024; train rows/s of the last epoch). Train rows/s for XGBoost: rows x rounds / "
        "boosting seconds."
    )
    body = [*lines, "", ratios]
    print(description, *body, sep="\n")
    if not args.no_record:
        from results_md import append

        append(description, body)


if __name__ == "__main__":
    main()
