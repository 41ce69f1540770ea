"""Serving load benchmark: the Serve app vs a naive Serve deployment vs one FastAPI + uvicorn process.

    python bench/serve_load.py [--registry artifacts] [--duration 15] [--concurrency 1 16 64]

One async HTTP load generator (aiohttp, closed loop: C clients each send the next request when the
last one answered), in one run, against, one at a time on the same machine:
  (a) ``serve``: the app (``mbta_ray.serve.app``: FastAPI ingress -> ``@serve.batch`` Predictor),
  (b) ``naive``: the usual tutorial app, one Serve deployment with a FastAPI ingress that predicts each
      request on its own (no batching, no model deployment, default one replica),
  (c) ``fastapi``: ``bench/serve_fastapi.py`` under uvicorn, one process predicting per request,
  (a') ``serve-direct``: the same app on a cluster started with Ray 2.60's
      ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (user code and router on the replica's loop, gRPC between
      replicas, and direct ingress: the ingress replica serves HTTP itself, on a port from 30000, so
      no proxy actor hop; in production HAProxy fronts those ports on 8000). Run in a child process,
      since the flag must be set before the cluster starts.
All three serve the registry's production model with the same ``ModelRunner``; every request asks for
10 stops ahead and is built from the model's dataset (``mbta_ray.serve.smoke``). 127.0.0.1 only. For each
target and concurrency: warm-up, then ``--duration`` seconds measured; req/s of 200 answers and
p50/p95/p99 latency; any non-200 is counted. Goal (issue 6, 2 cores): serve >= 3x naive's req/s and
>= 1.0x fastapi's at 64 concurrent, with p99 <= 100 ms. Appends to bench/RESULTS.md.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STOPS = 10


def request_bodies(registry: str, n: int) -> tuple[list[dict], str, Path]:
    """Up to ``n`` bodies of exactly 10 stops ahead from the production model's dataset."""
    import pandas as pd

    from mbta_ray import versioning
    from mbta_ray.registry import Registry
    from mbta_ray.serve.smoke import examples_from_split

    reg = Registry(registry)
    prod = reg.production()
    if prod is None:
        sys.exit(f"no production model in {registry}: run `make run` first")
    version = prod["version"]
    folder = reg.fetch(version)
    ds = reg.metadata(version)["dataset"]
    # Vehicles with 10 observed stops ahead (a test-split pair set mostly ends earlier: its hours
    # are the day's last): from all splits, since load needs realistic requests, not held-out truth.
    folder_ds = versioning.version_dir(registry, ds["name"], ds["version"])
    rows = pd.concat([pd.read_parquet(folder_ds / split) for split in ("test", "valid", "train")], ignore_index=True)
    full = rows.groupby(["trip_key", "from_stop_id"])["stops_ahead"].transform("max") >= STOPS
    bodies = [
        {**ex.body, "stops_ahead": ex.body["stops_ahead"][:STOPS]} for ex in examples_from_split(rows[full], n, seed=0)
    ]
    if not bodies:
        sys.exit("no test-split request has 10 stops ahead")
    return bodies[:n], version, Path(folder)


