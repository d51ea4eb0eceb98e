"""Every op the ONNX frontend converts, on small models written as ONNX text, checked against onnxruntime.

Each test builds a model with fixed random weights, imports it, and compares :func:`run_analog` of the imported
graph and of its canonical form with onnxruntime (relative error <= 1e-4, see ``onnx_models``). Where canonicalize
should fold (BatchNorm, input normalization, bias Adds, Pad before Conv) the canonical graph is checked for leftovers.
Opsets 7, 9, 11, 13, 17 and 21 are covered; ops whose text form changed between opsets are written per opset.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from snncc.frontend.onnx import import_onnx
from snncc.ir import ops
from snncc.runtime import run_analog
from tests.frontend.onnx_models import (OPSETS, Weights, assert_matches, check_against_onnxruntime, kinds,
                                        make_model, onnxruntime_output, samples)

OPSETS_10_UP = tuple(o for o in OPSETS if o >= 10)  # ceil_mode on pools, Slice with inputs
OPSETS_9_UP = tuple(o for o in OPSETS if o >= 9)  # ConstantOfShape


def _grid(cases: object, min_opset: dict[object, int] | None = None) -> list:
    """(case, opset) for every opset in which the case's attributes exist (``min_opset``, default 7)."""
    min_opset = min_opset or {}
    return [pytest.param(case, opset, id=f"{case}-{opset}") for case in cases for opset in OPSETS
            if opset >= min_opset.get(case, 7)]


def _axes(op: str, opset: int, data: str, axes: str, out: str) -> tuple[str, dict[str, np.ndarray]]:
    """A Squeeze/Unsqueeze node in the form of ``opset`` (axes attribute before 13, input from 13)."""
    if opset < 13:
        return f"{out} = {op}<axes=[{axes}]>({data})", {}
    name = f"{out}_axes"
    return f"{out} = {op}({data}, {name})", {name: np.array([int(a) for a in axes.split(",")], dtype=np.int64)}


# ---- Conv --------------------------------------------------------------------------------------------------------

