"""The session's real tritonserver: one embedded server shared by all integration tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from manager.server import EmbeddedServer, ServerInfo, free_ports


@dataclass(frozen=True)
class TritonHandle:
    """A running embedded server and the temporary repository it serves."""

    repo: Path
    server: EmbeddedServer
    info: ServerInfo

    @property
    def http_url(self) -> str:
        return self.info.http_url

    @property
    def grpc_url(self) -> str:
        return self.info.grpc_url

    @property
    def metrics_url(self) -> str:
        return self.info.metrics_url

    @property
    def pid(self) -> int:
        return self.info.pid


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHandle]:
    """Start tritonserver (explicit model control, no model loaded) on free ports.

    Metrics are sampled every 200 ms so memory readings are fresh. Teardown stops the
    server by its own pid and waits for it to exit.
    """
    repo = tmp_path_factory.mktemp("triton_repo")
    server = EmbeddedServer(repo)
    http_port, grpc_port, metrics_port = free_ports(3)
    info = server.start(
        http_port,
        grpc_port,
        metrics_port,
        metrics_interval_ms=200,
        exit_timeout_s=5,
        wait_timeout=120,
        tied=True,  # a run ended by a timeout (os._exit) takes its server with it
    )
    try:
        yield TritonHandle(repo=repo, server=server, info=info)
    finally:
        gc.collect()  # close clients tests left open: Triton waits for open connections
        server.stop(timeout=30)
