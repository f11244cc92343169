"""ONNX models that keep their tensors in external data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from manager.errors import ArtifactError
from manager.modelconfig import read_config
from manager.publish import PublishOptions, publish
from manager.validate import validate_repository
from tests.modelfactory import make_onnx_with_external_data


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder that is neither the repository's nor the artifact's."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize("runtime", ["native", "python"])
def test_external_data_is_published_beside_the_model_from_any_directory(
    repo, tmp_path, elsewhere, runtime
):
    path, _, _ = make_onnx_with_external_data(tmp_path / "art" / "ext")
    relative = Path(os.path.relpath(path, elsewhere))
    result = publish(repo, "ext", relative, PublishOptions(runtime=runtime))
    folder = result.path / "model.onnx"
    assert folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "weights.bin"]
    assert (folder / "weights.bin").read_bytes() == (path.parent / "weights.bin").read_bytes()
    config = read_config(repo.config_path("ext"))
    assert [i.name for i in config.input] == ["x"]
    if runtime == "native":
        assert config.default_model_filename == "model.onnx"
    else:
        assert config.parameters["tritonctl.artifact"].string_value == "model.onnx/model.onnx"
    assert result.provenance["sha256_path"] == "model.onnx"
    assert validate_repository(repo, "ext") == []


def test_validate_notices_a_changed_external_data_file(repo, tmp_path):
    path, _, _ = make_onnx_with_external_data(tmp_path / "ext")
    result = publish(repo, "ext", path, PublishOptions(runtime="native"))
    data = result.path / "model.onnx" / "weights.bin"
    data.write_bytes(b"\0" * data.stat().st_size)
    (problem,) = validate_repository(repo, "ext")
    assert "does not match its recorded sha256" in problem.message


def test_missing_external_data_is_named(repo, tmp_path, elsewhere):
    path, _, _ = make_onnx_with_external_data(tmp_path / "ext")
    (path.parent / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match=r"keeps its data in weights.bin, which is not a file"):
        publish(repo, "ext", path, PublishOptions(runtime="native"))
    assert repo.models() == []


def test_external_data_outside_the_models_folder_is_refused(repo, tmp_path):
    import onnx

    path, _, _ = make_onnx_with_external_data(tmp_path / "ext")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    (path.parent / "weights.bin").rename(tmp_path / "weights.bin")
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ArtifactError, match="must be a relative path inside the model's folder"):
        publish(repo, "ext", path, PublishOptions(runtime="native"))


@pytest.mark.parametrize("link", [True, False])
def test_a_model_published_with_link_can_be_published_again(repo, tmp_path, link):
    # --link leaves the source's data file with two hard links; that is no attack
    path, _, _ = make_onnx_with_external_data(tmp_path / "ext")
    first = publish(repo, "ext", path, PublishOptions(runtime="native", link=True))
    assert (path.parent / "weights.bin").stat().st_nlink == 2
    again = publish(repo, "ext", path, PublishOptions(runtime="native", link=link))
    assert again.version == first.version + 1
    assert again.sha256 == first.sha256
    assert validate_repository(repo, "ext") == []


def test_external_data_hard_linked_by_the_user_is_accepted(repo, tmp_path):
    path, _, _ = make_onnx_with_external_data(tmp_path / "ext")
    os.link(path.parent / "weights.bin", tmp_path / "backup.bin")
    result = publish(repo, "ext", path, PublishOptions(runtime="native"))
    assert (result.path / "model.onnx" / "weights.bin").stat().st_nlink == 1


def test_external_data_shorter_than_its_tensors_is_refused_naming_the_tensor(repo, tmp_path):
    path, w, _ = make_onnx_with_external_data(tmp_path / "ext")
    data = path.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[: w.nbytes])  # B's bytes are cut off
    with pytest.raises(ArtifactError, match=r"tensor 'B' .* weights.bin is 32 bytes"):
        publish(repo, "ext", path, PublishOptions(runtime="native"))
    assert repo.models() == []


def test_an_invalid_graph_with_external_data_is_still_refused(repo, tmp_path):
    import onnx

    path, _, _ = make_onnx_with_external_data(tmp_path / "ext")
    model = onnx.load(str(path), load_external_data=False)
    model.graph.node[0].input[1] = "nowhere"  # MatMul reads a tensor nothing defines
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ArtifactError, match="is not a valid ONNX model"):
        publish(repo, "ext", path, PublishOptions(runtime="native"))