async def _load(url: str, bodies: list[dict], concurrency: int, warmup_s: float, duration_s: float) -> dict:
    import aiohttp

    payloads = [json.dumps(b).encode() for b in bodies]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    state = {"measure_from": 0.0, "until": 0.0}

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        i = k
        while time.perf_counter() < state["until"]:
            t0 = time.perf_counter()
            try:
                async with session.post(
                    url, data=payloads[i % len(payloads)], headers={"content-type": "application/json"}
                ) as r:
                    await r.read()
                    status = str(r.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status = type(exc).__name__
            t1 = time.perf_counter()
            # Throughput = answers completed inside the window (a slow server still counts the
            # answers it finishes there), latency of those answers.
            if state["measure_from"] <= t1 <= state["until"]:
                (
                    latencies.append(t1 - t0)
                    if status == "200"
                    else errors.__setitem__(status, errors.get(status, 0) + 1)
                )
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        state["measure_from"], state["until"] = start + warmup_s, start + warmup_s + duration_s
        await asyncio.gather(*(client(session, k) for k in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": errors,
        "rps": len(latencies) / duration_s,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "mean_ms": float(lat.mean()) if len(lat) else None,
    }


def load(url: str, bodies: list[dict], levels: list[int], warmup_s: float, duration_s: float) -> list[dict]:
    out = []
    for c in levels:
        r = asyncio.run(_load(url, bodies, c, warmup_s, duration_s))
        print(
            f"  {url} c={c}: {r['rps']:.1f} req/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms errors {r['errors']}",
            flush=True,
        )
        out.append(r)
    return out


def wait_ready(url: str, timeout_s: float = 180) -> None:
    import requests

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become ready")


def naive_app(model_dir: str, version: str):
    """The tutorial design: one deployment, FastAPI ingress, the model predicting per request."""
    from fastapi import FastAPI
    from ray import serve

    from mbta_ray.serve.schemas import PredictRequest, PredictResponse

    api = FastAPI()

    @serve.deployment
    @serve.ingress(api)
    class Naive:
        def __init__(self, model_dir: str, version: str) -> None:
            from mbta_ray.serve.inference import ModelRunner

            self.runner = ModelRunner(model_dir, version=version)

        @api.get("/healthz")
        def healthz(self) -> dict:
            return {"ready": True}

        @api.post("/predict", response_model=PredictResponse)
        def predict(self, body: PredictRequest):
            return self.runner.predict([body])[0]

    return Naive.bind(model_dir, version)


def serve_direct(args, bodies: list[dict], version: str) -> list[dict]:
    """The app with throughput-optimized Serve, loaded on its ingress replica's own HTTP port."""
    import psutil
    import ray
    from ray import serve
    from ray.util.state import list_actors

    from mbta_ray.runtime import ensure_ray
    from mbta_ray.serve.app import build

    ensure_ray(num_cpus=os.cpu_count(), dashboard=True, quiet=True)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(
        build({"registry": str(Path(args.registry).resolve()), "version": version}),
        name="serve",
        route_prefix="/",
        blocking=False,
    )
    wait_ready(f"http://127.0.0.1:{args.port}/healthz")
    (pid,) = [a.pid for a in list_actors(filters=[("state", "=", "ALIVE")]) if "#Api#" in (a.name or "")]
    ports = sorted(
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and 30000 <= c.laddr.port <= 31000
    )
    if not ports:
        raise RuntimeError("the ingress replica has no direct-ingress HTTP port (30000-31000)")
    direct = f"http://127.0.0.1:{ports[0]}"
    wait_ready(f"{direct}/healthz")
    print(f"serve-direct ({direct}):", flush=True)
    out = load(f"{direct}/predict", bodies, args.concurrency, args.warmup, args.duration)
    serve.shutdown()
    ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", default=str(ROOT / "artifacts"))
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds per target and level")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument(
        "--targets",
        nargs="+",
        default=["serve", "naive", "fastapi", "serve-direct"],
        choices=["serve", "naive", "fastapi", "serve-direct"],
    )
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)  # the serve-direct child's results
    ap.add_argument("--bodies", type=int, default=400, help="distinct request bodies, cycled")
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    bodies, version, model_dir = request_bodies(args.registry, args.bodies)
    print(f"model {version}, {len(bodies)} request bodies x {STOPS} stops", flush=True)
    results: dict[str, list[dict]] = {}
    url = f"http://127.0.0.1:{args.port}"
    if {"serve", "naive"} & set(args.targets):
        import ray
        from ray import serve

        from mbta_ray.runtime import ensure_ray
        from mbta_ray.serve.app import build

        ensure_ray(num_cpus=os.cpu_count(), dashboard=True, quiet=True)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for target in [t for t in args.targets if t in ("serve", "naive")]:
            app = (
                build({"registry": str(Path(args.registry).resolve()), "version": version})
                if target == "serve"
                else naive_app(str(model_dir), version)
            )
            serve.run(app, name=target, route_prefix="/", blocking=False)
            wait_ready(f"{url}/healthz")
            print(f"{target}:", flush=True)
            results[target] = load(f"{url}/predict", bodies, args.concurrency, args.warmup, args.duration)
            serve.delete(target)
        serve.shutdown()
        ray.shutdown()
    if "serve-direct" in args.targets and os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1":
        results["serve-direct"] = serve_direct(args, bodies, version)
    elif "serve-direct" in args.targets:
        child = ROOT / "bench" / "out" / "serve_direct.json"
        child.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "--targets",
            "serve-direct",
            "--no-record",
            "--json-out",
            str(child),
            "--registry",
            args.registry,
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
            "--bodies",
            str(args.bodies),
            "--port",
            str(args.port),
            "--concurrency",
            *map(str, args.concurrency),
        ]
        subprocess.run(cmd, env={**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, check=True)
        results["serve-direct"] = json.loads(child.read_text())["serve-direct"]
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results))
        return
    if "fastapi" in args.targets:
        env = {**os.environ, "MBTA_RAY_MODEL_DIR": str(model_dir), "MBTA_RAY_MODEL_VERSION": version}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "serve_fastapi:app",
                "--app-dir",
                str(ROOT / "bench"),
                "--host",
                "127.0.0.1",
                "--port",
                str(args.port + 1),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
        )
        try:
            wait_ready(f"http://127.0.0.1:{args.port + 1}/healthz")
            print("fastapi:", flush=True)
            results["fastapi"] = load(
                f"http://127.0.0.1:{args.port + 1}/predict", bodies, args.concurrency, args.warmup, args.duration
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    out = ROOT / "bench" / "out" / "serve_load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model_version": version, "results": results}, indent=1))
    lines = report(results, args)
    print("\n".join(lines))
    if not args.no_record:
        from bench.results_md import append

        append(
            f"Model: registry production {version} ({json.loads((model_dir / 'metadata.json').read_text())['family']}), "
            f"requests of {STOPS} stops ahead from its dataset; closed-loop aiohttp clients in the "
            f"benchmark process; {args.warmup:.0f} s warm-up + {args.duration:.0f} s measured per level; "
            "targets run one at a time on the same machine.",
            lines,
        )


