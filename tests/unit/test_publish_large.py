"""Large artifacts: what publishing one costs in memory and disk, and what a failure or an
interruption leaves (the mechanisms, shown on small files)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

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


def _free_space(monkeypatch, free: int) -> None:
    import shutil

    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - free, free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def _never_placed(monkeypatch) -> list[object]:
    placed: list[object] = []
    monkeypatch.setattr("manager.publish.place", lambda *a, **k: placed.append(a))
    return placed


def test_an_artifact_larger_than_the_free_space_is_refused_before_anything_is_copied(
    repo, tmp_path, monkeypatch
):
    from manager.errors import RepositoryError
    from manager.publish import PublishOptions, publish

    big = _onnx_of(tmp_path, 1)
    monkeypatch.setattr("manager.filecopy._clone", lambda fd_in, fd_out: False)
    _free_space(monkeypatch, 1000)
    placed = _never_placed(monkeypatch)
    with pytest.raises(RepositoryError) as caught:
        publish(repo, "m", big, PublishOptions(runtime="native"))
    message = str(caught.value)
    assert "not enough space" in message
    assert "needs 1.0 MiB" in message and "1000 B free" in message
    assert str(repo.path) in message
    assert placed == []
    assert not repo.has_model("m")
    assert list((repo.meta_dir / "staging").iterdir()) == []


def test_links_and_clones_on_the_repositorys_filesystem_need_no_room(repo, tmp_path, monkeypatch):
    from manager.publish import PublishOptions, publish

    big = _onnx_of(tmp_path, 1)
    _free_space(monkeypatch, 1000)
    # a hard link takes no room (the artifact is on the repository's filesystem here)
    assert publish(repo, "m", big, PublishOptions(runtime="native", link=True)).placed_by == "link"
    # nor does a copy-on-write clone, where the filesystem makes them
    monkeypatch.setattr("manager.filecopy._clone", lambda fd_in, fd_out: True)
    monkeypatch.setattr("manager.publish.place", lambda *a, **k: "clone")
    assert publish(repo, "m", big, PublishOptions(runtime="native")).version == 2


def test_a_disk_that_fills_up_mid_copy_leaves_no_version_and_no_staging(
    repo, tmp_path, monkeypatch
):
    import errno
    import os

    from manager.publish import PublishOptions, publish

    big = _onnx_of(tmp_path, 8)
    real = os.copy_file_range
    calls = []

    def copy_file_range(fd_in, fd_out, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if len(calls) > 1:  # the first chunk is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd_in, fd_out, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr("manager.filecopy._clone", lambda fd_in, fd_out: False)
    with pytest.raises(OSError) as caught:
        publish(repo, "m", big, PublishOptions(runtime="native"))
    assert caught.value.errno == errno.ENOSPC
    assert len(calls) == 2
    assert not repo.has_model("m")
    assert list((repo.meta_dir / "staging").iterdir()) == []


INTERRUPT_SCRIPT = r"""
import sys, time
import manager.filecopy as filecopy
from manager.cli import main

real = filecopy.copy_file

def slow_copy(src, dst, progress=None):
    how = real(src, dst, progress=progress)
    print("copying", flush=True)
    time.sleep(30)
    return how

