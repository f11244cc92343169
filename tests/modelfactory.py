"""Small models the tests build themselves (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_onnx(
    path: Path,
    *,
    in_dims: tuple[int | str | None, ...] = ("batch", 4),
    out_features: int = 2,
    seed: int = 0,
    input_name: str = "x",
    output_name: str = "y",
) -> tuple[np.ndarray, np.ndarray]:
    """A linear layer y = x @ W + b as an ONNX file; returns (W, b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    in_features = int(in_dims[-1])  # type: ignore[arg-type]
    w = rng.standard_normal((in_features, out_features)).astype(np.float32)
    b = rng.standard_normal((out_features,)).astype(np.float32)
    out_dims = (*in_dims[:-1], out_features)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], [output_name]),
        ],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(in_dims))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(out_dims))],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w, b


def make_torchscript(
    path: Path, *, in_features: int = 4, out_features: int = 2, seed: int = 0
) -> object:
    """A scripted torch Linear saved with torch.jit.save; returns the module."""
    import torch

    torch.manual_seed(seed)
    module = torch.jit.script(
        torch.nn.Sequential(torch.nn.Linear(in_features, out_features), torch.nn.Tanh())
    )
    torch.jit.save(module, str(path))
    return module


def write_python_model(folder: Path, *, with_config: bool = True, name: str | None = None) -> Path:
    """A Python-backend model folder (model.py + config.pbtxt) that adds 1 to its input."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(PYTHON_ADD_ONE)
    if with_config:
        lines = [f'name: "{name}"'] if name else []
        lines += [
            'backend: "python"',
            "max_batch_size: 0",
            'input [{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }]',
            'output [{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }]',
        ]
        (folder / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return folder


PYTHON_ADD_ONE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return responses
"""


# Version N answers x + N: the version is read from Triton's args, so one source serves
# every version and the answers tell the versions apart.
ADD_VERSION_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.add = np.float32(int(args["model_version"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", x + self.add)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def write_source_model(folder: Path, name: str, model_py: str = ADD_VERSION_PY) -> Path:
    """A Python-backend model folder to publish: ``model_py`` and a config of one FP32
    vector ``INPUT0`` -> ``OUTPUT0`` (any length, no batching) on CPU."""
    from manager.modelconfig import TensorSpec, build_config, write_config

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(model_py)
    config = build_config(
        name,
        [TensorSpec("INPUT0", "FP32", (-1,))],
        [TensorSpec("OUTPUT0", "FP32", (-1,))],
        backend="python",
        kind="cpu",
    )
    write_config(folder / "config.pbtxt", config)
    return folder


def make_onnx_with_external_data(
    folder: Path, *, data: str = "weights.bin", seed: int = 0
) -> tuple[Path, np.ndarray, np.ndarray]:
    """The linear model of :func:`make_onnx` saved as ``folder/model.onnx`` with its
    tensors in the external data file ``folder/<data>``; returns (path, W, b)."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    single = folder / ".single.onnx"
    w, b = make_onnx(single, seed=seed)
    model = onnx.load(str(single))
    single.unlink()
    path = folder / "model.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=0,
    )
    return path, w, b


def make_onnx_with_scalars(path: Path, *, batched: bool = False) -> None:
    """``y = x * s`` and ``r = sum(y)`` with a scalar input ``s`` and a scalar output
    ``r``: unbatched, x [4], s [] -> y [4], r []; batched, x [batch, 4], s [batch] ->
    y [batch, 4], r [batch] (a scalar per batch item)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    lead: list[int | str] = ["batch"] if batched else []
    axis = 1 if batched else 0
    nodes = []
    scale = "s"
    if batched:
        nodes.append(helper.make_node("Unsqueeze", ["s", "one"], ["s_col"]))
        scale = "s_col"
    nodes += [
        helper.make_node("Mul", ["x", scale], ["y"]),
        helper.make_node("ReduceSum", ["y", "axis"], ["r"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "scalars",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, lead),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, 4]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, lead),
        ],
        initializer=[
            numpy_helper.from_array(np.array([axis], dtype=np.int64), "axis"),
            *([numpy_helper.from_array(np.array([1], dtype=np.int64), "one")] if batched else []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_onnx_strings(path: Path) -> None:
    """``u = t`` (Identity) for a string tensor: t STRING [batch, 2] -> u STRING [batch, 2]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["t"], ["u"])],
        "strings",
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("u", TensorProto.STRING, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# A word list for the tiny Hugging Face models: every word is in the vocabulary.
TEXT_WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "far",
    "away",
    "sky",
    "is",
    "blue",
    "red",
    "good",
    "bad",
    "movie",
    "film",
    "was",
    "great",
    "awful",
    "not",
    "very",
]
TEXT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TEXT_WORDS]


def write_tiny_classifier(
    folder: Path,
    *,
    labels: tuple[str, ...] = ("negative", "neutral", "positive"),
    problem_type: str | None = None,
    model_max_length: int = 12,
    seed: int = 0,
) -> Path:
    """A tiny ``BertForSequenceClassification`` folder with its tokenizer (built here, nothing
    downloaded): ``id2label`` from ``labels``, the tokenizer truncating at ``model_max_length``
    tokens by itself (as a hub tokenizer does at 512)."""
    import torch
    from transformers import (  # type: ignore[attr-defined]
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
    )

    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TEXT_VOCAB) + "\n")
    # from the folder's vocab.txt: transformers 5 ignores a vocab_file argument (every word
    # would be [UNK]), and 4.x a vocab one
    tokenizer = BertTokenizerFast.from_pretrained(
        folder, do_lower_case=True, model_max_length=model_max_length
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(TEXT_VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
        initializer_range=0.5,  # wide weights: sentences differ in their logits and labels
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


def classify_with_torch(folder: Path, sentences: list[str]) -> tuple[np.ndarray, list[str]]:
    """The logits and the ``id2label`` name of the highest logit of each sentence, from
    ``AutoModelForSequenceClassification`` run directly, one sentence at a time (no padding;
    truncated as the folder's tokenizer truncates by itself)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    model.eval()
    rows = []
    with torch.no_grad():
        for sentence in sentences:
            batch = tokenizer(sentence, truncation=True, return_tensors="pt")
            rows.append(model(**batch).logits[0].numpy())
    logits = np.stack(rows)
    return logits, [model.config.id2label[int(i)] for i in logits.argmax(axis=1)]
