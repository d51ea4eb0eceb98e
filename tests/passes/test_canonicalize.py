"""Canonicalize rewrites, before and after, and exactness of every fold."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.ir import Graph, ops, to_text
from snncc.passes import run_pipeline
from snncc.runtime import run_analog


def _kinds(g: Graph) -> list[str]:
    return [g.op(n).kind for n in g.topological_order()]


def _close(a: Graph, b: Graph, x: np.ndarray) -> None:
    ya, yb = run_analog(a, x)[0], run_analog(b, x)[0]
    assert np.abs(ya - yb).max() <= 1e-4 * np.abs(ya).max()


@pytest.fixture
def x():
    return np.random.default_rng(3).uniform(0, 255, (8, 2, 9, 9)).astype(np.float32)


def _conv(rng, out_ch, in_ch, padding=(1, 1, 1, 1), bias=True, groups=1):
    return ops.Conv2d(weight=rng.normal(size=(out_ch, in_ch // groups, 3, 3)),
                      bias=rng.normal(size=out_ch) if bias else None, padding=padding, groups=groups)


def _bn(rng, channels):
    return ops.Affine(scale=rng.uniform(0.5, 2, (channels, 1, 1)), shift=rng.normal(size=(channels, 1, 1)))


def test_input_normalization_folds_into_padded_first_conv_exactly(x):
    rng = np.random.default_rng(0)
    g = Graph()
    h = g.add(ops.Input(shape=(2, 9, 9)))
    h = g.add(ops.Affine(scale=np.ones(()), shift=np.array([[[-120.0]], [[-80.0]]])), [h], name="sub")
    h = g.add(ops.Affine(scale=np.array([[[1 / 60.0]], [[1 / 70.0]]]), shift=np.zeros(())), [h], name="div")
    h = g.add(_conv(rng, 4, 2), [h], name="conv")
    g.outputs = [h]
    c = run_pipeline(g, "canonicalize")
    assert _kinds(c) == ["Input", "Conv2d"]
    np.testing.assert_allclose(c.op("conv").pad_value, [120.0, 80.0], rtol=1e-6)
    _close(g, c, x)


@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_folds_in_both_orders(x, groups):
    rng = np.random.default_rng(1)
    g = Graph()
    h = g.add(ops.Input(shape=(2, 9, 9)))
    h = g.add(_conv(rng, 4, 2, groups=groups, bias=False), [h], name="conv1")
    h = g.add(_bn(rng, 4), [h], name="bn1")  # BN after conv
    h = g.add(ops.Relu(), [h], name="relu")
    h = g.add(_bn(rng, 4), [h], name="bn2")  # BN before conv (after the activation)
    h = g.add(_conv(rng, 4, 4, groups=groups), [h], name="conv2")
    g.outputs = [h]
    c = run_pipeline(g, "canonicalize")
    assert _kinds(c) == ["Input", "Conv2d", "Relu", "Conv2d"]
    _close(g, c, x)


def test_matmul_plus_add_becomes_linear_with_bias():
    rng = np.random.default_rng(2)
    g = Graph()
    h = g.add(ops.Input(shape=(6,)))
    h = g.add(ops.Linear(weight=rng.normal(size=(3, 6))), [h], name="matmul")
    h = g.add(ops.Affine(scale=np.ones(()), shift=rng.normal(size=3)), [h], name="add")
    g.outputs = [h]
    c = run_pipeline(g, "canonicalize")
    assert _kinds(c) == ["Input", "Linear"] and c.op("matmul").bias is not None
    _close(g, c, rng.normal(size=(5, 6)).astype(np.float32))


def test_identity_pad_and_pool_order(x):
    rng = np.random.default_rng(4)
    g = Graph()
    h = g.add(ops.Input(shape=(2, 9, 9)))
    h = g.add(ops.Identity(), [h], name="dropout")
    h = g.add(ops.Pad2d(padding=(1, 1, 1, 1)), [h], name="pad")
    h = g.add(_conv(rng, 4, 2, padding=(0, 0, 0, 0)), [h], name="conv")
    h = g.add(ops.MaxPool2d(kernel=(2, 2), stride=(2, 2)), [h], name="pool")
    h = g.add(ops.Relu(), [h], name="relu")
    g.outputs = [h]
    c = run_pipeline(g, "canonicalize")
    assert _kinds(c) == ["Input", "Conv2d", "Relu", "MaxPool2d"]
    assert c.op("conv").padding == (1, 1, 1, 1)
    assert c.outputs == ["pool"]
    _close(g, c, x)


def test_spatially_varying_affine_is_left_alone(x):
    rng = np.random.default_rng(5)
    g = Graph()
    h = g.add(ops.Input(shape=(2, 9, 9)))
    h = g.add(_conv(rng, 4, 2), [h], name="conv")
    h = g.add(ops.Affine(scale=np.ones(()), shift=rng.normal(size=(4, 9, 9))), [h], name="pos")
    g.outputs = [h]
    c = run_pipeline(g, "canonicalize")
    assert _kinds(c) == ["Input", "Conv2d", "Affine"]
    _close(g, c, x)


def test_canonicalize_twice_is_a_no_op(cnn):
    once = run_pipeline(cnn, "canonicalize")
    twice = run_pipeline(once, "canonicalize")
    assert to_text(once) == to_text(twice)
    assert all(once.op(n).same_as(twice.op(n)) for n in once.nodes())


@pytest.mark.parametrize("activation, moves", [
    (ops.Relu(), True), (ops.Clip(min=-1.0, max=2.0), True), (ops.LeakyRelu(alpha=0.1), True),
    (ops.LeakyRelu(alpha=-0.1), False), (ops.Sigmoid(), True), (ops.Tanh(), True), (ops.HardSigmoid(), True),
    (ops.HardSigmoid(alpha=-0.2), False), (ops.HardSwish(), False), (ops.Silu(), False), (ops.Gelu(), False),
    (ops.Gelu(approximate="tanh"), False),
])
def test_max_pool_moves_behind_monotone_activations_only(activation, moves):
    """``max act(x) = act(max x)`` holds for non-decreasing ``act`` (``op.monotone``), not for SiLU, GELU, ..."""
    rng = np.random.default_rng(6)
    g = Graph()
    h = g.add(ops.Input(shape=(2, 9, 9)))
    h = g.add(_conv(rng, 4, 2), [h], name="conv")
    h = g.add(ops.MaxPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)), [h], name="pool")
    h = g.add(activation, [h], name="act")
    g.outputs = [h]
    c = run_pipeline(g, "canonicalize")
    kind = activation.kind
    assert _kinds(c) == (["Input", "Conv2d", kind, "MaxPool2d"] if moves else ["Input", "Conv2d", "MaxPool2d", kind])
    _close(g, c, np.random.default_rng(7).normal(0, 0.02, (8, 2, 9, 9)).astype(np.float32))
