"""GPU check: both model families trained on the GPU inside a Tune run, against the same run on CPU.

Several GPU trials share one GPU through fractional GPUs (``--gpu-fraction``); with more than one GPU
a multi-worker run (one GPU per Train worker) is added. The GPU counts as used only if the GPU's
memory and utilization rose during the GPU runs (``nvidia-smi`` sampled every 0.5 s) and the DNN
workers reported a cuda device. Same searcher seed and all-random steps on both sides, so the GPU
and CPU runs train the same hyperparameters.

    python bench/gpu_check.py --events 200000 --out bench/out/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPACE = {
    "xgboost": {
        "search": {"eta": {"log_uniform": [0.05, 0.3]}, "max_depth": {"int": [6, 10]}},
        "fixed": {"num_boost_round": 300, "early_stopping_rounds": 20},
    },
    "dnn": {
        "search": {"lr": {"log_uniform": [0.001, 0.005]}, "hidden_width": {"int": [128, 384]}},
        "fixed": {"epochs": 3, "batch_size": 4096, "hidden_layers": 2},
    },
}


class GpuSampler(threading.Thread):
    """Peak GPU utilization (%) and memory (MiB) over a run, from nvidia-smi."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.util, self.mem, self.samples = 0.0, 0.0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                for line in out.stdout.strip().splitlines():
                    u, m = (float(x) for x in line.split(","))
                    self.util, self.mem = max(self.util, u), max(self.mem, m)
                self.samples += 1
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self.stop.wait(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--gpu-fraction", type=float, default=0.25)
    ap.add_argument("--cpus-per-worker", type=float, default=2.0)
    ap.add_argument("--families", default="xgboost,dnn")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "gpu"))
    args = ap.parse_args()

    import ray
    import torch
    import yaml

    from mbta_ray.etl import EtlConfig, ingest
    from mbta_ray.runtime import ensure_ray
    from mbta_ray.synth import write_synthetic
    from mbta_ray.tune import TrialResources, TuneSettings, run_search

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "cpus": os.cpu_count(),
    }
    import xgboost

    info["xgboost"] = xgboost.__version__
    print(json.dumps(info), flush=True)
    # No dashboard here (its extra packages are not on the GPU image), so no ASHA (see TuneSettings).
    ensure_ray(num_cpus=os.cpu_count(), num_gpus=gpus, dashboard=False, quiet=True)
    ray.data.DataContext.get_current().enable_progress_bars = False

    work = out / "work"
    synth = write_synthetic(work / "synth", args.events, seed=0, files=4)
    t0 = time.perf_counter()
    ds = ingest([str(p) for p in synth.paths], root=work, config=EtlConfig(k=10))
    info["ingest_s"] = round(time.perf_counter() - t0, 1)
    info["examples"] = ds.manifest["counts"]["examples_by_split"]
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))

    runs = []
    plans = [("gpu", TrialResources(1, args.cpus_per_worker, args.gpu_fraction, 0.1))] if gpus else []
    plans.append(("cpu", TrialResources(1, args.cpus_per_worker, 0.0, 0.1)))
    if gpus > 1:
        plans.append((f"gpu-{gpus}workers", TrialResources(gpus, args.cpus_per_worker, 1.0, 0.1)))
    for family in args.families.split(","):
        for label, res in plans:
            concurrent = 1 if label.startswith("gpu-") else args.concurrent
            settings = TuneSettings(
                family=family,
                num_samples=args.samples,
                max_concurrent=concurrent,
                random_steps=args.samples,
                seed=0,
                resources=res,
                storage=str(work / "experiments"),
                space_file=str(space),
                name=f"{family}-{label}",
                early_stopping=False,
            )
            sampler = GpuSampler()
            sampler.start()
            t0 = time.perf_counter()
            try:
                r = run_search(settings, work, ds.version)
                err = None
            except Exception as exc:  # noqa: BLE001 -- record and go on to the next run
                r, err = None, f"{type(exc).__name__}: {exc}"
            wall = time.perf_counter() - t0
            sampler.stop.set()
            sampler.join()
            row = {
                "family": family,
                "run": label,
                "wall_s": round(wall, 1),
                "error": err,
                "gpu_peak_util_pct": sampler.util,
                "gpu_peak_mem_mib": sampler.mem,
                "gpus_per_worker": res.gpus_per_worker,
                "workers": res.num_workers,
                "concurrent": concurrent,
            }
            if r:
                import pandas as pd

                trials = pd.read_csv(Path(r["experiment"]) / "results.csv")
                row.update(
                    trials=r["trials"],
                    best_valid_mae=round(r["best_valid_mae"], 2),
                    test_mae=round(r["report"][family]["overall"]["mae"], 2),
                    persistence_test_mae=round(r["report"]["persistence"]["overall"]["mae"], 2),
                    devices=sorted(set(trials["device"].astype(str))) if "device" in trials else None,
                )
            print(json.dumps(row), flush=True)
            runs.append(row)
    result = {"info": info, "runs": runs}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    lines = [
        "| family | run | trials | wall s | best valid MAE | test MAE | persistence MAE | GPU peak util % | GPU peak MiB | devices | error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['family']} | {r['run']} | {r.get('trials', '')} | {r['wall_s']} | {r.get('best_valid_mae', '')} | "
            f"{r.get('test_mae', '')} | {r.get('persistence_test_mae', '')} | {r['gpu_peak_util_pct']:.0f} | "
            f"{r['gpu_peak_mem_mib']:.0f} | {r.get('devices') or ''} | {r['error'] or ''} |"
        )
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
