"""Triton's Prometheus metrics, parsed into memory readings and per-model counters.

Triton reports GPU memory per device (``nv_gpu_memory_used_bytes`` and
``nv_gpu_memory_total_bytes``, labelled ``gpu_uuid``) and host memory
(``nv_cpu_memory_used_bytes`` / ``nv_cpu_memory_total_bytes``). The CPU figure is the
used memory of the whole host, not of the server process, so deltas across a load are
only clean when nothing else on the host moves. Readings are sampled every
``--metrics-interval-ms`` by the server, so a reading right after a load can be stale.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from manager.errors import ManagerError

GPU_USED = "nv_gpu_memory_used_bytes"
GPU_TOTAL = "nv_gpu_memory_total_bytes"
CPU_USED = "nv_cpu_memory_used_bytes"
CPU_TOTAL = "nv_cpu_memory_total_bytes"

# per-model sample name -> ModelCounters field
_MODEL_COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inference_count",
    "nv_inference_exec_count": "execution_count",
    "nv_inference_request_duration_us": "request_duration_us",
    "nv_inference_queue_duration_us": "queue_duration_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_duration_us",
}


@dataclass(frozen=True)
class DeviceMemory:
    """Used and total bytes of one device: a GPU (by uuid) or the host (``cpu``)."""

    device: str
    used_bytes: int
    total_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(self.total_bytes - self.used_bytes, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "used_bytes": self.used_bytes,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
        }


@dataclass(frozen=True)
class MemoryReading:
    """One reading of the server's memory metrics.

    ``gpus`` maps gpu_uuid -> memory; it is empty on a CPU-only server. ``cpu`` is the
    host-wide reading, None if the server does not report it.
    """

    gpus: Mapping[str, DeviceMemory] = field(default_factory=dict)
    cpu: DeviceMemory | None = None
    taken_at: float = 0.0

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def gpu_used_bytes(self) -> int:
        return sum(g.used_bytes for g in self.gpus.values())

    @property
    def gpu_total_bytes(self) -> int:
        return sum(g.total_bytes for g in self.gpus.values())

    def devices(self) -> list[DeviceMemory]:
        """GPUs (sorted by uuid), then the host."""
        out = [self.gpus[k] for k in sorted(self.gpus)]
        if self.cpu is not None:
            out.append(self.cpu)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": [self.gpus[k].to_json() for k in sorted(self.gpus)],
            "cpu": self.cpu.to_json() if self.cpu is not None else None,
            "taken_at": self.taken_at,
        }


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative per-model-version counters from the metrics endpoint."""

    name: str
    version: int | None
    success: int = 0
    failure: int = 0
    inference_count: int = 0
    execution_count: int = 0
    request_duration_us: int = 0
    queue_duration_us: int = 0
    compute_infer_duration_us: int = 0


@dataclass(frozen=True)
class MetricsSnapshot:
    memory: MemoryReading
    models: list[ModelCounters]


class MetricsSource(Protocol):
    """Anything that serves Triton's Prometheus text (TritonControl, a fake)."""

    def metrics_text(self) -> str: ...


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(family name, labels, value) of every sample that is the family's value.

    The parser names counter samples ``<family>_total``; matching on the family name
    handles Triton's counters (which have no ``_total`` suffix) and gauges alike.
    """
    try:
        return [
            (family.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in (family.name, family.name + "_total")
        ]
    except ValueError as exc:
        raise ManagerError(f"cannot parse Triton's metrics: {exc}") from exc


def _version(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def parse_metrics(text: str, *, taken_at: float | None = None) -> MetricsSnapshot:
    """Parse the Prometheus text of ``/metrics`` into memory and per-model counters."""
    gpu_used: dict[str, int] = {}
    gpu_total: dict[str, int] = {}
    cpu_used: int | None = None
    cpu_total: int | None = None
    counters: dict[tuple[str, int | None], dict[str, int]] = {}
    for name, labels, value in _samples(text):
        if name == GPU_USED:
            gpu_used[labels.get("gpu_uuid", "")] = int(value)
        elif name == GPU_TOTAL:
            gpu_total[labels.get("gpu_uuid", "")] = int(value)
        elif name == CPU_USED:
            cpu_used = int(value)
        elif name == CPU_TOTAL:
            cpu_total = int(value)
        elif name in _MODEL_COUNTERS and "model" in labels:
            key = (labels["model"], _version(labels.get("version")))
            # summed over the other labels (failures are labelled by reason)
            fields = counters.setdefault(key, {})
            field_name = _MODEL_COUNTERS[name]
            fields[field_name] = fields.get(field_name, 0) + int(value)
    gpus = {
        uuid: DeviceMemory(uuid, gpu_used.get(uuid, 0), gpu_total.get(uuid, 0))
        for uuid in sorted(set(gpu_used) | set(gpu_total))
    }
    cpu = None
    if cpu_used is not None or cpu_total is not None:
        cpu = DeviceMemory("cpu", cpu_used or 0, cpu_total or 0)
    memory = MemoryReading(
        gpus=gpus, cpu=cpu, taken_at=time.time() if taken_at is None else taken_at
    )
    models = [
        ModelCounters(name=name, version=version, **fields)
        for (name, version), fields in sorted(
            counters.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)
        )
        if not name.startswith(".")
    ]
    return MetricsSnapshot(memory=memory, models=models)


def parse_memory(text: str, *, taken_at: float | None = None) -> MemoryReading:
    """The memory part of :func:`parse_metrics`."""
    return parse_metrics(text, taken_at=taken_at).memory


def read_memory(source: MetricsSource) -> MemoryReading:
    """Fetch the metrics text from ``source`` and parse its memory reading."""
    return parse_memory(source.metrics_text())


def read_metrics(source: MetricsSource) -> MetricsSnapshot:
    return parse_metrics(source.metrics_text())
