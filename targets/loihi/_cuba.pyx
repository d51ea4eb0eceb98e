# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: nonecheck=False, embedsignature=True
"""Compiled integer step of the Loihi emulator (:mod:`snncc.targets.loihi.compiled`): one pass per population and
window over memory, the same integers as :mod:`snncc.targets.loihi.arithmetic`.

:func:`population_window` is, for every neuron and chip step of a window, exactly the equations of
``arithmetic.py`` (its module docstring; ``synaptic_input``, ``truncating_decay``, ``wrap24``, ``saturate24``,
``cuba_step``) on the synaptic sum ``a = sum_j q_ij s_j`` of the neuron's layer::

    a = a << e  (e > 0),  a >> -e  (e < 0, arithmetic: floor)     arithmetic.shift_by_exponent
    I = (a << 6) + b_c                                             synaptic_input + the layer's bias of channel c
    u = wrap24(trunc(u * (D - current_decay) / D) + I)             arithmetic.cuba_step
    v = sat24(trunc(v * (D - voltage_decay) / D) + u + bias)
    s = v >= threshold
    v = v - threshold  where s  (subtract)   or   v = 0  where s  (reset to zero)

in int64 (every intermediate value is far inside it: ``|a| < 2^24``, ``e <= 7``, ``|u|, |v| < 2^23``, decays at
most ``4096``), ``trunc(p / 4096) = sign(p) (|p| >> 12)``. The sums arrive as float32 holding integers exactly (the
emulator checks ``|a| < 2^24`` per layer before it runs); ``(int64) a`` is exact then.

The records of ``loihi-quantize`` (``current_decay = D``, ``voltage_decay = 0``: ``u = wrap24(I)``, ``v = sat24(v +
u + bias)``) take a 32-bit loop that the compiler vectorizes: ``wrap24(x)`` depends only on ``x mod 2^24``, so ``I``
may be formed modulo ``2^32`` (unsigned 32-bit products and sums, then ``(int32) (x << 8) >> 8``, the sign
extension of the low 24 bits); ``|v| < 2^23``, ``|u| <= 2^23`` and ``|bias| < 2^24`` keep ``v + u + bias`` inside
int32. Where the record's bias or the start state is outside those bounds the int64 loop runs.

The loop runs sample by sample (an OpenMP ``prange`` over the batch when compiled with OpenMP), step by step, and
neuron by neuron inside a step, the state of a sample in a per-thread row.
"""

from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    static int snncc_cuba_openmp(void) { return 1; }
    #else
    static int snncc_cuba_openmp(void) { return 0; }
    #endif
    """
    int snncc_cuba_openmp() nogil

cdef enum:
    DECAY_BITS = 12  # arithmetic.DECAY_BITS
    STATE_LIMIT = 8388608  # 2^23, arithmetic.STATE_LIMIT
    STATE_MASK = 16777215  # 2^24 - 1
    ACTIVATION_SHIFT = 6  # arithmetic.ACTIVATION_SHIFT


def openmp_enabled() -> bool:
    """Whether this module was compiled with OpenMP (otherwise the batch loop runs serially)."""
    return bool(snncc_cuba_openmp())


cdef inline int64_t _decay(int64_t x, int64_t keep) noexcept nogil:
    """``trunc(x * keep / 4096)`` toward zero: ``arithmetic.truncating_decay``."""
    cdef int64_t p = x * keep
    return (p >> DECAY_BITS) if p >= 0 else -((-p) >> DECAY_BITS)


cdef inline int64_t _wrap24(int64_t x) noexcept nogil:
    """Two's complement over 24 bits, ``[-2^23, 2^23)``: ``arithmetic.wrap24`` (the mask on the unsigned value)."""
    return <int64_t> ((<uint64_t> (x + STATE_LIMIT)) & STATE_MASK) - STATE_LIMIT


cdef inline int64_t _saturate24(int64_t x) noexcept nogil:
    """Clip to ``[-(2^23 - 1), 2^23 - 1]``: ``arithmetic.saturate24``."""
    if x > STATE_LIMIT - 1:
        return STATE_LIMIT - 1
    if x < -(STATE_LIMIT - 1):
        return -(STATE_LIMIT - 1)
    return x


