# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: nonecheck=False, embedsignature=True
"""Compiled kernels of the fused IF/LIF training layers (:mod:`snncc.runtime.torch_fused`): the forward pass over
all ``T`` steps of an unsigned IF/LIF population and its backpropagation-through-time recursion, each in one pass
over memory (the torch form of the same equations makes three to eight passes per step).

The equations are torch_fused's module docstring's, for every neuron ``i`` of the flattened ``(B, *shape)``
population (``M`` neurons), ``t = 1..T``::

    h_t = beta v_{t-1} + I_t    (IF: v_{t-1} + I_t)     s_t = [h_t >= theta]
    v_t = h_t - s_t theta       (subtract)              v_t = h_t (1 - s_t)       (zero)

and backward, ``V_T = 0``, ``g_t`` the surrogate derivative at ``h_t - theta``::

    G_t = S_t - c_t V_t  with c_t = theta (subtract) or h_t (zero);   share_t = g_t G_t
    dL/dh_t = V_t + share_t (subtract)  or  (1 - s_t) V_t + share_t (zero);   V_{t-1} = beta dL/dh_t

with, per neuron and summed over time, ``dtheta = -sum_t (share_t + s_t V_t)`` (subtract; ``-sum_t share_t`` for
zero) and ``dbeta = sum_t v_{t-1} dL/dh_t``. The caller sums these over the axes a parameter was broadcast along.

Float arithmetic is that of the torch form, operation for operation and in the same order (``v * beta`` rounded,
then ``+ I``; no fused multiply-add: setup.py passes ``-ffp-contract=off``), so the forward spikes and membranes are
bit-identical to torch_fused's and to the dynamics table's step. The surrogate derivatives are those of
:data:`snncc.runtime.dynamics.SURROGATES` (the code below mirrors them; tests/runtime/test_torch_fused.py compares
the two), evaluated as torch evaluates the Python expressions there (``0.5 / y`` as ``0.5 * (1 / y)``).

Neurons are processed in blocks of :data:`BLOCK` consecutive indices: an OpenMP ``prange`` over blocks, the time
loop inside, the neuron loop innermost (contiguous, vectorizable); a block's state stays in the L1 cache for all
``T`` steps.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc

ctypedef fused real:
    float
    double

cdef enum:
    BLOCK = 512  # neurons per block: a block's state and parameters, a few KiB, stay in L1 over T steps

#: Surrogate shapes by name -> the code the kernels switch on (names as in dynamics.SURROGATES).
SURROGATE_CODES = {"fast-sigmoid": 0, "arctan": 1, "triangle": 2, "logistic": 3}

cdef extern from "math.h" nogil:
    float expf(float x)
    double exp(double x)


cdef inline real _abs(real x) noexcept nogil:
    return -x if x < 0 else x


cdef inline real _exp(real x) noexcept nogil:
    if real is float:
        return expf(x)
    else:
        return exp(x)


cdef inline real _derivative(real x, real width, real half_pi, int shape) noexcept nogil:
    """``F'(x / width) / width`` of the surrogate ``shape`` (dynamics.SURROGATES)."""
    cdef real u = x / width, y, d, sig
    if shape == 0:  # fast-sigmoid: 0.5 / (1 + |u|)^2
        y = <real>1 + _abs(u)
        d = (<real>1 / (y * y)) * <real>0.5
    elif shape == 1:  # arctan: 0.5 / (1 + (pi / 2 u)^2)
        y = half_pi * u
        d = (<real>1 / (<real>1 + y * y)) * <real>0.5
    elif shape == 2:  # triangle: max(0, 1 - |u|)
        d = <real>1 - _abs(u)
        if d < 0:
            d = 0
    else:  # logistic: sigmoid(u) (1 - sigmoid(u))
        sig = <real>1 / (<real>1 + _exp(-u))
        d = sig * (<real>1 - sig)
    return d / width


def openmp_threads(int threads):
    """The number of threads a kernel would run with (1 without OpenMP)."""
    cdef int n = 0, i
    for i in prange(threads, nogil=True, num_threads=threads):
        n += 1
    return n


def membrane_forward(const real[:, ::1] currents, bint constant, const real[::1] threshold, const real[::1] decay,
                     const real[::1] v_init, bint subtract, real[:, ::1] spikes, real[:, ::1] membranes,
                     real[::1] v, int threads):
    """All ``T`` steps: ``spikes`` and ``membranes`` (the pre-reset ``h_t``), both (T, M), written; ``v`` (M) is
    scratch, the membrane after the last step on return. ``currents`` is (T, M), or (1, M) with ``constant`` (the
    same current every step). ``threshold``, ``v_init`` are per neuron (M); ``decay`` too, or empty for IF."""
    cdef Py_ssize_t T = spikes.shape[0], M = spikes.shape[1]
    cdef Py_ssize_t blocks = (M + BLOCK - 1) // BLOCK, b, i, start, stop, t, row
    cdef bint lif = decay.shape[0] > 0
    cdef real h, s
    for b in prange(blocks, nogil=True, num_threads=threads, schedule="static"):
        start = b * BLOCK
        stop = start + BLOCK if start + BLOCK < M else M
        for i in range(start, stop):
            v[i] = v_init[i]
        for t in range(T):
            row = 0 if constant else t
            if lif:
                for i in range(start, stop):
                    v[i] = v[i] * decay[i]
            if subtract:
                for i in range(start, stop):
                    h = v[i] + currents[row, i]
                    s = <real>(h >= threshold[i])
                    membranes[t, i] = h
                    spikes[t, i] = s
                    v[i] = h - s * threshold[i]
            else:
                for i in range(start, stop):
                    h = v[i] + currents[row, i]
                    s = <real>(h >= threshold[i])
                    membranes[t, i] = h
                    spikes[t, i] = s
                    v[i] = h * (<real>1 - s)


