"""The repository commands from the command line: JSON output, exit codes, env vars."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from manager.cli import main
from tests.modelfactory import make_onnx


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    make_onnx(path)
    return path


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_publish_json_prints_name_and_version(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    code, out, _ = run(
        "--repo",
        str(repo),
        "publish",
        "lin",
        str(onnx_file),
        "--runtime",
        "native",
        "--label",
        "git_commit=abc",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "lin"
    assert data["version"] == 1
    assert data["labels"] == {"git_commit": "abc"}


def test_repo_comes_from_environment(tmp_path, onnx_file):
    repo = tmp_path / "envrepo"
    code, _, _ = run(
        "publish", "lin", str(onnx_file), "--runtime", "native", env={"TRITONCTL_REPO": str(repo)}
    )
    assert code == 0
    assert (repo / "lin" / "1" / "model.onnx").is_file()


def test_versions_json_lists_versions_with_provenance(tmp_path, onnx_file):
    repo = str(tmp_path / "repo")
    for _ in range(2):
        run(
            "--repo",
            repo,
            "publish",
            "lin",
            str(onnx_file),
            "--runtime",
            "native",
            "--label",
            "team=search",
        )
    code, out, _ = run("--repo", repo, "versions", "lin", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["version"] for r in rows] == [1, 2]
    assert all(r["labels"] == {"team": "search"} and len(r["sha256"]) == 64 for r in rows)


def test_bad_input_exits_non_zero_with_one_line_error(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    code, _, err = run("--repo", str(repo), "publish", "../evil", str(onnx_file))
    assert code != 0
    assert err.strip().startswith("error:") and "path separator" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run("--repo", str(repo), "publish", "m", str(tmp_path / "missing.onnx"))
    assert code != 0 and "does not exist" in err
    assert not repo.exists() or not any(p for p in repo.iterdir() if not p.name.startswith("."))


def test_existing_version_exit_code_and_message(tmp_path, onnx_file):
    repo = str(tmp_path / "repo")
    run("--repo", repo, "publish", "lin", str(onnx_file), "--runtime", "native")
    code, _, err = run(
        "--repo", repo, "publish", "lin", str(onnx_file), "--runtime", "native", "--version", "1"
    )
    assert code != 0
    assert "already has version 1" in err


def test_validate_exit_code_follows_consistency(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    run("--repo", str(repo), "publish", "lin", str(onnx_file), "--runtime", "native")
    code, out, _ = run("--repo", str(repo), "validate")
    assert code == 0 and "ok" in out
    (repo / "lin" / "config.pbtxt").unlink()
    code, out, _ = run("--repo", str(repo), "validate", "--json")
    assert code == 1
    assert json.loads(out)["ok"] is False


def test_prune_keeps_newest(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    for _ in range(3):
        run("--repo", str(repo), "publish", "lin", str(onnx_file), "--runtime", "native")
    code, out, _ = run("--repo", str(repo), "prune", "lin", "--keep", "1", "--offline", "--json")
    assert code == 0, out
    assert json.loads(out)["removed"] == [1, 2]
    assert sorted(p.name for p in (repo / "lin").iterdir() if p.is_dir()) == ["3"]


def test_prune_without_a_server_that_answers_removes_nothing_unless_offline(
    tmp_path, onnx_file, monkeypatch
):
    monkeypatch.delenv("TRITONCTL_URL", raising=False)
    monkeypatch.setattr("manager.triton.DEFAULT_URL", "http://127.0.0.1:9")  # none there
    repo = tmp_path / "repo"
    for _ in range(2):
        run("--repo", str(repo), "publish", "lin", str(onnx_file), "--runtime", "native")
    code, _, err = run("--repo", str(repo), "prune", "lin", "--keep", "1")
    assert code != 0
    assert "--offline" in err and "cannot tell which versions of 'lin' are loaded" in err
    assert sorted(p.name for p in (repo / "lin").iterdir() if p.is_dir()) == ["1", "2"]
    assert run("--repo", str(repo), "prune", "lin", "--keep", "0", "--offline")[0] == 2


def test_prune_refuses_when_the_named_server_does_not_answer(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    for _ in range(2):
        run("--repo", str(repo), "publish", "lin", str(onnx_file), "--runtime", "native")
    code, _, err = run(
        "--repo", str(repo), "--url", "http://127.0.0.1:9", "prune", "lin", "--keep", "1"
    )
    assert code != 0
    assert "127.0.0.1:9" in err
    assert sorted(p.name for p in (repo / "lin").iterdir() if p.is_dir()) == ["1", "2"]
    # --offline does not stand for a server named: it says so rather than be ignored
    code, _, err = run(
        "--repo", str(repo), "--url", "http://127.0.0.1:9", "prune", "lin", "--keep", "1",
        "--offline",
    )  # fmt: skip
    assert code != 0 and "--offline counts for nothing here: a server is named" in err
    assert sorted(p.name for p in (repo / "lin").iterdir() if p.is_dir()) == ["1", "2"]


def test_publish_copies_by_default_links_with_link_and_still_takes_copy(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    base = ("--repo", str(repo), "publish", "lin", str(onnx_file), "--runtime", "native")
    code, out, _ = run(*base, "--json")
    assert code == 0 and json.loads(out)["placed_by"] in ("copy", "clone")
    assert (repo / "lin" / "1" / "model.onnx").stat().st_ino != onnx_file.stat().st_ino
    code, out, _ = run(*base, "--link", "--json")
    assert code == 0 and json.loads(out)["placed_by"] == "link"
    assert (repo / "lin" / "2" / "model.onnx").stat().st_ino == onnx_file.stat().st_ino
    code, out, _ = run(*base, "--copy", "--json")  # the old flag: the default now
    assert code == 0 and json.loads(out)["placed_by"] in ("copy", "clone")
    code, _, err = run(*base, "--copy", "--link")
    assert code == 2 and "exclude each other" in err


def test_publish_help_warns_that_a_linked_source_must_not_change():
    code, out, _ = run("publish", "--help")
    assert code == 0
    assert "--link" in out and "never modify the" in out
    assert "--copy" not in out


def test_publish_over_a_file_in_the_repository_exits_with_one_line(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "tritonctl.yaml").write_text("max_models: 2\n")
    (repo / "notes.txt").write_text("x\n")
    for name, message in (("tritonctl.yaml", "is reserved"), ("notes.txt", "not a model folder")):
        result = CliRunner().invoke(main, ["--repo", str(repo), "publish", name, str(onnx_file)])
        assert result.exit_code != 0
        assert message in result.stderr
        assert "Traceback" not in result.output
    assert (repo / "tritonctl.yaml").read_text() == "max_models: 2\n"


def test_every_publish_option_is_described_in_its_help():
    from manager.cli.publish_cmds import publish_cmd

    undescribed = [
        p.opts[0]
        for p in publish_cmd.params
        if isinstance(p, click.Option) and not p.hidden and not p.help
    ]
    assert undescribed == []
    _, out, _ = run("publish", "--help")
    assert "0 for ONNX and TorchScript, 64 for transformers" in " ".join(out.split())


def test_a_config_file_that_does_not_exist_is_refused_by_every_command(tmp_path):
    code, _, err = run("--repo", str(tmp_path), "--config", str(tmp_path / "nope.yaml"), "ls")
    assert code == 2
    assert "nope.yaml" in err and "does not exist" in err


@pytest.mark.parametrize(("flag", "drain"), [((), True), (("--no-drain",), False)])
def test_endpoint_switch_and_split_drain_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: tuple[str, ...], drain: bool
) -> None:
    from contextlib import nullcontext

    from manager.cli import endpoint_cmds
    from manager.endpoints import EndpointState, Target

    seen: list[dict[str, object]] = []

    class Recorder:
        def switch(self, *args: object, **kw: object) -> EndpointState:
            seen.append(kw)
            return EndpointState("ep", "pinned", [Target("m", 1)])

        def split(self, *args: object, **kw: object) -> EndpointState:
            seen.append({"drain": kw["drain"]})
            return EndpointState("ep", "routed", [Target("m", 1)])

    monkeypatch.setattr(endpoint_cmds, "_control", lambda obj: nullcontext(None))
    monkeypatch.setattr(endpoint_cmds, "_budgeted", lambda obj, control, **kw: Recorder())
    code, out, _ = run("--repo", str(tmp_path), "endpoint", "switch", "ep", "--to", "m:1", *flag)
    assert code == 0 and "endpoint ep -> m:1" in out
    code, out, _ = run("--repo", str(tmp_path), "endpoint", "split", "ep", "--target", "m:1", *flag)
    assert code == 0
    assert seen == [{"force": False, "drain": drain}, {"drain": drain}]


@pytest.mark.parametrize(("flag", "expected"), [((), []), (("--strict-readiness",), ["true"])])
def test_server_start_asks_for_strict_readiness_only_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: tuple[str, ...], expected: list[str]
) -> None:
    from manager import server as srv

    seen: list[list[str]] = []

    def start(self: srv.EmbeddedServer, *args: object, extra_args: list[str], **kw: object) -> None:
        seen.append(list(extra_args))
        raise srv.ServerError("not started in this test")

    monkeypatch.setattr(srv.EmbeddedServer, "start", start)
    (tmp_path / "repo").mkdir()
    code, _, err = run("--repo", str(tmp_path / "repo"), "server", "start", *flag)
    assert code == 1 and "not started in this test" in err
    [args] = seen
    assert [a.split("=", 1)[1] for a in args if a.startswith("--strict-readiness")] == expected


def test_a_file_system_error_is_one_line_and_exit_one_with_nothing_staged(
    tmp_path, onnx_file, monkeypatch
):
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr("manager.publish.place", full_disk)
    repo = tmp_path / "repo"
    code, _, err = run("--repo", str(repo), "publish", "lin", str(onnx_file))
    assert code == 1
    assert err.strip() == f"error: {tmp_path / 'x'}: no space left on device"
    assert not (repo / "lin").exists()
    assert list((repo / ".tritonctl" / "staging").iterdir()) == []