CONV_CASES = {
    # name: (attributes, kernel (kh, kw), with bias, expected Conv2d padding)
    "pads": ("pads=[1,1,1,1]", (3, 3), True, (1, 1, 1, 1)),
    "asymmetric-pads-strides": ("strides=[2,2], pads=[0,1,1,0]", (3, 3), False, (0, 1, 1, 0)),
    "dilations": ("dilations=[2,2], pads=[2,1,2,1]", (3, 3), True, (2, 1, 2, 1)),
    "rect-kernel-strides": ("strides=[2,1], pads=[1,0,1,0]", (3, 2), True, (1, 0, 1, 0)),
    "same-upper-strided": ('auto_pad="SAME_UPPER", strides=[2,2]', (3, 3), True, (0, 0, 1, 1)),
    "same-lower-strided": ('auto_pad="SAME_LOWER", strides=[2,2]', (3, 3), True, (1, 1, 0, 0)),
    "same-upper-even-kernel": ('auto_pad="SAME_UPPER"', (2, 2), True, (0, 0, 1, 1)),
    "same-lower-even-kernel": ('auto_pad="SAME_LOWER"', (2, 2), False, (1, 1, 0, 0)),
    "valid": ('auto_pad="VALID", strides=[2,2]', (3, 3), True, (0, 0, 0, 0)),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_attributes(case: str, opset: int) -> None:
    attributes, (kh, kw), with_bias, padding = CONV_CASES[case]
    w = Weights(1)
    weights = {"W": w.conv(3, 1, kh, kw)}
    if with_bias:
        weights["B"] = w.normal(3)
    model = make_model(f"y = Conv<{attributes}>(x, W{', B' if with_bias else ''})", opset, weights)
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    (conv,) = graph.find(ops.Conv2d)
    assert graph.op(conv).padding == padding


@pytest.mark.parametrize("opset", OPSETS)
def test_grouped_and_depthwise_conv(opset: int) -> None:
    w = Weights(2)
    model = make_model("""
        a = Conv<group=2, pads=[1,1,1,1]>(x, W1, B1)
        r = Relu(a)
        y = Conv<group=6, strides=[2,2], pads=[1,1,1,1]>(r, W2, B2)
    """, opset, {"W1": w.conv(6, 2, 3), "B1": w.normal(6), "W2": w.conv(6, 1, 3), "B2": w.normal(6)},
        inputs="float[N,4,8,8] x")
    graph, _ = check_against_onnxruntime(model, samples((4, 8, 8)))
    assert [graph.op(n).groups for n in graph.find(ops.Conv2d)] == [2, 6]


# ---- Gemm and MatMul ---------------------------------------------------------------------------------------------

GEMM_CASES = {
    # name: (attributes, transposed B, C shape or None)
    "plain": ("", False, (10,)),
    "transB": ("transB=1", True, (10,)),
    "alpha-beta": ("alpha=0.5, beta=2.0", False, (10,)),
    "transB-alpha-beta-row-bias": ("transB=1, alpha=1.5, beta=0.25", True, (1, 10)),
    "scalar-bias": ("transB=1, beta=3.0", True, ()),
    "no-bias": ("transB=1, alpha=2.0", True, None),
}


@pytest.mark.parametrize("case, opset", _grid(GEMM_CASES, {"no-bias": 11}))  # C is optional from opset 11
def test_gemm(case: str, opset: int) -> None:
    attributes, trans_b, c_shape = GEMM_CASES[case]
    w = Weights(3)
    weights = {"B": w.normal(10, 16) if trans_b else w.normal(16, 10)}
    args = "x, B"
    if c_shape is not None:
        weights["C"] = w.normal(*c_shape)
        args += ", C"
    model = make_model(f"y = Gemm{f'<{attributes}>' if attributes else ''}({args})", opset, weights,
                       inputs="float[N,16] x")
    graph, _ = check_against_onnxruntime(model, samples((16,)))
    assert kinds(graph) == ["Input", "Linear"]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_with_bias_add_folds_into_linear(opset: int, bias_first: bool) -> None:
    w = Weights(4)
    add = "y = Add(b, m)" if bias_first else "y = Add(m, b)"
    model = make_model(f"m = MatMul(x, W)\n{add}", opset, {"W": w.normal(16, 10), "b": w.normal(10)},
                       inputs="float[N,16] x")
    graph, canonical = check_against_onnxruntime(model, samples((16,)), no_affine=True)
    assert kinds(graph) == ["Input", "Linear", "Affine"]
    assert kinds(canonical) == ["Input", "Linear"]
    assert canonical.op(canonical.find(ops.Linear)[0]).bias is not None


@pytest.mark.parametrize("opset", [7, 13])
def test_matmul_without_bias(opset: int) -> None:
    w = Weights(5)
    model = make_model("f = Flatten(x)\ny = MatMul(f, W)", opset, {"W": w.normal(64, 5)})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(graph) == ["Input", "Flatten", "Linear"]


# ---- element-wise ops with constants -----------------------------------------------------------------------------

BINARY_FORMS = {
    "x+c": "t = Add(x, c)", "c+x": "t = Add(c, x)",
    "x-c": "t = Sub(x, c)", "c-x": "t = Sub(c, x)",
    "x*c": "t = Mul(x, c)", "c*x": "t = Mul(c, x)",
    "x/c": "t = Div(x, c)",
}
CONSTANT_SHAPES = {"scalar": (), "vector-1": (1,), "per-channel": (3, 1, 1), "per-channel-batched": (1, 3, 1, 1)}


@pytest.mark.parametrize("shape", CONSTANT_SHAPES)
@pytest.mark.parametrize("form", BINARY_FORMS)
def test_binary_with_constant_before_padded_conv_folds(form: str, shape: str) -> None:
    w = Weights(6)
    model = make_model(f"{BINARY_FORMS[form]}\ny = Conv<pads=[1,1,1,1]>(t, W, B)", 13,
                       {"c": w.uniform(*CONSTANT_SHAPES[shape]), "W": w.conv(4, 3, 3), "B": w.normal(4)},
                       inputs="float[N,3,8,8] x")
    graph, canonical = check_against_onnxruntime(model, samples((3, 8, 8)), no_affine=True)
    assert kinds(graph) == ["Input", "Affine", "Conv2d"]
    assert kinds(canonical) == ["Input", "Conv2d"]


@pytest.mark.parametrize("form", BINARY_FORMS)
def test_binary_with_full_constant(form: str) -> None:
    """A constant varying over the spatial axes cannot fold into a padded conv; the Affine stays and is exact."""
    w = Weights(7)
    model = make_model(f"{BINARY_FORMS[form]}\ny = Conv<pads=[1,1,1,1]>(t, W)", 11,
                       {"c": w.uniform(1, 3, 8, 8), "W": w.conv(4, 3, 3)}, inputs="float[N,3,8,8] x")
    _, canonical = check_against_onnxruntime(model, samples((3, 8, 8)))
    assert kinds(canonical) == ["Input", "Affine", "Conv2d"]


@pytest.mark.parametrize("opset", OPSETS)
def test_input_normalization_sub_div_folds_into_padded_conv(opset: int) -> None:
    """(x - mean) / std before a zero-padded conv folds exactly, padding with the mean."""
    w = Weights(8)
    mean, std = w.normal(1, 3, 1, 1), w.uniform(1, 3, 1, 1)
    model = make_model("""
        s = Sub(x, mean)
        n = Div(s, std)
        c = Conv<pads=[1,1,1,1]>(n, W, B)
        y = Relu(c)
    """, opset, {"mean": mean, "std": std, "W": w.conv(4, 3, 3), "B": w.normal(4)}, inputs="float[N,3,8,8] x")
    _, canonical = check_against_onnxruntime(model, samples((3, 8, 8)), no_affine=True)
    assert kinds(canonical) == ["Input", "Conv2d", "Relu"]
    conv = canonical.op(canonical.find(ops.Conv2d)[0])
    np.testing.assert_allclose(conv.pad_value, mean.reshape(3), rtol=1e-6)


@pytest.mark.parametrize("opset", [9, 17])
def test_mul_add_after_conv_and_gemm_fold(opset: int) -> None:
    w = Weights(9)
    model = make_model("""
        c = Conv<pads=[1,1,1,1]>(x, W, B)
        m = Mul(c, s)
        a = Add(t, m)
        r = Relu(a)
        f = Flatten(r)
        g = Gemm<transB=1>(f, W2, B2)
        h = Mul(g, s2)
        y = Sub(h, t2)
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), "s": w.uniform(4, 1, 1), "t": w.normal(1, 4, 1, 1),
                 "W2": w.normal(5, 256, scale=0.1), "B2": w.normal(5), "s2": w.uniform(5), "t2": w.normal(1, 5)})
    _, canonical = check_against_onnxruntime(model, samples((1, 8, 8)), no_affine=True)
    assert kinds(canonical) == ["Input", "Conv2d", "Relu", "Flatten", "Linear"]


@pytest.mark.parametrize("opset", OPSETS)
def test_add_of_two_tensors(opset: int) -> None:
    """A residual block: relu(conv(x)) + conv(relu(conv(x)))."""
    w = Weights(10)
    model = make_model("""
        c1 = Conv<pads=[1,1,1,1]>(x, W1, B1)
        r1 = Relu(c1)
        c2 = Conv<pads=[1,1,1,1]>(r1, W2, B2)
        s = Add(c2, r1)
        y = Relu(s)
    """, opset, {"W1": w.conv(4, 1, 3), "B1": w.normal(4), "W2": w.conv(4, 4, 3), "B2": w.normal(4)})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    (add,) = graph.find(ops.Add)
    assert len(graph.inputs(add)) == 2


# ---- BatchNormalization ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", OPSETS)
def test_batchnorm_after_conv_folds(opset: int) -> None:
    w = Weights(11)
    model = make_model("""
        c = Conv<pads=[1,1,1,1], strides=[2,2]>(x, W, B)
        b = BatchNormalization<epsilon=0.001>(c, gamma, beta, mean, var)
        y = Relu(b)
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), **w.batchnorm(4)})
    graph, canonical = check_against_onnxruntime(model, samples((1, 8, 8)), no_affine=True)
    assert kinds(graph) == ["Input", "Conv2d", "Affine", "Relu"]
    assert kinds(canonical) == ["Input", "Conv2d", "Relu"]


