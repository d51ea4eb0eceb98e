# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: nonecheck=False, embedsignature=True
"""Compiled kernels of the Cython runtime (see :mod:`snncc.runtime.cython_engine`).

Every kernel works on a chunk of ``Tc`` time steps of a batch of ``B`` samples, in the reference simulator's layout
``(Tc, B, *shape)`` with C-contiguous trailing axes. Inner loops run without the GIL; the outer loop over samples (or
over the ``Tc * B`` rows of a time-folded chunk) is an OpenMP ``prange`` when the extension was compiled with OpenMP.

Float arithmetic is float32 in exactly the order of :mod:`snncc.runtime.reference`, so that spikes are identical:

- population (``_PopulationState.step``): ``v = v * beta`` (LIF only), ``v = v + I``, ``s = v >= theta``, then
  ``v = v - theta`` (reset by subtraction) or ``v = 0`` (reset to zero) where ``s``;
- synaptic accumulation of binary spikes: ``y[o] = (sum over inputs k that spiked, in ascending k) W[o, k]``, then
  ``y[o] = y[o] + b[o]``. With 0/1 inputs a BLAS micro-kernel computes ``fma(W[o,k], x[k], acc)``, which is
  ``acc + W[o,k]`` for a spike and ``acc`` otherwise, in ascending ``k``; so this is the reference's dense product,
  term for term, whenever the BLAS does not split the reduction axis into blocks (see the engine's docstring);
- readout (``_ReadoutState.step``): ``total += I`` in float64, output ``float32(total / t)``;
- spiking max pooling (``_MaxCountState.step``): counts are integers, so the running max is exact in any order.

The build must not contract ``v * beta + I`` into a fused multiply-add (``setup.py`` passes ``-ffp-contract=off``):
the reference rounds the product before the addition.
"""

from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport int32_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int snncc_openmp(void) { return 1; }
    static int snncc_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int snncc_openmp(void) { return 0; }
    static int snncc_max_threads(void) { return 1; }
    #endif
    #ifdef SNNCC_BOUNDSCHECK
    static int snncc_boundscheck(void) { return 1; }
    #else
    static int snncc_boundscheck(void) { return 0; }
    #endif
    """
    int snncc_openmp() nogil
    int snncc_max_threads() nogil
    int snncc_boundscheck() nogil

ctypedef fused spike_t:
    uint8_t
    float

ctypedef fused event_t:
    uint8_t
    float


def openmp_enabled() -> bool:
    """Whether the extension was compiled with OpenMP (otherwise every ``prange`` runs serially)."""
    return bool(snncc_openmp())


def max_threads() -> int:
    """OpenMP's default number of threads (1 without OpenMP)."""
    return snncc_max_threads()


def boundscheck_enabled() -> bool:
    """Whether the module was built with bounds checks (``SNNCC_BOUNDSCHECK=1`` at build time, see setup.py)."""
    return bool(snncc_boundscheck())


# --------------------------------------------------------------------------------------------------------------
# Populations
# --------------------------------------------------------------------------------------------------------------

cdef inline int _population_row(float* v, const float* current, spike_t* spikes, Py_ssize_t n, float threshold,
                                float decay, bint leak, bint subtract) noexcept nogil:
    """One step of ``n`` neurons of one sample; returns the number of spikes. The order of operations is the
    reference's: decay, add the current, compare, reset."""
    cdef Py_ssize_t i
    cdef float x
    cdef int s, count = 0
    for i in range(n):
        x = v[i]
        if leak:
            x = x * decay
        x = x + current[i]
        s = x >= threshold
        if subtract:
            x = x - threshold if s else x
        else:
            x = 0.0 if s else x
        v[i] = x
        spikes[i] = <spike_t> s
        count = count + s
    return count


def population_steps(const float[:, :, ::1] current, float[:, ::1] v, spike_t[:, :, ::1] spikes,
                     float[:, ::1] counts, float threshold, float decay, bint leak, bint subtract, int threads=1):
    """Advance a population by ``Tc = spikes.shape[0]`` steps.

    ``current``: (Tc, B, n) input current, or (1, B, n) for a current constant in time; ``v``: (B, n) membrane
    state, updated in place; ``spikes``: (Tc, B, n) output, 0 or 1; ``counts``: (Tc, B) spikes per sample and step.
    Per neuron and step (float32)::

        v = v * decay      (if leak)
        v = v + I(t)
        s = v >= threshold
        v = v - threshold  (subtract) or 0 (zero)   where s
    """
    cdef Py_ssize_t tc = spikes.shape[0], batch = spikes.shape[1], n = spikes.shape[2]
    cdef Py_ssize_t b, t, step = _time_step(current.shape[0], tc, "population current")
    _check_shape("population current", (batch, n), (current.shape[1], current.shape[2]))
    _check_shape("population state", (batch, n), (v.shape[0], v.shape[1]))
    _check_shape("population counts", (tc, batch), (counts.shape[0], counts.shape[1]))
    if n == 0 or tc == 0 or batch == 0:
        counts[:, :] = 0
        return
    for b in prange(batch, nogil=True, num_threads=max(1, threads), schedule="static"):
        for t in range(tc):
            counts[t, b] = <float> _population_row(&v[b, 0], &current[t * step, b, 0], &spikes[t, b, 0], n,
                                                   threshold, decay, leak, subtract)


