"""Scalar tensors: Triton needs a dim, so a scalar is ``dims [1]`` with ``reshape []``."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.errors import ConfigError
from manager.modelconfig import TensorSpec, read_config
from manager.publish import PublishOptions, publish
from manager.validate import validate_repository
from tests.modelfactory import make_onnx_with_scalars


@pytest.fixture
def scalars(tmp_path: Path) -> Path:
    path = tmp_path / "scalars.onnx"
    make_onnx_with_scalars(path)
    return path


@pytest.fixture
def batched_scalars(tmp_path: Path) -> Path:
    path = tmp_path / "batched.onnx"
    make_onnx_with_scalars(path, batched=True)
    return path


def shapes(entries) -> dict[str, tuple[list[int], list[int] | None]]:
    return {
        e.name: (list(e.dims), list(e.reshape.shape) if e.HasField("reshape") else None)
        for e in entries
    }


def test_unbatched_scalars_are_published_as_dims_1_for_the_runner(repo, scalars):
    # Triton refuses an empty reshape without batching: the runner takes the scalar out
    result = publish(repo, "sc", scalars, PublishOptions(runtime="python"))
    written = read_config(repo.config_path("sc"))
    for config in (result.config, written):
        assert config.max_batch_size == 0
        assert shapes(config.input) == {"x": ([4], None), "s": ([1], None)}
        assert shapes(config.output) == {"y": ([4], None), "r": ([1], None)}
    assert validate_repository(repo, "sc") == []
    publish(repo, "sc", scalars, PublishOptions(runtime="python"))  # a second version fits


def test_unbatched_scalars_are_refused_for_the_native_backend_saying_what_works(repo, scalars):
    with pytest.raises(ConfigError, match=r"tensor 's' .* is a scalar .* --runtime python"):
        publish(repo, "sc", scalars, PublishOptions(runtime="native"))
    assert repo.models() == []


@pytest.mark.parametrize("runtime", ["native", "python"])
def test_batched_scalars_are_dims_1_reshaped_past_the_batch_dim(repo, batched_scalars, runtime):
    opts = PublishOptions(runtime=runtime, max_batch_size=8)
    result = publish(repo, "bs", batched_scalars, opts)
    written = read_config(repo.config_path("bs"))  # the empty reshapes survive the file
    for config in (result.config, written):
        assert config.max_batch_size == 8
        assert shapes(config.input) == {"x": ([4], None), "s": ([1], [])}
        assert shapes(config.output) == {"y": ([4], None), "r": ([1], [])}
    assert validate_repository(repo, "bs") == []
    publish(repo, "bs", batched_scalars, opts)  # a second version fits the model's config


def test_an_output_flag_of_dims_1_for_a_scalar_is_accepted(repo, scalars):
    opts = PublishOptions(runtime="python", outputs=[TensorSpec.parse("r:FP32:1")])
    result = publish(repo, "sc", scalars, opts)
    assert shapes(result.config.output) == {"r": ([1], None)}
    assert shapes(result.config.input) == {"x": ([4], None), "s": ([1], None)}


def test_flags_of_dims_1_for_batched_scalars_are_accepted_and_reshaped(repo, batched_scalars):
    opts = PublishOptions(
        max_batch_size=4,
        inputs=[TensorSpec.parse("x:FP32:4"), TensorSpec.parse("s:FP32:1")],
        outputs=[TensorSpec.parse("r:FP32:1")],  # past the batch dim
    )
    result = publish(repo, "bs", batched_scalars, opts)
    assert shapes(result.config.input) == {"x": ([4], None), "s": ([1], [])}
    assert shapes(result.config.output) == {"r": ([1], [])}


def test_a_config_with_dims_1_reshaped_to_a_scalar_is_accepted_with_batching(
    repo, batched_scalars, tmp_path
):
    cfg = tmp_path / "config.pbtxt"
    cfg.write_text(
        "max_batch_size: 4\n"
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] },'
        ' { name: "s" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }]\n'
        'output [{ name: "r" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }]\n'
    )
    result = publish(repo, "bs", batched_scalars, PublishOptions(config_path=cfg))
    assert shapes(result.config.output) == {"r": ([1], [])}
    assert validate_repository(repo, "bs") == []


def test_an_empty_reshape_without_batching_is_refused_saying_what_triton_takes(
    repo, scalars, tmp_path
):
    cfg = tmp_path / "config.pbtxt"
    cfg.write_text(
        "max_batch_size: 0\n"
        'output [{ name: "r" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }]\n'
    )
    with pytest.raises(ConfigError, match=r"output 'r' has an empty reshape, which Triton"):
        publish(repo, "sc", scalars, PublishOptions(runtime="python", config_path=cfg))
    cfg.write_text('max_batch_size: 0\noutput [{ name: "r" data_type: TYPE_FP32 dims: [ 1 ] }]\n')
    result = publish(repo, "sc", scalars, PublishOptions(runtime="python", config_path=cfg))
    assert shapes(result.config.output) == {"r": ([1], None)}


def test_a_scalar_given_with_a_wrong_type_or_a_reshape_of_another_shape_is_refused(
    repo, scalars, tmp_path
):
    with pytest.raises(ConfigError, match="output 'r' has data type FP16, the artifact has FP32"):
        opts = PublishOptions(runtime="python", outputs=[TensorSpec.parse("r:FP16:1")])
        publish(repo, "sc", scalars, opts)
    cfg = tmp_path / "config.pbtxt"
    cfg.write_text(
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } },'
        ' { name: "s" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )
    with pytest.raises(ConfigError, match=r"input 'x' has dims \[4\] reshaped to \[2, 2\]"):
        publish(repo, "sc", scalars, PublishOptions(runtime="python", config_path=cfg))
    assert repo.models() == []


def test_a_scalar_in_a_config_without_a_reshape_is_refused_saying_how(repo, scalars, tmp_path):
    cfg = tmp_path / "config.pbtxt"
    cfg.write_text('output [{ name: "r" data_type: TYPE_FP32 }]\n')
    with pytest.raises(ConfigError, match=r"has no dims; .* dims \[1\] with reshape"):
        publish(repo, "sc", scalars, PublishOptions(config_path=cfg))
