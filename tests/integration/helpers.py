"""Helpers for integration tests: tiny Python-backend models written into a repository."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from manager.modelconfig import TensorSpec, build_config, write_config

if TYPE_CHECKING:
    from tests.integration.conftest import TritonHandle

# Doubles INPUT0 (FP32, any shape) into OUTPUT0.
DOUBLE_MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)

# Adds a constant to INPUT0; the constant is formatted in by write_add_model.
ADD_MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    ADD = {add!r}


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", (x + ADD).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)

# Fails in initialize with a recognisable message.
FAILING_MODEL_PY = textwrap.dedent(
    """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("tritonctl-test: initialize refused on purpose")

        def execute(self, requests):
            return []
    """
)

INPUT = TensorSpec("INPUT0", "FP32", (-1,))
OUTPUT = TensorSpec("OUTPUT0", "FP32", (-1,))


def write_python_model(
    repo: Path,
    name: str,
    model_py: str = DOUBLE_MODEL_PY,
    *,
    versions: Sequence[int] = (1,),
    inputs: Sequence[TensorSpec] = (INPUT,),
    outputs: Sequence[TensorSpec] = (OUTPUT,),
    max_batch_size: int = 0,
) -> Path:
    """Write ``<repo>/<name>/config.pbtxt`` and ``<N>/model.py`` for each version.

    The config is built with :func:`manager.modelconfig.build_config` (python backend,
    CPU instance). Returns the model folder.
    """
    folder = Path(repo) / name
    folder.mkdir(parents=True, exist_ok=True)
    config = build_config(
        name,
        list(inputs),
        list(outputs),
        max_batch_size=max_batch_size,
        backend="python",
        kind="cpu",
    )
    write_config(folder / "config.pbtxt", config)
    for version in versions:
        vdir = folder / str(version)
        vdir.mkdir(exist_ok=True)
        (vdir / "model.py").write_text(model_py)
    return folder


def write_add_model(repo: Path, name: str, versions: dict[int, float]) -> Path:
    """A model whose version N adds ``versions[N]`` to its input (to tell versions apart)."""
    folder = write_python_model(repo, name, versions=())
    for version, add in versions.items():
        vdir = folder / str(version)
        vdir.mkdir(exist_ok=True)
        (vdir / "model.py").write_text(ADD_MODEL_PY.format(add=float(add)))
    return folder


def http_answer(triton: TritonHandle, model: str, elements: int = 2) -> float:
    """What ``model`` answers over HTTP for ``elements`` zeros in ``INPUT0`` (the first value
    of ``OUTPUT0``: for the adder models, the version that answered)."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("INPUT0", [elements], "FP32")
        inp.set_data_from_numpy(np.zeros(elements, dtype=np.float32))
        out = client.infer(model, [inp]).as_numpy("OUTPUT0")
        assert out is not None
        return float(out.flat[0])
    finally:
        client.close()
