"""The element-wise activation ops: ``function`` against float64 references, the runtime kernel being that function,
safety over the whole float32 range, and the ``monotone`` flag checked on a dense grid."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from snncc.errors import IRError
from snncc.ir import ops
from snncc.ir.functions import erfc
from snncc.runtime import kernels


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _gelu_tanh64(x: np.ndarray) -> np.ndarray:
    """``x (1 + tanh(u)) / 2`` written as ``x sigmoid(2u)``, which does not cancel for negative ``x``."""
    return x * _sigmoid64(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))


# op -> float64 reference of its function
REFERENCES = {
    "relu": (ops.Relu(), lambda x: np.maximum(x, 0.0)),
    "clip": (ops.Clip(min=-0.5, max=2.0), lambda x: np.clip(x, -0.5, 2.0)),
    "leaky-relu": (ops.LeakyRelu(alpha=0.1), lambda x: np.where(x >= 0, x, 0.1 * x)),
    "sigmoid": (ops.Sigmoid(), _sigmoid64),
    "tanh": (ops.Tanh(), np.tanh),
    "hard-sigmoid": (ops.HardSigmoid(), lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0)),
    "hard-sigmoid-torch": (ops.HardSigmoid(alpha=1 / 6, beta=0.5), lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "hard-swish": (ops.HardSwish(), lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "silu": (ops.Silu(), lambda x: x * _sigmoid64(x)),
    "gelu": (ops.Gelu(), lambda x: np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x])),
    "gelu-tanh": (ops.Gelu(approximate="tanh"), _gelu_tanh64),
}
GRID = np.concatenate([np.linspace(-12, 12, 4801), np.geomspace(1e-6, 80, 200), -np.geomspace(1e-6, 80, 200)])
GRID = np.sort(GRID).astype(np.float32)
EXTREMES = np.array([-np.inf, -3.4e38, -1e20, -1e5, -300, -89, -88, 88, 89, 300, 1e5, 1e20, 3.4e38, np.inf],
                    dtype=np.float32)


@pytest.mark.parametrize("case", REFERENCES)
def test_function_matches_the_float64_definition(case):
    op, reference = REFERENCES[case]
    got = op.function(GRID)
    assert got.dtype == np.float32 and got.shape == GRID.shape
    want = reference(GRID.astype(np.float64))
    # a few float32 ulps relative, and an absolute floor for the far negative tails where values are ~1e-30
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps, atol=1e-30)


@pytest.mark.parametrize("case", REFERENCES)
def test_kernel_is_the_function(case):
    op, _ = REFERENCES[case]
    x = np.random.default_rng(0).normal(0, 4, (3, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(kernels.apply(op, x), op.function(x))
    assert op.function(x).shape == x.shape


@pytest.mark.parametrize("case", REFERENCES)
def test_extreme_inputs_give_limits_without_warnings(case):
    op, reference = REFERENCES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = op.function(EXTREMES)
        nan = op.function(np.array([np.nan], np.float32))
    assert not np.any(np.isnan(got)), got
    assert np.isnan(nan[0])
    with np.errstate(all="ignore"):
        finite = np.isfinite(EXTREMES) & (np.abs(EXTREMES) <= 1e5)
        want = reference(EXTREMES[finite].astype(np.float64))
    np.testing.assert_allclose(got[finite], want, rtol=4 * np.finfo(np.float32).eps, atol=1e-30)
    # Limits at -inf and +inf: activations saturate or become the identity (or its multiple for LeakyReLU)
    low, high = got[0], got[-1]
    assert np.isinf(high) or high == op.function(np.array([1e5], np.float32))[0]
    assert np.isinf(low) or low == op.function(np.array([-1e5], np.float32))[0]


MONOTONE = {"relu": True, "clip": True, "leaky-relu": True, "sigmoid": True, "tanh": True, "hard-sigmoid": True,
            "hard-sigmoid-torch": True, "hard-swish": False, "silu": False, "gelu": False, "gelu-tanh": False}


@pytest.mark.parametrize("case", REFERENCES)
def test_monotone_flag_agrees_with_the_function(case):
    op, _ = REFERENCES[case]
    steps = np.diff(op.function(GRID).astype(np.float64))
    assert op.monotone is MONOTONE[case]
    assert bool(np.all(steps >= 0)) is op.monotone


@pytest.mark.parametrize("op", [ops.LeakyRelu(alpha=-0.5), ops.HardSigmoid(alpha=-0.2, beta=0.5)])
def test_negative_slopes_are_not_monotone(op):
    assert not op.monotone
    assert np.any(np.diff(op.function(GRID)) < 0)


def test_every_pointwise_activation_has_a_reference():
    covered = {type(op) for op, _ in REFERENCES.values()}
    assert covered == set(ops.POINTWISE_ACTIVATIONS)
    assert ops.Softmax not in ops.POINTWISE_ACTIVATIONS and ops.Softmax in ops.ACTIVATIONS


@pytest.mark.parametrize("op, minimum, at", [(ops.Silu(), -0.27846, -1.27846), (ops.HardSwish(), -0.375, -1.5),
                                             (ops.Gelu(), -0.16997, -0.75179)])
def test_minima_of_the_non_monotone_activations(op, minimum, at):
    x = np.linspace(-4, 0, 400001, dtype=np.float32)
    y = op.function(x)
    assert y.min() == pytest.approx(minimum, abs=1e-5)
    assert x[np.argmin(y)] == pytest.approx(at, abs=2e-3)


def test_erfc_fractional_error():
    z = np.linspace(-6, 9, 30001)
    want = np.array([math.erfc(v) for v in z])
    assert np.max(np.abs(erfc(z) - want) / want) < 1.2e-7


@pytest.mark.parametrize("make, message", [
    (lambda: ops.Gelu(approximate="fast"), "approximate must be one of"),
    (lambda: ops.HardSigmoid(alpha=math.inf), "alpha must be finite"),
    (lambda: ops.HardSigmoid(beta=math.nan), "beta must be finite"),
])
def test_invalid_parameters(make, message):
    with pytest.raises(IRError, match=message):
        make()


def test_activations_are_ann_only():
    for cls in ops.ACTIVATIONS:
        assert cls.levels == frozenset({ops.ANN}), cls.kind
