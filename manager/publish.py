"""Publishing an artifact as a new version of a model, atomically.

A version is built in the repository's staging folder (same filesystem) and renamed
into place under the model's lock, so Triton and readers see either no version or the
whole of it, and two publishers never get the same number.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from manager.artifacts import inspect_artifact
from manager.artifacts.base import Artifact, tree_size
from manager.errors import (
    ArtifactError,
    ConfigError,
    InvalidNameError,
    ManagerError,
    RepositoryError,
    VersionExistsError,
)
from manager.filecopy import Progress, iter_files, place, precompile, room_needed, sha256_of
from manager.modelconfig import (
    TensorSpec,
    config_to_text,
    read_config,
    tensors_from_config,
    write_config,
)
from manager.names import MAX_VERSION, validate_model_name, validate_version
from manager.repository import (
    CONFIG_FILE,
    PROVENANCE_FILE,
    Repository,
    write_json_atomic,
)
from manager.runtime import RUNTIME_ENV, resolve_runtime
from manager.timeouts import Timeouts
from manager.units import format_size
from manager.versionconfig import check_new_version, make_config, read_user_config

log = logging.getLogger(__name__)


@dataclass
class PublishOptions:
    """What to publish and how; every field has the default the CLI shows."""

    format: str = "auto"
    version: int | None = None
    max_batch_size: int | None = None  # None: the artifact's default (0 for most)
    instance_count: int | None = None  # None: the user config's, else 1
    kind: str | None = None  # auto, cpu or gpu; None: the user config's, else auto
    runtime: str = "auto"
    labels: dict[str, str] = field(default_factory=dict)
    inputs: Sequence[TensorSpec] = ()
    outputs: Sequence[TensorSpec] = ()
    config_path: Path | None = None  # a user-supplied config.pbtxt, checked against the artifact
    # Hard-link artifact files instead of copying them (where the filesystem allows). The
    # version then shares the source's inode: the source must never be modified in place.
    link: bool = False
    # Serve a transformers folder with a task head as a text embedder of its base model:
    # without this a sequence classifier is served as a text classifier, and a folder with
    # another task head (token classification, question answering) is refused.
    as_embedder: bool = False


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
    notices: list[str] = field(default_factory=list)  # how it is served, for the user

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
            "notices": list(self.notices),
        }


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> dict; a malformed item is refused."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"label {item!r} must be KEY=VALUE")
        if key in labels and labels[key] != value:
            raise ConfigError(f"label {key!r} given twice ({labels[key]!r} and {value!r})")
        labels[key] = value
    return labels


def runner_source(runner: str) -> Path:
    """Path of a Python-backend runner's model.py shipped in ``triton_backends``."""
    ref = resources.files("triton_backends").joinpath(f"{runner}_runner", "model.py")
    path = Path(str(ref))
    if not path.is_file():
        raise ManagerError(f"the {runner} runner is missing from this installation ({path})")
    return path


# -- publishing --------------------------------------------------------------------------


def _with_model_defaults(
    repository: Repository, name: str, opts: PublishOptions, art: Artifact
) -> PublishOptions:
    """A later version shares the model's config.pbtxt: without --max-batch-size (or a
    config of its own) it takes the model's max_batch_size, as it takes its instances;
    an artifact that does not declare its tensors (TorchScript, a Python model) takes the
    model's inputs and outputs when neither --input nor --output is given (they must be
    those anyway: the new version is checked against them)."""
    if opts.config_path is not None or art.config is not None:
        return opts
    path = repository.model_dir(name) / CONFIG_FILE
    if not path.is_file():
        return opts
    try:
        existing = read_config(path)
    except ManagerError:
        return opts  # checked, and reported, when the version is placed
    if opts.max_batch_size is None:
        opts = replace(opts, max_batch_size=int(existing.max_batch_size))
    undeclared = art.inputs is None or art.outputs is None
    if undeclared and not opts.inputs and not opts.outputs:
        opts = replace(
            opts,
            inputs=tuple(tensors_from_config(existing.input)),
            outputs=tuple(tensors_from_config(existing.output)),
        )
    return opts


def _native_asked(name: str, art: Artifact, opts: PublishOptions) -> str:
    """The native backend or platform the user's config names for a model tritonctl can
    also serve through a Python runner ("" if none)."""
    if art.format == "python":
        return ""
    user, _ = read_user_config(name, art, opts)
    if user is None:
        return ""
    for field_name in ("platform", "backend"):
        value = getattr(user, field_name)
        if value and value != "python":
            return f"{field_name} {value!r}"
    return ""


