"""Bad command lines: a usage error (exit 2) on stderr before anything is done."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from manager.cli import main
from manager.cli.common import FiniteFloatRange


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _float_ranges(
    command: click.Command, path: str = "tritonctl"
) -> list[tuple[str, click.Parameter]]:
    found = [(path, p) for p in command.params if isinstance(p.type, click.FloatRange)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += _float_ranges(sub, f"{path} {name}")
    return found


def test_every_float_option_refuses_what_is_not_finite() -> None:
    options = _float_ranges(main)
    assert len(options) >= 10
    for path, param in options:
        assert isinstance(param.type, FiniteFloatRange), f"{path} {param.opts[0]}"


@pytest.mark.parametrize("number", ["nan", "inf", "Infinity"])
@pytest.mark.parametrize(
    "args",
    [
        ("rollout", "start", "ep", "--to", "2", "--stage-seconds"),
        ("rollout", "start", "ep", "--to", "2", "--max-error-rate"),
        ("rollout", "start", "ep", "--to", "2", "--max-latency-ratio"),
        ("rollout", "start", "ep", "--to", "2", "--latency-tolerance-ms"),
        ("rollout", "abort", "ep", "--wait-timeout"),
        ("load", "m", "--wait-timeout"),
        ("unload", "m", "--wait-timeout"),
        ("controller", "run", "--interval"),
        ("server", "start", "--wait-timeout"),
        ("server", "stop", "--timeout"),
    ],
)
def test_a_number_that_is_not_finite_is_a_usage_error(
    tmp_path: Path, args: tuple[str, ...], number: str
) -> None:
    repo = tmp_path / "repo"
    code, out, err = run("--repo", str(repo), *args, number)
    assert code == 2, err
    assert out == ""
    assert "is not a finite number" in err or "is not in the range" in err
    assert not repo.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--target", "m:1=0", "--target", "m:2=0"), "add up to 0"),
        (("--target", "m:1", "--target", "m:1=5"), "listed twice"),
        (("--target", "m:1", "--sticky-parameter", "u", "--sticky-correlation-id"), "not both"),
        (("--target", "m:1", "--sticky-parameter", "bad name"), "sticky parameter"),
    ],
)
def test_split_option_mistakes_are_usage_errors_before_the_server_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], message: str
) -> None:
    from manager.cli import endpoint_cmds

    def no_server(obj: object) -> None:
        raise AssertionError("the server was asked")

    monkeypatch.setattr(endpoint_cmds, "_control", no_server)
    code, out, err = run("--repo", str(tmp_path), "endpoint", "split", "ep", *args)
    assert code == 2, err
    assert out == "" and message in err


@pytest.mark.parametrize(
    "args",
    [
        ("endpoint", "show"),
        ("endpoint", "show", "--json"),
        ("rollout", "list", "--json"),
        ("rollout", "list", "--active"),
        ("audit", "--json"),
        ("audit", "m"),
    ],
)
def test_listing_a_repository_that_does_not_exist_is_an_error(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    missing = tmp_path / "misspelt"
    code, out, err = run("--repo", str(missing), *args)
    assert code == 1
    assert out == ""
    assert err == f"error: model repository {missing} does not exist\n"
    assert not missing.exists()


@pytest.mark.parametrize("settings", [("--memory-limit", "12XB"), ()])
def test_pin_and_unpin_that_fail_on_the_settings_change_no_pin(
    tmp_path: Path, settings: tuple[str, ...]
) -> None:
    from manager.audit import AuditLog
    from manager.controller import set_pin

    repo = tmp_path / "repo"
    for name in ("a", "b"):
        (repo / name / "1").mkdir(parents=True)
    set_pin(repo, "b", True)
    if not settings:
        (repo / "tritonctl.yaml").write_text("memory_limit: 12XB\n")
    before = AuditLog(repo).query()
    for command, name in (("pin", "a"), ("unpin", "b")):
        code, out, err = run("--repo", str(repo), *settings, command, name, "--json")
        assert code == 2, err
        assert out == "" and "12XB" in err
    assert AuditLog(repo).query() == before
    (repo / "tritonctl.yaml").unlink(missing_ok=True)
    code, out, _ = run("--repo", str(repo), "--memory-limit", "12GB", "pin", "a", "--json")
    assert code == 0 and '"changed": true' in out
    code, out, _ = run("--repo", str(repo), "--memory-limit", "12GB", "unpin", "b", "--json")
    assert code == 0 and '"changed": true' in out


def test_api_serve_on_a_port_in_use_is_one_error_line_before_anything_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import uvicorn

    def not_started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the HTTP server was started")

    monkeypatch.setattr(uvicorn, "run", not_started)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run("--repo", str(tmp_path), "api", "serve", "--port", str(port))
    assert code == 1
    assert out == ""
    assert err == f"error: cannot listen on 127.0.0.1:{port}: address already in use\n"