def _time_step(Py_ssize_t given, Py_ssize_t tc, what: str) -> Py_ssize_t:
    """1 when an input has one entry per step, 0 when it is constant in time (a single entry)."""
    if given == tc:
        return 1
    if given == 1:
        return 0
    raise ValueError(f"{what}: {given} time steps for a chunk of {tc} (expected {tc}, or 1 when constant)")


# --------------------------------------------------------------------------------------------------------------
# Readout
# --------------------------------------------------------------------------------------------------------------

def readout_steps(const float[:, :, ::1] current, double[:, ::1] total, long t0, float[:, :, ::1] out,
                  int threads=1):
    """Running mean of the input current: ``total += I(t)`` (float64), ``out[t] = float32(total / (t0 + t + 1))``.

    ``current``: (Tc, B, n), or (1, B, n) when constant in time; ``total``: (B, n) state; ``out``: (Tc, B, n).
    """
    cdef Py_ssize_t tc = out.shape[0], batch = out.shape[1], n = out.shape[2]
    cdef Py_ssize_t b, t, i, step = _time_step(current.shape[0], tc, "readout current")
    cdef double steps
    _check_shape("readout current", (batch, n), (current.shape[1], current.shape[2]))
    _check_shape("readout state", (batch, n), (total.shape[0], total.shape[1]))
    for b in prange(batch, nogil=True, num_threads=max(1, threads), schedule="static"):
        for t in range(tc):
            steps = <double> (t0 + t + 1)
            for i in range(n):
                total[b, i] = total[b, i] + <double> current[t * step, b, i]
                out[t, b, i] = <float> (total[b, i] / steps)


# --------------------------------------------------------------------------------------------------------------
# Event lists
# --------------------------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _nonzero(const uint8_t* x, Py_ssize_t n, int32_t* index) noexcept nogil:
    """Write the positions of the non-zero bytes of ``x[:n]`` to ``index`` in ascending order; return their number.

    Spike trains are sparse, so eight bytes are tested at once and runs of zeros are skipped.
    """
    cdef Py_ssize_t i = 0, j, count = 0
    cdef uint64_t word
    while i + 8 <= n:
        memcpy(&word, x + i, 8)
        if word != 0:
            for j in range(i, i + 8):
                if x[j] != 0:
                    index[count] = <int32_t> j
                    count = count + 1
        i = i + 8
    for j in range(i, n):
        if x[j] != 0:
            index[count] = <int32_t> j
            count = count + 1
    return count


def count_events(const event_t[:, ::1] x, const double[::1] fan_out, double[::1] synops, int threads=1):
    """``synops[r] += sum of fan_out[k] over the non-zero x[r, k]``: synaptic operations of a dense layer's input."""
    cdef Py_ssize_t rows = x.shape[0], k = x.shape[1], r, i
    cdef double total
    _check_shape("event count", (k,), (fan_out.shape[0],))
    _check_shape("event count rows", (rows,), (synops.shape[0],))
    for r in prange(rows, nogil=True, num_threads=max(1, threads), schedule="static"):
        total = 0.0
        for i in range(k):
            if x[r, i] != 0:
                total = total + fan_out[i]
        synops[r] = synops[r] + total


def to_float32(const uint8_t[::1] x, float[::1] out, int threads=1):
    """``out[:] = x`` (spikes as float32 for a dense kernel), in parallel."""
    cdef Py_ssize_t n = x.shape[0], i
    _check_shape("conversion", (n,), (out.shape[0],))
    for i in prange(n, nogil=True, num_threads=max(1, threads), schedule="static"):
        out[i] = <float> x[i]


# --------------------------------------------------------------------------------------------------------------
# Event-driven synapses
# --------------------------------------------------------------------------------------------------------------

