"""The table of scale rules of normalize covers every op an ANN-level graph can hold."""

from __future__ import annotations

from snncc.ir import ANN, ops
from snncc.ir.verify import LEVELS
from snncc.passes.normalize import SCALE_RULES


def _rule(cls: type[ops.Op]):
    return next((SCALE_RULES[c] for c in cls.__mro__ if c in SCALE_RULES), None)


def test_every_ann_level_op_has_a_scale_rule():
    missing = sorted(cls.kind for cls in LEVELS[ANN].op_classes if _rule(cls) is None)
    assert missing == []


def test_activations_without_a_rule_of_their_own_are_scale_barriers():
    barrier = SCALE_RULES[ops.PointwiseActivation]
    own = {ops.Relu, ops.Clip, ops.LeakyRelu}
    for cls in ops.POINTWISE_ACTIVATIONS:
        assert (_rule(cls) is barrier) == (cls not in own), cls.kind