def membrane_backward(const real[:, ::1] grad_spikes, const real[:, ::1] membranes, const real[::1] threshold,
                      const real[::1] decay, const real[::1] v_init, bint subtract, int shape, double width,
                      real[:, ::1] grad_current, real[::1] grad_v, real[::1] grad_threshold,
                      real[::1] grad_decay, real[::1] slope, int threads):
    """The reverse-time recursion: ``grad_current`` (T, M) = dL/dI_t, or, given as (1, M) (a current constant in
    time, read once per step), ``sum_t dL/dI_t`` (summed from t = T down to 1); per neuron, summed over time,
    ``grad_threshold`` (M) and ``grad_decay`` (M; LIF only, else empty, as ``decay``); ``grad_v`` and ``slope``
    (M) are scratch. ``shape`` is a :data:`SURROGATE_CODES` code and ``width`` its width.

    Each step of a block is three loops, each without branches on the neuron (so that they vectorize): the
    surrogate derivatives ``g_t`` into ``slope``, the recursion, and (LIF) the decay's share ``v_{t-1} dL/dh_t``."""
    cdef Py_ssize_t T = grad_spikes.shape[0], M = grad_spikes.shape[1]
    cdef Py_ssize_t blocks = (M + BLOCK - 1) // BLOCK, b, i, start, stop, t
    cdef bint lif = decay.shape[0] > 0, summed = grad_current.shape[0] == 1 and T > 1
    cdef real w = <real>width, half_pi = <real>1.5707963267948966
    cdef real h, th, s, V, share, dh, hp
    for b in prange(blocks, nogil=True, num_threads=threads, schedule="static"):
        start = b * BLOCK
        stop = start + BLOCK if start + BLOCK < M else M
        for i in range(start, stop):
            grad_v[i] = 0
            grad_threshold[i] = 0
        if summed:
            for i in range(start, stop):
                grad_current[0, i] = 0
        if lif:
            for i in range(start, stop):
                grad_decay[i] = 0
        for t in range(T - 1, -1, -1):
            if shape == 0:
                for i in range(start, stop):
                    slope[i] = _derivative(membranes[t, i] - threshold[i], w, half_pi, 0)
            elif shape == 1:
                for i in range(start, stop):
                    slope[i] = _derivative(membranes[t, i] - threshold[i], w, half_pi, 1)
            elif shape == 2:
                for i in range(start, stop):
                    slope[i] = _derivative(membranes[t, i] - threshold[i], w, half_pi, 2)
            else:
                for i in range(start, stop):
                    slope[i] = _derivative(membranes[t, i] - threshold[i], w, half_pi, 3)
            if subtract:
                for i in range(start, stop):
                    th = threshold[i]
                    s = <real>(membranes[t, i] >= th)
                    V = grad_v[i]
                    share = slope[i] * (grad_spikes[t, i] - V * th)  # g_t G_t
                    dh = V + share
                    grad_threshold[i] = grad_threshold[i] - (share + s * V)
                    if summed:
                        grad_current[0, i] = grad_current[0, i] + dh
                    else:
                        grad_current[t, i] = dh
                    grad_v[i] = dh
            else:
                for i in range(start, stop):
                    h = membranes[t, i]
                    s = <real>(h >= threshold[i])
                    V = grad_v[i]
                    share = slope[i] * (grad_spikes[t, i] - V * h)
                    dh = share + V * (<real>1 - s)
                    grad_threshold[i] = grad_threshold[i] - share
                    if summed:
                        grad_current[0, i] = grad_current[0, i] + dh
                    else:
                        grad_current[t, i] = dh
                    grad_v[i] = dh
            if lif:
                if t == 0:
                    for i in range(start, stop):
                        grad_decay[i] = grad_decay[i] + v_init[i] * grad_v[i]
                elif subtract:  # v_{t-1}: the membrane after the previous step's reset
                    for i in range(start, stop):
                        hp = membranes[t - 1, i]
                        grad_decay[i] = grad_decay[i] + (hp - <real>(hp >= threshold[i]) * threshold[i]) * grad_v[i]
                else:
                    for i in range(start, stop):
                        hp = membranes[t - 1, i]
                        grad_decay[i] = grad_decay[i] + (hp * (<real>1 - <real>(hp >= threshold[i]))) * grad_v[i]
                for i in range(start, stop):
                    grad_v[i] = grad_v[i] * decay[i]  # V_{t-1} = beta dL/dh_t


