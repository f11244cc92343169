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
from dataclasses import replace
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
                "(a scalar is dims [1] with reshape { shape: [] })"
            )


def _strip_batch(specs: Sequence[TensorSpec], max_batch_size: int, what: str) -> list[TensorSpec]:
    """Dims past the batch dimension. Triton needs at least one dim: a scalar per batch
    item becomes ``dims [1]`` with ``reshape []`` (Triton's way); a scalar of an unbatched
    model becomes ``dims [1]`` (Triton refuses an empty reshape without batching, so the
    runner, which sees the graph's shape, takes the scalar out of it)."""
    if max_batch_size == 0:
        return [replace(s, dims=(1,)) if not s.dims and s.reshape is None else s for s in specs]
    out = []
    for s in specs:
        if not s.dims or s.dims[0] != -1 or (s.reshape is not None and s.reshape[:1] != (-1,)):
            raise ConfigError(
                f"{what} {s.name!r} has dims {list(s.model_dims)}: batching (max_batch_size "
                f"{max_batch_size}) needs a dynamic leading dimension"
            )
        spec = TensorSpec(
            s.name, s.dtype, s.dims[1:], s.reshape[1:] if s.reshape is not None else None
        )
        if not spec.dims and spec.reshape is None:
            spec = replace(spec, dims=(1,), reshape=())
        out.append(spec)
    return out


def _scalar_reshapes(
    declared: Sequence[TensorSpec], given: Sequence[TensorSpec], max_batch_size: int
) -> list[TensorSpec]:
    """``given`` tensors (full dims) with the reshape the artifact implies: a scalar per
    batch item given as dims [1] is Triton's ``dims [1]`` with ``reshape []``."""
    if max_batch_size == 0:
        return list(given)  # an unbatched scalar is dims [1] without reshape: see check_tensors
    by_name = {s.name: s for s in declared}
    out = []
    for s in given:
        d = by_name.get(s.name)
        if d is not None and s.reshape is None and d.dims == (-1,) and s.dims == (-1, 1):
            s = replace(s, reshape=(-1,))
        out.append(s)
    return out


def _check_scalars_servable(
    art: Artifact,
    config_in: Sequence[TensorSpec],
    config_out: Sequence[TensorSpec],
    max_batch: int,
    runtime: str,
    source: str,
) -> None:
    """Refuse what Triton cannot load for a scalar tensor of an unbatched model: an empty
    reshape (refused without batching), or dims [1] for the native backend, which compares
    dims with the graph's shape []."""
    if max_batch > 0:
        return
    for what, specs in (("input", config_in), ("output", config_out)):
        for s in specs:
            if s.reshape == ():
                raise ConfigError(
                    f"{source}: {what} {s.name!r} has an empty reshape, which Triton refuses "
                    "in a model without batching (max_batch_size 0); give it dims [1] "
                    "without reshape (tritonctl's runner passes the scalar to the model)"
                )
    if runtime != "native" or art.inputs is None or art.outputs is None:
        return
    scalars = [s.name for s in (*art.inputs, *art.outputs) if not s.dims]
    served = {s.name for s in (*config_in, *config_out)}
    for name in scalars:
        if name in served:
            raise ConfigError(
                f"tensor {name!r} of {art.source} is a scalar (shape []): Triton's native "
                "backends cannot serve a scalar of a model without batching (an empty "
                "reshape needs max_batch_size > 0). Publish with --runtime python (its runner "
                "takes dims [1] for it), or export the model with a batch dimension and "
                "publish it with --max-batch-size"
            )


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
        dims = s.model_dims
        if not d.dims and dims == (1,) and s.reshape is None:
            continue  # an unbatched scalar: Triton needs a dim, the runner takes it out
        if len(d.dims) != len(dims) or any(
            a != b and a != -1 for a, b in zip(d.dims, dims, strict=False)
        ):
            shown = f"dims {list(s.dims)}" + (
                f" reshaped to {list(s.reshape)}" if s.reshape is not None else ""
            )
            raise ConfigError(
                f"{source}: {what} {s.name!r} has {shown}, the artifact has {list(d.dims)}"
            )
    missing = [n for n in by_name if n not in given_names]
    if missing and what == "input":
        raise ConfigError(f"{source}: input {missing[0]!r} of the artifact is missing")


def _with_batch(specs: Sequence[TensorSpec], max_batch_size: int) -> list[TensorSpec]:
    """Full dims (the batch dim included when batching) of dims as config.pbtxt gives them."""
    if max_batch_size == 0:
        return list(specs)
    return [
        TensorSpec(s.name, s.dtype, (-1, *s.dims), None if s.reshape is None else (-1, *s.reshape))
        for s in specs
    ]


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
        # a flag gives no reshape: it agrees with a config of its dims, reshaped or not
        agrees = c is not None and (
            c == s or (s.reshape is None and (c.dtype, c.dims) == (s.dtype, s.dims))
        )
        if not agrees:
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
        given_in = _scalar_reshapes(art.inputs, given_in, max_batch)
        given_out = _scalar_reshapes(art.outputs, given_out, max_batch)
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
    _check_scalars_servable(art, inputs, outputs, max_batch, runtime, source)
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
