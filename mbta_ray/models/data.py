"""Loading a dataset version's splits as Ray Datasets for training and evaluation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import ray

from mbta_ray import versioning
from mbta_ray.schema import EXAMPLE_SCHEMA, FEATURE_NAMES, TARGET

#: Columns a model needs (features and target); evaluation reads more.
TRAIN_COLUMNS = list(FEATURE_NAMES) + [TARGET]


def split_path(root: str | Path, version: str, split: str, name: str | None = None) -> Path:
    ds_name, ds_version = versioning.resolve(root, version, name)
    return versioning.version_dir(root, ds_name, ds_version) / split


def load_split(
    root: str | Path, version: str, split: str, name: str | None = None, columns: list[str] | None = None
) -> ray.data.Dataset:
    """A split as a Ray Dataset (read lazily, in parallel, by the cluster). ``select_columns``
    (Ray 2.60 deprecates ``read_parquet(columns=)``) is pushed down into the parquet read."""
    ds = ray.data.read_parquet(str(split_path(root, version, split, name)), schema=EXAMPLE_SCHEMA)
    return ds.select_columns(columns or TRAIN_COLUMNS)


def load_split_pandas(
    root: str | Path, version: str, split: str, name: str | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """A (test) split on the driver, for evaluation and plots."""
    path = split_path(root, version, split, name)
    return pads.dataset(str(path), format="parquet", schema=EXAMPLE_SCHEMA).to_table(columns=columns).to_pandas()
