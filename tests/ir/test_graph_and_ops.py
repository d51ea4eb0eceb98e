from __future__ import annotations

import numpy as np
import pytest

from snncc.errors import IRError, VerificationError
from snncc.ir import IF, LIF, SNN, Graph, ops, to_text, verify
from snncc.ir.codings import Analog, Rate
from snncc.ir.types import TensorType


def test_op_arrays_are_copied_and_read_only():
    w = np.ones((2, 3))
    op = ops.Linear(weight=w)
    w[0, 0] = 5
    assert op.weight[0, 0] == 1
    with pytest.raises(ValueError):
        op.weight[0, 0] = 2


@pytest.mark.parametrize("make, message", [
    (lambda: ops.Conv2d(weight=np.ones((4, 2, 3))), "weight must be"),
    (lambda: ops.Conv2d(weight=np.ones((4, 2, 3, 3)), bias=np.ones(3)), "bias shape"),
    (lambda: ops.Conv2d(weight=np.ones((4, 2, 3, 3)), groups=3), "groups=3"),
    (lambda: ops.Conv2d(weight=np.ones((4, 2, 3, 3)), stride=(0, 1)), "stride"),
    (lambda: ops.Linear(weight=np.ones(3)), "weight must be"),
    (lambda: ops.Conv2d(weight=np.ones((4, 2, 3, 3)), input_gains=(1.0, np.ones(3))),
     r"input gain 1 has shape \(3,\); expected a scalar or one value per input channel \(2,\)"),
    (lambda: ops.Linear(weight=np.ones((2, 5)), input_gains=(np.ones((5, 1)),)), "input gain 0 has shape"),
    (lambda: ops.Linear(weight=np.ones((2, 5)), input_gains=()), "one gain per input"),
    (lambda: ops.Linear(weight=np.ones((2, 5)), input_gains=(1.0, float("nan"))), "input gain 1 is not finite"),
    (lambda: ops.Conv2d(weight=np.ones((4, 2, 3, 3)), pad_value=np.ones(2), input_gains=(1.0, 1.0)),
     "pad_value applies to one analog operand"),
    (lambda: ops.Clip(min=2.0, max=1.0), "min 2"),
    (lambda: ops.Population(neuron=None), "neuron"),
    (lambda: ops.Slice(starts=(0, 0), stops=(2, 2, 2), steps=(1, 1, 1)), "one entry per per-sample axis"),
    (lambda: ops.Slice(starts=(0,), stops=(2,), steps=(0,)), "steps must be"),
    (lambda: ops.Slice(starts=(-1,), stops=(2,), steps=(1,)), "starts must be"),
    (lambda: ops.Slice(starts=(3,), stops=(3,), steps=(1,)), "no empty slices"),
    (lambda: ops.ChannelPad(before=-1), "before, after"),
    (lambda: IF(threshold=0.0), "threshold"),
    (lambda: IF(reset="bounce"), "reset"),
    (lambda: LIF(tau_mem=-1.0), "tau_mem"),
])
def test_invalid_fields_raise_irerror_naming_the_field(make, message):
    with pytest.raises(IRError, match=message):
        make()


def test_conv_shape_inference_and_mismatch():
    conv = ops.Conv2d(weight=np.ones((8, 2, 3, 3)), stride=(2, 2), padding=(1, 1, 1, 1))
    assert conv.infer([TensorType((2, 9, 9))]).shape == (8, 5, 5)
    with pytest.raises(IRError, match="3 channels"):
        conv.infer([TensorType((3, 9, 9))])


def test_a_shared_weight_layer_is_the_sum_of_its_per_input_copies():
    """``input_gains``: one weight array, operand i through ``W * g_i`` (rounded to float32), the bias once."""
    rng = np.random.default_rng(5)
    gains = (np.float32(1), rng.uniform(0.1, 3, 2).astype(np.float32), np.float32(0.3))
    conv = ops.Conv2d(weight=rng.normal(size=(6, 1, 3, 3)), bias=rng.normal(size=6), groups=2, padding=(1,) * 4,
                      input_gains=gains)
    singles = conv.per_input()
    assert len(singles) == 3 and all(s.input_gains is None for s in singles)
    assert singles[0].bias is not None and singles[1].bias is None and singles[2].bias is None
    per_channel = np.stack([np.broadcast_to(g, (2,)) for g in gains])  # (input, in-channel)
    for single, g in zip(singles, per_channel):
        # groups=2: output channels 0-2 read input channel 0, 3-5 read channel 1
        expected = conv.weight * np.repeat(g, 3).reshape(6, 1, 1, 1)
        np.testing.assert_array_equal(single.weight, expected)  # float32 products, correctly rounded
    assert conv.per_input() is singles, "computed once per op"
    linear = ops.Linear(weight=rng.normal(size=(2, 4)), input_gains=(np.arange(4.0),))
    np.testing.assert_array_equal(linear.per_input()[0].weight, linear.weight * np.arange(4, dtype=np.float32))
    assert ops.Linear(weight=np.ones((2, 4))).per_input()[0].input_gains is None


