"""Benchmark: the Ray Data ETL (``mbta_ray.etl.ingest``) against the same transform in plain pandas.

    .venv/bin/python bench/etl.py --quick               # 100k events, a smoke test
    .venv/bin/python bench/etl.py --sizes 1000000       # one size
    .venv/bin/python bench/etl.py                       # 1M and 10M (the issue's sizes)

For each size it generates SYNTHETIC LAMP events (``mbta_ray.synth``; cached under bench/out/data),
then runs each implementation in a fresh subprocess -- pandas (``bench/pandas_etl.py``) and Ray
(``ray.init(num_cpus=N)`` inside the subprocess, shut down at the end) -- and samples the memory of
that subprocess and all its descendants (for Ray: the driver, GCS, raylet, workers) every
``--interval`` seconds:

- RSS summed over the tree (counts shared pages -- Ray's object store, libraries -- once per process),
- PSS summed over the tree (shared pages split between the processes mapping them: the honest total;
  the headline number),
- USS summed over the tree (pages private to one process),
- Ray's object store: allocated size of the /dev/shm file the raylet maps (this session's object
  store; its pages are in the PSS of whichever processes touched them), and the machine-wide
  /dev/shm growth (includes anything else running on the machine).

It asserts that both produce the same example and quarantine counts and the same examples (per split,
each feature's non-null count and sum), prints a markdown table with the
ratios (pandas time / Ray time; Ray peak / pandas peak) and appends it to bench/RESULTS.md under
"ETL: Ray Data vs pandas". Per-call Ray Data stats (``Dataset.stats()``) go to bench/out/.

In the same run it measures this machine's ceiling for two processes (``ceiling``, skipped with
``--no-ceiling`` or ``--only``): the pandas baseline alone on 1M events, then two copies of it at
once. A 2-CPU machine whose two processes slow each other down (shared caches, memory bandwidth, a
hypervisor's vCPUs) cannot give any split of the work 2x, and the report says how far Ray is from
what is possible here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
RESULTS = HERE / "RESULTS.md"
HEADING = "## ETL: Ray Data vs pandas"
GOAL_THROUGHPUT = 2.0  # Ray events/s >= 2 x the streaming pandas baseline at 10M (issue 16)
GOAL_MEMORY = 0.5  # Ray peak PSS <= 0.5 x the streaming pandas baseline at 10M (issue 16)
GiB = 1 << 30

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))


# --- workers (run in the measured subprocess) ---------------------------------------------------


def _instrument_ray_data(log: list[dict]) -> None:
    """Time every Dataset call that executes a plan and keep its ``stats()`` (outermost calls only)."""
    from ray.data import Dataset

    depth = [0]
    for name in ("materialize", "to_pandas", "write_parquet", "count"):
        original = getattr(Dataset, name)

        @functools.wraps(original)
        def timed(self, *args, __original=original, __name=name, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                result = __original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                elapsed = time.perf_counter() - start
                try:
                    stats = (result if __name == "materialize" else self).stats()
                except Exception as exc:  # stats are a nice-to-have, never fail the run on them
                    stats = f"(stats unavailable: {exc})"
                log.append({"call": __name, "seconds": round(elapsed, 3), "stats": stats})
            return result

        setattr(Dataset, name, timed)


def _instrument_bucket_tasks(log: list[dict]) -> None:
    """Time every pass of Ray tasks over buckets (``etl._map_buckets``, after the Ray Data read),
    in the same log as the Dataset calls: its function, tasks and wall time."""
    from mbta_ray import etl

    original = etl._map_buckets

    @functools.wraps(original)
    def timed(fn, groups, **shared):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="task_times_") as folder:
            try:
                return original(_task_timer(fn, folder), groups, **shared)
            finally:
                sizes = sorted(len(g) for g in groups) or [0]
                span = str(sizes[0]) if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
                seconds = round(time.perf_counter() - start, 3)
                lines = [line.split() for f in Path(folder).iterdir() for line in f.read_text().splitlines()]
                times = [(float(c), float(w)) for c, w in (x for x in lines if len(x) == 2)]  # cut off: skipped
                cpu, wall = (sum(t[i] for t in times) for i in (0, 1))
                log.append({"call": f"tasks {fn.__name__}", "seconds": seconds,
                            "operators": [f"{len(groups)} tasks of {span} items, task CPU {cpu:.1f} s, "
                                          f"task wall {wall:.1f} s"]})  # fmt: skip

    etl._map_buckets = timed


def _task_timer(fn, folder: str):
    """``fn`` that appends its CPU and wall seconds to a file of its worker process in ``folder``
    (the bench and the tasks share this machine's disk); keeps ``fn``'s name for Ray's task name."""

    @functools.wraps(fn)
    def run(group, **shared):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return fn(group, **shared)
        finally:
            # Never the task's own error: the folder is gone if the pass failed, or on another node.
            with contextlib.suppress(OSError), open(os.path.join(folder, f"{os.getpid()}.txt"), "a") as f:
                f.write(f"{time.process_time() - cpu} {time.perf_counter() - wall}\n")

    return run


def worker(args: argparse.Namespace) -> None:
    inputs = sorted(str(p) for p in Path(args.inputs).glob("*.parquet"))
    out = Path(args.work)
    result: dict = {"impl": args.worker}
    t0 = time.perf_counter()
    from mbta_ray.etl import DEFAULT_STOPS, EtlConfig

    if args.worker == "pandas":
        import pandas_etl

        t1 = time.perf_counter()
        run = pandas_etl.run(inputs, out, EtlConfig(), DEFAULT_STOPS, pair_chunk_events=args.pandas_chunk_events)
        result["etl_s"] = time.perf_counter() - t1
        result.update(counts=run["counts"], stages=run["timings_s"], pair_chunks=run["pair_chunks"])
    else:
        import ray

        from mbta_ray.etl import ingest
        from mbta_ray.runtime import ensure_ray

        ensure_ray(num_cpus=args.cpus, dashboard=args.dashboard, quiet=True)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        result["ray_init_s"] = time.perf_counter() - t0
        calls: list[dict] = []
        _instrument_ray_data(calls)
        _instrument_bucket_tasks(calls)
        t1 = time.perf_counter()
        res = ingest(inputs, root=out, name="bench", config=EtlConfig(), stops_path=DEFAULT_STOPS)
        result["etl_s"] = time.perf_counter() - t1
        counts = res.manifest["counts"]
        result["counts"] = {
            k: counts[k]
            for k in (
                "rows_in",
                "rows_out",
                "quarantined",
                "quarantined_by_reason",
                "trips",
                "examples",
                "examples_expected",
                "examples_by_split",
                "segments_with_median",
            )
        }
        result["ray_calls"] = calls
        t2 = time.perf_counter()
        ray.shutdown()
        result["ray_shutdown_s"] = time.perf_counter() - t2
    result["worker_total_s"] = time.perf_counter() - t0
    import pyarrow

    result["arrow_pool"] = pyarrow.default_memory_pool().backend_name  # runtime.use_system_arrow_pool's choice
    result["digest"] = _digest(out if args.worker == "pandas" else res.path)  # after the clock: not measured
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))


