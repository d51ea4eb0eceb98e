"""What the ONNX frontend refuses, and how: every error is a FrontendError (or UnsupportedModelError) whose message
names the file, the node, the rank or the opset at fault."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc.errors import FrontendError, UnsupportedModelError
from snncc.frontend.onnx import import_onnx, load_model
from snncc.ir import ops
from tests.frontend.onnx_models import Weights, make_model


def _small_model(opset: int = 13) -> onnx.ModelProto:
    w = Weights(30)
    return make_model("""
        c = Conv<pads=[1,1,1,1]>(x, W, B)
        r = Relu(c)
        f = Flatten(r)
        y = Gemm<transB=1>(f, W2, B2)
    """, opset, {"W": w.conv(4, 1, 3), "B": w.normal(4), "W2": w.normal(5, 256), "B2": w.normal(5)})


# ---- unsupported operators ---------------------------------------------------------------------------------------

def _assert_lists(message: str, nodes: dict[str, str]) -> None:
    """Every offending node appears in the message with its op type, on its own line."""
    for name, op_type in nodes.items():
        assert re.search(rf"'{re.escape(name)}' \({re.escape(op_type)}\)", message), (name, op_type, message)


def test_unsupported_ops_are_all_listed() -> None:
    """Quantized layers, an LSTM and a custom-domain op on separate branches: one error names every one of them."""
    w = Weights(31)
    model = make_model("""
        [quantize_input] q = QuantizeLinear(x, scale, zero)
        [qconv] qc = QLinearConv(q, scale, zero, wq, scale, zero, scale, zero)
        [dequantize] dq = DequantizeLinear(qc, scale, zero)
        [flatten] f = Flatten(x)
        [seq] s = Unsqueeze(f, axes1)
        [lstm] l_y, l_h, l_c = LSTM<hidden_size=4>(s, lstm_w, lstm_r)
        [custom_gelu] g = my.ops.FancyGelu(x)
        [conv] c = Conv<pads=[1,1,1,1]>(x, W)
        [relu] y = Relu(c)
    """, 13, {"scale": np.array(0.1, np.float32), "zero": np.array(0, np.uint8),
              "wq": np.ones((2, 1, 3, 3), np.uint8), "axes1": np.array([1], np.int64),
              "lstm_w": w.normal(1, 16, 64), "lstm_r": w.normal(1, 16, 4), "W": w.conv(2, 1, 3)},
        extra_opsets='"my.ops" : 1')
    with pytest.raises(UnsupportedModelError, match=r"5 node\(s\) cannot be converted") as info:
        import_onnx(model)
    message = str(info.value)
    _assert_lists(message, {"quantize_input": "QuantizeLinear", "qconv": "QLinearConv",
                            "dequantize": "DequantizeLinear", "lstm": "LSTM", "custom_gelu": "FancyGelu"})
    assert "my.ops" in message
    for supported in ("'conv'", "'relu'", "'flatten'", "'seq'"):
        assert supported not in message


def test_unsupported_op_inside_a_chain_lists_the_later_unsupported_ops_only() -> None:
    """Downstream of an unsupported node, only nodes that could never convert are listed, not the shape
    computation of a Flatten (Shape -> Gather -> ... -> Reshape) nor the supported layers after it."""
    w = Weights(32)
    model = make_model("""
        [first] q = QuantizeLinear(x, scale, zero)
        [second] dq = DequantizeLinear(q, scale, zero)
        [gelu] g = my.ops.FancyGelu(dq)
        [shape] s = Shape(g)
        [gather] n = Gather<axis=0>(s, zero_index)
        [unsqueeze] u = Unsqueeze(n, axes0)
        [concat] t = Concat<axis=0>(u, minus_one)
        [reshape] f = Reshape(g, t)
        [gemm] h = Gemm<transB=1>(f, W, B)
        [erf] y = Erf(h)
    """, 13, {"scale": np.array(0.1, np.float32), "zero": np.array(0, np.uint8),
              "zero_index": np.array(0, np.int64), "axes0": np.array([0], np.int64),
              "minus_one": np.array([-1], np.int64), "W": w.normal(3, 64), "B": w.normal(3)},
        extra_opsets='"my.ops" : 1')
    with pytest.raises(UnsupportedModelError, match=r"4 node\(s\) cannot be converted") as info:
        import_onnx(model)
    message = str(info.value)
    _assert_lists(message, {"first": "QuantizeLinear", "second": "DequantizeLinear", "gelu": "FancyGelu",
                            "erf": "Erf"})
    for fine in ("shape", "gather", "unsqueeze", "concat", "reshape", "gemm"):
        assert f"'{fine}'" not in message


UNSUPPORTED_USES = {
    # name: (body, weights, input, expected words in the message)
    "div-constant-by-tensor": ("[div] y = Div(c, x)", {"c": np.float32(2.0)}, "float[N,1,8,8] x",
                               "division of a constant"),
    "mul-of-two-tensors": ("r = Relu(x)\n[mul] y = Mul(x, r)", {}, "float[N,1,8,8] x", "Mul of two computed"),
    "gemm-transA": ("[gemm] y = Gemm<transA=1>(x, W)", {"W": np.ones((16, 3), np.float32)}, "float[N,16] x",
                    "transA=1"),
    "conv3d-weight": ("[conv] y = Conv(x, W)", {"W": np.ones((2, 1, 3, 3, 3), np.float32)}, "float[N,1,8,8] x",
                      "2-D convolutions"),
    "weight-computed": ("r = Relu(x)\n[conv] y = Conv(x, r)", {}, "float[N,1,8,8] x", "must be a constant"),
    "reshape-merges-batch": ("[reshape] y = Reshape(x, s)", {"s": np.array([-1], np.int64)}, "float[N,1,8,8] x",
                             "merges the batch axis"),
    "reshape-changes-batch": ("[reshape] y = Reshape(x, s)", {"s": np.array([2, -1], np.int64)},
                              "float[N,1,8,8] x", "changes the batch axis"),
    "concat-on-batch": ("[concat] y = Concat<axis=0>(x, x)", {}, "float[N,1,8,8] x", "batch axis"),
    "flatten-axis-0": ("[flatten] y = Flatten<axis=0>(x)", {}, "float[N,1,8,8] x", "merges the batch axis"),
    "unsqueeze-front": ("[unsq] y = Unsqueeze(x, a)", {"a": np.array([0], np.int64)}, "float[N,1,8,8] x",
                        "in front of the batch axis"),
    "transpose": ("[transpose] y = Transpose<perm=[0,1,3,2]>(x)", {}, "float[N,1,8,8] x", "transposition"),
    "reflect-pad": ('[pad] y = Pad<mode="reflect">(x, p)', {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)},
                    "float[N,1,8,8] x", "only constant padding"),
    "pad-batch": ("[pad] y = Pad(x, p)", {"p": np.array([1, 0, 0, 0, 0, 0, 0, 0], np.int64)},
                  "float[N,1,8,8] x", "channel and spatial axes"),
    "avg-pool-ceil": ("[pool] y = AveragePool<kernel_shape=[3,3], strides=[2,2], ceil_mode=1>(x)", {},
                      "float[N,1,8,8] x", "ceil_mode=1"),
    "dilated-max-pool": ("[pool] y = MaxPool<kernel_shape=[2,2], dilations=[2,2]>(x)", {}, "float[N,1,8,8] x",
                         "dilated pooling"),
    "max-pool-indices": ("[pool] p, i = MaxPool<kernel_shape=[2,2]>(x)\ny = Cast<to=1>(i)", {},
                         "float[N,1,8,8] x", "extra outputs"),
    "dropout-training": ("[drop] y = Dropout(x, r, t)", {"r": np.float32(0.5), "t": np.array(True)},
                         "float[N,1,8,8] x", "training_mode"),
    "batchnorm-training": ("[bn] y = BatchNormalization<training_mode=1>(x, g, b, m, v)",
                           {k: np.ones(1, np.float32) for k in "gbmv"}, "float[N,1,8,8] x", "training_mode=1"),
    "cast-to-int": ("[cast] y = Cast<to=7>(x)", {}, "float[N,1,8,8] x", "non-float"),
    "add-broadcast-over-batch": ("[add] y = Add(x, c)", {"c": np.ones((3, 1, 8, 8), np.float32)},
                                 "float[N,1,8,8] x", "broadcasts over the batch axis"),
    "clip-min-above-max": ("[clip] y = Clip(x, lo, hi)", {"lo": np.float32(1.0), "hi": np.float32(0.0)},
                           "float[N,1,8,8] x", "min 1.0 is greater than max 0.0"),
    "conv-groups-do-not-divide": ("[conv] y = Conv<group=3>(x, W)", {"W": np.ones((4, 1, 3, 3), np.float32)},
                                  "float[N,3,8,8] x", "groups=3 must divide the 4 output channels"),
    "div-by-zero": ("[div] y = Div(x, c)", {"c": np.array([1.0, 0.0], np.float32).reshape(2, 1, 1)},
                    "float[N,2,8,8] x", "contains zeros"),
    "softmax-over-batch": ("[sm] y = Softmax<axis=0>(x)", {}, "float[N,16] x", "softmax over axis 0"),
    "erf-alone": ("[erf] y = Erf(x)", {}, "float[N,1,8,8] x",
                  "not supported on its own; snncc reads it only inside GELU, x * 0.5 * (1 + erf(x / sqrt(2)))"),
    "pow-alone": ("[pow] y = Pow(x, p)", {"p": np.float32(2)}, "float[N,1,8,8] x", "only inside the tanh form"),
    "mul-names-the-products": ("r = Relu(x)\n[mul] y = Mul(x, r)", {}, "float[N,1,8,8] x",
                               "only as the activations x * sigmoid(x) (SiLU)"),
    "x-times-hardsigmoid-not-hardswish": ("h = HardSigmoid<alpha=0.2>(x)\n[mul] y = Mul(x, h)", {},
                                          "float[N,1,8,8] x", "Mul of two computed tensors"),
    "x-times-sigmoid-of-another-tensor": ("r = Relu(x)\ns = Sigmoid(r)\n[mul] y = Mul(x, s)", {},
                                          "float[N,1,8,8] x", "Mul of two computed tensors"),
    "gelu-bad-approximation": ('[gelu] y = Gelu<approximate="fast">(x)', {}, "float[N,1,8,8] x",
                               "approximate must be one of ('none', 'tanh'), got 'fast'"),
}


@pytest.mark.parametrize("case", UNSUPPORTED_USES)
def test_unsupported_use_of_a_supported_op_names_the_node(case: str) -> None:
    body, weights, inputs, words = UNSUPPORTED_USES[case]
    model = make_model(body, 15 if "training" in case else 21 if "gelu" in case else 13, weights, inputs=inputs)
    name, op_type = re.search(r"\[(\w+)\] [\w, ]+ = (\w+)", body).groups()  # the one node tagged with a name
    with pytest.raises(UnsupportedModelError, match=rf"'{name}' \({op_type}\):.*{re.escape(words)}"):
        import_onnx(model)


def test_swish_with_alpha_other_than_one() -> None:
    model = make_model("[swish] y = Swish<alpha=2.0>(x)", 24)
    with pytest.raises(UnsupportedModelError, match=r"'swish' \(Swish\): Swish with alpha=2, x \* sigmoid\(2 x\), "
                                                    r"is not supported; only alpha=1 \(SiLU\) is"):
        import_onnx(model)


_GELU_CONSTANTS = {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
_GELU = """
    [div] d = Div(x, sqrt2)
    [erf] e = Erf(d)
    [add] a = Add(e, one)
    [mul] m = Mul(x, a)
    [half] y = Mul(m, half)
