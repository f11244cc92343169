"""The audit log: every decision the memory controller takes, with its reason.

``<repo>/.tritonctl/audit.log`` holds one JSON object per line::

    {"time": "2025-01-01T12:00:00.123+00:00", "action": "evict", "model": "resnet",
     "version": 3, "reason": "lru: last inference 12 min ago", "bytes": 1610612736}

plus, where they apply, ``used_bytes``, ``limit_bytes`` and ``policy``. Actions: ``load``,
``evict``, ``refuse``, ``unload``, ``pin``, ``unpin``, ``alert`` (over the budget with
nothing left to evict).
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

from manager.settings import META_DIR

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"


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
    """Appends JSON lines to ``<repo>/.tritonctl/audit.log`` (one ``write`` per line)."""

    def __init__(self, repo: Path) -> None:
        self.path = Path(repo) / META_DIR / AUDIT_FILE
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> dict[str, Any]:
        data = record.to_json()
        line = (json.dumps(data, default=str) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        log.info(
            "%s %s%s: %s",
            record.action,
            record.model,
            f":{record.version}" if record.version is not None else "",
            record.reason,
        )
        return data

    def read(self) -> list[dict[str, Any]]:
        """Every record, oldest first (unparsable lines are skipped)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                out.append(data)
        return out
