"""The Ray Serve application: a FastAPI ingress and a batching model deployment.

    serve run mbta_ray.serve.app:app                  # after `make run` promoted a model
    curl -s localhost:8000/healthz

- ``Predictor`` holds the production model (from the registry, checksums verified) and batches
  requests from all ingress replicas with ``@serve.batch``: one feature computation and one model
  call per batch. Its ``user_config`` names the registry, model and version ("production" follows
  the pointer); a redeploy with a new config reloads the model in place (``reconfigure``).
- ``Api`` is the HTTP ingress: pydantic validation (422 naming the field), a body-size limit
  (413), 503 with a message while no model is loaded, and never a 5xx for anything a client sent.
  Inputs the model cannot handle (a route it never saw, a stop without embedding or coordinates)
  are refused by the Predictor with a 422 in the same format.
- Custom metrics (``mbta_ray.serve.metrics``): predictions served, rejections by reason, the loaded
  model version, batch sizes.
"""

import asyncio
import logging
import math
import os
import threading
import time
from typing import Any, Literal

import numpy as np
import pandas as pd
import ray
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from mbta_ray.defaults import MODEL_NAME, REGISTRY_ENV, SERVE_APP_NAME
from mbta_ray.errors import MbtaRayError
from mbta_ray.gtfs import station_platforms, stop_table
from mbta_ray.paths import DEFAULT_ROOT, DEFAULT_STOPS, GTFSRT_VEHICLE_POSITIONS
from mbta_ray.realtime.live import LiveConfig, LiveTracker, looped, open_source
from mbta_ray.registry import Registry, RegistryError
from mbta_ray.serve import metrics
from mbta_ray.serve.inference import Answer, ModelRunner, Refusal
from mbta_ray.serve.page import PAGE
from mbta_ray.serve.schemas import BatchRequest, BatchResponse, PredictRequest, PredictResponse, StopId
from mbta_ray.timeutil import iso_z

JSON = "application/json"

