"""The Ray Serve application: a FastAPI ingress and a batching model deployment.

    serve run mbta_ray.serve.app:app                  # after `make run` promoted a model
    curl -s localhost:8000/healthz

- ``Predictor`` holds the production model (from the registry, checksums verified) and batches
  requests from all ingress replicas with ``@serve.batch``: one feature computation and one model
  call per batch. Its ``user_config`` names the registry, model and version ("production" follows
  the pointer); a redeploy with a new config reloads the model in place (``reconfigure``).
- ``Api`` is the HTTP ingress: pydantic validation (422 naming the field), a body-size limit
  (413), 503 with a message while no model is loaded, and never a 5xx for anything a client sent.
"""


import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from mbta_ray.serve.schemas import BatchRequest, BatchResponse, PredictRequest, PredictResponse

logger = logging.getLogger("ray.serve")
MAX_BODY_BYTES = 256 * 1024  # a full batch of 256 requests x 20 stops is ~200 KiB


class NoModel(RuntimeError):
    """No production model is loaded (yet)."""


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32,
                        "upscale_delay_s": 10, "downscale_delay_s": 120},
    max_ongoing_requests=128,
)
class Predictor:
    """The production model behind ``@serve.batch``."""

    def __init__(self) -> None:
        self.runner = None
        self.error: str | None = None

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Load the model named by ``config`` = {registry, model_name, version}."""
        from mbta_ray.registry import Registry, RegistryError
        from mbta_ray.serve.inference import ModelRunner

        registry = config.get("registry") or os.environ.get("MBTA_RAY_REGISTRY", "artifacts")
        reg = Registry(registry, config.get("model_name", "travel-time"))
        version = config.get("version", "production")
        try:
            if version == "production":
                prod = reg.production()
                if prod is None:
                    self.runner, self.error = None, f"no production model in {reg.base} yet: run `make run`"
                    return
                version = prod["version"]
            folder = reg.fetch(version)
            self.runner, self.error = ModelRunner(folder, version=version), None
            logger.info("loaded model %s from %s", version, reg.base)
        except RegistryError as exc:  # keep serving the model we had; report why the new one failed
            self.error = str(exc)
            logger.error("cannot load %s from %s: %s", version, reg.base, exc)

    def info(self) -> dict:
        if self.runner is None:
            return {"ready": False, "error": self.error}
        meta = self.runner.metadata
        return {"ready": True, "version": self.runner.version, "family": meta.get("family"),
                "dataset": meta.get("dataset"), "metrics": (meta.get("evaluation") or {}).get("metrics"),
                "created_at": meta.get("created_at"), "error": self.error}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict(self, batches: list[list[PredictRequest]]) -> list[list[PredictResponse] | str]:
        """One feature computation and model call for a batch; a str per item means no model."""
        if self.runner is None:
            return [self.error or "no model loaded" for _ in batches]
        flat = [r for b in batches for r in b]
        responses = self.runner.predict(flat)
        out, i = [], 0
        for b in batches:
            out.append(responses[i:i + len(b)])
            i += len(b)
        return out


api = FastAPI(title="mbta_ray predictions",
              description="Arrival-time and delay predictions for the stops ahead of an MBTA vehicle.")


@api.middleware("http")
async def _limit_body(request: Request, call_next):
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        return JSONResponse(status_code=413, content={"detail": f"body of {size} bytes is over the "
                                                                f"{MAX_BODY_BYTES}-byte limit"})
    return await call_next(request)


def _unavailable(exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": str(exc)})


@serve.deployment(ray_actor_options={"num_cpus": 0.25},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 64})
@serve.ingress(api)
class Api:
    def __init__(self, predictor: DeploymentHandle) -> None:
        self.predictor = predictor

    async def _predict(self, requests: list[PredictRequest]) -> list[PredictResponse]:
        result = await self.predictor.predict.remote(requests)
        if isinstance(result, str):
            raise NoModel(result)
        return result

    @api.post("/predict", response_model=PredictResponse)
    async def predict(self, body: PredictRequest):
        try:
            return (await self._predict([body]))[0]
        except NoModel as exc:
            return _unavailable(exc)

    @api.post("/predict/batch", response_model=BatchResponse)
    async def predict_batch(self, body: BatchRequest):
        try:
            responses = await self._predict(body.requests)
        except NoModel as exc:
            return _unavailable(exc)
        return BatchResponse(model_version=responses[0].model_version, responses=responses)

    @api.get("/healthz")
    async def healthz(self):
        info = await self.predictor.info.remote()
        if not info["ready"]:
            return JSONResponse(status_code=503, content={"ready": False, "detail": info["error"]})
        return {"ready": True, "model_version": info["version"]}

    @api.get("/model")
    async def model(self):
        info = await self.predictor.info.remote()
        if not info["ready"]:
            return JSONResponse(status_code=503, content={"detail": info["error"]})
        return info


def build(args: dict[str, str] | None = None) -> serve.Application:
    """The application; ``args`` (from ``serve run ... key=value`` or a config) go to the model's
    user_config: registry, model_name, version."""
    args = dict(args or {})
    # Relative paths resolve in the replica's working directory (the repo root under `serve run`).
    config = {"registry": args.get("registry") or os.environ.get("MBTA_RAY_REGISTRY", "artifacts"),
              "model_name": args.get("model_name", "travel-time"), "version": args.get("version", "production")}
    return Api.bind(Predictor.options(user_config=config).bind())


def deploy(registry: str, version: str = "production", model_name: str = "travel-time", name: str = "mbta",
           route_prefix: str = "/") -> str:
    """Deploy (or hot-reload) the app on the connected Ray cluster with a concrete model version.

    "production" is resolved to the version the pointer names now, so after a promotion the
    user_config changes and Serve calls ``Predictor.reconfigure`` on the running replicas: the
    model is swapped in place, with no restart and no failed requests. Returns the version.
    """
    from mbta_ray.registry import Registry, RegistryError

    if version == "production":
        prod = Registry(registry, model_name).production()
        if prod is None:
            raise RegistryError(f"no production model in {registry} for {model_name!r}: promote one first")
        version = prod["version"]
    serve.run(build({"registry": registry, "model_name": model_name, "version": version}),
              name=name, route_prefix=route_prefix, blocking=False)
    return version


app = build()