def report(results: dict[str, list[dict]], args) -> list[str]:
    lines = [
        "| target | concurrency | req/s | p50 ms | p95 ms | p99 ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]

    def f(x: float | None) -> str:
        return f"{x:.1f}" if x is not None else "-"

    for target, rows in results.items():
        for r in rows:
            lines.append(
                f"| {target} | {r['concurrency']} | {r['rps']:.1f} | {f(r['p50_ms'])} | {f(r['p95_ms'])} | "
                f"{f(r['p99_ms'])} | {r['errors'] or 0} |"
            )
    top = max(args.concurrency)
    at = {t: next((r for r in rows if r["concurrency"] == top), None) for t, rows in results.items()}
    if at.get("serve") or at.get("serve-direct"):
        lines += ["", f"At {top} concurrent:"]
        for ours in ("serve", "serve-direct"):
            s = at.get(ours)
            if not s:
                continue
            for base, goal in (("naive", 3.0), ("fastapi", 1.0)):
                if at.get(base) and at[base]["rps"]:
                    ratio = s["rps"] / at[base]["rps"]
                    lines.append(
                        f"- {ours} / {base} req/s = {ratio:.2f}x (goal >= {goal:.1f}x: "
                        f"{'met' if ratio >= goal else 'NOT met'})"
                    )
            if s["p99_ms"] is not None:
                lines.append(
                    f"- {ours} p99 = {s['p99_ms']:.1f} ms (goal <= 100 ms: "
                    f"{'met' if s['p99_ms'] <= 100 else 'NOT met'})"
                )
    return lines


if __name__ == "__main__":
    main()
