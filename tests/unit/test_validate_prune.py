"""`validate` finds inconsistencies; `prune` keeps the newest and never a version in use."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.errors import ConfigError
from manager.prune import prune
from manager.publish import PublishOptions, publish
from manager.repository import Repository
from manager.validate import validate_repository
from tests.modelfactory import make_onnx

NATIVE = PublishOptions(runtime="native")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    artifact = tmp_path / "m.onnx"
    make_onnx(artifact)
    repo = Repository(tmp_path / "repo")
    for _ in range(4):
        publish(repo, "linear", artifact, PublishOptions(runtime="native", link=False))
    return repo


def errors(repo: Repository, name: str | None = None) -> list[str]:
    return [p.message for p in validate_repository(repo, name) if p.severity == "error"]


def test_freshly_published_repository_is_consistent(repo):
    assert errors(repo) == []


def test_missing_config_is_reported(repo):
    repo.config_path("linear").unlink()
    assert "config.pbtxt is missing" in errors(repo)


def test_config_naming_another_model_is_reported(repo):
    path = repo.config_path("linear")
    path.write_text(path.read_text().replace('name: "linear"', 'name: "other"'))
    assert any("names the model 'other'" in e for e in errors(repo))


def test_missing_artifact_in_a_version_is_reported(repo):
    (repo.version_dir("linear", 2) / "model.onnx").unlink()
    assert errors(repo, "linear") == ["version 2: model.onnx is missing"]


def test_modified_artifact_is_reported_by_hash(repo):
    (repo.version_dir("linear", 3) / "model.onnx").write_bytes(b"tampered")
    assert any("version 3" in e and "sha256" in e for e in errors(repo))


def test_symlink_out_of_the_repository_is_reported(repo, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    (repo.version_dir("linear", 1) / "extra.bin").symlink_to(outside)
    assert any("links outside the repository" in e for e in errors(repo))


def test_model_without_versions_is_reported(repo):
    (repo.path / "empty").mkdir()
    assert "has no version folder" in errors(repo, "empty")


def test_prune_keeps_newest_and_versions_in_use(repo):
    result = prune(repo, "linear", keep=1, in_use={2})
    assert result.removed == [1, 3]
    assert result.protected == [2]
    assert repo.versions("linear") == [2, 4]
    assert errors(repo) == []


def test_prune_dry_run_removes_nothing(repo):
    result = prune(repo, "linear", keep=2, dry_run=True)
    assert result.removed == [1, 2]
    assert repo.versions("linear") == [1, 2, 3, 4]


def test_prune_refuses_keep_below_one(repo):
    with pytest.raises(ConfigError):
        prune(repo, "linear", keep=0)


def edit_config(repo: Repository, name: str, old: str, new: str) -> None:
    path = repo.config_path(name)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_config_tensors_that_no_longer_match_the_onnx_graph_are_reported_per_version(repo):
    # config.pbtxt: input x dims [-1, 4]; the graph takes x [batch, 4]
    edit_config(repo, "linear", "dims: 4", "dims: 5")
    assert errors(repo, "linear") == [
        f"version {v}: config.pbtxt: input 'x' has dims [-1, 5], the artifact has [-1, 4]"
        for v in (1, 2, 3, 4)
    ]


def test_an_output_data_type_the_onnx_graph_does_not_give_is_reported(repo):
    path = repo.config_path("linear")
    head, sep, tail = path.read_text().partition("output")
    path.write_text(head + sep + tail.replace("TYPE_FP32", "TYPE_FP16", 1))
    assert errors(repo, "linear")[0] == (
        "version 1: config.pbtxt: output 'y' has data type FP16, the artifact has FP32"
    )


@pytest.mark.parametrize("runtime", ["native", "python"])
def test_an_onnx_model_with_external_data_is_checked_from_its_graph(tmp_path, runtime):
    from tests.modelfactory import make_onnx_with_external_data

    path, _, _ = make_onnx_with_external_data(tmp_path / "ext")
    repo = Repository(tmp_path / "repo")
    publish(repo, "ext", path, PublishOptions(runtime=runtime, max_batch_size=8))
    assert errors(repo) == []
    edit_config(repo, "ext", 'name: "y"', 'name: "z"')
    assert errors(repo) == [
        "version 1: config.pbtxt: output 'z' is not in the artifact (it has: y)"
    ]


def test_a_python_runner_serving_onnx_is_checked_too(tmp_path):
    artifact = tmp_path / "m.onnx"
    make_onnx(artifact)
    repo = Repository(tmp_path / "repo")
    publish(repo, "lin", artifact, PublishOptions(runtime="python"))
    edit_config(repo, "lin", 'name: "x"', 'name: "x2"')
    assert errors(repo) == [
        "version 1: config.pbtxt: input 'x2' is not in the artifact (it has: x)"
    ]
