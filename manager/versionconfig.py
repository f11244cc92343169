"""The config.pbtxt a published version is served with.

Without a user config it is generated from the artifact and the publish options. With one
(``--config FILE``, or the ``config.pbtxt`` of a Python model folder) every field the user
wrote is kept: only the tensors are checked against the artifact, and what the runtime
needs (name, platform or backend, the runner's parameters, a default instance group) is
filled in. Versions of one model share one config.pbtxt, so a new version is checked
against the model's config (:func:`compatible`) instead of replacing it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tritonclient.grpc import model_config_pb2 as mc

from manager.artifacts import Artifact
from manager.errors import ConfigError
from manager.modelconfig import TensorSpec, build_config, read_config, tensors_from_config

if TYPE_CHECKING:
    from manager.publish import PublishOptions

log = logging.getLogger(__name__)

# Parameters that tell a runner what to serve: tritonctl sets them, a user config may not
# point them elsewhere. Other ``tritonctl.*`` parameters (threads, max_length...) written
# by the user win over tritonctl's defaults.
RUNNER_KEYS = ("tritonctl.runner", "tritonctl.artifact")
# Triton's names of the same native backend: a platform, or a backend.
_NATIVE_BACKEND = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}
_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def check_unique(specs: Sequence[TensorSpec], what: str, source: str) -> None:
    """Refuse two tensors of one name, and a tensor without dims (Triton needs one)."""
    counts = Counter(s.name for s in specs)
    dup = next((n for n, c in counts.items() if c > 1), None)
    if dup is not None:
        raise ConfigError(f"{source}: {what} {dup!r} is given {counts[dup]} times")
    for s in specs:
        if not s.dims:
            raise ConfigError(
                f"{source}: {what} {s.name!r} has no dims; Triton needs at least one "
                "(a scalar per batch item is dims [1])"
            )


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
        if len(s.dims) == 1:
            raise ConfigError(
                f"{what} {s.name!r} has dims {list(s.dims)}: with batching (max_batch_size "
                f"{max_batch_size}) nothing is left past the batch dimension, and Triton "
                "needs at least one dim; publish with --max-batch-size 0"
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


def _with_batch(specs: Sequence[TensorSpec], max_batch_size: int) -> list[TensorSpec]:
    """Full dims (the batch dim included when batching) of dims as config.pbtxt gives them."""
    if max_batch_size == 0:
        return list(specs)
    return [TensorSpec(s.name, s.dtype, (-1, *s.dims)) for s in specs]


def check_config_tensors(
    config: mc.ModelConfig,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    source: str,
) -> None:
    """Refuse a config whose tensors do not match those an artifact declares (``inputs``
    and ``outputs``, full dims): the check publish makes of a user's config."""
    max_batch = int(config.max_batch_size)
    check_tensors(
        inputs, _with_batch(tensors_from_config(config.input), max_batch), "input", source
    )
    check_tensors(
        outputs, _with_batch(tensors_from_config(config.output), max_batch), "output", source
    )


def _check_flags_agree(
    flags: Sequence[TensorSpec], config: Sequence[TensorSpec], what: str, source: str
) -> None:
    """--input/--output given beside a config must say what the config says."""
    if not flags or not config:
        return
    by_name = {s.name: s for s in config}
    for s in flags:
        c = by_name.get(s.name)
        if c is None or c != s:
            raise ConfigError(
                f"--{what} {s.describe()} disagrees with {source} "
                f"({c.describe() if c else 'no such ' + what}); give the tensors in one place"
            )
    if len(flags) != len(config):
        raise ConfigError(
            f"{source} has {len(config)} {what}(s), --{what} gives {len(flags)}; "
            "give the tensors in one place"
        )


def _check_input_count(art: Artifact, inputs: Sequence[TensorSpec], source: str) -> None:
    if art.input_count is None:
        return
    low, high = art.input_count
    if not low <= len(inputs) <= high:
        takes = str(low) if low == high else f"{low} to {high}"
        raise ConfigError(
            f"{source}: {len(inputs)} input(s) given, but the {art.format} module's forward() "
            f"takes {takes} ({art.signature})"
        )


def _check_output_count(art: Artifact, outputs: Sequence[TensorSpec], source: str) -> None:
    if art.output_count is not None and len(outputs) != art.output_count:
        raise ConfigError(
            f"{source}: {len(outputs)} output(s) given, but the {art.format} module's forward() "
            f"returns {art.output_count} ({art.signature})"
        )


