"""Building and finding the native router library (a real compile with the host's C++
compiler: CI installs g++)."""

from __future__ import annotations

import ctypes
import math
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from manager import native_router
from manager.native_router import RouterBuildError
from tests.unit.fakes.triton_python_backend_utils import load_backend_module

ENTRY_POINTS = (
    "TRITONBACKEND_Initialize",
    "TRITONBACKEND_Finalize",
    "TRITONBACKEND_ModelInitialize",
    "TRITONBACKEND_ModelFinalize",
    "TRITONBACKEND_ModelInstanceInitialize",
    "TRITONBACKEND_ModelInstanceFinalize",
    "TRITONBACKEND_ModelInstanceExecute",
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRITONCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRITONCTL_ROUTER_LIBRARY", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    return tmp_path / "cache"


def test_the_build_exports_the_backend_entry_points_and_nothing_else(cache: Path) -> None:
    assert native_router.find_compiler() is not None, "a C++ compiler (g++) is needed"
    path = native_router.build()
    assert path == native_router.cached_library()
    assert path.parent.parent == cache
    # Triton's functions are resolved when the server loads the library: bind lazily
    lib = ctypes.CDLL(str(path), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
    for name in ENTRY_POINTS:
        assert hasattr(lib, name), name
    # only the entry points are exported: no internals, no copy of the C++ runtime
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert {line.split()[-1] for line in listing.splitlines() if line.strip()} == set(ENTRY_POINTS)
    assert not list(path.parent.glob(".build-*"))  # no temporary left behind


def test_find_library_builds_once_and_then_reuses_the_cached_build(cache: Path) -> None:
    first = native_router.find_library()
    stamp = first.stat().st_mtime_ns
    again = native_router.find_library()
    assert again == first
    assert again.stat().st_mtime_ns == stamp
    assert native_router.source_digest() in str(first.parent.name)


def test_a_prebuilt_library_named_by_the_environment_wins(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "libtriton_tritonctl_router.so"
    lib.write_bytes(b"prebuilt")
    monkeypatch.setenv("TRITONCTL_ROUTER_LIBRARY", str(lib))
    assert native_router.find_library() == lib
    monkeypatch.setenv("TRITONCTL_ROUTER_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(RouterBuildError, match="is not a file"):
        native_router.find_library()


def test_a_failing_compiler_is_reported_and_leaves_no_library(cache: Path) -> None:
    with pytest.raises(RouterBuildError, match="building the native router failed"):
        native_router.build(compiler="false")
    assert not native_router.cached_library().exists()


def test_no_compiler_means_no_native_router_but_no_error_for_auto(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert native_router.find_compiler() is None
    with pytest.raises(RouterBuildError, match="no C\\+\\+ compiler"):
        native_router.find_library()
    assert native_router.available() is None
    with pytest.raises(RouterBuildError, match="not built"):
        native_router.find_library(build_if_missing=False)


# --------------------------------------------------------------------------- routing logic

ROOT = Path(__file__).resolve().parents[2]
PROBE_SOURCE = ROOT / "tests" / "unit" / "native" / "router_probe.cc"
ROUTER_PY = ROOT / "triton_backends" / "router" / "model.py"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The router's routing code compiled into a library these tests call directly."""
    compiler = native_router.find_compiler()
    assert compiler is not None, "a C++ compiler (g++) is needed"
    out = tmp_path_factory.mktemp("probe") / "router_probe.so"
    flags = [f for f in native_router.FLAGS if not f.startswith("-static")]
    subprocess.run([compiler, *flags, "-o", str(out), str(PROBE_SOURCE)], check=True)
    lib = ctypes.CDLL(str(out), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
    lib.probe_hash.restype = ctypes.c_uint64
    lib.probe_hash.argtypes = [ctypes.c_char_p]
    lib.probe_unit.restype = ctypes.c_double
    lib.probe_unit.argtypes = [ctypes.c_uint64]
    lib.probe_double_key.restype = None
    lib.probe_double_key.argtypes = [ctypes.c_double, ctypes.c_char_p, ctypes.c_size_t]
    lib.probe_parse.restype = ctypes.c_int
    lib.probe_parse.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    u64 = ctypes.c_uint64
    lib.probe_shares.restype = ctypes.c_int
    lib.probe_shares.argtypes = [
        ctypes.c_char_p,
        u64,
        u64,
        u64,
        ctypes.c_int,
        u64,
        u64,
        ctypes.POINTER(u64),
        ctypes.POINTER(u64),
    ]
    lib.probe_track.restype = ctypes.c_int
    lib.probe_track.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    return lib


def routes_text(weights: list[float], **extra: str) -> bytes:
    lines = ["tritonctl-routes 1", "generation 1"]
    lines += [f"{k} {v}" for k, v in extra.items()]
    lines += [f"target m {i + 1} {w!r}" for i, w in enumerate(weights)]
    return ("\n".join(lines) + "\n").encode()


def shares(
    probe: ctypes.CDLL, weights: list[float], run: int, n: int, step_ns: int = 0, **kw: Any
) -> tuple[list[int], int]:
    """As :func:`shares_and_runs`, with the longest run of any target."""
    counts, longest = shares_and_runs(probe, weights, run, n, step_ns, **kw)
    return counts, max(longest)


def shares_and_runs(
    probe: ctypes.CDLL,
    weights: list[float],
    run: int,
    n: int,
    step_ns: int = 0,
    *,
    idle_window_ns: int = 0,
    idle: bool = False,
) -> tuple[list[int], list[int]]:
    """Routes ``n`` requests ``step_ns`` apart (a 1 ms run window); ``idle``: each finds
    nothing in flight, so runs last up to ``idle_window_ns``. Returns the requests each
    target got and the longest run of each."""
    counts = (ctypes.c_uint64 * len(weights))()
    longest = (ctypes.c_uint64 * len(weights))()
    ok = probe.probe_shares(
        routes_text(weights),
        run,
        1_000_000,
        idle_window_ns,
        int(idle),
        n,
        step_ns,
        counts,
        longest,
    )
    assert ok == 1
    return list(counts), list(longest)


def test_both_routers_hash_sticky_keys_alike(probe: ctypes.CDLL) -> None:
    python_router = load_backend_module(ROUTER_PY, "tritonctl_router_hash_check")
    keys = ["", "alice", "bob", "user-17", "correlation:42", "ünïcødé ключ", "x" * 300]
    for key in keys:
        native = probe.probe_hash(key.encode("utf-8"))
        assert native == python_router.stable_hash(key), key
        assert probe.probe_unit(native) * 100.0 == python_router.stable_point(key, 100.0)


def test_both_routers_key_a_double_sticky_parameter_by_the_same_text(
    probe: ctypes.CDLL,
) -> None:
    python_router = load_backend_module(ROUTER_PY, "tritonctl_router_key_check")
    rng = random.Random(7)
    values = [3.0, -0.0, 0.7, 0.1 + 0.2, -2.5, 1e20, 1e15, 2.0**63, -(2.0**63), 1e-7]
    values += [math.inf, -math.inf, math.nan, 5e-324, sys.float_info.max]
    values += [rng.uniform(-1e6, 1e6) for _ in range(200)]
    values += [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(200)]
    out = ctypes.create_string_buffer(64)
    for value in values:
        probe.probe_double_key(value, out, len(out))
        assert out.value.decode() == python_router.key_text(value), repr(value)
    # a whole number is its integer's text, so 3, 3.0 and "3" are one user
    expected = {3.0: "3", -0.0: "0", 0.7: "0.7", 1e20: "1e+20", 2.0**62: str(2**62)}
    for value, text in expected.items():
        assert python_router.key_text(value) == text
    assert python_router.key_text(3) == python_router.key_text("3") == "3"
    assert python_router.key_text(True) == "true"
    assert python_router.key_text(math.nan) == "nan"


def test_routes_parse_and_bad_routes_are_refused(probe: ctypes.CDLL) -> None:
    out = ctypes.create_string_buffer(256)
    assert probe.probe_parse(routes_text([90.0, 10.0]), out, 256) == 1
    assert out.value.decode() == "2 100 -1"
    assert probe.probe_parse(routes_text([0.0, 10.0]), out, 256) == 1
    assert out.value.decode() == "2 10 1"  # one positive weight: no choice to make
    for text, message in [
        (b"target m 1 1\n", "not a tritonctl routes file"),
        (b"tritonctl-routes 2\ntarget m 1 1\n", "unknown routes format"),
        (routes_text([]), "no targets"),
        (routes_text([0.0, 0.0]), "add up to 0"),
        (routes_text([-1.0]), "invalid weight"),
        (b"tritonctl-routes 1\ntarget m one 1\n", "malformed target"),
    ]:
        assert probe.probe_parse(text, out, 256) == 0, text
        assert message in out.value.decode(), (text, out.value)


@pytest.mark.parametrize(
    "weights", [[5.0, 95.0], [50.0, 50.0], [30.0, 70.0], [10.0, 0.0, 60.0, 30.0], [1.0, 1.0, 1.0]]
)
def test_runs_keep_every_share_exact_to_within_one_run(
    probe: ctypes.CDLL, weights: list[float]
) -> None:
    n, run = 20_000, 64
    counts, _ = shares(probe, weights, run, n)
    total = sum(weights)
    for weight, count in zip(weights, counts, strict=True):
        assert abs(count - n * weight / total) <= run, (weights, counts)
        if weight == 0.0:
            assert count == 0


def test_runs_are_bounded_by_length_and_time(probe: ctypes.CDLL) -> None:
    # equal weights: each run is followed by the other target's run
    _, longest = shares(probe, [50.0, 50.0], 64, 10_000)
    assert longest == 64
    # requests 0.1 ms apart: the 1 ms window ends a run after about 10 requests
    counts, longest = shares(probe, [50.0, 50.0], 64, 10_000, step_ns=100_000)
    assert longest <= 11
    assert abs(counts[0] - 5_000) <= 11


@pytest.mark.parametrize("idle", [False, True], ids=["busy", "lone-caller"])
def test_a_small_share_gets_runs_scaled_to_its_weight(probe: ctypes.CDLL, idle: bool) -> None:
    # a canary at 5 %: at most 64 * 5 / 95 = 3.4 -> 4 requests in a row, never two runs
    # back to back (the old version may get two: it is owed the rounding)
    window = 10**12 if idle else 0
    counts, longest = shares_and_runs(
        probe, [95.0, 5.0], 64, 20_000, idle_window_ns=window, idle=idle
    )
    assert longest[1] == 4
    assert abs(counts[1] - 1_000) <= 64
    # a share too small for even one request per full run gets runs of one
    _, longest = shares_and_runs(probe, [99.5, 0.5], 64, 20_000, idle_window_ns=window, idle=idle)
    assert longest[1] == 1
    # 15 %: 64 * 15 / 85 = 11.3 -> 12
    _, longest = shares_and_runs(probe, [85.0, 15.0], 64, 20_000, idle_window_ns=window, idle=idle)
    assert longest[1] == 12
    # equal weights keep full runs
    _, longest = shares_and_runs(probe, [50.0, 50.0], 64, 20_000, idle_window_ns=window, idle=idle)
    assert longest == [64, 64]
    # three targets: each run in proportion to the largest weight
    _, longest = shares_and_runs(probe, [10.0, 60.0, 30.0], 64, 20_000)
    assert longest == [11, 64, 32]


def test_a_lone_caller_keeps_its_run_for_the_idle_window(probe: ctypes.CDLL) -> None:
    # one caller, a call every 9 ms: past the 1 ms window each request would switch target
    counts, longest = shares(probe, [50.0, 50.0], 64, 1_000, step_ns=9_000_000)
    assert longest == 1
    # with nothing in flight the run goes on for the 100 ms idle window: 12 requests
    counts, longest = shares(
        probe, [50.0, 50.0], 64, 1_000, step_ns=9_000_000, idle_window_ns=100_000_000, idle=True
    )
    assert longest == 12
    assert abs(counts[0] - 500) <= 12
    # callers in flight together: the short window applies, whatever the idle window
    _, longest = shares(
        probe, [50.0, 50.0], 64, 1_000, step_ns=9_000_000, idle_window_ns=100_000_000
    )
    assert longest == 1
    # the idle window is bounded by the run length too
    _, longest = shares(probe, [50.0, 50.0], 64, 10_000, idle_window_ns=10**12, idle=True)
    assert longest == 64


def test_run_length_one_draws_at_random_per_request(probe: ctypes.CDLL) -> None:
    counts, longest = shares(probe, [25.0, 75.0], 1, 40_000)
    assert abs(counts[0] / 40_000 - 0.25) < 0.015
    assert longest < 64  # random: no runs imposed, yet long streaks of the 75 % target occur


@pytest.mark.parametrize(
    "order",
    [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 3, 0, 4, 2], [0]],
    ids=["first-tracked-first", "last-tracked-first", "middle-first", "mixed", "alone"],
)
def test_calls_in_flight_stay_tracked_for_cancellation_until_they_finish(
    probe: ctypes.CDLL, order: list[int]
) -> None:
    # the cancellation thread walks this list: a call finishing in any order leaves
    # exactly the others in it
    array = (ctypes.c_int * len(order))(*order)
    assert probe.probe_track(array, len(order)) == 1


# --------------------------------------------------------------------------- command line


def test_router_build_and_info_commands(cache: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    runner = CliRunner()
    info = runner.invoke(main, ["router", "info", "--json"])
    assert info.exit_code == 0, info.output
    assert '"library": null' in info.output  # nothing built in this cache yet
    out = tmp_path / "out" / "libtriton_tritonctl_router.so"
    built = runner.invoke(main, ["router", "build", "--output", str(out)])
    assert built.exit_code == 0, built.output
    assert built.output.strip() == str(out)
    assert out.is_file()
    runner.invoke(main, ["router", "build"])
    info = runner.invoke(main, ["router", "info"])
    assert f"library: {native_router.cached_library()}" in info.output
    backend = native_router.backend_name(native_router.cached_library())
    assert f"triton_backend: {backend}" in info.output


def test_router_build_without_a_compiler_fails_with_a_clear_message(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    result = CliRunner().invoke(main, ["router", "build"])
    assert result.exit_code != 0
    assert "no C++ compiler found" in result.output
