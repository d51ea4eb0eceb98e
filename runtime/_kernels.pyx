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
  ``y[o] = y[o] + b[o]``, with ``k`` the reference's reduction index (for a convolution its im2col order,
  channels-last: kernel row, kernel column, input channel). With 0/1 inputs a BLAS micro-kernel computes
  ``fma(W[o,k], x[k], acc)``, which is ``acc + W[o,k]`` for a spike and ``acc`` otherwise, in ascending ``k``; so
  this is the reference's dense product, term for term, whenever the BLAS keeps that order (see the engine's
  docstring for when OpenBLAS does not);
- readout (``_ReadoutState.step``): ``total += I`` in float64, output ``float32(total / t)``;
- spiking max pooling (``_MaxCountState.step``): counts are integers, so the running max is exact in any order.

The same source is compiled for several instruction sets (setup.py); wider vectors change how many neurons one
instruction updates, never the arithmetic of a neuron.

The build must not contract ``v * beta + I`` into a fused multiply-add (``setup.py`` passes ``-ffp-contract=off``):
the reference rounds the product before the addition.
"""

from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
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
    #ifndef SNNCC_VARIANT
    #define SNNCC_VARIANT "portable"
    #endif
    static const char* snncc_variant(void) { return SNNCC_VARIANT; }
    #ifndef SNNCC_BUILD_STAMP
    #define SNNCC_BUILD_STAMP "unknown"
    #endif
    static const char* snncc_build_stamp(void) { return SNNCC_BUILD_STAMP; }
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    static int snncc_cpu_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
    static int snncc_cpu_avx512(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2");
    }
    #else
    static int snncc_cpu_avx2(void) { return 0; }
    static int snncc_cpu_avx512(void) { return 0; }
    #endif
    /* dst[:n] += weight[channels[j] * stride:][:n] for j = 0 .. m-1 in that order, element by element (float32).
       The partial sums of a block of dst stay in registers across the m channels, so dst is read and written
       once per block instead of once per channel (GCC/Clang vector extensions: plain per-lane float adds). */
    #if defined(__GNUC__) || defined(__clang__)
    typedef float snncc_v16 __attribute__((vector_size(64), aligned(4), may_alias));
    typedef float snncc_v8 __attribute__((vector_size(32), aligned(4), may_alias));
    static inline void snncc_add_channels(float* __restrict__ dst, const float* __restrict__ weight,
                                          const int32_t* channels, Py_ssize_t m, Py_ssize_t stride, Py_ssize_t n) {
        Py_ssize_t o = 0, j;
        if (m == 1) {  /* the common case in small layers: one plain vector add */
            const float* src = weight + channels[0] * stride;
            for (; o + 16 <= n; o += 16) *(snncc_v16*)(dst + o) += *(const snncc_v16*)(src + o);
            for (; o + 8 <= n; o += 8) *(snncc_v8*)(dst + o) += *(const snncc_v8*)(src + o);
            for (; o < n; ++o) dst[o] += src[o];
            return;
        }
        for (; o + 64 <= n; o += 64) {
            snncc_v16 a = *(const snncc_v16*)(dst + o), b = *(const snncc_v16*)(dst + o + 16);
            snncc_v16 c = *(const snncc_v16*)(dst + o + 32), d = *(const snncc_v16*)(dst + o + 48);
            for (j = 0; j < m; ++j) {
                const float* src = weight + channels[j] * stride + o;
                a += *(const snncc_v16*)src; b += *(const snncc_v16*)(src + 16);
                c += *(const snncc_v16*)(src + 32); d += *(const snncc_v16*)(src + 48);
            }
            *(snncc_v16*)(dst + o) = a; *(snncc_v16*)(dst + o + 16) = b;
            *(snncc_v16*)(dst + o + 32) = c; *(snncc_v16*)(dst + o + 48) = d;
        }
        for (; o + 16 <= n; o += 16) {
            snncc_v16 a = *(const snncc_v16*)(dst + o);
            for (j = 0; j < m; ++j) a += *(const snncc_v16*)(weight + channels[j] * stride + o);
            *(snncc_v16*)(dst + o) = a;
        }
        for (; o + 8 <= n; o += 8) {
            snncc_v8 a = *(const snncc_v8*)(dst + o);
            for (j = 0; j < m; ++j) a += *(const snncc_v8*)(weight + channels[j] * stride + o);
            *(snncc_v8*)(dst + o) = a;
        }
        for (; o < n; ++o) {
            float a = dst[o];
            for (j = 0; j < m; ++j) a += weight[channels[j] * stride + o];
            dst[o] = a;
        }
    }
    #else
    static inline void snncc_add_channels(float* __restrict__ dst, const float* __restrict__ weight,
                                          const int32_t* channels, Py_ssize_t m, Py_ssize_t stride, Py_ssize_t n) {
        Py_ssize_t o, j;
        for (o = 0; o < n; ++o) {
            float a = dst[o];
            for (j = 0; j < m; ++j) a += weight[channels[j] * stride + o];
            dst[o] = a;
        }
    }
    #endif
    /* The floats of the variant's vector registers: 16 with AVX-512, 8 with AVX, 4 otherwise. Vectors wider than
       the hardware's are split by the compiler, but GCC lowers their comparisons to one scalar compare per lane,
       so the kernels that compare use vectors of this width. */
    #if defined(__AVX512F__)
    #define SNNCC_LANES 16
    #elif defined(__AVX__)
    #define SNNCC_LANES 8
    #else
    #define SNNCC_LANES 4
    #endif
    /* dst[j * dst_stride + i] = src[i * src_stride + j] for a 16 x 16 block, in tiles of SNNCC_TILE x SNNCC_TILE:
       log2(SNNCC_TILE) rounds of pairwise zips of rows i and i + SNNCC_TILE / 2 (a perfect shuffle) transpose a
       tile in registers; only copies, so exact. SNNCC_TILE is 16 with AVX-512 and 4 otherwise: GCC lowered the
       16-lane zips to 654 scalar moves per block on AVX2 (160 ns a block), and 8-lane zips cross the AVX2
       registers' 128-bit halves (38 ns) where 4-lane ones do not (24 ns; an AVX2 EPYC). */
    #if defined(__AVX512F__)
    #define SNNCC_TILE 16
    #else
    #define SNNCC_TILE 4
    #endif
    #if defined(__GNUC__) || defined(__clang__)
    typedef float snncc_vt __attribute__((vector_size(SNNCC_TILE * 4), aligned(4), may_alias));
    typedef int32_t snncc_vti __attribute__((vector_size(SNNCC_TILE * 4)));
    #if SNNCC_TILE == 16
    #define SNNCC_ZIP_LO_LANES 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
    #define SNNCC_ZIP_HI_LANES 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
    #define SNNCC_ZIP_ROUNDS 4
    #else
    #define SNNCC_ZIP_LO_LANES 0, 4, 1, 5
    #define SNNCC_ZIP_HI_LANES 2, 6, 3, 7
    #define SNNCC_ZIP_ROUNDS 2
    #endif
    #if defined(__clang__)
    #define SNNCC_ZIP_LO(a, b) __builtin_shufflevector(a, b, SNNCC_ZIP_LO_LANES)
    #define SNNCC_ZIP_HI(a, b) __builtin_shufflevector(a, b, SNNCC_ZIP_HI_LANES)
    #else
    #define SNNCC_ZIP_LO(a, b) __builtin_shuffle(a, b, (snncc_vti){SNNCC_ZIP_LO_LANES})
    #define SNNCC_ZIP_HI(a, b) __builtin_shuffle(a, b, (snncc_vti){SNNCC_ZIP_HI_LANES})
    #endif
    static inline void snncc_transpose_tile(const float* src, Py_ssize_t src_stride, float* dst,
                                            Py_ssize_t dst_stride) {
        snncc_vt r[SNNCC_TILE], z[SNNCC_TILE];
        int i, round, half = SNNCC_TILE / 2;
        for (i = 0; i < SNNCC_TILE; ++i) r[i] = *(const snncc_vt*)(src + i * src_stride);
        for (round = 0; round < SNNCC_ZIP_ROUNDS; ++round) {
            for (i = 0; i < half; ++i) {
                z[2 * i] = SNNCC_ZIP_LO(r[i], r[i + half]);
                z[2 * i + 1] = SNNCC_ZIP_HI(r[i], r[i + half]);
            }
            for (i = 0; i < SNNCC_TILE; ++i) r[i] = z[i];
        }
        for (i = 0; i < SNNCC_TILE; ++i) *(snncc_vt*)(dst + i * dst_stride) = r[i];
    }
    static inline void snncc_transpose16(const float* src, Py_ssize_t src_stride, float* dst, Py_ssize_t dst_stride) {
        int i, j;
        for (i = 0; i < 16; i += SNNCC_TILE)
            for (j = 0; j < 16; j += SNNCC_TILE)
                snncc_transpose_tile(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
    }
    #else
    static inline void snncc_transpose16(const float* src, Py_ssize_t src_stride, float* dst, Py_ssize_t dst_stride) {
        int i, j;
        for (i = 0; i < 16; ++i)
            for (j = 0; j < 16; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
    }
    #endif
    /* FS neurons and AMOS units, a block of SNNCC_UNIT_BLOCK at a time with GCC/Clang vector extensions: each lane
       is one neuron, with exactly the scalar arithmetic in step order; where a neuron does not fire, a bit-select
       keeps its old membrane / output (no +0.0 is added, so every value is the specification's bit for bit).
       Inputs of lanes i >= m are 0 (those lanes are computed, never stored or counted).

       What a block reports of its spikes: with `spikes`, spikes[t * SNNCC_UNIT_BLOCK + i] is 1 where neuron i
       fired at step t; with `counts` (snncc_unit_counts), per lane i: steps[t * B + i] += 1 where it fired at t,
       ops[(f * k + t) * B + i] += fan_out[f * stride + i] (the synapses its spike drives in operand f),
       most[i] = max(most[i], its spikes in the window; AMOS: 1 if any of the unit's neurons fired). The counts are
       int32 lanes that the caller moves into int64 totals before they could overflow; they are kept as vector
       masks, never narrowed to bytes (narrowing costs a scalar extract per lane with AVX2).

       The vectors are as wide as the variant's registers (SNNCC_LANES) and a block is SNNCC_UNIT_VECTORS =
       SNNCC_UNIT_BLOCK / SNNCC_LANES of them: with 16-lane vectors GCC compared lane by lane on AVX2 and baseline
       builds, and the FS units ran several times slower. The step loop runs outside the loop over the block's
       vectors, unrolled: a neuron's steps are one dependency chain (compare, select, subtract), and with one
       vector per block (16 neurons) its latency set the pace; the 64 neurons of a block give AVX-512 four
       independent chains per step. Measured against 16-neuron blocks (batch 100, 12,544 neurons, K=8, one
       fan-out): FS 2.27 -> 1.48 ms on one thread, AMOS 5.55 -> 3.09 ms; the AVX2 and portable builds gained too
       (AMOS 6.9 -> 3.9 and 13.1 -> 7.3 ms). */
    #define SNNCC_UNIT_BLOCK 64
    #define SNNCC_UNIT_LANES SNNCC_LANES
    #define SNNCC_UNIT_VECTORS (SNNCC_UNIT_BLOCK / SNNCC_UNIT_LANES)
    typedef struct {
        Py_ssize_t f_count, stride;
        const int32_t* fan_out;
        int32_t* steps;
        int32_t* ops;
        int32_t* most;
    } snncc_unit_counts;
    /* The block's inputs, zero past m. */
    #define SNNCC_UNIT_INPUTS(in, x, m) float in[SNNCC_UNIT_BLOCK] = {0}; \
        memcpy(in, (x), (size_t)((m) < SNNCC_UNIT_BLOCK ? (m) : SNNCC_UNIT_BLOCK) * sizeof(float))
    #if defined(__GNUC__) || defined(__clang__)
    typedef float snncc_unit_vf __attribute__((vector_size(SNNCC_UNIT_LANES * 4)));
    typedef int32_t snncc_unit_vi __attribute__((vector_size(SNNCC_UNIT_LANES * 4)));
    typedef uint8_t snncc_unit_vb __attribute__((vector_size(SNNCC_UNIT_LANES)));
    #define SNNCC_SELECT(mask, a, b) ((snncc_unit_vf)(((snncc_unit_vi)(a) & (mask)) | ((snncc_unit_vi)(b) & ~(mask))))
    /* Lanes h.. of the block that hold neurons (i < m), as a mask. */
    static inline snncc_unit_vi snncc_unit_valid(Py_ssize_t h, Py_ssize_t m) {
        snncc_unit_vi lane;
        int32_t i;
        for (i = 0; i < SNNCC_UNIT_LANES; ++i) lane[i] = (int32_t)h + i;
        return lane < (int32_t)m;
    }
    static inline void snncc_unit_add(int32_t* dst, snncc_unit_vi x) {
        snncc_unit_vi d;
        memcpy(&d, dst, sizeof(d));
        d += x;
        memcpy(dst, &d, sizeof(d));
    }
    /* Report the lanes h.. that fired (a mask) at step t: spike bytes and / or counts. */
    static inline void snncc_unit_fired(snncc_unit_vi fired, Py_ssize_t t, Py_ssize_t h, Py_ssize_t k,
                                        uint8_t* spikes, const snncc_unit_counts* counts, snncc_unit_vi* per) {
        if (spikes) {
            snncc_unit_vb z = __builtin_convertvector(fired & 1, snncc_unit_vb);
            memcpy(spikes + t * SNNCC_UNIT_BLOCK + h, &z, sizeof(z));
        }
        if (counts) {
            Py_ssize_t f;
            snncc_unit_add(counts->steps + t * SNNCC_UNIT_BLOCK + h, fired & 1);
            *per += fired & 1;
            for (f = 0; f < counts->f_count; ++f) {
                snncc_unit_vi synapses;
                memcpy(&synapses, counts->fan_out + f * counts->stride + h, sizeof(synapses));
                snncc_unit_add(counts->ops + (f * k + t) * SNNCC_UNIT_BLOCK + h, synapses & fired);
            }
        }
    }
    static inline void snncc_unit_most(const snncc_unit_counts* counts, Py_ssize_t h, snncc_unit_vi per, int amos) {
        snncc_unit_vi most;
        if (!counts) return;
        if (amos) per = -(per > 0);
        memcpy(&most, counts->most + h, sizeof(most));
        snncc_unit_vi more = per > most;
        most = (per & more) | (most & ~more);
        memcpy(counts->most + h, &most, sizeof(most));
    }
    static inline void snncc_fs_block(const float* x, Py_ssize_t m, const float* threshold, const float* height,
                                      const float* weight, Py_ssize_t k, float* value, uint8_t* spikes,
                                      const snncc_unit_counts* counts) {
        SNNCC_UNIT_INPUTS(in, x, m);
        snncc_unit_vf v[SNNCC_UNIT_VECTORS], acc[SNNCC_UNIT_VECTORS];
        snncc_unit_vi per[SNNCC_UNIT_VECTORS], valid[SNNCC_UNIT_VECTORS];
        const snncc_unit_vf zero = {0};
        const snncc_unit_vi none = {0};
        Py_ssize_t q, t;
        #pragma GCC unroll 16
        for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) {
            memcpy(&v[q], in + q * SNNCC_UNIT_LANES, sizeof(v[q]));
            acc[q] = zero;
            per[q] = none;
            valid[q] = snncc_unit_valid(q * SNNCC_UNIT_LANES, m);
        }
        for (t = 0; t < k; ++t) {
            const float threshold_t = threshold[t], height_t = height[t], weight_t = weight[t];
            #pragma GCC unroll 16
            for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) {
                snncc_unit_vi fired = v[q] >= threshold_t;
                v[q] = SNNCC_SELECT(fired, v[q] - height_t, v[q]);
                acc[q] = SNNCC_SELECT(fired, acc[q] + weight_t, acc[q]);
                snncc_unit_fired(fired & valid[q], t, q * SNNCC_UNIT_LANES, k, spikes, counts, &per[q]);
            }
        }
        #pragma GCC unroll 16
        for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) {
            snncc_unit_most(counts, q * SNNCC_UNIT_LANES, per[q], 0);
            memcpy(value + q * SNNCC_UNIT_LANES, &acc[q], sizeof(acc[q]));
        }
    }
    /* AMOS units of more than 64 neurons read the masks of neurons 64.. back from `spikes`: give it then. The
       unit's neurons run in order (each sees the earlier ones' spikes), the block's vectors side by side in each. */
    static inline void snncc_amos_block(const float* x, Py_ssize_t m, const float* threshold, const float* gain,
                                        const float* weight, const float* inhibition, Py_ssize_t k, float* value,
                                        uint8_t* spikes, const snncc_unit_counts* counts) {
        SNNCC_UNIT_INPUTS(in, x, m);
        snncc_unit_vi fired[64][SNNCC_UNIT_VECTORS];
        snncc_unit_vf x_[SNNCC_UNIT_VECTORS], acc[SNNCC_UNIT_VECTORS], u[SNNCC_UNIT_VECTORS];
        snncc_unit_vi per[SNNCC_UNIT_VECTORS], valid[SNNCC_UNIT_VECTORS];
        const snncc_unit_vf zero = {0};
        const snncc_unit_vi none = {0};
        Py_ssize_t q, j, t;
        #pragma GCC unroll 16
        for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) {
            memcpy(&x_[q], in + q * SNNCC_UNIT_LANES, sizeof(x_[q]));
            acc[q] = zero;
            per[q] = none;
            valid[q] = snncc_unit_valid(q * SNNCC_UNIT_LANES, m);
        }
        for (j = 0; j < k; ++j) {
            const float gain_j = gain[j], threshold_j = threshold[j], weight_j = weight[j];
            #pragma GCC unroll 16
            for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) u[q] = x_[q] * gain_j;
            for (t = 0; t < j; ++t) {
                const float w = inhibition[j * k + t];
                #pragma GCC unroll 16
                for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) {
                    snncc_unit_vi earlier;
                    if (t < 64) earlier = fired[t][q];
                    else { snncc_unit_vb z;
                           memcpy(&z, spikes + t * SNNCC_UNIT_BLOCK + q * SNNCC_UNIT_LANES, sizeof(z));
                           earlier = -__builtin_convertvector(z, snncc_unit_vi); }
                    u[q] = SNNCC_SELECT(earlier, u[q] - w, u[q]);
                }
            }
            #pragma GCC unroll 16
            for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) {
                snncc_unit_vi now = u[q] >= threshold_j;
                if (j < 64) fired[j][q] = now;
                acc[q] = SNNCC_SELECT(now, acc[q] + weight_j, acc[q]);
                snncc_unit_fired(now & valid[q], j, q * SNNCC_UNIT_LANES, k, spikes, counts, &per[q]);
            }
        }
        #pragma GCC unroll 16
        for (q = 0; q < SNNCC_UNIT_VECTORS; ++q) {
            snncc_unit_most(counts, q * SNNCC_UNIT_LANES, per[q], 1);
            memcpy(value + q * SNNCC_UNIT_LANES, &acc[q], sizeof(acc[q]));
        }
    }
    #else
    static inline void snncc_unit_fired_scalar(int fired, Py_ssize_t t, Py_ssize_t i, Py_ssize_t k, uint8_t* spikes,
                                               const snncc_unit_counts* counts, int32_t* per) {
        Py_ssize_t f;
        if (spikes) spikes[t * SNNCC_UNIT_BLOCK + i] = (uint8_t)fired;
        if (counts && fired) {
            counts->steps[t * SNNCC_UNIT_BLOCK + i] += 1;
            *per += 1;
            for (f = 0; f < counts->f_count; ++f)
                counts->ops[(f * k + t) * SNNCC_UNIT_BLOCK + i] += counts->fan_out[f * counts->stride + i];
        }
    }
    static inline void snncc_unit_most_scalar(const snncc_unit_counts* counts, Py_ssize_t i, int32_t per, int amos) {
        if (!counts) return;
        if (amos) per = per > 0;
        if (per > counts->most[i]) counts->most[i] = per;
    }
    static inline void snncc_fs_block(const float* x, Py_ssize_t m, const float* threshold, const float* height,
                                      const float* weight, Py_ssize_t k, float* value, uint8_t* spikes,
                                      const snncc_unit_counts* counts) {
        Py_ssize_t i, t;
        for (i = 0; i < SNNCC_UNIT_BLOCK; ++i) {
            float v = i < m ? x[i] : 0.0f, acc = 0.0f;
            int32_t per = 0;
            for (t = 0; t < k; ++t) {
                int fired = v >= threshold[t];
                if (fired) { v = v - height[t]; acc = acc + weight[t]; }
                snncc_unit_fired_scalar(fired && i < m, t, i, k, spikes, counts, &per);
            }
            snncc_unit_most_scalar(counts, i, per, 0);
            value[i] = acc;
        }
    }
    static inline void snncc_amos_block(const float* x, Py_ssize_t m, const float* threshold, const float* gain,
                                        const float* weight, const float* inhibition, Py_ssize_t k, float* value,
                                        uint8_t* spikes, const snncc_unit_counts* counts) {
        Py_ssize_t i, j, t;
        uint8_t own[64];
        for (i = 0; i < SNNCC_UNIT_BLOCK; ++i) {
            float xi = i < m ? x[i] : 0.0f, acc = 0.0f;
            int32_t per = 0;
            for (j = 0; j < k; ++j) {
                float u = xi * gain[j];
                for (t = 0; t < j; ++t) {
                    int earlier = t < 64 ? own[t] : spikes[t * SNNCC_UNIT_BLOCK + i];
                    if (earlier) u = u - inhibition[j * k + t];
                }
                int now = u >= threshold[j];
                if (j < 64) own[j] = (uint8_t)now;
                snncc_unit_fired_scalar(now && i < m, j, i, k, spikes, counts, &per);
                if (now) acc = acc + weight[j];
            }
            snncc_unit_most_scalar(counts, i, per, 1);
            value[i] = acc;
        }
    }
    #endif

    /* numpy's maximum(m, v) of float32: m where m >= v or m is NaN, else v (so NaN and the sign of zero come out
       as numpy's), as a bit blend: with a branch, random data mispredict half the comparisons (measured 3x
       slower), and the blend lets the loops below vectorize. It keeps the first of the operands that attain the
       max (a NaN counting as the max), so combining a window's values in any grouping that keeps their order
       gives the same bits as one after the other. */
    static inline float snncc_max_keep(float m, float v) {
        uint32_t mb, vb, keep = -(uint32_t)((m >= v) | (m != m));
        memcpy(&mb, &m, 4);
        memcpy(&vb, &v, 4);
        mb = (mb & keep) | (vb & ~keep);
        memcpy(&m, &mb, 4);
        return m;
    }

    /* Max pooling without padding of planes x (C, H, W) into out (C, Ho, Wo), windows kh x kw, strides sh, sw,
       the window's values combined in its row-major order (the reference's _pool_reduce). 2x2 windows of stride
       2 on an even width: the max of each horizontal pair over the covered rows (one contiguous pass, which
       vectorizes), then of each vertical pair of those: (a, b), (c, d) -> ((a, b), (c, d)), the same bits as
       (((a, b), c), d) (see snncc_max_keep). `pairs` holds Ho * 2 * Wo values. */
    static void snncc_max_pool_values(const float* x, float* out, float* pairs, Py_ssize_t channels,
                                      Py_ssize_t height, Py_ssize_t width, Py_ssize_t kh, Py_ssize_t kw,
                                      Py_ssize_t sh, Py_ssize_t sw) {
        Py_ssize_t ho = (height - kh) / sh + 1, wo = (width - kw) / sw + 1, c, oy, ox, i, j;
        for (c = 0; c < channels; ++c) {
            const float* plane = x + c * height * width;
            float* dst = out + c * ho * wo;
            if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && width % 2 == 0) {
                Py_ssize_t n = ho * 2 * wo;
                for (i = 0; i < n; ++i)
                    pairs[i] = snncc_max_keep(plane[2 * i], plane[2 * i + 1]);
                for (oy = 0; oy < ho; ++oy)
                    for (ox = 0; ox < wo; ++ox)
                        dst[oy * wo + ox] = snncc_max_keep(pairs[2 * oy * wo + ox], pairs[(2 * oy + 1) * wo + ox]);
                continue;
            }
            for (oy = 0; oy < ho; ++oy)
                for (ox = 0; ox < wo; ++ox) {
                    const float* window = plane + oy * sh * width + ox * sw;
                    float m = window[0];
                    for (i = 0; i < kh; ++i)
                        for (j = 0; j < kw; ++j)
                            if (i || j)
                                m = snncc_max_keep(m, window[i * width + j]);
                    dst[oy * wo + ox] = m;
                }
        }
    }
    """
    int snncc_openmp() nogil
    int snncc_max_threads() nogil
    int snncc_boundscheck() nogil
    const char* snncc_variant() nogil
    const char* snncc_build_stamp() nogil
    int snncc_cpu_avx2() nogil
    int snncc_cpu_avx512() nogil
    void snncc_add_channels(float* dst, const float* weight, const int32_t* channels, Py_ssize_t m,
                            Py_ssize_t stride, Py_ssize_t n) nogil
    void snncc_transpose16(const float* src, Py_ssize_t src_stride, float* dst, Py_ssize_t dst_stride) nogil
    void snncc_max_pool_values(const float* x, float* out, float* pairs, Py_ssize_t channels, Py_ssize_t height,
                               Py_ssize_t width, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw) nogil
    enum: SNNCC_UNIT_BLOCK
    ctypedef struct snncc_unit_counts:
        Py_ssize_t f_count, stride
        const int32_t* fan_out
        int32_t* steps
        int32_t* ops
        int32_t* most
    void snncc_fs_block(const float* x, Py_ssize_t m, const float* threshold, const float* height,
                        const float* weight, Py_ssize_t k, float* value, uint8_t* spikes,
                        const snncc_unit_counts* counts) nogil
    void snncc_amos_block(const float* x, Py_ssize_t m, const float* threshold, const float* gain,
                          const float* weight, const float* inhibition, Py_ssize_t k, float* value,
                          uint8_t* spikes, const snncc_unit_counts* counts) nogil

    # Pointers the compiler may assume do not alias: the vector loops need no run-time overlap checks.
    ctypedef float* float_rp "float * __restrict__"
    ctypedef const float* cfloat_rp "const float * __restrict__"

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


