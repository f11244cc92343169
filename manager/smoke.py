"""Smoke tests of a staged model before it is published.

The staged model is loaded into a throwaway embedded tritonserver (or a given staging
server) by sending its config and files with the load request, under a temporary name,
then the golden requests are run against it. Nothing of the live repository is touched.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from manager.errors import LoadError, ManagerError, TritonUnreachableError
from manager.golden import (
    GoldenCase,
    check,
    check_inputs_match_config,
    check_outputs_match_config,
    synthetic_case,
)
from manager.infer import infer
from manager.modelconfig import is_decoupled
from manager.repository import CONFIG_FILE
from manager.timeouts import Timeouts
from manager.triton import (
    CALL_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    TritonControl,
    answered_by_triton,
    grpc_channel_args,
    parse_url,
)

log = logging.getLogger(__name__)


def model_files(staged_model: Path) -> dict[str, bytes]:
    """The files of a staged model folder as Triton's load API takes them (``file:<path>``)."""
    files: dict[str, bytes] = {}
    for path in sorted(staged_model.rglob("*")):
        if path.is_file() and path.name != CONFIG_FILE:
            files["file:" + path.relative_to(staged_model).as_posix()] = path.read_bytes()
    return files


@contextmanager
def throwaway_server(*, use_grpc: bool = False) -> Iterator[tuple[str, Path]]:
    """An embedded tritonserver on free ports over an empty repository of its own; yields
    its HTTP URL (its gRPC URL with ``use_grpc``) and that repository, removed after."""
    from manager.server import EmbeddedServer, free_ports

    root = Path(tempfile.mkdtemp(prefix="tritonctl-smoke-"))
    server = EmbeddedServer(root)
    try:
        http, grpc, metrics = free_ports(3)
        # tied: a publish killed mid-test (a cancelled CI job) takes its server with it
        info = server.start(http, grpc, metrics, wait_timeout=120, tied=True)
        yield (info.grpc_url if use_grpc else info.http_url), root
    finally:
        try:
            server.stop(timeout=30)
        finally:
            shutil.rmtree(root, ignore_errors=True)


LOAD_TIMEOUT_S = 600.0
"""How long a smoke test waits for Triton to answer its load, over HTTP and gRPC alike
(unless given another load timeout)."""
UNLOAD_TIMEOUT_S = CALL_TIMEOUT_S
"""How long it waits for Triton to answer the unload after (unless given a call timeout)."""


@dataclass(frozen=True)
class _Limits:
    load: float
    call: float
    connect: float


def _limits(timeouts: Timeouts | None) -> _Limits:
    """The seconds of a smoke test: ``timeouts``' where set, else this module's."""
    given = timeouts or Timeouts()
    return _Limits(
        load=given.load if given.load is not None else LOAD_TIMEOUT_S,
        call=given.call if given.call is not None else UNLOAD_TIMEOUT_S,
        connect=given.connect if given.connect is not None else CONNECT_TIMEOUT_S,
    )


def _client(url: str, limits: _Limits) -> object:
    endpoint = parse_url(url)
    if endpoint.protocol == "grpc":
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(
            endpoint.address, channel_args=grpc_channel_args(limits.connect)
        )
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        endpoint.address, connection_timeout=limits.load, network_timeout=limits.load
    )


def _timeout_kw(url: str, limits: _Limits) -> dict[str, float]:
    """The per-call timeout of a gRPC client's load (an HTTP client has its own, the
    load timeout)."""
    return {"client_timeout": limits.load} if parse_url(url).protocol == "grpc" else {}


def smoke_test(
    staged_model: Path,
    config: mc.ModelConfig,
    version: int,
    cases: list[GoldenCase],
    *,
    url: str | None = None,
    timeouts: Timeouts | None = None,
) -> int:
    """Load the staged model and check ``cases`` against it; return the cases checked.

    ``url``: a staging server; None starts a throwaway embedded server. ``timeouts``: how
    long the load, the unload after and connecting may take (those it leaves unset: 600,
    30 and 5 s). Raises ``GoldenMismatch`` naming the tensor, or ``LoadError`` with
    Triton's reason.
    """
    check_inputs_match_config(config, cases)  # before any server is asked
    if url is None:
        # a decoupled model answers over a gRPC stream only
        with throwaway_server(use_grpc=is_decoupled(config)) as (local_url, local_repo):
            return _run(
                local_url,
                staged_model,
                config,
                version,
                cases,
                local_repo=local_repo,
                limits=_limits(timeouts),
            )
    return _run(url, staged_model, config, version, cases, limits=_limits(timeouts))


