"""Loihi's fixed-point arithmetic: the CUBA neuron and the synapse as the chip computes them, vectorized in numpy.

Read from Lava's bit-accurate process models (``lava-nc/lava``, ``src/lava/proc/lif/models.py``,
``AbstractPyLifModelFixed.subthr_dynamics`` and ``PyLifModelBitAcc``; ``src/lava/proc/dense/models.py``,
``AbstractPyDenseModelBitAcc.run_spk``; ``src/lava/utils/weightutils.py``) and from lava-dl's netx loader
(``src/lava/lib/dl/netx/hdf5.py``, ``Network.get_neuron_params``); Davies et al., "Loihi: a neuromorphic manycore
processor with on-chip learning", IEEE Micro 38(1), 2018. Nothing here is copied; the equations are:

Synapse (one time step, spikes ``s`` of the presynaptic layer, 0/1, or graded payloads on Loihi 2)::

    a = sum_j q_ij s_j                       q: the stored weight, an integer of the sign mode's range
    a = a << e          if e > 0             e: the weight exponent of the connection, in [-8, 7]
    a = a >> -e         otherwise            (arithmetic shift: floor for negative sums)

and the neuron left-shifts ``a`` by 6 (``act_shift``) before adding it, so a weight is worth ``q * 2^(6 + e)``
in membrane units. Sign modes (weightutils ``clip_weights``/``truncate_weights``): MIXED stores ``q`` in
[-256, 254] with the lowest bit dropped (8 bits with the sign: even values), EXCITATORY ``q`` in [0, 255],
INHIBITORY ``q`` in [-255, 0].

CUBA neuron (``du``, ``dv`` 12-bit registers; ``D = 4096``)::

    u = trunc(u * (D - (du + 1)) / D) + (a << 6)        wrapped to 24 bits (two's complement)
    v = trunc(v * (D - dv) / D) + u + bias               saturated to [-(2^23 - 1), 2^23 - 1]
    s = v > (vth << 6)                                   strictly greater; vth is 17 bits
    v = 0 where s                                        reset to zero

``trunc`` rounds toward zero (``sign(x) * (|x| >> 12)``, as the chip's multiplier does). The current's decay
register has a one-bit offset (``ds_offset = 1``), so the current always loses at least ``1/4096`` per step and
``du = 4095`` forgets it entirely; the voltage's offset is 0, so ``dv = 0`` integrates without loss. lava-dl's
netx stores the effective current decay, ``iDecay = du + 1``, and ``vDecay = dv``. The bias is ``bias_mant <<
bias_exp`` (13-bit signed mantissa; netx fixes ``bias_exp = 6``).

Overflow (``subthr_dynamics``): "Overflows are handled by wrapping around modulo 2 ** 23" for ``u`` (the
``np.where(decayed_curr > self.max_uv_val, ...)`` lines) and ``np.clip(updated_volt, neg_voltage_limit,
pos_voltage_limit)`` for ``v``. :func:`wrap24` is two's complement over 24 bits, ``[-2^23, 2^23)``; Lava's Python
model differs from it at exactly two values (it keeps ``+2^23`` and maps ``-2^23`` to ``+2^23``), which are not
24-bit values at all, so the chip cannot hold them and this module follows two's complement.

snncc's :class:`~snncc.ir.neurons.CubaLIF` record holds these numbers as ``current_decay = du + 1`` (netx's
``iDecay``), ``voltage_decay = dv``, ``bias`` in membrane units and ``threshold = (vth << 6) + 1`` (its spike
condition is ``v >= threshold``, the same set as the chip's ``v > vth << 6`` for integers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.errors import SimulationError

DECAY_BITS = 12
DECAY_UNIT = 1 << DECAY_BITS  # 4096
STATE_BITS = 24
STATE_LIMIT = 1 << (STATE_BITS - 1)  # 2^23
ACTIVATION_SHIFT = 6  # the neuron's left shift of the synaptic input (Lava's act_shift)
THRESHOLD_SHIFT = 6  # vth << 6 (Lava's vth_shift)
THRESHOLD_MANTISSA_BITS = 17  # vth is an unsigned 17-bit register
BIAS_MANTISSA_BITS = 13  # signed
NETX_BIAS_EXP = 6  # netx's fixed bias exponent
WEIGHT_EXP_RANGE = (-8, 7)

#: Stored weight range of each sign mode, (lowest, highest, step).
SIGN_MODES = {"mixed": (-256, 254, 2), "excitatory": (0, 255, 1), "inhibitory": (-255, 0, 1)}


def truncating_decay(x: np.ndarray, keep: int | np.ndarray) -> np.ndarray:
    """``trunc(x * keep / 4096)`` rounded toward zero, in int64: the chip's decay of a state by ``keep / 4096``.
    (``keep = 4096`` keeps the state exactly and ``keep = 0`` clears it; those take no arithmetic.)"""
    if np.ndim(keep) == 0 and keep == DECAY_UNIT:
        return np.asarray(x, dtype=np.int64)
    if np.ndim(keep) == 0 and keep == 0:
        return np.zeros(np.shape(x), np.int64)
    product = np.asarray(x, dtype=np.int64) * np.asarray(keep, dtype=np.int64)
    return np.sign(product) * (np.abs(product) >> DECAY_BITS)


def wrap24(x: np.ndarray) -> np.ndarray:
    """Two's complement wrap of int64 values to 24 bits: the result lies in ``[-2^23, 2^23)``."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + STATE_LIMIT) & ((1 << STATE_BITS) - 1)) - STATE_LIMIT