def variant() -> str:
    """The instruction-set variant this module was compiled for: "portable", "avx2" or "avx512"."""
    return snncc_variant().decode()


def build_stamp() -> str:
    """Hash of the source (and bounds-check option) this module was compiled from; equal for all variants of one
    build."""
    return snncc_build_stamp().decode()


def cpu_supports(name: str) -> bool:
    """Whether this CPU (and OS) runs the instruction-set variant ``name`` ("avx2", "avx512", "portable")."""
    if name == "avx512":
        return bool(snncc_cpu_avx512())
    if name == "avx2":
        return bool(snncc_cpu_avx2())
    return name == "portable"


def boundscheck_enabled() -> bool:
    """Whether the module was built with bounds checks (``SNNCC_BOUNDSCHECK=1`` at build time, see setup.py)."""
    return bool(snncc_boundscheck())


# --------------------------------------------------------------------------------------------------------------
# Populations
# --------------------------------------------------------------------------------------------------------------

cdef inline int _population_row(float* v, const float* current, spike_t* spikes, Py_ssize_t n, float threshold,
                                float decay, bint leak, bint subtract) noexcept nogil:
    """One step of ``n`` neurons of one sample; returns the number of spikes.

    The order of operations is the reference's: decay, add the current, compare, reset. Reset by subtraction is
    ``v - s * threshold`` for every neuron, as in the reference (``v - 0`` is ``v`` exactly). The four variants are
    separate branch-free loops: spikes are data-dependent, and branching on them costs more than the arithmetic.
    """
    cdef Py_ssize_t i
    cdef float x, s
    cdef int count = 0
    # Branch-free bodies (the compiler turns the selects into blends): the loops vectorize.
    if leak and subtract:
        for i in range(n):
            x = v[i] * decay
            x = x + current[i]
            s = <float> (x >= threshold)
            v[i] = x - s * threshold
            spikes[i] = <spike_t> s
            count = count + <int> s
    elif subtract:
        for i in range(n):
            x = v[i] + current[i]
            s = <float> (x >= threshold)
            v[i] = x - s * threshold
            spikes[i] = <spike_t> s
            count = count + <int> s
    elif leak:
        for i in range(n):
            x = v[i] * decay
            x = x + current[i]
            s = <float> (x >= threshold)
            v[i] = 0.0 if x >= threshold else x
            spikes[i] = <spike_t> s
            count = count + <int> s
    else:
        for i in range(n):
            x = v[i] + current[i]
            s = <float> (x >= threshold)
            v[i] = 0.0 if x >= threshold else x
            spikes[i] = <spike_t> s
            count = count + <int> s
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


