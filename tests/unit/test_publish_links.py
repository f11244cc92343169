"""Symlinks in folder artifacts: a linked file's bytes are published, never the link."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from manager.errors import ArtifactError
from manager.publish import PublishOptions, publish
from manager.validate import validate_repository
from tests.modelfactory import write_python_model

HF_FILES = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}),
    "tokenizer.json": json.dumps({"model": {"vocab": {"[PAD]": 0, "[UNK]": 1}}}),
    "tokenizer_config.json": "{}",
    "model.safetensors": "weights",
}


def hf_cache_snapshot(cache: Path, revision: str = "abc123") -> Path:
    """The layout of a Hugging Face hub cache: ``models--X/snapshots/<rev>/<file>`` are
    relative symlinks to ``models--X/blobs/<sha256>``; returns the snapshot folder."""
    model = cache / "models--org--tiny"
    blobs = model / "blobs"
    snapshot = model / "snapshots" / revision
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, text in HF_FILES.items():
        blob = hashlib.sha256(text.encode()).hexdigest()
        (blobs / blob).write_text(text)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


@pytest.mark.parametrize("link", [False, True])
def test_a_hugging_face_cache_snapshot_is_published_with_the_files_it_links_to(
    repo, tmp_path, link
):
    snapshot = hf_cache_snapshot(tmp_path / "hub")
    result = publish(repo, "emb", snapshot, PublishOptions(link=link))
    hf = result.path / "hf"
    assert sorted(p.name for p in hf.iterdir()) == sorted(HF_FILES)
    for name, text in HF_FILES.items():
        assert not (hf / name).is_symlink()
        assert (hf / name).read_text() == text
    assert result.placed_by in (("link",) if link else ("copy", "clone"))
    assert validate_repository(repo, "emb") == []


def test_a_python_model_with_a_symlinked_weights_file_is_published_with_its_bytes(repo, tmp_path):
    folder = write_python_model(tmp_path / "py")
    weights = tmp_path / "store" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(b"\x01\x02\x03")
    os.symlink(weights, folder / "weights.bin")
    result = publish(repo, "py", folder)
    placed = result.path / "weights.bin"
    assert not placed.is_symlink()
    assert placed.read_bytes() == b"\x01\x02\x03"
    sizes = [(folder / name).stat().st_size for name in ("model.py", "config.pbtxt")]
    assert result.provenance["size_bytes"] == sum(sizes) + 3
    assert validate_repository(repo, "py") == []


def test_a_dangling_symlink_is_refused_and_named(repo, tmp_path):
    folder = write_python_model(tmp_path / "py")
    os.symlink(tmp_path / "gone.bin", folder / "weights.bin")
    with pytest.raises(ArtifactError, match=r"weights.bin is a symlink to .*gone.bin.* does not"):
        publish(repo, "py", folder)
    assert repo.models() == []


def test_a_symlinked_folder_out_of_the_artifact_is_refused(repo, tmp_path):
    folder = write_python_model(tmp_path / "py")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big.bin").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", folder / "data", target_is_directory=True)
    with pytest.raises(ArtifactError, match=r"symlink to the folder .* outside the artifact"):
        publish(repo, "py", folder)
    assert repo.models() == []


def test_a_symlinked_folder_inside_the_artifact_is_followed(repo, tmp_path):
    folder = write_python_model(tmp_path / "py")
    (folder / "real").mkdir()
    (folder / "real" / "a.txt").write_text("a")
    os.symlink("real", folder / "alias", target_is_directory=True)
    result = publish(repo, "py", folder)
    assert (result.path / "alias" / "a.txt").read_text() == "a"
    assert not (result.path / "alias").is_symlink()


def test_a_folder_link_loop_is_refused(repo, tmp_path):
    folder = write_python_model(tmp_path / "py")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up", target_is_directory=True)
    with pytest.raises(ArtifactError, match="would never end"):
        publish(repo, "py", folder)
