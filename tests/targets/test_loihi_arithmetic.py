"""Loihi's fixed-point arithmetic against hand-computed cases and the quantizers' error bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snncc.errors import SimulationError
from snncc.targets.loihi import arithmetic as la


def test_decay_truncates_toward_zero_for_both_signs():
    # 1000 * 4095 / 4096 = 999.756...: truncated to 999, and -999 (not -1000, which floor would give)
    assert la.truncating_decay(np.array([1000, -1000]), 4095).tolist() == [999, -999]
    # 7 * 2048 / 4096 = 3.5 -> 3 and -3
    assert la.truncating_decay(np.array([7, -7]), 2048).tolist() == [3, -3]
    assert la.truncating_decay(np.array([4095, -4095]), 1).tolist() == [0, 0]


def test_current_wraps_and_voltage_saturates_at_24_bits():
    top = 2 ** 23
    assert la.wrap24(np.array([top - 1, top, top + 5, -top, -top - 1])).tolist() == \
        [top - 1, -top, -top + 5, -top, top - 1]
    assert la.saturate24(np.array([top + 100, -top - 100, 12])).tolist() == [top - 1, -(top - 1), 12]
    # in the neuron: a current pushed over 2^23 comes back negative, the voltage sticks at its limit
    state = la.CubaState(u=np.array([top - 10]), v=np.array([top - 10]))
    state, spikes = la.cuba_step(state, np.array([20]), current_decay=1, voltage_decay=0, bias=0,
                                 threshold=la.record_threshold(2 ** 17 - 1))
    # u decays by 1/4096 (du = 0 has the one-bit offset), 8388598 * 4095 >> 12 = 8386550, + 20
    assert state.u.tolist() == [8386570]
    # v = 2^23 - 10 + 8386570 saturates at 2^23 - 1 > vth << 6 = 8388544: a spike, reset to zero
    assert spikes.tolist() == [True] and state.v.tolist() == [0]
    state = la.CubaState(u=np.array([-top + 10]), v=np.array([-top + 10]))
    state, spikes = la.cuba_step(state, np.array([-20]), 1, 0, 0, la.record_threshold(1))
    assert state.u.tolist() == [-8386570]  # -8388598 * 4095 / 4096 = -8386550.0..., truncated toward zero
    assert state.v.tolist() == [-(top - 1)] and spikes.tolist() == [False]  # saturated below
    wrapped = la.wrap24(np.int64(8386570) + 4000)
    assert wrapped == 8390570 - 2 ** 24


def test_threshold_shift_and_strict_comparison():
    assert la.record_threshold(100) == 6401
    assert la.threshold_register(6401) == 100
    with pytest.raises(SimulationError, match=r"\(vth << 6\) \+ 1"):
        la.threshold_register(6400)
    state = la.CubaState(np.zeros(2, np.int64), np.zeros(2, np.int64))
    # v = 6400 does not spike (chip: v > 100 << 6), v = 6401 does and resets to zero
    state, spikes = la.cuba_step(state, np.array([6400, 6401]), 4096, 0, 0, la.record_threshold(100))
    assert spikes.tolist() == [False, True]
    assert state.v.tolist() == [6400, 0]


def test_weight_exponent_and_activation_shift():
    # weight 3 with exponent 2 is worth 3 * 2^(6 + 2) = 768 membrane units per spike
    assert la.synaptic_input(np.array([3]), 2).tolist() == [768]
    assert la.weight_value(3, 2) == 768
    # a negative exponent shifts the accumulated sum (floor), then << 6
    assert la.synaptic_input(np.array([5, -5]), -1).tolist() == [2 << 6, -3 << 6]
    with pytest.raises(SimulationError, match="outside Loihi's range"):
        la.shift_by_exponent(np.array([1]), 8)


def test_sign_modes_clip_to_their_ranges():
    q = la.quantize_weights(np.array([1e9, -1e9, 3 * 128.0]), 0, "mixed").q
    assert q.tolist() == [254, -256, 6]
    assert la.quantize_weights(np.array([1e9, -5.0, 64.0 * 7]), 0, "excitatory").q.tolist() == [255, 0, 7]


def test_bias_mantissa_is_13_bit_signed():
    assert la.quantize_bias(np.array([64 * 10.4, -64 * 1e6, 64 * 1e6])).tolist() == [10, -4096, 4095]


def test_current_decay_and_integration_of_the_voltage():
    state = la.CubaState(np.array([4096]), np.array([0]))
    # current_decay 1024 keeps 3072/4096 of u; voltage_decay 0 integrates exactly
    state, _ = la.cuba_step(state, np.array([0]), 1024, 0, bias=10, threshold=la.record_threshold(1000))
    assert state.u.tolist() == [3072] and state.v.tolist() == [3082]
    state, _ = la.cuba_step(state, np.array([0]), 1024, 0, bias=10, threshold=la.record_threshold(1000))
    assert state.u.tolist() == [2304] and state.v.tolist() == [3082 + 2304 + 10]


def test_reset_by_subtraction_keeps_the_residual():
    state = la.CubaState(np.zeros(1, np.int64), np.array([100]))
    state, spikes = la.cuba_step(state, np.array([6400]), 4096, 0, 0, la.record_threshold(100), subtract=True)
    assert spikes.tolist() == [True] and state.v.tolist() == [6500 - 6401]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-30000, 30000, allow_nan=False), min_size=1, max_size=20), st.integers(-6, 7))
def test_weight_quantization_error_is_at_most_half_a_step_inside_the_range(values, exp):
    w = np.array(values)
    quantized = la.quantize_weights(w, exp)
    error = np.abs(la.weight_value(quantized.q, exp) - w)
    inside = np.abs(w) <= 254 * 2.0 ** (6 + exp)
    assert np.all(error[inside] <= quantized.step / 2 + 1e-9)
    assert np.all(quantized.q % 2 == 0)


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 2.0 ** 23 - 64, allow_nan=False))
def test_threshold_quantization_error_is_at_most_half_a_step(threshold):
    t = la.quantize_threshold(threshold)
    assert (t - 1) % 64 == 0
    if threshold >= 64 + 1:
        assert abs(t - threshold) <= 32


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-2 ** 40, 2 ** 40), min_size=1, max_size=10))
def test_wrap_is_congruent_modulo_2_to_the_24(values):
    x = np.array(values, dtype=np.int64)
    wrapped = la.wrap24(x)
    assert np.all((wrapped - x) % 2 ** 24 == 0)
    assert np.all((wrapped >= -2 ** 23) & (wrapped < 2 ** 23))