@pytest.mark.parametrize("opset", OPSETS)
def test_batchnorm_before_padded_conv_folds(opset: int) -> None:
    w = Weights(12)
    model = make_model("""
        b = BatchNormalization(x, gamma, beta, mean, var)
        y = Conv<pads=[1,2,1,0]>(b, W, B)
    """, opset, {"W": w.conv(4, 3, 3), "B": w.normal(4), **w.batchnorm(3)}, inputs="float[N,3,8,8] x")
    _, canonical = check_against_onnxruntime(model, samples((3, 8, 8)), no_affine=True)
    assert kinds(canonical) == ["Input", "Conv2d"]


@pytest.mark.parametrize("opset", OPSETS)
def test_batchnorm_before_and_after_gemm_folds(opset: int) -> None:
    w = Weights(13)
    bn1 = {f"{k}1": v for k, v in w.batchnorm(16).items()}
    bn2 = {f"{k}2": v for k, v in w.batchnorm(8).items()}
    model = make_model("""
        b1 = BatchNormalization(x, gamma1, beta1, mean1, var1)
        g = Gemm<transB=1>(b1, W, B)
        b2 = BatchNormalization(g, gamma2, beta2, mean2, var2)
        y = Relu(b2)
    """, opset, {"W": w.normal(8, 16), "B": w.normal(8), **bn1, **bn2}, inputs="float[N,16] x")
    _, canonical = check_against_onnxruntime(model, samples((16,)), no_affine=True)
    assert kinds(canonical) == ["Input", "Linear", "Relu"]


def test_batchnorm_alone_stays_affine() -> None:
    w = Weights(14)
    model = make_model("b = BatchNormalization(x, gamma, beta, mean, var)\ny = Relu(b)", 17, w.batchnorm(3),
                       inputs="float[N,3,8,8] x")
    _, canonical = check_against_onnxruntime(model, samples((3, 8, 8)))
    assert kinds(canonical) == ["Input", "Affine", "Relu"]


# ---- activations -------------------------------------------------------------------------------------------------

def _conv_then(activation: str, opset: int, weights: dict[str, np.ndarray] | None = None):
    w = Weights(15)
    return make_model(f"c = Conv<pads=[1,1,1,1]>(x, W, B)\n{activation}", opset,
                      {"W": w.conv(3, 1, 3, 3), "B": w.normal(3), **(weights or {})})


@pytest.mark.parametrize("opset", OPSETS)
def test_relu_and_leaky_relu(opset: int) -> None:
    model = _conv_then("r = Relu(c)\nl = LeakyRelu<alpha=0.2>(c)\nd = LeakyRelu(c)\ns = Add(r, l)\ny = Add(s, d)",
                       opset)
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert sorted(graph.op(n).alpha for n in graph.find(ops.LeakyRelu)) == pytest.approx([0.01, 0.2])


CLIP_ATTRIBUTE_FORMS = {
    # name: (attributes, min, max)
    "relu6": ("min=0.0, max=6.0", 0.0, 6.0),
    "narrow": ("min=-0.25, max=0.5", -0.25, 0.5),
    "min-only": ("min=-0.5", -0.5, math.inf),
    "max-only": ("max=0.5", -math.inf, 0.5),
    "float32-extremes": ("min=-3.4028234663852886e38, max=3.4028234663852886e38", -math.inf, math.inf),
}


@pytest.mark.parametrize("opset", [o for o in OPSETS if o < 11])
@pytest.mark.parametrize("form", CLIP_ATTRIBUTE_FORMS)
def test_clip_attribute_form(form: str, opset: int) -> None:
    attributes, low, high = CLIP_ATTRIBUTE_FORMS[form]
    graph, _ = check_against_onnxruntime(_conv_then(f"y = Clip<{attributes}>(c)", opset), samples((1, 8, 8)))
    clip = graph.op(graph.find(ops.Clip)[0])
    assert (clip.min, clip.max) == pytest.approx((low, high))


CLIP_INPUT_FORMS = {
    # name: (arguments, constants, min, max)
    "relu6": ("c, lo, hi", {"lo": 0.0, "hi": 6.0}, 0.0, 6.0),
    "narrow": ("c, lo, hi", {"lo": -0.25, "hi": 0.5}, -0.25, 0.5),
    "min-only": ("c, lo", {"lo": -0.5}, -0.5, math.inf),
    "max-only": ("c, , hi", {"hi": 0.5}, -math.inf, 0.5),
    "no-bounds": ("c", {}, -math.inf, math.inf),
}


@pytest.mark.parametrize("constant_nodes", [False, True])
@pytest.mark.parametrize("opset", [o for o in OPSETS if o >= 11])
@pytest.mark.parametrize("form", CLIP_INPUT_FORMS)
def test_clip_input_form(form: str, opset: int, constant_nodes: bool) -> None:
    arguments, bounds, low, high = CLIP_INPUT_FORMS[form]
    w = Weights(15)
    weights = {"W": w.conv(3, 1, 3, 3), "B": w.normal(3), **{k: np.array(v, np.float32) for k, v in bounds.items()}}
    model = make_model(f"c = Conv<pads=[1,1,1,1]>(x, W, B)\ny = Clip({arguments})", opset, weights,
                       constant_nodes=constant_nodes)
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    clip = graph.op(graph.find(ops.Clip)[0])
    assert (clip.min, clip.max) == pytest.approx((low, high))


# ---- smooth and non-monotone activations --------------------------------------------------------------------------