#: Columns whose per-split sums and non-null counts say two ETLs wrote the same examples.
DIGEST_COLUMNS = ("travel_seconds", "elapsed_s", "recent_travel_s", "recent_hop_s", "departed_s", "headway_ahead_s",
                  "path_travel_s", "hist_median_travel_s")  # fmt: skip


def _digest(folder: Path) -> dict:
    """Per split: rows, and each ``DIGEST_COLUMNS`` column's non-null count and sum (streamed)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    out = {}
    for split in ("train", "valid", "test"):
        scanner = ds.dataset(str(Path(folder) / split), format="parquet").scanner(columns=list(DIGEST_COLUMNS))
        sums = dict.fromkeys(DIGEST_COLUMNS, 0.0)
        counts = dict.fromkeys(DIGEST_COLUMNS, 0)
        rows = 0
        for batch in scanner.to_batches():
            rows += batch.num_rows
            for c in DIGEST_COLUMNS:
                col = batch.column(c)
                counts[c] += len(col) - col.null_count
                sums[c] += float(pc.sum(pc.cast(col, "float64")).as_py() or 0.0)
        out[split] = {"rows": rows, "non_null": counts, "sum": sums}
    return out


# --- measuring a subprocess tree ----------------------------------------------------------------


def _shm_used() -> int:
    return shutil.disk_usage("/dev/shm").used if os.path.isdir("/dev/shm") else 0


def _object_store_bytes(pid: int) -> int:
    """Allocated bytes of the /dev/shm files a process maps (for the raylet: this session's object
    store). tmpfs pages are allocated once whoever touches them, so this counts each page once."""
    seen, total = set(), 0
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                if "/dev/shm/" not in line:
                    continue
                fields = line.split()
                inode = fields[4]
                if inode in seen:
                    continue
                seen.add(inode)
                try:
                    total += os.stat(f"/proc/{pid}/map_files/{fields[0]}").st_blocks * 512
                except OSError:
                    pass
    except OSError:
        return 0
    return total


def _process_name(p) -> str:
    """A process's name; for Python ones, their script's (the driver, Ray's log monitor, ...)."""
    name = p.name()
    if name.startswith("python"):
        script = next((a for a in p.cmdline()[1:] if a.endswith(".py")), "")
        name = f"python {Path(script).name}" if script else name
    return name


class TreeSampler:
    """Samples memory of a process and all its descendants on a thread until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.shm0 = _shm_used()
        self.samples: list[dict] = []
        self.peak: dict = {"rss": 0, "pss": 0, "uss": 0, "shm_delta": 0, "object_store": 0, "procs": 0}
        self.peak_procs: list[str] = []
        self.cpu: dict[int, float] = {}  # pid -> user + system seconds at its last sample
        self.kernel_cpu: dict[int, float] = {}  # pid -> its system (kernel) seconds of those
        # CPU seconds by process name, each sample's growth under the name it has then (a Ray
        # worker is named after the task it runs: this is where the CPU went).
        self.cpu_by_name: dict[str, float] = {}
        self.own_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.perf_counter()

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_by_process(self) -> dict[str, float]:
        """``cpu_by_name`` rounded, largest first."""
        return {k: round(v, 2) for k, v in sorted(self.cpu_by_name.items(), key=lambda kv: -kv[1])}

    def _loop(self) -> None:
        ps = self.psutil
        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except ps.NoSuchProcess:
                break
            rss = pss = uss = store = 0
            names = []
            for p in procs:
                try:
                    m = p.memory_full_info()
                    name = _process_name(p)
                    t = p.cpu_times()
                    used = t.user + t.system
                    self.cpu_by_name[name] = self.cpu_by_name.get(name, 0.0) + used - self.cpu.get(p.pid, 0.0)
                    self.cpu[p.pid] = used
                    self.kernel_cpu[p.pid] = t.system
                except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                    continue
                rss, pss, uss = rss + m.rss, pss + m.pss, uss + m.uss
                names.append(f"{name}:{m.pss // (1 << 20)}M")
                if name == "raylet":
                    store += _object_store_bytes(p.pid)
            sample = {
                "t": round(time.perf_counter() - self.t0, 2),
                "rss": rss,
                "pss": pss,
                "uss": uss,
                "shm_delta": max(0, _shm_used() - self.shm0),
                "object_store": store,
                "procs": len(names),
            }
            self.samples.append(sample)
            if pss > self.peak["pss"]:
                self.peak_procs = names
            for k in self.peak:
                self.peak[k] = max(self.peak[k], sample[k])
            # This thread's CPU so far: what the sampling took from the measured run's two cores (PSS
            # walks every mapped page: ~26 ms per sample of Ray's 12 processes, in the kernel).
            self.own_cpu_s = time.thread_time()
            self._stop.wait(self.interval)


def _command(impl: str, data_dir: Path, work: Path, result_path: Path, args: argparse.Namespace) -> list[str]:
    """The measured subprocess's command line: one implementation on ``data_dir``."""
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        impl,
        "--inputs",
        str(data_dir),
        "--work",
        str(work),
        "--result",
        str(result_path),
        "--cpus",
        str(args.cpus),
        "--pandas-chunk-events",
        str(args.pandas_chunk_events),
    ] + (["--dashboard"] if args.dashboard else [])