def read_user_config(
    name: str, art: Artifact, opts: PublishOptions
) -> tuple[mc.ModelConfig | None, str]:
    """The user's config (``--config``, else one that came with the artifact) and where
    it is from."""
    if opts.config_path is not None:
        user = read_config(opts.config_path)
        if user.name and user.name != name:
            raise ConfigError(f"{opts.config_path}: name {user.name!r} differs from {name!r}")
        return user, str(opts.config_path)
    if art.config is not None:
        return art.config, str(art.source / "config.pbtxt")
    return None, "the given tensors"


def make_config(name: str, art: Artifact, opts: PublishOptions, runtime: str) -> mc.ModelConfig:
    """The config.pbtxt for publishing ``art`` as ``name``, validated against the artifact."""
    user, source = read_user_config(name, art, opts)
    check_unique(opts.inputs, "--input", "the given tensors")
    check_unique(opts.outputs, "--output", "the given tensors")

    max_batch = opts.max_batch_size
    if user is not None:
        if max_batch is not None and max_batch != user.max_batch_size:
            raise ConfigError(
                f"--max-batch-size {max_batch} differs from {source}'s "
                f"max_batch_size {user.max_batch_size}"
            )
        max_batch = user.max_batch_size
    if max_batch is None:
        max_batch = art.default_max_batch_size

    # What the user said about the tensors, as full dims (batch dim included when batching).
    user_in = tensors_from_config(user.input) if user is not None else []
    user_out = tensors_from_config(user.output) if user is not None else []
    check_unique(user_in, "input", source)
    check_unique(user_out, "output", source)
    _check_flags_agree(opts.inputs, user_in, "input", source)
    _check_flags_agree(opts.outputs, user_out, "output", source)
    given_in = _with_batch(user_in or opts.inputs, max_batch)
    given_out = _with_batch(user_out or opts.outputs, max_batch)
    if not user_in and not user_out and (opts.inputs or opts.outputs):
        source = "the given tensors"

    if art.inputs is not None and art.outputs is not None:
        # tensors given on one side only: the other side's come from the artifact
        if given_in:
            check_tensors(art.inputs, given_in, "input", source)
        if given_out:
            check_tensors(art.outputs, given_out, "output", source)
        inputs = given_in or list(art.inputs)
        outputs = given_out or list(art.outputs)
    else:
        if not given_in or not given_out:
            missing = " and ".join(
                flag
                for flag, given in (("--input", given_in), ("--output", given_out))
                if not given
            )
            raise ConfigError(
                f"a {art.format} artifact does not declare its tensors: give {missing} "
                "(NAME:DTYPE:DIMS, repeatable) as well, or --config"
            )
        _check_input_count(art, given_in, source)
        _check_output_count(art, given_out, source)
        inputs, outputs = given_in, given_out

    inputs = _strip_batch(inputs, max_batch, "input")
    outputs = _strip_batch(outputs, max_batch, "output")
    check_unique(inputs, "input", source)
    check_unique(outputs, "output", source)

    generated = _generate(name, art, opts, runtime, inputs, outputs, max_batch)
    if user is None:
        return generated
    return _complete_user_config(user, generated, art, opts, source)


def _generate(
    name: str,
    art: Artifact,
    opts: PublishOptions,
    runtime: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch: int,
) -> mc.ModelConfig:
    """The config tritonctl writes when the user gives none."""
    common = {
        "max_batch_size": max_batch,
        "instance_count": opts.instance_count or 1,
        "kind": opts.kind or "auto",
        "dynamic_batching": max_batch > 0,
    }
    if art.format == "python":
        return build_config(name, inputs, outputs, backend="python", **common)  # type: ignore[arg-type]
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
            platform=value if kind_field == "platform" else "",
            backend=value if kind_field == "backend" else "",
            default_model_filename=art.native_filename,
            **common,  # type: ignore[arg-type]
        )
    params = {"tritonctl.runner": art.runner, "tritonctl.artifact": art.runner_artifact}
    params.update(art.runner_parameters)
    return build_config(
        name,
        inputs,
        outputs,
        backend="python",
        parameters=params,
        **common,  # type: ignore[arg-type]
    )