filecopy.copy_file = slow_copy
main(["--repo", sys.argv[1], "publish", "m", sys.argv[2], "--runtime", "native", "--copy"])
"""


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGINT, 128 + signal.SIGINT), (signal.SIGTERM, 128 + signal.SIGTERM)],
)
def test_an_interrupted_publish_leaves_no_version_and_no_staging(repo, tmp_path, signum, status):
    big = _onnx_of(tmp_path, 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPT_SCRIPT, str(repo.path), str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "copying"
    assert any((repo.meta_dir / "staging").iterdir())  # the copy is under way
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == status, err  # as a shell reports a command the signal ended
    if signum == signal.SIGINT:
        assert err.strip().endswith("interrupted"), err
    assert not repo.has_model("m")
    assert list((repo.meta_dir / "staging").iterdir()) == []


def test_publish_reports_the_hashing_and_the_placing_of_the_artifact(repo, tmp_path):
    from manager.publish import PublishOptions, publish

    big = _onnx_of(tmp_path, 1)
    size = big.stat().st_size
    phases: list[list[object]] = []

    def progress(total, done, what):
        phases.append([what, total, 0])
        return lambda n: phases[-1].__setitem__(2, phases[-1][2] + n)

    publish(repo, "m", big, PublishOptions(runtime="native"), progress=progress)
    assert phases == [["hashing", size, size], ["placing", size, size]]


def _publish_cli(tmp_path: Path, monkeypatch, console=None) -> tuple[int, str]:
    from click.testing import CliRunner

    from manager.cli import main

    big = _onnx_of(tmp_path, 1)
    monkeypatch.setattr("manager.cli.publish_cmds.LARGE_BYTES", 0)
    if console is not None:
        monkeypatch.setattr("manager.cli.publish_cmds.err_console", console)
    args = ["--repo", str(tmp_path / "repo"), "publish", "m", str(big), "--runtime", "native"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result.exit_code, result.stderr


def test_off_a_terminal_a_large_publish_writes_nothing_to_stderr(tmp_path, monkeypatch):
    # a CI log gets no progress bar, nor the blank line a transient bar leaves behind
    assert _publish_cli(tmp_path, monkeypatch) == (0, "")


def test_in_a_terminal_a_large_publish_shows_each_phase(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    code, _ = _publish_cli(tmp_path, monkeypatch, console)
    assert code == 0
    shown = buffer.getvalue()
    assert "inspecting big.onnx" in shown
    assert "hashing big.onnx" in shown
    assert "placing big.onnx" in shown


WAITING_SCRIPT = r"""
import sys, time
from pathlib import Path
import manager.filecopy as filecopy
from manager.publish import PublishOptions, publish

real = filecopy.copy_file
go_on = Path(sys.argv[3])

def slow_copy(src, dst, progress=None):
    how = real(src, dst, progress=progress)
    print("copying", flush=True)
    while not go_on.exists():
        time.sleep(0.05)
    return how

filecopy.copy_file = slow_copy
result = publish(sys.argv[1], "m", sys.argv[2], PublishOptions(runtime="native", link=False))
print("published", result.version, flush=True)
"""


def test_the_copy_of_a_large_artifact_does_not_hold_the_models_lock(repo, tmp_path):
    # loads, endpoint changes and prunes of the model take its lock: a copy of many GB
    # must not make them wait (nor time them out); another publisher may publish meanwhile
    from manager.publish import PublishOptions, publish
    from manager.validate import validate_repository

    big = _onnx_of(tmp_path, 1)
    go_on = tmp_path / "go-on"
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITING_SCRIPT, str(repo.path), str(big), str(go_on)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "copying"
        with repo.lock("m", timeout=2):
            pass
        (running,) = [p for p in validate_repository(repo, "m") if "staging folder" in p.message]
        assert "a publish in progress" in running.message
        # a publish of the same model meanwhile leaves the running one's staging alone
        assert publish(repo, "m", big, PublishOptions(runtime="native")).version == 1
        assert len(list((repo.meta_dir / "staging").iterdir())) == 1
        go_on.touch()
        assert proc.stdout.readline().strip() == "published 2"
        assert proc.wait(20) == 0
    finally:
        go_on.touch()
        proc.wait(20)
    assert repo.versions("m") == [1, 2]
    placed = repo.get_version("m", 2)
    assert placed.provenance["version"] == 2
    assert (placed.path / "model.onnx").read_bytes() == big.read_bytes()
    assert list((repo.meta_dir / "staging").iterdir()) == []


def test_a_disk_full_mid_copy_names_where_it_was_writing(tmp_path, monkeypatch):
    import errno
    import os

    from click.testing import CliRunner

    from manager.cli import main

    def copy_file_range(*args):
        raise OSError(errno.ENOSPC, "No space left on device")  # no file name, as the OS says

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr("manager.filecopy._clone", lambda fd_in, fd_out: False)
    big = _onnx_of(tmp_path, 1)
    repo = tmp_path / "repo"
    args = ["--repo", str(repo), "publish", "m", str(big), "--runtime", "native"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 1
    staging = repo / ".tritonctl" / "staging"
    assert result.stderr.startswith(f"error: {staging}/m.")
    assert result.stderr.rstrip().endswith("/m/1/model.onnx: no space left on device")
    assert list(staging.iterdir()) == []