SINGLE_NODE_ACTIVATIONS = {
    # name: (node, minimum opset, snncc op kind, its parameters)
    "Sigmoid": ("y = Sigmoid(c)", 7, "Sigmoid", {}),
    "Tanh": ("y = Tanh(c)", 7, "Tanh", {}),
    "HardSigmoid-defaults": ("y = HardSigmoid(c)", 7, "HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
    "HardSigmoid-torch": ("y = HardSigmoid<alpha=0.16666667>(c)", 7, "HardSigmoid",
                          {"alpha": pytest.approx(1 / 6), "beta": 0.5}),
    "HardSigmoid-attributes": ("y = HardSigmoid<alpha=0.3, beta=0.4>(c)", 7, "HardSigmoid",
                               {"alpha": pytest.approx(0.3), "beta": pytest.approx(0.4)}),
    "HardSwish": ("y = HardSwish(c)", 14, "HardSwish", {}),
    "Gelu": ("y = Gelu(c)", 20, "Gelu", {"approximate": "none"}),
    "Gelu-none": ('y = Gelu<approximate="none">(c)', 20, "Gelu", {"approximate": "none"}),
    "Gelu-tanh": ('y = Gelu<approximate="tanh">(c)', 20, "Gelu", {"approximate": "tanh"}),
}


def _only_activation(graph, kind: str) -> ops.Op:
    (node,) = [n for n in graph.topological_order() if graph.op(n).kind == kind]
    return graph.op(node)


@pytest.mark.parametrize("case, opset", _grid(SINGLE_NODE_ACTIVATIONS,
                                              {k: v[1] for k, v in SINGLE_NODE_ACTIVATIONS.items()}))
def test_single_node_activation(case: str, opset: int) -> None:
    body, _, kind, params = SINGLE_NODE_ACTIVATIONS[case]
    graph, canonical = check_against_onnxruntime(_conv_then(body, opset), samples((1, 8, 8)) * 3)
    assert kinds(canonical) == ["Input", "Conv2d", kind]
    assert _only_activation(graph, kind).params() == params


@pytest.mark.parametrize("node", ["y = Swish(c)", "y = Swish<alpha=1.0>(c)"])
def test_swish_with_alpha_one_is_silu(node: str) -> None:
    """ONNX Swish (from opset 24) with alpha 1 is SiLU."""
    graph, _ = check_against_onnxruntime(_conv_then(node, 24), samples((1, 8, 8)) * 3)
    assert kinds(graph) == ["Input", "Conv2d", "Silu"]


_GELU_CONSTANTS = {"sqrt2": np.float32(math.sqrt(2)), "inv_sqrt2": np.float32(1 / math.sqrt(2)),
                   "one": np.float32(1), "half": np.float32(0.5), "two": np.float32(2), "three": np.float32(3),
                   "cubic": np.float32(0.044715), "sqrt_2_over_pi": np.float32(math.sqrt(2 / math.pi))}
ACTIVATION_PATTERNS = {
    # name: (nodes computing y from c, minimum opset, snncc op kind, its parameters)
    "silu": ("s = Sigmoid(c)\ny = Mul(c, s)", 7, "Silu", {}),
    "silu-sigmoid-first": ("s = Sigmoid(c)\ny = Mul(s, c)", 7, "Silu", {}),
    "hardswish-legacy": ("h = HardSigmoid<alpha=0.16666667>(c)\ny = Mul(c, h)", 7, "HardSwish", {}),
    "hardswish-explicit-beta": ("h = HardSigmoid<alpha=0.16666667, beta=0.5>(c)\ny = Mul(h, c)", 7, "HardSwish",
                                {}),
    # torch legacy exporter: the 0.5 last
    "gelu-legacy": ("d = Div(c, sqrt2)\ne = Erf(d)\na = Add(e, one)\nm = Mul(c, a)\ny = Mul(m, half)", 9, "Gelu",
                    {"approximate": "none"}),
    # torch dynamo exporter: the 0.5 on (1 + erf)
    "gelu-dynamo": ("d = Div(c, sqrt2)\ne = Erf(d)\na = Add(e, one)\nh = Mul(half, a)\ny = Mul(c, h)", 9, "Gelu",
                    {"approximate": "none"}),
    # 0.5 * x * (1 + erf(x * 0.7071)), as written by hand in many model zoos
    "gelu-half-on-x": ("d = Mul(c, inv_sqrt2)\ne = Erf(d)\na = Add(one, e)\nh = Mul(half, c)\ny = Mul(h, a)", 9,
                       "Gelu", {"approximate": "none"}),
    "gelu-divided-by-two": ("d = Mul(inv_sqrt2, c)\ne = Erf(d)\na = Add(one, e)\nm = Mul(a, c)\ny = Div(m, two)",
                            9, "Gelu", {"approximate": "none"}),
    # torch legacy exporter, tanh approximation: x^3 as x * (x * x), the 0.5 last
    "gelu-tanh-legacy": ("""sq = Mul(c, c)
        cu = Mul(c, sq)
        k = Mul(cubic, cu)
        s = Add(c, k)
        u = Mul(sqrt_2_over_pi, s)
        t = Tanh(u)
        a = Add(one, t)
        m = Mul(c, a)
        y = Mul(half, m)""", 7, "Gelu", {"approximate": "tanh"}),
    # torch dynamo exporter, tanh approximation: Pow(x, 3), the 0.5 on (1 + tanh)
    "gelu-tanh-dynamo": ("""cu = Pow(c, three)
        k = Mul(cubic, cu)
        s = Add(c, k)
        u = Mul(sqrt_2_over_pi, s)
        t = Tanh(u)
        a = Add(t, one)
        h = Mul(half, a)
        y = Mul(c, h)""", 7, "Gelu", {"approximate": "tanh"}),
}


@pytest.mark.parametrize("constant_nodes", [False, True])
@pytest.mark.parametrize("case, opset", _grid(ACTIVATION_PATTERNS, {k: v[1] for k, v in ACTIVATION_PATTERNS.items()}))
def test_activation_pattern_fuses_into_one_op(case: str, opset: int, constant_nodes: bool) -> None:
    body, _, kind, params = ACTIVATION_PATTERNS[case]
    w = Weights(15)
    model = make_model(f"c = Conv<pads=[1,1,1,1]>(x, W, B)\n{body}", opset,
                       {"W": w.conv(3, 1, 3, 3), "B": w.normal(3),
                        **{k: v for k, v in _GELU_CONSTANTS.items() if re.search(rf"\b{k}\b", body)}},
                       constant_nodes=constant_nodes)
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)) * 3)
    assert kinds(graph) == ["Input", "Conv2d", kind]
    assert _only_activation(graph, kind).params() == params
    (node,) = graph.find(ops.PointwiseActivation)
    assert graph.meta[node]["onnx_op"] == ",".join(re.findall(r"= (\w+)", body))  # the exporter's nodes