"""
BLOCKED_PATTERNS = {
    # name: (body, outputs, the node reported, the words after its name, why the pattern was not fused)
    "silu-sigmoid-read-twice": ("[sigmoid] s = Sigmoid(x)\n[mul] m = Mul(x, s)\n[add] y = Add(m, s)", "y",
                                "mul", "Mul", "Mul of two computed tensors is not supported",
                                "it belongs to the SiLU pattern x * sigmoid(x) ending at 'mul' (Mul), which snncc "
                                "imports as one op only when nothing else reads its inner values, but 's' is also read "
                                "by 'add' (Add)"),
    "gelu-erf-read-twice": (_GELU + "[relu] r = Relu(e)", "y, r", "erf", "Erf",
                            "operator not supported on its own; snncc reads it only inside GELU",
                            "it belongs to the GELU pattern x * 0.5 * (1 + erf(x / sqrt(2))) ending at 'half' (Mul), "
                            "which snncc imports as one op only when nothing else reads its inner values, but 'e' is "
                            "also read by 'relu' (Relu): compute that other use from the activation's input or output "
                            "instead, or export with opset 20 or later, where it is one Gelu node"),
    "gelu-inner-value-is-an-output": (_GELU, "y, a", "erf", "Erf", "operator not supported on its own",
                                      "but 'a' is a graph output"),
    "hardswish-hardsigmoid-read-twice": ("[hs] h = HardSigmoid<alpha=0.16666667>(x)\n[mul] m = Mul(x, h)\n"
                                         "[add] y = Add(m, h)", "y", "mul", "Mul", "Mul of two computed tensors",
                                         "export with opset 14 or later, where it is one HardSwish node"),
}


@pytest.mark.parametrize("case", BLOCKED_PATTERNS)
def test_pattern_with_inner_values_read_elsewhere_is_reported_with_the_reason(case: str) -> None:
    """A pattern is fused only if nothing else reads its inner values; otherwise the node that cannot be converted
    alone is reported, naming the pattern, the tensor read elsewhere and its reader."""
    body, outputs, name, op_type, reason, why = BLOCKED_PATTERNS[case]
    model = make_model(body, 13, _GELU_CONSTANTS if "gelu" in case else {}, outputs=outputs)
    with pytest.raises(UnsupportedModelError, match=r"1 node\(s\) cannot be converted") as info:
        import_onnx(model)
    (line,) = [line for line in str(info.value).splitlines() if line.strip().startswith(f"'{name}' ({op_type}):")]
    assert reason in line and why in line, line


def test_softmax_over_inner_axis_before_opset_13() -> None:
    """Before opset 13, Softmax flattens the axes from ``axis`` on; over channels of an image that is unsupported."""
    model = make_model("[sm] y = Softmax<axis=1>(x)", 11)
    with pytest.raises(UnsupportedModelError, match=r"'sm' \(Softmax\): softmax over axis 1 of a rank-4"):
        import_onnx(model)


def test_pad_with_axes_input() -> None:
    model = make_model("[pad] y = Pad(x, p, , a)", 18,
                       {"p": np.array([1, 1, 1, 1], np.int64), "a": np.array([2, 3], np.int64)})
    with pytest.raises(UnsupportedModelError, match=r"'pad' \(Pad\): Pad with explicit axes"):
        import_onnx(model)


def test_output_that_does_not_depend_on_the_input() -> None:
    model = make_model("r = Relu(x)\nc = Constant<value = float[2] {1.0, 2.0}>()\ny = Identity(c)", 13,
                       outputs="r, y")
    with pytest.raises(UnsupportedModelError, match="graph output 'y' does not depend on the input"):
        import_onnx(model)


# ---- files -------------------------------------------------------------------------------------------------------

def test_truncated_file(tmp_path: Path) -> None:
    data = _small_model().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(FrontendError, match=re.escape(str(path))):
        import_onnx(path)
    with pytest.raises(FrontendError, match=re.escape(str(path))):
        import_onnx(str(path))


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("this is a README, not a model\n" * 20)
    with pytest.raises(FrontendError, match=re.escape(str(path))):
        import_onnx(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(FrontendError, match=re.escape(str(path)) + ": no such ONNX file"):
        import_onnx(path)


def test_whole_file_imports(tmp_path: Path) -> None:
    """The same model, complete, imports from its path (so the errors above come from the damage)."""
    path = tmp_path / "model.onnx"
    path.write_bytes(_small_model().SerializeToString())
    assert load_model(path).graph.node
    assert len(import_onnx(path).find(ops.Conv2d)) == 1


def test_model_the_checker_rejects() -> None:
    model = _small_model()
    model.graph.node[1].input[0] = "undefined_tensor"
    with pytest.raises(FrontendError, match="the ONNX checker rejects this model"):
        import_onnx(model)


# ---- inputs and opsets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank, shape", [(3, "float[N,8,8] x"), (5, "float[N,1,4,8,8] x"), (1, "float[N] x")])
def test_input_rank(rank: int, shape: str) -> None:
    model = make_model("y = Relu(x)", 13, inputs=shape)
    with pytest.raises(FrontendError, match=rf"input 'x' has rank {rank}"):
        import_onnx(model)


def test_two_inputs() -> None:
    model = make_model("y = Add(x, z)", 13, inputs="float[N,1,8,8] x, float[N,1,8,8] z")
    with pytest.raises(FrontendError, match=r"exactly one input; this one has 2: \['x', 'z'\]"):
        import_onnx(model)


def test_initializers_listed_as_inputs_do_not_count() -> None:
    """Old exporters list every initializer among the graph inputs; the model still has one input."""
    model = _small_model(9)
    for init in model.graph.initializer:
        model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    graph = import_onnx(model)
    assert len(graph.input_nodes()) == 1


def test_integer_input() -> None:
    model = make_model("f = Cast<to=1>(x)\ny = Relu(f)", 13, inputs="int64[N,1,8,8] x")
    with pytest.raises(FrontendError, match="element type INT64"):
        import_onnx(model)


def test_input_with_symbolic_spatial_size() -> None:
    model = make_model("y = Relu(x)", 13, inputs="float[N,1,H,8] x")
    with pytest.raises(FrontendError, match=r"axis 2 has no fixed size \(H\)"):
        import_onnx(model)


def test_opset_6() -> None:
    model = make_model("y = Relu(x)", 6)
    with pytest.raises(UnsupportedModelError, match="opset 6 is older than the oldest supported opset 7"):
        import_onnx(model)


def _quantized_chain(convs: int) -> onnx.ModelProto:
    """A quantized-style CNN built with onnx.helper: QuantizeLinear, ``convs`` QLinearConv, DequantizeLinear, then
    one float Softplus and a float Conv (supported)."""
    from onnx import TensorProto, helper

    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.UINT8, [], [0]),
             helper.make_tensor("wq", TensorProto.UINT8, [1, 1, 3, 3], [1] * 9),
             helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [0.5] * 9)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q0"], name="quant")]
    for i in range(convs):
        nodes.append(helper.make_node("QLinearConv", [f"q{i}", "s", "z", "wq", "s", "z", "s", "z"], [f"q{i + 1}"],
                                      name=f"qconv{i}", pads=[1, 1, 1, 1]))
    nodes += [helper.make_node("DequantizeLinear", [f"q{convs}", "s", "z"], ["d"], name="dequant"),
              helper.make_node("Softplus", ["d"], ["sp"], name="softplus"),
              helper.make_node("Conv", ["sp", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "quantized", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_many_unsupported_nodes_open_with_one_summary_line_per_type_and_truncate_the_list() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        import_onnx(_quantized_chain(30))
    lines = str(info.value).splitlines()
    assert lines[0] == "33 node(s) cannot be converted (4 operator type(s)):"
    # most frequent type first, each with its count and remedy
    assert lines[1].startswith("  QLinearConv x 30: quantized operator; compile the float model")
    assert lines[2].startswith("  QuantizeLinear x 1: quantized operator")
    assert lines[3].startswith("  DequantizeLinear x 1: quantized operator")
    assert lines[4] == "  Softplus x 1: operator not supported"
    assert lines[5] == "nodes:"
    listed = lines[6:26]
    assert listed[0] == "  'quant' (QuantizeLinear): operator not supported"
    assert listed[1:] == [f"  'qconv{i}' (QLinearConv): operator not supported" for i in range(19)]
    assert lines[26] == "  ... and 13 more"
    assert lines[27].startswith("snncc converts float CNNs and MLPs")
    assert len(lines) == 28 and "'conv'" not in str(info.value)


def test_few_unsupported_nodes_are_all_listed_without_a_count_line() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        import_onnx(_quantized_chain(2))
    message = str(info.value)
    assert message.startswith("5 node(s) cannot be converted (4 operator type(s)):\n  QLinearConv x 2: ")
    assert "'qconv1' (QLinearConv)" in message and "'softplus' (Softplus)" in message and "more" not in message


def test_a_type_whose_nodes_fail_for_different_reasons_says_so() -> None:
    from snncc.frontend.unsupported import Problem, unsupported_model_error

    error = unsupported_model_error([Problem("'a' (Conv)", "Conv", "only 2-D convolutions are supported"),
                                     Problem("'b' (Conv)", "Conv", "only 2-D convolutions are supported"),
                                     Problem("'c' (Conv)", "Conv", "input 1 ('r') must be a constant")])
    assert str(error).splitlines()[1] == ("  Conv x 3: only 2-D convolutions are supported (and 1 other reason(s), "
                                          "see the nodes)")
