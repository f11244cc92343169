"""Example export step of a model pipeline: writes the artifact and its golden requests.

A real pipeline exports its trained model here (torch.onnx.export, torch.jit.save, ...);
this example builds a small ONNX graph so that the workflow runs anywhere, then records
golden requests: inputs and the outputs the exported model must give for them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from manager.golden import save_case


def export(out: Path) -> Path:
    rng = np.random.default_rng(42)
    w = rng.standard_normal((8, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["z"]),
            helper.make_node("Add", ["z", "B"], ["logits"]),
        ],
        "ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def record_golden(model: Path, folder: Path) -> None:
    session = ort.InferenceSession(str(model))
    rng = np.random.default_rng(0)
    for i in range(3):
        x = rng.standard_normal((4, 8)).astype(np.float32)
        save_case(
            folder, f"case{i}", {"features": x}, {"logits": session.run(None, {"features": x})[0]}
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--golden", type=Path, required=True)
    args = parser.parse_args()
    record_golden(export(args.out), args.golden)
    print(f"exported {args.out}, golden requests in {args.golden}")