@pytest.mark.parametrize("opset", [9, 13, 21])
def test_gelu_pattern_on_features_between_fully_connected_layers(opset: int) -> None:
    """GELU on (batch, features) tensors, between two Gemms; both Gemm outputs are read twice, like x in GELU."""
    w = Weights(26)
    model = make_model("""
        g = Gemm<transB=1>(x, W1, B1)
        d = Div(g, sqrt2)
        e = Erf(d)
        a = Add(e, one)
        m = Mul(g, a)
        h = Mul(m, half)
        y = Gemm<transB=1>(h, W2, B2)
    """, opset, {"W1": w.normal(12, 16), "B1": w.normal(12), "W2": w.normal(5, 12), "B2": w.normal(5),
                 "sqrt2": _GELU_CONSTANTS["sqrt2"], "one": _GELU_CONSTANTS["one"], "half": _GELU_CONSTANTS["half"]},
        inputs="float[N,16] x")
    graph, _ = check_against_onnxruntime(model, samples((16,)))
    assert kinds(graph) == ["Input", "Linear", "Gelu", "Linear"]


def test_two_silus_in_a_row_fuse_separately() -> None:
    """silu(silu(x)): the outer pattern's x is the inner pattern's output."""
    model = _conv_then("s1 = Sigmoid(c)\nm1 = Mul(c, s1)\ns2 = Sigmoid(m1)\ny = Mul(s2, m1)", 13)
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)) * 3)
    assert kinds(graph) == ["Input", "Conv2d", "Silu", "Silu"]


def test_pattern_on_a_constant_is_folded() -> None:
    """x * sigmoid(x) of a constant is folded at import (it is not an activation of the network)."""
    model = _conv_then("s = Sigmoid(k)\nm = Mul(k, s)\ny = Add(c, m)", 13, {"k": np.float32(0.75)})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(graph) == ["Input", "Conv2d", "Affine"]


# ---- pooling -----------------------------------------------------------------------------------------------------

MAX_POOL_CASES = {
    # name: (attributes, input size, minimum opset)
    "2x2": ("kernel_shape=[2,2], strides=[2,2]", 8, 7),
    "3x3-padded": ("kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]", 8, 7),
    "asymmetric-pads": ("kernel_shape=[3,2], strides=[1,2], pads=[0,1,2,0]", 8, 7),
    "same-upper": ('kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER"', 8, 7),
    "ceil": ("kernel_shape=[3,3], strides=[2,2], ceil_mode=1", 8, 10),
    "ceil-padded": ("kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1], ceil_mode=1", 8, 10),
    "ceil-last-window-in-padding": ("kernel_shape=[2,2], strides=[2,2], pads=[1,1,1,1], ceil_mode=1", 7, 10),
    "ceil-no-effect": ("kernel_shape=[2,2], strides=[2,2], ceil_mode=1", 8, 10),
}


@pytest.mark.parametrize("case, opset", _grid(MAX_POOL_CASES, {k: v[2] for k, v in MAX_POOL_CASES.items()}))
def test_max_pool(case: str, opset: int) -> None:
    attributes, size, _ = MAX_POOL_CASES[case]
    model = make_model(f"y = MaxPool<{attributes}>(x)", opset, inputs=f"float[N,2,{size},{size}] x")
    graph, _ = check_against_onnxruntime(model, samples((2, size, size)))
    assert kinds(graph) == ["Input", "MaxPool2d"]


@pytest.mark.parametrize("opset", OPSETS)
def test_max_pool_moves_behind_relu(opset: int) -> None:
    model = _conv_then("p = MaxPool<kernel_shape=[2,2], strides=[2,2]>(c)\ny = Relu(p)", opset)
    _, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(canonical) == ["Input", "Conv2d", "Relu", "MaxPool2d"]


AVG_POOL_CASES = {
    # name: (attributes, input size, minimum opset)
    "2x2": ("kernel_shape=[2,2], strides=[2,2]", 8, 7),
    "padded-exclude-pad": ("kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1], count_include_pad=0", 8, 7),
    "padded-include-pad": ("kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1], count_include_pad=1", 8, 7),
    "asymmetric-exclude-pad": ("kernel_shape=[3,3], strides=[1,1], pads=[0,1,2,1]", 8, 7),
    "asymmetric-include-pad": ("kernel_shape=[3,3], strides=[1,1], pads=[0,1,2,1], count_include_pad=1", 8, 7),
    "overlapping": ("kernel_shape=[3,3], strides=[1,1]", 8, 7),
    "ceil-no-effect": ("kernel_shape=[2,2], strides=[2,2], ceil_mode=1", 8, 10),
}


@pytest.mark.parametrize("case, opset", _grid(AVG_POOL_CASES, {k: v[2] for k, v in AVG_POOL_CASES.items()}))
def test_average_pool(case: str, opset: int) -> None:
    attributes, size, _ = AVG_POOL_CASES[case]
    model = make_model(f"y = AveragePool<{attributes}>(x)", opset, inputs=f"float[N,2,{size},{size}] x")
    graph, _ = check_against_onnxruntime(model, samples((2, size, size)))
    (pool,) = graph.find(ops.AvgPool2d)
    assert graph.op(pool).count_include_pad == ("count_include_pad=1" in attributes)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("pool", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(pool: str, opset: int) -> None:
    w = Weights(16)
    model = make_model(f"""
        c = Conv<pads=[1,1,1,1]>(x, W, B)
        r = Relu(c)
        p = {pool}(r)
        f = Flatten(p)
        y = Gemm<transB=1>(f, W2, B2)
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), "W2": w.normal(3, 4), "B2": w.normal(3)})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(graph)[3] == ("GlobalAvgPool" if pool == "GlobalAveragePool" else "MaxPool2d")


# ---- shape ops ---------------------------------------------------------------------------------------------------

def _conv_reshape_gemm(reshape: str, opset: int, weights: dict[str, np.ndarray] | None = None,
                       inputs: str = "float[N,1,8,8] x", after: str = ""):
    """conv (4x8x8) -> relu -> ``reshape`` (producing ``f`` of 256 features) -> Gemm (-> ``after`` reading ``g``)."""
    w = Weights(17)
    return make_model(f"""
        c = Conv<pads=[1,1,1,1]>(x, W, B)
        r = Relu(c)
        {reshape}
        {"g" if after else "y"} = Gemm<transB=1>(f, W2, B2)
        {after}
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), "W2": w.normal(5, 256, scale=0.1), "B2": w.normal(5),
                 **(weights or {})}, inputs=inputs)