logger = logging.getLogger("ray.serve")
MAX_BODY_BYTES = 1024 * 1024  # a full batch (256 requests x 20 stops with schedules) is ~480 KB
#: A request whose model replica died under it is sent again (predictions are idempotent), so a
#: replica crash costs latency, not failed requests, while other replicas (or its replacement) run.
REPLICA_RETRIES = 3
#: How often a replica following "production" re-reads the registry's pointer (seconds).
PRODUCTION_POLL_S = 30.0
#: How long the watcher leaves a version that failed to load before fetching it again.
FAILED_RETRY_S = 300.0
_REPLICA_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={
        # Two at least: with one, a replica that died stalled traffic ~11 s, until its replacement
        # had loaded the model; with two the other one answers (a test kills one under load and
        # sees only 200s). The second costs 0.5 CPU and a model's memory.
        "min_replicas": 2,
        "max_replicas": 4,
        "target_ongoing_requests": 32,
        "upscale_delay_s": 10,
        "downscale_delay_s": 120,
    },
    max_ongoing_requests=128,
)
class Predictor:
    """The production model behind ``@serve.batch``."""

    def __init__(self) -> None:
        self.runner = None
        self.error: str | None = None
        #: Why the replica serves another version than the pointer names (None: it serves that one).
        self.degraded: str | None = None
        #: The version that last failed to load, and when the watcher may try it again.
        self._failed: tuple[str, float] | None = None
        # reconfigure and the watcher thread both load models: one at a time, and a config change
        # (generation) makes a watcher load that started before it stand down.
        self._lock = threading.Lock()
        self._generation = 0

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Load the model named by ``config`` = {registry, model_name, version, poll_s}.

        version "production" follows the registry's pointer: loaded now, and re-read every
        ``poll_s`` seconds (default 30) by a watcher thread that swaps in a newly promoted model
        in place, so a RayJob's promotion reaches a running RayService without a redeploy. A
        concrete version pins the model (what ``mbta-ray serve reload`` deploys).
        """
        registry = config.get("registry") or os.environ.get(REGISTRY_ENV, DEFAULT_ROOT)
        version = config.get("version", "production")
        with self._lock:
            self._generation += 1
            self.registry = Registry(registry, config.get("model_name", MODEL_NAME))
            self.follow = version == "production"
            self.poll_s = float(config.get("poll_s", PRODUCTION_POLL_S))
            error = self._load(version, self._generation)
        if error is not None and not self.follow:
            # A pinned version that cannot load fails the deploy (serve reload reports it) instead
            # of silently serving the previous model.
            raise RegistryError(error)
        if self.follow and getattr(self, "_watcher", None) is None:
            self._watcher = threading.Thread(target=self._watch, name="production-watcher", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll_s)
            with self._lock:
                if not self.follow:
                    continue
                try:
                    self._load("production", self._generation, quiet=True)
                except Exception:  # noqa: BLE001 -- a watcher that dies would silently stop following
                    logger.exception(
                        "production watcher: reload failed; keeping %s",
                        self.runner.version if self.runner else "no model",
                    )

    def _load(self, version: str, generation: int, quiet: bool = False) -> str | None:
        """Load ``version`` (under ``self._lock``); returns why it failed, or None."""
        reg = self.registry
        try:
            if version == "production":
                prod = reg.production()
                if prod is None:
                    if self.runner is None:  # the client's message names no server path; the log does
                        self.error = f"no production model for {reg.model!r} yet: run `make run`"
                        logger.warning("no production model in %s yet", reg.base)
                    return None
                version = prod.get("version")
                if not isinstance(version, str):
                    raise RegistryError(f"{reg.base}/production.json names no version")
            previous = self.runner
            if quiet and previous is not None and previous.version == version:
                self.error = self.degraded = None  # nothing promoted since (or a pointer repaired)
                return None
            if quiet and self._failed is not None and self._failed[0] == version and time.monotonic() < self._failed[1]:
                return self.error  # the same broken version: not fetched again every poll (backoff)
            runner = ModelRunner(reg.fetch(version), version=version)
            if generation != self._generation:
                return None  # the config changed while this loaded: it no longer applies
            self.runner, self.error, self.degraded = runner, None, None  # a batch sees the old or the new model
            self._failed = None
            if previous is not None and previous.version != version:
                metrics.model_loaded().set(0, tags={"model_version": previous.version})
            metrics.model_loaded().set(1, tags={"model_version": version})
            logger.info("loaded model %s from %s", version, reg.base)
            return None
        except (MbtaRayError, OSError, ValueError) as exc:  # keep the model we had; report why the new one failed
            # Clients get the kind of failure, not the server's paths; the log has the whole message.
            self.error = (
                f"model {version!r} of {reg.model!r} cannot be loaded ({type(exc).__name__}); see the server log"
            )
            logger.error("cannot load %s from %s: %s", version, reg.base, exc)
            metrics.load_failures().inc(tags={"error": type(exc).__name__})
            # Files repaired in place keep their version name: try it again, but not every poll.
            self._failed = (version, time.monotonic() + max(FAILED_RETRY_S, self.poll_s))
            if self.follow and generation == self._generation:
                if self.runner is None:  # a fresh replica: the newest version production had that verifies
                    self._fall_back(exclude=version)
                if self.runner is not None:
                    self.degraded = f"{self.error}; serving {self.runner.version}, the last version that verified"
            return str(exc)

    def _fall_back(self, exclude: str) -> None:
        """Load the most recently promoted version (audit log, newest first) whose files verify: a
        broken pointer must not leave a new replica with nothing to serve."""
        try:
            log = self.registry.audit_log()
        except MbtaRayError as exc:
            logger.error("no fallback: cannot read the audit log: %s", exc)
            return
        promoted = [e.get("candidate") for e in reversed(log) if e.get("accepted")]
        for version in dict.fromkeys(v for v in promoted if isinstance(v, str)):
            if version == exclude:
                continue
            try:
                runner = ModelRunner(self.registry.fetch(version), version=version)
            except (MbtaRayError, OSError, ValueError) as exc:  # a bad bundle of any kind: try the next
                logger.error("fallback %s does not load either: %s", version, exc)
                metrics.load_failures().inc(tags={"error": type(exc).__name__})
                continue
            self.runner = runner
            metrics.model_loaded().set(1, tags={"model_version": version})
            logger.warning(
                "production %s cannot be loaded: serving %s, the last promoted version that verifies", exclude, version
            )
            return

    def info(self) -> dict:
        if self.runner is None:
            return {"ready": False, "error": self.error}
        meta = self.runner.metadata
        return {
            "ready": True,
            "version": self.runner.version,
            "family": meta.get("family"),
            "dataset": meta.get("dataset"),
            "metrics": (meta.get("evaluation") or {}).get("metrics"),
            "created_at": meta.get("created_at"),
            "error": self.error,
            "status": "degraded" if self.degraded else "ok",
            "degraded": self.degraded,
        }

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict(self, batches: list[list[PredictRequest]], locs: list[tuple]) -> list[Answer | Refusal]:
        """One feature computation and model call for all callers' requests in the batch.

        ``locs`` is where each caller's requests sit in its HTTP body (for error locations). A
        caller whose input the model cannot handle gets a ``Refusal`` (returned, not raised: an
        exception would fail every caller in the batch).
        """
        runner = self.runner  # one model for the whole batch, even if a reload lands meanwhile
        if runner is None:
            return [Refusal(503, self.error or "no model loaded", "no_model") for _ in batches]
        out: list[Answer | Refusal | None] = []
        for b, loc in zip(batches, locs):
            refusals = [x for i, r in enumerate(b) if (x := runner.refusal(r, (*loc, i) if len(loc) > 1 else loc))]
            out.append(Refusal(422, [e for x in refusals for e in x.detail], refusals[0].reason) if refusals else None)
        accepted = [b for b, o in zip(batches, out) if o is None]
        if accepted:
            flat = [r for b in accepted for r in b]
            metrics.batch_size().observe(len(flat))
            responses = iter(runner.predict(flat))
            out = [
                o if o is not None else Answer(runner.version, [next(responses).model_dump_json().encode() for _ in b])
                for b, o in zip(batches, out)
            ]
            tags = {"model_version": runner.version}
            metrics.requests_served().inc(len(flat), tags=tags)
            metrics.predictions().inc(sum(len(r.stops_ahead) for r in flat), tags=tags)
        return out

    def predict_live(self, requests: list[PredictRequest]) -> list[PredictResponse | None]:
        """The live service's one call per snapshot: every active vehicle's request in one model call;
        a request the model cannot handle (an unknown route or stop) gets None, not the batch's failure."""
        runner = self.runner
        if runner is None:
            raise RuntimeError(self.error or "no model loaded")
        accepted = [i for i, r in enumerate(requests) if runner.refusal(r) is None]
        out: list[PredictResponse | None] = [None] * len(requests)
        if accepted:
            for i, response in zip(accepted, runner.predict([requests[i] for i in accepted]), strict=True):
                out[i] = response
            tags = {"model_version": runner.version}
            metrics.requests_served().inc(len(accepted), tags=tags)
            metrics.predictions().inc(sum(len(requests[i].stops_ahead) for i in accepted), tags=tags)
        return out


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, num_replicas=1, max_ongoing_requests=64)
class Live:
    """The live service: polls a VehiclePositions source every ``poll_s``, keeps the network state
    (``realtime.live.LiveTracker``, the one state implementation) and, for each new snapshot, predicts
    every active vehicle's stops ahead in one call to the ``Predictor``. One replica: it is the state.

    ``user_config`` (``realtime.live.LIVE_DEFAULTS``): feed_url (an http(s) URL, a snapshot file
    rewritten in place, or parquet archives to replay; none: the embedded GTFS-realtime hour),
    poll_s, max_age_s, timeout_s, vehicle_timeout_s, replay_speed, replay_start, max_stops_ahead,
    replay_loop.
    """

    def __init__(self, predictor: DeploymentHandle, live: DeploymentHandle | None = None) -> None:
        self.predictor = predictor
        self.live = live
        self.tracker: LiveTracker | None = None
        self.error: str | None = None
        self._task: asyncio.Task | None = None
        self._stops = stop_table(DEFAULT_STOPS).set_index("stop_id")
        self._platforms = station_platforms(self._stops.reset_index())

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """A new config starts a new state from the source it names (a bad one fails the deploy)."""
        cfg = LiveConfig.from_dict(config)
        self.tracker = LiveTracker(await asyncio.to_thread(open_source, cfg, GTFSRT_VEHICLE_POSITIONS), cfg)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.tracker = looped(self.tracker) or self.tracker  # a replay at its end starts again
            tracker = self.tracker
            try:
                await self._step(tracker)
                self.error = None
            except Exception as exc:  # noqa: BLE001 -- the loop must outlive any one failure
                self.error = f"{type(exc).__name__}: {exc}"
                logger.exception("live: a poll failed; keeping the last good predictions")
            await asyncio.sleep(tracker.config.poll_s)

    async def _step(self, tracker: LiveTracker) -> None:
        before = dict(tracker.errors)
        started = time.perf_counter()  # snapshot -> published feed: from the fetch on
        changed = await asyncio.to_thread(tracker.poll)
        for reason, n in tracker.errors.items():
            if n > before.get(reason, 0):
                metrics.feed_errors().inc(n - before.get(reason, 0), tags={"reason": reason})
        age = tracker.feed_age_s()
        if age is not None:
            metrics.feed_age().set(age)
        if not changed:
            return
        now = tracker.now()
        pairs = await asyncio.to_thread(tracker.requests, now)
        responses = await self.predictor.predict_live.remote([r for _, r in pairs]) if pairs else []
        answered = [(v, r) for (v, _), r in zip(pairs, responses, strict=True) if r is not None]
        await asyncio.to_thread(tracker.publish, now, answered)
        seconds = time.perf_counter() - started
        tracker.note_publish(seconds)
        metrics.publish_latency().observe(seconds)

    def health(self) -> dict:
        if self.tracker is None:
            return {"status": "starting", "reason": "not configured yet"}
        out = self.tracker.health()
        if self.error and out["status"] == "ok":
            out.update(status="degraded", reason=f"predictions failed: {self.error}")
        out["vehicles"] = len(self.tracker.vehicles)
        out["predictions"] = len(self.tracker.current())
        return out

    def trip_updates(self, as_json: bool) -> bytes | dict:
        if as_json:
            from google.protobuf import json_format

            return json_format.MessageToDict(self.tracker.trip_updates(), preserving_proto_field_name=True)
        return self.tracker.trip_updates_pb()

    def config(self) -> dict | None:
        """The live user_config in force (``deploy`` keeps it when it switches the model)."""
        return None if self.tracker is None else self.tracker.config.to_user_config()

    def timings(self) -> dict:
        """Every recorded publish time and feed age at publish, in seconds (for bench/live.py)."""
        t = self.tracker
        return {"publish_s": list(t.publish_s), "feed_age_at_publish_s": list(t.publish_lag_s)} if t else {}

    def arrivals(self, stop_id: str) -> dict | None:
        """None: a stop GTFS does not know."""
        stops = self._platforms.get(stop_id)
        if stops is None:
            return None
        now = self.tracker.now()
        return {
            "stop_id": stop_id,
            "stops": sorted(stops),
            "at": iso_z(now),
            "arrivals": self.tracker.arrivals(set(stops), now),
        }

    def lines(self) -> dict:
        """The lines as the feed's vehicles run them, with GTFS names and coordinates (the page's map)."""
        out = []
        for line in self.tracker.lines():
            found = self._stops.reindex(line["stops"])
            stops = [
                {"stop_id": sid, "name": None if pd.isna(r.stop_name) else r.stop_name, "lat": r.lat, "lon": r.lon}
                for sid, r in zip(line["stops"], found.itertuples())
                if np.isfinite(r.lat) and np.isfinite(r.lon)
            ]
            if len(stops) >= 2:
                out.append({**line, "stops": stops})
        return {"lines": out}

    def vehicles(self) -> dict:
        now = self.tracker.now()
        return {"at": iso_z(now), "vehicles": [v.to_dict(now) for v in self.tracker.active(now)]}