def _run(
    url: str,
    staged_model: Path,
    config: mc.ModelConfig,
    version: int,
    cases: list[GoldenCase],
    *,
    local_repo: Path | None = None,
    limits: _Limits,
) -> int:
    """``local_repo``: the repository of a server on this machine that is ours alone:
    the staged version is linked into it, rather than sent with the load request (which
    Triton would copy into a temporary folder of its own, left behind if the server is
    stopped while it loads)."""
    from tritonclient.utils import InferenceServerException

    temp_name = f"{config.name}__smoke_{uuid.uuid4().hex[:8]}"
    cfg = mc.ModelConfig()
    cfg.CopyFrom(config)
    cfg.name = temp_name
    cfg.version_policy.specific.versions[:] = [version]
    config_json = json_format.MessageToJson(cfg, preserving_proto_field_name=True)
    files: dict[str, bytes] | None = None
    if local_repo is not None:
        (local_repo / temp_name).mkdir()
        for entry in staged_model.iterdir():
            if entry.name != CONFIG_FILE:  # the config goes with the load request
                (local_repo / temp_name / entry.name).symlink_to(entry.absolute())
    else:
        files = model_files(staged_model)
    client = _client(url, limits)
    answered = True  # whether the server answered the load, so there may be a model to unload
    try:
        if not _answers_live(url, limits):
            # e.g. a staging URL of another service: its answer to a load would be an
            # error page, not Triton's reason
            answered = False
            raise TritonUnreachableError(
                f"smoke test: no Triton server answers at {url} (its /v2/health/live is not live)"
            )
        log.info("smoke test: loading %s as %s on %s", config.name, temp_name, url)
        late = f"smoke test: {config.name!r} did not load: no answer from {url} within "
        late += f"{limits.load:g} s"
        try:
            client.load_model(  # type: ignore[attr-defined]
                temp_name, config=config_json, files=files, **_timeout_kw(url, limits)
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            message = str(exc.message() or exc)
            if status == "StatusCode.UNAVAILABLE" and not answered_by_triton(message):
                # gRPC: no server there
                answered = False
                raise TritonUnreachableError(
                    f"smoke test: no Triton server answers at {url}: {message}"
                ) from exc
            if status == "StatusCode.DEADLINE_EXCEEDED":
                raise LoadError(late) from exc
            raise LoadError(f"smoke test: {config.name!r} failed to load: {message}") from exc
        except OSError as exc:
            if isinstance(exc, TimeoutError):  # the server took the request
                raise LoadError(late) from exc
            answered = False
            raise TritonUnreachableError(
                f"smoke test: no Triton server answers at {url}: {exc}"
            ) from exc

        stream = is_decoupled(config)

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = dict(infer(url, temp_name, inputs, version=version, stream=stream))
            if not stream:  # a stream's outputs are its responses' joined together
                check_outputs_match_config(config, outputs, model=config.name)
            return outputs

        checked = check(cases or [synthetic_case(config)], run, model=config.name)
        log.info("smoke test: %d golden case(s) passed for %s", checked, config.name)
        return checked
    finally:
        try:
            if answered:
                _unload(url, temp_name, limits)
        except ManagerError as exc:
            log.warning("smoke test: could not unload %s: %s", temp_name, exc)
        client.close()  # type: ignore[attr-defined]


def _unload(url: str, name: str, limits: _Limits) -> None:
    """Unload the temporary model ``name``: Triton answers an unload as soon as it has
    started it, so a server that gives no answer in the call timeout hangs."""
    with TritonControl(
        url,
        timeout=max(limits.load, limits.call),
        call_timeout=limits.call,
        connect_timeout=limits.connect,
    ) as control:
        control.unload_model(name)


def _answers_live(url: str, limits: _Limits) -> bool:
    """Whether a Triton server at ``url`` answers its liveness request with live within
    the connect timeout (a server that hangs does not)."""
    with TritonControl(url, connect_timeout=limits.connect) as control:
        return control.is_live()