def max_pool_forward(const real[:, :, :, :, :] steps, int kh, int kw, int sh, int sw, int top, int left,
                     real[:, :, :, :, :] out, unsigned char[:, :, :, :, :] argmax, int threads):
    """Spiking max pooling (torch_fused.SpikingMaxPool) in one pass: ``steps`` (T, B, H, W, C) and ``out``,
    ``argmax`` (T, B, Ho, Wo, C), any strides (channels innermost in the loops). Per output element and step, the
    running counts ``N(t)`` of its window's inputs (padding counts -inf), their maximum ``M(t)`` and the window
    position ``i * kw + j`` of the first maximal input (max_pool2d's choice) into ``argmax``; ``out = M(t) - M(t-1)``
    (``M(0) = 0``). A thread takes whole samples; its scratch is ``2 kh kw C`` values."""
    cdef Py_ssize_t T = steps.shape[0], B = steps.shape[1], H = steps.shape[2], W = steps.shape[3]
    cdef Py_ssize_t C = steps.shape[4], Ho = out.shape[2], Wo = out.shape[3], P = kh * kw
    cdef Py_ssize_t b, oy, ox, c, t, p, iy, ix, best
    cdef real *counts
    cdef real *previous
    cdef real m, inf = <real>float("inf")
    with nogil, parallel(num_threads=threads):
        counts = <real *> malloc(sizeof(real) * (P + 1) * C)
        previous = counts + P * C
        for b in prange(B, schedule="static"):
            for oy in range(Ho):
                for ox in range(Wo):
                    for p in range(P):
                        iy = oy * sh + p // kw - top
                        ix = ox * sw + p % kw - left
                        for c in range(C):
                            counts[p * C + c] = 0 if 0 <= iy < H and 0 <= ix < W else -inf
                    for c in range(C):
                        previous[c] = 0
                    for t in range(T):
                        for p in range(P):
                            iy = oy * sh + p // kw - top
                            ix = ox * sw + p % kw - left
                            if 0 <= iy < H and 0 <= ix < W:
                                for c in range(C):
                                    counts[p * C + c] = counts[p * C + c] + steps[t, b, iy, ix, c]
                        for c in range(C):
                            m = counts[c]
                            best = 0
                            for p in range(1, P):
                                if counts[p * C + c] > m:
                                    m = counts[p * C + c]
                                    best = p
                            out[t, b, oy, ox, c] = m - previous[c]
                            previous[c] = m
                            argmax[t, b, oy, ox, c] = <unsigned char>best
        free(counts)


def max_pool_backward(const real[:, :, :, :, :] grad_out, const unsigned char[:, :, :, :, :] argmax, int kh,
                      int kw, int sh, int sw, int top, int left, real[:, :, :, :, :] grad_steps, int threads):
    """The backward of :func:`max_pool_forward`: with ``g(t) = grad_out`` (T, B, Ho, Wo, C), ``dM(t) = g(t) -
    g(t+1)`` (``g(T+1) = 0``) goes to the window position ``argmax`` chose, and ``grad_steps`` (T, B, H, W, C) is
    each input's reverse running sum ``sum_{tau >= t} dN(tau)``, summed over the windows that hold it. A thread
    takes whole samples (their region zeroed first, then accumulated: windows may overlap)."""
    cdef Py_ssize_t T = grad_steps.shape[0], B = grad_steps.shape[1], H = grad_steps.shape[2]
    cdef Py_ssize_t W = grad_steps.shape[3], C = grad_steps.shape[4], Ho = grad_out.shape[2]
    cdef Py_ssize_t Wo = grad_out.shape[3], P = kh * kw
    cdef Py_ssize_t b, oy, ox, c, t, p, iy, ix, y, x
    cdef real *acc
    cdef real later
    with nogil, parallel(num_threads=threads):
        acc = <real *> malloc(sizeof(real) * P * C)
        for b in prange(B, schedule="static"):
            for t in range(T):
                for y in range(H):
                    for x in range(W):
                        for c in range(C):
                            grad_steps[t, b, y, x, c] = 0
            for oy in range(Ho):
                for ox in range(Wo):
                    for p in range(P * C):
                        acc[p] = 0
                    for t in range(T - 1, -1, -1):
                        for c in range(C):
                            later = grad_out[t + 1, b, oy, ox, c] if t + 1 < T else 0
                            p = argmax[t, b, oy, ox, c]
                            acc[p * C + c] = acc[p * C + c] + (grad_out[t, b, oy, ox, c] - later)
                        for p in range(P):
                            iy = oy * sh + p // kw - top
                            ix = ox * sw + p % kw - left
                            if 0 <= iy < H and 0 <= ix < W:
                                for c in range(C):
                                    grad_steps[t, b, iy, ix, c] = grad_steps[t, b, iy, ix, c] + acc[p * C + c]
        free(acc)