cdef inline void _linear_row(const uint8_t* x, Py_ssize_t k, const float* weight_t, Py_ssize_t n_out,
                             const float* bias, const double* fan_out, float* out, double* synops,
                             int32_t* index) noexcept nogil:
    cdef Py_ssize_t events = _nonzero(x, k, index), e, o
    cdef const float* w
    cdef double ops = 0.0
    memset(out, 0, n_out * sizeof(float))
    for e in range(events):
        w = weight_t + <Py_ssize_t> index[e] * n_out
        ops = ops + fan_out[index[e]]
        for o in range(n_out):
            out[o] = out[o] + w[o]
    if bias != NULL:
        for o in range(n_out):
            out[o] = out[o] + bias[o]
    synops[0] = synops[0] + ops


def linear_events(const uint8_t[:, ::1] x, const float[:, ::1] weight_t, const float[::1] bias,
                  const double[::1] fan_out, float[:, ::1] out, double[::1] synops, int threads=1):
    """Event-driven ``out = x @ W.T + b`` for binary ``x`` (rows, K); ``weight_t`` is ``W.T``, (K, n_out).

    Only the rows of ``weight_t`` of inputs that spiked are added, in ascending input order, into a zeroed
    accumulator; the bias is added last. ``synops[r] += sum of fan_out[k] over the spikes of row r``.
    """
    cdef Py_ssize_t rows = x.shape[0], k = x.shape[1], n_out = weight_t.shape[1], r
    cdef const float* bias_ptr = NULL
    _check_shape("linear weight", (k,), (weight_t.shape[0],))
    _check_shape("linear output", (rows, n_out), (out.shape[0], out.shape[1]))
    _check_shape("linear fan-out", (k,), (fan_out.shape[0],))
    _check_shape("linear synops", (rows,), (synops.shape[0],))
    if bias is not None:
        _check_shape("linear bias", (n_out,), (bias.shape[0],))
        bias_ptr = &bias[0]
    if rows == 0 or n_out == 0 or k == 0:
        raise ValueError(f"linear_events: empty operands (rows={rows}, inputs={k}, outputs={n_out})")
    threads = max(1, threads)
    cdef int32_t[:, ::1] index = np.empty((threads, k), dtype=np.int32)
    for r in prange(rows, nogil=True, num_threads=threads, schedule="dynamic", chunksize=4):
        _linear_row(&x[r, 0], k, &weight_t[0, 0], n_out, bias_ptr, &fan_out[0], &out[r, 0], &synops[r],
                    &index[threadid(), 0])


cdef struct ConvGeometry:
    Py_ssize_t channels, height, width      # input, per sample
    Py_ssize_t out_channels, out_height, out_width
    Py_ssize_t kh, kw, per_group_in, per_group_out