def publish(
    repo: Repository | str | os.PathLike[str],
    name: str,
    artifact: str | os.PathLike[str],
    options: PublishOptions | None = None,
    *,
    progress: Callable[[int, int, str], Progress] | None = None,
    verify: Callable[[Path, mc.ModelConfig], None] | None = None,
) -> PublishResult:
    """Publish ``artifact`` as a new version of model ``name`` in ``repo``.

    ``progress(total_bytes, 0, phase)`` is called as each phase that reads or writes the
    artifact's bytes starts ("hashing", "placing"); it may return a callback that receives
    the bytes done.
    ``verify(staged_model_dir, config)`` runs on the staged model before it becomes
    visible (a smoke test); raising there publishes nothing.
    """
    repository = repo if isinstance(repo, Repository) else Repository(repo)
    opts = options or PublishOptions()
    validate_model_name(name)
    from manager.endpoints import is_endpoint_folder

    if is_endpoint_folder(repository, name):
        raise RepositoryError(
            f"{name!r} is an endpoint, not a model: publish the artifact as a model of its "
            f"own and point the endpoint at it (tritonctl endpoint switch {name} --to "
            "MODEL[:VERSION], or a rollout)"
        )
    if opts.version is not None:
        validate_version(opts.version)
    src = Path(artifact)
    art = inspect_artifact(src, opts.format, as_embedder=opts.as_embedder)
    notices = list(art.notices)
    if art.config is not None and art.config.name not in ("", name) and opts.config_path is None:
        notices.append(
            f"{src}'s config.pbtxt names the model {art.config.name!r}; it is published as "
            f"{name!r} (the name in the repository's config.pbtxt)"
        )
    if art.task_head:
        if not opts.as_embedder:
            raise ArtifactError(
                f"{src} is a {art.task_head}: tritonctl serves transformers folders as text "
                "embedders, and sequence classifiers (*ForSequenceClassification) as text "
                "classifiers; as an embedder this one would drop its trained head and answer "
                "embeddings instead of its predictions. Export it to ONNX (or a Python model) "
                "to serve its predictions, or pass --as-embedder to serve its base model's "
                "embeddings"
            )
        notices.append(
            f"{art.task_head} is served as a text embedder of its base model "
            "(--as-embedder): the head is not used"
        )
    runtime = resolve_runtime(opts.runtime)
    if art.format == "transformers" and opts.runtime == "native":
        raise ConfigError(
            "a transformers artifact has no native Triton runtime: it is served by "
            "tritonctl's Python-backend runner (--runtime python or auto)"
        )
    if art.format in ("python", "transformers"):
        runtime = "python"  # a Python model folder's native backend is the Python backend
    if opts.as_embedder and art.format != "transformers":
        raise ConfigError(
            f"--as-embedder applies to transformers folders; {src} is a {art.format} artifact"
        )
    opts = _with_model_defaults(repository, name, opts, art)
    config = make_config(name, art, opts, runtime)
    asked = _native_asked(name, art, opts)
    if asked and opts.runtime == "auto" and runtime == "python":
        notices.append(
            f"the config asks for {asked}, which this host's tritonserver does not have: "
            "served by tritonctl's Python-backend runner instead (--runtime native, or "
            f"{RUNTIME_ENV}=native, keeps {asked} for a server that has it)"
        )
    # an artifact with the files that came with it is hashed as placed, with them
    digest = "" if art.digest_of else sha256_of(src, progress=_phase(progress, src, "hashing"))

    repository.ensure()
    with contextlib.ExitStack() as stack:
        # the version is staged under the model's lock, copied without it (loads, endpoint
        # changes and prunes of the model take it: a copy of many GB must not hold them
        # up), and placed under it again, as the next free version then
        with repository.lock(name):
            repository.clear_stale_staging(name)
            repository.clear_abandoned_staging()
            version, _ = _free_version(repository, name, art, config, opts)
            staging = stack.enter_context(repository.claimed_staging(name))
        staged_model = staging / name
        staged_version = staged_model / str(version)
        staged_version.mkdir(parents=True)
        _check_room(repository, staging, src, art, link=opts.link)
        total = sum(f.stat().st_size if f.is_file() else 0 for f in art.files.values())
        callback = progress(art.size_bytes or total, 0, "placing") if progress else None
        hows = {
            place(path, staged_version / rel, link=opts.link, progress=callback)
            for rel, path in art.files.items()
        }
        placed_by = next((h for h in ("copy", "clone", "link") if h in hows), "copy")
        if art.digest_of:  # the artifact with the files that came with it
            placed = staged_version / art.digest_of
            digest = sha256_of(placed, progress=_phase(progress, placed, "hashing"))
        if runtime == "python" and art.runner:
            shutil.copyfile(runner_source(art.runner), staged_version / "model.py")
        write_config(staged_model / CONFIG_FILE, config)
        if runtime == "python":
            precompile(staged_version)  # or the first load makes Triton load it twice
        if verify is not None:
            verify(staged_model, config)

        with repository.lock(name):
            model_dir = repository.model_dir(name)
            # another publisher may have placed a version (or the model) meanwhile
            placed_version, exists = _free_version(repository, name, art, config, opts)
            if placed_version != version:
                os.rename(staged_version, staged_model / str(placed_version))
                version, staged_version = placed_version, staged_model / str(placed_version)
            provenance = {
                "name": name,
                "version": version,
                "format": art.format,
                "runtime": runtime,
                "sha256": digest,
                **({"sha256_path": art.digest_of} if art.digest_of else {}),
                "source": str(src.resolve()),
                "size_bytes": art.size_bytes,
                "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "published_by": _who(),
                "labels": dict(opts.labels),
                "tritonctl_version": _own_version(),
                "config": config_to_text(config),
            }
            write_json_atomic(staged_version / PROVENANCE_FILE, provenance)
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
        notices=notices,
    )


