"""Baseline (c) of bench/serve_load.py: the original projects' design, one FastAPI + uvicorn process
predicting each request on its own (same model, same request -> features -> prediction code).

    MBTA_RAY_MODEL_DIR=<model folder> uvicorn serve_fastapi:app --app-dir bench --host 127.0.0.1 --port 8010
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mbta_ray.serve.inference import ModelRunner  # noqa: E402
from mbta_ray.serve.schemas import PredictRequest, PredictResponse  # noqa: E402

runner = ModelRunner(os.environ["MBTA_RAY_MODEL_DIR"], version=os.environ.get("MBTA_RAY_MODEL_VERSION"))
app = FastAPI(title="mbta_ray single-process baseline")


@app.get("/healthz")
def healthz() -> dict:
    return {"ready": True, "model_version": runner.version}


@app.post("/predict", response_model=PredictResponse)
def predict(body: PredictRequest):
    # A sync endpoint: FastAPI runs it in its thread pool, as the tutorials write it.
    return runner.predict([body])[0]