_ENV = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


def measure(impl: str, data_dir: Path, size: int, args: argparse.Namespace) -> dict:
    """Run one implementation in a fresh subprocess; return its result with time and memory."""
    work = OUT / "work" / f"{impl}_{size}"
    shutil.rmtree(work, ignore_errors=True)
    result_path = OUT / f"result_{impl}_{size}.json"
    result_path.unlink(missing_ok=True)
    log_path = OUT / f"log_{impl}_{size}.txt"
    cmd = _command(impl, data_dir, work, result_path, args)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_ENV)
        sampler = TreeSampler(proc.pid, args.interval).start()
        rc = proc.wait()
        sampler.stop()
    wall = time.perf_counter() - start
    # CPU seconds of the tree: less sensitive than wall time to other work on the machine.
    cpu_s = sum(sampler.cpu.values())
    kernel_cpu_s = sum(sampler.kernel_cpu.values())  # page faults and I/O: what the allocator changes
    if rc != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{impl} at {size:,} events failed (rc={rc}); log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result.update(process_wall_s=wall, cpu_s=cpu_s, kernel_cpu_s=kernel_cpu_s, peak=sampler.peak, peak_procs=sampler.peak_procs, log=str(log_path),
                  sampler_cpu_s=sampler.own_cpu_s, cpu_by_process=sampler.cpu_by_process())  # fmt: skip
    (OUT / f"memory_{impl}_{size}.json").write_text(json.dumps(sampler.samples))
    if impl == "ray":
        datasets = [c for c in result["ray_calls"] if "stats" in c]
        stats = "\n\n".join(f"### {c['call']} ({c['seconds']} s)\n{c['stats']}" for c in datasets)
        (OUT / f"ray_stats_{size}.txt").write_text(stats)
        for c, ops in zip(datasets, _operators(datasets)):
            c["operators"] = ops
            del c["stats"]
    shutil.rmtree(work, ignore_errors=True)
    return result