# --------------------------------------------------------------------------------------------------------------
# Temporal units (FS and AMOS; the window functions of runtime/dynamics.py are the specification)
# --------------------------------------------------------------------------------------------------------------

# Neurons per block of the temporal kernels (SNNCC_UNIT_BLOCK, the C block functions above): the step loop runs
# over a block at a time, one neuron per vector lane, each with its own arithmetic in step order.
UNIT_BLOCK = SNNCC_UNIT_BLOCK


cdef inline void _temporal_block(const float* x, Py_ssize_t m, const float* threshold, const float* height,
                                 const float* weight, const float* gain, const float* inhibition, Py_ssize_t k,
                                 float offset, bint amos, float* out, uint8_t* spikes,
                                 const snncc_unit_counts* counts) noexcept nogil:
    """``m <= UNIT_BLOCK`` FS neurons or AMOS units with gate inputs ``x[:m]``: their output values to ``out[:m]``
    and their spikes to ``spikes[t * UNIT_BLOCK + i]`` (where ``spikes`` is not NULL) and / or into ``counts``
    (where not NULL; see ``snncc_unit_counts``), with the arithmetic of :func:`temporal_units`, which documents
    it; ``inhibition`` is (K, K). The offset is added last, where it is non-zero, as the specification adds it."""
    cdef float value[SNNCC_UNIT_BLOCK]
    cdef Py_ssize_t i
    if amos:
        snncc_amos_block(x, m, threshold, gain, weight, inhibition, k, value, spikes, counts)
    else:
        snncc_fs_block(x, m, threshold, height, weight, k, value, spikes, counts)
    for i in range(m):
        out[i] = value[i] + offset if offset != 0 else value[i]


def _check_temporal_parameters(Py_ssize_t k, const float[::1] height, const float[::1] weight,
                               const float[::1] gain, const float[:, ::1] inhibition):
    _check_shape("temporal unit parameters", (k, k, k), (height.shape[0], weight.shape[0], gain.shape[0]))
    _check_shape("AMOS inhibition", (k, k), (inhibition.shape[0], inhibition.shape[1]))


def temporal_units(const float[::1] x, const float[::1] threshold, const float[::1] height,
                   const float[::1] weight, const float[::1] gain, const float[:, ::1] inhibition, float offset,
                   bint amos, float[::1] out, uint8_t[:, ::1] spikes, int threads=1):
    """Spikes (K, n) and output values (n) of ``n`` FS neurons or AMOS units with gate inputs ``x``.

    FS (``amos=False``; ``gain`` and ``inhibition`` unused), per neuron in float32::

        v = x;  for t < K:  s = v >= T[t];  where s: v = v - h[t], out = out + d[t]

    AMOS (``height`` unused): for neuron ``j`` of a unit, ``u = x * gain[j]``, then ``u = u - W[j, i]`` for every
    earlier neuron ``i`` that fired, in ascending ``i``; ``s = u >= T[j]``; where s: ``out = out + d[j]``.
    Both add ``offset`` last when it is non-zero, exactly as the numpy specification.
    """
    cdef Py_ssize_t n = x.shape[0], k = threshold.shape[0], block, start, m, i, t
    cdef uint8_t* z
    _check_shape("temporal unit output", (n,), (out.shape[0],))
    _check_shape("temporal unit spikes", (k, n), (spikes.shape[0], spikes.shape[1]))
    _check_temporal_parameters(k, height, weight, gain, inhibition)
    cdef uint8_t[:, ::1] scratch = _scratch(threads, k * SNNCC_UNIT_BLOCK, np.uint8)
    for block in prange((n + SNNCC_UNIT_BLOCK - 1) // SNNCC_UNIT_BLOCK, nogil=True, num_threads=max(1, threads),
                        schedule="static"):
        start = block * SNNCC_UNIT_BLOCK
        z = &scratch[threadid(), 0]
        m = min(SNNCC_UNIT_BLOCK, n - start)
        _temporal_block(&x[start], m, &threshold[0], &height[0], &weight[0], &gain[0], &inhibition[0, 0], k,
                        offset, amos, &out[start], z, NULL)
        for t in range(k):
            for i in range(m):
                spikes[t, start + i] = z[t * SNNCC_UNIT_BLOCK + i]


