"""Distillation pieces (unlabeled pairs, pruning, int8 storage); the whole pipeline runs end to end in
test_jobs (as a Ray job)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mbta_ray import distill
from mbta_ray.distill import DistillConfig, reobserve
from mbta_ray.models import dnn
from mbta_ray.schema import TARGET


def test_distill_options_are_checked_by_name():
    with pytest.raises(ValueError, match=r"blend=1.5 must be within \[0.0, 1.0\]"):
        DistillConfig(blend=1.5)
    with pytest.raises(ValueError, match=r"softening=0 must be a number > 0"):
        DistillConfig(softening=0)
    with pytest.raises(ValueError, match=r"softening=nan must be a number > 0"):  # NaN passes a <= 0 check
        DistillConfig(softening=float("nan"))
    with pytest.raises(ValueError, match=r"hidden=\[0\]: one or more layer widths >= 1"):
        DistillConfig(hidden=[0])


def test_reobserved_pairs_shift_time_consistently_and_have_no_target():
    """The vehicle seen at u `shift` s later: delay and headway at u grow by the shift, the schedule
    and the segment do not change, and there is no arrival at s to learn from."""
    batch = pd.DataFrame(
        {
            "mode": ["bus"],
            "route_id": ["1"],
            "direction_id": [0],
            "from_stop_id": ["a"],
            "to_stop_id": ["b"],
            "stops_ahead": [1],
            "service_date": [pd.Timestamp("2024-08-11").date()],
            "actual_arrival_u": pd.to_datetime(["2024-08-11T14:00:30Z"]),
            "scheduled_arrival_u": pd.to_datetime(["2024-08-11T14:00:00Z"]),
            "scheduled_arrival_s": pd.to_datetime(["2024-08-11T14:05:00Z"]),
            "actual_arrival_s": pd.to_datetime(["2024-08-11T14:06:00Z"]),
            "delay_prev": [10.0],
            "headway_u": [600.0],
            "scheduled_headway_u": [600.0],
            "distance_m": [850.0],
            "hist_median_travel_s": [310.0],
            "delay_u": [30.0],
            "scheduled_seconds_ahead": [300.0],
            TARGET: [330.0],
        }
    )
    out = reobserve(batch, copies=3, shift_sd_s=120.0, seed=0)
    assert len(out) == 3 and out[TARGET].isna().all()
    shift = (out["actual_arrival_u"] - batch["actual_arrival_u"][0]).dt.total_seconds()
    assert (shift != 0).any()
    np.testing.assert_allclose(out["delay_u"], 30.0 + shift)
    np.testing.assert_allclose(out["headway_u"], 600.0 + shift)
    assert (out["scheduled_seconds_ahead"] == 300.0).all() and (out["distance_m"] == 850.0).all()
    assert (out["hist_median_travel_s"] == 310.0).all() and list(out.columns) == list(batch.columns)
    # Never seen before the previous vehicle left u: the headway stays positive.
    short = reobserve(batch.assign(headway_u=60.0), copies=50, shift_sd_s=300.0, seed=1)
    assert (short["headway_u"] >= 30.0).all() and (short["headway_u"] < 60.0).any()


def test_reobserved_pairs_move_the_moment_with_u():
    """The real-time state moves with the moment: the headway to the vehicle ahead and the age of
    the other vehicles' latest traversal grow by the shift (never below 30 s and 0 s); the segment,
    its hops' path and what the vehicle did since u (elapsed, departed, progress) do not."""
    batch = pd.DataFrame(
        {
            "mode": ["subway"] * 2,
            "route_id": ["Red"] * 2,
            "direction_id": [0, 0],
            "from_stop_id": ["a", "a"],
            "to_stop_id": ["b", "b"],
            "stops_ahead": [1, 1],
            "service_date": [pd.Timestamp("2024-08-11").date()] * 2,
            "actual_arrival_u": pd.to_datetime(["2024-08-11T14:00:30Z"] * 2),
            "scheduled_arrival_u": pd.to_datetime(["2024-08-11T14:00:00Z"] * 2),
            "scheduled_arrival_s": pd.to_datetime(["2024-08-11T14:02:00Z"] * 2),
            "actual_arrival_s": pd.to_datetime(["2024-08-11T14:03:00Z"] * 2),
            "delay_prev": [10.0, 10.0],
            "headway_u": [600.0, 600.0],
            "scheduled_headway_u": [600.0, 600.0],
            "headway_ahead_s": [400.0, 90.0],
            "recent_travel_s": [140.0, 140.0],
            "recent_travel_n": [3.0, 3.0],
            "recent_travel_age_s": [50.0, np.nan],
            "elapsed_s": [45.0, 45.0],
            "departed_s": [20.0, 20.0],
            "distance_m": [850.0, 850.0],
            "hist_median_travel_s": [130.0, 130.0],
            "recent_hop_s": [95.0, np.nan],
            "path_travel_s": [95.0, 130.0],
            "progress": [0.4, np.nan],
            TARGET: [150.0, 150.0],
        }
    )
    out = reobserve(batch, copies=40, shift_sd_s=300.0, seed=2)
    # What the shift leaves alone is the example's own (compute_features has no stops or medians here).
    first = np.arange(len(out)) % 2 == 0
    for col in ("distance_m", "hist_median_travel_s", "recent_travel_s", "recent_travel_n", "recent_hop_s"):
        np.testing.assert_array_equal(out[col], np.tile(batch[col].to_numpy(), 40), err_msg=col)
    np.testing.assert_array_equal(out["path_travel_s"], np.where(first, 95.0, 130.0))
    np.testing.assert_array_equal(out["progress"], np.where(first, 0.4, np.nan))
    shift = (out["actual_arrival_u"] - batch["actual_arrival_u"][0]).dt.total_seconds().to_numpy()
    np.testing.assert_allclose(out["headway_ahead_s"], np.where(first, 400.0, 90.0) + shift)
    np.testing.assert_allclose(out["recent_travel_age_s"][first], 50.0 + shift[first])
    assert out["recent_travel_age_s"][~first].isna().all()
    assert (out["recent_travel_age_s"][first] >= 0).all() and (out["recent_travel_age_s"][first] < 50).any()
    assert (out["headway_ahead_s"] >= 30.0).all() and (out["headway_ahead_s"][~first] < 90.0).any()
    assert (out["elapsed_s"] == 45.0).all() and (out["departed_s"] == 20.0).all()


