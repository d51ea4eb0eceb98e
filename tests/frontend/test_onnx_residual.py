"""The ops residual networks bring, as exporters write them: strided Slice, Pad of the channel axis, ReduceMean as
global average pooling, and whole residual blocks with projection and option-A (subsample + zero channels) shortcuts.

Same method as ``test_onnx_ops``: small ONNX text models with fixed random weights, imported and canonicalized, both
compared with onnxruntime (relative error <= 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest

from snncc.errors import UnsupportedModelError
from snncc.frontend.onnx import import_onnx
from snncc.ir import ops
from tests.frontend.onnx_models import OPSETS, Weights, check_against_onnxruntime, kinds, make_model, samples

INT64_MAX = np.iinfo(np.int64).max
OPSETS_10_UP = tuple(o for o in OPSETS if o >= 10)  # Slice takes inputs (and steps) from opset 10


def _ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _conv_relu(w: Weights, channels: int = 4) -> tuple[str, dict[str, np.ndarray]]:
    """``r``: a (channels, 8, 8) ReLU output computed from the 1x8x8 input ``x``."""
    return ("c = Conv<pads=[1,1,1,1]>(x, W, B)\nr = Relu(c)",
            {"W": w.conv(channels, 1, 3), "B": w.normal(channels)})


# ---- Slice -------------------------------------------------------------------------------------------------------

SLICE_CASES = {
    # name: (starts, ends, axes or None, steps or None, expected Slice (starts, stops, steps) after canonicalize)
    "subsample-hw": ((0, 0), (INT64_MAX, INT64_MAX), (2, 3), (2, 2), ((0, 0, 0), (4, 7, 7), (1, 2, 2))),
    "offset-steps": ((1, 0), (7, -1), (2, 3), (3, 2), ((0, 1, 0), (4, 5, 7), (1, 3, 2))),
    "negative-start-last-axis": ((-5,), (INT64_MAX,), (-1,), (2,), ((0, 0, 3), (4, 8, 8), (1, 1, 2))),
    "channels": ((1,), (3,), (1,), None, ((1, 0, 0), (3, 8, 8), (1, 1, 1))),
    "clamped-end": ((2,), (100,), (2,), (3,), ((0, 2, 0), (4, 6, 8), (1, 3, 1))),
    "batch-axis-kept": ((0, 1), (INT64_MAX, 6), (0, 3), (1, 1), ((0, 0, 1), (4, 8, 6), (1, 1, 1))),
    "no-axes": ((0, 1, 2, 0), (INT64_MAX, 4, 8, 8), None, (1, 1, 2, 3), ((1, 2, 0), (4, 7, 7), (1, 2, 3))),
}


@pytest.mark.parametrize("opset", OPSETS_10_UP)
@pytest.mark.parametrize("case", SLICE_CASES)
def test_slice(case: str, opset: int) -> None:
    starts, ends, axes, steps, expected = SLICE_CASES[case]
    w = Weights(40)
    body, weights = _conv_relu(w)
    weights.update({"starts": _ints(*starts), "ends": _ints(*ends)})
    args = "r, starts, ends"
    if axes is not None or steps is not None:
        weights["axes"] = _ints(*(range(len(starts)) if axes is None else axes))
        args += ", axes"
    if steps is not None:
        weights["steps"] = _ints(*steps)
        args += ", steps"
    model = make_model(f"{body}\ny = Slice({args})", opset, weights)
    _, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    (node,) = canonical.find(ops.Slice)
    op = canonical.op(node)
    assert (op.starts, op.stops, op.steps) == expected


@pytest.mark.parametrize("opset", [o for o in OPSETS if o < 10])
def test_slice_attribute_form(opset: int) -> None:
    w = Weights(41)
    body, weights = _conv_relu(w)
    model = make_model(f"{body}\ny = Slice<starts=[1,-6], ends=[3,1000], axes=[1,3]>(r)", opset, weights)
    _, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    (node,) = canonical.find(ops.Slice)
    assert canonical.op(node).starts == (1, 0, 2) and canonical.op(node).stops == (3, 8, 8)


@pytest.mark.parametrize("opset", OPSETS_10_UP)
def test_one_slice_per_axis_merges_into_one(opset: int) -> None:
    """``x[:, :, 1::2, ::3]`` as torch writes it: one Slice node per axis; canonicalize composes them."""
    w = Weights(42)
    body, weights = _conv_relu(w)
    weights.update({"s2": _ints(1), "s3": _ints(0), "e": _ints(INT64_MAX), "a2": _ints(2), "a3": _ints(3),
                    "k2": _ints(2), "k3": _ints(3), "s4": _ints(1), "a4": _ints(2), "k4": _ints(2)})
    model = make_model(f"""{body}
        h = Slice(r, s2, e, a2, k2)
        v = Slice(h, s3, e, a3, k3)
        y = Slice(v, s4, e, a4, k4)
    """, opset, weights)
    graph, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert len(graph.find(ops.Slice)) == 3
    (node,) = canonical.find(ops.Slice)
    op = canonical.op(node)
    assert (op.starts, op.stops, op.steps) == ((0, 3, 0), (4, 8, 7), (1, 4, 3))  # rows 3, 7; columns 0, 3, 6


SLICE_ERRORS = {
    # name: (starts, ends, axes, steps, message)
    "negative-step": ((-1,), (-INT64_MAX,), (3,), (-1,), "only positive steps"),
    "batch-axis": ((1,), (INT64_MAX,), (0,), (1,), "slicing the batch axis"),
    "empty": ((5,), (2,), (2,), (1,), "is empty"),
}


@pytest.mark.parametrize("case", SLICE_ERRORS)
def test_unsupported_slices_name_the_node(case: str) -> None:
    starts, ends, axes, steps, message = SLICE_ERRORS[case]
    w = Weights(43)
    body, weights = _conv_relu(w)
    weights.update({"starts": _ints(*starts), "ends": _ints(*ends), "axes": _ints(*axes), "steps": _ints(*steps)})
    model = make_model(f"{body}\n[the_slice] y = Slice(r, starts, ends, axes, steps)", 13, weights)
    with pytest.raises(UnsupportedModelError, match=rf"'the_slice' \(Slice\): .*{message}"):
        import_onnx(model)


# ---- Pad of the channel axis -------------------------------------------------------------------------------------

CHANNEL_PAD_CASES = {
    # name: (pads of (N, C, H, W), value, expected IR kinds after the ReLU)
    "option-a": ([0, 2, 0, 0, 0, 2, 0, 0], None, ["ChannelPad"]),
    "asymmetric": ([0, 0, 0, 0, 0, 3, 0, 0], 0.0, ["ChannelPad"]),
    "channels-and-space-nonzero": ([0, 1, 1, 0, 0, 3, 0, 2], 0.5, ["ChannelPad", "Pad2d"]),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", CHANNEL_PAD_CASES)
def test_channel_pad(case: str, opset: int) -> None:
    pads, value, expected = CHANNEL_PAD_CASES[case]
    w = Weights(44)
    body, weights = _conv_relu(w)
    if opset < 11:
        value_attr = "" if value is None else f", value={value}"
        pad = f'y = Pad<mode="constant", pads=[{",".join(map(str, pads))}]{value_attr}>(r)'
    else:
        weights["pads"] = _ints(*pads)
        pad = "y = Pad(r, pads)" if value is None else "y = Pad(r, pads, value)"
        if value is not None:
            weights["value"] = np.array(value, np.float32)
    model = make_model(f"{body}\n{pad}", opset, weights)
    graph, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(graph)[3:] == expected
    (node,) = graph.find(ops.ChannelPad)
    assert (graph.op(node).before, graph.op(node).after) == (pads[1], pads[5])


@pytest.mark.parametrize("opset", [9, 13, 21])
def test_feature_pad_of_a_vector(opset: int) -> None:
    w = Weights(45)
    weights = {"B": w.normal(12, 69), "C": w.normal(12)}
    if opset < 11:
        pad = 'p = Pad<mode="constant", pads=[0,3,0,2], value=-1.5>(f)'
    else:
        pad = "p = Pad(f, pads, value)"
        weights.update({"pads": _ints(0, 3, 0, 2), "value": np.array(-1.5, np.float32)})
    model = make_model(f"f = Flatten(x)\n{pad}\ny = Gemm<transB=1>(p, B, C)", opset, weights)
    graph, _ = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(graph) == ["Input", "Flatten", "ChannelPad", "Linear"]


# ---- ReduceMean as global average pooling -------------------------------------------------------------------------

@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("axes", ["2,3", "-2,-1"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_over_space_is_global_average_pooling(keepdims: int, axes: str, opset: int) -> None:
    if opset < 11 and axes.startswith("-"):
        pytest.skip("negative axes exist from opset 11")
    w = Weights(46)
    body, weights = _conv_relu(w)
    weights.update({"W2": w.normal(3, 4), "B2": w.normal(3)})
    if opset < 18:
        reduce = f"p = ReduceMean<axes=[{axes}], keepdims={keepdims}>(r)"
    else:
        reduce = f"p = ReduceMean<keepdims={keepdims}>(r, axes)"
        weights["axes"] = _ints(*map(int, axes.split(",")))
    reshape = "f = Flatten(p)" if keepdims else "f = Identity(p)"
    model = make_model(f"{body}\n{reduce}\n{reshape}\ny = Gemm<transB=1>(f, W2, B2)", opset, weights)
    _, canonical = check_against_onnxruntime(model, samples((1, 8, 8)))
    assert kinds(canonical) == ["Input", "Conv2d", "Relu", "GlobalAvgPool", "Flatten", "Linear"]


def test_reduce_mean_over_channels_is_refused() -> None:
    model = make_model("[mean_c] y = ReduceMean<axes=[1]>(x)", 13)
    with pytest.raises(UnsupportedModelError, match=r"'mean_c' \(ReduceMean\): only ReduceMean over the spatial"):
        import_onnx(model)


# ---- residual blocks ---------------------------------------------------------------------------------------------

def _block(shortcut: str, opset: int) -> tuple[str, dict[str, np.ndarray]]:
    """Stem (4 ch, 8x8) then a downsampling basic block to 8 ch, 4x4: conv-BN-ReLU-conv-BN + shortcut, ReLU."""
    w = Weights(47)
    weights = {"W0": w.conv(4, 1, 3), "B0": w.normal(4), "W1": w.conv(8, 4, 3), "W2": w.conv(8, 8, 3),
               "Wf": w.normal(3, 8), "Bf": w.normal(3)}
    for name in ("bn1", "bn2", "bnp"):
        weights.update({f"{name}_{k}": v for k, v in w.batchnorm(8).items()})
    if shortcut == "projection":
        weights["Wp"] = w.conv(8, 4, 1)
        short = """
        sp = Conv<strides=[2,2]>(s, Wp)
        sc = BatchNormalization(sp, bnp_gamma, bnp_beta, bnp_mean, bnp_var)"""
    else:  # option A as torch writes x[:, :, ::2, ::2] and F.pad(..., (0, 0, 0, 0, 2, 2))
        weights.update({"zero": _ints(0), "end": _ints(INT64_MAX), "a2": _ints(2), "a3": _ints(3),
                        "two": _ints(2)})
        if opset < 11:
            pad = 'sc = Pad<mode="constant", pads=[0,2,0,0,0,2,0,0]>(sv)'
        else:
            weights["pads"] = _ints(0, 2, 0, 0, 0, 2, 0, 0)
            pad = "sc = Pad(sv, pads)"
        short = f"""
        sh = Slice(s, zero, end, a2, two)
        sv = Slice(sh, zero, end, a3, two)
        {pad}"""
    body = f"""
        c0 = Conv<pads=[1,1,1,1]>(x, W0, B0)
        s = Relu(c0)
        c1 = Conv<pads=[1,1,1,1], strides=[2,2]>(s, W1)
        b1 = BatchNormalization(c1, bn1_gamma, bn1_beta, bn1_mean, bn1_var)
        r1 = Relu(b1)
        c2 = Conv<pads=[1,1,1,1]>(r1, W2)
        b2 = BatchNormalization(c2, bn2_gamma, bn2_beta, bn2_mean, bn2_var){short}
        a = Add(b2, sc)
        r2 = Relu(a)
        p = GlobalAveragePool(r2)
        f = Flatten(p)
        y = Gemm<transB=1>(f, Wf, Bf)"""
    return body, weights


@pytest.mark.parametrize("opset", OPSETS_10_UP)
@pytest.mark.parametrize("shortcut", ["projection", "option-a"])
def test_residual_block(shortcut: str, opset: int) -> None:
    body, weights = _block(shortcut, opset)
    model = make_model(body, opset, weights)
    _, canonical = check_against_onnxruntime(model, samples((1, 8, 8)), no_affine=True)
    expected_shortcut = ["Conv2d"] if shortcut == "projection" else ["Slice", "ChannelPad"]
    assert sorted(kinds(canonical)) == sorted(["Input", "Conv2d", "Relu", "Conv2d", "Relu", "Conv2d",
                                               *expected_shortcut, "Add", "Relu", "GlobalAvgPool", "Flatten",
                                               "Linear"])
