"""The REST control plane: tritonctl's operations over HTTP, with Prometheus metrics.

``create_app(repo, triton_url)`` makes the FastAPI app; ``tritonctl api serve`` runs it
with uvicorn. Routes under ``/v1`` call the same library functions as the CLI commands
(see ``docs/api.md``); ``GET /metrics`` serves Prometheus text from a registry of its own.
"""

from manager.api.app import create_app
from manager.api.plane import ControlPlane

__all__ = ["ControlPlane", "create_app"]
