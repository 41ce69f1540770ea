"""The packaged model folder ("bundle"): the one module that knows its file names and layout.

A bundle is what tune and distill write, the registry copies and verifies, and serving loads::

    <bundle>/
      model.ubj                  XGBoost booster (UBJSON)             -- family "xgboost"
      model.pt, architecture.json torch state dict of plain tensors   -- family "dnn"
      encoder.json               the feature encoder (vocabularies, scalers)
      segment_medians.parquet    training-split segment medians (a feature at serving time)
      metadata.json              family, params, dataset, valid MAE, ... (written last but one)
      eval.json                  test-split report (written after the model is evaluated)

Every file is in a safe format (no pickle). ``write_bundle`` writes one, ``read_bundle`` reads one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mbta_ray.encoding import FeatureEncoder
from mbta_ray.errors import MbtaRayError, MissingFileError

XGB_MODEL_FILE = "model.ubj"
DNN_WEIGHTS_FILE = "model.pt"
DNN_ARCH_FILE = "architecture.json"
ENCODER_FILE = "encoder.json"
SEGMENT_MEDIANS_FILE = "segment_medians.parquet"
METADATA_FILE = "metadata.json"
EVAL_FILE = "eval.json"

#: The files that hold a family's model (what "model size" measures).
MODEL_FILES: dict[str, tuple[str, ...]] = {"xgboost": (XGB_MODEL_FILE,), "dnn": (DNN_WEIGHTS_FILE, DNN_ARCH_FILE)}

Predictor = Callable[[pd.DataFrame], np.ndarray]


class BundleError(MbtaRayError, ValueError):
    """A folder is not a usable model bundle; the message names the file."""


@dataclass(frozen=True)
class Bundle:
    """A packaged model folder, read."""

    path: Path
    metadata: dict
    encoder: FeatureEncoder

    @property
    def family(self) -> str:
        return self.metadata["family"]

    def model_files(self) -> list[Path]:
        return [self.path / name for name in MODEL_FILES[self.family]]

    def segment_medians(self) -> pd.DataFrame | None:
        path = self.path / SEGMENT_MEDIANS_FILE
        return pd.read_parquet(path) if path.is_file() else None

    def evaluation(self) -> dict | None:
        """eval.json (the test-split report), or None before the model was evaluated."""
        return read_evaluation(self.path) if (self.path / EVAL_FILE).is_file() else None

    def predictor(self) -> Predictor:
        """A function from example rows to travel-seconds predictions."""
        # Imported here, per family: loading an XGBoost model must not import torch (~1.5 s) and
        # the reverse, in a serving replica or the CLI.
        if self.family == "xgboost":
            from mbta_ray.models import xgboost_model

            booster = xgboost_model.load_booster(self.path)
            return lambda df: xgboost_model.predict(booster, self.encoder, df)
        if self.family == "dnn":
            from mbta_ray.models import dnn

            model = dnn.load(self.path)
            return lambda df: dnn.predict(model, self.encoder, df)
        raise BundleError(f"{self.path / METADATA_FILE}: unknown model family {self.family!r}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))


def write_bundle(
    out: str | Path,
    *,
    family: str,
    model_dir: str | Path,
    encoder: FeatureEncoder,
    metadata: dict,
    segment_medians: str | Path | None = None,
) -> Path:
    """Package a trained model: the family's model files from ``model_dir`` (a checkpoint folder),
    the encoder, the training-split segment medians (copied; None: the model has none) and
    ``metadata`` (+ family). Replaces ``out`` if it exists. Returns ``out``."""
    if family not in MODEL_FILES:
        raise BundleError(f"unknown model family {family!r} (known: {sorted(MODEL_FILES)})")
    out, model_dir = Path(out), Path(model_dir)
    missing = [name for name in MODEL_FILES[family] if not (model_dir / name).is_file()]
    if missing:
        raise MissingFileError(f"{model_dir}: no {', '.join(missing)} for a {family} model")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in MODEL_FILES[family]:
        shutil.copy2(model_dir / name, out / name)
    encoder.save(out / ENCODER_FILE)
    if segment_medians is not None:
        if not Path(segment_medians).is_file():
            raise MissingFileError(
                f"{segment_medians}: segment medians not found (the model needs them at serving time)"
            )
        shutil.copy2(segment_medians, out / SEGMENT_MEDIANS_FILE)
    _write_json(out / METADATA_FILE, {**metadata, "family": family})
    return out


def write_evaluation(bundle_dir: str | Path, evaluation: dict) -> Path:
    """Write the test-split report (eval.json) beside the model it scores."""
    path = Path(bundle_dir) / EVAL_FILE
    path.write_text(json.dumps(evaluation, indent=1))
    return path


def read_evaluation(bundle_dir: str | Path) -> dict:
    """eval.json of a bundle; a clear error when the model was never evaluated."""
    path = Path(bundle_dir) / EVAL_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; the model has not been evaluated")
    return _read_json(path)


def read_metadata(bundle_dir: str | Path) -> dict:
    """metadata.json of a bundle; a clear error when the folder is not one."""
    path = Path(bundle_dir) / METADATA_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: not a packaged model folder")
    return _read_json(path)


def update_metadata(bundle_dir: str | Path, **changes) -> dict:
    """Merge ``changes`` into a bundle's metadata.json; returns the new metadata."""
    meta = {**read_metadata(bundle_dir), **changes}
    _write_json(Path(bundle_dir) / METADATA_FILE, meta)
    return meta


def read_bundle(bundle_dir: str | Path) -> Bundle:
    """A bundle's metadata and encoder (the model itself loads in ``Bundle.predictor``)."""
    path = Path(bundle_dir)
    meta = read_metadata(path)
    if "family" not in meta:
        raise BundleError(f"{path / METADATA_FILE}: names no model family")
    return Bundle(path, meta, FeatureEncoder.load(path / ENCODER_FILE))


def load_predictor(bundle_dir: str | Path) -> Predictor:
    """A function from example rows to travel-seconds predictions, for a packaged model folder."""
    return read_bundle(bundle_dir).predictor()
