"""Scalar functions of the element-wise activations, on numpy arrays: the definition of each activation op.

Every function takes an array of any shape and returns float32 of the same shape. They are safe over the whole
float32 range: no intermediate value overflows (``exp`` only sees non-positive arguments), no ``inf - inf`` or
``0 * inf`` occurs, so there are no floating-point warnings and no NaN for a non-NaN input; ``-inf`` and ``+inf`` give
the limits of the function. The ops in
:mod:`snncc.ir.ops` return them from ``function`` and the runtime kernels call them, so the ANN executor and a
conversion pass that fits an activation see the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

#: Below this input the products ``x * g(x)`` of SiLU, HardSwish and GELU are 0 in float32 (|x g(x)| < 1e-45):
#: clamping there first keeps ``-inf * 0`` out of the arithmetic without changing any finite result.
_NEGLIGIBLE_BELOW = -200.0

# erfc(z) = t * exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0, with P the degree-9 polynomial of these
# coefficients (constant term first): a Chebyshev fit with fractional error below 1.2e-7 for every z >= 0
# (Press, Teukolsky, Vetterling and Flannery, Numerical Recipes, 2nd ed., 1992, Sec. 6.2).
_ERFC_COEFFICIENTS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
                      1.48851587, -0.82215223, 0.17087277)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``."""
    return np.maximum(_f32(x), np.float32(0))


def clip(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """``min(max(x, low), high)``."""
    return np.clip(_f32(x), np.float32(low), np.float32(high))


def leaky_relu(x: np.ndarray, alpha: float) -> np.ndarray:
    """``x if x >= 0 else alpha * x``."""
    x = _f32(x)
    return np.where(x >= 0, x, x * np.float32(alpha)).astype(np.float32, copy=False)


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float64 as ``1 / (1 + e)`` or ``e / (1 + e)`` with ``e = exp(-|x|) <= 1``."""
    e = np.exp(-np.abs(x))
    r = 1.0 / (1.0 + e)
    return np.where(x >= 0, r, e * r)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, computed in float64 and rounded once (so it is non-decreasing in float32 too)."""
    return _sigmoid64(np.asarray(x, dtype=np.float64)).astype(np.float32)


def tanh(x: np.ndarray) -> np.ndarray:
    """``(exp(x) - exp(-x)) / (exp(x) + exp(-x))``."""
    return np.tanh(_f32(x))


def hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``max(0, min(1, alpha * x + beta))`` (ONNX HardSigmoid; torch's Hardsigmoid is alpha = 1/6, beta = 1/2).

    The affine part runs in float64 on ``x`` with infinities replaced by +-3.5e38, so neither a large ``alpha``
    nor ``alpha = 0`` with an infinite ``x`` can overflow or produce ``0 * inf``.
    """
    x64 = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=np.nan, posinf=3.5e38, neginf=-3.5e38)
    return np.clip(x64 * alpha + beta, 0.0, 1.0).astype(np.float32)


def hard_swish(x: np.ndarray) -> np.ndarray:
    """``x * relu6(x + 3) / 6 = x * max(0, min(1, x / 6 + 1/2))`` (ONNX HardSwish, torch Hardswish)."""
    x = np.maximum(_f32(x), np.float32(_NEGLIGIBLE_BELOW))
    return (x * hard_sigmoid(x, 1 / 6, 0.5)).astype(np.float32, copy=False)


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)`` (SiLU, also called Swish with beta = 1)."""
    x64 = np.maximum(np.asarray(x, dtype=np.float64), _NEGLIGIBLE_BELOW)
    return (x64 * _sigmoid64(x64)).astype(np.float32)


def erfc(z: np.ndarray) -> np.ndarray:
    """Complementary error function ``1 - erf(z)`` in float64, fractional error below 1.2e-7 everywhere.

    ``erfc(-z) = 2 - erfc(z)``, so the fit on ``z >= 0`` covers the whole line; the tails never cancel: for large
    ``z`` the result is a product of small factors, not a difference of numbers close to 1.
    """
    z = np.asarray(z, dtype=np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = np.full_like(t, _ERFC_COEFFICIENTS[-1])
    for c in reversed(_ERFC_COEFFICIENTS[:-1]):
        poly *= t
        poly += c
    poly -= a * a
    upper = t * np.exp(poly, out=poly)
    return np.where(z >= 0, upper, 2.0 - upper)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU, ``x * Phi(x)`` with the standard normal distribution function ``Phi``.

    - ``approximate="none"``: ``Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2``;
    - ``approximate="tanh"``: ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 = sigmoid(2 u)`` with ``u``
      the argument of tanh (Hendrycks and Gimpel 2016), which does not cancel for negative ``x``.

    Both are computed in float64 and rounded once to float32.
    """
    x64 = np.maximum(np.asarray(x, dtype=np.float64), _NEGLIGIBLE_BELOW)
    if approximate == "tanh":
        bounded = np.minimum(x64, 1e6)  # keeps x^3 finite; sigmoid(2u) is exactly 1 long before
        phi = _sigmoid64(2.0 * _SQRT_2_OVER_PI * (bounded + _GELU_TANH_CUBIC * (bounded * bounded * bounded)))
    else:
        phi = 0.5 * erfc(-x64 / math.sqrt(2.0))
    return (x64 * phi).astype(np.float32)