def test_a_shared_weight_layer_takes_one_operand_per_gain_of_one_shape():
    conv = ops.Conv2d(weight=np.ones((8, 2, 3, 3)), input_gains=(1.0, 0.5))
    assert conv.infer([TensorType((2, 9, 9), Rate())] * 2) == TensorType((8, 7, 7), Rate())
    with pytest.raises(IRError, match="1 operands but 2 input gain"):
        conv.infer([TensorType((2, 9, 9), Rate())])
    with pytest.raises(IRError, match=r"must have one shape, got \[\(2, 9, 9\), \(2, 8, 8\)\]"):
        conv.infer([TensorType((2, 9, 9), Rate()), TensorType((2, 8, 8), Rate())])
    with pytest.raises(IRError, match="2 operands but 1 input gain"):
        ops.Linear(weight=np.ones((2, 3))).infer([TensorType((3,))] * 2)
    g = Graph()  # an ANN-level graph: the ANN passes fold and rescale one operand, so the form is SNN-only
    x = g.add(ops.Input(shape=(3,)))
    g.outputs = [g.add(ops.Linear(weight=np.ones((2, 3)), input_gains=(1.0, 2.0)), [x, x], name="shared")]
    with pytest.raises(VerificationError, match="'shared': Linear with input_gains reads 2 operands; shared-weight layers are an snn-level form"):
        verify(g)


def test_slice_and_channel_pad_shape_inference():
    sl = ops.Slice(starts=(0, 1, 0), stops=(4, 9, 9), steps=(1, 2, 3))
    assert sl.infer([TensorType((4, 9, 9), Rate())]) == TensorType((4, 4, 3), Rate())
    with pytest.raises(IRError, match="exceed the input shape"):
        sl.infer([TensorType((4, 8, 9))])
    with pytest.raises(IRError, match="rank 3"):
        sl.infer([TensorType((36,))])
    pad = ops.ChannelPad(before=2, after=6)
    assert pad.infer([TensorType((16, 8, 8), Rate())]) == TensorType((24, 8, 8), Rate())
    assert pad.infer([TensorType((5,))]).shape == (13,)


def test_graph_queries_and_rewrites(cnn):
    assert cnn.inputs("conv2") == ["pool1"]
    assert cnn.users("relu1") == [("pool1", 0)]
    order = cnn.topological_order()
    assert order.index("conv1") < order.index("relu1") < order.index("fc2")
    clone = cnn.clone()
    clone.bypass("pool1")
    assert clone.inputs("conv2") == ["relu1"]
    assert cnn.inputs("conv2") == ["pool1"], "clone must not share structure"
    with pytest.raises(IRError, match="still used"):
        cnn.remove("conv1")


def test_types_carry_codings(cnn):
    g = cnn.clone()
    g.replace("relu1", ops.Population(neuron=IF()))
    types = g.types()
    assert types["conv1"].coding == Analog()
    assert types["relu1"].coding == Rate()
    assert types["conv2"].coding == Rate(), "linear ops keep the coding of their input"


def test_verifier_rejects_illegal_ops_per_level(cnn):
    g = cnn.clone()
    g.attrs["level"] = SNN
    with pytest.raises(VerificationError, match="Relu is not legal at the snn level"):
        verify(g)
    g = cnn.clone()
    g.replace("relu1", ops.Population(neuron=IF()))
    with pytest.raises(VerificationError, match="Population is not legal at the ann level"):
        verify(g)


def test_verifier_requires_readout_and_spiking_maxpool(cnn):
    g = cnn.clone()
    g.attrs["level"] = SNN
    for n in ("relu1", "relu2", "relu3"):
        g.replace(n, ops.Population(neuron=IF()))
    with pytest.raises(VerificationError) as info:
        verify(g)
    assert "SpikingMaxPool2d" in str(info.value) and "Readout" in str(info.value)


def test_add_operands_must_share_coding():
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(4,)))
    p = g.add(ops.Population(neuron=IF()), [x])
    s = g.add(ops.Add(), [x, p])
    g.outputs = [g.add(ops.Readout(), [s])]
    with pytest.raises(VerificationError, match="different codings"):
        verify(g)


def test_text_form_lists_every_node_with_type(cnn):
    text = to_text(cnn)
    assert text.splitlines()[0] == "graph level=ann outputs=[fc2]"
    assert "%conv1 = Conv2d(%input; weight=f32[4,1,3,3]" in text
    assert text.count("\n") == len(cnn)
    assert "[5] analog" in text
