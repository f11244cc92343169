"""The REST control plane against the session's real tritonserver: publish, load, list,
infer, unload, an endpoint switch, /metrics and error codes, all over HTTP; and
``tritonctl api serve`` as a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from manager.api import create_app
from manager.server import free_port
from tests.integration.conftest import TritonHandle
from tests.integration.helpers import FAILING_MODEL_PY, write_python_model
from tests.modelfactory import write_python_model as add_one_folder
from tests.modelfactory import write_source_model

pytestmark = pytest.mark.integration

TOKEN = "integration-token"


def add_version_folder(root: Path) -> Path:
    return write_source_model(root / "api_adder_src", "api_adder")


@pytest.fixture(scope="module")
def api(triton: TritonHandle) -> Iterator[TestClient]:
    """The control plane of the session's server, in this process, over gRPC control."""
    with TestClient(create_app(triton.repo, triton.grpc_url)) as client:
        yield client


def infer(triton: TritonHandle, model: str, x: np.ndarray, tensors: tuple[str, str]) -> np.ndarray:
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput(tensors[0], list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return np.asarray(client.infer(model, [inp]).as_numpy(tensors[1]))
    finally:
        client.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def ready_sample(text: str, model: str, version: str) -> float:
    key = ("tritonctl_model_ready", (("model", model), ("version", version)))
    return metric_samples(text)[key]


def test_api_publishes_loads_lists_serves_and_unloads_a_model(
    api: TestClient, triton: TritonHandle, tmp_path: Path
) -> None:
    source = add_one_folder(tmp_path / "api_add_one")
    published = api.post(
        "/v1/models/api_add_one/versions",
        json={"artifact": str(source), "labels": {"origin": "api-test"}},
    )
    assert published.status_code == 201, published.text
    assert published.json()["version"] == 1
    assert (triton.repo / "api_add_one" / "1" / "model.py").is_file()

    loaded = api.post("/v1/models/api_add_one/load", json={})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["versions"] == [1] and loaded.json()["cache_hit"] is False

    listed = api.get("/v1/models")
    assert listed.status_code == 200, listed.text
    rows = {(r["name"], r["version"]): r for r in listed.json()["models"]}
    assert rows[("api_add_one", 1)]["state"] == "READY"
    assert listed.json()["url"] == triton.grpc_url

    y = infer(triton, "api_add_one", np.array([1.0, 2.0, 3.0], np.float32), ("X", "Y"))
    np.testing.assert_allclose(y, [2.0, 3.0, 4.0])

    text = api.get("/metrics").text
    assert ready_sample(text, "api_add_one", "1") == 1
    parsed = metric_samples(text)
    assert parsed[("tritonctl_triton_up", ())] == 1
    used = [v for (name, _), v in parsed.items() if name == "tritonctl_memory_used_bytes"]
    assert used and used[0] > 0
    assert parsed[("tritonctl_memory_total_bytes", ())] >= used[0]
    requests = (
        "tritonctl_api_requests_total",
        (("method", "POST"), ("route", "/v1/models/{name}/load"), ("status", "200")),
    )
    assert parsed[requests] >= 1

    unloaded = api.post("/v1/models/api_add_one/unload", json={})
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["was_loaded"] is True
    assert ready_sample(api.get("/metrics").text, "api_add_one", "1") == 0
    versions = api.get("/v1/models/api_add_one/versions").json()["versions"]
    assert [(v["version"], v["labels"]) for v in versions] == [(1, {"origin": "api-test"})]


def test_api_switches_an_endpoint_that_clients_call_by_its_name(
    api: TestClient, triton: TritonHandle, tmp_path: Path
) -> None:
    source = add_version_folder(tmp_path)
    for expected in (1, 2):
        response = api.post("/v1/models/api_adder/versions", json={"artifact": str(source)})
        assert response.status_code == 201, response.text
        assert response.json()["version"] == expected
    x = np.array([10.0, 20.0], np.float32)
    tensors = ("INPUT0", "OUTPUT0")
    try:
        first = api.post("/v1/endpoints/api_ep/switch", json={"to": "api_adder:1"})
        assert first.status_code == 200, first.text
        np.testing.assert_allclose(infer(triton, "api_ep", x, tensors), x + 1)

        second = api.post("/v1/endpoints/api_ep/switch", json={"to": "api_adder:2"})
        assert second.status_code == 200, second.text
        assert second.json()["targets"] == [{"model": "api_adder", "version": 2, "weight": 100.0}]
        np.testing.assert_allclose(infer(triton, "api_ep", x, tensors), x + 2)

        shown = api.get("/v1/endpoints/api_ep").json()
        assert shown["mode"] == "pinned" and shown["generation"] == 2
        parsed = metric_samples(api.get("/metrics").text)
        weight = (
            "tritonctl_endpoint_target_weight",
            (("endpoint", "api_ep"), ("model", "api_adder"), ("version", "2")),
        )
        assert parsed[weight] == 100
        assert ready_sample(api.get("/metrics").text, "api_ep", "1") == 1

        # unloaded behind the control plane's back (as after a restart): restore serves it
        refused = api.post("/v1/models/api_ep/unload", json={})
        assert refused.status_code == 409 and "endpoint delete api_ep" in refused.json()["error"]
        api.post("/v1/models/api_ep/unload", json={"force": True})
        assert ready_sample(api.get("/metrics").text, "api_ep", "1") == 0
        restored = api.post("/v1/endpoints/api_ep/restore", json={})
        assert restored.status_code == 200, restored.text
        np.testing.assert_allclose(infer(triton, "api_ep", x, tensors), x + 2)

        # the model the endpoint routes to is not unloaded from under it
        refused = api.post("/v1/models/api_adder/unload", json={})
        assert refused.status_code == 409, refused.text
        assert "api_ep (api_adder:2)" in refused.json()["error"]
        np.testing.assert_allclose(infer(triton, "api_ep", x, tensors), x + 2)

        # the version switched away from still serves; it can go on its own
        one = api.post("/v1/models/api_adder/unload", json={"version": 1})
        assert one.status_code == 200, one.text
        assert one.json()["was_loaded"] is True and one.json()["version"] == 1
        routed = api.post("/v1/models/api_adder/unload", json={"version": 2})
        assert routed.status_code == 409 and "api_ep" in routed.json()["error"], routed.text
        both = api.post("/v1/models/api_adder/unload", json={"version": 1, "force": True})
        assert both.status_code == 400 and "force" in both.json()["error"], both.text
        np.testing.assert_allclose(infer(triton, "api_ep", x, tensors), x + 2)

        # a model taking batches would fail every client's request: only with "force"
        write_python_model(triton.repo, "api_batched", max_batch_size=4)
        body = {"to": "api_batched:1"}
        refused = api.post("/v1/endpoints/api_ep/switch", json=body)
        assert refused.status_code == 400, refused.text
        assert "max_batch_size" in refused.json()["error"]
        np.testing.assert_allclose(infer(triton, "api_ep", x, tensors), x + 2)
        forced = api.post("/v1/endpoints/api_ep/switch", json={**body, "force": True})
        assert forced.status_code == 200, forced.text
        assert forced.json()["targets"][0]["model"] == "api_batched"
    finally:
        api.delete("/v1/endpoints/api_ep")
        api.post("/v1/models/api_adder/unload", json={})
        api.post("/v1/models/api_batched/unload", json={})
    assert api.get("/v1/endpoints/api_ep").status_code == 404


def test_api_answers_errors_with_their_status_and_a_json_message(
    api: TestClient, triton: TritonHandle
) -> None:
    unknown = api.post("/v1/models/api_no_such_model/load", json={})
    assert unknown.status_code == 404, unknown.text
    assert "api_no_such_model" in unknown.json()["error"]
    assert api.get("/v1/models/api_no_such_model").status_code == 404
    assert api.get("/v1/endpoints/api_no_such_endpoint").status_code == 404
    assert api.get("/v1/rollouts/api_no_such_endpoint").status_code == 404

    bad = api.post("/v1/models/api_no_such_model/load", json={"version": "latest"})
    assert bad.status_code == 400 and "version" in bad.json()["error"]

    write_python_model(triton.repo, "api_broken", FAILING_MODEL_PY)
    broken = api.post("/v1/models/api_broken/load", json={})
    assert broken.status_code == 502, broken.text
    assert "initialize refused on purpose" in broken.json()["error"]


def test_api_readiness_follows_triton(api: TestClient, triton: TritonHandle) -> None:
    ready = api.get("/v1/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["triton"]["live"] is True

    nobody = free_port()
    with TestClient(create_app(triton.repo, f"http://127.0.0.1:{nobody}")) as other:
        down = other.get("/v1/health/ready")
        assert down.status_code == 503 and down.json()["triton"]["live"] is False
        assert other.get("/v1/models").status_code == 503
        text = other.get("/metrics").text
        assert metric_samples(text)[("tritonctl_triton_up", ())] == 0


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def test_api_serve_listens_on_its_port_and_wants_the_token(triton: TritonHandle) -> None:
    port = free_port()
    env = {**os.environ, "TRITONCTL_API_TOKEN": TOKEN}
    command = [sys.executable, "-m", "manager.cli", "--repo", str(triton.repo)]
    command += ["--url", triton.http_url, "api", "serve", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                status, _ = _get(f"{base}/v1/health/live")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the control plane did not start"
            time.sleep(0.2)
        assert _get(f"{base}/v1/health/ready")[0] == 200
        assert _get(f"{base}/v1/models")[0] == 401
        status, body = _get(f"{base}/v1/models", TOKEN)
        assert status == 200, body
        status, text = _get(f"{base}/metrics")
        assert status == 200 and "tritonctl_triton_up 1.0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    # uvicorn shuts down cleanly, then hands the signal on: the CLI exits 128 + SIGTERM
    # as every tritonctl command does on SIGTERM
    assert proc.returncode in (0, 128 + signal.SIGTERM), output
    assert "Application shutdown complete" in output