@pytest.mark.parametrize("axis, opset", _grid([1, -3, 2], {-3: 11}))  # negative axes exist from opset 11
def test_flatten(axis: int, opset: int) -> None:
    if axis == 2:  # merging the batch axis with a channel axis of size 1 is still per sample
        model = make_model("f = Flatten<axis=2>(x)\ny = Relu(f)", opset)
        graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    else:
        graph, _ = check_against_onnxruntime(_conv_reshape_gemm(f"f = Flatten<axis={axis}>(r)", opset),
                                             samples((1, 8, 8)))
    assert graph.find(ops.Flatten)


RESHAPE_TARGETS = {
    # name: (target, expected per-sample shape after the reshape)
    "zero-minus-one": ([0, -1], (256,)),
    "minus-one-first": ([-1, 256], (256,)),
    "zero-and-minus-one": ([0, 4, -1], (4, 64)),
    "all-explicit-zero": ([0, 16, 16], (16, 16)),
    "no-op": ([0, 4, 8, 8], (4, 8, 8)),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("target", RESHAPE_TARGETS)
def test_reshape_constant_target(target: str, opset: int) -> None:
    shape, per_sample = RESHAPE_TARGETS[target]
    reshape = "f = Reshape(r, shape)" if per_sample == (256,) else "t = Reshape(r, shape)\nf = Flatten(t)"
    model = _conv_reshape_gemm(reshape, opset, {"shape": np.array(shape, dtype=np.int64)})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    if per_sample not in ((256,), (4, 8, 8)):
        (node,) = graph.find(ops.Reshape)
        assert graph.op(node).shape == per_sample
    if per_sample == (4, 8, 8):
        assert not graph.find(ops.Reshape)


@pytest.mark.parametrize("opset", OPSETS)
def test_reshape_target_from_shape_gather_unsqueeze_concat(opset: int) -> None:
    """``x.view(x.size(0), -1)`` as torch's legacy exporter writes it."""
    first, w1 = _axes("Unsqueeze", opset, "n", "0", "u1")
    second, w2 = _axes("Unsqueeze", opset, "m", "0", "u2")
    reshape = f"""
        s = Shape(r)
        i = Constant<value = int64 {{0}}>()
        n = Gather<axis=0>(s, i)
        m = Constant<value = int64 {{-1}}>()
        {first}
        {second}
        target = Concat<axis=0>(u1, u2)
        f = Reshape(r, target)
    """
    graph, _ = check_against_onnxruntime(_conv_reshape_gemm(reshape, opset, {**w1, **w2}), samples((1, 8, 8)))
    assert kinds(graph) == ["Input", "Conv2d", "Relu", "Flatten", "Linear"]


@pytest.mark.parametrize("opset", OPSETS)
def test_squeeze_and_unsqueeze(opset: int) -> None:
    squeeze, w1 = _axes("Squeeze", opset, "p", "2,3", "f")
    unsqueeze, w2 = _axes("Unsqueeze", opset, "g", "-1,2", "y")
    w = Weights(18)
    model = make_model(f"""
        c = Conv<pads=[1,1,1,1]>(x, W, B)
        p = GlobalAveragePool(c)
        {squeeze}
        g = Gemm<transB=1>(f, W2, B2)
        {unsqueeze}
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), "W2": w.normal(5, 4), "B2": w.normal(5), **w1, **w2})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert graph.types()[graph.outputs[0]].shape == (5, 1, 1)


@pytest.mark.parametrize("opset", [7, 13, 21])
def test_squeeze_without_axes(opset: int) -> None:
    w = Weights(18)
    model = make_model("""
        c = Conv<pads=[1,1,1,1]>(x, W, B)
        p = GlobalMaxPool(c)
        f = Squeeze(p)
        y = Gemm<transB=1>(f, W2, B2)
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), "W2": w.normal(5, 4), "B2": w.normal(5)})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(graph) == ["Input", "Conv2d", "MaxPool2d", "Flatten", "Linear"]


@pytest.mark.parametrize("axis, opset", _grid([1, -3], {-3: 11}))  # negative axes exist from opset 11
def test_concat_on_channels(axis: int, opset: int) -> None:
    w = Weights(19)
    model = make_model(f"""
        a = Conv<pads=[1,1,1,1]>(x, W1, B1)
        b = Conv<pads=[0,0,0,0], kernel_shape=[1,1]>(x, W2)
        r = Relu(a)
        c = Concat<axis={axis}>(r, b, x)
        y = Conv<pads=[1,1,1,1]>(c, W3, B3)
    """, opset, {"W1": w.conv(3, 1, 3), "B1": w.normal(3), "W2": w.conv(2, 1, 1), "W3": w.conv(4, 6, 3),
                 "B3": w.normal(4)})
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    (concat,) = graph.find(ops.Concat)
    assert graph.op(concat).axis == 0