_OP_HEADER = re.compile(
    r"^Operator \d+ (?P<name>.+?): (?:(?P<tasks>\d+) tasks executed, \d+ blocks produced in "
    r"(?P<secs>[\d.]+)s|executed in (?P<secs2>[\d.]+)s)?\s*$"
)


def _operators(calls: list[dict]) -> list[list[str]]:
    """Per call, the operators it executed that an earlier call had not (Dataset.stats() repeats the
    whole lineage), as 'name: N tasks, S s' (S: the operator's own wall time)."""
    seen: set[str] = set()
    out = []
    for call in calls:
        ops = []
        for line in call["stats"].splitlines():
            m = _OP_HEADER.match(line)
            if not m or not (m.group("secs") or m.group("secs2")) or line in seen:
                continue
            seen.add(line)
            name = m.group("name")
            name = name if len(name) <= 90 else name[:87] + "..."
            if m.group("tasks"):
                ops.append(f"{name}: {m.group('tasks')} tasks, {float(m.group('secs')):.1f} s")
            else:
                ops.append(f"{name}: {float(m.group('secs2')):.1f} s")
        out.append(ops)
    return out


#: Events of the ceiling's input (its own synthetic set): big enough that start-up is a small part.
CEILING_EVENTS = 1_000_000


def ceiling(args: argparse.Namespace) -> dict:
    """What two processes can do on this machine against one, for this work: the pandas baseline
    alone, then two copies of it at once (the same input, separate outputs). Two copies at once,
    each taking ``pair_s`` against ``solo_s`` alone, do twice the work in ``max(pair_s)``: so no
    split of this work over two processes, Ray's or any other, gets more than
    ``2 * solo_s / max(pair_s)`` times one process's throughput here (shared caches, memory
    bandwidth and the hypervisor's scheduling cost what they cost, whoever runs the processes)."""
    data, _ = ensure_data(CEILING_EVENTS, 4, args.seed)
    _warm_cache(data)

    def run(tags: list[str]) -> list[float]:
        procs = []
        for tag in tags:
            work, result_path = OUT / "work" / f"ceiling_{tag}", OUT / f"result_ceiling_{tag}.json"
            shutil.rmtree(work, ignore_errors=True)
            result_path.unlink(missing_ok=True)
            log = open(OUT / f"log_ceiling_{tag}.txt", "w")  # noqa: SIM115 (closed below)
            cmd = _command("pandas", data, work, result_path, args)
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_ENV), log))
        for proc, log in procs:
            rc = proc.wait()
            log.close()
            if rc != 0:
                raise RuntimeError(f"ceiling run failed (rc={rc}); log {log.name}")
        seconds = [json.loads((OUT / f"result_ceiling_{t}.json").read_text())["etl_s"] for t in tags]
        for tag in tags:
            shutil.rmtree(OUT / "work" / f"ceiling_{tag}", ignore_errors=True)
        return seconds

    solo = run(["solo"])[0]
    pair = run(["a", "b"])
    return {"events": CEILING_EVENTS, "solo_s": solo, "pair_s": pair, "ceiling": 2 * solo / max(pair)}


