"""Model families trained with Ray Train (distributed XGBoost and a PyTorch DNN) and how a trained
model folder is packaged and loaded: model file (safe format), encoder.json, metadata.json."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ENCODER_FILE = "encoder.json"
METADATA_FILE = "metadata.json"


def package(family: str, checkpoint_dir: str | Path, encoder, out: Path, metadata: dict) -> Path:
    """Copy a trained checkpoint into ``out`` with its encoder and metadata."""
    out.mkdir(parents=True, exist_ok=True)
    for item in Path(checkpoint_dir).iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    encoder.save(out / ENCODER_FILE)
    (out / METADATA_FILE).write_text(json.dumps({"family": family, **metadata}, indent=2, default=str))
    return out


def load_predictor(model_dir: str | Path) -> Callable[[pd.DataFrame], np.ndarray]:
    """A function from example rows to travel-seconds predictions, for a packaged model folder."""
    from mbta_ray.encoding import FeatureEncoder

    model_dir = Path(model_dir)
    meta_path = model_dir / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a packaged model folder")
    family = json.loads(meta_path.read_text())["family"]
    encoder = FeatureEncoder.load(model_dir / ENCODER_FILE)
    if family == "xgboost":
        from mbta_ray.models import xgboost_model

        booster = xgboost_model.load_booster(model_dir)
        return lambda df: xgboost_model.predict(booster, encoder, df)
    if family == "dnn":
        from mbta_ray.models import dnn

        model = dnn.load(model_dir)
        return lambda df: dnn.predict(model, encoder, df)
    raise ValueError(f"{meta_path}: unknown model family {family!r}")
