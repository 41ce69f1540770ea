"""PNG plots for an experiment folder: search progress, predicted vs actual, error by horizon."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def best_so_far(trials: pd.DataFrame, metric: str, path: Path) -> None:
    """Metric of each trial in start order and the running best."""
    fig, ax = plt.subplots(figsize=(6, 4))
    values = trials[metric].to_numpy(dtype="float64")
    ax.plot(np.arange(1, len(values) + 1), values, "o", alpha=0.6, label="trial")
    ax.plot(np.arange(1, len(values) + 1), np.fmin.accumulate(values), "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} (s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, path: Path, max_points: int = 20_000) -> None:
    rng = np.random.default_rng(0)
    idx = rng.choice(len(actual), size=min(max_points, len(actual)), replace=False) if len(actual) else []
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(actual[idx], predicted[idx], s=2, alpha=0.3)
    hi = float(np.nanpercentile(actual, 99.5)) if len(actual) else 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("actual travel u -> s (s)")
    ax.set_ylabel("predicted (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def error_by_horizon(report: dict, path: Path) -> None:
    """MAE per MBTA horizon bin for every model and baseline in an evaluation report."""
    names = list(report)
    bins = list(next(iter(report.values()))["by_horizon"]) if report else []
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        maes = [report[name]["by_horizon"].get(b, {}).get("mae", np.nan) for b in bins]
        ax.bar(np.arange(len(bins)) + i * width, maes, width, label=name)
    ax.set_xticks(np.arange(len(bins)) + 0.4 - width / 2, [f"{b} min" for b in bins])
    ax.set_ylabel("MAE (s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def race_bars(bins: list[dict], methods: tuple[str, ...], path: Path) -> None:
    """The race by horizon bin: MAE (left) and MBTA's accurate share (right), methods side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(bins))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        mae = [b[method]["mae"] if b[method]["mae"] is not None else np.nan for b in bins]
        acc = [100 * b[method]["accurate"] if b[method]["accurate"] is not None else np.nan for b in bins]
        left.bar(x + (i - (len(methods) - 1) / 2) * width, mae, width, label=method)
        right.bar(x + (i - (len(methods) - 1) / 2) * width, acc, width, label=method)
    for ax, label in ((left, "MAE (s)"), (right, "accurate (%)")):
        ax.set_xticks(x, [f"{b['bin']}\nn={b['n']}" for b in bins])
        ax.set_xlabel("MBTA's predicted horizon")
        ax.set_ylabel(label)
    right.set_ylim(0, 100)
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
