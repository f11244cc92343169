"""``tritonctl load|unload|ls`` against the session's real tritonserver."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from manager.audit import AuditLog
from manager.cli import main
from tests.integration.conftest import TritonHandle
from tests.integration.helpers import (
    ADD_MODEL_PY,
    FAILING_MODEL_PY,
    http_answer,
    write_add_model,
    write_python_model,
)

pytestmark = pytest.mark.integration


def run(triton: TritonHandle, *args: str, url: str | None = None) -> tuple[int, str]:
    argv = ["--repo", str(triton.repo), "--url", url or triton.http_url, *args]
    result = CliRunner().invoke(main, argv)
    return result.exit_code, result.output


def rows(triton: TritonHandle, name: str, url: str | None = None) -> dict[int | None, dict]:
    code, out = run(triton, "ls", "--json", url=url)
    assert code == 0, out
    data = json.loads(out)
    assert isinstance(data, list)
    return {r["version"]: r for r in data if r["name"] == name}


def test_cli_load_ls_unload_over_http(triton: TritonHandle) -> None:
    write_python_model(triton.repo, "cli_double")
    code, out = run(triton, "load", "cli_double")
    assert code == 0, out
    assert "loaded cli_double (version 1)" in out
    assert rows(triton, "cli_double")[1]["state"] == "READY"

    code, out = run(triton, "load", "cli_double")
    assert code == 0 and "already loaded" in out

    code, out = run(triton, "ls")
    assert code == 0 and "cli_double" in out and "READY" in out
    assert "host memory" in out or "GPU" in out

    code, out = run(triton, "unload", "cli_double")
    assert code == 0, out
    assert "unloaded cli_double" in out
    assert rows(triton, "cli_double")[1]["state"] == "UNAVAILABLE"
    last = AuditLog(triton.repo).read()[-1]  # beside the budget's evictions
    assert (last["action"], last["model"], last["reason"]) == (
        "unload",
        "cli_double",
        "by hand (tritonctl unload)",
    )


def test_cli_load_a_version_over_grpc_with_json(triton: TritonHandle) -> None:
    write_add_model(triton.repo, "cli_adder", {1: 1.0, 2: 2.0})
    code, out = run(triton, "load", "cli_adder", "--version", "1", "--json", url=triton.grpc_url)
    assert code == 0, out
    result = json.loads(out)
    assert result["versions"] == [1] and result["cache_hit"] is False
    listed = rows(triton, "cli_adder", url=triton.grpc_url)
    assert listed[1]["state"] == "READY"
    assert listed[2]["state"] == "UNAVAILABLE"
    code, out = run(triton, "unload", "cli_adder", "--json", url=triton.grpc_url)
    assert code == 0 and json.loads(out)["was_loaded"] is True


def test_cli_load_and_unload_keep_what_an_endpoint_routes_to_serving(
    triton: TritonHandle,
) -> None:
    write_add_model(triton.repo, "cli_routed", {1: 1.0, 2: 2.0})
    code, out = run(triton, "endpoint", "switch", "cli_front", "--to", "cli_routed:1", "--json")
    assert code == 0, out
    try:
        # as `endpoint show --json`: with what Triton serves now
        assert json.loads(out)["serving"] == {"ready": True, "targets": {"cli_routed:1": True}}
        assert http_answer(triton, "cli_front") == 1.0
        # a target without a version is bad input (exit 2), as is one with version 0
        for bad in ("cli_routed", "cli_routed:0=1"):
            code, out = run(triton, "endpoint", "split", "cli_front", "--target", bad)
            assert code == 2 and "--target" in out, (bad, out)
        # serving version 2 must not take away the version 1 the endpoint calls
        code, out = run(triton, "load", "cli_routed", "--version", "2", "--json")
        assert code == 0, out
        assert json.loads(out)["versions"] == [1, 2]
        assert http_answer(triton, "cli_front") == 1.0

        code, out = run(triton, "unload", "cli_routed")
        assert code != 0
        assert "cli_front (cli_routed:1)" in out and "--force" in out
        code, out = run(triton, "unload", "cli_front")  # the endpoint itself
        assert code != 0 and "endpoint delete cli_front" in out, out
        assert http_answer(triton, "cli_front") == 1.0

        code, out = run(triton, "endpoint", "show", "cli_front", "--json")
        assert json.loads(out)["serving"] == {"ready": True, "targets": {"cli_routed:1": True}}

        code, out = run(triton, "unload", "cli_routed", "--force")
        assert code == 0 and "unloaded cli_routed" in out, out
        assert rows(triton, "cli_routed")[1]["state"] == "UNAVAILABLE"
        # endpoint show tells that its clients now get errors, and what to do
        code, out = run(triton, "endpoint", "show", "cli_front")
        assert code == 0 and "not loaded" in out, out
        assert "tritonctl endpoint restore cli_front" in out
        # ... which serves it again
        code, out = run(triton, "endpoint", "restore", "cli_front", "--json")
        assert code == 0 and json.loads(out)["targets"][0]["version"] == 1, out
        assert http_answer(triton, "cli_front") == 1.0
    finally:
        code, out = run(triton, "endpoint", "delete", "cli_front", "--json")
        assert code == 0 and json.loads(out) == {"name": "cli_front", "deleted": True}, out
        run(triton, "unload", "cli_routed")


def test_cli_switch_to_a_model_the_clients_cannot_call_needs_force(
    triton: TritonHandle,
) -> None:
    write_add_model(triton.repo, "cli_io_old", {1: 1.0})
    write_python_model(
        triton.repo, "cli_io_batched", ADD_MODEL_PY.format(add=7.0), max_batch_size=4
    )
    code, out = run(triton, "endpoint", "switch", "cli_io_front", "--to", "cli_io_old:1")
    assert code == 0, out
    try:
        code, out = run(triton, "endpoint", "switch", "cli_io_front", "--to", "cli_io_batched")
        assert code == 1, out
        assert "max_batch_size" in out and "--force" in out, out
        code, out = run(
            triton, "endpoint", "split", "cli_io_front", "--target", "cli_io_batched:1=1"
        )
        assert code == 1 and "--force" in out, out
        assert http_answer(triton, "cli_io_front") == 1.0  # still served as before
        assert "cli_io_batched" not in {k for k, v in rows_ready(triton).items() if v}
        code, out = run(
            triton, "endpoint", "switch", "cli_io_front", "--to", "cli_io_batched", "--force"
        )
        assert code == 0, out
        code, out = run(triton, "endpoint", "show", "cli_io_front", "--json")
        assert json.loads(out)["targets"][0]["model"] == "cli_io_batched", out
    finally:
        run(triton, "endpoint", "delete", "cli_io_front")
        run(triton, "unload", "cli_io_old", "--force")
        run(triton, "unload", "cli_io_batched", "--force")


def test_cli_unload_of_one_version_keeps_the_others_and_the_endpoint_serving(
    triton: TritonHandle,
) -> None:
    write_add_model(triton.repo, "cli_versions", {1: 1.0, 2: 2.0, 3: 3.0})
    split = ["endpoint", "split", "cli_versions_front"]
    code, out = run(triton, *split, "--target", "cli_versions:1=1", "--target", "cli_versions:2=1")
    assert code == 0, out
    try:
        # the split moves on to 2 and 3: version 1 is no longer routed, yet stays served
        code, out = run(
            triton, *split, "--target", "cli_versions:2=1", "--target", "cli_versions:3=1"
        )
        assert code == 0, out
        assert rows(triton, "cli_versions")[1]["state"] == "READY"
        code, out = run(triton, "unload", "cli_versions", "--version", "1", "--json")
        assert code == 0, out
        assert json.loads(out) == {
            "name": "cli_versions",
            "seconds": json.loads(out)["seconds"],
            "was_loaded": True,
            "version": 1,
        }
        states = {v: r["state"] for v, r in rows(triton, "cli_versions").items()}
        assert states == {1: "UNAVAILABLE", 2: "READY", 3: "READY"}, states
        last = AuditLog(triton.repo).read()[-1]
        assert (last["action"], last["model"], last["version"]) == ("unload", "cli_versions", 1)
        assert http_answer(triton, "cli_versions_front") in (2.0, 3.0)
        # a routed version is refused, even forced; done twice, nothing to do
        code, out = run(triton, "unload", "cli_versions", "--version", "2")
        assert code == 1 and "cli_versions_front" in out, out
        code, out = run(triton, "unload", "cli_versions", "--version", "1", "--force")
        assert code == 2 and "--force" in out, out
        code, out = run(triton, "unload", "cli_versions", "--version", "1")
        assert code == 0 and "cli_versions:1 was not loaded" in out, out
        assert rows(triton, "cli_versions")[2]["state"] == "READY"
    finally:
        run(triton, "endpoint", "delete", "cli_versions_front")
        run(triton, "unload", "cli_versions")


def test_cli_failed_load_of_a_routed_model_leaves_its_version_policy_as_it_was(
    triton: TritonHandle,
) -> None:
    """An endpoint keeps its model's versions in config.pbtxt: a load of a new version
    that fails must not leave that version there (every later load, and a restore,
    would try it again), and the endpoint keeps answering."""
    folder = write_add_model(triton.repo, "cli_policy", {1: 1.0})
    code, out = run(triton, "endpoint", "switch", "cli_policy_front", "--to", "cli_policy:1")
    assert code == 0, out
    try:
        before = (folder / "config.pbtxt").read_text()
        (folder / "2").mkdir()
        (folder / "2" / "model.py").write_text(FAILING_MODEL_PY)
        code, out = run(triton, "load", "cli_policy", "--version", "2")
        assert code == 1 and "refused on purpose" in out, out
        assert (folder / "config.pbtxt").read_text() == before
        assert http_answer(triton, "cli_policy_front") == 1.0
        assert rows(triton, "cli_policy")[1]["state"] == "READY"
    finally:
        run(triton, "endpoint", "delete", "cli_policy_front")
        run(triton, "unload", "cli_policy")


def rows_ready(triton: TritonHandle) -> dict[str, bool]:
    code, out = run(triton, "ls", "--json")
    assert code == 0, out
    ready: dict[str, bool] = {}
    for row in json.loads(out):
        ready[row["name"]] = ready.get(row["name"], False) or row["state"] == "READY"
    return ready


def test_cli_load_serves_a_new_version_beside_the_one_an_endpoint_pins(
    triton: TritonHandle,
) -> None:
    folder = write_add_model(triton.repo, "cli_pinned", {1: 1.0, 2: 2.0})
    code, out = run(triton, "endpoint", "switch", "cli_pin_front", "--to", "cli_pinned:1")
    assert code == 0, out
    try:
        # published after the endpoint wrote its version policy into config.pbtxt
        (folder / "3").mkdir()
        (folder / "3" / "model.py").write_text(ADD_MODEL_PY.format(add=3.0))
        code, out = run(triton, "load", "cli_pinned", "--json")
        assert code == 0, out
        assert json.loads(out)["versions"] == [1, 3]  # the newest, and the endpoint's
        assert http_answer(triton, "cli_pin_front") == 1.0
        code, out = run(triton, "load", "cli_pinned", "--json")
        assert code == 0 and json.loads(out)["cache_hit"] is True, out
        # another endpoint on the model: its ensemble loads, cli_pinned is served again
        # from its files, and version 3 stays
        code, out = run(triton, "endpoint", "switch", "cli_pin_other", "--to", "cli_pinned:1")
        assert code == 0, out
        served = rows(triton, "cli_pinned")
        assert [v for v in (1, 2, 3) if served[v]["state"] == "READY"] == [1, 3]
    finally:
        for endpoint in ("cli_pin_front", "cli_pin_other"):
            run(triton, "endpoint", "delete", endpoint)
        run(triton, "unload", "cli_pinned")


def test_cli_errors_are_one_line_with_a_non_zero_exit(triton: TritonHandle) -> None:
    code, out = run(triton, "load", "cli_no_such_model")
    assert code != 0
    assert "cli_no_such_model" in out
    assert len(out.strip().splitlines()) == 1

    write_python_model(triton.repo, "cli_broken", FAILING_MODEL_PY)
    code, out = run(triton, "load", "cli_broken")
    assert code != 0
    assert "cli_broken" in out and "initialize refused on purpose" in out
    assert len(out.strip().splitlines()) == 1


def test_cli_without_url_uses_the_embedded_server_of_the_repo(
    triton: TritonHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITONCTL_URL", raising=False)
    result = CliRunner().invoke(main, ["--repo", str(triton.repo), "ls", "--json"])
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.output), list)


def test_cli_unreachable_server_is_a_clean_error(triton: TritonHandle) -> None:
    from manager.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    code, out = run(triton, "ls", url=url)
    assert code != 0
    assert url in out
    assert "Traceback" not in out


def plan_of(triton: TritonHandle, policy: str) -> dict:
    code, out = run(triton, "--policy", policy, "evict", "--dry-run", "--json")
    assert code == 0, out
    return json.loads(out)


def test_cli_lru_and_fifo_rank_plain_loads_by_last_inference_and_load_time(
    triton: TritonHandle,
) -> None:
    # loaded first to last: age_c, age_b, age_a (name order is the reverse)
    ours = ["age_c", "age_b", "age_a"]
    try:
        for name in ours:
            write_python_model(triton.repo, name)
            code, out = run(triton, "load", name)
            assert code == 0, out
            time.sleep(0.3)
        for name in ("age_b", "age_a", "age_c"):  # age_b is the least recently used
            http_answer(triton, name)
            time.sleep(0.05)

        lru = [v for v in plan_of(triton, "lru")["ranking"] if v["model"] in ours]
        assert [v["model"] for v in lru] == ["age_b", "age_a", "age_c"]
        fifo = [v for v in plan_of(triton, "fifo")["ranking"] if v["model"] in ours]
        assert [v["model"] for v in fifo] == ["age_c", "age_b", "age_a"]
        assert all("loaded 0.0 s ago" not in v["reason"] for v in fifo)

        # ls shows the footprint the plan counts
        listed = rows(triton, "age_b")[1]
        planned = next(v for v in lru if v["model"] == "age_b")
        assert listed["footprint_method"] == "cpu-stub-rss"
        assert abs(listed["footprint_bytes"] - planned["bytes"]) <= 0.1 * planned["bytes"]
    finally:
        for name in ours:
            run(triton, "unload", name)


def test_cli_load_picks_up_a_newly_published_version(triton: TritonHandle) -> None:
    folder = write_add_model(triton.repo, "cli_newer", {1: 1.0})
    try:
        code, out = run(triton, "load", "cli_newer")
        assert code == 0 and "loaded cli_newer (version 1)" in out, out
        write_add_model(triton.repo, "cli_newer", {1: 1.0, 2: 2.0})

        code, out = run(triton, "load", "cli_newer")
        assert code == 0 and "loaded cli_newer (version 2)" in out, out
        assert http_answer(triton, "cli_newer") == 2.0
        listed = rows(triton, "cli_newer")
        assert listed[2]["state"] == "READY" and listed[1]["state"] != "READY"
        code, out = run(triton, "load", "cli_newer")
        assert code == 0 and "cli_newer already loaded (version 2)" in out, out

        # the same within a memory budget (the controller's path)
        write_add_model(triton.repo, "cli_newer", {3: 3.0})
        code, out = run(triton, "--max-models", "100", "load", "cli_newer")
        assert code == 0 and "loaded cli_newer (version 3)" in out, out
        assert http_answer(triton, "cli_newer") == 3.0
        code, out = run(triton, "--max-models", "100", "load", "cli_newer")
        assert code == 0 and "already loaded (version 3)" in out, out
    finally:
        run(triton, "unload", "cli_newer")
        assert folder.is_dir()


def test_cli_budget_of_a_server_whose_repository_is_elsewhere_keeps_its_endpoints(
    triton: TritonHandle, tmp_path: Path
) -> None:
    """With no copy of the server's repository here, its endpoints and the models they
    call are known from Triton's own configs: never eviction candidates."""
    write_add_model(triton.repo, "cli_far_target", {1: 1.0})
    code, out = run(triton, "endpoint", "switch", "cli_far_front", "--to", "cli_far_target:1")
    assert code == 0, out
    here = tmp_path / "elsewhere"
    here.mkdir()
    try:
        argv = ["--repo", str(here), "--url", triton.http_url]
        argv += ["--metrics-url", triton.metrics_url, "--max-models", "1"]
        result = CliRunner().invoke(main, [*argv, "evict", "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
        plan = json.loads(result.stdout)
        ranked = {r["model"] for r in plan["ranking"]} | {v["model"] for v in plan["victims"]}
        assert not ranked & {"cli_far_target", "cli_far_front"}, plan
        protected = {p["model"]: p["reason"] for p in plan["protected"]}
        assert "endpoint cli_far_front" in protected["cli_far_target"], protected
        assert http_answer(triton, "cli_far_front") == 1.0
    finally:
        run(triton, "endpoint", "delete", "cli_far_front")
        run(triton, "unload", "cli_far_target")


def test_cli_load_of_a_model_only_the_server_holds_picks_up_its_new_version(
    triton: TritonHandle, tmp_path: Path
) -> None:
    """`--url` of a server whose repository is elsewhere (no copy here): Triton is asked
    to load again, so a version published there since is served."""
    folder = write_add_model(triton.repo, "cli_remote", {1: 1.0})
    here = tmp_path / "elsewhere"
    here.mkdir()

    def remote(*args: str) -> tuple[int, str]:
        argv = ["--repo", str(here), "--url", triton.http_url, *args]
        result = CliRunner().invoke(main, argv)
        return result.exit_code, result.output

    try:
        code, out = remote("load", "cli_remote")
        assert code == 0 and "version 1" in out, out
        write_add_model(triton.repo, "cli_remote", {1: 1.0, 2: 2.0})
        code, out = remote("load", "cli_remote")
        assert code == 0 and "version 2" in out, out
        assert http_answer(triton, "cli_remote") == 2.0
        write_add_model(triton.repo, "cli_remote", {3: 3.0})
        # within a budget the controller reads memory from the metrics endpoint: a
        # server elsewhere names it (its port is not the default 8002 here)
        code, out = remote("--max-models", "100", "load", "cli_remote")
        assert code != 0 and "metrics" in out, out
        code, out = remote(
            "--metrics-url", triton.metrics_url, "--max-models", "100", "load", "cli_remote"
        )
        assert code == 0 and "version 3" in out, out
        assert http_answer(triton, "cli_remote") == 3.0
    finally:
        run(triton, "unload", "cli_remote")
        assert folder.is_dir()


SLOW_MODEL_PY = textwrap.dedent(
    """
    import time

    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            time.sleep(6)

        def execute(self, requests):
            return [pb_utils.InferenceResponse(output_tensors=[]) for _ in requests]
    """
)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_cli_load_gives_up_waiting_at_the_timeout_while_triton_loads_on(
    triton: TritonHandle, scheme: str
) -> None:
    name = f"cli_slow_{scheme}"
    write_python_model(triton.repo, name, SLOW_MODEL_PY)
    url = triton.http_url if scheme == "http" else triton.grpc_url
    try:
        started = time.monotonic()
        code, out = run(triton, "load", name, "--wait-timeout", "1.5", url=url)
        took = time.monotonic() - started
        assert code != 0, out
        assert f"'{name}' is not READY after 1.5 s" in out and "still loading" in out, out
        assert took < 4.0, f"load returned after {took:.1f} s"
        # Triton goes on loading it
        deadline = time.monotonic() + 30
        while rows(triton, name).get(1, {}).get("state") != "READY":
            assert time.monotonic() < deadline, rows(triton, name)
            time.sleep(0.2)
    finally:
        run(triton, "unload", name)


def test_cli_evict_name_dry_run_says_what_evicting_it_would_free(triton: TritonHandle) -> None:
    write_python_model(triton.repo, "cli_spare")
    try:
        code, out = run(triton, "load", "cli_spare")
        assert code == 0, out
        code, out = run(triton, "evict", "cli_spare", "--dry-run")
        assert code == 0 and out.startswith("evicting cli_spare would free "), out
        assert "to load" not in out and "cli_spare:1" in out
        code, out = run(triton, "evict", "cli_spare", "--dry-run", "--json")
        assert code == 0 and json.loads(out)["would_evict"][0]["version"] == 1, out

        code, out = run(triton, "pin", "cli_spare")
        assert code == 0, out
        code, out = run(triton, "evict", "cli_spare", "--dry-run")
        assert code == 0 and "cli_spare is protected (pinned (tritonctl pin))" in out, out
        assert rows(triton, "cli_spare")[1]["state"] == "READY"

        code, out = run(triton, "evict", "--dry-run")  # the plan, as before
        assert code == 0 and "never evicted" in out, out
    finally:
        run(triton, "unpin", "cli_spare")
        run(triton, "unload", "cli_spare")


def test_cli_ls_names_its_counts_and_shows_the_last_inference_in_utc(
    triton: TritonHandle,
) -> None:
    write_python_model(triton.repo, "cli_counted")
    try:
        code, out = run(triton, "load", "cli_counted")
        assert code == 0, out
        http_answer(triton, "cli_counted")
        code, out = run(triton, "ls")
        assert code == 0, out
        for header in ("last inference", "batch items", "requests ok", "requests failed"):
            assert header in out, out
        (line,) = [row for row in out.splitlines() if "cli_counted" in row]
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", line), line
        code, out = run(triton, "ls", "--help")
        assert code == 0 and "inference_count" in out and "UTC" in out, out
    finally:
        run(triton, "unload", "cli_counted")


def test_cli_load_of_another_version_at_max_models_evicts_nothing(triton: TritonHandle) -> None:
    write_add_model(triton.repo, "cli_swap", {1: 1.0, 2: 2.0})
    try:
        code, out = run(triton, "load", "cli_swap")
        assert code == 0, out
        code, out = run(triton, "evict", "--dry-run", "--json")
        assert code == 0, out
        loaded = json.loads(out)["loaded"]
        # every slot taken: version 1 replaces version 2, which frees the slot it needs
        code, out = run(
            triton, "--max-models", str(loaded), "load", "cli_swap", "--version", "1", "--json"
        )
        assert code == 0, out
        assert json.loads(out)["evicted"] == [], out
        assert http_answer(triton, "cli_swap") == 1.0
        # back to the policy's version 2, which takes version 1 down: the plan for that
        # load, too, knows it frees the slot it needs
        full = ("--max-models", str(loaded))
        code, out = run(triton, *full, "evict", "--dry-run", "--for", "cli_swap", "--json")
        assert code == 0, out
        plan = json.loads(out)
        assert (plan["victims"], plan["need_slots"]) == ([], 0), out
        code, out = run(triton, *full, "load", "cli_swap", "--json")
        assert code == 0 and json.loads(out)["evicted"] == [], out
        assert http_answer(triton, "cli_swap") == 2.0
    finally:
        run(triton, "unload", "cli_swap")


def test_cli_load_after_load_of_a_version_serves_the_repository_policy_again(
    triton: TritonHandle,
) -> None:
    """`load --version 1` loads with a `specific [1]` override; a plain `load` then must
    serve config.pbtxt's policy (the latest, 2), though no file changed."""
    write_add_model(triton.repo, "cli_repinned", {1: 1.0, 2: 2.0})
    try:
        code, out = run(triton, "load", "cli_repinned", "--version", "1")
        assert code == 0, out
        assert http_answer(triton, "cli_repinned") == 1.0

        code, out = run(triton, "load", "cli_repinned")
        assert code == 0 and "loaded cli_repinned (version 2)" in out, out
        listed = rows(triton, "cli_repinned")
        assert listed[2]["state"] == "READY" and listed[1]["state"] != "READY"
        assert http_answer(triton, "cli_repinned") == 2.0
        code, out = run(triton, "load", "cli_repinned")
        assert code == 0 and "already loaded (version 2)" in out, out

        # the same within a memory budget (the controller's path), and over gRPC
        code, out = run(triton, "load", "cli_repinned", "--version", "1", url=triton.grpc_url)
        assert code == 0, out
        code, out = run(triton, "--max-models", "100", "load", "cli_repinned", url=triton.grpc_url)
        assert code == 0 and "loaded cli_repinned (version 2)" in out, out
        assert http_answer(triton, "cli_repinned") == 2.0
    finally:
        run(triton, "unload", "cli_repinned")
