"""Large artifacts: what publishing one costs in memory and disk, and what a failure or an
interruption leaves (the mechanisms, shown on small files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.modelfactory import make_onnx

ROOT = Path(__file__).resolve().parents[2]

PEAK_SCRIPT = r"""
import sys
from pathlib import Path
import onnx, onnx.checker  # imported before the baseline is taken
from manager.artifacts.onnx_artifact import graph_tensors, inspect_onnx

def peak():
    # this process's own high-water mark (getrusage's would include its parent's)
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024

path = Path(sys.argv[1])
graph_tensors(path.parent / "small.onnx")  # first use of the code paths
inspect_onnx(path.parent / "small.onnx")
before = peak()
art = inspect_onnx(path) if sys.argv[2] == "inspect" else graph_tensors(path)
print(peak() - before)
"""


def _onnx_of(tmp_path: Path, megabytes: int) -> Path:
    """A self-contained ONNX file of about ``megabytes`` MB (its weights inline)."""
    big = tmp_path / "big.onnx"
    make_onnx(big, in_dims=("batch", 1024), out_features=megabytes * 256)
    make_onnx(tmp_path / "small.onnx")
    return big


def _peak_growth(path: Path, what: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path), what],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return int(proc.stdout.split()[-1])


def test_inspecting_a_self_contained_onnx_model_does_not_hold_its_weights_in_memory(tmp_path):
    # ONNX (and its checker) read a model file whole and parse it: two or three copies of
    # the weights at once. The graph is read without the initializers' bytes.
    big = _onnx_of(tmp_path, 48)
    size = big.stat().st_size
    assert size > 48 * 2**20
    assert _peak_growth(big, "inspect") < size // 4
    assert _peak_growth(big, "graph") < size // 4


def test_the_graph_read_without_its_weights_is_the_model_less_their_bytes(tmp_path):
    import onnx

    from manager.artifacts.onnx_artifact import _load_stripped

    path = tmp_path / "m.onnx"
    make_onnx(path, in_dims=("batch", 300), out_features=200)
    model, stripped = _load_stripped(path)
    full = onnx.load(str(path))
    assert stripped == [len(t.raw_data) for t in full.graph.initializer] == [240000, 800]
    for tensor in full.graph.initializer:
        tensor.ClearField("raw_data")
    assert model == full


def test_an_initializer_whose_inline_bytes_do_not_fit_its_dims_is_refused(repo, tmp_path):
    import onnx
    import pytest

    from manager.errors import ArtifactError
    from manager.publish import PublishOptions, publish

    path = tmp_path / "m.onnx"
    make_onnx(path)
    model = onnx.load(str(path))
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    onnx.save(model, str(path))
    with pytest.raises(
        ArtifactError, match=r"tensor 'W' holds 28 bytes of data; its type and dims take 32"
    ):
        publish(repo, "m", path, PublishOptions(runtime="native"))
    assert not repo.has_model("m")
