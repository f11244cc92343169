"""Where the manager looks for its repository, server URL, timeouts and config file."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_REPO = "model_repository"
DEFAULT_URL = "http://localhost:8000"
REPO_ENV = "TRITONCTL_REPO"
URL_ENV = "TRITONCTL_URL"
METRICS_URL_ENV = "TRITONCTL_METRICS_URL"
LOAD_TIMEOUT_ENV = "TRITONCTL_LOAD_TIMEOUT"
CALL_TIMEOUT_ENV = "TRITONCTL_CALL_TIMEOUT"
CONNECT_TIMEOUT_ENV = "TRITONCTL_CONNECT_TIMEOUT"
META_DIR = ".tritonctl"
SETTINGS_FILE = "tritonctl.yaml"  # serving settings, in the repository root


def default_repo() -> Path:
    return Path(os.environ.get(REPO_ENV) or DEFAULT_REPO)


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL
