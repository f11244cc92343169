"""The config.pbtxt a version is published with: the user's kept, tensors checked, and
options that a later version could not apply refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from manager.errors import ConfigError
from manager.modelconfig import TensorSpec, read_config
from manager.publish import PublishOptions, publish
from tests.modelfactory import make_onnx, write_python_model

FULL_CONFIG = """
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 250 }
instance_group [{ count: 3 kind: KIND_CPU }]
optimization { input_pinned_memory { enable: false } }
model_warmup [{
  name: "ones" batch_size: 1
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
}]
version_policy { latest { num_versions: 2 } }
parameters { key: "tritonctl.threads" value: { string_value: "2" } }
parameters { key: "team" value: { string_value: "search" } }
"""


@pytest.fixture
def full_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.pbtxt"
    path.write_text(FULL_CONFIG)
    return path


def assert_user_fields_kept(config: mc.ModelConfig) -> None:
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (3, mc.ModelInstanceGroup.KIND_CPU)
    ]
    assert config.optimization.input_pinned_memory.enable is False
    assert config.optimization.HasField("input_pinned_memory")
    assert [w.name for w in config.model_warmup] == ["ones"]
    assert config.version_policy.latest.num_versions == 2
    assert config.parameters["tritonctl.threads"].string_value == "2"
    assert config.parameters["team"].string_value == "search"
    assert config.max_batch_size == 8


@pytest.mark.parametrize("runtime", ["native", "python"])
def test_onnx_user_config_keeps_every_field_the_user_wrote(repo, onnx_file, full_config, runtime):
    publish(repo, "lin", onnx_file, PublishOptions(runtime=runtime, config_path=full_config))
    config = read_config(repo.config_path("lin"))
    assert_user_fields_kept(config)
    assert config.name == "lin"
    if runtime == "native":
        assert config.platform == "onnxruntime_onnx"
        assert config.default_model_filename == "model.onnx"
    else:
        assert config.backend == "python" and not config.platform
        assert config.parameters["tritonctl.runner"].string_value == "onnx"
        assert config.parameters["tritonctl.artifact"].string_value == "model.onnx"


@pytest.mark.parametrize("runtime", ["native", "python"])
def test_torchscript_user_config_keeps_every_field_the_user_wrote(
    repo, pt_file, full_config, runtime
):
    publish(repo, "ts", pt_file, PublishOptions(runtime=runtime, config_path=full_config))
    config = read_config(repo.config_path("ts"))
    assert_user_fields_kept(config)
    expected = "pytorch_libtorch" if runtime == "native" else ""
    assert config.platform == expected


def test_python_folder_config_keeps_every_field_the_user_wrote(repo, tmp_path):
    folder = write_python_model(tmp_path / "py", with_config=False)
    (folder / "config.pbtxt").write_text(
        FULL_CONFIG.replace('"x"', '"X"')
        .replace('"y"', '"Y"')
        .replace("dims: [ 4 ]", "dims: [ -1 ]")
    )
    publish(repo, "py", folder)
    config = read_config(repo.config_path("py"))
    assert config.backend == "python"
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.instance_group[0].count == 3
    assert config.parameters["team"].string_value == "search"


def test_user_config_without_scheduling_gets_no_dynamic_batching_added(repo, onnx_file, tmp_path):
    cfg = tmp_path / "plain.pbtxt"
    cfg.write_text(
        'max_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]\n'
    )
    publish(repo, "lin", onnx_file, PublishOptions(runtime="native", config_path=cfg))
    config = read_config(repo.config_path("lin"))
    assert not config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, mc.ModelInstanceGroup.KIND_AUTO)
    ]


def test_user_config_tensor_mismatch_is_still_refused(repo, onnx_file, tmp_path):
    cfg = tmp_path / "bad.pbtxt"
    cfg.write_text(FULL_CONFIG.replace("dims: [ 2 ]", "dims: [ 3 ]"))
    with pytest.raises(ConfigError, match=r"output 'y' has dims \[-1, 3\]"):
        publish(repo, "lin", onnx_file, PublishOptions(runtime="native", config_path=cfg))
    assert not repo.has_model("lin")


def test_user_config_for_another_platform_is_refused(repo, onnx_file, tmp_path):
    cfg = tmp_path / "tf.pbtxt"
    cfg.write_text('platform: "tensorflow_savedmodel"\n' + FULL_CONFIG)
    with pytest.raises(ConfigError, match="platform 'tensorflow_savedmodel' cannot serve"):
        publish(repo, "lin", onnx_file, PublishOptions(runtime="native", config_path=cfg))


def test_user_config_naming_the_native_backend_is_accepted(repo, onnx_file, tmp_path):
    cfg = tmp_path / "ort.pbtxt"
    cfg.write_text('backend: "onnxruntime"\n' + FULL_CONFIG)
    publish(repo, "lin", onnx_file, PublishOptions(runtime="native", config_path=cfg))
    config = read_config(repo.config_path("lin"))
    assert config.backend == "onnxruntime" and not config.platform


def test_a_native_backend_asked_for_on_a_host_without_it_is_served_by_a_runner_with_a_notice(
    repo, onnx_file, tmp_path, monkeypatch
):
    monkeypatch.delenv("TRITONCTL_RUNTIME", raising=False)
    monkeypatch.setattr("manager.runtime.native_backends_available", lambda: False)
    cfg = tmp_path / "ort.pbtxt"
    cfg.write_text('backend: "onnxruntime"\n' + FULL_CONFIG)
    result = publish(repo, "lin", onnx_file, PublishOptions(config_path=cfg))
    assert read_config(repo.config_path("lin")).backend == "python"
    assert any("asks for backend 'onnxruntime'" in n for n in result.notices), result.notices
    # without a backend named, the runner is no news
    plain = publish(repo, "lin2", onnx_file, PublishOptions())
    assert not any("asks for" in n for n in plain.notices)


@pytest.mark.parametrize(
    ("inputs", "outputs", "match"),
    [
        ([TensorSpec("x", "FP32", (5,))], [], r"--input x FP32\[5\] disagrees with"),
        ([TensorSpec("z", "FP32", (4,))], [], "no such input"),
        ([], [TensorSpec("y", "FP16", (2,))], r"--output y FP16\[2\] disagrees"),
        (
            [TensorSpec("x", "FP32", (4,)), TensorSpec("w", "FP32", (4,))],
            [],
            "no such input",
        ),
    ],
)
def test_tensor_flags_that_disagree_with_the_config_are_refused(
    repo, onnx_file, full_config, inputs, outputs, match
):
    opts = PublishOptions(runtime="native", config_path=full_config, inputs=inputs, outputs=outputs)
    with pytest.raises(ConfigError, match=match):
        publish(repo, "lin", onnx_file, opts)
    assert not repo.has_model("lin")


def test_tensor_flags_that_agree_with_the_config_are_accepted(repo, onnx_file, full_config):
    opts = PublishOptions(
        runtime="native",
        config_path=full_config,
        inputs=[TensorSpec("x", "FP32", (4,))],
        outputs=[TensorSpec("y", "FP32", (2,))],
    )
    assert publish(repo, "lin", onnx_file, opts).version == 1


@pytest.mark.parametrize(("flag", "spec"), [("inputs", "x:FP32:-1,4"), ("outputs", "y:FP32:-1,2")])
def test_tensors_given_on_one_side_only_take_the_other_side_from_the_graph(
    repo, onnx_file, flag, spec
):
    opts = PublishOptions(runtime="native", **{flag: [TensorSpec.parse(spec)]})
    config = publish(repo, "lin", onnx_file, opts).config
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [-1, 4])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [-1, 2])]


def test_an_output_flag_alone_is_still_checked_against_the_graph(repo, onnx_file):
    opts = PublishOptions(runtime="native", outputs=[TensorSpec.parse("y:FP32:-1,3")])
    with pytest.raises(ConfigError, match=r"output 'y' has dims \[-1, 3\], the artifact has"):
        publish(repo, "lin", onnx_file, opts)


@pytest.mark.parametrize(
    ("count", "kind", "ok"),
    [
        (3, None, True),
        (None, "cpu", True),
        (3, "cpu", True),
        (2, None, False),
        (None, "gpu", False),
    ],
)
@pytest.mark.parametrize("groups", ["one group of 3", "groups of 1 and 2"])
def test_instance_flags_must_agree_with_the_configs_instance_group(
    repo, onnx_file, full_config, tmp_path, count, kind, ok, groups
):
    config = full_config
    if groups == "groups of 1 and 2":  # the flags describe all the instances together
        config = tmp_path / "two_groups.pbtxt"
        config.write_text(
            "max_batch_size: 8\n"
            "instance_group [{ count: 1 kind: KIND_CPU }, { count: 2 kind: KIND_CPU }]\n"
        )
    opts = PublishOptions(runtime="native", config_path=config, instance_count=count, kind=kind)
    if ok:
        publish(repo, "lin", onnx_file, opts)
        return
    with pytest.raises(ConfigError, match="disagrees with the instance_group"):
        publish(repo, "lin", onnx_file, opts)


# -- TorchScript and the given tensors ---------------------------------------------------


def ts_opts(inputs: list[str], outputs: list[str], **kw: object) -> PublishOptions:
    return PublishOptions(
        runtime="native",
        inputs=[TensorSpec.parse(t) for t in inputs],
        outputs=[TensorSpec.parse(t) for t in outputs],
        **kw,  # type: ignore[arg-type]
    )


def test_torchscript_with_more_inputs_than_forward_takes_is_refused(repo, pt_file):
    with pytest.raises(ConfigError, match=r"2 input\(s\) given, but the torchscript module's "):
        publish(repo, "ts", pt_file, ts_opts(["a:FP32:-1,4", "b:FP32:-1,4"], ["y:FP32:-1,2"]))
    assert not repo.has_model("ts")


def test_torchscript_with_more_outputs_than_forward_returns_is_refused(repo, pt_file):
    with pytest.raises(ConfigError, match=r"2 output\(s\) given, but .* returns 1"):
        publish(repo, "ts", pt_file, ts_opts(["x:FP32:-1,4"], ["y:FP32:-1,2", "z:FP32:-1,2"]))


def test_torchscript_input_count_from_a_config_is_checked_too(repo, pt_file, tmp_path):
    cfg = tmp_path / "two.pbtxt"
    cfg.write_text(
        'input [{ name: "a" data_type: TYPE_FP32 dims: [ 4 ] },'
        '{ name: "b" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]\n'
    )
    with pytest.raises(ConfigError, match=r"forward\(\) takes 1"):
        publish(repo, "ts", pt_file, PublishOptions(runtime="native", config_path=cfg))


def scripted(tmp_path: Path, name: str, source: str) -> Path:
    """``source`` (a module defining class M) scripted and saved as ``<name>.pt``:
    torch.jit.script reads a class's source, so it is written to a file first."""
    import importlib.util

    import torch

    path = tmp_path / f"{name}.py"
    path.write_text("import torch\n" + source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pt = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script(mod.M()), str(pt))
    return pt


def test_torchscript_forward_with_default_arguments_takes_a_range(repo, tmp_path):
    pt = scripted(
        tmp_path,
        "two_args",
        "class M(torch.nn.Module):\n"
        "    def forward(self, x, y: torch.Tensor = torch.zeros(1)):\n"
        "        return x + y\n",
    )
    publish(repo, "one", pt, ts_opts(["x:FP32:-1"], ["y:FP32:-1"]))
    publish(repo, "two", pt, ts_opts(["x:FP32:-1", "y:FP32:-1"], ["y:FP32:-1"]))
    with pytest.raises(ConfigError, match="takes 1 to 2"):
        publish(repo, "three", pt, ts_opts(["a:FP32:-1", "b:FP32:-1", "c:FP32:-1"], ["y:FP32:-1"]))


def test_torchscript_module_argument_is_not_counted_whatever_its_name(repo, tmp_path):
    pt = scripted(
        tmp_path,
        "named_s",
        "class M(torch.nn.Module):\n"
        "    def __init__(s):\n"
        "        super().__init__()\n"
        "        s.lin = torch.nn.Linear(4, 2)\n"
        "    def forward(s, x):\n"
        "        return s.lin(x)\n",
    )
    # forward(__torch__.M s, Tensor x): one input
    publish(repo, "one", pt, ts_opts(["x:FP32:-1,4"], ["y:FP32:-1,2"]))
    with pytest.raises(ConfigError, match=r"forward\(\) takes 1"):
        publish(repo, "two", pt, ts_opts(["x:FP32:-1,4", "z:FP32:-1,4"], ["y:FP32:-1,2"]))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_duplicate_tensor_names_are_refused_for_any_format(repo, pt_file, onnx_file, fmt):
    artifact = pt_file if fmt == "torchscript" else onnx_file
    with pytest.raises(ConfigError, match="input 'x' is given 2 times"):
        publish(repo, "m", artifact, ts_opts(["x:FP32:-1,4", "x:FP32:-1,4"], ["y:FP32:-1,2"]))
    with pytest.raises(ConfigError, match="output 'y' is given 2 times"):
        publish(repo, "m", artifact, ts_opts(["x:FP32:-1,4"], ["y:FP32:-1,2", "y:FP32:-1,2"]))
    assert not repo.has_model("m")


def test_duplicate_tensor_names_in_a_config_are_refused(repo, pt_file, tmp_path):
    cfg = tmp_path / "dup.pbtxt"
    cfg.write_text(
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] },'
        '{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]\n'
    )
    with pytest.raises(ConfigError, match="output 'y' is given 2 times"):
        publish(repo, "ts", pt_file, PublishOptions(runtime="native", config_path=cfg))


def test_empty_dims_in_a_config_are_refused(repo, pt_file, tmp_path):
    cfg = tmp_path / "empty.pbtxt"
    cfg.write_text(
        'input [{ name: "x" data_type: TYPE_FP32 }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]\n'
    )
    with pytest.raises(ConfigError, match="input 'x' has no dims"):
        publish(repo, "ts", pt_file, PublishOptions(runtime="native", config_path=cfg))


def test_batching_a_one_dimensional_tensor_gives_a_scalar_per_item_as_dims_1_reshaped(
    repo, tmp_path
):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "vec",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
    )
    path = tmp_path / "vec.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    result = publish(repo, "vec", path, PublishOptions(runtime="native", max_batch_size=4))
    # Triton needs a dim past the batch dim: a scalar per item is dims [1], reshaped to []
    for tensor in (*result.config.input, *result.config.output):
        assert list(tensor.dims) == [1]
        assert tensor.HasField("reshape") and list(tensor.reshape.shape) == []
    published = read_config(repo.config_path("vec"))
    assert published.input[0].HasField("reshape")  # an empty reshape survives the file
    result = publish(repo, "vec1", path, PublishOptions(runtime="native"))
    assert list(result.config.input[0].dims) == [-1]  # unbatched: dims [-1]
    assert not result.config.input[0].HasField("reshape")


# -- a later version shares the model's config --------------------------------------------


def test_instance_flags_on_a_later_version_must_match_the_model(repo, onnx_file):
    publish(repo, "lin", onnx_file, PublishOptions(runtime="native", instance_count=2))
    publish(repo, "lin", onnx_file, PublishOptions(runtime="native"))  # nothing said: fine
    publish(repo, "lin", onnx_file, PublishOptions(runtime="native", instance_count=2))
    with pytest.raises(ConfigError, match=r"--instance-count 3 disagrees .* share one config"):
        publish(repo, "lin", onnx_file, PublishOptions(runtime="native", instance_count=3))
    with pytest.raises(ConfigError, match="--kind gpu disagrees"):
        publish(repo, "lin", onnx_file, PublishOptions(runtime="native", kind="gpu"))
    assert repo.versions("lin") == [1, 2, 3]


def test_a_different_config_on_a_later_version_is_refused_naming_the_fields(
    repo, onnx_file, full_config, tmp_path
):
    publish(repo, "lin", onnx_file, PublishOptions(runtime="native", config_path=full_config))
    # the same config again, and serving's version policy in the model's config: fine
    path = repo.config_path("lin")
    path.write_text(path.read_text().replace("num_versions: 2", "num_versions: 1"))
    publish(repo, "lin", onnx_file, PublishOptions(runtime="native", config_path=full_config))
    changed = tmp_path / "changed.pbtxt"
    changed.write_text(
        FULL_CONFIG.replace("max_queue_delay_microseconds: 250", "").replace("count: 3", "count: 1")
    )
    with pytest.raises(ConfigError, match=r"differs from .* in dynamic_batching, instance_group"):
        publish(repo, "lin", onnx_file, PublishOptions(runtime="native", config_path=changed))
    assert repo.versions("lin") == [1, 2]


def test_runtime_native_for_a_transformers_folder_is_refused(repo, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(ConfigError, match="transformers artifact has no native Triton runtime"):
        publish(repo, "hf", folder, PublishOptions(runtime="native"))


def test_a_later_version_takes_the_models_max_batch_size(repo, onnx_file, tmp_path):
    publish(repo, "lin", onnx_file, PublishOptions(max_batch_size=8))
    second = tmp_path / "second.onnx"
    make_onnx(second, seed=1)
    # no --max-batch-size: the model's 8, not the artifact's default 0
    assert publish(repo, "lin", second, PublishOptions()).config.max_batch_size == 8
    assert publish(repo, "lin", second, PublishOptions(instance_count=1)).version == 3
    with pytest.raises(ConfigError, match="max_batch_size 8; this version needs 0"):
        publish(repo, "lin", second, PublishOptions(max_batch_size=0))


def test_as_embedder_is_refused_for_what_is_not_a_transformers_folder(repo, onnx_file):
    with pytest.raises(ConfigError, match="--as-embedder applies to transformers folders"):
        publish(repo, "lin", onnx_file, PublishOptions(as_embedder=True))
    assert not repo.has_model("lin")