api = FastAPI(
    title="mbta_ray predictions",
    description="Arrival-time and delay predictions for the stops ahead of an MBTA vehicle.",
)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, counted on the bytes actually
    received (a chunked body has no Content-Length to trust). Reading stops at the limit; a body
    within it is buffered (at most ``max_bytes``) and replayed to the app."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _too_large(self, scope: dict, receive: Any, send: Any, size: str) -> None:
        metrics.reject("body_too_large")
        detail = f"body of {size} bytes is over the {self.max_bytes}-byte limit"
        await JSONResponse(status_code=413, content={"detail": detail})(scope, receive, send)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:  # refused before reading a byte
            return await self._too_large(scope, receive, send, declared.decode())
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send, f"more than {self.max_bytes}")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)


api.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

#: An error echoes at most this much of what the client sent (a 64 MiB field must not come back).
ECHO_CHARS, ECHO_ITEMS, ECHO_ERRORS = 120, 5, 50


def _excerpt(value: Any, depth: int = 0) -> Any:
    if isinstance(value, (bytes, bytearray)):  # a body that is not UTF-8 is echoed as escapes
        value = bytes(value).decode("utf-8", "backslashreplace")
    return _excerpt_text(value, depth)


def _excerpt_text(value: Any, depth: int = 0) -> Any:
    """A short, JSON-safe excerpt of client input for an error message: long strings, lists and
    dicts are cut (saying how long they were), NaN/Infinity become strings (Python's JSON parser
    accepts them), and lone UTF-16 surrogates are escaped (they cannot be encoded as UTF-8)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(value):,} characters)"
    if depth >= 3 and isinstance(value, (dict, list, tuple)):
        return f"<{type(value).__name__} of {len(value):,} items>"
    if isinstance(value, dict):
        items = list(value.items())
        out = {_excerpt(str(k)): _excerpt(v, depth + 1) for k, v in items[: ECHO_ITEMS * 4]}
        if len(items) > ECHO_ITEMS * 4:
            out["..."] = f"{len(items) - ECHO_ITEMS * 4:,} more keys"
        return out
    if isinstance(value, (list, tuple)):
        out = [_excerpt(v, depth + 1) for v in value[:ECHO_ITEMS]]
        return out + [f"... {len(value) - ECHO_ITEMS:,} more items"] if len(value) > ECHO_ITEMS else out
    return value


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    metrics.reject("validation")
    errors = exc.errors()
    detail = []
    # bytes (a body that is not UTF-8) would make jsonable_encoder itself fail: excerpt them first.
    raw = [{k: (_excerpt(v) if k in ("input", "ctx") else v) for k, v in e.items()} for e in errors[:ECHO_ERRORS]]
    for error in jsonable_encoder(raw):
        error["loc"] = [_excerpt(part) for part in error.get("loc", [])]  # keys may carry surrogates
        for key in ("msg",):  # input and ctx were excerpted above
            if key in error:
                error[key] = _excerpt(error[key])
        detail.append(error)
    if len(errors) > ECHO_ERRORS:
        detail.append({"loc": ["body"], "type": "too_many_errors", "msg": f"{len(errors) - ECHO_ERRORS:,} more errors"})
    return JSONResponse(status_code=422, content={"detail": detail})


#: The error answers of both prediction endpoints, as the OpenAPI schema documents them.
PREDICT_ERRORS = {
    413: {"description": f"body over {MAX_BODY_BYTES:,} bytes (counted as received, chunked or not)"},
    422: {"description": "invalid input, or a route/stop the model cannot handle"},
    503: {"description": "no model loaded yet"},
}


def _refused(refusal: Refusal) -> JSONResponse:
    metrics.reject(refusal.reason)
    detail = refusal.detail
    if isinstance(detail, list) and len(detail) > ECHO_ERRORS:  # a batch of unknown stops: not megabytes
        more = len(detail) - ECHO_ERRORS
        detail = [*detail[:ECHO_ERRORS], {"loc": ["body"], "type": "too_many_errors", "msg": f"{more:,} more errors"}]
    return JSONResponse(status_code=refusal.status, content={"detail": detail})


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 64},
    # Serve's default (5) made the proxy bounce requests off a busy ingress and retry
    # them with backoff: 17 req/s at 16 concurrent instead of 63 (bench/serve_load.py).
    max_ongoing_requests=256,
)
@serve.ingress(api)
class Api:
    def __init__(self, predictor: DeploymentHandle, live: DeploymentHandle | None = None) -> None:
        self.predictor = predictor
        self.live = live

    async def _call(self, requests: list[PredictRequest], loc: tuple) -> Answer | Refusal:
        return await self._retrying(lambda: self.predictor.predict.remote(requests, loc))

    async def _retrying(self, call):
        """``call()``'s answer, sent again if its model replica died under it; a Refusal(503) after
        REPLICA_RETRIES more tries."""
        for attempt in range(REPLICA_RETRIES + 1):
            try:
                return await call()
            except _REPLICA_GONE as exc:
                if attempt == REPLICA_RETRIES:
                    return Refusal(
                        503,
                        f"no model replica answered after {attempt + 1} tries ({type(exc).__name__}); retry shortly",
                        "replica_unavailable",
                    )
                logger.warning("model replica lost (%s); retrying the request", type(exc).__name__)
                await asyncio.sleep(0.1 * 2**attempt)

    async def _info(self) -> dict:
        info = await self._retrying(lambda: self.predictor.info.remote())
        return {"ready": False, "error": info.detail} if isinstance(info, Refusal) else info

    @api.post(
        "/predict",
        response_model=PredictResponse,
        responses=PREDICT_ERRORS,
    )
    async def predict(self, body: PredictRequest):
        result = await self._call([body], ("body",))
        return _refused(result) if isinstance(result, Refusal) else Response(result.single(), media_type=JSON)

    @api.post(
        "/predict/batch",
        response_model=BatchResponse,
        responses=PREDICT_ERRORS,
    )
    async def predict_batch(self, body: BatchRequest):
        result = await self._call(body.requests, ("body", "requests"))
        return _refused(result) if isinstance(result, Refusal) else Response(result.batch(), media_type=JSON)

    @api.get("/healthz", responses={503: {"description": "no model loaded yet (the reason in detail)"}})
    async def healthz(self):
        info = await self._info()
        if not info["ready"]:
            return JSONResponse(status_code=503, content={"ready": False, "detail": info["error"]})
        # Degraded still answers 200 (it serves a verified model; a probe must not pull it), and says why.
        out = {"ready": True, "model_version": info["version"]}
        if info.get("degraded"):
            out.update(status="degraded", detail=info["degraded"])
        if self.live is not None:
            live = await self._live("health")
            out["live"] = (
                live if isinstance(live, dict) else {"status": "degraded", "reason": "live service unavailable"}
            )
            if out["live"]["status"] == "degraded" and "status" not in out:
                out.update(status="degraded", detail=f"live feed: {out['live']['reason']}")
        return out

    @api.get("/model", responses={503: {"description": "no model loaded yet (the reason in detail)"}})
    async def model(self):
        info = await self._info()
        if not info["ready"]:
            return JSONResponse(status_code=503, content={"detail": info["error"]})
        return info

    async def _live(self, method: str, *args):
        """A call to the live deployment, or a JSONResponse(503) when there is none or it is down."""
        if self.live is None:
            return JSONResponse(status_code=503, content={"detail": "this app runs without the live service"})
        try:
            return await getattr(self.live, method).remote(*args)
        except _REPLICA_GONE as exc:
            return JSONResponse(status_code=503, content={"detail": f"live service unavailable ({type(exc).__name__})"})

    @api.get(
        "/gtfs-rt/TripUpdates.pb",
        responses={
            200: {"description": "GTFS-realtime FeedMessage (protobuf; ?format=json: the same as JSON)"},
            503: {"description": "no live service"},
        },
    )
    async def trip_updates(self, format: Literal["pb", "json"] = "pb"):  # noqa: A002 -- the query name
        """The predictions of every active trip as GTFS-realtime TripUpdates (FULL_DATASET; arrival
        time and uncertainty per stop ahead). Empty while the feed is older than max_age_s."""
        out = await self._live("trip_updates", format == "json")
        if isinstance(out, Response):
            return out
        return JSONResponse(out) if format == "json" else Response(out, media_type="application/x-protobuf")

    @api.get("/stops/{stop_id}/arrivals", responses={404: {"description": "a stop GTFS does not know"}})
    async def stop_arrivals(self, stop_id: StopId):
        """The next predicted arrivals at a stop, soonest first (a parent station such as
        ``place-pktrm`` covers its platforms): route, direction, trip, vehicle, predicted time,
        seconds away, and how old the vehicle's observation is."""
        out = await self._live("arrivals", stop_id)
        if out is None:
            return JSONResponse(status_code=404, content={"detail": f"stop {stop_id!r} is not in GTFS"})
        return out

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self):
        """The live page: the lines from GTFS stop coordinates, the vehicles on them, a stop's arrivals
        counting down after a click (everything it loads comes from this app)."""
        return HTMLResponse(PAGE)

    @api.get("/lines")
    async def lines(self):
        """The lines as the feed's vehicles run them: stops in order with names and coordinates."""
        return await self._live("lines")

    @api.get("/vehicles")
    async def vehicles(self):
        """The active vehicles: trip, route, direction, status, stop, position and last update."""
        return await self._live("vehicles")

    @api.get("/live/healthz")
    async def live_health(self):
        """The live feed: ``ok``, ``degraded`` (the reason and the feed's age) or ``starting``."""
        return await self._live("health")


