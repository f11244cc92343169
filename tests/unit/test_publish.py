"""Publishing: versions, formats, validation against the artifact, and atomicity."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from manager.errors import (
    ArtifactError,
    ConfigError,
    InvalidNameError,
    ModelNotFoundError,
    RepositoryError,
    VersionExistsError,
)
from manager.listing import version_rows
from manager.modelconfig import TensorSpec, read_config
from manager.publish import PublishOptions, parse_labels, publish
from manager.repository import Repository
from manager.validate import validate_repository
from tests.localhttp import local_http_server
from tests.modelfactory import make_onnx, make_torchscript, write_python_model

NATIVE = PublishOptions(runtime="native")


def test_publish_onnx_creates_version_one_with_config_from_graph(repo, onnx_file):
    result = publish(repo, "linear", onnx_file, NATIVE)
    assert result.version == 1
    config = read_config(repo.config_path("linear"))
    assert config.name == "linear"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [-1, 4])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [-1, 2])]
    assert (repo.version_dir("linear", 1) / "model.onnx").read_bytes() == onnx_file.read_bytes()


def test_next_version_is_highest_plus_one(repo, onnx_file):
    publish(repo, "linear", onnx_file, NATIVE)
    publish(repo, "linear", onnx_file, PublishOptions(runtime="native", version=7))
    assert publish(repo, "linear", onnx_file, NATIVE).version == 8
    assert repo.versions("linear") == [1, 7, 8]


def test_versions_past_tritons_int64_are_refused_and_flagged(repo, onnx_file):
    # tritonserver reads version folders as int64: a larger one crashes the whole server
    top = 2**63 - 1
    with pytest.raises(InvalidNameError, match="above Triton's largest"):
        publish(repo, "linear", onnx_file, PublishOptions(runtime="native", version=top + 1))
    assert not repo.model_dir("linear").exists()
    publish(repo, "linear", onnx_file, PublishOptions(runtime="native", version=top))
    with pytest.raises(InvalidNameError, match="give a free lower one with --version"):
        publish(repo, "linear", onnx_file, NATIVE)
    assert repo.versions("linear") == [top]
    # a folder made by hand is a problem for validate, not a version
    (repo.model_dir("linear") / str(top + 1)).mkdir()
    problems = [p.message for p in validate_repository(repo) if p.model == "linear"]
    assert any("would take tritonserver down" in p for p in problems), problems


def test_existing_version_is_never_overwritten(repo, onnx_file, tmp_path):
    publish(repo, "linear", onnx_file, NATIVE)
    before = (repo.version_dir("linear", 1) / "tritonctl.json").read_text()
    other = tmp_path / "other.onnx"
    make_onnx(other, seed=3)
    with pytest.raises(VersionExistsError, match="already has version 1"):
        publish(repo, "linear", other, PublishOptions(runtime="native", version=1))
    assert (repo.version_dir("linear", 1) / "tritonctl.json").read_text() == before


def test_leading_dynamic_dim_becomes_batch_dim_when_batching(repo, onnx_file):
    publish(repo, "linear", onnx_file, PublishOptions(runtime="native", max_batch_size=16))
    config = read_config(repo.config_path("linear"))
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [4]
    assert list(config.output[0].dims) == [2]
    assert config.HasField("dynamic_batching")


def test_batching_refused_when_leading_dim_is_fixed(repo, tmp_path):
    path = tmp_path / "fixed.onnx"
    make_onnx(path, in_dims=(1, 4))
    with pytest.raises(ConfigError, match=r"input 'x'.*dynamic leading dimension"):
        publish(repo, "fixed", path, PublishOptions(runtime="native", max_batch_size=4))
    assert not repo.has_model("fixed")


def test_provenance_records_hash_source_time_and_labels(repo, onnx_file):
    import hashlib

    publish(
        repo, "linear", onnx_file, PublishOptions(runtime="native", labels={"git_commit": "abc123"})
    )
    info = repo.get_version("linear", 1).provenance
    assert info["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert info["source"] == str(onnx_file.resolve())
    assert info["labels"] == {"git_commit": "abc123"}
    assert info["format"] == "onnx"
    assert "published_at" in info


def test_user_config_matching_the_artifact_is_accepted(repo, onnx_file, tmp_path):
    cfg = tmp_path / "config.pbtxt"
    cfg.write_text(
        'max_batch_size: 0\ninput [{ name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ -1, 2 ] }]\n'
    )
    publish(repo, "linear", onnx_file, PublishOptions(runtime="native", config_path=cfg))
    assert read_config(repo.config_path("linear")).name == "linear"


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (
            'input [{ name: "x" data_type: TYPE_INT32 dims: [ -1, 4 ] }]',
            "input 'x' has data type INT32",
        ),
        (
            'input [{ name: "x" data_type: TYPE_FP32 dims: [ -1, 5 ] }]',
            r"input 'x' has dims \[-1, 5\]",
        ),
        (
            'input [{ name: "z" data_type: TYPE_FP32 dims: [ -1, 4 ] }]',
            "input 'z' is not in the artifact",
        ),
    ],
)
def test_user_config_mismatch_is_refused_naming_the_tensor(
    repo, onnx_file, tmp_path, tensor, match
):
    cfg = tmp_path / "config.pbtxt"
    cfg.write_text(tensor + '\noutput [{ name: "y" data_type: TYPE_FP32 dims: [ -1, 2 ] }]\n')
    with pytest.raises(ConfigError, match=match):
        publish(repo, "linear", onnx_file, PublishOptions(runtime="native", config_path=cfg))
    assert not repo.has_model("linear")


def test_torchscript_needs_tensors_and_gets_libtorch_platform(repo, tmp_path):
    pt = tmp_path / "m.pt"
    make_torchscript(pt)
    with pytest.raises(
        ConfigError, match="does not declare its tensors: give --input and --output"
    ):
        publish(repo, "ts", pt, NATIVE)
    only_in = PublishOptions(runtime="native", inputs=[TensorSpec("x", "FP32", (-1, 4))])
    with pytest.raises(ConfigError, match="give --output \\(NAME"):
        publish(repo, "ts", pt, only_in)
    opts = PublishOptions(
        runtime="native",
        inputs=[TensorSpec("x", "FP32", (-1, 4))],
        outputs=[TensorSpec("y", "FP32", (-1, 2))],
    )
    publish(repo, "ts", pt, opts)
    config = read_config(repo.config_path("ts"))
    assert config.platform == "pytorch_libtorch"
    assert (repo.version_dir("ts", 1) / "model.pt").is_file()
    # a later version takes the model's tensors; given ones must still agree with them
    assert publish(repo, "ts", pt, NATIVE).version == 2
    other = PublishOptions(
        runtime="native",
        inputs=[TensorSpec("x", "FP32", (-1, 5))],
        outputs=[TensorSpec("y", "FP32", (-1, 2))],
    )
    with pytest.raises(ConfigError):
        publish(repo, "ts", pt, other)
    assert repo.versions("ts") == [1, 2]


def test_python_model_folder_without_name_gets_the_published_name(repo, tmp_path):
    folder = write_python_model(tmp_path / "addone")
    publish(repo, "add_one", folder)
    config = read_config(repo.config_path("add_one"))
    assert config.name == "add_one"
    assert config.backend == "python"
    assert config.max_batch_size == 0
    assert (repo.version_dir("add_one", 1) / "model.py").is_file()
    assert not (repo.version_dir("add_one", 1) / "config.pbtxt").exists()


def test_a_python_version_is_published_with_its_bytecode_for_this_interpreter(repo, tmp_path):
    import importlib.util

    folder = write_python_model(tmp_path / "addone")
    stale = folder / "__pycache__"
    stale.mkdir()
    (stale / "model.cpython-10.pyc").write_bytes(b"not from here")
    publish(repo, "add_one", folder)
    vdir = repo.version_dir("add_one", 1)
    cached = Path(importlib.util.cache_from_source(str(vdir / "model.py")))
    assert cached.is_file() and cached.stat().st_mtime >= (vdir / "model.py").stat().st_mtime
    assert [p.name for p in (vdir / "__pycache__").iterdir()] == [cached.name]


def test_python_model_folder_named_otherwise_is_published_under_the_name_with_a_notice(
    repo, tmp_path
):
    folder = write_python_model(tmp_path / "addone", name="other")
    result = publish(repo, "add_one", folder)
    assert read_config(repo.config_path("add_one")).name == "add_one"
    assert any("names the model 'other'" in n for n in result.notices), result.notices
    same = publish(repo, "other", folder)
    assert not any("names the model" in n for n in same.notices)


def test_python_model_without_config_takes_tensors_from_flags(repo, tmp_path):
    folder = write_python_model(tmp_path / "addone", with_config=False)
    with pytest.raises(ConfigError):
        publish(repo, "add_one", folder)
    opts = PublishOptions(
        inputs=[TensorSpec("X", "FP32", (-1,))], outputs=[TensorSpec("Y", "FP32", (-1,))]
    )
    publish(repo, "add_one", folder, opts)
    assert read_config(repo.config_path("add_one")).input[0].name == "X"


def test_format_auto_detects_each_kind(tmp_path, onnx_file):
    from manager.artifacts import detect_format

    pt = tmp_path / "m.pt"
    make_torchscript(pt)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert detect_format(onnx_file) == "onnx"
    assert detect_format(pt) == "torchscript"
    assert detect_format(write_python_model(tmp_path / "py")) == "python"
    assert detect_format(hf) == "transformers"


@pytest.mark.parametrize("name", ["", "a/b", "..", "../evil", "x y"])
def test_publish_refuses_bad_names_and_writes_nothing(repo, onnx_file, name):
    with pytest.raises(InvalidNameError):
        publish(repo, name, onnx_file, NATIVE)
    assert repo.models() == []


def test_truncated_onnx_is_refused_and_nothing_is_written(repo, onnx_file, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="ONNX"):
        publish(repo, "bad", bad, NATIVE)
    assert repo.models() == []


def test_an_onnx_tensor_of_a_type_triton_is_not_given_is_refused_naming_it(repo, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "bf16.onnx"
    onnx.save(model, str(path))
    for options in (NATIVE, PublishOptions(runtime="python")):
        with pytest.raises(ArtifactError, match=r"ONNX tensor 'x' is BFLOAT16, .* FP16, FP32"):
            publish(repo, "bf", path, options)
    assert repo.models() == []


def test_missing_artifact_and_unknown_format_are_refused(repo, tmp_path, onnx_file):
    with pytest.raises(ArtifactError, match="does not exist"):
        publish(repo, "m", tmp_path / "nope.onnx", NATIVE)
    with pytest.raises(ArtifactError, match="unknown format"):
        publish(repo, "m", onnx_file, PublishOptions(format="tensorflow"))
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ArtifactError, match="cannot tell the format"):
        publish(repo, "m", odd, NATIVE)


def test_changed_tensors_on_a_new_version_are_refused(repo, onnx_file, tmp_path):
    publish(repo, "linear", onnx_file, NATIVE)
    wider = tmp_path / "wider.onnx"
    make_onnx(wider, in_dims=("batch", 8))
    with pytest.raises(ConfigError, match="input x FP32"):
        publish(repo, "linear", wider, NATIVE)
    assert repo.versions("linear") == [1]


def test_failed_verification_publishes_nothing(repo, onnx_file):
    def reject(staged: Path, config: object) -> None:
        assert (staged / "1" / "model.onnx").is_file()
        raise ConfigError("smoke test failed")

    with pytest.raises(ConfigError, match="smoke test failed"):
        publish(repo, "linear", onnx_file, NATIVE, verify=reject)
    assert repo.models() == []
    assert list((repo.meta_dir / "staging").iterdir()) == []


def test_labels_must_be_key_value():
    assert parse_labels(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError):
        parse_labels(["novalue"])
    with pytest.raises(ConfigError, match="'a' given twice"):
        parse_labels(["a=1", "a=2"])
    assert parse_labels(["a=1", "a=1"]) == {"a": "1"}


def test_a_runtime_from_the_environment_that_is_none_is_refused(monkeypatch):
    from manager.runtime import resolve_runtime

    monkeypatch.setenv("TRITONCTL_RUNTIME", "bogus")
    with pytest.raises(ConfigError, match="TRITONCTL_RUNTIME='bogus' is not a runtime"):
        resolve_runtime("auto")
    assert resolve_runtime("python") == "python"  # an explicit runtime wins
    monkeypatch.setenv("TRITONCTL_RUNTIME", "Native")
    assert resolve_runtime("auto") == "native"


def _publish_in_process(repo_path: str, artifact: str, queue: multiprocessing.Queue) -> None:
    result = publish(Repository(repo_path), "linear", artifact, PublishOptions(runtime="native"))
    queue.put(result.version)


def test_concurrent_publishers_get_distinct_versions(repo, onnx_file):
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=_publish_in_process, args=(str(repo.path), str(onnx_file), queue))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    versions = sorted(queue.get(timeout=5) for _ in procs)
    assert versions == [1, 2, 3, 4]
    for v in versions:
        info = repo.get_version("linear", v)
        assert (info.path / "model.onnx").read_bytes() == onnx_file.read_bytes()
        assert info.provenance["version"] == v


KILL_SCRIPT = r"""
import sys, time
from pathlib import Path
from manager.publish import publish, PublishOptions
from manager.repository import Repository

