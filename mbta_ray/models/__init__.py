"""Model families trained with Ray Train (distributed XGBoost and a PyTorch DNN); the packaged
model folder they all produce is owned by :mod:`mbta_ray.models.bundle`."""

from mbta_ray.models.bundle import load_predictor, read_bundle, write_bundle

__all__ = ["load_predictor", "read_bundle", "write_bundle"]
