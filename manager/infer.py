"""Plain inference calls through tritonclient, for golden checks and smoke tests."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Mapping
from typing import Any

import numpy as np

from manager.errors import ManagerError, TritonUnreachableError
from manager.golden import as_utf8
from manager.modelconfig import numpy_to_triton_dtype, protocol_dtype
from manager.triton import CONNECT_TIMEOUT_S, grpc_channel_args, is_timeout, one_line, parse_url


class InferenceError(ManagerError):
    """An inference request failed; the message carries Triton's reason."""


def infer(
    url: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: int | None = None,
    outputs: list[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    stream: bool = False,
    sequence_id: int = 0,
) -> dict[str, np.ndarray]:
    """Run one request on ``model`` (``version`` pinned if given); return outputs by name.

    ``stream``: the model is decoupled (answers with a stream of responses); the request
    goes over a gRPC stream and each output is the concatenation, along the first axis,
    of that output in every response, in order. ``sequence_id``: the request is a whole
    sequence of its own (that correlation id, start and end), as a stateful model takes
    only requests of a sequence."""
    endpoint = parse_url(url)
    protocol, address = endpoint.protocol, endpoint.address
    if stream and protocol != "grpc":
        raise InferenceError(
            f"{model!r} answers with a stream of responses (decoupled): calling it needs "
            f"a gRPC URL (grpc://HOST:PORT), not {url}"
        )
    if protocol == "grpc":
        import tritonclient.grpc as client_mod
    else:
        import tritonclient.http as client_mod
    from tritonclient.utils import InferenceServerException

    tensors = []
    for name, array in inputs.items():
        if array.dtype.kind == "U":  # text (a golden file's str array): sent as UTF-8 BYTES
            array = as_utf8(array)
        dtype = protocol_dtype(numpy_to_triton_dtype(array.dtype))
        t = client_mod.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        tensors.append(t)
    requested = [client_mod.InferRequestedOutput(n) for n in outputs] if outputs else None
    if protocol == "grpc":
        # a connection gets longer than the request: a server that takes the connection
        # and never answers fails the request by its deadline, as over HTTP
        client: Any = client_mod.InferenceServerClient(
            address, channel_args=grpc_channel_args(timeout + CONNECT_TIMEOUT_S)
        )
    else:
        client = client_mod.InferenceServerClient(address, network_timeout=timeout)
    # what every kind of call takes besides the model and its inputs
    options: dict[str, Any] = {
        "model_version": str(version or ""),
        "outputs": requested,
        "parameters": dict(parameters) if parameters else None,
    }
    if sequence_id:
        options |= {"sequence_id": sequence_id, "sequence_start": True, "sequence_end": True}
    try:
        if stream:
            return _stream(client, endpoint.url, model, tensors, options, timeout)
        if protocol == "grpc":
            result = client.infer(model, tensors, client_timeout=timeout, **options)
            response = result.get_response(as_json=True)
        else:
            result = client.infer(model, tensors, **options)
            response = result.get_response()
    except (InferenceServerException, OSError) as exc:
        raise _error(exc, url=endpoint.url, model=model, timeout=timeout) from exc
    finally:
        with contextlib.suppress(Exception):
            client.close()
    names = [o["name"] for o in response.get("outputs", [])]
    return {n: result.as_numpy(n) for n in names}


def _stream(
    client: Any,
    url: str,
    model: str,
    tensors: list[Any],
    options: dict[str, Any],
    timeout: float,
) -> dict[str, np.ndarray]:
    """One request over a gRPC stream; the outputs of its responses, concatenated."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(model, tensors, enable_empty_final_response=True, **options)
        parts: dict[str, list[np.ndarray]] = {}
        while True:
            try:
                result, error = answers.get(timeout=timeout)
            except queue.Empty:
                raise InferenceError(
                    f"inference on {model!r} failed: its stream sent no final response "
                    f"within {timeout:g} s"
                ) from None
            if error is not None:
                raise _error(error, url=url, model=model, timeout=timeout)
            response = result.get_response()
            for output in response.outputs:
                parts.setdefault(output.name, []).append(result.as_numpy(output.name))
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
    finally:
        with contextlib.suppress(Exception):
            client.stop_stream(cancel_requests=True)
    return {
        name: np.concatenate([np.atleast_1d(a) for a in arrays], axis=0)
        for name, arrays in parts.items()
    }


def _error(exc: BaseException, *, url: str, model: str, timeout: float) -> ManagerError:
    """The error of an inference request that raised ``exc``, the same over HTTP and gRPC:
    TritonUnreachableError when no server answers at ``url``, else InferenceError with
    Triton's message, or saying that no answer came in ``timeout`` seconds."""
    from tritonclient.utils import InferenceServerException

    failed = f"inference on {model!r} failed"
    late = f"{failed}: no answer from {url} within {timeout:g} s"
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = one_line(str(exc.message() or exc))  # a Python model's traceback too
        if status == "StatusCode.UNAVAILABLE":
            return TritonUnreachableError(f"no Triton server answers at {url} ({message})")
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return InferenceError(late)
        return InferenceError(f"{failed}: {message}")
    if is_timeout(exc):
        return InferenceError(late)
    return TritonUnreachableError(f"no Triton server answers at {url} ({exc})")
