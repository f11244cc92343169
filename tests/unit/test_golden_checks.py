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
    compare,
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


def _compare(expected: np.ndarray, got: np.ndarray) -> None:
    compare(GoldenCase("c", {}, {"o": expected}), {"o": got}, model="m")


@pytest.mark.parametrize(
    ("expected", "got"),
    [
        # ids, counts: relative to their size, an off-by-one is within any tolerance
        (np.array([[100_000], [7]], np.int64), np.array([[100_009], [7]], np.int64)),
        (np.array([2**60], np.int64), np.array([2**60 + 1], np.int64)),
        (np.array([200], np.uint8), np.array([201], np.uint8)),
        (np.array([True, False]), np.array([True, True])),
    ],
)
def test_integer_and_boolean_outputs_must_match_exactly(expected, got):
    with pytest.raises(GoldenMismatch, match=r"1 of \d values differ; at \[.*\]"):
        _compare(expected, got)
    _compare(expected, expected.copy())


def test_float_outputs_keep_their_tolerance():
    _compare(np.array([1.0, 2.0], np.float32), np.array([1.00001, 2.0], np.float32))
    _compare(np.array([1.0], np.float16), np.array([1.0], np.float16))
    with pytest.raises(GoldenMismatch, match="max abs diff"):
        _compare(np.array([1.0], np.float32), np.array([1.1], np.float32))


@pytest.mark.parametrize(
    "expected",
    [
        np.array([["positive"], ["négatif"]]),  # numpy str, as written by hand
        np.array([[b"positive"], ["négatif".encode()]], dtype=object),
        np.array([[b"positive"], ["négatif".encode()]]),  # numpy bytes_
    ],
)
def test_text_outputs_compare_as_utf8_whatever_array_holds_them(expected):
    served = np.array([[b"positive"], ["négatif".encode()]], dtype=object)  # BYTES answer
    _compare(expected, served)
    wrong = np.array([[b"positive"], [b"negative"]], dtype=object)
    with pytest.raises(GoldenMismatch, match=r"1 of 2 values differ; at \[1, 0\]"):
        _compare(expected, wrong)


def test_text_inputs_of_a_golden_case_are_sent_as_utf8_bytes(monkeypatch):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from manager import infer as infer_module

    sent = {}

    class Client:
        def __init__(self, *args, **kwargs):
            pass

        def infer(self, model, inputs, **kwargs):
            for tensor in inputs:
                sent[tensor.name()] = (tensor.datatype(), tensor._get_binary_data())
            raise InferenceServerException("stop here")

        def close(self):
            pass

    monkeypatch.setattr(httpclient, "InferenceServerClient", Client)
    text = np.array([["héllo"], ["world"]])  # numpy str, as a golden .npz may hold it
    with pytest.raises(infer_module.InferenceError, match="stop here"):
        infer_module.infer("http://127.0.0.1:1", "m", {"TEXT": text})
    # each element: its length (4 bytes, little-endian), then its UTF-8 bytes
    assert sent["TEXT"] == ("BYTES", b"\x06\x00\x00\x00h\xc3\xa9llo\x05\x00\x00\x00world")
