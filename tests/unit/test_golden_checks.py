"""Answers checked against the config's declared outputs (the smoke test's first check)."""

from __future__ import annotations

import numpy as np
import pytest

from manager.errors import ConfigError
from manager.golden import (
    GoldenCase,
    GoldenMismatch,
    check_inputs_match_config,
    check_outputs_match_config,
)
from manager.modelconfig import TensorSpec, build_config

CONFIG = build_config(
    "m",
    [TensorSpec("x", "FP32", (4,))],
    [TensorSpec("y", "FP32", (-1, 3)), TensorSpec("label", "STRING", (1,))],
    max_batch_size=8,
)


def test_answers_of_the_declared_type_and_shape_pass():
    check_outputs_match_config(
        CONFIG,
        {"y": np.zeros((2, 5, 3), np.float32), "label": np.array([[b"a"], [b"b"]], dtype=object)},
        model="m",
    )


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        (
            {"y": np.zeros((2, 5, 3), np.int64)},
            "output 'y' came back as int64, the config declares FP32",
        ),
        ({"y": np.zeros((2, 3), np.float32)}, r"shape \[2, 3\], the config declares \[-1, -1, 3\]"),
        ({"y": np.zeros((2, 5, 7), np.float32)}, r"shape \[2, 5, 7\]"),
        ({"label": np.zeros((2, 1), np.float32)}, "output 'label' came back as float32"),
    ],
)
def test_answers_of_another_type_or_shape_are_refused(outputs, match):
    with pytest.raises(GoldenMismatch, match=match):
        check_outputs_match_config(CONFIG, outputs, model="m")


def _case(**inputs: np.ndarray) -> GoldenCase:
    return GoldenCase("ones", dict(inputs), {"y": np.zeros((1, 1, 3), np.float32)})


def test_golden_inputs_the_model_takes_pass():
    check_inputs_match_config(CONFIG, [_case(x=np.ones((2, 4), np.float32))])


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"x": np.ones((2, 4), np.float64)}, "input 'x' is float64, the model takes FP32"),
        ({"x": np.ones((4,), np.float32)}, r"shape \[4\], the model takes \[-1, 4\]"),
        ({"x": np.ones((2, 5), np.float32)}, r"shape \[2, 5\]"),
        ({}, "input 'x' is missing"),
        (
            {"x": np.ones((2, 4), np.float32), "z": np.ones(1)},
            r"input 'z' is not an input of 'm' \(it takes: x\)",
        ),
    ],
)
def test_golden_inputs_the_model_cannot_take_are_refused_naming_the_case(inputs, match):
    with pytest.raises(ConfigError, match=match) as caught:
        check_inputs_match_config(CONFIG, [_case(**inputs)])
    assert "golden case 'ones'" in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_smoke_test_with_unfit_golden_inputs_starts_no_server(monkeypatch, tmp_path):
    from manager import smoke

    def no_server(**kwargs):
        raise AssertionError("a server was started")

    monkeypatch.setattr(smoke, "throwaway_server", no_server)
    with pytest.raises(ConfigError, match="float64"):
        smoke.smoke_test(tmp_path, CONFIG, 1, [_case(x=np.ones((2, 4), np.float64))])
