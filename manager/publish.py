"""Publishing an artifact as a new version of a model, atomically.

A version is built in the repository's staging folder (same filesystem) and renamed
into place under the model's lock, so Triton and readers see either no version or the
whole of it, and two publishers never get the same number.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from manager.artifacts import Artifact, inspect_artifact
from manager.errors import ConfigError, ManagerError, RepositoryError, VersionExistsError
from manager.filecopy import Progress, place, sha256_of
from manager.modelconfig import (
    TensorSpec,
    build_config,
    config_to_text,
    read_config,
    tensors_from_config,
    write_config,
)
from manager.names import validate_model_name, validate_version
from manager.repository import (
    CONFIG_FILE,
    PROVENANCE_FILE,
    Repository,
    write_json_atomic,
)
from manager.runtime import resolve_runtime

log = logging.getLogger(__name__)


@dataclass
class PublishOptions:
    """What to publish and how; every field has the default the CLI shows."""

    format: str = "auto"
    version: int | None = None
    max_batch_size: int | None = None  # None: the artifact's default (0 for most)
    instance_count: int = 1
    kind: str = "auto"
    runtime: str = "auto"
    labels: dict[str, str] = field(default_factory=dict)
    inputs: Sequence[TensorSpec] = ()
    outputs: Sequence[TensorSpec] = ()
    config_path: Path | None = None  # a user-supplied config.pbtxt, checked against the artifact
    # Hard-link artifact files instead of copying them (where the filesystem allows). The
    # version then shares the source's inode: the source must never be modified in place.
    link: bool = False


@dataclass
class PublishResult:
    name: str
    version: int
    path: Path
    runtime: str
    format: str
    sha256: str
    config: mc.ModelConfig
    placed_by: str
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "runtime": self.runtime,
            "format": self.format,
            "sha256": self.sha256,
            "placed_by": self.placed_by,
            "labels": self.provenance.get("labels", {}),
        }


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> dict; a malformed item is refused."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"label {item!r} must be KEY=VALUE")
        labels[key] = value
    return labels


def runner_source(runner: str) -> Path:
    """Path of a Python-backend runner's model.py shipped in ``triton_backends``."""
    ref = resources.files("triton_backends").joinpath(f"{runner}_runner", "model.py")
    path = Path(str(ref))
    if not path.is_file():
        raise ManagerError(f"the {runner} runner is missing from this installation ({path})")
    return path


# -- config ------------------------------------------------------------------------------


def _strip_batch(specs: Sequence[TensorSpec], max_batch_size: int, what: str) -> list[TensorSpec]:
    if max_batch_size == 0:
        return list(specs)
    out = []
    for s in specs:
        if not s.dims or s.dims[0] != -1:
            raise ConfigError(
                f"{what} {s.name!r} has dims {list(s.dims)}: batching (max_batch_size "
                f"{max_batch_size}) needs a dynamic leading dimension"
            )
        out.append(TensorSpec(s.name, s.dtype, s.dims[1:]))
    return out


def check_tensors(
    declared: Sequence[TensorSpec], given: Sequence[TensorSpec], what: str, source: str
) -> None:
    """Refuse ``given`` tensors that do not match what the artifact declares."""
    by_name = {s.name: s for s in declared}
    given_names = {s.name for s in given}
    for s in given:
        d = by_name.get(s.name)
        if d is None:
            raise ConfigError(
                f"{source}: {what} {s.name!r} is not in the artifact "
                f"(it has: {', '.join(sorted(by_name)) or 'none'})"
            )
        if d.dtype != s.dtype:
            raise ConfigError(
                f"{source}: {what} {s.name!r} has data type {s.dtype}, the artifact has {d.dtype}"
            )
        if len(d.dims) != len(s.dims) or any(
            a != b and a != -1 for a, b in zip(d.dims, s.dims, strict=False)
        ):
            raise ConfigError(
                f"{source}: {what} {s.name!r} has dims {list(s.dims)}, the artifact has "
                f"{list(d.dims)}"
            )
    missing = [n for n in by_name if n not in given_names]
    if missing and what == "input":
        raise ConfigError(f"{source}: input {missing[0]!r} of the artifact is missing")