def build(
    args: dict[str, str] | None = None, predictor_options: dict | None = None, live: dict | bool | None = None
) -> serve.Application:
    """The application; ``args`` (from ``serve run ... key=value`` or a config) go to the model's
    user_config: registry, model_name, version (and poll_s). ``predictor_options`` override the model
    deployment's options (e.g. its autoscaling_config) when built from code. ``live`` is the live
    deployment's user_config (None: replay the embedded hour; False: an app without it)."""
    args = dict(args or {})
    # Relative paths resolve in the replica's working directory (the repo root under `serve run`).
    config = {
        "registry": args.get("registry") or os.environ.get(REGISTRY_ENV, DEFAULT_ROOT),
        "model_name": args.get("model_name", MODEL_NAME),
        "version": args.get("version", "production"),
    }
    if "poll_s" in args:
        config["poll_s"] = float(args["poll_s"])
    predictor = Predictor.options(user_config=config, **(predictor_options or {})).bind()
    if live is False:
        return Api.bind(predictor)
    return Api.bind(
        predictor, Live.options(user_config=LiveConfig.from_dict(live or {}).to_user_config()).bind(predictor)
    )


def deploy(
    registry: str,
    version: str = "production",
    model_name: str = MODEL_NAME,
    name: str = SERVE_APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Deploy (or hot-reload) the app on the connected Ray cluster with a concrete model version.

    "production" is resolved to the version the pointer names now, so after a promotion the
    user_config changes and Serve calls ``Predictor.reconfigure`` on the running replicas: the
    model is swapped in place, with no restart and no failed requests. The running app's live
    feed settings are kept (its ``Live`` deployment is asked for them; default when none runs);
    its state starts again from that feed (Serve replaces the Live replica on this redeploy).
    Returns the version.
    """
    reg = Registry(registry, model_name)  # refuses a model name that is not a plain registry name
    if version == "production":
        prod = reg.production()
        if prod is None:
            raise RegistryError(f"no production model in {registry} for {model_name!r}: promote one first")
        version = prod["version"]
    reg.metadata(version)  # a plain version name that exists, checked before anything is deployed
    serve.run(
        build({"registry": registry, "model_name": model_name, "version": version}, live=_running_live_config(name)),
        name=name,
        route_prefix=route_prefix,
        blocking=False,
    )
    return version


def _running_live_config(app_name: str) -> dict | None:
    """The user_config of the running app's live deployment; None when there is none (yet)."""
    try:
        return serve.get_deployment_handle("Live", app_name=app_name).config.remote().result(timeout_s=30)
    except Exception:  # noqa: BLE001 -- no such app or deployment, or not answering: the default
        return None


app = build()
