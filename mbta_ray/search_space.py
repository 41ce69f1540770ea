"""Search spaces from ``mbta_ray/configs/tune.yaml`` (configuration apart from code), for BayesOptSearch.

BayesOptSearch only takes uniform float domains, so log-scaled parameters are searched as
``log10_<name>`` and integers as floats; ``decode`` turns a proposed point back into parameters.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ray import tune

from mbta_ray.errors import ConfigError
from mbta_ray.paths import DEFAULT_TUNE_SPACE as DEFAULT_CONFIG
from mbta_ray.schema import NUMERIC_FEATURES

_LOG = "log10_"


class SearchSpaceError(ConfigError):
    """The search-space file is wrong: the message names the file, family and parameter."""


def load(path: str | Path | None = None) -> dict:
    path = Path(path or DEFAULT_CONFIG)
    if not path.is_file():
        raise SearchSpaceError(f"{path}: search-space file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SearchSpaceError(f"{path}: expected a mapping of model family -> {{fixed: ..., search: ...}}")
    for family, spec in data.items():
        for name, dom in (spec.get("search") or {}).items():
            if not isinstance(dom, dict) or len(dom) != 1 or next(iter(dom)) not in ("uniform", "log_uniform", "int"):
                raise SearchSpaceError(
                    f"{path}: {family}.search.{name}: expected one of uniform/log_uniform/int: [low, high], got {dom!r}"
                )
            low, high = next(iter(dom.values()))
            if not low < high or (next(iter(dom)) == "log_uniform" and low <= 0):
                raise SearchSpaceError(f"{path}: {family}.search.{name}: bad range [{low}, {high}]")
        fixed = spec.get("fixed") or {}
        increasing = fixed.get("increasing")
        if increasing is not None and (
            not isinstance(increasing, list) or not set(map(str, increasing)) <= set(NUMERIC_FEATURES)
        ):
            raise SearchSpaceError(
                f"{path}: {family}.fixed.increasing: expected a list of numeric features "
                f"({', '.join(NUMERIC_FEATURES)}), got {increasing!r}"
            )
        external = fixed.get("external_memory")
        if external is not None and (family != "xgboost" or not isinstance(external, bool)):
            raise SearchSpaceError(
                f"{path}: {family}.fixed.external_memory: expected true or false, and only for xgboost "
                f"(the DNN streams its batches), got {external!r}"
            )
        folder = fixed.get("external_memory_dir")
        if folder is not None and (family != "xgboost" or not (isinstance(folder, str) and folder.strip())):
            raise SearchSpaceError(
                f"{path}: {family}.fixed.external_memory_dir: expected a folder path, and only for xgboost "
                f"(where external_memory pages its matrix), got {folder!r}"
            )
    return data


def family_spec(path: str | Path | None, family: str) -> dict:
    """One family's section of a search-space file; a clear error when the file lacks it."""
    data = load(path)
    if family not in data:
        raise SearchSpaceError(f"{Path(path or DEFAULT_CONFIG)}: no search space for {family!r} (has {sorted(data)})")
    return data[family]


def param_space(spec: dict) -> dict:
    """Tune domains (all uniform floats) for one family's ``search`` section."""
    import math

    space = {}
    for name, dom in spec.get("search", {}).items():
        kind, (low, high) = next(iter(dom.items()))
        if kind == "log_uniform":
            space[_LOG + name] = tune.uniform(math.log10(low), math.log10(high))
        else:
            space[name] = tune.uniform(float(low), float(high))
    return space


def decode(point: dict, spec: dict) -> dict:
    """A searcher's point -> hyperparameters (10**log10_x, ints rounded) plus the fixed values."""
    params = dict(spec.get("fixed", {}))
    ints = {n for n, d in spec.get("search", {}).items() if "int" in d}
    for key, value in point.items():
        if key.startswith(_LOG):
            params[key[len(_LOG) :]] = 10**value
        elif key in ints:
            params[key] = int(round(value))
        else:
            params[key] = value
    return params
