"""The audit log: every decision the memory controller takes, with its reason.

``<repo>/.tritonctl/audit.log`` holds one JSON object per line::

    {"time": "2025-01-01T12:00:00.123+00:00", "action": "evict", "model": "resnet",
     "version": 3, "reason": "lru: last inference 12 min ago", "bytes": 1610612736}

plus, where they apply, ``used_bytes``, ``limit_bytes`` and ``policy``. Actions: ``load``,
``evict``, ``refuse``, ``unload``, ``pin``, ``unpin``, ``alert`` (over the budget with
nothing left to evict). A log grown past :data:`MAX_BYTES` becomes ``audit.log.1`` (the one
before it is dropped), so it stays within twice that size.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from manager.settings import META_DIR

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"
ACTIONS = ("load", "evict", "refuse", "unload", "pin", "unpin", "alert")
ROTATED_SUFFIX = ".1"
MAX_BYTES = 8 * 2**20  # about 50,000 decisions


@dataclass(frozen=True)
class AuditRecord:
    """One decision."""

    action: str
    model: str
    version: int | None
    reason: str
    bytes: int | None = None
    time: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time or datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "action": self.action,
            "model": self.model,
            "version": self.version,
            "reason": self.reason,
            "bytes": self.bytes,
            **self.extra,
        }


class AuditLog:
    """Appends JSON lines to ``<repo>/.tritonctl/audit.log`` (one ``write`` per line), the
    processes of one repository (CLI, controller, REST control plane) side by side."""

    def __init__(self, repo: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(repo) / META_DIR / AUDIT_FILE
        self.rotated = self.path.with_name(AUDIT_FILE + ROTATED_SUFFIX)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> dict[str, Any]:
        data = record.to_json()
        line = (json.dumps(data, default=str) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > self.max_bytes:
                self._rotate()
        log.info(
            "%s %s%s: %s",
            record.action,
            record.model,
            f":{record.version}" if record.version is not None else "",
            record.reason,
        )
        return data

    def _rotate(self) -> None:
        """Move the full log aside. Under a lock, and only while it is still over the size:
        another process may have moved it already. A writer that opened the old file just
        before appends its line there, in ``audit.log.1``: nothing is lost."""
        with FileLock(str(self.path.with_name(AUDIT_FILE + ".lock")), timeout=30):
            try:
                if self.path.stat().st_size <= self.max_bytes:
                    return
                os.replace(self.path, self.rotated)
            except FileNotFoundError:
                return

    def read(self) -> list[dict[str, Any]]:
        """Every record kept (the rotated file's, then the current one's), oldest first;
        unparsable lines are skipped."""
        out = []
        for path in (self.rotated, self.path):
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict):
                    out.append(data)
        return out

    def query(
        self, model: str | None = None, action: str | None = None, last: int | None = None
    ) -> list[dict[str, Any]]:
        """The records of ``model`` (of every model without it) and ``action``, oldest
        first, the ``last`` newest of them only if given."""
        out = [
            r
            for r in self.read()
            if (model is None or r.get("model") == model)
            and (action is None or r.get("action") == action)
        ]
        return out[-last:] if last is not None else out