def saturate24(x: np.ndarray) -> np.ndarray:
    """Clip int64 values to the voltage's range ``[-(2^23 - 1), 2^23 - 1]``."""
    return np.clip(np.asarray(x, dtype=np.int64), -(STATE_LIMIT - 1), STATE_LIMIT - 1)


def check_weight_exponent(weight_exp: int) -> int:
    """``weight_exp``, refused unless it lies in Loihi's range ``[-8, 7]``."""
    if not WEIGHT_EXP_RANGE[0] <= weight_exp <= WEIGHT_EXP_RANGE[1]:
        raise SimulationError(f"weight exponent {weight_exp} lies outside Loihi's range {list(WEIGHT_EXP_RANGE)}")
    return weight_exp


def shift_by_exponent(accumulated: np.ndarray, weight_exp: int) -> np.ndarray:
    """The synapse's shift of an accumulated integer sum by the weight exponent (arithmetic: floor for e < 0)."""
    check_weight_exponent(weight_exp)
    a = np.asarray(accumulated, dtype=np.int64)
    if weight_exp == 0:
        return a
    return a << weight_exp if weight_exp > 0 else a >> -weight_exp


def synaptic_input(accumulated: np.ndarray, weight_exp: int) -> np.ndarray:
    """What a neuron adds to its current for an accumulated sum ``sum q s``: shifted by the exponent, then << 6."""
    return shift_by_exponent(accumulated, weight_exp) << ACTIVATION_SHIFT


def weight_value(q: np.ndarray | int, weight_exp: int) -> np.ndarray:
    """A stored weight in membrane units, ``q * 2^(6 + e)`` (exact for one spike when ``6 + e >= 0``)."""
    return np.asarray(q, dtype=np.float64) * 2.0 ** (ACTIVATION_SHIFT + weight_exp)


@dataclass(frozen=True)
class QuantizedWeights:
    """Weights in the chip's format: stored values ``q`` (int16, of the sign mode's range) and exponent ``e``."""

    q: np.ndarray
    weight_exp: int
    sign_mode: str

    @property
    def step(self) -> float:
        """One step of the grid in membrane units."""
        return SIGN_MODES[self.sign_mode][2] * 2.0 ** (ACTIVATION_SHIFT + self.weight_exp)


def quantize_weights(w: np.ndarray, weight_exp: int, sign_mode: str = "mixed") -> QuantizedWeights:
    """Round membrane-unit weights ``w`` to the nearest ``q * 2^(6 + e)`` of the sign mode's grid, clipped to
    its range (half away from zero at a tie is numpy's round-half-even here; the error is at most half a step
    inside the range)."""
    lo, hi, step = SIGN_MODES[sign_mode]
    unit = step * 2.0 ** (ACTIVATION_SHIFT + weight_exp)
    q = np.clip(np.round(np.asarray(w, dtype=np.float64) / unit) * step, lo, hi)
    return QuantizedWeights(q.astype(np.int16), weight_exp, sign_mode)


def threshold_register(threshold: int) -> int:
    """The 17-bit ``vth`` of a record threshold ``(vth << 6) + 1`` (spike when ``v >= threshold``)."""
    vth, rest = divmod(int(threshold) - 1, 1 << THRESHOLD_SHIFT)
    if rest or not 0 <= vth < 1 << THRESHOLD_MANTISSA_BITS:
        raise SimulationError(f"threshold {threshold} is not (vth << 6) + 1 with a 17-bit vth")
    return vth


