"""Helpers shared by the frontend tests: ONNX models written as text, fixed random weights, the onnxruntime check.

A model is the body of an ONNX text graph plus a dict of numpy weights, which become initializers (or Constant
nodes). ``check_against_onnxruntime`` imports it, runs it with :func:`run_analog` before and after canonicalize and
compares both against onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from snncc.frontend.onnx import import_onnx
from snncc.ir import Graph, ops
from snncc.passes import run_pipeline
from snncc.runtime import run_analog

#: Every opset the tests cover; the ones where an op's text form is the same are parametrized over these.
OPSETS = (7, 9, 11, 13, 17, 21)
RTOL = 1e-4


def ir_version(opset: int) -> int:
    """An IR version onnxruntime accepts together with ``opset``."""
    if opset <= 12:
        return 7
    if opset <= 17:
        return 8
    if opset <= 20:
        return 9
    return 10


def make_model(body: str, opset: int, weights: dict[str, np.ndarray] | None = None,
               inputs: str = "float[N,1,8,8] x", outputs: str = "y", constant_nodes: bool = False,
               extra_opsets: str = "") -> onnx.ModelProto:
    """Parse an ONNX text graph with ``body`` and add ``weights`` as initializers (or as Constant nodes).

    ``outputs`` are names only; their shapes come from ONNX shape inference so the tests need not spell them out.
    """
    names = ", ".join(f"float {name.strip()}" for name in outputs.split(","))
    domains = f'"" : {opset}' + (f", {extra_opsets}" if extra_opsets else "")
    text = (f"<ir_version: {ir_version(opset)}, opset_import: [{domains}]>\n"
            f"net ({inputs}) => ({names}) {{\n{body}\n}}")
    model = onnx.parser.parse_model(text)
    tensors = [numpy_helper.from_array(np.asarray(value), name=name) for name, value in (weights or {}).items()]
    if constant_nodes:
        nodes = [onnx.helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in tensors]
        old = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes + old)
    else:
        model.graph.initializer.extend(tensors)
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    for out in model.graph.output:
        if inferred[out.name].type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inferred[out.name].type)
        else:  # the checker wants a shape; shape inference could not tell the rank
            out.type.tensor_type.shape.SetInParent()
    onnx.checker.check_model(model)
    return model


class Weights:
    """Fixed random float32 arrays from ``np.random.default_rng(seed)``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, *shape: int, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def uniform(self, *shape: int, low: float = 0.5, high: float = 2.0) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    def conv(self, out_ch: int, in_ch: int, kh: int, kw: int | None = None) -> np.ndarray:
        kw = kh if kw is None else kw
        return self.normal(out_ch, in_ch, kh, kw, scale=1.0 / np.sqrt(in_ch * kh * kw))

    def batchnorm(self, channels: int) -> dict[str, np.ndarray]:
        """gamma, beta, mean and (positive) var of an inference BatchNormalization."""
        return {"gamma": self.uniform(channels), "beta": self.normal(channels), "mean": self.normal(channels),
                "var": self.uniform(channels, low=0.2, high=1.5)}


def samples(shape: tuple[int, ...], seed: int = 0, n: int = 5) -> np.ndarray:
    """``n`` samples of per-sample ``shape``."""
    return np.random.default_rng(1000 + seed).standard_normal((n, *shape)).astype(np.float32)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnxruntime_output(model: onnx.ModelProto, x: np.ndarray, per_sample: bool = False) -> np.ndarray:
    """First output of ``model`` under onnxruntime; ``per_sample`` runs a batch-1 model once per sample."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    if per_sample:
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return sess.run(None, {name: x})[0]


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|."""
    assert got.shape == ref.shape, f"shape {got.shape} != onnxruntime's {ref.shape}"
    scale = float(np.max(np.abs(ref)))
    assert scale > 0, "the reference output is all zeros; the test model is degenerate"
    return float(np.max(np.abs(got.astype(np.float64) - ref))) / scale


def assert_matches(got: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    err = relative_error(got, ref)
    assert err <= RTOL, f"{what}: relative error {err:.3g} exceeds {RTOL}"


def check_against_onnxruntime(model: onnx.ModelProto, x: np.ndarray, *, per_sample: bool = False,
                              no_affine: bool = False) -> tuple[Graph, Graph]:
    """Import ``model``; its output and its canonical form's must equal onnxruntime's. Returns both graphs.

    The canonical graph never keeps an Identity; with ``no_affine`` it must not keep an Affine either.
    """
    ref = onnxruntime_output(model, x, per_sample)
    graph = import_onnx(model)
    assert_matches(run_analog(graph, x)[0], ref, "imported graph")
    canonical = run_pipeline(graph, "canonicalize")
    assert_matches(run_analog(canonical, x)[0], ref, "canonical graph")
    assert not canonical.find(ops.Identity), f"canonicalize left Identity nodes {canonical.find(ops.Identity)}"
    if no_affine:
        assert not canonical.find(ops.Affine), f"canonicalize left Affine nodes {canonical.find(ops.Affine)}"
    return graph, canonical


def kinds(graph: Graph) -> list[str]:
    """Op kinds of ``graph`` in topological order."""
    return [graph.op(n).kind for n in graph.topological_order()]
