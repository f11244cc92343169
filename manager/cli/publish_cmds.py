"""Commands that write and read the repository: publish, versions, validate, prune."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from manager.artifacts import FORMATS
from manager.cli.app import main
from manager.cli.common import Context, console, err_console, pass_context, print_json
from manager.errors import ManagerError
from manager.footprint import FootprintStore
from manager.listing import version_rows
from manager.modelconfig import TensorSpec
from manager.prune import prune as prune_versions
from manager.publish import PublishOptions, parse_labels, publish, smoke_verifier
from manager.repository import Repository
from manager.runtime import RUNTIMES
from manager.units import format_size
from manager.validate import validate_repository

LARGE_BYTES = 64 * 1024 * 1024  # show a progress bar from this size on


def _tensor(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[TensorSpec]:
    try:
        return [TensorSpec.parse(v) for v in values]
    except ManagerError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


@contextmanager
def _progress(
    enabled: bool, name: str
) -> Iterator[Callable[[int, int, str], Callable[[int], None]] | None]:
    """A bar per phase of a large publish (inspecting, hashing, placing ``name``), drawn
    on a terminal only: a CI log gets none."""
    if not enabled:
        yield None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        current = [bar.add_task(f"inspecting {name}", total=None)]

        def start(total: int, _done: int, what: str) -> Callable[[int], None]:
            bar.remove_task(current[0])
            task = bar.add_task(f"{what} {name}", total=total)
            current[0] = task
            return lambda n: bar.advance(task, n)

        yield start


@main.command("publish")
@click.argument("name")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("auto", *FORMATS)),
    default="auto",
    show_default=True,
    help="The artifact's format; auto: from the name (*.onnx, *.pt) or the folder "
    "(model.py: python; config.json: transformers).",
)
@click.option("--version", type=int, default=None, help="Version number (default: highest + 1).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=0),
    default=None,
    help="Triton max_batch_size; > 0 makes the leading dynamic dim the batch dim. "
    "Default: 0 for ONNX and TorchScript, 64 for transformers, the folder's config.pbtxt "
    "for Python models (else 0), the value in --config when one is given.",
)
@click.option(
    "--instance-count",
    type=click.IntRange(min=1),
    default=None,
    help="Model instances Triton runs (instance_group count). Default: the --config's "
    "instance_group, else 1. A later version must keep the model's.",
)
@click.option(
    "--kind",
    type=click.Choice(("auto", "cpu", "gpu")),
    default=None,
    help="Where the instances run (instance_group kind); auto lets Triton choose (a GPU "
    "where there is one). Default: the --config's, else auto. A later version must keep "
    "the model's.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    help="native: Triton's ONNX Runtime/PyTorch backends; python: a Python-backend runner; "
    "auto: native where this host's Triton has those backends. Transformers folders have "
    "only the python runtime; Python model folders always run on the Python backend.",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    callback=_tensor,
    metavar="NAME:DTYPE:DIMS",
    help="An input, e.g. x:FP32:-1,4 (dims without the batch dim when batching; repeat "
    "for each input, in forward()'s order for TorchScript).",
)
@click.option(
    "--output",
    "outputs",
    multiple=True,
    callback=_tensor,
    metavar="NAME:DTYPE:DIMS",
    help="An output, e.g. y:FP32:-1,2 (dims without the batch dim when batching; repeat "
    "for each output, in the order forward() returns them for TorchScript).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A config.pbtxt to publish with: every field is kept (batching, instance groups, "
    "optimization, warm-up, parameters...); its tensors are checked against the artifact "
    "and what the runtime needs is filled in.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Provenance label, e.g. git_commit=abc123 (repeatable).",
)
@click.option(
    "--link",
    "hard_link",
    is_flag=True,
    help="Hard-link the artifact's files into the version instead of copying them (where "
    "the filesystem allows). The version then shares the source files: never modify the "
    "source in place afterwards (re-exporting to the same path would change the published "
    "version). Default: copy, as a copy-on-write clone where the filesystem supports it.",
)
@click.option(
    "--copy",
    "force_copy",
    is_flag=True,
    hidden=True,
    help="Deprecated: copying is the default; kept so that existing scripts still work.",
)
@click.option(
    "--as-embedder",
    is_flag=True,
    help="Serve a transformers folder whose config names a task head as a text embedder of "
    "its base model; the head is not used. Without it a sequence classifier (e.g. "
    "BertForSequenceClassification) is served as a text classifier (TEXT in; LOGITS, and "
    "LABEL for a single-label one, out), and a folder with another task head (token "
    "classification, question answering) is refused.",
)
@click.option(
    "--smoke-test",
    is_flag=True,
    help="Before publishing, load the version into a throwaway Triton and run requests.",
)
@click.option(
    "--golden",
    "golden_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Golden requests (*.npz / *.json with inputs and expected outputs) for --smoke-test.",
)
@click.option(
    "--staging-url",
    default=None,
    help="Run the smoke test on this Triton server instead of a throwaway one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def publish_cmd(
    obj: Context,
    name: str,
    artifact: Path,
    fmt: str,
    version: int | None,
    max_batch_size: int | None,
    instance_count: int | None,
    kind: str | None,
    runtime: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    config_path: Path | None,
    labels: tuple[str, ...],
    hard_link: bool,
    force_copy: bool,
    as_embedder: bool,
    smoke_test: bool,
    golden_dir: Path | None,
    staging_url: str | None,
    as_json: bool,
) -> None:
    """Publish ARTIFACT as a new version of model NAME.

    With --smoke-test the new version becomes visible only after it loaded in a
    throwaway Triton (or --staging-url) and answered every golden request.
    """
    if hard_link and force_copy:
        raise click.UsageError("--link and --copy exclude each other (copying is the default)")
    options = PublishOptions(
        format=fmt,
        version=version,
        max_batch_size=max_batch_size,
        instance_count=instance_count,
        kind=kind,
        runtime=runtime,
        labels=parse_labels(labels),
        inputs=inputs,
        outputs=outputs,
        config_path=config_path,
        link=hard_link,
        as_embedder=as_embedder,
    )
    if (golden_dir or staging_url) and not smoke_test:
        raise click.UsageError("--golden and --staging-url need --smoke-test")
    verify = smoke_verifier(
        smoke_test, golden_dir, staging_url, timeouts=obj.timeouts() if smoke_test else None
    )
    show_bar = (
        not as_json
        and err_console.is_terminal
        and artifact.exists()
        and _size(artifact) >= LARGE_BYTES
    )
    with _progress(show_bar, artifact.name) as progress:
        result = publish(
            Repository(obj.repo), name, artifact, options, progress=progress, verify=verify
        )
    if as_json:
        print_json(result.to_dict())
        return
    for notice in result.notices:
        err_console.print(f"[yellow]note[/] {notice}", highlight=False)
    console.print(
        f"published [bold]{result.name}[/] version [bold]{result.version}[/] "
        f"({result.format}, {result.runtime} runtime) at {result.path}",
        highlight=False,
    )


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@main.command("versions")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def versions_cmd(obj: Context, name: str, as_json: bool) -> None:
    """List the versions of NAME with their provenance."""
    repo = Repository(obj.repo)
    if as_json:
        print_json(version_rows(repo, name))
        return
    repo.require()
    infos = repo.version_info(name)
    store = FootprintStore(obj.repo)
    table = Table(title=f"{name} versions")
    for col in (
        "version",
        "format",
        "runtime",
        "published",
        "sha256",
        "labels",
        "memory",
        "measured",
    ):
        table.add_column(col)
    for i in infos:
        p = i.provenance
        labels = ", ".join(f"{k}={v}" for k, v in (p.get("labels") or {}).items())
        fp = store.known(name, i.version)
        table.add_row(
            str(i.version),
            str(p.get("format", "?")),
            str(p.get("runtime", "?")),
            str(p.get("published_at", "?")),
            str(p.get("sha256", ""))[:12],
            labels,
            format_size(fp.bytes) if fp else "-",
            fp.method if fp else "-",
        )
    console.print(table)


@main.command("validate")
@click.argument("name", required=False)
@click.option("--no-hash", is_flag=True, help="Skip re-hashing artifacts against their provenance.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def validate_cmd(obj: Context, name: str | None, no_hash: bool, as_json: bool) -> None:
    """Check the repository (or model NAME); exit 0 only when it is consistent."""
    repo = Repository(obj.repo)
    problems = validate_repository(repo, name, check_hashes=not no_hash)
    errors = [p for p in problems if p.severity == "error"]
    if as_json:
        print_json({"ok": not errors, "problems": [p.to_dict() for p in problems]})
    else:
        for p in problems:
            style = "red" if p.severity == "error" else "yellow"
            err_console.print(f"[{style}]{p.severity}[/] {p.model}: {p.message}", highlight=False)
        if not errors:
            count = 1 if name else len(repo.models())
            console.print(f"ok: {count} model(s) consistent in {repo.path}")
    if errors:
        raise SystemExit(1)


@main.command("prune")
@click.argument("name")
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    required=True,
    help="How many of the newest versions to keep.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be removed.")
@click.option(
    "--offline",
    is_flag=True,
    help="No server serves this repository: count only endpoints and rollouts as in use "
    "(without it, a server that does not answer stops the prune).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def prune_cmd(
    obj: Context, name: str, keep: int, dry_run: bool, offline: bool, as_json: bool
) -> None:
    """Remove old versions of NAME, never one that is loaded, routed to or in a rollout.

    Which versions are loaded is asked of the server (--url, else the embedded server of
    --repo, else http://localhost:8000); if it does not answer, nothing is removed unless
    --offline says no server serves the repository.
    """
    from manager.usage import versions_in_use

    repo = Repository(obj.repo)
    repo.require()
    in_use = versions_in_use(repo, name, obj.url, offline=offline, timeouts=obj.timeouts())
    result = prune_versions(repo, name, keep, in_use=in_use, dry_run=dry_run)
    if as_json:
        print_json({**result.to_dict(), "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    console.print(
        f"{name}: {verb} {result.removed or 'nothing'}; kept {result.kept}"
        + (f" (in use: {result.protected})" if result.protected else "")
    )
