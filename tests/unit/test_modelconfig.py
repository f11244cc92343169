"""config.pbtxt goes through the protobuf ModelConfig and survives a round trip."""

from __future__ import annotations

import pytest

from manager.errors import ConfigError
from manager.modelconfig import (
    TensorSpec,
    build_config,
    config_from_text,
    config_to_text,
    numpy_to_triton_dtype,
    read_config,
    write_config,
)


def test_max_batch_size_zero_is_written_and_survives_round_trip(tmp_path):
    config = build_config("m", [TensorSpec("x", "FP32", (-1, 4))], [TensorSpec("y", "FP32", (2,))])
    text = config_to_text(config)
    assert "max_batch_size: 0" in text.splitlines()
    path = tmp_path / "config.pbtxt"
    write_config(path, config)
    back = read_config(path)
    assert back == config
    assert back.max_batch_size == 0
    assert config_to_text(back) == text


def test_batching_config_round_trips_with_dynamic_batching():
    config = build_config(
        "m",
        [TensorSpec("x", "FP32", (4,))],
        [TensorSpec("y", "INT64", (1,))],
        max_batch_size=8,
        backend="python",
        kind="gpu",
        instance_count=2,
        parameters={"tritonctl.runner": "onnx"},
        dynamic_batching=True,
    )
    back = config_from_text(config_to_text(config))
    assert back == config
    assert back.max_batch_size == 8
    assert back.HasField("dynamic_batching")
    assert back.instance_group[0].count == 2
    assert back.parameters["tritonctl.runner"].string_value == "onnx"


def test_unparseable_config_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot parse"):
        config_from_text("name: 'x' bogus_field: 3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x:FP32:-1,4", TensorSpec("x", "FP32", (-1, 4))),
        ("text:BYTES:1", TensorSpec("text", "STRING", (1,))),
        ("ids:type_int64:1", TensorSpec("ids", "INT64", (1,))),
    ],
)
def test_tensor_spec_parses_command_line_form(text, expected):
    assert TensorSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["x:FP32", "x:FLOAT99:1", "x:FP32:a,b", "x:FP32:0", ":FP32:1"])
def test_tensor_spec_refuses_malformed_text(text):
    with pytest.raises(ConfigError):
        TensorSpec.parse(text)


@pytest.mark.parametrize("text", ["x:FP32:", "x:FP32: ", "x:FP32:,"])
def test_tensor_spec_refuses_empty_dims_which_triton_cannot_load(text):
    with pytest.raises(ConfigError, match="no dims; Triton needs at least one"):
        TensorSpec.parse(text)


def test_numpy_dtypes_map_to_triton_names():
    import numpy as np

    assert numpy_to_triton_dtype(np.float32) == "FP32"
    assert numpy_to_triton_dtype(np.dtype("int64")) == "INT64"
    assert numpy_to_triton_dtype(np.object_) == "STRING"
    assert numpy_to_triton_dtype(np.bool_) == "BOOL"
