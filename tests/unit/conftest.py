"""Fixtures the publishing tests share: an empty repository and small artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.repository import Repository
from tests.modelfactory import make_onnx, make_torchscript


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A repository folder that does not exist yet (publish creates it)."""
    return Repository(tmp_path / "repo")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    """A linear layer x[-1, 4] -> y[-1, 2] as an ONNX file."""
    path = tmp_path / "linear.onnx"
    make_onnx(path)
    return path


@pytest.fixture
def pt_file(tmp_path: Path) -> Path:
    """A TorchScript module taking one tensor and returning one."""
    path = tmp_path / "m.pt"
    make_torchscript(path)
    return path
