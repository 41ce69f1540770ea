"""Training data ingest, before and after streaming: rows/s and peak memory per training worker.

    python bench/train_ingest.py --synthetic-events 300000     # ~1.4 M training rows, SYNTHETIC
    python bench/train_ingest.py --root artifacts              # the newest dataset under --root

Same dataset, same Ray Train trainers, same parameters, in one run, for both families:
- XGBoost. before: the worker materializes its shard as pandas and builds a ``DMatrix`` (the code
  before issue 16); after: Ray Data encodes, the worker streams its shard into a ``QuantileDMatrix``
  (``xgboost_model.train_loop_per_worker``); after, external memory: the same into an
  ``ExtMemQuantileDMatrix`` whose pages go to the worker's disk (``external_memory: true``). Reported: rows/s of building the matrices, rows x
  rounds / s of boosting, the worker's peak RSS, valid MAE.
- DNN. before: the worker iterates pandas batches and encodes each one itself; after: Ray Data
  encodes, the worker reads ``iter_torch_batches`` (``dnn.train_loop_per_worker``). Reported:
  training rows/s of the last epoch, the worker's peak RSS, valid MAE.
One worker (the other CPU feeds it, as the tuner leaves one to Ray Data). Appends the table to
bench/RESULTS.md unless --no-record.

``--worker-memory-limit GIB`` runs each training worker in its own Linux memory cgroup (v1 or v2,
where this user may create one) capped at that size, and reports the memory charged to the worker
while it trains (the cgroup's peak: its heap and the pages it writes; not the object-store pages
Ray Data's tasks wrote, nor the imports charged before it joined). A worker that needs more is
killed by the kernel and its run is reported as such: this is how "a dataset larger than one
worker's memory trains" is shown, with the dataset's encoded size printed next to the limit.
"""

from __future__ import annotations

import argparse
import os
import re
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


# --- a memory cap per worker (Linux cgroups) -----------------------------------------------------


