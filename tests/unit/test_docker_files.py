"""docker/Dockerfile and docker/compose.yaml against the CLI and the routes as they are
now (no Docker engine here: the files are read, their commands parsed, not run)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from fastapi.testclient import TestClient

from manager.api import create_app
from manager.cli import main
from manager.server import DEFAULT_EXIT_TIMEOUT_S, EmbeddedServer, ServerInfo

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def dockerfile() -> str:
    # continuation lines joined: one instruction a line
    return re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())


def instruction(name: str) -> list[str]:
    (line,) = [x for x in dockerfile().splitlines() if x.startswith(name + " ")]
    value: list[str] = json.loads(line[len(name) + 1 :])
    return value


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def parse(argv: list[str]) -> list[click.Context]:
    """Parse ``argv`` (``tritonctl`` first) as the CLI would, running nothing: the context
    of each command on the way (a usage error raises)."""
    assert argv[0] == "tritonctl", argv
    contexts = [main.make_context("tritonctl", argv[1:])]
    while isinstance(contexts[-1].command, click.Group):
        ctx = contexts[-1]
        # click 8.2 keeps the subcommand's name and arguments in _protected_args
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        rest = [*protected, *ctx.args]
        name, command, args = ctx.command.resolve_command(ctx, rest)
        assert command is not None, rest
        contexts.append(command.make_context(name or "", args, parent=ctx))
    return contexts


def test_the_image_s_entrypoint_and_command_are_a_valid_foreground_restoring_start() -> None:
    contexts = parse(instruction("ENTRYPOINT") + instruction("CMD"))
    assert [c.info_name for c in contexts] == ["tritonctl", "server", "start"]
    start = contexts[-1].params
    assert start["foreground"] and start["restore"]
    assert (start["http_port"], start["grpc_port"], start["metrics_port"]) == (8000, 8001, 8002)
    assert contexts[0].params["repo"] == Path("/models")


def test_every_tritonctl_command_the_image_builds_with_parses() -> None:
    runs = [line for line in dockerfile().splitlines() if line.startswith("RUN ")]
    commands = [
        shlex.split(part.strip().strip("()"))
        for line in runs
        for part in re.split(r"&&|\|\|", line[4:])
        if part.strip().strip("()").startswith("tritonctl ")
    ]
    assert any(c[:3] == ["tritonctl", "router", "build"] for c in commands), commands
    for command in commands:
        if command[1:] != ["--version"]:
            parse(command)


def test_the_image_names_no_fixed_triton_url() -> None:
    """``docker exec ... tritonctl`` follows the server recorded in /models, whatever its
    ports: a TRITONCTL_URL in the image would win over the record."""
    assert "TRITONCTL_URL=" not in dockerfile()


def test_the_image_s_health_check_probes_the_http_port_triton_is_started_on() -> None:
    (line,) = [x for x in dockerfile().splitlines() if x.startswith("HEALTHCHECK ")]
    url = re.search(r"http://\S+", line)
    assert url is not None
    start = parse(instruction("ENTRYPOINT") + instruction("CMD"))[-1].params
    info = ServerInfo(1, 0.0, start["http_port"], 2, 3, "", "", None, "", host="127.0.0.1")
    assert url.group(0) == f"{info.http_url}/v2/health/live"  # as probe_live asks


def test_the_repository_volume_is_the_repository_the_image_serves() -> None:
    assert json.loads(dockerfile().split("VOLUME ", 1)[1].splitlines()[0]) == ["/models"]
    assert "TRITONCTL_REPO=/models" in dockerfile()
    for service in compose()["services"].values():
        assert any(v.endswith(":/models") for v in service["volumes"]), service


def test_compose_gives_triton_time_to_drain_and_an_init_process() -> None:
    triton = compose()["services"]["triton"]
    assert triton["init"] is True
    grace = triton["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= DEFAULT_EXIT_TIMEOUT_S + 10
    # the image's server is started with that exit timeout
    assert f"--exit-timeout-secs={DEFAULT_EXIT_TIMEOUT_S}" in EmbeddedServer(
        Path("/models")
    ).command(_binary(), 8000, 8001, 8002, exit_timeout_s=DEFAULT_EXIT_TIMEOUT_S)


def _binary() -> Any:
    from manager.server import TritonBinary

    return TritonBinary(path=Path("/opt/tritonserver/bin/tritonserver"), source="system")


def test_compose_s_control_plane_command_parses_and_its_health_check_route_exists(
    tmp_path: Path,
) -> None:
    plane = compose()["services"]["control-plane"]
    contexts = parse([*plane["entrypoint"], *plane["command"]])
    assert [c.info_name for c in contexts] == ["tritonctl", "api", "serve"]
    assert contexts[0].params["url"].startswith("grpc://")
    port = contexts[-1].params["port"]
    assert f"127.0.0.1:{port}:{port}" in plane["ports"]
    test = plane["healthcheck"]["test"]
    url = next(arg for arg in test if arg.startswith("http://"))
    assert url.startswith(f"http://127.0.0.1:{port}/")
    path = url.split(str(port), 1)[1]
    token = plane["environment"]["TRITONCTL_API_TOKEN"]
    assert token.startswith("${")  # whatever is set: the probe carries no token
    with TestClient(create_app(tmp_path, "grpc://127.0.0.1:1", token="s3cret")) as client:
        assert client.get(path).status_code == 200


@pytest.mark.parametrize("service", ["triton", "control-plane"])
def test_compose_publishes_what_the_services_listen_on(service: str) -> None:
    ports = compose()["services"][service]["ports"]
    if service == "triton":
        start = parse(instruction("ENTRYPOINT") + instruction("CMD"))[-1].params
        for key in ("http_port", "grpc_port", "metrics_port"):
            assert f"{start[key]}:{start[key]}" in ports
    else:
        assert all(p.startswith("127.0.0.1:") for p in ports)  # no token by default