cdef struct ValuePool:
    Py_ssize_t channels, height, width, out_height, out_width, kh, kw, sh, sw


cdef const float* _float_pointer(const float[::1] values):
    return &values[0]


cdef inline void _junction_row(const float* x, const float* y, const float** scales, float* out,
                               Py_ssize_t n) noexcept nogil:
    """``out = (x + (y * scales[0] + scales[1])) * scales[2] + scales[3]``, each rescaling left out where its
    pointers are NULL, every product and sum rounded to float32 (numpy's Affine and Add, -ffp-contract=off)."""
    cdef Py_ssize_t i
    cdef float v, product
    for i in range(n):
        v = y[i]
        if scales[0] != NULL:
            product = v * scales[0][i]
            v = product
        if scales[1] != NULL:
            v = v + scales[1][i]
        v = x[i] + v
        if scales[2] != NULL:
            product = v * scales[2][i]
            v = product
        if scales[3] != NULL:
            v = v + scales[3][i]
        out[i] = v


def temporal_units_counted(const float[:, ::1] x, const float[::1] threshold, const float[::1] height,
                           const float[::1] weight, const float[::1] gain, const float[:, ::1] inhibition,
                           float offset, bint amos, float[:, ::1] out, int64_t[:, ::1] counts, int64_t[::1] peak,
                           const int32_t[:, ::1] fan_out, double[:, :, ::1] synops, int threads=1, pool=None,
                           junction=None):
    """:func:`temporal_units` on a batch ``x`` (B, n) that counts instead of storing the spike trains.

    Writes the output values ``out`` (B, n) and, per sample ``b`` and step ``t`` of the window, the spikes
    ``counts[b, t]`` and, for each of the ``F`` synaptic operands the population feeds (``fan_out`` (F, n'), the
    synapses leaving each neuron, zero-padded to ``n'``, ``n`` rounded up to a multiple of :data:`UNIT_BLOCK`),
    ``synops[b, f, t] = sum over the neurons i that spiked at t of fan_out[f, i]``; ``peak[b]`` is the most spikes
    of one neuron of sample ``b`` (FS: over the window; AMOS: each of a unit's K neurons fires at most once, so 1
    if any did). Every count is an integer sum, exact in any order: int32 lanes per block of neurons, moved into
    int64 totals before any lane could pass ``2^31 - 1``, the synaptic operations then as float64 (the integers the
    reference's float64 product sums). The values are the same float32 arithmetic as :func:`temporal_units` (one
    function computes both).

    With ``pool`` = ((C, H, W), kernel, stride), the input is a max pooling without padding of ``x`` (B, C H W),
    the population's only operand, computed in the same pass: each sample's planes are pooled into a row of
    ``n = C Ho Wo`` values in cache (the reference's arithmetic and NaN rule, ``snncc_max_pool_values``), then
    the units run on it. The pooled current never goes through memory.

    With ``junction`` = (y, scale_y, shift_y, scale, shift), the input is a residual junction's
    ``((x + (y * scale_y + shift_y)) * scale + shift)``, ``y`` (B, n) and the four (n) float32 or None (the
    rescaling left out): each product and sum rounded to float32 in this order, as numpy computes the Affine,
    Add, Affine nodes it replaces (``x + v`` equals ``v + x`` in IEEE arithmetic, so the Add's operand order does
    not matter). The sum is formed sample by sample in cache, like the pooled current.
    """
    cdef Py_ssize_t batch = x.shape[0], n = out.shape[1], k = threshold.shape[0], f_count = fan_out.shape[0]
    cdef Py_ssize_t blocks = (n + SNNCC_UNIT_BLOCK - 1) // SNNCC_UNIT_BLOCK, lanes = SNNCC_UNIT_BLOCK
    cdef Py_ssize_t b, i, t, f, block, start, m, since_flush, flush_every
    cdef int64_t most
    cdef uint8_t* z
    cdef int32_t* steps
    cdef int64_t* totals
    _check_shape("temporal unit output", (batch,), (out.shape[0],))
    _check_shape("temporal unit counts", (batch, k), (counts.shape[0], counts.shape[1]))
    _check_shape("temporal unit peaks", (batch,), (peak.shape[0],))
    _check_shape("temporal unit fan-outs", (f_count, blocks * lanes), (fan_out.shape[0], fan_out.shape[1]))
    _check_shape("temporal unit synaptic operations", (batch, f_count, k),
                 (synops.shape[0], synops.shape[1], synops.shape[2]))
    _check_temporal_parameters(k, height, weight, gain, inhibition)
    if k == 0:
        raise ValueError("temporal units need a window of at least one step")
    cdef ValuePool vp
    cdef bint pooling = pool is not None
    if pooling:
        (vp.channels, vp.height, vp.width), (vp.kh, vp.kw), (vp.sh, vp.sw) = pool
        if vp.kh < 1 or vp.kw < 1 or vp.sh < 1 or vp.sw < 1 or vp.kh > vp.height or vp.kw > vp.width:
            raise ValueError(f"temporal units: pooling windows {pool[1]}, strides {pool[2]} on planes {pool[0]}")
        vp.out_height, vp.out_width = (vp.height - vp.kh) // vp.sh + 1, (vp.width - vp.kw) // vp.sw + 1
        _check_shape("temporal unit input planes", (batch, vp.channels * vp.height * vp.width),
                     (x.shape[0], x.shape[1]))
        _check_shape("pooled temporal units", (vp.channels * vp.out_height * vp.out_width,), (n,))
    else:
        vp.channels = vp.out_height = vp.out_width = vp.kh = vp.kw = vp.sh = vp.sw = vp.height = vp.width = 0
        _check_shape("temporal unit input", (batch, n), (x.shape[0], x.shape[1]))
    cdef bint joining = junction is not None
    cdef const float[:, ::1] other
    cdef const float* scales[4]
    cdef Py_ssize_t a
    if pooling and joining:
        raise ValueError("temporal units: a pooled input or a junction, not both")
    if joining:
        other = junction[0]
        _check_shape("junction operand", (batch, n), (other.shape[0], other.shape[1]))
        for a in range(4):
            scales[a] = NULL
            if junction[a + 1] is not None:
                _check_shape("junction rescaling", (n,), (junction[a + 1].shape[0],))
                scales[a] = _float_pointer(junction[a + 1])
    cdef float[:, ::1] pool_scratch = _scratch(threads, n if (pooling or joining) else 1, np.float32)
    cdef float[:, ::1] pair_scratch = _scratch(threads, 2 * vp.out_height * vp.out_width if pooling else 1,
                                               np.float32)
    cdef const float* row
    largest = int(np.max(fan_out, initial=0)) if f_count else 0
    if f_count and int(np.min(fan_out, initial=0)) < 0:
        raise ValueError("fan-outs are synapse counts: they cannot be negative")
    # A lane gains at most one neuron's fan-out (and one spike per step) per block.
    flush_every = max(1, min(blocks, (2 ** 31 - 1) // max(1, largest)))
    cdef Py_ssize_t lane_values = (k + f_count * k + 1) * lanes
    cdef bint keep_spikes = amos and k > 64  # AMOS units of more than 64 neurons read their spikes back
    cdef uint8_t[:, ::1] spike_scratch = _scratch(threads, k * lanes, np.uint8)
    cdef int32_t[:, ::1] lane_scratch = _scratch(threads, lane_values, np.int32)
    cdef int64_t[:, ::1] total_scratch = _scratch(threads, k + f_count * k, np.int64)
    # Each thread's tally on its own cache line, as its lanes: a block rewrites tally.fan_out, and with the tallies
    # side by side in one line the two threads' writes made two threads slower than one (2.15 against 1.75 ms).
    cdef uint8_t[:, ::1] tally_scratch = _scratch(threads, sizeof(snncc_unit_counts), np.uint8)
    cdef snncc_unit_counts* tally
    for b in prange(batch, nogil=True, num_threads=max(1, threads), schedule="static"):
        z = &spike_scratch[threadid(), 0] if keep_spikes else NULL
        steps = &lane_scratch[threadid(), 0]
        totals = &total_scratch[threadid(), 0]
        tally = <snncc_unit_counts*> &tally_scratch[threadid(), 0]
        tally.f_count = f_count
        tally.stride = fan_out.shape[1]
        tally.steps = steps
        tally.ops = steps + k * lanes
        tally.most = steps + (k + f_count * k) * lanes
        for i in range(lane_values):
            steps[i] = 0
        for i in range(k + f_count * k):
            totals[i] = 0
        since_flush = 0
        if pooling:
            row = &pool_scratch[threadid(), 0]
            snncc_max_pool_values(&x[b, 0], &pool_scratch[threadid(), 0], &pair_scratch[threadid(), 0],
                                  vp.channels, vp.height, vp.width, vp.kh, vp.kw, vp.sh, vp.sw)
        elif joining:
            row = &pool_scratch[threadid(), 0]
            _junction_row(&x[b, 0], &other[b, 0], scales, &pool_scratch[threadid(), 0], n)
        else:
            row = &x[b, 0]
        for block in range(blocks):
            start = block * lanes
            m = min(lanes, n - start)
            tally.fan_out = &fan_out[0, start] if f_count else NULL
            _temporal_block(row + start, m, &threshold[0], &height[0], &weight[0], &gain[0], &inhibition[0, 0],
                            k, offset, amos, &out[b, start], z, tally)
            since_flush = since_flush + 1
            if since_flush == flush_every or block == blocks - 1:
                for t in range((1 + f_count) * k):
                    for i in range(lanes):
                        totals[t] = totals[t] + steps[t * lanes + i]
                        steps[t * lanes + i] = 0
                since_flush = 0
        most = 0
        for i in range(lanes):
            if tally.most[i] > most:
                most = tally.most[i]
        for t in range(k):
            counts[b, t] = totals[t]
            for f in range(f_count):
                synops[b, f, t] = <double>totals[k + f * k + t]
        peak[b] = most


def signed_population_steps(const float[:, :, ::1] current, float[:, ::1] v, float[:, ::1] net,
                            float[:, :, ::1] spikes, float[:, ::1] counts, float threshold, int threads=1):
    """Advance a population of signed IF neurons (``IF(signed=True)``, Wang et al. 2022) by ``Tc`` steps.

    ``net``: (B, n) net spike count, updated in place; ``spikes``: (Tc, B, n) output, -1, 0 or 1; ``counts``: (Tc, B)
    spike events (positive and negative) per sample and step. Per neuron and step (float32, the reference's order)::

        v = v + I(t)
        s = v >= threshold;               where s: v = v - threshold
        n = !s and v < 0 and net > 0;     where n: v = v + threshold
        out = s - n;  net = net + out
    """
    cdef Py_ssize_t tc = spikes.shape[0], batch = spikes.shape[1], n = spikes.shape[2]
    cdef Py_ssize_t b, t, i, step = _time_step(current.shape[0], tc, "population current")
    cdef float x, out
    cdef int events
    _check_shape("population current", (batch, n), (current.shape[1], current.shape[2]))
    _check_shape("population state", (batch, n), (v.shape[0], v.shape[1]))
    _check_shape("net spike count", (batch, n), (net.shape[0], net.shape[1]))
    _check_shape("population counts", (tc, batch), (counts.shape[0], counts.shape[1]))
    for b in prange(batch, nogil=True, num_threads=max(1, threads), schedule="static"):
        for t in range(tc):
            events = 0
            for i in range(n):
                x = v[b, i] + current[t * step, b, i]
                out = 0.0
                if x >= threshold:
                    x = x - threshold
                    out = 1.0
                elif x < 0 and net[b, i] > 0:
                    x = x + threshold
                    out = -1.0
                v[b, i] = x
                net[b, i] = net[b, i] + out
                spikes[t, b, i] = out
                events = events + (out != 0)
            counts[t, b] = <float> events


def _time_step(Py_ssize_t given, Py_ssize_t tc, what: str) -> int:
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
            # Branch-free compaction: write every position, advance only past spikes (a branch per byte would
            # mispredict on most spikes).
            for j in range(i, i + 8):
                index[count] = <int32_t> j
                count = count + (x[j] != 0)
        i = i + 8
    for j in range(i, n):
        index[count] = <int32_t> j
        count = count + (x[j] != 0)
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


# --------------------------------------------------------------------------------------------------------------
# Event-driven synapses
# --------------------------------------------------------------------------------------------------------------

cdef inline void _linear_row(const uint8_t* x, Py_ssize_t k, const float* weight_t, Py_ssize_t n_out,
                             const float* bias, const double* fan_out, float* out, double* synops,
                             int32_t* index) noexcept nogil:
    cdef Py_ssize_t events = _nonzero(x, k, index), e
    cdef double ops = 0.0
    for e in range(events):
        ops = ops + fan_out[index[e]]
    # All the spikes' weight rows in ascending input order, the partial sums in registers.
    memset(out, 0, n_out * sizeof(float))
    snncc_add_channels(out, weight_t, index, events, n_out, n_out)
    if bias != NULL:
        _add(out, bias, n_out)
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
    cdef int32_t[:, ::1] index = _scratch(threads, k, np.int32)
    for r in prange(rows, nogil=True, num_threads=threads, schedule="dynamic", chunksize=4):
        _linear_row(&x[r, 0], k, &weight_t[0, 0], n_out, bias_ptr, &fan_out[0], &out[r, 0], &synops[r],
                    &index[threadid(), 0])


cdef struct ConvGeometry:
    Py_ssize_t channels, height, width      # input, per sample
    Py_ssize_t out_channels, out_height, out_width
    Py_ssize_t kh, kw, per_group_in, per_group_out
    Py_ssize_t pad_left
    bint row_blocks                         # weight columns reversed: one tap row is one contiguous block


cdef inline void _add(float_rp dst, cfloat_rp src, Py_ssize_t n) noexcept nogil:
    """``dst[:n] += src[:n]`` (float32, element by element)."""
    cdef Py_ssize_t o
    for o in range(n):
        dst[o] = dst[o] + src[o]


cdef inline void _conv_row(const uint8_t* x, ConvGeometry* geometry, const float* weight_t, const float* bias,
                           const double* fan_out, const int32_t* row_start, const int32_t* row_taps,
                           const int32_t* col_start, const int32_t* col_taps, float* out, double* synops,
                           float* acc, int32_t* index, int32_t* active, int32_t* count) noexcept nogil:
    """One sample of an event-driven convolution, spatial position by position.

    The output is accumulated channels-last in ``acc`` (Ho, Wo, O). Input rows are visited in ascending ``iy``:
    first the spiking channels of every column ``ix`` of the row are gathered (``active``, ascending ``c``), then
    for each column with spikes, ascending, and each kernel row reaching an output row, each of its spiking
    channels adds one contiguous vector of weights (the output channels of its group, or with ``row_blocks`` all
    the kernel columns it reaches at once). An output ``(oy, ox)`` receives one term from each input position
    within its window (an input row reaches it through one kernel row), positions in row-major order and channels
    ascending within a position: ascending ``(ky, kx, c)``, the order of the reference's channels-last im2col
    product. All spikes of one position add to the same few accumulator rows,
    which stay in L1 (visiting the input channel by channel would sweep the whole accumulator once per channel).
    """
    cdef ConvGeometry g = geometry[0]  # a local copy: stores through float pointers cannot change it
    cdef Py_ssize_t out_plane = g.out_height * g.out_width, O = g.out_channels, n = g.per_group_out
    cdef Py_ssize_t row_size = g.out_width * O, C = g.channels, tap = g.kh * g.kw * n
    cdef Py_ssize_t events, e, c, iy, ix, a, b, j, m, ky, oy, o, pos, row, kx_lo, kx_hi, block, w_off, columns
    cdef Py_ssize_t blocked_o, blocked_pos
    cdef const int32_t* channels
    cdef float* acc_row
    cdef float* dst
    cdef double ops = 0.0
    memset(acc, 0, out_plane * O * sizeof(float))
    for iy in range(g.height):
        memset(count, 0, g.width * sizeof(int32_t))
        for c in range(C):
            row = (c * g.height + iy) * g.width
            events = _nonzero(x + row, g.width, index)
            for e in range(events):
                ix = index[e]
                ops = ops + fan_out[row + ix]
                active[ix * C + count[ix]] = <int32_t> c
                count[ix] = count[ix] + 1
        # The columns with spikes, ascending, found branch-free (whether a column has a spike is a coin toss at
        # the densities of small layers: a test per column and kernel row would mispredict half the time).
        columns = 0
        for ix in range(g.width):
            index[columns] = <int32_t> ix
            columns = columns + (count[ix] != 0)
        for e in range(columns):
            ix = index[e]
            m = count[ix]
            channels = active + ix * C
            if g.row_blocks:
                # Stride and dilation 1 along x, one group: the taps kx reach ox = ix + pl - kx, and with the
                # kernel columns stored reversed those (kx, ox) pairs are one contiguous run of the weights and of
                # the accumulator.
                kx_lo = max(0, ix + g.pad_left - g.out_width + 1)
                kx_hi = min(g.kw - 1, ix + g.pad_left)
                if kx_lo > kx_hi:
                    continue
                block = (kx_hi - kx_lo + 1) * n
            # The kernel rows innermost: consecutive adds go to different output rows, so an add does not wait for
            # the previous one's stores (the next column's window overlaps this one's). The order of each output's
            # terms is unchanged: one input row reaches an output through a single kernel row.
            for a in range(row_start[iy], row_start[iy + 1]):
                ky = row_taps[2 * a]
                oy = row_taps[2 * a + 1]
                acc_row = acc + oy * row_size
                if g.row_blocks:
                    dst = acc_row + (ix + g.pad_left - kx_hi) * O
                    w_off = (ky * g.kw + g.kw - 1 - kx_hi) * n
                    snncc_add_channels(dst, weight_t + w_off, channels, m, tap, block)
                else:
                    for b in range(col_start[ix], col_start[ix + 1]):
                        dst = acc_row + col_taps[2 * b + 1] * O
                        w_off = (ky * g.kw + col_taps[2 * b]) * n
                        if g.per_group_in == C:
                            snncc_add_channels(dst, weight_t + w_off, channels, m, tap, n)
                        else:
                            for j in range(m):
                                c = channels[j]
                                _add(dst + (c // g.per_group_in) * n, weight_t + c * tap + w_off, n)
    # (Ho, Wo, O) -> (O, Ho, Wo) in 16 x 16 blocks (element by element, the strided loads cost a fifth of a small
    # layer's time), then the bias, added last as the reference does.
    blocked_o = O - O % 16
    blocked_pos = out_plane - out_plane % 16
    for o in range(0, blocked_o, 16):
        for pos in range(0, blocked_pos, 16):
            snncc_transpose16(acc + pos * O + o, O, out + o * out_plane + pos, out_plane)
    for o in range(O):
        dst = out + o * out_plane
        for pos in range(blocked_pos if o < blocked_o else 0, out_plane):
            dst[pos] = acc[pos * O + o]
        if bias != NULL:
            for pos in range(out_plane):
                dst[pos] = dst[pos] + bias[o]
    synops[0] = synops[0] + ops


def im2col(const float[:, :, :, ::1] x, float[:, :, :, :, :, ::1] cols, Py_ssize_t first_channel, stride,
           padding, dilation, const float[::1] pad_value, int threads=1):
    """The reference's im2col matrix (:func:`snncc.runtime.kernels.conv2d`), built in one pass without padding the
    input first: ``cols[i, j, c, n, oy, ox] = x[n, first_channel + c, oy sy - pt + i dy, ox sx - pl + j dx]``, or
    ``pad_value[first_channel + c]`` (0 when None) outside the input. Only copies: the values are the reference's.
    ``cols`` is (kh, kw, C per group, N, Ho, Wo); ``padding`` is (top, left).
    """
    cdef Py_ssize_t kh = cols.shape[0], kw = cols.shape[1], cg = cols.shape[2], n = cols.shape[3]
    cdef Py_ssize_t ho = cols.shape[4], wo = cols.shape[5], height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t sy = stride[0], sx = stride[1], pt = padding[0], pl = padding[1], dy = dilation[0]
    cdef Py_ssize_t dx = dilation[1], plane, plane_index, i, j, c, m, oy, ox, iy, lo, hi, shift
    cdef float pad
    cdef float* dst
    cdef const float* src
    cdef const float* pad_ptr = NULL
    if x.shape[0] != n or first_channel < 0 or first_channel + cg > x.shape[1]:
        raise ValueError(f"im2col: columns for {n} samples and channels {first_channel}..{first_channel + cg} "
                         f"do not fit an input of shape {tuple(x.shape)}")
    if pad_value is not None and pad_value.shape[0] != x.shape[1]:
        raise ValueError(f"im2col: {pad_value.shape[0]} padding values for {x.shape[1]} channels")
    if pad_value is not None:
        pad_ptr = &pad_value[0]
    if sy < 1 or sx < 1 or dy < 1 or dx < 1 or pt < 0 or pl < 0:
        raise ValueError(f"im2col: invalid stride {stride}, padding {padding} or dilation {dilation}")
    plane = kh * kw * cg
    for m in prange(n, nogil=True, num_threads=max(1, threads), schedule="static"):
        for plane_index in range(plane):
            i = plane_index // (kw * cg)
            j = (plane_index // cg) % kw
            c = plane_index % cg
            pad = 0.0 if pad_ptr == NULL else pad_ptr[first_channel + c]
            # The outputs whose column lies inside the input: lo <= ox < hi.
            lo = _ceil_div(pl - j * dx, sx)
            hi = _ceil_div(width + pl - j * dx, sx)
            lo = min(lo, wo)
            hi = max(lo, min(hi, wo))
            for oy in range(ho):
                dst = &cols[i, j, c, m, oy, 0]
                iy = oy * sy - pt + i * dy
                if iy < 0 or iy >= height:
                    for ox in range(wo):
                        dst[ox] = pad
                    continue
                src = &x[m, first_channel + c, iy, 0]
                for ox in range(lo):
                    dst[ox] = pad
                if sx == 1:  # a plain loop: rows are short (7-28 values), where a memcpy call costs more than the copy
                    shift = j * dx - pl
                    for ox in range(lo, hi):
                        dst[ox] = src[ox + shift]
                else:
                    for ox in range(lo, hi):
                        dst[ox] = src[ox * sx - pl + j * dx]
                for ox in range(hi, wo):
                    dst[ox] = pad


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


cdef ConvGeometry _conv_geometry(in_shape, out_shape, const float[:, :, :, ::1] weight_t, const float[::1] bias,
                                 const double[::1] fan_out, const int32_t[::1] row_start,
                                 const int32_t[:, ::1] row_taps, const int32_t[::1] col_start,
                                 const int32_t[:, ::1] col_taps, Py_ssize_t groups, bint row_blocks):
    """The checked geometry of an event-driven convolution from (C, H, W) to (O, Ho, Wo) (see conv2d_events)."""
    cdef ConvGeometry g
    g.channels, g.height, g.width = in_shape
    g.out_channels, g.out_height, g.out_width = out_shape
    g.kh, g.kw, g.per_group_out = weight_t.shape[1], weight_t.shape[2], weight_t.shape[3]
    if groups < 1 or g.channels % groups or g.out_channels != g.per_group_out * groups:
        raise ValueError(f"conv2d_events: {g.channels} input and {g.out_channels} output channels do not fit "
                         f"groups={groups} and a weight of {g.per_group_out} outputs per group")
    g.per_group_in = g.channels // groups
    g.row_blocks = row_blocks
    g.pad_left = 0
    _check_shape("conv weight", (g.channels,), (weight_t.shape[0],))
    _check_shape("conv fan-out", (g.channels * g.height * g.width,), (fan_out.shape[0],))
    _check_shape("conv row taps", (g.height + 1,), (row_start.shape[0],))
    _check_shape("conv column taps", (g.width + 1,), (col_start.shape[0],))
    if bias is not None:
        _check_shape("conv bias", (g.out_channels,), (bias.shape[0],))
    if g.channels * g.height * g.width == 0 or g.out_channels * g.out_height * g.out_width == 0:
        raise ValueError("conv2d_events: empty operands")
    if row_taps.shape[0] == 0 or col_taps.shape[0] == 0 or row_taps.shape[1] != 2 or col_taps.shape[1] != 2:
        raise ValueError("conv2d_events: tap tables must be non-empty (n, 2) arrays")
    if row_blocks:
        # With stride and dilation 1 along x every column tap (kx, ox) of input column ix has ox + kx - ix equal to
        # the left padding; any other geometry breaks that.
        columns = np.repeat(np.arange(g.width), np.diff(np.asarray(col_start)))
        shift = np.asarray(col_taps)[:, 1] + np.asarray(col_taps)[:, 0] - columns
        if groups != 1 or shift.size == 0 or np.any(shift != shift[0]):
            raise ValueError("conv2d_events: row_blocks needs groups=1 and stride and dilation 1 along x")
        g.pad_left = shift[0]
    return g


def _conv_scratch(Py_ssize_t threads, ConvGeometry g):
    """Per-thread rows of :func:`_conv_row`: the (Ho, Wo, O) accumulator, the spikes of one input row, the spiking
    channels of each column and their number."""
    return (_scratch(threads, g.out_height * g.out_width * g.out_channels, np.float32),
            _scratch(threads, g.width, np.int32), _scratch(threads, g.width * g.channels, np.int32),
            _scratch(threads, g.width, np.int32))


def conv2d_events(const uint8_t[:, :, :, ::1] x, const float[:, :, :, ::1] weight_t, const float[::1] bias,
                  const double[::1] fan_out, float[:, :, :, ::1] out, double[::1] synops,
                  const int32_t[::1] row_start, const int32_t[:, ::1] row_taps,
                  const int32_t[::1] col_start, const int32_t[:, ::1] col_taps, Py_ssize_t groups,
                  bint row_blocks=False, int threads=1):
    """Event-driven convolution of binary ``x`` (rows, C, H, W) into ``out`` (rows, O, Ho, Wo).

    ``weight_t`` is the weight as (C, kh, kw, O / groups); ``row_*``/``col_*`` are :func:`conv_taps` of the two
    spatial axes for the op's stride, padding and dilation. With ``row_blocks`` (one group, stride and dilation 1
    along x: checked on the column taps, which then give the left padding) ``weight_t`` holds the kernel columns in
    reverse order, (C, kh, kw reversed, O), and each row of taps is added as one contiguous block.
    ``y[o, oy, ox] = (sum over spiking inputs (c, iy, ix) and taps (ky, kx) reaching (oy, ox), in ascending
    (ky, kx, c)) W[o, c, ky, kx]``, then ``+ b[o]``; zero padding adds nothing.
    ``synops[r] += sum of fan_out over the spikes of row r``.
    """
    cdef Py_ssize_t rows = x.shape[0], r
    cdef ConvGeometry g = _conv_geometry((x.shape[1], x.shape[2], x.shape[3]), (out.shape[1], out.shape[2],
                                         out.shape[3]), weight_t, bias, fan_out, row_start, row_taps, col_start,
                                         col_taps, groups, row_blocks)
    cdef const float* bias_ptr = NULL if bias is None else &bias[0]
    _check_shape("conv output rows", (rows,), (out.shape[0],))
    _check_shape("conv synops", (rows,), (synops.shape[0],))
    if rows == 0:
        raise ValueError("conv2d_events: empty operands")
    threads = max(1, threads)
    cdef float[:, ::1] acc
    cdef int32_t[:, ::1] index, active, count
    acc, index, active, count = _conv_scratch(threads, g)
    cdef const int32_t* rt = &row_taps[0, 0]
    cdef const int32_t* ct = &col_taps[0, 0]
    for r in prange(rows, nogil=True, num_threads=threads, schedule="dynamic", chunksize=2):
        _conv_row(&x[r, 0, 0, 0], &g, &weight_t[0, 0, 0, 0], bias_ptr, &fan_out[0], &row_start[0], rt,
                  &col_start[0], ct, &out[r, 0, 0, 0], &synops[r], &acc[threadid(), 0], &index[threadid(), 0],
                  &active[threadid(), 0], &count[threadid(), 0])


def conv2d_population_steps(const uint8_t[:, :, :, :, ::1] x, const float[:, :, :, ::1] weight_t,
                            const float[::1] bias, const double[::1] fan_out, double[::1] synops,
                            const int32_t[::1] row_start, const int32_t[:, ::1] row_taps,
                            const int32_t[::1] col_start, const int32_t[:, ::1] col_taps, Py_ssize_t groups,
                            bint row_blocks, conv_shape, float[:, ::1] v, float[:, ::1] spike_counts,
                            float threshold,
                            float decay, bint leak, bint subtract, uint8_t[:, :, :, :, ::1] out,
                            int32_t[:, ::1] pool_counts=None, int32_t[:, ::1] window_max=None, kernel=None,
                            stride=None, padding=None, int threads=1):
    """An event-driven convolution whose only consumer is an IF/LIF population (and that population's only
    consumer, if ``kernel`` is given, a spiking max pooling), sample by sample and step by step in one kernel.

    ``x`` (Tc, B, C, H, W) spikes; the convolution's arguments as in :func:`conv2d_events` (``synops`` (Tc * B),
    row ``t * B + b``; its output shape ``conv_shape`` (O, Ho, Wo)); the population's as in
    :func:`population_steps` (state ``v`` (B, O*Ho*Wo), spikes per sample and step in ``spike_counts`` (Tc, B));
    ``out``: the population's spikes (Tc, B, O, Ho, Wo), or with a pooling its output (Tc, B, O, Ho', Wo') and its
    state ``pool_counts``, ``window_max`` as in :func:`maxpool_steps`. The current and (with a pooling) the
    spikes stay in per-thread rows in cache; the arithmetic is that of the separate kernels, in the same order.
    """
    cdef Py_ssize_t tc = x.shape[0], batch = x.shape[1], b, t, tid, n
    cdef bint pooled = kernel is not None
    cdef Py_ssize_t out_channels = conv_shape[0], out_height = conv_shape[1], out_width = conv_shape[2]
    cdef ConvGeometry g = _conv_geometry((x.shape[2], x.shape[3], x.shape[4]), (out_channels, out_height,
                                         out_width), weight_t, bias, fan_out, row_start, row_taps, col_start,
                                         col_taps, groups, row_blocks)
    cdef MaxPoolGeometry pg
    cdef const float* bias_ptr = NULL if bias is None else &bias[0]
    n = out_channels * out_height * out_width
    _check_shape("conv synops", (tc * batch,), (synops.shape[0],))
    _check_shape("population state", (batch, n), (v.shape[0], v.shape[1]))
    _check_shape("population counts", (tc, batch), (spike_counts.shape[0], spike_counts.shape[1]))
    if pooled:
        pg = _maxpool_geometry(out_channels, out_height, out_width, out.shape[3], out.shape[4], kernel, stride,
                               padding)
        _check_shape("max pool output", (tc, batch, out_channels), (out.shape[0], out.shape[1], out.shape[2]))
        _check_shape("max pool counts", (batch, n), (pool_counts.shape[0], pool_counts.shape[1]))
        _check_shape("max pool state", (batch, out_channels * pg.out_height * pg.out_width),
                     (window_max.shape[0], window_max.shape[1]))
    else:
        pg = _maxpool_geometry(1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0))  # unused
        _check_shape("population spikes", (tc, batch, out_channels, out_height, out_width),
                     (out.shape[0], out.shape[1], out.shape[2], out.shape[3], out.shape[4]))
    if tc == 0 or batch == 0:
        raise ValueError("conv2d_population_steps: empty operands")
    threads = max(1, threads)
    cdef float[:, ::1] acc, current = _scratch(threads, n, np.float32)
    cdef uint8_t[:, ::1] spikes = _scratch(threads, n, np.uint8)
    cdef int32_t[:, ::1] index, active, count
    acc, index, active, count = _conv_scratch(threads, g)
    cdef int32_t[:, ::1] row_max = _maxpool_scratch(threads, pg)
    cdef Py_ssize_t[::1] ox_range = _ox_ranges(pg)
    cdef const int32_t* rt = &row_taps[0, 0]
    cdef const int32_t* ct = &col_taps[0, 0]
    cdef uint8_t* spike_row
    for b in prange(batch, nogil=True, num_threads=threads, schedule="dynamic", chunksize=1):
        tid = threadid()
        for t in range(tc):
            _conv_row(&x[t, b, 0, 0, 0], &g, &weight_t[0, 0, 0, 0], bias_ptr, &fan_out[0], &row_start[0], rt,
                      &col_start[0], ct, &current[tid, 0], &synops[t * batch + b], &acc[tid, 0], &index[tid, 0],
                      &active[tid, 0], &count[tid, 0])
            spike_row = &spikes[tid, 0] if pooled else &out[t, b, 0, 0, 0]
            spike_counts[t, b] = <float> _population_row(&v[b, 0], &current[tid, 0], spike_row, n, threshold,
                                                         decay, leak, subtract)
            if pooled:
                _maxpool_step(spike_row, &pool_counts[b, 0], &window_max[b, 0], &out[t, b, 0, 0, 0], &pg,
                              &ox_range[0], &row_max[tid, 0])


# --------------------------------------------------------------------------------------------------------------
# Average pooling of spikes folded into the next synaptic layer
# --------------------------------------------------------------------------------------------------------------

cdef inline void _pool_regroup_row(const uint8_t* x, Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                                   Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t out_height, Py_ssize_t out_width,
                                   bint copy, const double* after_fan_out, uint8_t* out, int32_t* window,
                                   double* synops) noexcept nogil:
    """One sample: ``out[c, dy, dx, oy, ox] = x[c, oy kh + dy, ox kw + dx]`` (when ``copy``), and the synaptic
    operations of the pooling (one per covered spike) and of the layers after it (their fan-out at each window
    holding a spike), both branch-free: whether a window has a spike is a coin toss in small layers."""
    cdef Py_ssize_t c, dy, dx, oy, ox, plane = out_height * out_width
    cdef const uint8_t* src
    cdef uint8_t* dst
    cdef const double* after
    cdef int32_t spikes = 0, total
    cdef double ops = 0.0
    cdef const uint8_t* src1
    cdef uint8_t a0, a1, b0, b1
    if kh == 2 and kw == 2 and copy:
        # The common 2x2 window: its four bytes read once, written to their four channels, summed in registers.
        for c in range(channels):
            for oy in range(out_height):
                src = x + (c * height + 2 * oy) * width
                src1 = src + width
                dst = out + 4 * c * plane + oy * out_width
                after = after_fan_out + c * plane + oy * out_width
                for ox in range(out_width):
                    a0 = src[2 * ox]
                    a1 = src[2 * ox + 1]
                    b0 = src1[2 * ox]
                    b1 = src1[2 * ox + 1]
                    dst[ox] = a0
                    dst[plane + ox] = a1
                    dst[2 * plane + ox] = b0
                    dst[3 * plane + ox] = b1
                    total = a0 + a1 + b0 + b1
                    spikes = spikes + total
                    ops = ops + after[ox] * (total != 0)
        synops[0] = synops[0] + ops + spikes
        return
    for c in range(channels):
        for oy in range(out_height):
            memset(window, 0, out_width * sizeof(int32_t))
            for dy in range(kh):
                src = x + (c * height + oy * kh + dy) * width
                for dx in range(kw):
                    if copy:
                        dst = out + ((c * kh + dy) * kw + dx) * plane + oy * out_width
                        for ox in range(out_width):
                            dst[ox] = src[ox * kw + dx]
                    for ox in range(out_width):
                        window[ox] = window[ox] + src[ox * kw + dx]
            after = after_fan_out + c * plane + oy * out_width
            for ox in range(out_width):
                spikes = spikes + window[ox]
                ops = ops + after[ox] * (window[ox] != 0)
    synops[0] = synops[0] + ops + spikes


def pool_regroup(const uint8_t[:, :, :, ::1] x, uint8_t[:, ::1] out, kernel, const double[::1] after_fan_out,
                 double[::1] synops, bint copy=True, int threads=1):
    """Non-overlapping average pooling of binary spikes ``x`` (rows, C, H, W) prepared for the next synaptic layer,
    whose weights are spread over each window and divided by its size (the engine folds them): each spike then adds
    one weight column, so the spikes stay binary and the next layer runs event-driven.

    ``out`` (rows, C * kh * kw * Ho * Wo) gets the spikes regrouped as (C, kh, kw, Ho, Wo): position ``(dy, dx)``
    within its window becomes a channel, the window the spatial position (with ``copy`` false nothing is written:
    for a global pooling, Ho = Wo = 1, that layout is the input's own). Rows and columns beyond the last whole
    window are dropped, as the pooling drops them. ``synops[r] +=`` the pooling's synaptic operations (one per
    spike in a window: a non-overlapping pooling's fan-out is 1 there, 0 in the dropped rows and columns) plus
    those of the layers after it (their fan-out ``after_fan_out`` (C*Ho*Wo) at each window holding a spike: the
    pooled value is non-zero exactly there).
    """
    cdef Py_ssize_t rows = x.shape[0], channels = x.shape[1], height = x.shape[2], width = x.shape[3], r
    cdef Py_ssize_t kh = kernel[0], kw = kernel[1]
    if kh < 1 or kw < 1 or height < kh or width < kw:
        raise ValueError(f"pool_regroup: a {kh}x{kw} window does not fit an input of {height}x{width}")
    cdef Py_ssize_t out_height = height // kh, out_width = width // kw
    _check_shape("fan-out after the pooling", (channels * out_height * out_width,), (after_fan_out.shape[0],))
    _check_shape("pool synops", (rows,), (synops.shape[0],))
    if copy:
        _check_shape("regrouped spikes", (rows, channels * kh * kw * out_height * out_width),
                     (out.shape[0], out.shape[1]))
    if rows == 0:
        raise ValueError("pool_regroup: empty operands")
    threads = max(1, threads)
    cdef int32_t[:, ::1] window = _scratch(threads, out_width, np.int32)
    cdef uint8_t* out_ptr
    for r in prange(rows, nogil=True, num_threads=threads, schedule="static"):
        out_ptr = &out[r, 0] if copy else NULL
        _pool_regroup_row(&x[r, 0, 0, 0], channels, height, width, kh, kw, out_height, out_width, copy,
                          &after_fan_out[0], out_ptr, &window[threadid(), 0], &synops[r])


# --------------------------------------------------------------------------------------------------------------
# Element-wise ops on time-folded chunks (residual junctions): the reference's numpy arithmetic, element by element
# --------------------------------------------------------------------------------------------------------------

def affine_steps(const event_t[:, ::1] x, const float[::1] scale, const float[::1] shift, float[:, ::1] out,
                 int threads=1):
    """``out[r, i] = float(x[r, i]) * scale[i] + shift[i]``, rounded after the product and after the sum as numpy
    rounds ``x * scale + shift`` in float32 (no fused multiply-add: the build passes ``-ffp-contract=off``)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], r, i
    _check_shape("affine scale", (n,), (scale.shape[0],))
    _check_shape("affine shift", (n,), (shift.shape[0],))
    _check_shape("affine output", (rows, n), (out.shape[0], out.shape[1]))
    cdef float product
    for r in prange(rows, nogil=True, num_threads=max(1, threads), schedule="static"):
        for i in range(n):
            product = (<float> x[r, i]) * scale[i]
            out[r, i] = product + shift[i]


def add_steps(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] out, int threads=1):
    """``out = a + b`` (float32, element by element)."""
    cdef Py_ssize_t rows = a.shape[0], n = a.shape[1], r, i
    _check_shape("add operand", (rows, n), (b.shape[0], b.shape[1]))
    _check_shape("add output", (rows, n), (out.shape[0], out.shape[1]))
    for r in prange(rows, nogil=True, num_threads=max(1, threads), schedule="static"):
        for i in range(n):
            out[r, i] = a[r, i] + b[r, i]


# --------------------------------------------------------------------------------------------------------------
# Spiking max pooling
# --------------------------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0, and 0 for a <= 0."""
    return (a + b - 1) // b if a > 0 else 0


cdef struct MaxPoolGeometry:
    Py_ssize_t channels, height, width, out_height, out_width, kh, kw, sh, sw, pt, pl
    bint padded


cdef inline void _maxpool_separable(const int32_t* counts, int32_t* window_max, uint8_t* out, MaxPoolGeometry* g,
                                    int32_t* column_max) noexcept nogil:
    """Window max without padding, separably: the max over the kh rows of a window row (one contiguous pass over
    the width), then over the kw columns of each window. Fewer, longer loops than tap by tap."""
    cdef Py_ssize_t plane = g.height * g.width, width = g.width, c, oy, ky, ix, ox, kx, sw = g.sw, kw = g.kw
    cdef const int32_t* crow
    cdef int32_t* wmax
    cdef uint8_t* orow
    cdef int32_t m, value
    for c in range(g.channels):
        for oy in range(g.out_height):
            crow = counts + c * plane + oy * g.sh * width
            for ix in range(width):
                column_max[ix] = crow[ix]
            for ky in range(1, g.kh):
                crow = crow + width
                for ix in range(width):
                    value = crow[ix]
                    column_max[ix] = value if value > column_max[ix] else column_max[ix]
            wmax = window_max + (c * g.out_height + oy) * g.out_width
            orow = out + (c * g.out_height + oy) * g.out_width
            for ox in range(g.out_width):
                m = column_max[ox * sw]
                for kx in range(1, kw):
                    value = column_max[ox * sw + kx]
                    m = value if value > m else m
                orow[ox] = m > wmax[ox]
                wmax[ox] = m


cdef inline void _maxpool_2x2(const int32_t* counts, int32_t* window_max, uint8_t* out, MaxPoolGeometry* g,
                              int32_t* column_max) noexcept nogil:
    """2x2 windows with stride 2 and no padding (the common case), in two long vectorizable passes: the max of
    each pair of window rows (``column_max``, (C, Ho, W)), then of each pair of adjacent columns of that, over the
    whole (C, Ho, Wo) output at once. Rows of small layers are too short for vectors (LeNet-5's second pool has
    5 outputs per row); pairs never straddle two rows when ``W == 2 Wo``, which the caller checks."""
    cdef Py_ssize_t width = g.width, c, oy, ix, j, n = g.channels * g.out_height * g.out_width
    cdef const int32_t* r0
    cdef const int32_t* r1
    cdef int32_t* vrow
    cdef int32_t a, b, m
    for c in range(g.channels):
        for oy in range(g.out_height):
            r0 = counts + (c * g.height + 2 * oy) * width
            r1 = r0 + width
            vrow = column_max + (c * g.out_height + oy) * width
            for ix in range(width):
                a = r0[ix]
                b = r1[ix]
                vrow[ix] = a if a > b else b
    for j in range(n):
        a = column_max[2 * j]
        b = column_max[2 * j + 1]
        m = a if a > b else b
        out[j] = m > window_max[j]
        window_max[j] = m


cdef inline void _maxpool_step(const uint8_t* x, int32_t* counts, int32_t* window_max, uint8_t* out,
                               MaxPoolGeometry* geometry, const Py_ssize_t* ox_range, int32_t* row_max) noexcept nogil:
    """One step of one sample: add the spikes to the counts, then recompute every window's max of counts.

    Branch-free and vectorizable: at the spike densities of converted networks (a few percent, scattered) a scan
    for events mispredicts on almost every spike and costs more than this dense pass. ``ox_range[2*kx]``,
    ``ox_range[2*kx+1]``: the outputs whose tap ``kx`` lies inside the row.
    """
    cdef MaxPoolGeometry g = geometry[0]  # a local copy: stores through int32 pointers cannot change it
    cdef Py_ssize_t plane = g.height * g.width, c, oy, ky, iy, kx, ox, i, sw = g.sw, shift
    cdef const int32_t* crow
    cdef int32_t* wmax
    cdef uint8_t* orow
    cdef int32_t m
    for i in range(g.channels * plane):
        counts[i] = counts[i] + x[i]
    if g.kh == 2 and g.kw == 2 and g.sh == 2 and g.sw == 2 and not g.padded and g.width == 2 * g.out_width:
        _maxpool_2x2(counts, window_max, out, &g, row_max)
        return
    if not g.padded:
        _maxpool_separable(counts, window_max, out, &g, row_max)
        return
    for c in range(g.channels):
        for oy in range(g.out_height):
            for ox in range(g.out_width):
                row_max[ox] = -1  # below every count: padding (-inf in the reference) never wins
            for ky in range(g.kh):
                iy = oy * g.sh - g.pt + ky
                if iy < 0 or iy >= g.height:
                    continue
                crow = counts + c * plane + iy * g.width
                for kx in range(g.kw):
                    shift = kx - g.pl
                    for ox in range(ox_range[2 * kx], ox_range[2 * kx + 1]):
                        m = crow[ox * sw + shift]
                        row_max[ox] = m if m > row_max[ox] else row_max[ox]
            wmax = window_max + (c * g.out_height + oy) * g.out_width
            orow = out + (c * g.out_height + oy) * g.out_width
            for ox in range(g.out_width):
                orow[ox] = row_max[ox] > wmax[ox]
                wmax[ox] = row_max[ox]


cdef MaxPoolGeometry _maxpool_geometry(Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                                       Py_ssize_t out_height, Py_ssize_t out_width, kernel, stride, padding):
    cdef MaxPoolGeometry g
    g.channels, g.height, g.width = channels, height, width
    g.out_height, g.out_width = out_height, out_width
    g.kh, g.kw = kernel
    g.sh, g.sw = stride
    g.pt, g.pl = padding[0], padding[1]
    g.padded = any(padding)
    if g.kh < 1 or g.kw < 1 or g.sh < 1 or g.sw < 1 or g.pt < 0 or g.pl < 0:
        raise ValueError(f"max pooling: invalid kernel {kernel}, stride {stride} or padding {padding}")
    if channels * height * width == 0 or out_height * out_width == 0:
        raise ValueError("max pooling: empty operands")
    return g


def _ox_ranges(MaxPoolGeometry g):
    """For each kernel column kx, the outputs ox with 0 <= ox * sw - pl + kx < width (as [start, stop) pairs)."""
    return np.array([bound for kx in range(g.kw) for bound in (_ceil_div(g.pl - kx, g.sw),
                                                              min(g.out_width, _ceil_div(g.width + g.pl - kx, g.sw)))],
                    dtype=np.intp)


def _maxpool_scratch(Py_ssize_t threads, MaxPoolGeometry g):
    """Per thread: a row of window maxima, or the (C, Ho, W) row-pair maxima of the 2x2 path."""
    return _scratch(threads, max(g.out_width, g.width, g.channels * g.out_height * g.width), np.int32)


def maxpool_steps(const uint8_t[:, :, :, :, ::1] spikes, int32_t[:, ::1] counts, int32_t[:, ::1] window_max,
                  uint8_t[:, :, :, :, ::1] out, kernel, stride, padding, int threads=1):
    """Spiking max pooling of binary ``spikes`` (Tc, B, C, H, W) into ``out`` (Tc, B, C, Ho, Wo).

    State: ``counts`` (B, C*H*W) spike counts of the inputs and ``window_max`` (B, C*Ho*Wo) the running max of the
    counts over each window, both starting at 0. ``out[t] = max_j N_j(t) > max_j N_j(t-1)``: counts grow by at most
    one per step, so this is the reference's increment ``max_j N_j(t) - max_j N_j(t-1)``. ``kernel``/``stride``
    are (h, w) and ``padding`` (top, left, bottom, right); padded positions never win, which requires every window
    to hold a real input (the engine checks this).
    """
    cdef Py_ssize_t tc = spikes.shape[0], batch = spikes.shape[1], b, t
    cdef MaxPoolGeometry g = _maxpool_geometry(spikes.shape[2], spikes.shape[3], spikes.shape[4], out.shape[3],
                                               out.shape[4], kernel, stride, padding)
    _check_shape("max pool output", (tc, batch, g.channels), (out.shape[0], out.shape[1], out.shape[2]))
    _check_shape("max pool counts", (batch, g.channels * g.height * g.width), (counts.shape[0], counts.shape[1]))
    _check_shape("max pool state", (batch, g.channels * g.out_height * g.out_width),
                 (window_max.shape[0], window_max.shape[1]))
    if tc == 0 or batch == 0:
        raise ValueError("maxpool_steps: empty operands")
    threads = max(1, threads)
    cdef int32_t[:, ::1] row_max = _maxpool_scratch(threads, g)
    cdef Py_ssize_t[::1] ox_range = _ox_ranges(g)
    for b in prange(batch, nogil=True, num_threads=threads, schedule="static"):
        for t in range(tc):
            _maxpool_step(&spikes[t, b, 0, 0, 0], &counts[b, 0], &window_max[b, 0], &out[t, b, 0, 0, 0], &g,
                          &ox_range[0], &row_max[threadid(), 0])


def population_maxpool_steps(const float[:, :, ::1] current, float[:, ::1] v, float[:, ::1] spike_counts,
                             float threshold, float decay, bint leak, bint subtract, int32_t[:, ::1] counts,
                             int32_t[:, ::1] window_max, uint8_t[:, :, :, :, ::1] out, in_shape, kernel, stride,
                             padding, int threads=1):
    """An IF/LIF population whose only consumer is a spiking max pooling, in one pass per sample and step.

    :func:`population_steps` (``current`` (Tc or 1, B, C*H*W), state ``v`` (B, C*H*W), spikes per sample and step
    in ``spike_counts`` (Tc, B)) writes into a per-thread row that stays in cache, and :func:`maxpool_steps` pools
    that row (``in_shape`` (C, H, W); state ``counts``, ``window_max``; output ``out`` (Tc, B, C, Ho, Wo)): the
    same arithmetic as the two kernels one after the other, without writing the population's spike train to
    memory and reading it back.
    """
    cdef Py_ssize_t tc = out.shape[0], batch = out.shape[1], b, t, tid
    cdef Py_ssize_t channels = in_shape[0], height = in_shape[1], width = in_shape[2]
    cdef Py_ssize_t n = channels * height * width, step = _time_step(current.shape[0], tc, "population current")
    cdef MaxPoolGeometry g = _maxpool_geometry(channels, height, width, out.shape[3], out.shape[4], kernel, stride,
                                               padding)
    _check_shape("population current", (batch, n), (current.shape[1], current.shape[2]))
    _check_shape("population state", (batch, n), (v.shape[0], v.shape[1]))
    _check_shape("population counts", (tc, batch), (spike_counts.shape[0], spike_counts.shape[1]))
    _check_shape("max pool output", (tc, batch, channels), (out.shape[0], out.shape[1], out.shape[2]))
    _check_shape("max pool counts", (batch, n), (counts.shape[0], counts.shape[1]))
    _check_shape("max pool state", (batch, channels * g.out_height * g.out_width),
                 (window_max.shape[0], window_max.shape[1]))
    if tc == 0 or batch == 0:
        raise ValueError("population_maxpool_steps: empty operands")
    threads = max(1, threads)
    cdef int32_t[:, ::1] row_max = _maxpool_scratch(threads, g)
    cdef uint8_t[:, ::1] spikes = _scratch(threads, n, np.uint8)
    cdef Py_ssize_t[::1] ox_range = _ox_ranges(g)
    for b in prange(batch, nogil=True, num_threads=threads, schedule="static"):
        tid = threadid()
        for t in range(tc):
            spike_counts[t, b] = <float> _population_row(&v[b, 0], &current[t * step, b, 0], &spikes[tid, 0], n,
                                                         threshold, decay, leak, subtract)
            _maxpool_step(&spikes[tid, 0], &counts[b, 0], &window_max[b, 0], &out[t, b, 0, 0, 0], &g, &ox_range[0],
                          &row_max[tid, 0])


def _scratch(Py_ssize_t threads, Py_ssize_t n, dtype):
    """Uninitialized scratch rows, one per thread, of at least ``n`` values, each starting on its own 64-byte cache
    line. Rows sharing a line would make the threads' writes invalidate each other's caches (false sharing: it
    cost the LeNet's convolution a third of its two-thread speed-up)."""
    itemsize = np.dtype(dtype).itemsize
    per_line = 64 // itemsize
    width = -(-max(n, 1) // per_line) * per_line
    buffer = np.empty(threads * width + per_line, dtype=dtype)
    start = (-buffer.ctypes.data % 64) // itemsize
    return buffer[start:start + threads * width].reshape(threads, width)


def _check_shape(what: str, expected: tuple, actual: tuple) -> None:
    if tuple(expected) != tuple(actual):
        raise ValueError(f"{what}: expected shape {tuple(expected)}, got {tuple(actual)}")