class MemoryCap:
    """One memory cgroup, created under this process's own, with a hard limit; a training worker
    moves itself into it (``capped``). v1 (memory.limit_in_bytes) and v2 (memory.max) hierarchies."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        self.v2, parent = _own_memory_cgroup()
        self.path = parent / f"mbta_ray_bench_{name}_{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        try:
            self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(limit_bytes))
            self.peak_bytes()  # memory.peak: Linux >= 5.19 on v2
        except OSError as exc:
            self.path.rmdir()
            raise SystemExit(f"--worker-memory-limit: cannot cap memory in {self.path.parent}: {exc}") from None
        self.limit_bytes = limit_bytes

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def peak_bytes(self) -> int:
        return int(self._read("memory.peak" if self.v2 else "memory.max_usage_in_bytes"))

    def oom_kills(self) -> int:
        text = self._read("memory.events" if self.v2 else "memory.oom_control")
        found = re.search(r"^oom_kill (\d+)", text, re.M)
        return int(found.group(1)) if found else 0

    def close(self) -> None:
        """Move what is left (a worker Ray keeps) back to the parent, then remove the group."""
        for pid in self._read("cgroup.procs").split():
            try:
                (self.path.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # it exited meanwhile
        try:
            self.path.rmdir()
        except OSError as exc:
            print(f"note: could not remove {self.path}: {exc}", file=sys.stderr)


def _own_memory_cgroup() -> tuple[bool, Path]:
    """(is v2, this process's memory cgroup folder); SystemExit where none can be written."""
    base, folder, v2 = Path("/sys/fs/cgroup"), None, False
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1: the memory hierarchy wins over the unified one
            folder, v2 = base / "memory" / rel.lstrip("/"), False
            break
        if controllers == "" and (base / "cgroup.controllers").exists():
            folder, v2 = base / rel.lstrip("/"), True
    if folder is None or not os.access(folder, os.W_OK):
        raise SystemExit("--worker-memory-limit: no writable memory cgroup here (needs Linux cgroups and permission)")
    if v2 and "memory" not in (folder / "cgroup.subtree_control").read_text().split():
        # v2 gives children a memory controller only when the parent delegates it, and a cgroup
        # holding processes (this one) cannot: run the bench from a delegated cgroup instead.
        raise SystemExit(f"--worker-memory-limit: {folder} does not delegate the memory controller (cgroup v2)")
    return v2, folder


def capped(loop):
    """``loop`` run in the memory cgroup named by ``config["memory_cgroup"]`` (when set)."""

    def run(config: dict) -> None:
        folder = config.get("memory_cgroup")
        if folder:
            Path(folder, "cgroup.procs").write_text(str(os.getpid()))
        loop(config)

    run.__name__ = getattr(loop, "__name__", "loop")
    return run


def _split_size(folder: Path, columns: list[str]) -> tuple[int, float]:
    """A split's rows (from its parquet footers) and what ``columns`` take in memory as Arrow (Ray
    Data's blocks), GiB: bytes per row of the first file, read, times the rows. No Ray needed."""
    import pyarrow.parquet as pq

    paths = sorted(folder.rglob("*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    sample = pq.read_table(paths[0], columns=[c for c in columns if c in pq.read_schema(paths[0]).names])
    return rows, sample.nbytes / max(sample.num_rows, 1) * rows / (1 << 30)


def _ratios(rows: list[dict]) -> list[str]:
    """after / before per family, where both trained."""
    by_name = {r["run"].split(" (")[0]: r for r in rows if not r.get("killed")}
    out = []
    for family, speed in (("xgboost", "ingest"), ("dnn", "train")):
        before, after = by_name.get(f"{family} before"), by_name.get(f"{family} after")
        if not (before and after):
            continue
        rows_per_s = [r["train_rows"] / r[f"{speed}_s"] for r in (before, after)]
        out.append(
            f"{family} after / before: peak RSS {after['worker_peak_rss_mib'] / before['worker_peak_rss_mib']:.2f}x, "
            f"{speed} rows/s {rows_per_s[1] / rows_per_s[0]:.2f}x."
        )
    return out


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
    ap.add_argument(
        "--worker-memory-limit", type=float, default=0, help="GiB: cap each training worker with a memory cgroup"
    )
    ap.add_argument("--only", choices=["xgboost", "dnn"], help="one family only")
    args = ap.parse_args()
    limit_bytes = int(args.worker_memory_limit * (1 << 30))
    if limit_bytes:
        MemoryCap("probe", limit_bytes).close()  # fail now, not after the ingest, where there are no cgroups

    import ray

    from mbta_ray import versioning
    from mbta_ray.config import WorkerResources
    from mbta_ray.defaults import VALID_METRIC
    from mbta_ray.encoding import FeatureEncoder
    from mbta_ray.models import dnn, xgboost_model
    from mbta_ray.models.data import TRAIN_COLUMNS, load_split, split_path
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

    caps: dict[str, MemoryCap] = {}

    def cap(name: str) -> dict:
        """The loop config's cgroup entry for the run ``name`` (none without a limit)."""
        if not limit_bytes:
            return {}
        caps[name] = MemoryCap(re.sub(r"\W+", "_", name.split(" (")[0]), limit_bytes)
        return {"memory_cgroup": str(caps[name].path)}

    def fit(name: str, trainer) -> dict:
        t0 = time.perf_counter()
        try:  # Train V2 raises when a worker dies (a kernel OOM kill at the cap is one way)
            result, error = trainer.fit(), None
        except Exception as exc:
            result, error = None, exc
        row = {"run": name, "wall_s": time.perf_counter() - t0}
        if name in caps:
            try:
                row |= {"cgroup_peak_mib": caps[name].peak_bytes() / (1 << 20), "oom_kills": caps[name].oom_kills()}
            finally:
                caps.pop(name).close()
        error = error or result.error
        if error:
            if not row.get("oom_kills"):
                raise SystemExit(f"{name}: {error}")
            return row | {"killed": True}
        return row | result.metrics

    def run_config(name: str):
        return ray.train.RunConfig(name=f"ingest-{name}-{int(time.time())}", storage_path=storage)

    def xgb_after(name: str, external: bool):
        """The trainer as ``xgboost_model.make_trainer`` builds it, with the loop capped."""
        return ray.train.xgboost.XGBoostTrainer(
            capped(xgboost_model.train_loop_per_worker),
            train_loop_config={**loop, "residual": True, "external_memory": external, **cap(name)},
            scaling_config=resources.scaling_config(),
            datasets={split: xgboost_model.encoded(ds, encoder, True) for split, ds in datasets.items()},
            run_config=run_config("xgb-extmem" if external else "xgb-after"),
        )

    xgb_runs = {
        "xgboost before (pandas -> DMatrix)": lambda name: ray.train.xgboost.XGBoostTrainer(
            capped(xgb_before),
            train_loop_config={**loop, "residual": True, **cap(name)},
            scaling_config=resources.scaling_config(),
            datasets=datasets,
            run_config=run_config("xgb-before"),
        ),
        "xgboost after (Ray Data -> QuantileDMatrix)": lambda name: xgb_after(name, external=False),
        "xgboost after, external memory (Ray Data -> ExtMemQuantileDMatrix, pages on disk)": lambda name: xgb_after(
            name, external=True
        ),
    }
    dnn_runs = {
        "dnn before (pandas batches, encoded in the worker)": lambda name: ray.train.torch.TorchTrainer(
            capped(dnn_before),
            train_loop_config={**dnn_config, "encoder": encoder.to_dict(), **cap(name)},
            scaling_config=resources.scaling_config(),
            datasets=datasets,
            run_config=run_config("dnn-before"),
        ),
        "dnn after (Ray Data encodes, iter_torch_batches)": lambda name: ray.train.torch.TorchTrainer(
            capped(dnn.train_loop_per_worker),  # as dnn.make_trainer builds it
            train_loop_config={**dnn_config, "encoder": encoder.to_dict(), **cap(name)},
            scaling_config=resources.scaling_config(),
            datasets={split: dnn.encoded(ds, encoder) for split, ds in datasets.items()},
            run_config=run_config("dnn-after"),
        ),
    }
    runs = {**({} if args.only == "dnn" else xgb_runs), **({} if args.only == "xgboost" else dnn_runs)}
    try:
        rows = [fit(name, build(name)) for name, build in runs.items()]
    finally:  # interrupted or failed: leave no cgroup behind
        for left in caps.values():
            left.close()
    ray.shutdown()

    # From the files: counting through Ray Data here would start a second Ray instance.
    n_train, arrow_gib = _split_size(split_path(args.root, version, "train"), TRAIN_COLUMNS)
    lines = [
        "| run | wall s | ingest rows/s | train rows/s | worker peak RSS MiB | worker cgroup peak MiB | valid MAE |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        charged = f"{r['cgroup_peak_mib']:,.0f}" if "cgroup_peak_mib" in r else ""
        if r.get("killed"):
            lines.append(f"| {r['run']} | {r['wall_s']:.1f} | killed by the kernel at the limit | | | {charged} | |")
            continue
        ingest = f"{r['train_rows'] / r['ingest_s']:,.0f}" if "ingest_s" in r else ""
        per_round = args.rounds if r["run"].startswith("xgboost") else 1
        train = r["train_rows"] * per_round / r["train_s"]
        lines.append(
            f"| {r['run']} | {r['wall_s']:.1f} | {ingest} | {train:,.0f} | {r['worker_peak_rss_mib']:,.0f} "
            f"| {charged} | {r[VALID_METRIC]:.1f} |"
        )
    ratios = " ".join(_ratios(rows))
    float32_gib = n_train * (len(encoder.tree_feature_names) + 2) * 4 / (1 << 30)
    description = (
        f"Dataset {version} under {args.root}: {n_train:,} training rows ({arrow_gib:.2f} GiB of training "
        f"columns as Arrow, uncompressed; {float32_gib:.2f} GiB as the trees' float32 inputs). One worker x "
        f"{resources.cpus_per_worker:g} CPU; XGBoost {args.rounds} rounds (depth 8), DNN {args.epochs} epochs "
        f"(2 x 128, batch 1024; train rows/s of the last epoch). Train rows/s for XGBoost: rows x rounds / "
        "boosting seconds."
        + (
            f" Each worker capped at {args.worker_memory_limit:g} GiB by a memory cgroup (peak charged to it shown)."
            if limit_bytes
            else ""
        )
    )
    body = [*lines, "", ratios]
    print(description, *body, sep="\n")
    if not args.no_record:
        from results_md import append

        append(description, body)


if __name__ == "__main__":
    main()