cdef inline int64_t _synaptic_input(float a, int weight_exp) noexcept nogil:
    """``arithmetic.synaptic_input``: the sum shifted by the exponent, then ``<< 6`` (as products: a left shift of a
    negative value is undefined in C; the right shift of a negative int64 is arithmetic in GCC and Clang)."""
    cdef int64_t x = <int64_t> a
    if weight_exp > 0:
        x = x * ((<int64_t> 1) << weight_exp)
    elif weight_exp < 0:
        x = x >> (-weight_exp)
    return x * ((<int64_t> 1) << ACTIVATION_SHIFT)


cdef inline int64_t _row(const float* sums, Py_ssize_t channels, Py_ssize_t plane, int weight_exp,
                         const int32_t* layer_bias, int64_t* u, int64_t* v, int64_t current_keep,
                         int64_t voltage_keep, int64_t bias, int64_t threshold, bint subtract, bint memoryless,
                         uint8_t* spikes) noexcept nogil:
    """One chip step of one sample's population (the module docstring's equations); returns its spikes.
    ``memoryless``: ``current_decay = D`` and ``voltage_decay = 0`` (the records of loihi-quantize), where the
    decays are the identities ``trunc(u * 0 / D) = 0`` and ``trunc(v * D / D) = v``, written out so that the loop
    has no multiplications."""
    cdef Py_ssize_t c, j, i
    cdef int64_t current, uu, vv, channel_bias, count = 0
    cdef bint s
    for c in range(channels):
        channel_bias = 0 if layer_bias == NULL else layer_bias[c]
        for j in range(plane):
            i = c * plane + j
            current = _synaptic_input(sums[i], weight_exp) + channel_bias
            if memoryless:
                uu = _wrap24(current)
                vv = _saturate24(v[i] + uu + bias)
            else:
                uu = _wrap24(_decay(u[i], current_keep) + current)
                vv = _saturate24(_decay(v[i], voltage_keep) + uu + bias)
            s = vv >= threshold
            if s:
                vv = (vv - threshold) if subtract else 0
            u[i] = uu
            v[i] = vv
            spikes[i] = s
            count = count + s
    return count


cdef inline int64_t _row_memoryless(const float* sums, Py_ssize_t channels, Py_ssize_t plane, int weight_exp,
                                    const int32_t* layer_bias, int32_t* v, int32_t bias, int32_t threshold,
                                    bint subtract, uint8_t* spikes) noexcept nogil:
    """:func:`_row` for ``current_decay = D``, ``voltage_decay = 0`` in 32 bits (the module docstring: the same
    integers)."""
    cdef Py_ssize_t c, j
    cdef int right = -weight_exp if weight_exp < 0 else 0
    cdef int left = ACTIVATION_SHIFT + (weight_exp if weight_exp > 0 else 0)
    cdef uint32_t channel_bias, x
    cdef int32_t uu, vv, s, count = 0
    cdef const float* row
    cdef int32_t* vrow
    cdef uint8_t* out
    for c in range(channels):
        channel_bias = 0 if layer_bias == NULL else <uint32_t> layer_bias[c]
        row = sums + c * plane
        vrow = v + c * plane
        out = spikes + c * plane
        for j in range(plane):
            # (a >> r) << l modulo 2^32, plus the channel's bias modulo 2^32: the low 24 bits of the int64 value
            x = ((<uint32_t> ((<int32_t> row[j]) >> right)) << left) + channel_bias
            uu = (<int32_t> (x << 8)) >> 8  # wrap24: the low 24 bits, sign-extended
            vv = vrow[j] + uu + bias
            vv = (STATE_LIMIT - 1) if vv > STATE_LIMIT - 1 else vv
            vv = -(STATE_LIMIT - 1) if vv < -(STATE_LIMIT - 1) else vv
            s = vv >= threshold
            vrow[j] = (vv - threshold * s) if subtract else (vv if s == 0 else 0)
            out[j] = <uint8_t> s
            count = count + s
    return count


