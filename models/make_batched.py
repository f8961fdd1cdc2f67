#!/usr/bin/env python3
"""Turns a batch-1 ONNX model into one that takes any batch size, and checks
the result: a batch of N images must give, image by image, what N single runs
give.

Usage:  make_batched.py IN.onnx OUT.onnx [--fixed N]
Needs onnx, numpy and onnxruntime (the project's light venv).

Exporters bake the batch size into the graph twice: in the declared input and
output shapes, and in Reshape targets such as [1, 64, -1]. The first becomes a
symbolic dimension `batch` (or, with `--fixed N`, the
number N: a model that always takes N frames, which Vigil pads); in the second the leading 1 becomes 0, which
Reshape reads as "copy this dimension from the input", i.e. the batch size.
Any other place a graph could fix the batch (a Reshape whose target is
computed, an Expand to a constant shape) is not rewritten, and the check below
then fails loudly rather than giving a model that mixes up its images.

Vigil batches frames of several cameras into one run when a model accepts it
(see docs/architecture.md, "Cameras share a model"); the benchmark and the batching tests use
models made by this script from the committed ones.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def make_batched(src: str, dst: str, fixed: int = 0) -> None:
    model = onnx.load(src)
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            if fixed:
                dims[0].dim_value = fixed
            else:
                dims[0].ClearField("dim_value")
                dims[0].dim_param = "batch"
    # Shape tensors of Reshape nodes, only those that are initializers or
    # Constant nodes (what exporters write).
    targets = {n.input[1] for n in graph.node if n.op_type == "Reshape" and len(n.input) > 1}
    rewritten = 0
    for init in graph.initializer:
        if init.name in targets:
            a = numpy_helper.to_array(init).copy()
            if a.ndim == 1 and a.size > 1 and a[0] == 1:
                a[0] = 0
                init.CopyFrom(numpy_helper.from_array(a, init.name))
                rewritten += 1
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in targets:
            for attr in node.attribute:
                if attr.name == "value":
                    a = numpy_helper.to_array(attr.t).copy()
                    if a.ndim == 1 and a.size > 1 and a[0] == 1:
                        a[0] = 0
                        attr.t.CopyFrom(numpy_helper.from_array(a, attr.t.name))
                        rewritten += 1
    # Shape inference recorded batch-1 shapes for intermediate values; drop
    # them so nothing downstream trusts them.
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    check(src, dst, fixed or 3)
    kind = f"fixed at {fixed}" if fixed else "dynamic"
    print(f"{dst}: batch is {kind} ({rewritten} reshape targets rewritten)")


def check(single_path: str, batched_path: str, n: int = 3) -> None:
    single = ort.InferenceSession(single_path, providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(batched_path, providers=["CPUExecutionProvider"])
    inp = single.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(7)
    images = [rng.random(shape, dtype=np.float32) for _ in range(n)]
    one_by_one = [single.run(None, {inp.name: im}) for im in images]
    together = batched.run(None, {inp.name: np.concatenate(images)})
    for k, out in enumerate(together):
        if out.shape[0] != n:
            sys.exit(f"output {k} has batch {out.shape[0]}, not {n}: the graph fixes its batch elsewhere")
        for i in range(n):
            ref = one_by_one[i][k][0]
            if not np.allclose(out[i], ref, rtol=1e-4, atol=1e-4):
                worst = float(np.max(np.abs(out[i] - ref)))
                sys.exit(f"output {k}, image {i}: batched run differs from single run by {worst}")


if __name__ == "__main__":
    args = sys.argv[1:]
    fixed = 0
    if len(args) == 4 and args[2] == "--fixed":
        fixed = int(args[3])
        args = args[:2]
    if len(args) != 2 or fixed < 0:
        sys.exit(__doc__)
    make_batched(args[0], args[1], fixed)
