"""Answers checked against the config's declared outputs (the smoke test's first check)."""

from __future__ import annotations

import numpy as np
import pytest

from manager.golden import GoldenMismatch, check_outputs_match_config
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