def slow(total, done, what):
    def advance(n):
        if what == "placing":
            print("placing", flush=True)
            time.sleep(0.5)
    return advance

publish(Repository(sys.argv[1]), "big", sys.argv[2], PublishOptions(runtime="native", link=False), progress=slow)
"""


def test_publish_killed_midway_leaves_no_partial_version(repo, tmp_path, onnx_file):
    # a large self-contained ONNX file so that the copy takes several chunks
    big = tmp_path / "big.onnx"
    make_onnx(big, in_dims=("batch", 4096), out_features=1024)
    publish(repo, "big", big, NATIVE)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(repo.path), str(big)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "placing"  # it is copying now
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert repo.versions("big") == [1]
    assert any((repo.meta_dir / "staging").iterdir())  # the leftover is only in staging
    (warning,) = validate_repository(repo, "big", check_hashes=False)
    assert "left by an interrupted publish" in warning.message
    # the next publisher of any model cleans up; the next of this one gets version 2
    publish(repo, "linear", onnx_file, NATIVE)
    assert list((repo.meta_dir / "staging").iterdir()) == []
    assert publish(repo, "big", big, NATIVE).version == 2
    assert list((repo.meta_dir / "staging").iterdir()) == []
    assert json.loads((repo.version_dir("big", 2) / "tritonctl.json").read_text())["version"] == 2


def test_artifact_is_copied_by_default_so_the_version_owns_its_bytes(repo, onnx_file):
    result = publish(repo, "linear", onnx_file, NATIVE)
    placed = repo.version_dir("linear", 1) / "model.onnx"
    assert result.placed_by in ("copy", "clone")
    assert placed.stat().st_ino != onnx_file.stat().st_ino
    assert placed.read_bytes() == onnx_file.read_bytes()


def test_rewriting_the_source_in_place_leaves_a_published_version_intact(repo, onnx_file, tmp_path):
    publish(repo, "linear", onnx_file, NATIVE)
    published = (repo.version_dir("linear", 1) / "model.onnx").read_bytes()
    # what torch.onnx.export to the same path does: truncate and rewrite the same inode
    other = tmp_path / "other.onnx"
    make_onnx(other, seed=5)
    inode = onnx_file.stat().st_ino
    with onnx_file.open("r+b") as fh:
        fh.truncate(0)
        fh.write(other.read_bytes())
    assert onnx_file.stat().st_ino == inode
    assert (repo.version_dir("linear", 1) / "model.onnx").read_bytes() == published
    assert validate_repository(repo, "linear") == []


def test_hard_link_only_on_request_and_validate_explains_an_in_place_change(repo, onnx_file):
    result = publish(repo, "linear", onnx_file, PublishOptions(runtime="native", link=True))
    placed = repo.version_dir("linear", 1) / "model.onnx"
    assert result.placed_by == "link"
    assert placed.stat().st_ino == onnx_file.stat().st_ino
    with onnx_file.open("r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x00")
    (problem,) = validate_repository(repo, "linear")
    assert "does not match its recorded sha256" in problem.message
    assert "published with --link" in problem.message


def test_copy_falls_back_to_a_chunked_copy_with_progress(monkeypatch, tmp_path):
    from manager import filecopy

    def unsupported(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(filecopy.fcntl, "ioctl", unsupported)
    monkeypatch.setattr(filecopy.os, "copy_file_range", unsupported)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(filecopy.CHUNK * 2 + 123))
    seen: list[int] = []
    assert filecopy.place(src, tmp_path / "out.bin", progress=seen.append) == "copy"
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert sum(seen) == src.stat().st_size and len(seen) == 3


def test_copy_uses_a_clone_where_the_filesystem_offers_one(monkeypatch, tmp_path):
    from manager import filecopy

    calls: list[int] = []

    def clone(fd_out: int, request: int, fd_in: int) -> int:
        calls.append(request)
        os.write(fd_out, os.pread(fd_in, 1 << 20, 0))  # what FICLONE amounts to
        return 0

    monkeypatch.setattr(filecopy.fcntl, "ioctl", clone)
    src = tmp_path / "m.bin"
    src.write_bytes(b"weights" * 100)
    seen: list[int] = []
    assert filecopy.place(src, tmp_path / "out.bin", progress=seen.append) == "clone"
    assert calls == [filecopy.FICLONE]
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert seen == [700]


def test_copy_file_range_failing_midway_is_finished_by_a_plain_copy(monkeypatch, tmp_path):
    from manager import filecopy

    real = os.copy_file_range
    calls = []

    def once_then_fail(*args: int) -> int:
        calls.append(args)
        if len(calls) > 1:
            raise OSError(errno.EXDEV, "cross-device")
        return real(*args)

    monkeypatch.setattr(
        filecopy.fcntl, "ioctl", lambda *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no"))
    )
    monkeypatch.setattr(filecopy.os, "copy_file_range", once_then_fail)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(filecopy.CHUNK + 999))
    seen: list[int] = []
    assert filecopy.place(src, tmp_path / "out.bin", progress=seen.append) == "copy"
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert sum(seen) == src.stat().st_size


def test_new_version_keeps_the_models_config_and_its_version_policy(repo, onnx_file):
    publish(repo, "linear", onnx_file, NATIVE)
    path = repo.config_path("linear")
    path.write_text(path.read_text() + "version_policy { specific { versions: 1 } }\n")
    before = path.read_text()
    publish(repo, "linear", onnx_file, NATIVE)
    assert path.read_text() == before
    assert list(read_config(path).version_policy.specific.versions) == [1]


@pytest.mark.parametrize("name", ["tritonctl.yaml", "TritonCtl.YAML", "tritonctl.yml"])
def test_the_settings_file_name_is_reserved_even_where_the_file_is_absent(repo, onnx_file, name):
    with pytest.raises(InvalidNameError, match="reserved"):
        publish(repo, name, onnx_file, NATIVE)
    assert not (repo.path / name).exists()


def test_a_name_taken_by_a_file_in_the_repository_is_a_clean_error(repo, onnx_file):
    repo.ensure()
    readme = repo.path / "README.md"
    readme.write_text("my models\n")
    with pytest.raises(RepositoryError, match="exists and is not a model folder"):
        publish(repo, "README.md", onnx_file, NATIVE)
    assert readme.read_text() == "my models\n"
    assert repo.models() == []


def test_publishing_any_model_removes_what_killed_publishers_of_others_left(repo, onnx_file):
    publish(repo, "linear", onnx_file, NATIVE)
    leftover = repo.staging_dir("big")  # a publisher of "big" was killed while copying
    (leftover / "big" / "1").mkdir(parents=True)
    (leftover / "big" / "1" / "model.onnx").write_bytes(b"\0" * 1024)
    publish(repo, "other", onnx_file, NATIVE)
    assert not leftover.exists()
    assert list((repo.meta_dir / "staging").iterdir()) == []


def test_the_staging_folder_of_a_running_publish_is_left_alone(repo, onnx_file):
    from filelock import FileLock

    repo.ensure()
    running = repo.staging_dir("big")
    (repo.meta_dir / "locks").mkdir(exist_ok=True)
    with FileLock(str(repo.meta_dir / "locks" / "big.lock")):  # its publisher holds the lock
        publish(repo, "other", onnx_file, NATIVE)
        assert running.is_dir()
        (warning,) = [p for p in validate_repository(repo) if p.model == "big"]
        assert "a publish in progress" in warning.message
    (warning,) = [p for p in validate_repository(repo) if p.model == "big"]
    assert warning.severity == "warning"
    assert f"staging folder {running}" in warning.message
    assert "left by an interrupted publish" in warning.message


def test_publishing_under_an_endpoints_name_is_refused_and_says_so(repo, onnx_file):
    version_dir = repo.path / "ep" / "1"
    version_dir.mkdir(parents=True)
    (repo.path / "ep" / "config.pbtxt").write_text('name: "ep"\nplatform: "ensemble"\n')
    (version_dir / "tritonctl.json").write_text(json.dumps({"kind": "endpoint"}))

    with pytest.raises(RepositoryError, match="'ep' is an endpoint, not a model"):
        publish(repo, "ep", onnx_file)
    with pytest.raises(ModelNotFoundError, match="'ep' is an endpoint"):
        version_rows(repo, "ep")
    assert sorted(p.name for p in (repo.path / "ep").iterdir()) == ["1", "config.pbtxt"]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_staging_server_that_does_not_answer_is_named_with_no_stray_unload(
    tmp_path, scheme, caplog
):
    from manager.errors import TritonUnreachableError
    from manager.smoke import smoke_test

    folder = write_python_model(tmp_path / "addone", name="addone")
    config = read_config(folder / "config.pbtxt")
    with (
        caplog.at_level("WARNING"),
        pytest.raises(TritonUnreachableError, match="no Triton server answers"),
    ):
        smoke_test(folder, config, 1, [], url=f"{scheme}://127.0.0.1:9")
    assert "could not unload" not in caplog.text


def test_a_staging_url_of_another_service_is_named_as_not_triton(tmp_path, caplog):
    """A web server that is not Triton answers the load with an error page: the smoke
    test says no Triton server answers there, in one line, and sends it nothing else."""
    from http.server import BaseHTTPRequestHandler

    from manager.errors import TritonUnreachableError
    from manager.smoke import smoke_test

    asked: list[str] = []

    class NotTriton(BaseHTTPRequestHandler):
        def _page(self) -> None:
            asked.append(f"{self.command} {self.path}")
            body = b"<!DOCTYPE HTML><html><body>Not Found</body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args: object) -> None:
            pass

    folder = write_python_model(tmp_path / "addone", name="addone")
    config = read_config(folder / "config.pbtxt")
    with (
        local_http_server(NotTriton) as url,
        caplog.at_level("WARNING"),
        pytest.raises(TritonUnreachableError, match="no Triton server answers") as raised,
    ):
        smoke_test(folder, config, 1, [], url=url)
    assert "\n" not in str(raised.value) and "html" not in str(raised.value).lower()
    assert asked == ["GET /v2/health/live"]
    assert "could not unload" not in caplog.text
