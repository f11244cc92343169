from __future__ import annotations

import pytest

from manager.errors import InvalidNameError
from manager.names import parse_model_ref, validate_model_name, validate_version


@pytest.mark.parametrize("name", ["resnet50", "bert_base", "a-b.c", "_x", "M1"])
def test_valid_model_names_are_accepted(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        (".hidden", "not a valid"),
        ("-x", "not a valid"),
        ("has space", "not a valid"),
        ("x" * 129, "longer than"),
        ("名前", "not a valid"),
        ("tritonctl.yaml", "reserved"),
        ("evil\n", "not a valid"),
        ("a\nb", "not a valid"),
        ("a\x00b", "not a valid"),
        ("a\u2024b", "not a valid"),
    ],
)
def test_invalid_model_names_are_refused_with_reason(name, why):
    with pytest.raises(InvalidNameError, match=why):
        validate_model_name(name)


def test_a_trailing_newline_never_passes_as_a_name_or_a_ref():
    # a model folder named "m\n" would be made by publish and listed by Triton
    with pytest.raises(InvalidNameError):
        validate_model_name("m\n", what="endpoint name")
    with pytest.raises(InvalidNameError):
        parse_model_ref("m\n:1")


@pytest.mark.parametrize("version", [0, -1, True, 1.5])
def test_versions_must_be_positive_integers(version):
    with pytest.raises(InvalidNameError):
        validate_version(version)
