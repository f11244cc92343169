"""Parsing Triton's Prometheus metrics into memory readings and per-model counters."""

from __future__ import annotations

import pytest

from manager.errors import ManagerError
from manager.metrics import parse_memory, parse_metrics, read_memory

GPU_SAMPLE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="resnet",version="1"} 42
nv_inference_request_success{model="resnet",version="2"} 3
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="resnet",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="resnet",reason="OTHER",version="1"} 2
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="resnet",version="1"} 50
# HELP nv_inference_exec_count Number of model executions performed
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="resnet",version="1"} 42
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-aaaa"} 0.25
nv_gpu_utilization{gpu_uuid="GPU-bbbb"} 0
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-aaaa"} 85520809984
nv_gpu_memory_total_bytes{gpu_uuid="GPU-bbbb"} 85520809984
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaaa"} 2684354560
nv_gpu_memory_used_bytes{gpu_uuid="GPU-bbbb"} 536870912
# HELP nv_cpu_memory_total_bytes CPU total memory (RAM), in bytes
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 2164203622400
# HELP nv_cpu_memory_used_bytes CPU used memory (RAM), in bytes
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 80943599616
"""

CPU_ONLY_SAMPLE = """\
# HELP nv_pinned_memory_pool_total_bytes Pinned memory pool total memory size, in bytes
# TYPE nv_pinned_memory_pool_total_bytes gauge
nv_pinned_memory_pool_total_bytes 268435456
# HELP nv_pinned_memory_pool_used_bytes Pinned memory pool used memory size, in bytes
# TYPE nv_pinned_memory_pool_used_bytes gauge
nv_pinned_memory_pool_used_bytes 0
# HELP nv_cpu_memory_total_bytes CPU total memory (RAM), in bytes
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 25276502016
# HELP nv_cpu_memory_used_bytes CPU used memory (RAM), in bytes
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 508239872
"""


def test_gpu_sample_gives_used_and_total_per_gpu_uuid() -> None:
    reading = parse_memory(GPU_SAMPLE)
    assert reading.has_gpu
    assert sorted(reading.gpus) == ["GPU-aaaa", "GPU-bbbb"]
    gpu = reading.gpus["GPU-aaaa"]
    assert gpu.used_bytes == 2684354560
    assert gpu.total_bytes == 85520809984
    assert gpu.free_bytes == 85520809984 - 2684354560
    assert reading.gpu_used_bytes == 2684354560 + 536870912
    assert reading.gpu_total_bytes == 2 * 85520809984


def test_gpu_sample_also_carries_the_host_reading() -> None:
    reading = parse_memory(GPU_SAMPLE)
    assert reading.cpu is not None
    assert reading.cpu.used_bytes == 80943599616
    assert reading.cpu.total_bytes == 2164203622400
    assert [d.device for d in reading.devices()] == ["GPU-aaaa", "GPU-bbbb", "cpu"]


def test_cpu_only_sample_has_no_gpus_and_a_host_reading() -> None:
    reading = parse_memory(CPU_ONLY_SAMPLE)
    assert not reading.has_gpu
    assert reading.gpus == {}
    assert reading.gpu_used_bytes == 0
    assert reading.cpu is not None
    assert (reading.cpu.used_bytes, reading.cpu.total_bytes) == (508239872, 25276502016)


def test_empty_text_gives_an_empty_reading() -> None:
    reading = parse_memory("")
    assert reading.gpus == {}
    assert reading.cpu is None
    assert reading.devices() == []


def test_reading_is_timestamped() -> None:
    assert parse_memory(CPU_ONLY_SAMPLE, taken_at=123.5).taken_at == 123.5
    assert parse_memory(CPU_ONLY_SAMPLE).taken_at > 0


def test_per_model_counters_are_read_per_version() -> None:
    models = {(m.name, m.version): m for m in parse_metrics(GPU_SAMPLE).models}
    v1 = models[("resnet", 1)]
    assert v1.success == 42
    assert v1.inference_count == 50
    assert v1.execution_count == 42
    assert models[("resnet", 2)].success == 3


def test_failure_counter_is_summed_over_reasons() -> None:
    # Triton 2.51 labels failures by reason (BACKEND, OTHER, ...).
    v1 = next(m for m in parse_metrics(GPU_SAMPLE).models if m.version == 1)
    assert v1.failure == 2


def test_memory_reading_serialises_to_json() -> None:
    data = parse_memory(GPU_SAMPLE, taken_at=1.0).to_json()
    assert data["gpus"][0] == {
        "device": "GPU-aaaa",
        "used_bytes": 2684354560,
        "total_bytes": 85520809984,
        "free_bytes": 85520809984 - 2684354560,
    }
    assert data["cpu"]["device"] == "cpu"


def test_read_memory_takes_the_text_from_any_metrics_source() -> None:
    class Source:
        def metrics_text(self) -> str:
            return CPU_ONLY_SAMPLE

    assert read_memory(Source()).cpu is not None


def test_unparseable_metrics_raise_manager_error() -> None:
    with pytest.raises(ManagerError, match="metrics"):
        parse_memory("nv_cpu_memory_used_bytes not-a-number\n")
