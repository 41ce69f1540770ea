"""Default values shared by several stages (each defined once, here)."""

from __future__ import annotations

#: Dataset name ``mbta-ray data ingest`` writes under ``<root>/datasets``.
DATASET_NAME = "mbta"
#: Registered model name.
MODEL_NAME = "travel-time"
#: Environment variable naming the registry root (a folder or a gs:// / s3:// / file:// URI).
REGISTRY_ENV = "MBTA_RAY_REGISTRY"
#: Validation metric every trial reports and the searcher minimizes (seconds).
VALID_METRIC = "valid-mae"
#: |actual - scheduled| beyond this is a schedule mismatch or a broken clock, not a delay (seconds).
MAX_ABS_DELAY_S = 7200.0
#: Serve application name (serve_config.yaml).
SERVE_APP_NAME = "mbta"
#: Metrics a promotion can be decided on, and which direction is better.
METRIC_MODES = {"mae": "min", "rmse": "min", "bias_abs": "min", "r2": "max", "accurate": "max"}