def _user_tensors(config: mc.ModelConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    batch = (-1,) if config.max_batch_size > 0 else ()
    ins = [TensorSpec(s.name, s.dtype, batch + s.dims) for s in tensors_from_config(config.input)]
    outs = [TensorSpec(s.name, s.dtype, batch + s.dims) for s in tensors_from_config(config.output)]
    return ins, outs


def make_config(name: str, art: Artifact, opts: PublishOptions, runtime: str) -> mc.ModelConfig:
    """The config.pbtxt for publishing ``art`` as ``name``, validated against the artifact."""
    user: mc.ModelConfig | None = None
    if opts.config_path is not None:
        user = read_config(opts.config_path)
        if user.name and user.name != name:
            raise ConfigError(f"{opts.config_path}: name {user.name!r} differs from {name!r}")
    elif art.config is not None:
        user = art.config

    max_batch = opts.max_batch_size
    if max_batch is None:
        max_batch = user.max_batch_size if user is not None else art.default_max_batch_size

    # Full dims (batch dim included when batching) of what the user said, if anything.
    given_in: list[TensorSpec] = list(opts.inputs)
    given_out: list[TensorSpec] = list(opts.outputs)
    if user is not None and not given_in and not given_out:
        given_in, given_out = _user_tensors(user)
        if opts.max_batch_size is not None and opts.max_batch_size != user.max_batch_size:
            raise ConfigError(
                f"--max-batch-size {opts.max_batch_size} differs from the config's "
                f"max_batch_size {user.max_batch_size}"
            )
    elif max_batch > 0 and (given_in or given_out):
        # flags give dims without the batch dim, as config.pbtxt does
        given_in = [TensorSpec(s.name, s.dtype, (-1, *s.dims)) for s in given_in]
        given_out = [TensorSpec(s.name, s.dtype, (-1, *s.dims)) for s in given_out]

    source = str(opts.config_path or "the given tensors")
    if art.inputs is not None and art.outputs is not None:
        if given_in or given_out:
            check_tensors(art.inputs, given_in, "input", source)
            check_tensors(art.outputs, given_out, "output", source)
        inputs = given_in or list(art.inputs)
        outputs = given_out or list(art.outputs)
    else:
        if not given_in or not given_out:
            raise ConfigError(
                f"a {art.format} artifact does not declare its tensors: give --input and "
                "--output (NAME:DTYPE:DIMS) or --config"
            )
        inputs, outputs = given_in, given_out

    inputs = _strip_batch(inputs, max_batch, "input")
    outputs = _strip_batch(outputs, max_batch, "output")

    if art.format == "python":
        params = dict(user.parameters.items()) if user is not None else {}
        config = build_config(
            name,
            inputs,
            outputs,
            max_batch_size=max_batch,
            backend="python",
            instance_count=opts.instance_count,
            kind=opts.kind,
        )
        if user is not None:
            merged = mc.ModelConfig()
            merged.CopyFrom(user)
            merged.name = name
            merged.backend = "python"
            merged.max_batch_size = max_batch
            del merged.input[:]
            del merged.output[:]
            merged.input.extend(config.input)
            merged.output.extend(config.output)
            if not merged.instance_group or opts.instance_count != 1 or opts.kind != "auto":
                del merged.instance_group[:]
                merged.instance_group.extend(config.instance_group)
            config = merged
        for k, v in params.items():
            config.parameters[k].CopyFrom(v)
        return config

    if runtime == "native":
        if art.native is None:
            raise ConfigError(
                f"a {art.format} artifact has no native Triton runtime; use --runtime python"
            )
        kind_field, value = art.native
        return build_config(
            name,
            inputs,
            outputs,
            max_batch_size=max_batch,
            platform=value if kind_field == "platform" else "",
            backend=value if kind_field == "backend" else "",
            instance_count=opts.instance_count,
            kind=opts.kind,
            default_model_filename=art.native_filename,
            dynamic_batching=max_batch > 0,
        )
    params = {"tritonctl.runner": art.runner, "tritonctl.artifact": art.runner_artifact}
    params.update(art.runner_parameters)
    return build_config(
        name,
        inputs,
        outputs,
        max_batch_size=max_batch,
        backend="python",
        instance_count=opts.instance_count,
        kind=opts.kind,
        parameters=params,
        dynamic_batching=max_batch > 0,
    )


def compatible(existing: mc.ModelConfig, new: mc.ModelConfig) -> None:
    """Refuse a new version whose config cannot share the model's config.pbtxt."""
    for field_name in ("platform", "backend", "max_batch_size"):
        a, b = getattr(existing, field_name), getattr(new, field_name)
        if a != b:
            raise ConfigError(
                f"model {existing.name!r} has {field_name} {a!r}; this version needs {b!r}. "
                "Versions of one model share one config.pbtxt: publish under a new name"
            )
    for what, old, cur in (
        ("input", existing.input, new.input),
        ("output", existing.output, new.output),
    ):
        old_specs = {s.name: s for s in tensors_from_config(old)}
        for s in tensors_from_config(cur):
            o = old_specs.get(s.name)
            if o is None or o != s:
                raise ConfigError(
                    f"model {existing.name!r}: {what} {s.describe()} does not match the "
                    f"published config ({o.describe() if o else 'no such ' + what}); versions "
                    "of one model share one config.pbtxt: publish under a new name"
                )
        if len(old_specs) != len(cur):
            raise ConfigError(
                f"model {existing.name!r}: this version has {len(cur)} {what}s, the published "
                f"config has {len(old_specs)}"
            )
    for key in ("tritonctl.runner",):
        a = existing.parameters[key].string_value if key in existing.parameters else ""
        b = new.parameters[key].string_value if key in new.parameters else ""
        if a != b:
            raise ConfigError(
                f"model {existing.name!r} is served by runner {a!r}; this version needs {b!r}"
            )


# -- publishing --------------------------------------------------------------------------


def publish(
    repo: Repository | str | os.PathLike[str],
    name: str,
    artifact: str | os.PathLike[str],
    options: PublishOptions | None = None,
    *,
    progress: Callable[[int, int], Progress] | None = None,
    verify: Callable[[Path, mc.ModelConfig], None] | None = None,
) -> PublishResult:
    """Publish ``artifact`` as a new version of model ``name`` in ``repo``.

    ``progress(total_bytes, ...)`` may return a callback that receives bytes placed.
    ``verify(staged_model_dir, config)`` runs on the staged model before it becomes
    visible (a smoke test); raising there publishes nothing.
    """
    repository = repo if isinstance(repo, Repository) else Repository(repo)
    opts = options or PublishOptions()
    validate_model_name(name)
    if opts.version is not None:
        validate_version(opts.version)
    src = Path(artifact)
    art = inspect_artifact(src, opts.format)
    runtime = (
        "python" if art.format in ("python", "transformers") else resolve_runtime(opts.runtime)
    )
    config = make_config(name, art, opts, runtime)
    digest = sha256_of(src)

    repository.ensure()
    with repository.lock(name):
        repository.clear_stale_staging(name)
        model_dir = repository.model_dir(name)
        if model_dir.is_symlink():
            raise RepositoryError(f"{model_dir} is a symlink: refusing to publish through it")
        exists = model_dir.is_dir()
        if exists:
            cfg_path = model_dir / CONFIG_FILE
            if cfg_path.is_file():
                existing = read_config(cfg_path)
                compatible(existing, config)
            versions = repository.versions(name)
        else:
            versions = []
        version = opts.version if opts.version is not None else (max(versions, default=0) + 1)
        if version in versions or (model_dir / str(version)).exists():
            raise VersionExistsError(f"model {name!r} already has version {version}")

        staging = repository.staging_dir(name)
        try:
            staged_model = staging / name
            staged_version = staged_model / str(version)
            staged_version.mkdir(parents=True)
            total = sum(f.stat().st_size if f.is_file() else 0 for f in art.files.values())
            callback = progress(art.size_bytes or total, 0) if progress else None
            hows = {
                place(path, staged_version / rel, link=opts.link, progress=callback)
                for rel, path in art.files.items()
            }
            placed_by = next((h for h in ("copy", "clone", "link") if h in hows), "copy")
            if runtime == "python" and art.runner:
                shutil.copyfile(runner_source(art.runner), staged_version / "model.py")
            provenance = {
                "name": name,
                "version": version,
                "format": art.format,
                "runtime": runtime,
                "sha256": digest,
                "source": str(src.resolve()),
                "size_bytes": art.size_bytes,
                "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "published_by": _who(),
                "labels": dict(opts.labels),
                "tritonctl_version": _own_version(),
                "config": config_to_text(config),
            }
            write_json_atomic(staged_version / PROVENANCE_FILE, provenance)
            write_config(staged_model / CONFIG_FILE, config)
            if verify is not None:
                verify(staged_model, config)
            started = time.monotonic()
            if not exists:
                os.rename(staged_model, model_dir)
            else:
                os.rename(staged_version, model_dir / str(version))
                if not (model_dir / CONFIG_FILE).is_file():
                    write_config(model_dir / CONFIG_FILE, config)
                # else: the model's config.pbtxt stays as it is; it is shared by every
                # version and carries what serving wrote into it (the version policy
                # of endpoints), and `compatible` checked that it fits this version.
            log.info("published %s version %d in %.3f s", name, version, time.monotonic() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    return PublishResult(
        name=name,
        version=version,
        path=model_dir / str(version),
        runtime=runtime,
        format=art.format,
        sha256=digest,
        config=config,
        placed_by=placed_by,
        provenance=provenance,
    )


def make_verifier(
    golden_dir: Path | None, staging_url: str | None
) -> Callable[[Path, mc.ModelConfig], None]:
    """A ``verify`` hook for :func:`publish` that smoke-tests the staged version."""
    from manager.golden import load_cases
    from manager.smoke import smoke_test

    cases = load_cases(golden_dir) if golden_dir is not None else []

    def verify(staged_model: Path, config: mc.ModelConfig) -> None:
        versions = [int(p.name) for p in staged_model.iterdir() if p.is_dir() and p.name.isdigit()]
        smoke_test(staged_model, config, versions[0], cases, url=staging_url)

    return verify


def smoke_verifier(
    smoke_test: bool, golden_dir: Path | None = None, staging_url: str | None = None
) -> Callable[[Path, mc.ModelConfig], None] | None:
    """The ``verify`` hook of ``publish --smoke-test [--golden DIR] [--staging-url URL]``:
    None without a smoke test (golden requests or a staging server alone are refused)."""
    if not smoke_test:
        if golden_dir is not None or staging_url:
            raise ConfigError("golden requests and a staging URL are for the smoke test only")
        return None
    return make_verifier(golden_dir, staging_url)


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{platform.node()}"


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tritonctl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"