def population_window(const float[:, :, :] sums, int weight_exp, const int32_t[::1] layer_bias,
                      const int64_t[::1] u0, const int64_t[::1] v0, int current_decay, int voltage_decay,
                      int64_t bias, int64_t threshold, bint subtract, uint8_t[:, :, ::1] spikes,
                      float[:, ::1] counts, int threads=1):
    """A population's window of chip steps (module docstring): ``sums`` (T, B, N) float32 integers (the last axis
    contiguous: a block's channels of its group's sums), or (1, B, N) when the same at every step (the graded
    input's sums); ``layer_bias`` (C,) int32 in membrane units, the
    channel of neuron ``i`` being ``i // (N / C)``, or None; ``u0``, ``v0`` (N,) the state at the window's start
    (the same for every sample); the record's ``current_decay = du + 1``, ``voltage_decay = dv``, ``bias`` and
    ``threshold``. Writes ``spikes`` (T, B, N) (0/1) and adds each step's and sample's spike count to ``counts``
    (T, B)."""
    cdef Py_ssize_t steps = spikes.shape[0], batch = spikes.shape[1], n = spikes.shape[2]
    cdef Py_ssize_t given = sums.shape[0], channels = 1, plane, b, t, tid
    cdef const int32_t* bias_ptr = NULL
    cdef int64_t current_keep = (1 << DECAY_BITS) - current_decay, voltage_keep = (1 << DECAY_BITS) - voltage_decay
    cdef bint memoryless = current_decay == (1 << DECAY_BITS) and voltage_decay == 0
    cdef int64_t found
    if given != steps and given != 1:
        raise ValueError(f"population_window: sums of {given} steps for a window of {steps}")
    if sums.shape[1] != batch or sums.shape[2] != n or u0.shape[0] != n or v0.shape[0] != n:
        raise ValueError(f"population_window: sums {tuple(sums.shape)}, state ({u0.shape[0]}, {v0.shape[0]}) and "
                         f"spikes {tuple(spikes.shape)} do not match")
    if sums.strides[2] != sizeof(float):
        raise ValueError("population_window: the sums' last axis must be contiguous")
    if counts.shape[0] != steps or counts.shape[1] != batch:
        raise ValueError(f"population_window: counts {tuple(counts.shape)} for a window of {(steps, batch)}")
    if not 0 <= current_decay <= (1 << DECAY_BITS) or not 0 <= voltage_decay <= (1 << DECAY_BITS):
        raise ValueError(f"population_window: decays {current_decay}, {voltage_decay} outside [0, 4096]")
    if not -8 <= weight_exp <= 7:
        raise ValueError(f"population_window: weight exponent {weight_exp} outside [-8, 7]")
    if layer_bias is not None:
        channels = layer_bias.shape[0]
        if channels == 0 or n % channels:
            raise ValueError(f"population_window: {channels} channel biases for {n} neurons")
        bias_ptr = &layer_bias[0]
    plane = n // channels
    if steps == 0 or batch == 0 or n == 0:
        return
    threads = max(1, threads)
    cdef int64_t bias_limit = (<int64_t> 1) << 24, int32_limit = (<int64_t> 1) << 31
    cdef bint narrow = memoryless and -bias_limit < bias < bias_limit and -int32_limit < threshold < int32_limit \
        and np.abs(np.asarray(v0)).max() < STATE_LIMIT
    cdef int32_t[:, ::1] narrow_v
    cdef int32_t[::1] v0_narrow
    if narrow:
        narrow_v = np.empty((threads, n), np.int32)
        v0_narrow = np.asarray(v0).astype(np.int32)
        for b in prange(batch, nogil=True, num_threads=threads, schedule="static"):
            tid = threadid()
            memcpy(&narrow_v[tid, 0], &v0_narrow[0], n * sizeof(int32_t))
            for t in range(steps):
                found = _row_memoryless(&sums[t if given == steps else 0, b, 0], channels, plane, weight_exp,
                                        bias_ptr, &narrow_v[tid, 0], <int32_t> bias, <int32_t> threshold, subtract,
                                        &spikes[t, b, 0])
                counts[t, b] = counts[t, b] + <float> found
        return
    state = np.empty((threads, 2, n), np.int64)
    cdef int64_t[:, :, ::1] rows = state
    for b in prange(batch, nogil=True, num_threads=threads, schedule="static"):
        tid = threadid()
        memcpy(&rows[tid, 0, 0], &u0[0], n * sizeof(int64_t))
        memcpy(&rows[tid, 1, 0], &v0[0], n * sizeof(int64_t))
        for t in range(steps):
            found = _row(&sums[t if given == steps else 0, b, 0], channels, plane, weight_exp, bias_ptr,
                         &rows[tid, 0, 0], &rows[tid, 1, 0], current_keep, voltage_keep, bias, threshold, subtract,
                         memoryless, &spikes[t, b, 0])
            counts[t, b] = counts[t, b] + <float> found