cdef inline void _conv_row(const uint8_t* x, ConvGeometry* g, const float* weight_t, const float* bias,
                           const double* fan_out, const int32_t* row_start, const int32_t* row_taps,
                           const int32_t* col_start, const int32_t* col_taps, float* out, double* synops,
                           float* acc, int32_t* index) noexcept nogil:
    """One sample of an event-driven convolution.

    ``acc`` is a (Ho, Wo, O) accumulator: each (input spike, kernel tap) adds one contiguous vector of the
    output channels of its group. Inputs are visited in (c, y, x) order, so each output receives its terms in
    ascending (c, ky, kx) order, the order of the reference's im2col product.
    """
    cdef Py_ssize_t plane = g.height * g.width, out_plane = g.out_height * g.out_width
    cdef Py_ssize_t size = g.channels * plane, events = _nonzero(x, size, index)
    cdef Py_ssize_t e, c, iy, ix, a, b, ky, kx, oy, ox, o, pos, o0, n = g.per_group_out, O = g.out_channels
    cdef const float* w
    cdef float* dst
    cdef double ops = 0.0
    memset(acc, 0, out_plane * O * sizeof(float))
    for e in range(events):
        pos = index[e]
        ops = ops + fan_out[pos]
        c = pos // plane
        iy = (pos - c * plane) // g.width
        ix = pos - c * plane - iy * g.width
        o0 = (c // g.per_group_in) * n
        for a in range(row_start[iy], row_start[iy + 1]):
            ky = row_taps[2 * a]
            oy = row_taps[2 * a + 1]
            for b in range(col_start[ix], col_start[ix + 1]):
                kx = col_taps[2 * b]
                ox = col_taps[2 * b + 1]
                w = weight_t + ((c * g.kh + ky) * g.kw + kx) * n
                dst = acc + (oy * g.out_width + ox) * O + o0
                for o in range(n):
                    dst[o] = dst[o] + w[o]
    # (Ho, Wo, O) -> (O, Ho, Wo), adding the bias last as the reference does.
    for o in range(O):
        for pos in range(out_plane):
            out[o * out_plane + pos] = acc[pos * O + o]
        if bias != NULL:
            for pos in range(out_plane):
                out[o * out_plane + pos] = out[o * out_plane + pos] + bias[o]
    synops[0] = synops[0] + ops


def conv_taps(Py_ssize_t size, Py_ssize_t out_size, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad_before,
              Py_ssize_t dilation):
    """For each input coordinate ``i`` along one axis, the (tap, output) pairs it reaches:
    ``o * stride - pad_before + tap * dilation == i`` with ``0 <= o < out_size``. Returns (start, pairs) in CSR form,
    taps ascending."""
    start = np.zeros(size + 1, dtype=np.int32)
    pairs = []
    cdef Py_ssize_t i, k, shifted
    for i in range(size):
        for k in range(kernel):
            shifted = i + pad_before - k * dilation
            if shifted >= 0 and shifted % stride == 0 and shifted // stride < out_size:
                pairs.append((k, shifted // stride))
        start[i + 1] = len(pairs)
    return start, np.asarray(pairs, dtype=np.int32).reshape(-1, 2)


def conv2d_events(const uint8_t[:, :, :, ::1] x, const float[:, :, :, ::1] weight_t, const float[::1] bias,
                  const double[::1] fan_out, float[:, :, :, ::1] out, double[::1] synops,
                  const int32_t[::1] row_start, const int32_t[:, ::1] row_taps,
                  const int32_t[::1] col_start, const int32_t[:, ::1] col_taps, Py_ssize_t groups, int threads=1):
    """Event-driven convolution of binary ``x`` (rows, C, H, W) into ``out`` (rows, O, Ho, Wo).

    ``weight_t`` is the weight as (C, kh, kw, O / groups); ``row_*``/``col_*`` are :func:`conv_taps` of the two
    spatial axes (they carry stride, padding and dilation). ``y[o, oy, ox] = (sum over spiking inputs (c, iy, ix)
    and taps reaching (oy, ox), ascending) W[o, c, ky, kx]``, then ``+ b[o]``; zero padding adds nothing.
    ``synops[r] += sum of fan_out over the spikes of row r``.
    """
    cdef ConvGeometry g
    cdef Py_ssize_t rows = x.shape[0], r
    cdef const float* bias_ptr = NULL
    g.channels, g.height, g.width = x.shape[1], x.shape[2], x.shape[3]
    g.out_channels, g.out_height, g.out_width = out.shape[1], out.shape[2], out.shape[3]
    g.kh, g.kw, g.per_group_out = weight_t.shape[1], weight_t.shape[2], weight_t.shape[3]
    if groups < 1 or g.channels % groups or g.out_channels != g.per_group_out * groups:
        raise ValueError(f"conv2d_events: {g.channels} input and {g.out_channels} output channels do not fit "
                         f"groups={groups} and a weight of {g.per_group_out} outputs per group")
    g.per_group_in = g.channels // groups
    _check_shape("conv weight", (g.channels,), (weight_t.shape[0],))
    _check_shape("conv output rows", (rows,), (out.shape[0],))
    _check_shape("conv fan-out", (g.channels * g.height * g.width,), (fan_out.shape[0],))
    _check_shape("conv synops", (rows,), (synops.shape[0],))
    _check_shape("conv row taps", (g.height + 1,), (row_start.shape[0],))
    _check_shape("conv column taps", (g.width + 1,), (col_start.shape[0],))
    if bias is not None:
        _check_shape("conv bias", (g.out_channels,), (bias.shape[0],))
        bias_ptr = &bias[0]
    if rows == 0 or g.channels * g.height * g.width == 0 or g.out_channels * g.out_height * g.out_width == 0:
        raise ValueError("conv2d_events: empty operands")
    if row_taps.shape[0] == 0 or col_taps.shape[0] == 0 or row_taps.shape[1] != 2 or col_taps.shape[1] != 2:
        raise ValueError("conv2d_events: tap tables must be non-empty (n, 2) arrays")
    threads = max(1, threads)
    cdef float[:, ::1] acc = np.empty((threads, g.out_channels * g.out_height * g.out_width), dtype=np.float32)
    cdef int32_t[:, ::1] index = np.empty((threads, g.channels * g.height * g.width), dtype=np.int32)
    cdef const int32_t* rt = &row_taps[0, 0]
    cdef const int32_t* ct = &col_taps[0, 0]
    for r in prange(rows, nogil=True, num_threads=threads, schedule="dynamic", chunksize=2):
        _conv_row(&x[r, 0, 0, 0], &g, &weight_t[0, 0, 0, 0], bias_ptr, &fan_out[0], &row_start[0], rt,
                  &col_start[0], ct, &out[r, 0, 0, 0], &synops[r], &acc[threadid(), 0], &index[threadid(), 0])


# --------------------------------------------------------------------------------------------------------------
# Spiking max pooling
# --------------------------------------------------------------------------------------------------------------

cdef inline void _maxpool_step(const uint8_t* x, int32_t* counts, int32_t* window_max, uint8_t* out,
                               Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                               Py_ssize_t out_height, Py_ssize_t out_width,
                               const int32_t* row_start, const int32_t* row_taps,
                               const int32_t* col_start, const int32_t* col_taps, int32_t* index) noexcept nogil:
    cdef Py_ssize_t plane = height * width, out_plane = out_height * out_width
    cdef Py_ssize_t events = _nonzero(x, channels * plane, index), e, pos, c, iy, ix, a, b, w
    cdef int32_t count
    memset(out, 0, channels * out_plane)
    for e in range(events):
        pos = index[e]
        counts[pos] = counts[pos] + 1
        count = counts[pos]
        c = pos // plane
        iy = (pos - c * plane) // width
        ix = pos - c * plane - iy * width
        for a in range(row_start[iy], row_start[iy + 1]):
            for b in range(col_start[ix], col_start[ix + 1]):
                w = c * out_plane + row_taps[2 * a + 1] * out_width + col_taps[2 * b + 1]
                if count > window_max[w]:
                    window_max[w] = count
                    out[w] = 1


def maxpool_events(const uint8_t[:, :, :, :, ::1] spikes, int32_t[:, ::1] counts, int32_t[:, ::1] window_max,
                   uint8_t[:, :, :, :, ::1] out, const int32_t[::1] row_start, const int32_t[:, ::1] row_taps,
                   const int32_t[::1] col_start, const int32_t[:, ::1] col_taps, int threads=1):
    """Spiking max pooling of binary ``spikes`` (Tc, B, C, H, W) into ``out`` (Tc, B, C, Ho, Wo).

    State: ``counts`` (B, C*H*W) spike counts of the inputs and ``window_max`` (B, C*Ho*Wo) the running max of the
    counts over each window, both starting at 0. A window emits a spike when its max grows. Counts grow by at
    most one per step, so this is the reference's ``max_j N_j(t) - max_j N_j(t-1)`` (padding, -inf there, never
    wins: every window holds at least one real input, which the engine checks). The row/col tables are
    :func:`conv_taps` of the pooling geometry.
    """
    cdef Py_ssize_t tc = spikes.shape[0], batch = spikes.shape[1], channels = spikes.shape[2]
    cdef Py_ssize_t height = spikes.shape[3], width = spikes.shape[4]
    cdef Py_ssize_t out_height = out.shape[3], out_width = out.shape[4], b, t
    _check_shape("max pool output", (tc, batch, channels), (out.shape[0], out.shape[1], out.shape[2]))
    _check_shape("max pool counts", (batch, channels * height * width), (counts.shape[0], counts.shape[1]))
    _check_shape("max pool state", (batch, channels * out_height * out_width),
                 (window_max.shape[0], window_max.shape[1]))
    _check_shape("max pool row taps", (height + 1,), (row_start.shape[0],))
    _check_shape("max pool column taps", (width + 1,), (col_start.shape[0],))
    if tc == 0 or batch == 0 or channels * height * width == 0 or channels * out_height * out_width == 0:
        raise ValueError("maxpool_events: empty operands")
    if row_taps.shape[0] == 0 or col_taps.shape[0] == 0 or row_taps.shape[1] != 2 or col_taps.shape[1] != 2:
        raise ValueError("maxpool_events: tap tables must be non-empty (n, 2) arrays")
    threads = max(1, threads)
    cdef int32_t[:, ::1] index = np.empty((threads, channels * height * width), dtype=np.int32)
    cdef const int32_t* rt = &row_taps[0, 0]
    cdef const int32_t* ct = &col_taps[0, 0]
    for b in prange(batch, nogil=True, num_threads=threads, schedule="static"):
        for t in range(tc):
            _maxpool_step(&spikes[t, b, 0, 0, 0], &counts[b, 0], &window_max[b, 0], &out[t, b, 0, 0, 0], channels,
                          height, width, out_height, out_width, &row_start[0], rt, &col_start[0], ct,
                          &index[threadid(), 0])


def _check_shape(what: str, expected: tuple, actual: tuple) -> None:
    if tuple(expected) != tuple(actual):
        raise ValueError(f"{what}: expected shape {tuple(expected)}, got {tuple(actual)}")
