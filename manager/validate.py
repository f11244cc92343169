"""Consistency checks of a model repository (what ``tritonctl validate`` reports)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from manager.errors import ManagerError
from manager.filecopy import sha256_of
from manager.modelconfig import read_config
from manager.names import MAX_VERSION, validate_model_name
from manager.repository import (
    CONFIG_FILE,
    PROVENANCE_FILE,
    Repository,
    is_version_name,
    staging_claimed,
)
from manager.units import format_size
from manager.versionpolicy import kept_models

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    model: str
    message: str
    severity: str = "error"  # "error" makes the repository inconsistent; "warning" does not

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "severity": self.severity, "message": self.message}


def _version_payload(
    config_backend: str, config_platform: str, params: dict[str, str]
) -> list[str]:
    """Files a version folder must hold to be servable under this config."""
    if config_platform == "ensemble":
        return []
    if config_platform == "onnxruntime_onnx" or config_backend == "onnxruntime":
        return ["model.onnx"]
    if config_platform == "pytorch_libtorch" or config_backend == "pytorch":
        return ["model.pt"]
    if config_backend == "python":
        files = ["model.py"]
        if params.get("tritonctl.artifact"):
            files.append(params["tritonctl.artifact"])
        return files
    return []


def validate_repository(
    repo: Repository, name: str | None = None, *, check_hashes: bool = True
) -> list[Problem]:
    """Every problem found in ``repo`` (or in model ``name`` only); empty when consistent."""
    repo.require()
    names = [name] if name is not None else repo.models()
    problems: list[Problem] = []
    for model in names:
        problems.extend(_validate_model(repo, model, check_hashes=check_hashes))
    problems.extend(_staging_problems(repo, name))
    problems.extend(_endpoint_problems(repo, name))
    return problems


def _endpoint_problems(repo: Repository, name: str | None) -> list[Problem]:
    """Endpoints routing to a version the repository does not hold (the endpoint could not
    be served again after a restart), and version policies an endpoint change left in a
    model's config.pbtxt with no endpoint routing to the model (one stopped half-way)."""
    from manager.endpoints import endpoint_states

    try:
        states = endpoint_states(repo)
    except ManagerError as exc:
        return [Problem(name or "endpoints", str(exc))]
    problems = []
    for state in states:
        for t in state.targets:
            held = repo.has_model(t.model) and t.version in repo.versions(t.model)
            if name not in (None, state.name, t.model) or held:
                continue
            problems.append(
                Problem(
                    state.name,
                    f"endpoint routes to {t.label()}, which {repo.path} does not hold: "
                    f"it cannot be served again (point it elsewhere: tritonctl endpoint "
                    f"switch|split {state.name} ...)",
                )
            )
    routed = {t.model for state in states for t in state.targets}
    for model in sorted(kept_models(repo.path) - routed):
        if name not in (None, model) or not repo.has_model(model):
            continue
        with repo.try_lock(model) as free:
            if not free:
                continue  # an endpoint change serving it holds the lock until it is done
        problems.append(
            Problem(
                model,
                "config.pbtxt keeps the versions an endpoint change set, and no endpoint "
                "routes to the model (a change stopped half-way): `tritonctl endpoint "
                "restore` puts the model's own version policy back",
                "warning",
            )
        )
    return problems