# ---- pass-through ops --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", OPSETS)
def test_identity_dropout_cast_transpose_are_removed(opset: int) -> None:
    weights: dict[str, np.ndarray] = {}
    if opset >= 12:
        dropout = "d = Dropout(i, ratio, training)\nd2, mask = Dropout(d)"
        weights = {"ratio": np.array(0.5, np.float32), "training": np.array(False)}
    else:
        dropout = "d = Dropout<ratio=0.5>(i)\nd2, mask = Dropout(d)"
    model = _conv_then(f"""
        i = Identity(c)
        {dropout}
        k = Cast<to=1>(d2)
        t = Transpose<perm=[0,1,2,3]>(k)
        y = Relu(t)
    """, opset, weights)
    graph, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert len(graph.find(ops.Identity)) == 5
    assert kinds(canonical) == ["Input", "Conv2d", "Relu"]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_at_the_output(op: str, opset: int) -> None:
    model = _conv_reshape_gemm("f = Flatten(r)", opset, after=f"y = {op}<axis=1>(g)")
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    softmax = graph.op(graph.find(ops.Softmax)[0])
    assert (softmax.axis, softmax.log) == (0, op == "LogSoftmax")


@pytest.mark.parametrize("opset", [o for o in OPSETS if o >= 13])
def test_softmax_default_axis_over_channels_last(opset: int) -> None:
    model = _conv_then("y = Softmax(c)", opset)
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert graph.op(graph.find(ops.Softmax)[0]).axis == 2


@pytest.mark.parametrize("opset", OPSETS)
def test_weights_in_constant_nodes(opset: int) -> None:
    w = Weights(20)
    model = make_model("""
        c = Conv<pads=[1,1,1,1], strides=[2,2]>(x, W, B)
        b = BatchNormalization(c, gamma, beta, mean, var)
        r = Relu(b)
        f = Flatten(r)
        m = MatMul(f, W2)
        y = Add(m, B2)
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), **w.batchnorm(4), "W2": w.normal(64, 5, scale=0.2),
                 "B2": w.normal(5)}, constant_nodes=True)
    assert not model.graph.initializer
    _, canonical = check_against_onnxruntime(model, samples((1, 8, 8)), no_affine=True)
    assert kinds(canonical) == ["Input", "Conv2d", "Relu", "Flatten", "Linear"]


# ---- Pad and constant-folded subgraphs ----------------------------------------------------------------------------

def _pad_node(opset: int, pads: list[int], value: float | None = None) -> tuple[str, dict[str, np.ndarray]]:
    if opset < 11:
        value_attr = "" if value is None else f", value={value}"
        return f'p = Pad<mode="constant", pads=[{",".join(map(str, pads))}]{value_attr}>(x)', {}
    weights = {"pads": np.array(pads, dtype=np.int64)}
    if value is None:
        return "p = Pad(x, pads)", weights
    return "p = Pad(x, pads, value)", {**weights, "value": np.array(value, np.float32)}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("value", [None, 0.0])
def test_zero_pad_folds_into_conv(opset: int, value: float | None) -> None:
    pad, weights = _pad_node(opset, [0, 0, 1, 2, 0, 0, 2, 1], value)
    w = Weights(21)
    model = make_model(f"{pad}\ny = Conv<pads=[1,0,0,1]>(p, W, B)", opset,
                       {"W": w.conv(3, 2, 3), "B": w.normal(3), **weights}, inputs="float[N,2,8,8] x")
    graph, canonical = check_against_onnxruntime(model, samples((2, 8, 8)))
    assert kinds(graph) == ["Input", "Pad2d", "Conv2d"]
    assert kinds(canonical) == ["Input", "Conv2d"]
    assert canonical.op(canonical.find(ops.Conv2d)[0]).padding == (2, 2, 2, 2)


@pytest.mark.parametrize("opset", [9, 11, 21])
def test_nonzero_pad_stays(opset: int) -> None:
    pad, weights = _pad_node(opset, [0, 0, 1, 0, 0, 0, 0, 2], 0.75)
    w = Weights(22)
    model = make_model(f"{pad}\ny = Conv(p, W)", opset, {"W": w.conv(3, 2, 3), **weights},
                       inputs="float[N,2,8,8] x")
    _, canonical = check_against_onnxruntime(model, samples((2, 8, 8)))
    assert kinds(canonical) == ["Input", "Pad2d", "Conv2d"]


@pytest.mark.parametrize("opset", OPSETS_10_UP)
def test_pad_amounts_from_constant_of_shape_slice_subgraph(opset: int) -> None:
    """``F.pad(x, (1, 2, 1, 0))`` as torch's legacy exporter writes it: the pads come from a folded subgraph."""
    w = Weights(23)
    model = make_model("""
        torch_pads = Constant<value = int64[4] {1, 2, 1, 0}>()
        n = Constant<value = int64[1] {4}>()
        zeros = ConstantOfShape<value = int64[1] {0}>(n)
        all = Concat<axis=0>(torch_pads, zeros)
        pairs_shape = Constant<value = int64[2] {-1, 2}>()
        pairs = Reshape(all, pairs_shape)
        start = Constant<value = int64[1] {-1}>()
        end = Constant<value = int64[1] {-9223372036854775807}>()
        axis = Constant<value = int64[1] {0}>()
        step = Constant<value = int64[1] {-1}>()
        reversed = Slice(pairs, start, end, axis, step)
        columns = Transpose<perm=[1,0]>(reversed)
        flat_shape = Constant<value = int64[1] {-1}>()
        flat = Reshape(columns, flat_shape)
        onnx_pads = Cast<to=7>(flat)
        p = Pad(x, onnx_pads)
        y = Conv(p, W, B)
    """, opset, {"W": w.conv(3, 1, 3), "B": w.normal(3)})
    graph, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert graph.op(graph.find(ops.Pad2d)[0]).padding == (1, 1, 0, 2)
    assert kinds(canonical) == ["Input", "Conv2d"]


@pytest.mark.parametrize("opset", OPSETS_9_UP)
def test_reshape_target_from_shape_slice_constant_of_shape(opset: int) -> None:
    if opset < 10:
        batch = "b = Slice<starts=[0], ends=[1], axes=[0]>(s)"
        weights = {}
    else:
        batch = "b = Slice(s, zero, one)"
        weights = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64)}
    reshape = f"""
        s = Shape(r)
        {batch}
        len = Constant<value = int64[1] {{1}}>()
        rest = ConstantOfShape<value = int64[1] {{-1}}>(len)
        target = Concat<axis=0>(b, rest)
        f = Reshape(r, target)
    """
    graph, _ = check_against_onnxruntime(_conv_reshape_gemm(reshape, opset, weights), samples((1, 8, 8)))
    assert kinds(graph) == ["Input", "Conv2d", "Relu", "Flatten", "Linear"]


