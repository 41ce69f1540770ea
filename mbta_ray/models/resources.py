"""Ray Train worker resources, shared by both model families."""

from __future__ import annotations

from dataclasses import dataclass

from ray.train import ScalingConfig


@dataclass(frozen=True)
class WorkerResources:
    """Workers of one training run: a GPU share > 0 makes each worker train on a GPU."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractions let several trials share one GPU

    def scaling_config(self) -> ScalingConfig:
        return ScalingConfig(
            num_workers=self.num_workers,
            use_gpu=self.gpus_per_worker > 0,
            resources_per_worker={"CPU": self.cpus_per_worker,
                                  **({"GPU": self.gpus_per_worker} if self.gpus_per_worker > 0 else {})},
        )
