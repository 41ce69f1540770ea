"""A PyTorch MLP with embeddings for the categorical features, trained with Ray Train (DDP).

Ray Data encodes the examples once per search (``encoded``: category codes, standardized numerics,
prior and target as tensor columns; ``prepare`` keeps them in the object store) and each worker
feeds from ``iter_torch_batches``, so no worker holds its shard, nor encodes it. gloo on CPU, nccl
on GPU (``TorchTrainer`` picks the backend from the workers' devices). Every epoch rank 0 writes a
checkpoint: the state dict (loaded back with ``torch.load(weights_only=True)``, never unpickled)
and the architecture as JSON.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from mbta_ray.config import WorkerResources
from mbta_ray.defaults import VALID_METRIC
from mbta_ray.encoding import FeatureEncoder
from mbta_ray.models.bundle import DNN_ARCH_FILE as ARCH_FILE
from mbta_ray.models.bundle import DNN_WEIGHTS_FILE as WEIGHTS_FILE
from mbta_ray.models.params import round_ints
from mbta_ray.runtime import peak_rss_mib
from mbta_ray.schema import TARGET

INT_PARAMS = ("hidden_width", "hidden_layers", "batch_size", "epochs", "max_embedding_dim")


@dataclass
class Architecture:
    """Everything needed to rebuild the network (saved beside the weights)."""

    cardinalities: list[int]
    numeric_width: int
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    max_embedding_dim: int = 16
    dropout: float = 0.1
    target_scale: float = 600.0  # the target is learned in units of 10 minutes: well-scaled losses
    #: True: the network outputs a correction to ``encoder.prior`` (persistence travel time).
    residual: bool = False
    #: True: linear layers are stored as int8 and run with dynamic int8 quantization (CPU).
    quantized: bool = False

    def embedding_dims(self) -> list[int]:
        # The fast.ai rule of thumb, capped: enough capacity for ~1,000 stops, small for 3 modes.
        return [max(2, min(self.max_embedding_dim, round(1.6 * c**0.56))) for c in self.cardinalities]


class DelayMLP(nn.Module):
    """Embeddings (route, stops, mode, direction) + standardized numerics -> MLP -> travel time."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        dims = arch.embedding_dims()
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(arch.cardinalities, dims))
        layers: list[nn.Module] = []
        width = sum(dims) + arch.numeric_width
        for h in arch.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(arch.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, cats: torch.Tensor, nums: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        x = torch.cat([emb(cats[:, i]) for i, emb in enumerate(self.embeddings)] + [nums], dim=1)
        out = self.mlp(x).squeeze(1) * self.arch.target_scale
        return out + prior if self.arch.residual else out


def architecture(config: dict, encoder: FeatureEncoder) -> Architecture:
    config = round_ints(config, INT_PARAMS)
    return Architecture(
        cardinalities=encoder.cardinalities,
        numeric_width=encoder.numeric_width,
        hidden=[config.get("hidden_width", 256)] * config.get("hidden_layers", 2),
        max_embedding_dim=config.get("max_embedding_dim", 16),
        dropout=config.get("dropout", 0.1),
        residual=bool(config.get("residual", True)),
    )


def _input_arrays(df: pd.DataFrame, encoder: FeatureEncoder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(categorical codes int64, numerics float32, prior float32) of example rows: the one
    definition of the network's inputs, for serving (``encode_inputs``) and training (``encoded``)."""
    return encoder.codes(df), encoder.numeric(df), encoder.prior(df).astype("float32")


def encode_inputs(df: pd.DataFrame, encoder: FeatureEncoder, device: torch.device | str = "cpu"):
    """(categorical codes, numerics, prior) tensors of example rows."""
    cats, nums, prior = (torch.from_numpy(a).to(device) for a in _input_arrays(df, encoder))
    return cats, nums, prior


def encoded(ds: ray.data.Dataset, encoder: FeatureEncoder, extra: tuple[str, ...] = ()) -> ray.data.Dataset:
    """The examples as the network reads them, encoded by Ray Data: ``cats`` (int64 [n, categorical]),
    ``nums`` (float32 [n, numeric]), ``prior`` and ``y`` (the target; NaN: unlabeled), plus the
    ``extra`` columns as float32 (the distilled student's teacher labels): already the dtypes the
    network takes, so ``iter_torch_batches`` converts nothing."""

    def encode(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        cats, nums, prior = _input_arrays(batch, encoder)
        out = {"cats": cats, "nums": nums, "prior": prior, "y": batch[TARGET].to_numpy(dtype="float32")}
        return out | {c: batch[c].to_numpy(dtype="float32") for c in extra}

    return ds.map_batches(encode, batch_format="pandas")


def prepare(datasets: dict[str, ray.data.Dataset], encoder: FeatureEncoder) -> dict[str, ray.data.Dataset]:
    """The splits as every trial's workers read them: encoded once per search (``encoded``) and
    materialized in the object store, which spills to disk what does not fit, so neither a trial's
    epochs nor the search's trials read and encode the examples again. Issue 16: on `make run`'s
    dataset (279k training rows, one worker, 3 epochs) an epoch took 4.3 s re-encoded and 1.6 s
    encoded once (the encoding: 8 s, once)."""
    return {name: encoded(ds, encoder).materialize() for name, ds in datasets.items()}


def _inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch["cats"], batch["nums"], batch["prior"]


def train_loop_per_worker(config: dict) -> None:
    """DDP training on this worker's shard; reports valid MAE (all workers' rows) every epoch."""
    huber = nn.HuberLoss(delta=config.get("huber_delta_s", 120.0))
    fit_per_worker(config, lambda pred, batch, y: huber(pred, y))


def fit_per_worker(
    config: dict, loss_of: Callable[[torch.Tensor, dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
) -> None:
    """The DDP epoch loop shared by the DNN and the distilled student, on ``encoded`` shards: train
    with ``loss_of(pred, batch, y)`` (``batch``: the encoded columns as tensors on the device), then
    report valid MAE on the true target and checkpoint (rank 0) every epoch."""
    config = round_ints(config, INT_PARAMS)
    torch.manual_seed(config.get("seed", 0))
    encoder = FeatureEncoder(**config["encoder"])
    arch = architecture(config, encoder)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(DelayMLP(arch))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.get("lr", 1e-3), weight_decay=config.get("weight_decay", 1e-5)
    )
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    batch_size = config.get("batch_size", 1024)
    distributed = ray.train.get_context().get_world_size() > 1

    for epoch in range(config.get("epochs", 5)):
        model.train()
        train_abs, train_n, rows, started = 0.0, 0, 0, time.perf_counter()
        for batch in train_shard.iter_torch_batches(
            batch_size=batch_size, device=device, local_shuffle_buffer_size=batch_size * 8
        ):
            y = batch["y"]
            pred = model(*_inputs(batch))
            loss = loss_of(pred, batch, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            labeled = torch.isfinite(y)  # the student also trains on unlabeled rows (NaN target)
            train_abs += float((pred.detach() - y)[labeled].abs().sum())
            train_n += int(labeled.sum())
            rows += len(y)
        train_s = time.perf_counter() - started
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # valid |err|, n, train |err|, n
        with torch.no_grad():
            for batch in valid_shard.iter_torch_batches(batch_size=8192, device=device):
                sums[0] += float((model(*_inputs(batch)) - batch["y"]).abs().sum())
                sums[1] += len(batch["y"])
        sums[2], sums[3] = train_abs, train_n
        if distributed:
            torch.distributed.all_reduce(sums)
        nan = float("nan")  # no rows is no measurement (0.0 would make the worst trial "best")
        metrics = {
            VALID_METRIC: float(sums[0] / sums[1]) if sums[1] else nan,
            "train-mae": float(sums[2] / sums[3]) if sums[3] else nan,
            "epoch": epoch + 1,
            "device": str(device),
            "train_rows": rows,  # this worker's, this epoch (the student's unlabeled ones too)
            "train_s": train_s,
            "worker_peak_rss_mib": peak_rss_mib(),
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                raw = model.module if hasattr(model, "module") else model
                save(raw, Path(tmp))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def save(model: DelayMLP, folder: Path) -> None:
    """State dict (tensors only) + architecture JSON. With ``arch.quantized`` the linear weights are
    stored as int8 with their scale and zero point (plain tensors: still weights_only-loadable)."""
    state = _int8_state(model) if model.arch.quantized else model.state_dict()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, folder / WEIGHTS_FILE)
    (folder / ARCH_FILE).write_text(json.dumps(asdict(model.arch)))


def _int8_state(model: DelayMLP) -> dict[str, torch.Tensor]:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    state = dict(model.state_dict())
    for name, mod in quantize(model).named_modules():
        if isinstance(mod, QLinear):
            w = mod.weight()
            del state[f"{name}.weight"]
            state[f"{name}.weight_int8"] = w.int_repr()
            state[f"{name}.weight_scale"] = torch.tensor(w.q_scale(), dtype=torch.float64)
            state[f"{name}.weight_zero_point"] = torch.tensor(w.q_zero_point(), dtype=torch.int64)
    return state


def _from_int8_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in state.items() if not k.endswith((".weight_int8", ".weight_scale", ".weight_zero_point"))}
    for key in state:
        if key.endswith(".weight_int8"):
            base = key[: -len("_int8")]
            zp, scale = state[base + "_zero_point"], state[base + "_scale"]
            out[base] = ((state[key].to(torch.float64) - zp) * scale).to(torch.float32)
    return out


def quantize(model: DelayMLP) -> nn.Module:
    """Dynamic int8 quantization of the linear layers (weights int8, activations quantized per batch)."""
    import copy
    import warnings

    with warnings.catch_warnings():  # torch 2.13 warns that quantized tensors move to torchao
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def load(folder: str | Path, as_float: bool = False) -> nn.Module:
    """Rebuild the network from a checkpoint folder; weights_only refuses anything but tensors.
    An int8 model comes back quantized, or as its dequantized float twin with ``as_float``."""
    folder = Path(folder)
    for name in (WEIGHTS_FILE, ARCH_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing from this DNN checkpoint")
    arch = Architecture(**json.loads((folder / ARCH_FILE).read_text()))
    model = DelayMLP(arch)
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(_from_int8_state(state) if arch.quantized else state)
    model.eval()
    if not arch.quantized or as_float:
        return model
    qmodel = quantize(model)
    _restore_int8_weights(qmodel, state)  # the stored int8 values exactly, not a re-quantization
    return qmodel


def _restore_int8_weights(qmodel: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    for name, mod in qmodel.named_modules():
        if isinstance(mod, QLinear) and f"{name}.weight_int8" in state:
            w = torch._make_per_tensor_quantized_tensor(
                state[f"{name}.weight_int8"],
                float(state[f"{name}.weight_scale"]),
                int(state[f"{name}.weight_zero_point"]),
            )
            mod.set_weight_bias(w, mod.bias())


def predict(model: nn.Module, encoder: FeatureEncoder, df: pd.DataFrame, batch_size: int = 65_536) -> np.ndarray:
    """Travel-seconds predictions for example rows (CPU)."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(df), batch_size):
            out.append(model(*encode_inputs(df.iloc[lo : lo + batch_size], encoder)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype="float32")


def make_trainer(
    config: dict,
    encoder: FeatureEncoder,
    datasets: dict[str, ray.data.Dataset],
    resources: WorkerResources,
    run_config: ray.train.RunConfig,
) -> ray.train.torch.TorchTrainer:
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={**config, "encoder": encoder.to_dict()},
        scaling_config=resources.scaling_config(),
        datasets=datasets,  # encoded already (``prepare``)
        run_config=run_config,
    )
