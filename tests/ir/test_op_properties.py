"""The op properties that passes and simulators read instead of lists of op classes."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.ir import IF, SNN, Graph, ops, verify
from snncc.errors import VerificationError
from snncc.runtime.kernels import apply

SHAPE = (2, 4, 4)
#: One instance of every op class with ``passes_spikes``, on inputs of SHAPE.
EXAMPLES = {
    ops.Flatten: ops.Flatten(),
    ops.Reshape: ops.Reshape(shape=(4, 8)),
    ops.Identity: ops.Identity(),
    ops.Slice: ops.Slice(starts=(0, 1, 0), stops=(2, 4, 4), steps=(1, 2, 2)),
    ops.ChannelPad: ops.ChannelPad(before=1, after=2),
    ops.Pad2d: ops.Pad2d(padding=(1, 0, 2, 1)),
}


def test_the_spike_passing_ops_are_the_rearrangements_and_zero_paddings():
    passing = {cls for cls in ops.OPS.values() if cls.passes_spikes}
    assert passing == set(EXAMPLES)
    assert {cls for cls in ops.OPS.values() if cls.is_view} == {ops.Flatten, ops.Reshape, ops.Identity}


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.kind)
def test_spike_passing_ops_keep_binary_trains_binary(cls):
    rng = np.random.default_rng(1)
    spikes = (rng.random((3,) + SHAPE) < 0.4).astype(np.float32)
    out = apply(EXAMPLES[cls], spikes)
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert np.all(out.reshape(3, -1).sum(axis=1) <= spikes.reshape(3, -1).sum(axis=1))  # no spike is made up
    if cls.is_view:  # every element, in row-major order
        np.testing.assert_array_equal(out.reshape(3, -1), spikes.reshape(3, -1))


def test_fill_value_is_the_padding_constant():
    assert ops.Pad2d(padding=(1, 1, 1, 1), value=0.5).fill_value == 0.5
    assert ops.ChannelPad(before=1, value=-2.0).fill_value == -2.0
    assert ops.Flatten().fill_value == 0.0


def test_spikes_only_verifier_rejects_a_constant_padding_of_spikes():
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=SHAPE), name="x")
    p = g.add(ops.Population(neuron=IF()), [x], name="p")
    pad = g.add(ops.Pad2d(padding=(1, 1, 1, 1), value=0.5), [p], name="pad")
    conv = g.add(ops.Conv2d(weight=np.ones((1, 2, 3, 3))), [pad], name="conv")
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Flatten(), [conv])])]
    g.attrs["spikes_only"] = True
    with pytest.raises(VerificationError, match=r"Pad2d 'pad' pads with 0.5, which is not a spike"):
        verify(g)
    g.replace(pad, ops.Pad2d(padding=(1, 1, 1, 1)))
    verify(g)