@pytest.mark.parametrize("opset", [o for o in OPSETS if o >= 15])
def test_shape_with_start_and_end(opset: int) -> None:
    reshape = """
        s = Shape<start=0, end=1>(r)
        m = Constant<value = int64[1] {-1}>()
        target = Concat<axis=0>(s, m)
        f = Reshape(r, target)
    """
    graph, _ = check_against_onnxruntime(_conv_reshape_gemm(reshape, opset), samples((1, 8, 8)))
    assert graph.find(ops.Flatten)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_constant_value_attribute_forms(opset: int) -> None:
    """Constant nodes written with value_ints / value_int / value_float (opset 12 and later) fold like tensors."""
    reshape = """
        s = Shape(r)
        i = Constant<value_int=0>()
        n = Gather<axis=0>(s, i)
        axes = Constant<value_ints=[0]>()
        u = Unsqueeze(n, axes)
        m = Constant<value_ints=[-1]>()
        target = Concat<axis=0>(u, m)
        f = Reshape(r, target)
    """
    after = "lo = Constant<value_float=-0.5>()\nhi = Constant<value_float=0.75>()\ny = Clip(g, lo, hi)"
    graph, _ = check_against_onnxruntime(_conv_reshape_gemm(reshape, opset, after=after), samples((1, 8, 8)))
    assert kinds(graph) == ["Input", "Conv2d", "Relu", "Flatten", "Linear", "Clip"]
    clip = graph.op(graph.find(ops.Clip)[0])
    assert (clip.min, clip.max) == (-0.5, 0.75)


# ---- batch handling and a whole network ---------------------------------------------------------------------------

@pytest.mark.parametrize("opset", OPSETS)
def test_dynamic_batch_runs_in_several_batches(opset: int) -> None:
    model = _conv_reshape_gemm("f = Flatten(r)", opset)
    x = samples((1, 8, 8), n=11)
    graph = import_onnx(model)
    ref = onnxruntime_output(model, x)
    assert_matches(run_analog(graph, x, batch_size=4)[0], ref, "batches of 4")
    assert_matches(run_analog(graph, x[:1])[0], ref[:1], "one sample")


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("reshape", ["constant", "shape-subgraph", "flatten"])
def test_batch_fixed_at_one_runs_batched(opset: int, reshape: str) -> None:
    weights: dict[str, np.ndarray] = {}
    if reshape == "constant":
        body = "f = Reshape(r, shape)"
        weights = {"shape": np.array([1, -1], np.int64)}
    elif reshape == "shape-subgraph":
        first, weights = _axes("Unsqueeze", opset, "n", "0", "u")
        body = f"""
            s = Shape(r)
            i = Constant<value = int64 {{0}}>()
            n = Gather<axis=0>(s, i)
            {first}
            m = Constant<value = int64[1] {{-1}}>()
            target = Concat<axis=0>(u, m)
            f = Reshape(r, target)
        """
    else:
        body = "f = Flatten(r)"
    model = _conv_reshape_gemm(body, opset, weights, inputs="float[1,1,8,8] x")
    x = samples((1, 8, 8), n=6)
    graph, _ = check_against_onnxruntime(model, x, per_sample=True)
    assert kinds(graph) == ["Input", "Conv2d", "Relu", "Flatten", "Linear"]
    assert run_analog(graph, x)[0].shape == (6, 5)


def test_convolution_in_slices_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny im2col budget the conv kernel builds its columns a few samples at a time; same result."""
    from snncc.runtime import kernels

    monkeypatch.setattr(kernels, "_IM2COL_BUDGET", 50)
    w = Weights(25)
    model = make_model("""
        a = Conv<group=2, pads=[1,1,1,1], strides=[1,2]>(x, W1, B1)
        y = Conv<dilations=[2,1]>(a, W2)
    """, 13, {"W1": w.conv(6, 2, 3), "B1": w.normal(6), "W2": w.conv(3, 6, 3)}, inputs="float[N,4,8,8] x")
    check_against_onnxruntime(model, samples((4, 8, 8), n=7))


@pytest.mark.parametrize("opset", OPSETS)
def test_lenet_like_network(opset: int) -> None:
    """A whole exporter-style network; canonical form keeps only layers, activations and pooling."""
    w = Weights(24)
    if opset < 12:
        dropout = "d = Dropout<ratio=0.25>(h)"
    else:
        dropout = "d = Dropout(h)"
    model = make_model(f"""
        s = Sub(x, mean)
        n = Div(s, std)
        c1 = Conv<pads=[2,2,2,2]>(n, W1, B1)
        b1 = BatchNormalization(c1, gamma, beta, mean1, var)
        r1 = Relu(b1)
        p1 = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r1)
        c2 = Conv(p1, W2, B2)
        r2 = Relu(c2)
        p2 = AveragePool<kernel_shape=[2,2], strides=[2,2]>(r2)
        f = Flatten(p2)
        g1 = Gemm<transB=1>(f, W3, B3)
        h = Relu(g1)
        {dropout}
        g2 = Gemm<transB=1>(d, W4, B4)
        y = Softmax<axis=1>(g2)
    """, opset, {"mean": np.array(0.1307, np.float32), "std": np.array(0.3081, np.float32),
                 "W1": w.conv(6, 1, 5), "B1": w.normal(6), "gamma": w.uniform(6), "beta": w.normal(6),
                 "mean1": w.normal(6), "var": w.uniform(6), "W2": w.conv(8, 6, 3), "B2": w.normal(8),
                 "W3": w.normal(16, 8 * 2 * 2), "B3": w.normal(16), "W4": w.normal(10, 16), "B4": w.normal(10)},
        inputs="float[N,1,12,12] x")
    _, canonical = check_against_onnxruntime(model, samples((1, 12, 12), n=8), no_affine=True)
    assert kinds(canonical) == ["Input", "Conv2d", "Relu", "MaxPool2d", "Conv2d", "Relu", "AvgPool2d", "Flatten",
                                "Linear", "Relu", "Linear", "Softmax"]