# --- data, machine, report ----------------------------------------------------------------------


def ensure_data(size: int, files: int, seed: int) -> tuple[Path, float]:
    """Synthetic events for this size (cached: regenerated only when the parameters differ)."""
    from mbta_ray import synth

    folder = OUT / "data" / f"synth_{size}_s{seed}_f{files}"
    params = folder / synth.PARAMS_FILE
    if params.is_file():
        meta = json.loads(params.read_text())
        if meta.get("n_events") == size and meta.get("seed") == seed and len(meta.get("files", [])) == files:
            return folder, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    synth.write_synthetic(folder, size, seed=seed, files=files)
    return folder, time.perf_counter() - start


def _warm_cache(folder: Path) -> None:
    """Read the files once so that neither implementation pays for a cold page cache."""
    for p in folder.glob("*.parquet"):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def machine() -> dict:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import pandas
    import pyarrow
    import ray

    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / GiB, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _gib(b: int) -> str:
    return f"{b / GiB:.2f}"


def report(runs: list[dict], info: dict, command: str) -> str:
    lines = [
        f"### {info['date']} -- `{command}`",
        "",
        f"Machine: {info['machine']['nproc']} CPUs ({info['machine']['cpu']}), {info['machine']['ram_gib']} GiB RAM; "
        f"Python {info['machine']['python']}, Ray {info['machine']['ray']}, pandas {info['machine']['pandas']}, "
        f"pyarrow {info['machine']['pyarrow']}; load average at start {info['machine']['load_avg_at_start']}. "
        f"Ray: local, `ray.init(num_cpus={info['cpus']})`, dashboard {'on' if info['dashboard'] else 'off'}, "
        f"started and shut down inside the measured process. pandas: one process, pairs/features in chunks of "
        f"{info['pandas_chunk_events'] or 'all'} events. Input: SYNTHETIC LAMP events (`mbta_ray.synth`, seed "
        f"{info['seed']}), K=10, default EtlConfig, GTFS stop checks on. Memory sampled every {info['interval']} s "
        "over the process and all its descendants, by a thread of the bench's own process (its CPU: sampler CPU s). "
        "Arrow memory pool of the measured processes: "
        + ", ".join(
            sorted({f"{run[i].get('arrow_pool', '?')} ({i})" for run in runs for i in ("pandas", "ray") if i in run})
        )
        + ".",
        "",
        "| events | files | impl | ETL s | process s | CPU s (tree) | of it kernel s | events/s (ETL) | peak PSS GiB | "
        "peak RSS-sum GiB | peak USS-sum GiB | object store GiB | /dev/shm growth GiB | procs | examples | quarantined | "
        "sampler CPU s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for impl in [i for i in ("pandas", "ray") if i in run]:
            r = run[impl]
            p = r["peak"]
            lines.append(
                f"| {run['size']:,} | {run['files']} | {impl} | {r['etl_s']:.1f} | {r['process_wall_s']:.1f} | {r['cpu_s']:.0f} | "
                f"{r.get('kernel_cpu_s', 0):.0f} | "
                f"{run['size'] / r['etl_s']:,.0f} | {_gib(p['pss'])} | {_gib(p['rss'])} | {_gib(p['uss'])} | "
                f"{_gib(p['object_store'])} | {_gib(p['shm_delta'])} | {p['procs']} | "
                f"{r['counts']['examples']:,} | {r['counts']['quarantined']:,} | {r.get('sampler_cpu_s', 0):.1f} |"
            )
    if not all("pandas" in run and "ray" in run for run in runs):
        return "\n".join(lines + ["", "One implementation only (`--only`): no ratios.", ""])
    lines += [
        "",
        "| events | throughput pandas/Ray (ETL s) | same, whole process | CPU s pandas/Ray | "
        "memory Ray/pandas (peak PSS) | same, RSS-sum | goal at 10M (>= 2x, <= 0.5) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        pd_, ry = run["pandas"], run["ray"]
        thr = pd_["etl_s"] / ry["etl_s"]
        thr_p = pd_["process_wall_s"] / ry["process_wall_s"]
        mem = ry["peak"]["pss"] / pd_["peak"]["pss"]
        mem_r = ry["peak"]["rss"] / pd_["peak"]["rss"]
        met = ("met" if thr >= GOAL_THROUGHPUT and mem <= GOAL_MEMORY else "NOT met") + (
            "" if run["size"] >= 10_000_000 else " (size below 10M: indicative)"
        )
        cpu = pd_["cpu_s"] / ry["cpu_s"]
        lines.append(f"| {run['size']:,} | {thr:.2f}x | {thr_p:.2f}x | {cpu:.2f} | {mem:.2f} | {mem_r:.2f} | {met} |")
    lines.append("")
    if info.get("ceiling"):
        c = info["ceiling"]
        thr = runs[-1]["pandas"]["etl_s"] / runs[-1]["ray"]["etl_s"]
        lines += [
            f"This machine's ceiling for two processes, in the same run (`ceiling()`): the pandas baseline on "
            f"{c['events']:,} events took {c['solo_s']:.1f} s alone, and two copies of it at once "
            f"{' and '.join(f'{x:.1f}' for x in c['pair_s'])} s: two processes do at most **{c['ceiling']:.2f}x** "
            f"one's work per second here, whoever splits it. Ray's {thr:.2f}x at {runs[-1]['size']:,} events is "
            f"{thr / c['ceiling']:.0%} of that ceiling; the goal's {GOAL_THROUGHPUT:.0f}x is "
            f"{'within' if c['ceiling'] >= GOAL_THROUGHPUT else 'above'} it.",
            "",
        ]
    for run in runs:
        ry, pd_ = run["ray"], run["pandas"]
        lines.append(
            f"Where the time goes at {run['size']:,} events -- Ray (ray.init {ry['ray_init_s']:.1f} s, "
            f"shutdown {ry['ray_shutdown_s']:.1f} s; in order, each Dataset call that executes, with the "
            "operators it ran and their wall time from `Dataset.stats()` (operators overlap, and a call's "
            "time beyond its operators' is scheduling, actor start-up and driver-side collection), and each "
            "pass of Ray tasks over buckets (`tasks <function>`):"
        )
        lines.append("")
        for c in ry["ray_calls"]:
            lines.append(
                f"- `{c['call']}` {c['seconds']:.1f} s: "
                + ("; ".join(f"`{o}`" for o in c["operators"]) or "(nothing new executed)")
            )
        driver = ry["etl_s"] - sum(c["seconds"] for c in ry["ray_calls"])
        lines.append(f"- driver work outside those (inspect/sha256, plan, splits, accounting): {driver:.1f} s")
        lines.append("")
        lines.append("pandas stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in pd_["stages"].items()))
        lines.append("")
        if "cpu_by_process" in ry:
            lines.append(
                "Ray's CPU s by process (sampled each interval under the name it had then; a worker is "
                "named after its task, `ray::IDLE` between tasks): "
                + ", ".join(f"{k} {v:.1f}" for k, v in ry["cpu_by_process"].items() if v >= 0.05)
            )
            lines.append("")
    return "\n".join(lines)


def append_results(text: str) -> None:
    existing = RESULTS.read_text() if RESULTS.is_file() else "# Benchmarks\n"
    if HEADING not in existing:
        existing = (
            existing.rstrip() + f"\n\n{HEADING}\n\nRay Data ETL (`mbta_ray.etl.ingest`) against the same "
            "transform in plain pandas (`bench/pandas_etl.py`), on synthetic LAMP events. Runs are appended "
            "newest last; `bench/etl.py` writes them.\n"
        )
    RESULTS.write_text(existing.rstrip() + "\n\n" + text.rstrip() + "\n")


def _compare(size: int, pandas_res: dict, ray_res: dict) -> None:
    a, b = pandas_res["counts"], ray_res["counts"]
    for key in ("rows_in", "rows_out", "quarantined", "quarantined_by_reason", "examples", "examples_by_split"):
        if a[key] != b[key]:
            raise AssertionError(f"{size:,} events: {key} differs: pandas {a[key]} vs Ray {b[key]}")
    # The same examples, not only as many: per split and column, non-null counts equal and sums
    # equal up to the order of float additions.
    for split, da in pandas_res["digest"].items():
        db = ray_res["digest"][split]
        if da["rows"] != db["rows"] or da["non_null"] != db["non_null"]:
            raise AssertionError(f"{size:,} events, {split}: pandas {da} vs Ray {db}")
        for c, total in da["sum"].items():
            if abs(total - db["sum"][c]) > 1e-6 * max(1.0, abs(total)):
                raise AssertionError(f"{size:,} events, {split}, {c}: sum pandas {total} vs Ray {db['sum'][c]}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated event counts")
    ap.add_argument("--quick", action="store_true", help="100k events only (smoke test)")
    ap.add_argument("--files", type=int, default=0, help="input files per size (0: max(4, events / 500k))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    ap.add_argument("--dashboard", action="store_true", help="start Ray's dashboard too (off: not part of the ETL)")
    ap.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="memory sampling interval, s (each sample of Ray's tree costs ~26 ms of CPU: at 0.2 s, 13 %% of a core)",
    )
    ap.add_argument(
        "--pandas-chunk-events",
        type=int,
        default=200_000,
        help="pandas pairs/features per chunk of this many events (0: all at once)",
    )
    ap.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    ap.add_argument(
        "--no-ceiling", action="store_true", help="skip the two-process ceiling (two pandas copies at once, ~2 min)"
    )
    ap.add_argument(
        "--only",
        choices=["pandas", "ray"],
        help="run one implementation (no ratios, no same-examples check): e.g. Ray alone at 50M events",
    )
    # internal: the measured subprocess
    ap.add_argument("--worker", choices=["pandas", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    OUT.mkdir(parents=True, exist_ok=True)
    sizes = [100_000] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    # The Arrow pool the user chose, if any, is part of what was run (runtime.use_system_arrow_pool).
    from mbta_ray.runtime import ARROW_POOL_ENV

    pool = os.environ.get(ARROW_POOL_ENV)
    command = (f"{ARROW_POOL_ENV}={pool} " if pool else "") + "python bench/etl.py " + " ".join(sys.argv[1:])
    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "cpus": args.cpus,
        "dashboard": args.dashboard,
        "interval": args.interval,
        "seed": args.seed,
        "pandas_chunk_events": args.pandas_chunk_events,
    }
    runs = []
    for size in sizes:
        files = args.files or max(4, -(-size // 500_000))
        data, gen_s = ensure_data(size, files, args.seed)
        print(
            f"[{size:,} events] synthetic data in {data} ({f'generated in {gen_s:.1f} s' if gen_s else 'cached'})",
            flush=True,
        )
        _warm_cache(data)
        run = {"size": size, "files": files, "generate_s": gen_s}
        for impl in [args.only] if args.only else ["pandas", "ray"]:
            r = measure(impl, data, size, args)
            print(
                f"[{size:,} events] {impl}: ETL {r['etl_s']:.1f} s, process {r['process_wall_s']:.1f} s, "
                f"peak PSS {_gib(r['peak']['pss'])} GiB (RSS-sum {_gib(r['peak']['rss'])} GiB)",
                flush=True,
            )
            run[impl] = r
        if not args.only:
            _compare(size, run["pandas"], run["ray"])
        runs.append(run)
        (OUT / f"bench_{size}.json").write_text(json.dumps({"info": info, "run": run}, indent=1, default=str))
    if not args.only and not args.no_ceiling:
        info["ceiling"] = ceiling(args)
        print(f"two-process ceiling: {info['ceiling']}", flush=True)
    text = report(runs, info, command)
    print()
    print(text)
    if not args.no_results:
        append_results(text)
        print(f"\nappended to {RESULTS}")


if __name__ == "__main__":
    main()