def _free_version(
    repository: Repository,
    name: str,
    art: Artifact,
    config: mc.ModelConfig,
    opts: PublishOptions,
) -> tuple[int, bool]:
    """(the version to publish as, whether the model exists) with the model's lock held:
    the asked version or the next one, refused where it is taken or where the model's
    config does not fit the artifact."""
    model_dir = repository.model_dir(name)
    if model_dir.is_symlink():
        raise RepositoryError(f"{model_dir} is a symlink: refusing to publish through it")
    if model_dir.exists() and not model_dir.is_dir():
        raise RepositoryError(
            f"{model_dir} exists and is not a model folder: choose another model name"
        )
    exists = model_dir.is_dir()
    if exists:
        cfg_path = model_dir / CONFIG_FILE
        if cfg_path.is_file():
            existing = read_config(cfg_path)
            check_new_version(
                existing,
                config,
                opts,
                user_given=opts.config_path is not None or art.config is not None,
            )
        versions = repository.versions(name)
    else:
        versions = []
    version = opts.version if opts.version is not None else (max(versions, default=0) + 1)
    if version > MAX_VERSION:
        raise InvalidNameError(
            f"model {name!r} has version {max(versions)}, Triton's largest: give a free "
            "lower one with --version"
        )
    if version in versions or (model_dir / str(version)).exists():
        raise VersionExistsError(f"model {name!r} already has version {version}")
    return version, exists


def _phase(
    progress: Callable[[int, int, str], Progress] | None, path: Path, what: str
) -> Progress | None:
    """The byte callback of the phase ``what`` over the files at ``path``."""
    return progress(tree_size(path), 0, what) if progress else None


def _check_room(
    repository: Repository, staging: Path, src: Path, art: Artifact, *, link: bool
) -> None:
    """Refuse, before anything is copied, an artifact the repository's filesystem has no
    room for (a copy that fills the disk half-way fails late, and starves whatever else
    writes there meanwhile)."""
    sources = [
        p
        for path in art.files.values()
        for _, p in (iter_files(path) if path.is_dir() else [("", path)])
    ]
    needed = room_needed(sources, staging, link=link)
    free = shutil.disk_usage(staging).free
    if needed > free:
        raise RepositoryError(
            f"not enough space to publish {src}: its version needs {format_size(needed)}, "
            f"and the file system of the repository {repository.path} has "
            f"{format_size(free)} free"
        )


def make_verifier(
    golden_dir: Path | None, staging_url: str | None, timeouts: Timeouts | None = None
) -> Callable[[Path, mc.ModelConfig], None]:
    """A ``verify`` hook for :func:`publish` that smoke-tests the staged version (its load
    within ``timeouts``, see :func:`manager.smoke.smoke_test`)."""
    from manager.golden import load_cases
    from manager.smoke import smoke_test

    cases = load_cases(golden_dir) if golden_dir is not None else []

    def verify(staged_model: Path, config: mc.ModelConfig) -> None:
        versions = [int(p.name) for p in staged_model.iterdir() if p.is_dir() and p.name.isdigit()]
        smoke_test(staged_model, config, versions[0], cases, url=staging_url, timeouts=timeouts)

    return verify


def smoke_verifier(
    smoke_test: bool,
    golden_dir: Path | None = None,
    staging_url: str | None = None,
    *,
    timeouts: Timeouts | None = None,
) -> Callable[[Path, mc.ModelConfig], None] | None:
    """The ``verify`` hook of ``publish --smoke-test [--golden DIR] [--staging-url URL]``:
    None without a smoke test (golden requests or a staging server alone are refused)."""
    if not smoke_test:
        if golden_dir is not None or staging_url:
            raise ConfigError("golden requests and a staging URL are for the smoke test only")
        return None
    return make_verifier(golden_dir, staging_url, timeouts)


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