def record_threshold(vth: int) -> int:
    """``(vth << 6) + 1``: the record's ``v >= threshold`` for the chip's ``v > vth << 6``."""
    return (int(vth) << THRESHOLD_SHIFT) + 1


def quantize_threshold(threshold: float) -> int:
    """The record threshold nearest to a membrane-unit ``threshold``: ``(round((t - 1) / 64) << 6) + 1``, with
    ``vth`` in ``[1, 2^17 - 1]``."""
    vth = int(np.clip(np.round((threshold - 1) / (1 << THRESHOLD_SHIFT)), 1, (1 << THRESHOLD_MANTISSA_BITS) - 1))
    return record_threshold(vth)


def quantize_bias(bias: np.ndarray, bias_exp: int = NETX_BIAS_EXP) -> np.ndarray:
    """Membrane-unit biases rounded to ``mant << bias_exp`` with a 13-bit signed mantissa (clipped); returns the
    mantissas (int32)."""
    limit = 1 << (BIAS_MANTISSA_BITS - 1)
    return np.clip(np.round(np.asarray(bias, dtype=np.float64) / (1 << bias_exp)), -limit, limit - 1).astype(np.int32)


@dataclass
class CubaState:
    """The integer state of a population: current ``u`` and voltage ``v``, int64 arrays (batch, *shape)."""

    u: np.ndarray
    v: np.ndarray


def cuba_step(state: CubaState, current_in: np.ndarray, current_decay: int, voltage_decay: int,
              bias: int | np.ndarray, threshold: int, subtract: bool = False) -> tuple[CubaState, np.ndarray]:
    """One step of the chip's CUBA neuron on the record's numbers (see the module docstring).

    ``current_in`` is the synaptic input in membrane units (already ``<< 6``), ``current_decay = du + 1``,
    ``voltage_decay = dv``, ``bias`` in membrane units, ``threshold = (vth << 6) + 1``. ``subtract`` replaces the
    reset to zero by ``v -= threshold`` (a programmable Loihi 2 neuron; Loihi 1 has only the reset to zero).
    Returns the new state and the spikes (bool)."""
    u = wrap24(truncating_decay(state.u, DECAY_UNIT - current_decay) + current_in)
    v = saturate24(truncating_decay(state.v, DECAY_UNIT - voltage_decay) + u + bias)
    spikes = v >= threshold
    v = np.where(spikes, v - threshold, v) if subtract else np.where(spikes, 0, v)
    return CubaState(u, v), spikes


def cuba_window(state: CubaState, currents: np.ndarray, current_decay: int, voltage_decay: int,
                bias: int | np.ndarray, threshold: int, subtract: bool = False) -> tuple[CubaState, np.ndarray]:
    """:func:`cuba_step` over every step of ``currents`` (T, *shape), the same integers: returns the state after
    the last step and the spikes (T, *shape) as uint8.

    The records of ``loihi-quantize`` hold only the step's input in the current (``current_decay = D``: ``u(t) =
    wrap24(a(t))``, no recurrence) and integrate the voltage without loss (``voltage_decay = 0``); for them the
    currents of all steps are wrapped at once and the voltage ``v(t) = sat24(v(t-1) + u(t) + bias)`` runs in place
    in int32, exact because ``|v| < 2^23``, ``|u| <= 2^23`` and ``|bias| < 2^24`` sum below ``2^31`` (over a third
    of the VGG emulator's time was this loop in int64). Other records take :func:`cuba_step` step by step."""
    bias_max = int(np.abs(np.asarray(bias)).max(initial=0))
    if current_decay != DECAY_UNIT or voltage_decay != 0 or bias_max >= 1 << STATE_BITS:
        out = np.zeros(currents.shape, np.uint8)
        for t in range(currents.shape[0]):
            state, s = cuba_step(state, currents[t], current_decay, voltage_decay, bias, threshold, subtract)
            out[t] = s
        return state, out
    u = wrap24(currents)
    drive = u.astype(np.int32)
    if bias_max:
        drive += np.asarray(bias, dtype=np.int32)
    v = np.array(np.broadcast_to(state.v, currents.shape[1:]), dtype=np.int32)
    spikes = np.empty(currents.shape, np.bool_)
    for t in range(currents.shape[0]):
        np.add(v, drive[t], out=v)
        np.clip(v, -(STATE_LIMIT - 1), STATE_LIMIT - 1, out=v)
        s = np.greater_equal(v, threshold, out=spikes[t])
        if subtract:
            np.subtract(v, threshold, out=v, where=s)
        else:
            np.copyto(v, 0, where=s)
    return CubaState(u[-1], v.astype(np.int64)), spikes.view(np.uint8)
