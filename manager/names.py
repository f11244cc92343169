"""Validation of model and endpoint names.

Triton uses the model name as a folder name in the repository and as a path segment
in its HTTP API (``/v2/models/<name>``), so the manager accepts only names that are
safe in both places.
"""

from __future__ import annotations

import re

from manager.errors import InvalidNameError
from manager.settings import SETTINGS_FILE

MAX_NAME_LENGTH = 128
# Files of the manager's own in a repository root: a model folder may not take their place
# (names starting with "." are refused anyway). Compared case-insensitively, for
# case-insensitive filesystems.
RESERVED_NAMES = frozenset({SETTINGS_FILE, "tritonctl.yml"})
# fullmatch, not match with "$": "$" also matches before a trailing newline
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def validate_model_name(name: str, *, what: str = "model name") -> str:
    """Return ``name`` if it is a valid Triton model name, else raise ``InvalidNameError``.

    Accepted: 1-128 characters of letters, digits, ``_``, ``-`` and ``.``, not starting
    with ``.`` or ``-``, with no ``..`` and no path separator, and not a name the manager
    keeps for its own files in the repository root (``tritonctl.yaml``).
    """
    if not isinstance(name, str) or name == "":
        raise InvalidNameError(f"{what} must not be empty")
    if "/" in name or "\\" in name:
        raise InvalidNameError(f"{what} {name!r} must not contain a path separator")
    if ".." in name:
        raise InvalidNameError(f"{what} {name!r} must not contain '..'")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{what} {name!r} is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"{what} {name!r} is not a valid Triton model name: use letters, digits, "
            "'_', '-' and '.', starting with a letter, digit or '_'"
        )
    if name.lower() in RESERVED_NAMES:
        raise InvalidNameError(
            f"{what} {name!r} is reserved: the repository's {name} is tritonctl's settings file"
        )
    return name


# Triton reads version folder names as int64: a larger one throws out of its model
# loader and takes the whole server down (every model with it), so none may exist.
MAX_VERSION = 2**63 - 1


def validate_version(version: int) -> int:
    """Return ``version`` if it is a valid Triton version number (a positive integer of at
    most :data:`MAX_VERSION`)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidNameError(f"version must be a positive integer, got {version!r}")
    if version > MAX_VERSION:
        raise InvalidNameError(
            f"version {version} is above Triton's largest, {MAX_VERSION} (2^63 - 1): "
            "tritonserver cannot read it"
        )
    return version


def parse_model_ref(text: str) -> tuple[str, int | None]:
    """``MODEL`` or ``MODEL:VERSION`` -> (model, version or None), both checked."""
    model, colon, version_text = text.rpartition(":")
    if not colon:
        return validate_model_name(text), None
    try:
        version = int(version_text)
    except ValueError:
        raise InvalidNameError(f"{text!r} must be MODEL or MODEL:VERSION") from None
    return validate_model_name(model), validate_version(version)
