"""DNN epochs: the examples re-encoded by Ray Data every epoch vs encoded once per search.

    python bench/dnn_epochs.py --root artifacts [--epochs 3] [--no-record]

On the newest dataset under --root (e.g. `make run`'s) and its DNN experiment's encoder, one Ray
Train worker trains the same network twice, in one run: (a) on ``dnn.encoded`` splits, which Ray
Data reads and encodes again on every pass; (b) on ``dnn.prepare``'s splits, encoded once and kept
in the object store (what `mbta-ray tune` gives every DNN trial since issue 16). Reported: wall
time of each fit, the encoding's own time (b), each epoch's training seconds and valid MAE.
Appends the table to bench/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "artifacts"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import ray

    from mbta_ray.config import WorkerResources
    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import dnn
    from mbta_ray.models.data import load_split
    from mbta_ray.versioning import list_versions

    root = Path(args.root)
    versions = list_versions(root)  # newest first
    if not versions:
        sys.exit(f"no dataset under {root}: run `make run` first")
    name, version = versions[0]["name"], versions[0]["version"]
    encoders = sorted(root.glob(f"experiments/dnn-{version[:8]}-*/encoder.json"))
    if not encoders:
        sys.exit(f"no DNN experiment for dataset {version} under {root}/experiments")
    encoder = FeatureEncoder.load(encoders[-1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    splits = {s: load_split(str(root), version, s, name) for s in ("train", "valid")}
    n_train = splits["train"].count()
    config = {"hidden_width": 128, "hidden_layers": 2, "epochs": args.epochs, "batch_size": 1024, "lr": 1e-3}

    def fit(datasets: dict, label: str) -> dict:
        began = time.perf_counter()
        trainer = ray.train.torch.TorchTrainer(
            dnn.train_loop_per_worker,
            train_loop_config={**config, "encoder": encoder.to_dict()},
            scaling_config=WorkerResources(1, 1.0).scaling_config(),
            datasets=datasets,
            run_config=ray.train.RunConfig(
                name=f"dnn-epochs-{label}-{int(time.time())}", storage_path="/tmp/dnn_epochs"
            ),
        )
        result = trainer.fit()
        history = result.metrics_dataframe
        return {
            "wall_s": time.perf_counter() - began,
            "epoch_s": history["train_s"].tolist(),
            "valid_mae": float(history["valid-mae"].iloc[-1]),
        }

    every = fit({s: dnn.encoded(d, encoder) for s, d in splits.items()}, "every")
    began = time.perf_counter()
    prepared = dnn.prepare(splits, encoder)
    encode_s = time.perf_counter() - began
    once = fit(prepared, "once")
    ray.shutdown()

    def epochs(r: dict) -> str:
        return " / ".join(f"{s:.1f}" for s in r["epoch_s"])

    lines = [
        "| examples | encoding s | fit wall s | epoch train s | valid MAE |",
        "|---|---:|---:|---|---:|",
        f"| re-encoded every epoch (`dnn.encoded`) | | {every['wall_s']:.1f} | {epochs(every)} | {every['valid_mae']:.1f} |",
        f"| encoded once (`dnn.prepare`) | {encode_s:.1f} | {once['wall_s']:.1f} | {epochs(once)} | {once['valid_mae']:.1f} |",
        "",
        f"Encoded once, a fit with its encoding took {(once['wall_s'] + encode_s) / every['wall_s']:.2f}x the "
        f"time of one re-encoding every epoch; an epoch {sum(once['epoch_s']) / sum(every['epoch_s']):.2f}x.",
    ]
    print("\n".join(lines))
    if not args.no_record:
        from results_md import append

        append(
            f"Dataset {version} under {root}: {n_train:,} training rows; one worker x 1 CPU, {args.epochs} epochs "
            "(2 x 128, batch 1024).",
            lines,
        )


if __name__ == "__main__":
    main()
