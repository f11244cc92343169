"""Footprints: the store, estimates before a first load, and measuring across a load."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.errors import ManagerError, RepositoryError
from manager.footprint import (
    CPU_METRIC,
    CPU_PROCESS_RSS,
    CPU_STUB_RSS,
    DEFAULT_CODE_ONLY_BYTES,
    DEFAULT_FACTOR,
    ESTIMATE,
    GPU_METRIC,
    Footprint,
    FootprintStore,
    MemoryMeter,
    artifact_size,
    footprint_fields,
    predicted_versions,
)
from manager.modelconfig import TensorSpec, build_config, write_config
from manager.procmem import (
    STUB_NAME,
    parse_metrics_interval,
    parse_stub_cmdline,
    read_process_memory,
    wait_stubs_gone,
)
from manager.repository import write_json_atomic

MIB = 2**20


def measured(model: str, version: int, nbytes: int, size: int | None = None) -> Footprint:
    return Footprint(model, version, nbytes, CPU_STUB_RSS, measured_at="t", size_bytes=size)


def version_dir(repo: Path, model: str, version: int, *, size_bytes: int | None = None) -> Path:
    vdir = repo / model / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.py").write_text("pass\n")
    if size_bytes is not None:
        write_json_atomic(vdir / "tritonctl.json", {"size_bytes": size_bytes})
    return vdir


# --------------------------------------------------------------------------- store


def test_store_round_trips_a_measured_footprint_keyed_by_model_and_version(
    tmp_path: Path,
) -> None:
    store = FootprintStore(tmp_path)
    fp = Footprint("m", 2, 123, GPU_METRIC, "2025-01-01T00:00:00+00:00", 1.5, 100, {"GPU-1": 123})
    store.record(fp, loaded_at=42.0)
    assert store.get("m", 2) == fp
    assert store.get("m", 1) is None
    assert store.loaded_at() == {("m", 2): 42.0}
    assert (tmp_path / ".tritonctl" / "footprints.json").is_file()
    store.forget("m")
    assert store.all() == []


def test_store_refuses_to_record_an_estimate(tmp_path: Path) -> None:
    with pytest.raises(ManagerError):
        FootprintStore(tmp_path).record(Footprint("m", 1, 1, ESTIMATE))


def test_malformed_footprint_record_is_a_repository_error() -> None:
    with pytest.raises(RepositoryError, match="malformed"):
        Footprint.from_json({"model": "m", "version": "x", "bytes": 1, "method": "estimate"})


def test_artifact_size_prefers_provenance_and_falls_back_to_the_files(tmp_path: Path) -> None:
    version_dir(tmp_path, "a", 1, size_bytes=10**9)
    version_dir(tmp_path, "b", 1)
    assert artifact_size(tmp_path, "a", 1) == 10**9
    assert artifact_size(tmp_path, "b", 1) == len("pass\n")
    assert artifact_size(tmp_path, "c", 1) is None


# --------------------------------------------------------------------------- estimates


def test_code_only_model_is_estimated_as_a_stub_before_anything_was_measured(
    tmp_path: Path,
) -> None:
    version_dir(tmp_path, "m", 1)
    fp = FootprintStore(tmp_path).footprint("m", 1)
    assert fp.method == ESTIMATE and fp.bytes == DEFAULT_CODE_ONLY_BYTES


def test_code_only_model_is_estimated_as_the_median_of_measured_code_only_models(
    tmp_path: Path,
) -> None:
    store = FootprintStore(tmp_path)
    for name, nbytes in (("a", 100 * MIB), ("b", 180 * MIB), ("c", 190 * MIB)):
        store.record(measured(name, 1, nbytes, size=2000))
    version_dir(tmp_path, "new", 1)
    assert store.estimate("new", 1).bytes == 180 * MIB


def test_large_artifact_is_size_times_the_default_factor_before_any_measurement(
    tmp_path: Path,
) -> None:
    version_dir(tmp_path, "m", 1, size_bytes=1000 * MIB)
    fp = FootprintStore(tmp_path).estimate("m", 1)
    assert fp.bytes == int(1000 * MIB * DEFAULT_FACTOR)
    assert "x 1.20" in fp.basis


def test_the_factor_is_the_median_of_measured_footprint_to_size_ratios(tmp_path: Path) -> None:
    store = FootprintStore(tmp_path)
    store.record(measured("a", 1, 2000 * MIB, size=1000 * MIB))  # 2.0
    store.record(measured("b", 1, 1500 * MIB, size=1000 * MIB))  # 1.5
    store.record(measured("c", 1, 3000 * MIB, size=1000 * MIB))  # 3.0
    store.record(measured("tiny", 1, 500 * MIB, size=1000))  # code only: not a ratio
    version_dir(tmp_path, "m", 1, size_bytes=100 * MIB)
    assert store.factor() == 2.0
    assert store.estimate("m", 1).bytes == 200 * MIB


def test_another_measured_version_of_the_same_model_is_scaled_by_artifact_size(
    tmp_path: Path,
) -> None:
    store = FootprintStore(tmp_path)
    store.record(measured("m", 1, 300 * MIB, size=200 * MIB))
    version_dir(tmp_path, "m", 2, size_bytes=400 * MIB)
    fp = store.estimate("m", 2)
    assert fp.bytes == 600 * MIB and "m:1" in fp.basis


def test_known_is_none_for_a_version_that_is_neither_measured_nor_on_disk(
    tmp_path: Path,
) -> None:
    store = FootprintStore(tmp_path)
    assert store.known("ghost", 1) is None
    assert footprint_fields(None)["footprint_bytes"] is None
    version_dir(tmp_path, "m", 1)
    fields = footprint_fields(store.known("m", 1))
    assert fields["footprint_method"] == ESTIMATE and fields["footprint_bytes"] > 0


def _model_with_policy(repo: Path, policy: str | None, versions: list[int]) -> None:
    folder = repo / "m"
    for v in versions:
        version_dir(repo, "m", v)
    config = build_config(
        "m", [TensorSpec("X", "FP32", (-1,))], [TensorSpec("Y", "FP32", (-1,))], backend="python"
    )
    if policy == "all":
        config.version_policy.all.SetInParent()
    elif policy == "latest2":
        config.version_policy.latest.num_versions = 2
    elif policy == "specific":
        config.version_policy.specific.versions.extend([1, 3])
    write_config(folder / "config.pbtxt", config)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(None, [3]), ("all", [1, 2, 3]), ("latest2", [2, 3]), ("specific", [1, 3])],
)
def test_predicted_versions_follow_the_version_policy(
    tmp_path: Path, policy: str | None, expected: list[int]
) -> None:
    _model_with_policy(tmp_path, policy, [1, 2, 3])
    assert predicted_versions(tmp_path, "m", None) == expected
    assert predicted_versions(tmp_path, "m", 2) == [2]


# --------------------------------------------------------------------------- processes


def test_stub_command_line_names_the_model_version_and_instance() -> None:
    cmd = [
        "/r/.tritonctl/backends/python/triton_python_backend_stub",
        "/r/mem_a/3/model.py",
        "triton_python_backend_shm_region_x",
        "1048576",
        "1048576",
        "22496",
        "/r/.tritonctl/backends/python",
        "336",
        "mem_a_0_1",
        "DEFAULT",
    ]
    assert parse_stub_cmdline(cmd) == ("mem_a", 3, "mem_a_0_1")
    odd = [*cmd[:1], "/elsewhere/model.py", *cmd[2:]]
    assert parse_stub_cmdline(odd) == ("mem_a", None, "mem_a_0_1")
    assert parse_stub_cmdline(["/usr/bin/python3", "x.py"]) is None


def test_metrics_interval_is_read_from_the_server_command_line() -> None:
    assert parse_metrics_interval(["tritonserver", "--metrics-interval-ms=200"]) == 0.2
    assert parse_metrics_interval(["tritonserver", "--metrics-interval-ms", "50"]) == 0.05
    assert parse_metrics_interval(["tritonserver"]) == 2.0


STUB_SCRIPT = textwrap.dedent(
    """
    import sys, time
    buffer = bytearray(b"x" * (48 * 2**20))
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def fake_stub(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child of this process that looks like a stub of ``mem:3`` and holds 48 MiB."""
    link = tmp_path / STUB_NAME
    link.symlink_to(sys.executable)
    script = version_dir(tmp_path, "mem", 3) / "model.py"
    script.write_text(STUB_SCRIPT)
    args = [str(link), str(script), "shm", "1", "1", str(os.getpid()), "d", "1", "mem_0_0", "K"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_process_memory_attributes_a_stub_to_its_model_version(
    fake_stub: subprocess.Popen[bytes],
) -> None:
    reading = read_process_memory(os.getpid())
    (stub,) = [s for s in reading.stubs if s.pid == fake_stub.pid]
    assert (stub.model, stub.version, stub.instance) == ("mem", 3, "mem_0_0")
    assert 40 * MIB < reading.model_bytes("mem", 3) < 100 * MIB
    assert reading.total_bytes >= reading.server_bytes + stub.resident_bytes
    fake_stub.kill()
    fake_stub.wait()
    assert wait_stubs_gone(os.getpid(), ["mem"], timeout=5)


SHARING_STUB_SCRIPT = textwrap.dedent(
    """
    import mmap, sys, time
    with open(sys.argv[-1], "r+b") as f:  # a file every such stub maps and reads
        shared = mmap.mmap(f.fileno(), 0)
    total = sum(shared[i] for i in range(0, len(shared), 4096))
    own = bytearray(b"x" * (16 * 2**20))
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_used_memory_falls_by_what_a_stub_held_alone_when_it_exits(tmp_path: Path) -> None:
    """Two stubs share 64 MiB of mapped pages: the tree's used memory counts them once,
    and one stub's exit lowers it by that stub's own memory (its USS), not by nothing."""
    link = tmp_path / STUB_NAME
    link.symlink_to(sys.executable)
    data = tmp_path / "shared.bin"
    data.write_bytes(b"\x01" * (64 * MIB))
    procs = []
    try:
        for model in ("sa", "sb"):
            script = version_dir(tmp_path, model, 1) / "model.py"
            script.write_text(SHARING_STUB_SCRIPT)
            args = [str(link), str(script), "shm", "1", "1", "1", "d", "1", f"{model}_0_0"]
            proc = subprocess.Popen([*args, str(data)], stdout=subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        before = read_process_memory(os.getpid())
        (first,) = [s for s in before.stubs if s.pid == procs[0].pid]
        # each holds its 16 MiB alone; the 64 MiB shared are neither one's
        assert 16 * MIB < first.resident_bytes < 64 * MIB
        assert first.proportional_bytes > first.resident_bytes + 24 * MIB
        procs[0].kill()
        procs[0].wait()
        after = read_process_memory(os.getpid())
        freed = before.total_bytes - after.total_bytes
        assert abs(freed - first.resident_bytes) < 8 * MIB, (freed, first)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_waiting_for_one_version_ignores_the_stubs_of_the_others(
    fake_stub: subprocess.Popen[bytes],
) -> None:
    assert wait_stubs_gone(os.getpid(), [("mem", 2), ("other", 3)], timeout=0.2)
    assert not wait_stubs_gone(os.getpid(), [("mem", 3)], timeout=0.2)
    assert not wait_stubs_gone(os.getpid(), ["mem"], timeout=0.2)


class ScriptedMetrics:
    """Host (or GPU) memory readings that change when told, as Triton's sampler would."""

    def __init__(self, used: int, *, gpu: bool = False) -> None:
        self.used = used
        self.gpu = gpu
        self.reads = 0

    def metrics_text(self) -> str:
        self.reads += 1
        if self.gpu:
            return (
                f'nv_gpu_memory_used_bytes{{gpu_uuid="GPU-a"}} {self.used}\n'
                f'nv_gpu_memory_total_bytes{{gpu_uuid="GPU-a"}} {80 * 2**30}\n'
                'nv_gpu_memory_used_bytes{gpu_uuid="GPU-b"} 5\n'
                f'nv_gpu_memory_total_bytes{{gpu_uuid="GPU-b"}} {80 * 2**30}\n'
            )
        return f"nv_cpu_memory_used_bytes {self.used}\nnv_cpu_memory_total_bytes {2**34}\n"


def test_stub_memory_is_the_footprint_on_a_cpu_host_with_a_local_server(
    tmp_path: Path, fake_stub: subprocess.Popen[bytes]
) -> None:
    meter = MemoryMeter(ScriptedMetrics(10**9), server_pid=os.getpid())
    assert meter.mode == CPU_PROCESS_RSS
    before = meter.baseline()
    (fp,) = meter.measure("mem", [3], before, load_seconds=1.0, sizes={3: 100})
    assert fp.method == CPU_STUB_RSS and 40 * MIB < fp.bytes < 120 * MIB
    usage = meter.usage()
    assert usage.method == CPU_PROCESS_RSS and usage.per_version[("mem", 3)] > 40 * MIB
    assert usage.total_bytes == 2**34


def test_cpu_metric_footprint_waits_for_a_fresh_sample(tmp_path: Path) -> None:
    metrics = ScriptedMetrics(1000)
    meter = MemoryMeter(metrics, metrics_interval_s=0.05)
    before = meter.baseline()
    metrics.used = 1000 + 300 * MIB  # the load's memory shows up in a later sample
    started = time.monotonic()
    (fp,) = meter.measure("m", [1], before, load_seconds=2.0)
    assert fp.method == CPU_METRIC and fp.bytes == 300 * MIB
    assert time.monotonic() - started >= 0.05  # settled for an interval, not the first read
    assert meter.usage().method == CPU_METRIC


def test_gpu_metric_footprint_is_the_sum_of_per_device_growth(tmp_path: Path) -> None:
    metrics = ScriptedMetrics(2 * 2**30, gpu=True)
    meter = MemoryMeter(metrics, metrics_interval_s=0.02)
    assert meter.mode == GPU_METRIC
    before = meter.baseline()
    metrics.used = 2 * 2**30 + 700 * MIB
    fp1, fp2 = meter.measure("m", [1, 2], before, load_seconds=4.0)
    assert fp2.version == 2 and fp2.bytes == fp1.bytes
    assert fp1.method == GPU_METRIC and fp1.bytes == 350 * MIB
    assert dict(fp1.devices) == {"GPU-a": 350 * MIB}
    usage = meter.usage()
    assert usage.used_bytes == 2 * 2**30 + 700 * MIB + 5
    assert usage.total_bytes == 160 * 2**30


def test_an_ensemble_has_no_footprint_of_its_own_but_a_model_has_an_estimate(
    tmp_path: Path,
) -> None:
    spec = TensorSpec("x", "FP32", (4,))
    for name, platform in (("ep", "ensemble"), ("m", "")):
        (tmp_path / name / "1").mkdir(parents=True)
        config = build_config(
            name, [spec], [spec], platform=platform, backend="" if platform else "python"
        )
        write_config(tmp_path / name / "config.pbtxt", config)
    store = FootprintStore(tmp_path)
    assert store.known("ep", 1) is None
    estimate = store.known("m", 1)
    assert estimate is not None and estimate.method == ESTIMATE