def _tiny_model(quantized: bool = False) -> dnn.DelayMLP:
    torch.manual_seed(0)
    arch = dnn.Architecture(
        cardinalities=[4, 5, 3, 6, 6],
        numeric_width=7,
        hidden=[16],
        max_embedding_dim=3,
        residual=True,
        quantized=quantized,
    )
    return dnn.DelayMLP(arch).eval()


def _inputs(n: int = 64):
    g = torch.Generator().manual_seed(1)
    cats = torch.stack([torch.randint(0, c, (n,), generator=g) for c in [4, 5, 3, 6, 6]], dim=1)
    return cats, torch.randn(n, 7, generator=g), torch.full((n,), 300.0)


def test_int8_student_is_stored_as_int8_and_loads_safely(tmp_path):
    model = _tiny_model(quantized=True)
    dnn.save(model, tmp_path)
    state = torch.load(tmp_path / dnn.WEIGHTS_FILE, weights_only=True)
    assert any(v.dtype == torch.int8 for v in state.values())
    assert not any(k.endswith(".weight") and k.startswith("mlp.") for k in state)  # no float copies
    loaded = dnn.load(tmp_path)
    with torch.no_grad():
        direct = dnn.quantize(model)(*_inputs())
        again = loaded(*_inputs())
        exact = model(*_inputs())
    np.testing.assert_allclose(again.numpy(), direct.numpy(), rtol=1e-6)  # the same int8 weights
    assert float((again - exact).abs().mean()) < 30.0  # int8 stays close to the float model


def test_pruning_zeroes_the_requested_share_of_linear_weights():
    model = _tiny_model()
    pruned = distill.prune(model, 0.5)
    weights = [m.weight for m in pruned.modules() if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert abs(zeros / total - 0.5) < 0.02
    params, nonzero = distill.parameter_counts(pruned)
    assert params == distill.parameter_counts(model)[0] and nonzero < params
