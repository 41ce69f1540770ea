"""mbta_ray: MBTA arrival and delay prediction, built on Ray end to end."""

__version__ = "0.1.0"
