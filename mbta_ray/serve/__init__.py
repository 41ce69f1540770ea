"""Serving: HTTP prediction requests -> the same features the ETL builds -> the production model.

``schemas`` holds the pydantic request/response models (built from ``mbta_ray.schema``);
``inference`` turns validated requests into example rows and predictions; ``app`` is the Ray
Serve application (FastAPI ingress + batching model deployment).
"""