def _complete_user_config(
    user: mc.ModelConfig,
    generated: mc.ModelConfig,
    art: Artifact,
    opts: PublishOptions,
    source: str,
) -> mc.ModelConfig:
    """The user's config with what the runtime needs filled in from ``generated``."""
    config = mc.ModelConfig()
    config.CopyFrom(user)
    config.name = generated.name
    config.max_batch_size = generated.max_batch_size

    # Where it runs: the runtime decides, but a config written for another kind of model
    # is a mistake, not something to overwrite.
    allowed = {"", "python", art.native[1] if art.native else ""}
    allowed |= {_NATIVE_BACKEND.get(v, "") for v in list(allowed)}
    for field_name in ("platform", "backend"):
        value = getattr(user, field_name)
        if value not in allowed:
            raise ConfigError(
                f"{source}: {field_name} {value!r} cannot serve a {art.format} artifact"
                + (f" (native: {art.native[1]!r}; or the python backend)" if art.native else "")
            )
    if generated.platform and user.backend == _NATIVE_BACKEND.get(generated.platform):
        config.platform = ""  # the user's spelling of the same backend
    else:
        config.platform = generated.platform
        config.backend = generated.backend
    if generated.default_model_filename:
        config.default_model_filename = generated.default_model_filename

    if not config.input:
        config.input.extend(generated.input)
    if not config.output:
        config.output.extend(generated.output)

    if not config.instance_group:
        config.instance_group.extend(generated.instance_group)
    else:
        check_instance_flags(config, opts, source)

    for key, value in generated.parameters.items():
        if key in config.parameters and key in RUNNER_KEYS:
            if config.parameters[key].string_value != value.string_value:
                raise ConfigError(
                    f"{source}: parameter {key} is {config.parameters[key].string_value!r}; "
                    f"tritonctl serves this artifact with {value.string_value!r}"
                )
        elif key not in config.parameters:
            config.parameters[key].CopyFrom(value)
    return config


def describe_instances(config: mc.ModelConfig) -> str:
    groups = [
        f"count {g.count or 1} {mc.ModelInstanceGroup.Kind.Name(g.kind)}"
        for g in config.instance_group
    ]
    return "[" + "; ".join(groups) + "]" if groups else "[none: Triton's default]"


def check_instance_flags(config: mc.ModelConfig, opts: PublishOptions, source: str) -> None:
    """Refuse --instance-count/--kind that say otherwise than ``config``'s instance_group."""
    if opts.instance_count is None and opts.kind is None:
        return
    groups = list(config.instance_group)
    if groups:
        # the flags describe the model's instances as a whole: their total, and one kind
        total = sum(g.count or 1 for g in groups)
        count_ok = opts.instance_count is None or total == opts.instance_count
        kind_ok = opts.kind is None or all(
            g.kind == mc.ModelInstanceGroup.Kind.Value(_KINDS[opts.kind]) for g in groups
        )
        if count_ok and kind_ok:
            return
    flags = " ".join(
        f
        for f in (
            f"--instance-count {opts.instance_count}" if opts.instance_count is not None else "",
            f"--kind {opts.kind}" if opts.kind is not None else "",
        )
        if f
    )
    raise ConfigError(
        f"{flags} disagrees with the instance_group {describe_instances(config)} of {source}; "
        "say it in one place"
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


def check_new_version(
    existing: mc.ModelConfig, new: mc.ModelConfig, opts: PublishOptions, user_given: bool
) -> None:
    """Refuse a new version that cannot share the model's config.pbtxt, or whose options
    would not apply: the model's config is kept for every version, so an instance count,
    kind or config given now must say what it already says."""
    compatible(existing, new)
    where = f"model {existing.name!r}'s config.pbtxt"
    advice = (
        "; versions of one model share one config.pbtxt: edit it (and load the model again) "
        "or publish under a new name"
    )
    try:
        check_instance_flags(existing, opts, where)
    except ConfigError as exc:
        raise ConfigError(str(exc).removesuffix("; say it in one place") + advice) from None
    if not user_given:
        return
    a, b = mc.ModelConfig(), mc.ModelConfig()
    a.CopyFrom(existing)
    b.CopyFrom(new)
    a.ClearField("version_policy")  # written by serving for endpoints, not by the user
    b.ClearField("version_policy")
    if a != b:
        names = {f.name for f, _ in a.ListFields()} | {f.name for f, _ in b.ListFields()}
        differ = sorted(n for n in names if getattr(a, n) != getattr(b, n))
        source = str(opts.config_path) if opts.config_path else "the artifact's config.pbtxt"
        raise ConfigError(f"{source} differs from {where} in {', '.join(differ)}" + advice)
