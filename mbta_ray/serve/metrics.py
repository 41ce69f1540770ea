"""The serving app's own Prometheus metrics, beside Serve's built-in ones.

Exported by every Ray node's metrics agent (``ray_`` prefix, counters with ``_total``) and shown on
the Ray dashboard's Metrics page when Prometheus/Grafana are set up:

- ``ray_mbta_predictions_total{model_version}``: stop predictions served (a request for 10 stops
  ahead counts 10), and ``ray_mbta_requests_served_total{model_version}``: vehicle requests answered.
- ``ray_mbta_rejected_requests_total{reason}``: HTTP requests refused, by reason: ``validation``
  (422 from the schema), ``unknown_route`` / ``unknown_direction`` / ``unknown_stop`` (422 from the
  model), ``body_too_large`` (413), ``no_model`` (503), ``replica_unavailable`` (503 after retries).
- ``ray_mbta_model_loaded{model_version}``: 1 for the version a model replica serves, 0 after it
  was replaced.
- ``ray_mbta_batch_size``: vehicle requests per model call (what ``@serve.batch`` achieved).
- ``ray_mbta_live_feed_errors_total{reason}``: live feed polls that failed (``unreachable``,
  ``timeout``, ``http_error``, ``garbage``, ``stale``, ``empty``, ...); ``ray_mbta_live_feed_age_seconds``:
  how old the newest good snapshot is; ``ray_mbta_live_publish_seconds``: snapshot in to TripUpdates out.

Each replica process creates its metrics once, on first use (Serve adds deployment/replica tags).
"""

from __future__ import annotations

from functools import cache

from ray.serve import metrics

BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


@cache
def predictions() -> metrics.Counter:
    return metrics.Counter("mbta_predictions", "Stop predictions served.", tag_keys=("model_version",))


@cache
def requests_served() -> metrics.Counter:
    return metrics.Counter("mbta_requests_served", "Vehicle requests answered.", tag_keys=("model_version",))


@cache
def rejected() -> metrics.Counter:
    return metrics.Counter("mbta_rejected_requests", "HTTP requests refused, by reason.", tag_keys=("reason",))


@cache
def model_loaded() -> metrics.Gauge:
    return metrics.Gauge(
        "mbta_model_loaded", "1 for the model version this replica serves.", tag_keys=("model_version",)
    )


@cache
def load_failures() -> metrics.Counter:
    return metrics.Counter(
        "mbta_model_load_failures",
        "Model versions this replica could not load (it kept or fell back to a verified one), by error.",
        tag_keys=("error",),
    )


@cache
def batch_size() -> metrics.Histogram:
    return metrics.Histogram("mbta_batch_size", "Vehicle requests per model call.", boundaries=BATCH_BOUNDARIES)


def reject(reason: str) -> None:
    rejected().inc(tags={"reason": reason})


@cache
def feed_errors() -> metrics.Counter:
    return metrics.Counter("mbta_live_feed_errors", "Live feed polls that failed, by reason.", tag_keys=("reason",))


@cache
def feed_age() -> metrics.Gauge:
    return metrics.Gauge("mbta_live_feed_age_seconds", "Age of the newest good live feed snapshot.")


@cache
def publish_latency() -> metrics.Histogram:
    return metrics.Histogram(
        "mbta_live_publish_seconds",
        "From taking in a new snapshot to published TripUpdates.",
        boundaries=[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0],
    )
