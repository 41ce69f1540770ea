"""Hyperparameter helpers shared by the model families."""

from __future__ import annotations


def round_ints(config: dict, names: tuple[str, ...]) -> dict:
    """Round the integer hyperparameters in ``names`` that a float-only searcher (BayesOpt) proposed."""
    return {k: (int(round(v)) if k in names and v is not None else v) for k, v in config.items()}
