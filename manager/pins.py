"""Pinned models: never evicted by the memory controller.

A model is pinned by ``pinned:`` in ``tritonctl.yaml`` or by ``tritonctl pin NAME``, which
records it in ``<repo>/.tritonctl/pins.json``. A pin covers every version of the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from filelock import FileLock

from manager.names import validate_model_name
from manager.repository import write_json_atomic
from manager.settings import META_DIR

log = logging.getLogger(__name__)

PINS_FILE = "pins.json"


class PinStore:
    """The pins recorded in the repository's metadata."""

    def __init__(self, repo: Path) -> None:
        self.path = Path(repo) / META_DIR / PINS_FILE

    def names(self) -> frozenset[str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return frozenset()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable pins %s: %s", self.path, exc)
            return frozenset()
        pinned = data.get("pinned") if isinstance(data, dict) else None
        return frozenset(str(n) for n in pinned or [] if isinstance(n, str))

    def _set(self, name: str, pinned: bool) -> bool:
        validate_model_name(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path.with_name(PINS_FILE + ".lock")), timeout=60):
            current = set(self.names())
            changed = (name in current) != pinned
            if pinned:
                current.add(name)
            else:
                current.discard(name)
            if changed:
                write_json_atomic(self.path, {"pinned": sorted(current)})
        return changed

    def pin(self, name: str) -> bool:
        """Pin ``name``; False if it already was."""
        return self._set(name, True)

    def unpin(self, name: str) -> bool:
        """Unpin ``name``; False if it was not pinned here."""
        return self._set(name, False)