def _staging_problems(repo: Repository, name: str | None) -> list[Problem]:
    """A warning per staging folder: what a killed publish left (removed by the next
    publish of any model), or a publish in progress."""
    problems = []
    for model, path in repo.staging_leftovers():
        if name is not None and model != name:
            continue
        size = format_size(_tree_bytes(path))
        try:
            with repo.try_lock(model) as free:
                running = not free
        except ManagerError:
            running = False
        running = running or staging_claimed(path)
        what = (
            "a publish in progress"
            if running
            else "left by an interrupted publish; the next publish removes it"
        )
        problems.append(Problem(model, f"staging folder {path} ({size}): {what}", "warning"))
    return problems


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _validate_model(repo: Repository, model: str, *, check_hashes: bool) -> list[Problem]:
    problems: list[Problem] = []
    try:
        validate_model_name(model)
    except ManagerError as exc:
        return [Problem(model, str(exc))]
    mdir = repo.path / model
    if not mdir.exists():
        return [Problem(model, f"model folder {mdir} does not exist")]
    real_repo = repo.path.resolve()
    if mdir.is_symlink() and real_repo not in mdir.resolve().parents:
        problems.append(Problem(model, f"{mdir} is a symlink pointing outside the repository"))
    cfg_path = mdir / CONFIG_FILE
    params: dict[str, str] = {}
    backend = platform = ""
    config: mc.ModelConfig | None = None
    if not cfg_path.is_file():
        problems.append(Problem(model, "config.pbtxt is missing"))
    else:
        try:
            config = read_config(cfg_path)
        except ManagerError as exc:
            problems.append(Problem(model, str(exc)))
        else:
            if config.name and config.name != model:
                problems.append(
                    Problem(
                        model,
                        f"config.pbtxt names the model {config.name!r}, its folder is {model!r}",
                    )
                )
            if not config.platform and not config.backend:
                problems.append(Problem(model, "config.pbtxt sets neither platform nor backend"))
            backend, platform = config.backend, config.platform
            params = {k: v.string_value for k, v in config.parameters.items()}
    versions = []
    for child in sorted(mdir.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            if is_version_name(child.name) and int(child.name) > MAX_VERSION:
                problems.append(
                    Problem(
                        model,
                        f"version folder {child.name} is above Triton's largest version, "
                        f"{MAX_VERSION}: loading the model would take tritonserver down",
                    )
                )
            elif is_version_name(child.name):
                versions.append(int(child.name))
            else:
                problems.append(
                    Problem(model, f"folder {child.name!r} is not an integer version", "warning")
                )
    if not versions:
        problems.append(Problem(model, "has no version folder"))
    for v in versions:
        problems.extend(
            _validate_version(
                repo, model, v, mdir / str(v), backend, platform, params, check_hashes
            )
        )
        if config is not None:
            problems.extend(_tensor_problems(model, v, mdir / str(v), config, params))
    return problems


def _validate_version(
    repo: Repository,
    model: str,
    version: int,
    vdir: Path,
    backend: str,
    platform: str,
    params: dict[str, str],
    check_hashes: bool,
) -> list[Problem]:
    problems = []
    where = f"version {version}"
    real_repo = repo.path.resolve()
    for p in vdir.rglob("*"):
        if p.is_symlink():
            target = p.resolve()
            if real_repo not in target.parents:
                problems.append(
                    Problem(model, f"{where}: {p.name} links outside the repository to {target}")
                )
    for needed in _version_payload(backend, platform, params):
        if not (vdir / needed).exists():
            problems.append(Problem(model, f"{where}: {needed} is missing"))
    prov_path = vdir / PROVENANCE_FILE
    if platform == "ensemble":
        return problems
    if not prov_path.is_file():
        problems.append(Problem(model, f"{where}: no provenance ({PROVENANCE_FILE})", "warning"))
        return problems
    try:
        prov = repo.get_version(model, version).provenance
    except ManagerError as exc:
        problems.append(Problem(model, f"{where}: {exc}"))
        return problems
    if check_hashes and prov.get("sha256"):
        artifact = _artifact_in_version(vdir, prov, params)
        if artifact is not None and artifact.exists() and sha256_of(artifact) != prov["sha256"]:
            hint = ""
            if artifact.is_file() and artifact.stat().st_nlink > 1:
                hint = (
                    f"; it has {artifact.stat().st_nlink} hard links, so it was probably "
                    "published with --link and its source was modified in place"
                )
            problems.append(
                Problem(
                    model,
                    f"{where}: {artifact.name} does not match its recorded sha256 "
                    f"(changed since publish{hint})",
                )
            )
    return problems


def _artifact_in_version(
    vdir: Path, prov: dict[str, object], params: dict[str, str]
) -> Path | None:
    if prov.get("sha256_path"):  # what the recorded sha256 covers, when not the artifact
        return vdir / str(prov["sha256_path"])
    fmt = prov.get("format")
    if fmt == "python":
        return None  # the folder's files are spread in the version folder
    if params.get("tritonctl.artifact"):
        return vdir / params["tritonctl.artifact"]
    return {"onnx": vdir / "model.onnx", "torchscript": vdir / "model.pt"}.get(str(fmt))


def _tensor_problems(
    model: str, version: int, vdir: Path, config: mc.ModelConfig, params: dict[str, str]
) -> list[Problem]:
    """The config's tensors against the artifact's, as publish checks them, for the formats
    whose tensors are cheap to read (ONNX: the graph without its external data). Others
    are left alone: TorchScript declares none without loading the module."""
    onnx_path = _onnx_in_version(vdir, config, params)
    if onnx_path is None or not onnx_path.is_file():
        return []  # not ONNX, or its missing file is reported already
    from manager.artifacts.onnx_artifact import graph_tensors
    from manager.versionconfig import check_config_tensors

    where = f"version {version}"
    try:
        inputs, outputs = graph_tensors(onnx_path)
        check_config_tensors(config, inputs, outputs, "config.pbtxt")
    except ManagerError as exc:
        return [Problem(model, f"{where}: {exc}")]
    return []


def _onnx_in_version(vdir: Path, config: mc.ModelConfig, params: dict[str, str]) -> Path | None:
    """The ONNX file a version is served from, or None when it is not an ONNX version."""
    if config.backend == "python":
        if params.get("tritonctl.runner") != "onnx":
            return None
        return vdir / (params.get("tritonctl.artifact") or "model.onnx")
    if config.platform != "onnxruntime_onnx" and config.backend != "onnxruntime":
        return None
    path = vdir / (config.default_model_filename or "model.onnx")
    return path / "model.onnx" if path.is_dir() else path
