"""The Cython runtime: the reference simulator's schedule with compiled, event-driven kernels.

:class:`CythonSimulator` has the interface of :class:`~snncc.runtime.reference.ReferenceSimulator` (it derives from
it and keeps its constructor checks, chunk sizes and bookkeeping) and computes the same spikes:

- **Same schedule.** A batch runs in chunks of time steps of the reference's size; within a chunk each node runs once
  on all steps, stateful nodes carry their state across chunks, values constant in time (the input and the first
  layer's analog current) are computed once with the reference's numpy kernels.
- **Spikes are bytes.** Populations emit uint8 spike trains (T, B, n); flattening and reshaping keep them.
- **Populations, readouts and spiking max pooling** run in :mod:`snncc.runtime._kernels` with the reference's float32
  arithmetic in the reference's order (see that module).
- **Fused layers.** A population read only by a spiking max pooling runs in one kernel with it, and an
  event-driven convolution read only by a population (alone or with its pooling) runs in one kernel with that:
  sample by sample and step by step, so the current and the spike train between them never go through memory.
  Each fused kernel calls the same row functions in the same order as the separate ones.
- **Event-driven synapses.** A Conv2d or Linear fed by spikes accumulates, for each sample and step, only the weights
  of the inputs that spiked: the cost is ``spikes x fan-out``, not ``inputs x outputs``. Per chunk the measured spike
  density picks this path or the dense one (numpy/BLAS on the spikes as float32, exactly the reference's call):
  above :data:`DENSE_ABOVE` of the inputs active, BLAS wins.
- **Average pooling of spikes** (non-overlapping windows, or global) read only by Conv2d/Linear layers is folded
  into them (:class:`_PoolFold`): the layer's weight is spread over each window and divided by its size, so every
  spike adds one weight column and the layer stays event-driven; its sums hold more terms than the reference's,
  which bounds how far they differ (see the class).
- **Everything else** (pooling of analog values, Add, Concat, ...) runs the reference's numpy kernels on float32
  data, so it is identical by construction.

Exactness of the event-driven sums: for 0/1 inputs a BLAS product accumulates ``acc + W[o, k]`` over the spiking
``k`` in ascending order, which the kernels reproduce term for term. A BLAS may order the sum differently: OpenBLAS
splits reductions longer than a few hundred inputs into blocks summed separately, and multiplies small matrices
with a kernel of its own order. The currents then differ in the last bit, and a spike can flip where a membrane lies
within that rounding of the threshold; the agreement tests bound how often (tests/runtime/test_cython_agreement.py).

A :class:`CythonSimulator` reuses its output buffers from chunk to chunk: one instance must not run two batches
at the same time (from two threads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.ir.neurons import IF, LIF, Amos
from snncc.runtime import load_kernels
from snncc.runtime.graded_convolution import (Convolution, MeasuredConv2d, OneDNNConv2d,
                                              check_convolution)
from snncc.runtime.kernels import apply, conv2d
from snncc.runtime.reference import STATEFUL, BatchResult, ReferenceSimulator
from snncc.runtime.temporal import TemporalSimulator

_kernels = load_kernels()  # sets the OpenMP wait policy first (see load_kernels)

# Spike density (fraction of a synaptic op's inputs that are non-zero, over a chunk) above which the dense BLAS
# product is faster than event-driven accumulation. Measured on a 2-core x86 machine (AMD EPYC, one thread each)
# with docs/scripts/benchmark_runtime.py --crossover: convolutions cross over at 0.35-0.6, fully connected layers at
# 0.2-0.3. Both paths give the same sums, so this affects speed only.
DENSE_ABOVE = {ops.Linear: 0.2, ops.Conv2d: 0.35}

# Kernel calls with fewer values than this run on one thread: starting and joining an OpenMP team costs more than
# the work (and far more on a loaded machine, where a worker may wait for a time slice).
PARALLEL_MIN_VALUES = 1 << 16



@dataclass
class _Signal:
    """A node's value over one chunk: (B, *shape) when constant in time, else (Tc, B, *shape); ``binary`` marks
    uint8 spike trains (0/1), everything else is float32."""

    data: np.ndarray
    constant: bool
    binary: bool = False

    def steps(self, tc: int) -> np.ndarray:
        """(Tc, B, *shape) float32 (a broadcast view when constant), as the reference sees it."""
        data = self.data.astype(np.float32) if self.binary else self.data
        return np.broadcast_to(data, (tc,) + data.shape) if self.constant else data


class _Buffers:
    """Output arrays of one plan, reused from chunk to chunk: fresh large arrays cost page faults every chunk.

    Safe because a node's value lives only within its chunk (the engine copies graph outputs out)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        key = (name, shape, np.dtype(dtype).str)
        array = self._arrays.get(key)
        if array is None:
            self._arrays = {k: a for k, a in self._arrays.items() if k[0] != name}  # the last chunk is shorter
            array = self._arrays[key] = np.empty(shape, dtype=dtype)
        return array


def _threads(threads: int, values: int) -> int:
    return threads if values >= PARALLEL_MIN_VALUES else 1


def default_threads() -> int:
    """Threads for the kernels: OpenMP's default (``OMP_NUM_THREADS`` or the number of cores)."""
    return max(1, _kernels.max_threads() if _kernels.openmp_enabled() else 1)


def _flat_steps(signal: _Signal, tc: int, batch: int) -> np.ndarray:
    """A signal as C-contiguous float32 (Tc, B, n), or (1, B, n) when constant in time (the kernels reuse it)."""
    data = np.ascontiguousarray(signal.data, dtype=np.float32)
    return data.reshape(1 if signal.constant else tc, batch, -1)


@dataclass
class _Chunk:
    """What the plans of one batch share during a chunk of ``tc`` time steps from step ``t0``: the input ``x``, the
    plans' states, the nodes' values, the spike counts of every population (T, B) and this chunk's synaptic
    operations (a flat (Tc * B) view that kernels add into)."""

    x: np.ndarray
    tc: int
    batch: int
    t0: int
    states: dict[str, object]
    values: dict[str, _Signal]
    spikes: dict[str, np.ndarray]
    synops: np.ndarray

    def count(self, population: str, counts: np.ndarray) -> None:
        """Record a population's spikes per step and sample (Tc, B) for this chunk."""
        self.spikes[population][self.t0:self.t0 + self.tc] = counts


class _Plan:
    """The run protocol every plan of the engine implements, so that the engine's loop is one call per node.

    ``start(batch)``: the plan's state for a new batch (None when stateless). ``run(chunk, node, args)``: the value
    of ``node`` over the chunk, from its operands' values ``args``; a plan for populations records their spike
    counts with ``chunk.count``, and a fused plan also sets the values of the later nodes it computes in
    ``chunk.values`` (and returns None for a value that exists only inside its kernel). A value constant in time is
    kept by the engine for the rest of the batch."""

    def start(self, batch: int) -> object:
        return None

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal | None:
        raise NotImplementedError


class _InputPlan(_Plan):
    """The network input: constant in time."""

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        return _Signal(chunk.x, True)


class _BinaryView(_Plan):
    """Flatten/Reshape/Identity of a binary spike train: the same bytes, reshaped."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        return _Signal(args[0].data.reshape((chunk.tc, chunk.batch) + self.shape), False, True)


class _Stateless(_Plan):
    """Any other op: computed once per batch when all its operands are constant in time (a convolution of the
    input with a compiled im2col, see :func:`_constant_conv2d`), else the reference's numpy kernel on the
    time-folded chunk (float32 inputs: identical arithmetic), counting synaptic operations for synaptic ops."""

    def __init__(self, op: ops.Op, in_shapes: list[tuple[int, ...]], fan_outs: list[np.ndarray],
                 threads: int) -> None:
        self.op, self.in_shapes, self.fan_outs, self.threads = op, in_shapes, fan_outs, threads
        self.conv = isinstance(op, ops.Conv2d) and op.input_gains is None
        self.buffers = _Buffers()

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        op, tc, batch = self.op, chunk.tc, chunk.batch
        if all(a.constant for a in args):
            if self.conv and args[0].data.dtype == np.float32:
                return _Signal(_constant_conv2d(op, args[0].data, self.threads, self.buffers), True)
            return _Signal(apply(op, *(a.data for a in args)), True)
        flat = [a.steps(tc).reshape((tc * batch,) + shape) for a, shape in zip(args, self.in_shapes)]
        result = apply(op, *flat)
        for arg, fan_out in zip(args, self.fan_outs):
            if not arg.constant:  # as in the reference: each operand's events cost its own fan-out
                events = np.ascontiguousarray(arg.data).reshape(tc * batch, -1)
                _kernels.count_events(events, fan_out, chunk.synops, _threads(self.threads, events.size))
        return _Signal(result.reshape((tc, batch) + result.shape[1:]), False)


class _Population(_Plan):
    """IF/LIF population (see :class:`~snncc.ir.neurons.IF`): state ``v`` (B, n) float32."""

    def __init__(self, op: ops.Population, size: int, threads: int, shape: tuple[int, ...] | None = None) -> None:
        neuron = op.neuron
        if not isinstance(neuron, (IF, LIF)):
            raise SimulationError(f"the Cython runtime has no dynamics for neuron model {neuron.kind}")
        self.size, self.threads = size, threads
        self.shape = (size,) if shape is None else shape
        # The reference's float32 constants, computed the same way.
        self.threshold = np.float32(neuron.threshold)
        self.leak = isinstance(neuron, LIF)
        self.decay = np.float32(neuron.beta) if self.leak else np.float32(1)
        self.subtract = neuron.reset == "subtract"
        self.v_init = np.float32(neuron.v_init) * self.threshold
        self.buffers = _Buffers()

    def start(self, batch: int) -> np.ndarray:
        return np.full((batch, self.size), self.v_init, dtype=np.float32)

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        out, counts = self.advance(chunk.states[node], args[0], chunk.tc, chunk.batch, self.shape)
        chunk.count(node, counts)
        return out

    def advance(self, v: np.ndarray, signal: _Signal, tc: int, batch: int, shape: tuple[int, ...]
                ) -> tuple[_Signal, np.ndarray]:
        """Advance the membranes ``v`` by the chunk's steps: the spike train and the counts per step and sample."""
        current = _flat_steps(signal, tc, batch)
        spikes = self.buffers.get("spikes", (tc, batch, self.size), np.uint8)
        counts = np.empty((tc, batch), dtype=np.float32)
        _kernels.population_steps(current, v, spikes, counts, self.threshold, self.decay, self.leak, self.subtract,
                                  _threads(self.threads, spikes.size))
        return _Signal(spikes.reshape((tc, batch) + shape), False, True), counts


class _SignedPopulation(_Population):
    """Signed IF population (``IF(signed=True)``): state ``(v, net count)``; spikes are float32 -1/0/1, so the
    synapses after it take the dense path (the reference's arithmetic)."""

    def start(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        return super().start(batch), np.zeros((batch, self.size), dtype=np.float32)

    def advance(self, state: tuple[np.ndarray, np.ndarray], signal: _Signal, tc: int, batch: int,
                shape: tuple[int, ...]) -> tuple[_Signal, np.ndarray]:
        v, net = state
        current = _flat_steps(signal, tc, batch)
        spikes = self.buffers.get("spikes", (tc, batch, self.size), np.float32)
        counts = np.empty((tc, batch), dtype=np.float32)
        _kernels.signed_population_steps(current, v, net, spikes, counts, self.threshold,
                                         _threads(self.threads, spikes.size))
        return _Signal(spikes.reshape((tc, batch) + shape), False), counts


class _Readout(_Plan):
    """Running mean of the input current: state ``total`` (B, n) float64."""

    def __init__(self, size: int, threads: int, shape: tuple[int, ...] | None = None) -> None:
        self.size, self.threads = size, threads
        self.shape = (size,) if shape is None else shape

    def start(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.size), dtype=np.float64)

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        return self.advance(chunk.states[node], args[0], chunk.tc, chunk.batch, chunk.t0, self.shape)

    def advance(self, total: np.ndarray, signal: _Signal, tc: int, batch: int, t0: int, shape: tuple[int, ...]
                ) -> _Signal:
        out = np.empty((tc, batch, self.size), dtype=np.float32)
        _kernels.readout_steps(_flat_steps(signal, tc, batch), total, t0, out, _threads(self.threads, out.size))
        return _Signal(out.reshape((tc, batch) + shape), False)


def _taps(size: int, out_size: int, kernel: int, stride: int, pad: int, dilation: int = 1
          ) -> tuple[np.ndarray, np.ndarray]:
    start, pairs = _kernels.conv_taps(size, out_size, kernel, stride, pad, dilation)
    return start, np.ascontiguousarray(pairs, dtype=np.int32)


class _MaxPool(_Plan):
    """Spiking max pooling of binary spikes: state (counts (B, C*H*W), running max (B, C*Ho*Wo)) int32."""

    def __init__(self, op: ops.SpikingMaxPool2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 threads: int) -> None:
        self.op, self.in_shape, self.out_shape, self.threads = op, in_shape, out_shape, threads
        self.buffers = _Buffers()

    @staticmethod
    def supports(op: ops.SpikingMaxPool2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
        """Whether every window holds a real input. A window of padding only has max -inf in the reference (and
        NaN increments after it); such graphs run the reference's numpy state instead."""
        (kh, kw), (sh, sw) = op.kernel, op.stride
        rows = _kernels.conv_taps(in_shape[1], out_shape[1], kh, sh, op.padding[0], 1)[1]
        cols = _kernels.conv_taps(in_shape[2], out_shape[2], kw, sw, op.padding[1], 1)[1]
        return (len(set(rows[:, 1].tolist())) == out_shape[1] and len(set(cols[:, 1].tolist())) == out_shape[2])

    def start(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.zeros((batch, int(np.prod(self.in_shape))), dtype=np.int32),
                np.zeros((batch, int(np.prod(self.out_shape))), dtype=np.int32))

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        return self.advance(chunk.states[node], args[0], chunk.tc, chunk.batch)

    def advance(self, state: tuple[np.ndarray, np.ndarray], signal: _Signal, tc: int, batch: int) -> _Signal:
        counts, window_max = state
        spikes = np.ascontiguousarray(signal.data).reshape((tc, batch) + self.in_shape)
        out = self.buffers.get("out", (tc, batch) + self.out_shape, np.uint8)
        _kernels.maxpool_steps(spikes, counts, window_max, out, self.op.kernel, self.op.stride, self.op.padding,
                               _threads(self.threads, spikes.size))
        return _Signal(out, False, True)


class _PopulationMaxPool(_Plan):
    """An IF/LIF population whose only consumer is a spiking max pooling, run as one kernel: the population's spike
    train is never written to memory (:func:`_kernels.population_maxpool_steps`). Runs at the population's node;
    the pooling's node then has its value already."""

    def __init__(self, population: _Population, pool: _MaxPool, pool_node: str) -> None:
        self.population, self.pool, self.pool_node = population, pool, pool_node

    def start(self, batch: int) -> np.ndarray:
        return self.population.start(batch)

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> None:
        pooled, counts = self.advance(chunk.states[node], chunk.states[self.pool_node], args[0], chunk.tc,
                                      chunk.batch)
        chunk.count(node, counts)
        chunk.values[self.pool_node] = pooled
        return None  # the population's spikes exist only inside the fused kernel

    def advance(self, v: np.ndarray, pool_state: tuple[np.ndarray, np.ndarray], signal: _Signal, tc: int,
                batch: int) -> tuple[_Signal, np.ndarray]:
        pop, pool = self.population, self.pool
        counts, window_max = pool_state
        out = pool.buffers.get("out", (tc, batch) + pool.out_shape, np.uint8)
        spike_counts = np.empty((tc, batch), dtype=np.float32)
        _kernels.population_maxpool_steps(_flat_steps(signal, tc, batch), v, spike_counts, pop.threshold, pop.decay,
                                          pop.leak, pop.subtract, counts, window_max, out, pool.in_shape,
                                          pool.op.kernel, pool.op.stride, pool.op.padding,
                                          _threads(pop.threads, tc * batch * pop.size))
        return _Signal(out, False, True), spike_counts



class _PoolFold(_Plan):
    """Non-overlapping average pooling (or global average pooling) of binary spikes whose only readers are synaptic
    layers (through flattening): folded into them. The pooled value of a window is ``(spikes in it) / size`` and the
    layer after it multiplies it by a weight, so the layer's weight spread over the window and divided by its size
    gives the same current with every spike adding one weight column: the spikes stay binary and the layer runs
    event-driven (:class:`_EventSynapse`, fused with its population where it feeds one). This plan regroups the
    spikes so that the folded layer keeps the pooled layer's geometry (:func:`_kernels.pool_regroup`: position
    ``(dy, dx)`` within a window becomes a channel, the window the spatial position) and counts the synaptic
    operations of the pooling and of the layers after it, which see a non-zero input where a window holds a spike.

    Exactness: the folded sum adds ``W / size`` once per spike instead of ``W * (count / size)`` once per window, a
    sum of at most ``size`` times as many terms of the same total magnitude; the currents differ from the
    reference's by rounding only, within the order bound of that longer sum (the agreement tests' bound). A
    spike flips only where a membrane lies within that rounding of the threshold."""

    def __init__(self, kernel: tuple[int, int], in_shape: tuple[int, ...], pooled_shape: tuple[int, ...],
                 pool_fan_out: np.ndarray, after_fan_out: np.ndarray, threads: int) -> None:
        self.kernel, self.in_shape, self.threads = kernel, in_shape, threads
        channels, height, width = in_shape
        self.size = kernel[0] * kernel[1]
        self.out_height, self.out_width = height // kernel[0], width // kernel[1]
        self.pooled_shape = pooled_shape  # the pooling's own output shape, (C, Ho, Wo) or (C,)
        self.regrouped = (channels * self.size, self.out_height, self.out_width)
        # One window covering the whole input (a global pooling) is the input's own layout; anything else, a 1x1
        # output of a window smaller than the input included, is regrouped into a copy.
        self.copy = (self.out_height * kernel[0], self.out_width * kernel[1], self.out_height * self.out_width) \
            != (height, width, 1)
        covered = np.zeros(in_shape)
        covered[:, :self.out_height * kernel[0], :self.out_width * kernel[1]] = 1
        if not np.array_equal(np.asarray(pool_fan_out).reshape(in_shape), covered):
            raise SimulationError("a folded average pooling must have fan-out 1 on every input of a window and 0 "
                                  "elsewhere (non-overlapping windows without padding)")
        self.after_fan_out = np.ascontiguousarray(after_fan_out, dtype=np.float64).reshape(-1)
        self.buffers = _Buffers()

    @staticmethod
    def geometry(op: ops.AvgPool2d | ops.GlobalAvgPool, in_shape: tuple[int, ...]) -> tuple[int, int] | None:
        """The window of a pooling that can be folded: non-overlapping and without padding (every window has the
        same divisor); None otherwise."""
        if isinstance(op, ops.GlobalAvgPool):
            return (in_shape[1], in_shape[2])
        if op.kernel != op.stride or any(op.padding):
            return None
        return op.kernel

    def folded(self, op: ops.Conv2d | ops.Linear) -> ops.Conv2d | ops.Linear:
        """A reader's op on the regrouped spikes: its weight spread over each window and divided by its size."""
        size = np.float32(self.size)
        if isinstance(op, ops.Conv2d):
            return op.replace(weight=np.repeat(op.weight, self.size, axis=1) / size)
        out_features = op.weight.shape[0]
        channels = self.in_shape[0]
        spread = np.broadcast_to(op.weight.reshape(out_features, channels, 1, -1),
                                 (out_features, channels, self.size, self.out_height * self.out_width))
        return op.replace(weight=spread.reshape(out_features, -1) / size)

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        tc, batch = chunk.tc, chunk.batch
        x = np.ascontiguousarray(args[0].data).reshape((tc * batch,) + self.in_shape)
        if self.copy:
            out = self.buffers.get("out", (tc * batch, int(np.prod(self.regrouped))), np.uint8)
        else:
            out = np.empty((1, 1), np.uint8)  # not written
        _kernels.pool_regroup(x, out, self.kernel, self.after_fan_out, chunk.synops, self.copy,
                              _threads(self.threads, x.size))
        data = out if self.copy else x
        return _Signal(data.reshape((tc, batch) + self.regrouped), False, True)



def _affine_operands(op: ops.Affine, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """An Affine's scale and shift broadcast to its per-sample ``shape`` and flattened, float32: the operands of
    :func:`_kernels.affine_steps`."""
    return tuple(np.ascontiguousarray(np.broadcast_to(a, shape), dtype=np.float32).reshape(-1)
                 for a in (op.scale, op.shift))


class _Affine(_Plan):
    """Affine (``x * scale + shift``) of a time-varying chunk, e.g. the rescaling of a residual junction's shortcut
    spikes or of its sum: :func:`_kernels.affine_steps` on the bytes or floats themselves, into a buffer kept from
    chunk to chunk, with the reference's two roundings. Values constant in time take the reference's kernel."""

    def __init__(self, op: ops.Affine, shape: tuple[int, ...], threads: int) -> None:
        self.op, self.shape, self.threads = op, shape, threads
        self.scale, self.shift = _affine_operands(op, shape)
        self.buffers = _Buffers()

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        (arg,) = args
        if arg.constant:
            return _Signal(apply(self.op, arg.data), True)
        rows = chunk.tc * chunk.batch
        x = np.ascontiguousarray(arg.data).reshape(rows, -1)
        out = self.buffers.get("out", (rows, x.shape[1]), np.float32)
        _kernels.affine_steps(x, self.scale, self.shift, out, _threads(self.threads, out.size))
        return _Signal(out.reshape((chunk.tc, chunk.batch) + self.shape), False)


class _Add(_Plan):
    """Add of two time-varying float32 chunks (a residual junction's branches): :func:`_kernels.add_steps` into a
    buffer kept from chunk to chunk; other operands take the reference's kernel."""

    def __init__(self, op: ops.Add, in_shapes: list[tuple[int, ...]], shape: tuple[int, ...], threads: int) -> None:
        self.shape, self.threads = shape, threads
        self.fallback = _Stateless(op, in_shapes, [], threads)  # Add is not synaptic: no fan-outs
        self.buffers = _Buffers()

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        if any(a.constant or a.binary or a.data.dtype != np.float32 for a in args):
            return self.fallback.run(chunk, node, args)
        rows = chunk.tc * chunk.batch
        a, b = (np.ascontiguousarray(arg.data).reshape(rows, -1) for arg in args)
        out = self.buffers.get("out", a.shape, np.float32)
        _kernels.add_steps(a, b, out, _threads(self.threads, out.size))
        return _Signal(out.reshape((chunk.tc, chunk.batch) + self.shape), False)

class _ReferenceState(_Plan):
    """A stateful op the kernels do not cover (e.g. max pooling of non-binary trains): the reference's own state."""

    def __init__(self, op: ops.Op, in_shape: tuple[int, ...]) -> None:
        self.op, self.in_shape = op, in_shape

    def start(self, batch: int):
        return STATEFUL[type(self.op)](self.op, (batch,) + self.in_shape)

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        return self.advance(chunk.states[node], args[0], chunk.tc)

    def advance(self, state, signal: _Signal, tc: int) -> _Signal:
        steps = signal.steps(tc)
        return _Signal(np.stack([state.step(steps[i]) for i in range(tc)]), False)


class _ReferencePopulation(_ReferenceState):
    """An IF/LIF population with per-channel parameters: the kernels take one threshold, decay and initial
    membrane per population, so these run the reference's state (the step function of
    :mod:`snncc.runtime.dynamics`). Its spikes are float32, so the synapses after it take the dense path, the
    reference's products: the same spikes as the reference by construction."""

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        out = self.advance(chunk.states[node], args[0], chunk.tc)
        chunk.count(node, np.abs(out.data).reshape(chunk.tc, chunk.batch, -1).sum(axis=2))
        return out


class _EventSynapse(_Plan):
    """Conv2d or Linear fed by spikes: event-driven accumulation, or the dense BLAS product when spikes are dense."""

    def __init__(self, op: ops.Conv2d | ops.Linear, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 fan_out: np.ndarray, threads: int) -> None:
        self.op, self.in_shape, self.out_shape, self.threads = op, in_shape, out_shape, threads
        self.fan_out = np.ascontiguousarray(fan_out, dtype=np.float64)
        self.bias = None if op.bias is None else np.ascontiguousarray(op.bias, dtype=np.float32)
        self.dense_above = DENSE_ABOVE[type(op)]
        self.chunks = {"sparse": 0, "dense": 0}
        self.buffers = _Buffers()
        self.events = self.inputs = 0
        if isinstance(op, ops.Linear):
            self.weight_t = np.ascontiguousarray(op.weight.T, dtype=np.float32)
            self.reachable = True
        else:
            out_ch, per_group_in, kh, kw = op.weight.shape
            groups = op.groups
            (sh, sw), (dh, dw) = op.stride, op.dilation
            # Stride and dilation 1 along x with one group: kernel columns reversed, so that one input spike adds
            # each row of taps as one contiguous block (see _kernels.conv2d_events).
            self.row_blocks = groups == 1 and sw == 1 and dw == 1
            weight = op.weight[:, :, :, ::-1] if self.row_blocks else op.weight
            # (O, C/g, kh, kw) -> (C, kh, kw, O/g): the output channels of an input's group are contiguous.
            self.weight_t = np.ascontiguousarray(
                weight.reshape(groups, out_ch // groups, per_group_in, kh, kw).transpose(0, 2, 3, 4, 1)
                .reshape(groups * per_group_in, kh, kw, out_ch // groups), dtype=np.float32)
            self.rows = _taps(in_shape[1], out_shape[1], kh, sh, op.padding[0], dh)
            self.cols = _taps(in_shape[2], out_shape[2], kw, sw, op.padding[1], dw)
            # An input that reaches no output (cropped by the stride) still counts as an event, as in the
            # reference; a geometry where no input reaches any output is left to the dense path.
            self.reachable = len(self.rows[1]) > 0 and len(self.cols[1]) > 0

    @staticmethod
    def supports(op: ops.Op) -> bool:
        """Padding with a non-zero value (an input normalization folded into the first layer) adds weights of
        padded positions: only the dense kernel has that term."""
        if isinstance(op, ops.Linear):
            return True
        return isinstance(op, ops.Conv2d) and (op.pad_value is None or not np.any(op.pad_value) or not any(op.padding))

    def sparse(self, x: np.ndarray) -> bool:
        """Whether this chunk's spikes ``x`` take the event-driven path (and count them for the statistics)."""
        events = int(np.count_nonzero(x))
        self.events += events
        self.inputs += x.size
        sparse = events <= self.dense_above * x.size and self.reachable
        self.chunks["sparse" if sparse else "dense"] += 1
        return sparse

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        return self.advance(args[0], chunk.tc, chunk.batch, chunk.synops)

    def advance(self, signal: _Signal, tc: int, batch: int, synops: np.ndarray) -> _Signal:
        rows = tc * batch
        x = np.ascontiguousarray(signal.data).reshape((rows,) + self.in_shape)
        if not self.sparse(x):
            return self.dense(x, tc, batch, synops)
        threads = _threads(self.threads, x.size)
        out = self.buffers.get("out", (rows,) + self.out_shape, np.float32)
        if isinstance(self.op, ops.Linear):
            _kernels.linear_events(x, self.weight_t, self.bias, self.fan_out, out, synops, threads)
        else:
            _kernels.conv2d_events(x, self.weight_t, self.bias, self.fan_out, out, synops, *self.rows, *self.cols,
                                   self.op.groups, self.row_blocks, threads)
        return _Signal(out.reshape((tc, batch) + self.out_shape), False)

    def dense(self, x: np.ndarray, tc: int, batch: int, synops: np.ndarray) -> _Signal:
        """The reference's product on the spikes as float32, for dense chunks."""
        out = apply(self.op, x.astype(np.float32))
        _kernels.count_events(x.reshape(tc * batch, -1), self.fan_out, synops, _threads(self.threads, x.size))
        return _Signal(out.reshape((tc, batch) + self.out_shape), False)


class _SharedWeightSynapse(_Plan):
    """A Conv2d or Linear with several operands (``input_gains``, see ``ops._SharedWeights``): one synapse per
    operand on the op's per-input copies (``op.per_input()``), event-driven where the operand is a binary spike
    train, and their currents added in operand order: the reference's sum (``kernels.per_input_sum``), so the
    same arithmetic as the per-train copies and their Adds. Each operand's events cost its own fan-out."""

    def __init__(self, op: ops.Conv2d | ops.Linear, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 fan_outs: list[np.ndarray], binary: list[bool], threads: int) -> None:
        self.singles, self.in_shape, self.out_shape, self.threads = op.per_input(), in_shape, out_shape, threads
        self.fan_outs = [np.ascontiguousarray(f, dtype=np.float64) for f in fan_outs]
        self.synapses = [_EventSynapse(single, in_shape, out_shape, fan_out, threads)
                         if spikes and _EventSynapse.supports(single) else None
                         for single, fan_out, spikes in zip(self.singles, fan_outs, binary)]

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> _Signal:
        return self.advance(args, chunk.tc, chunk.batch, chunk.synops)

    def advance(self, signals: list[_Signal], tc: int, batch: int, synops: np.ndarray) -> _Signal:
        total = None
        for single, synapse, fan_out, signal in zip(self.singles, self.synapses, self.fan_outs, signals):
            if synapse is not None:
                current = synapse.advance(signal, tc, batch, synops).data
            else:  # graded values: the reference's kernel, as _Stateless runs it
                current = apply(single, signal.steps(tc).reshape((tc * batch,) + self.in_shape))
                if not signal.constant:
                    events = np.ascontiguousarray(signal.data).reshape(tc * batch, -1)
                    _kernels.count_events(events, fan_out, synops, _threads(self.threads, events.size))
                current = current.reshape((tc, batch) + self.out_shape)
            total = current if total is None else total + current
        return _Signal(total, False)


class _ConvPopulation(_Plan):
    """An event-driven Conv2d whose only consumer is a population (possibly fused with its max pooling), run as
    one kernel sample by sample (:func:`_kernels.conv2d_population_steps`): the current never goes through
    memory. Runs at the convolution's node and gives the values of the population's (or the pooling's) node. Dense
    chunks run the two plans one after the other."""

    def __init__(self, synapse: _EventSynapse, follower: _Population | _PopulationMaxPool, population_node: str
                 ) -> None:
        self.synapse, self.follower, self.population_node = synapse, follower, population_node
        pooled = isinstance(follower, _PopulationMaxPool)
        self.population = follower.population if pooled else follower
        self.pool = follower.pool if pooled else None
        self.output_node = follower.pool_node if pooled else population_node

    def run(self, chunk: _Chunk, node: str, args: list[_Signal]) -> None:
        chunk.values[self.output_node], counts = self.advance(args[0], chunk.tc, chunk.batch, chunk.synops,
                                                              chunk.states)
        chunk.count(self.population_node, counts)
        return None  # the current exists only inside the fused kernel

    def advance(self, signal: _Signal, tc: int, batch: int, synops: np.ndarray, states: dict
                ) -> tuple[_Signal, np.ndarray]:
        """The output node's value and the population's spikes per step and sample (Tc, B)."""
        synapse, population, pool = self.synapse, self.population, self.pool
        x = np.ascontiguousarray(signal.data).reshape((tc * batch,) + synapse.in_shape)
        v = states[self.population_node]
        if not synapse.sparse(x):
            current = synapse.dense(x, tc, batch, synops)
            if pool is None:
                return population.advance(v, current, tc, batch, synapse.out_shape)
            return self.follower.advance(v, states[self.output_node], current, tc, batch)
        spike_counts = np.empty((tc, batch), dtype=np.float32)
        if pool is None:
            out = population.buffers.get("spikes", (tc, batch) + synapse.out_shape, np.uint8)
            pool_args: dict = {}
        else:
            out = pool.buffers.get("out", (tc, batch) + pool.out_shape, np.uint8)
            counts, window_max = states[self.output_node]
            pool_args = dict(pool_counts=counts, window_max=window_max, kernel=pool.op.kernel,
                             stride=pool.op.stride, padding=pool.op.padding)
        _kernels.conv2d_population_steps(
            x.reshape((tc, batch) + synapse.in_shape), synapse.weight_t, synapse.bias, synapse.fan_out, synops,
            *synapse.rows, *synapse.cols, synapse.op.groups, synapse.row_blocks, synapse.out_shape, v, spike_counts,
            population.threshold, population.decay, population.leak, population.subtract, out, **pool_args,
            threads=_threads(synapse.threads, x.size))
        return _Signal(out, False, True), spike_counts


def _constant_conv2d(op: ops.Conv2d, x: np.ndarray, threads: int, buffers: _Buffers, keep_output: bool = True
                     ) -> np.ndarray:
    """The reference's :func:`~snncc.runtime.kernels.conv2d` with a compiled im2col (the same matrix, so the same
    BLAS product) and arrays kept from batch to batch (the output too with ``keep_output``). For the first layer's
    analog current, computed once per batch: numpy's strided copies and the fresh pages of the column matrix cost
    twice the product itself there."""
    pad_value = None if op.pad_value is None else np.ascontiguousarray(
        np.broadcast_to(np.asarray(op.pad_value, dtype=x.dtype), (x.shape[1],)), dtype=np.float32)

    def columns(start: int, m: int, first_channel: int, cols: np.ndarray) -> None:
        _kernels.im2col(x[start:start + m], cols, first_channel, op.stride, op.padding[:2], op.dilation, pad_value,
                        _threads(threads, cols.size))

    # The output is constant within a batch (copied out where it is a graph output), so its buffer can be reused.
    def empty(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name == "out" and not keep_output:
            return np.empty(shape, dtype=np.float32)
        return buffers.get(name, shape, np.float32)

    return conv2d(op, x, columns, empty)


class CythonSimulator(ReferenceSimulator):
    """Simulate an SNN-level graph for ``timesteps`` steps with the compiled kernels, one batch at a time.

    ``threads``: OpenMP threads of the kernels (default: OpenMP's default). The dense BLAS products run on one of
    numpy's BLAS threads during a batch, as in the reference, unless ``OPENBLAS_NUM_THREADS`` says otherwise
    (:mod:`snncc.runtime.blas_threads`: OpenBLAS's idle threads spin on the cores the kernels use).
    """

    def __init__(self, graph: Graph, timesteps: int, threads: int | None = None) -> None:
        super().__init__(graph, timesteps)
        if threads is not None and threads < 1:
            raise SimulationError(f"threads must be at least 1, got {threads}")
        self.threads = threads or default_threads()
        graph = self.graph
        self._fan_outs64 = {n: [f.astype(np.float64) for f in fs] for n, fs in self.fan_outs.items()}
        self.binary: dict[str, bool] = {}
        self.plans: dict[str, _Plan] = {}
        self.consumers: dict[str, list[str]] = {n: [] for n in self.order}
        for node in self.order:
            for u in graph.inputs(node):
                self.consumers[u].append(node)
        self.folds: dict[str, _PoolFold] = {}  # average pooling folded into its readers: its node and views of it
        for node in self.order:
            op, srcs = graph.op(node), graph.inputs(node)
            planner = _PLANNERS.get(type(op), _plan_view if op.is_view else _plan_stateless)
            self.plans[node], self.binary[node] = planner(self, node, op, srcs)
        # A population feeding only a spiking max pooling runs fused with it (not a signed one: its float spikes
        # take the reference's pooling state).
        self.fused: dict[str, str] = {}  # population node -> pooling node
        steps = [(node, graph.op(node), graph.inputs(node)) for node in self.order]
        consumers = self.consumers
        for node, _, srcs in steps:
            plan = self.plans.get(node)
            src = srcs[0] if len(srcs) == 1 else None
            if (isinstance(plan, _MaxPool) and type(self.plans.get(src)) is _Population and consumers[src] == [node]
                    and src not in graph.outputs):
                self.plans[src] = _PopulationMaxPool(self.plans[src], plan, node)
                self.fused[src] = node
        # An event-driven convolution read only by such a population (alone or with its pooling) runs with it too.
        for node, op, _ in steps:
            plan = self.plans.get(node)
            users = consumers[node]
            follower = self.plans.get(users[0]) if len(users) == 1 else None
            if (isinstance(plan, _EventSynapse) and isinstance(op, ops.Conv2d) and node not in graph.outputs
                    and type(follower) in (_Population, _PopulationMaxPool)):
                self.plans[node] = _ConvPopulation(plan, follower, users[0])
        # Nodes whose values a fused plan computes at an earlier node.
        self.computed_earlier = set(self.fused.values()) | {
            n for p in self.plans.values() if isinstance(p, _ConvPopulation)
            for n in (p.population_node, p.output_node)}
        # The schedule: (node, operands, plan, operands whose last reader it is) in topological order, looked up
        # once: the graph's lookups go through networkx, which costs more per batch than the small layers' kernels.
        self.schedule = [(node, srcs, self.plans[node], [u for u in srcs if self.last_use.get(u) == node])
                         for node, _, srcs in steps if node not in self.computed_earlier]

    def synapse_stats(self) -> dict[str, dict[str, float]]:
        """Per event-driven synaptic node: chunks run sparse and dense, and the mean input spike density."""
        synapses = {n: p.synapse if isinstance(p, _ConvPopulation) else p for n, p in self.plans.items()}
        for n, p in list(synapses.items()):
            if isinstance(p, _SharedWeightSynapse):  # one entry per operand: "node[i]"
                synapses.update({f"{n}[{i}]": s for i, s in enumerate(p.synapses) if s is not None})
        return {n: {**p.chunks, "density": p.events / p.inputs if p.inputs else 0.0}
                for n, p in synapses.items() if isinstance(p, _EventSynapse)}

    def _run_batch(self, x: np.ndarray) -> BatchResult:
        graph, T, types = self.graph, self.timesteps, self.types
        x = np.ascontiguousarray(x, dtype=np.float32)
        batch = x.shape[0]
        if batch == 0:
            raise SimulationError("no input samples to simulate")
        tc_max = max(1, min(T, self._chunk_budget // batch))
        states = {n: p.start(batch) for n, p in self.plans.items()}
        spikes = {n: np.zeros((T, batch), dtype=np.float32) for n in self.populations()}
        synops = np.zeros((T, batch), dtype=np.float64)
        outputs = [np.zeros((T, batch) + types[o].shape, dtype=np.float32) for o in graph.outputs]
        constants: dict[str, _Signal] = {}
        for t0 in range(0, T, tc_max):
            tc = min(tc_max, T - t0)
            values: dict[str, _Signal] = dict(constants)
            chunk = _Chunk(x, tc, batch, t0, states, values, spikes, synops[t0:t0 + tc].reshape(-1))
            for node, srcs, plan, last_read in self.schedule:
                if node in constants:
                    continue
                out = plan.run(chunk, node, [values[u] for u in srcs])
                if out is not None and out.constant:
                    constants[node] = out
                values[node] = out
                for u in last_read:
                    if u not in constants:
                        del values[u]
            for i, o in enumerate(graph.outputs):
                outputs[i][t0:t0 + tc] = values[o].steps(tc)
        return BatchResult(outputs, spikes, synops)


# Plans by op class (views of the spikes, ``op.is_view``, keep them binary; other ops are _Stateless).
# Each planner gives the node's plan and whether its value is a binary (uint8) spike train.

def _plan_input(engine: CythonSimulator, node: str, op: ops.Op, srcs: list[str]) -> tuple[_Plan, bool]:
    return _InputPlan(), False


def _plan_stateless(engine: CythonSimulator, node: str, op: ops.Op, srcs: list[str]) -> tuple[_Plan, bool]:
    return _Stateless(op, [engine.types[u].shape for u in srcs], engine._fan_outs64.get(node, []),
                      engine.threads), False


#: Neuron models with a compiled kernel (scalar parameters); others (CubaLIF, per-channel parameters) run the
#: reference's state, i.e. the dynamics table.
_COMPILED_NEURONS = (IF, LIF)


def _plan_population(engine: CythonSimulator, node: str, op: ops.Population, srcs: list[str]
                     ) -> tuple[_Plan, bool]:
    size, shape = engine.types[node].size, engine.types[node].shape
    if getattr(op.neuron, "per_channel", False) or type(op.neuron) not in _COMPILED_NEURONS:
        return _ReferencePopulation(op, shape), False  # the dynamics table's step, as the reference runs it
    if getattr(op.neuron, "signed", False):
        return _SignedPopulation(op, size, engine.threads, shape), False
    return _Population(op, size, engine.threads, shape), True


def _plan_readout(engine: CythonSimulator, node: str, op: ops.Readout, srcs: list[str]) -> tuple[_Plan, bool]:
    return _Readout(engine.types[node].size, engine.threads, engine.types[node].shape), False


def _plan_max_pool(engine: CythonSimulator, node: str, op: ops.SpikingMaxPool2d, srcs: list[str]
                   ) -> tuple[_Plan, bool]:
    in_shape, shape = engine.types[srcs[0]].shape, engine.types[node].shape
    if engine.binary[srcs[0]] and _MaxPool.supports(op, in_shape, shape):
        return _MaxPool(op, in_shape, shape, engine.threads), True
    return _ReferenceState(op, in_shape), False


def _plan_synapse(engine: CythonSimulator, node: str, op: ops.Conv2d | ops.Linear, srcs: list[str]
                  ) -> tuple[_Plan, bool]:
    in_shape, shape = engine.types[srcs[0]].shape, engine.types[node].shape
    if op.input_gains is not None:  # several operands sharing the weights (the sew pass's ADD trains)
        return _SharedWeightSynapse(op, in_shape, shape, engine.fan_outs[node], [engine.binary[u] for u in srcs],
                                    engine.threads), False
    fold = engine.folds.get(srcs[0])
    if fold is not None:  # reads a folded average pooling: its weight spread over the windows
        folded_shape = fold.regrouped if isinstance(op, ops.Conv2d) else (int(np.prod(fold.regrouped)),)
        # The pooling's plan counts this layer's synaptic operations (a window with a spike is one event here).
        no_fan_out = np.zeros(int(np.prod(folded_shape)))
        return _EventSynapse(fold.folded(op), folded_shape, shape, no_fan_out, engine.threads), False
    if engine.binary[srcs[0]] and _EventSynapse.supports(op):
        return _EventSynapse(op, in_shape, shape, engine.fan_outs[node][0], engine.threads), False
    return _plan_stateless(engine, node, op, srcs)


#: Views a folded pooling's spikes may pass on their way to a synaptic layer (see _fold_readers).
_FOLD_VIEWS = (ops.Flatten, ops.Reshape, ops.Identity)


def _feeds_readout(engine: CythonSimulator, node: str) -> bool:
    """Whether ``node``'s value reaches a Readout or a graph output without passing a population (through views,
    sums, rescalings: any stateless op)."""
    pending, seen = [node], set()
    while pending:
        current = pending.pop()
        if current in engine.graph.outputs:
            return True
        for user in engine.consumers[current]:
            op = engine.graph.op(user)
            if isinstance(op, ops.Readout):
                return True
            if not isinstance(op, ops.Population) and user not in seen:
                seen.add(user)
                pending.append(user)
    return False


def _fold_readers(engine: CythonSimulator, node: str) -> list[str] | None:
    """The synaptic layers reading pooling ``node`` if every reader is one that the fold can take: a Conv2d of
    the pooled shape, or a Linear through flattening, with one operand and zero padding values; None otherwise
    (another reader, a graph output, a reshape to another spatial shape, or a layer read out: its current is the
    network's answer, which then stays the reference's numpy arithmetic, and a pooling before the last layer is a
    small part of the time)."""
    readers, pending = [], [node]
    while pending:
        current = pending.pop()
        if current in engine.graph.outputs:
            return None
        rank = len(engine.types[current].shape)
        for user in engine.consumers[current]:
            op, user_rank = engine.graph.op(user), len(engine.types[user].shape)
            if isinstance(op, _FOLD_VIEWS) and user_rank in (1, rank):
                pending.append(user)
            elif (isinstance(op, (ops.Conv2d, ops.Linear)) and op.input_gains is None and _EventSynapse.supports(op)
                  and rank == (3 if isinstance(op, ops.Conv2d) else 1) and not _feeds_readout(engine, user)):
                readers.append(user)
            else:
                return None
    return readers


def _plan_avg_pool(engine: CythonSimulator, node: str, op: ops.AvgPool2d | ops.GlobalAvgPool, srcs: list[str]
                   ) -> tuple[_Plan, bool]:
    in_shape = engine.types[srcs[0]].shape
    kernel = _PoolFold.geometry(op, in_shape) if engine.binary[srcs[0]] and len(in_shape) == 3 else None
    readers = _fold_readers(engine, node) if kernel is not None else None
    if not readers:
        return _plan_stateless(engine, node, op, srcs)
    after = sum(engine._fan_outs64[r][0].reshape(-1) for r in readers)
    fold = _PoolFold(kernel, in_shape, engine.types[node].shape, engine._fan_outs64[node][0], after, engine.threads)
    engine.folds[node] = fold
    return fold, True


def _plan_view(engine: CythonSimulator, node: str, op: ops.Op, srcs: list[str]) -> tuple[_Plan, bool]:
    fold = engine.folds.get(srcs[0])
    if fold is not None:  # the regrouped spikes of a folded pooling (see _fold_readers for the views allowed)
        engine.folds[node] = fold
        shape = engine.types[node].shape
        return _BinaryView(fold.regrouped if len(shape) == 3 else (int(np.prod(fold.regrouped)),)), True
    if engine.binary[srcs[0]]:
        return _BinaryView(engine.types[node].shape), True
    return _plan_stateless(engine, node, op, srcs)


def _plan_affine(engine: CythonSimulator, node: str, op: ops.Affine, srcs: list[str]) -> tuple[_Plan, bool]:
    return _Affine(op, engine.types[node].shape, engine.threads), False


def _plan_add(engine: CythonSimulator, node: str, op: ops.Add, srcs: list[str]) -> tuple[_Plan, bool]:
    return _Add(op, [engine.types[u].shape for u in srcs], engine.types[node].shape, engine.threads), False


_PLANNERS = {ops.Input: _plan_input, ops.Population: _plan_population, ops.Readout: _plan_readout,
             ops.SpikingMaxPool2d: _plan_max_pool, ops.Conv2d: _plan_synapse, ops.Linear: _plan_synapse,
             ops.AvgPool2d: _plan_avg_pool, ops.GlobalAvgPool: _plan_avg_pool, ops.Affine: _plan_affine,
             ops.Add: _plan_add}


# Sample blocks of a threaded convolution (:class:`_BlockedConv2d`): a block's im2col matrix holds at most
# BLOCK_VALUES float32 values (256 KiB: it is still in the core's cache when its product reads it; on the VGG's
# convolutions 1.5x faster than 4 MiB blocks, measured on a loaded 2-core Xeon), but its product at least
# MIN_BLOCK_PRODUCT multiply-adds. OpenBLAS multiplies small matrices (M N K up to 100^3 on x86) with a kernel of
# another summation order; above that, every element of C = A B is the same sum whatever the number of columns of
# B, so the blocks give the reference's values (tests/runtime/test_cython_temporal.py checks equality).
BLOCK_VALUES = 1 << 16
MIN_BLOCK_PRODUCT = 1 << 22


class _BlockedConv2d:
    """A convolution of decoded (graded) values: the reference's :func:`~snncc.runtime.kernels.conv2d`, the same
    im2col matrix (compiled copy loop) and the same BLAS product per group, computed block of samples by block of
    samples, the blocks spread over ``threads`` Python threads (numpy releases the GIL in the product; each thread
    has its own arrays). Then the bias, as the reference adds it. Within a block the arithmetic is the reference's
    term for term; see :data:`BLOCK_VALUES` for why the blocks' size does not change the sums."""

    def __init__(self, op: ops.Conv2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...], threads: int) -> None:
        self.op = op
        out_ch, self.per_group, kh, kw = op.weight.shape
        self.out_shape = out_shape
        self.out_per_group = out_ch // op.groups
        reduce = self.per_group * kh * kw
        plane = out_shape[1] * out_shape[2]
        self.block_shape = (kh, kw, self.per_group)
        by_cache = BLOCK_VALUES // max(1, reduce * plane)
        by_product = -(-MIN_BLOCK_PRODUCT // max(1, self.out_per_group * reduce * plane))
        self.rows = max(1, by_cache, by_product)
        self.weights = [np.ascontiguousarray(op.weight[g * self.out_per_group:(g + 1) * self.out_per_group]
                                             .transpose(0, 2, 3, 1).reshape(self.out_per_group, -1), dtype=np.float32)
                        for g in range(op.groups)]
        self.bias = None if op.bias is None else op.bias.astype(np.float32)[None, :, None, None]
        self.pad_value = None if op.pad_value is None else np.ascontiguousarray(
            np.broadcast_to(np.asarray(op.pad_value, dtype=np.float32), (in_shape[0],)), dtype=np.float32)
        self.threads = threads
        self._buffers = [_KeptBuffers() for _ in range(threads)]
        self._pool = None

    def _block(self, worker: int, x: np.ndarray, out: np.ndarray, start: int, m: int) -> None:
        buffers = self._buffers[worker]
        ho, wo = self.out_shape[1:]
        for g, w in enumerate(self.weights):
            cols = buffers.get("im2col", self.block_shape + (m, ho, wo), np.float32)
            _kernels.im2col(x[start:start + m], cols, g * self.per_group, self.op.stride, self.op.padding[:2],
                            self.op.dilation, self.pad_value, 1)
            y = np.matmul(w, cols.reshape(w.shape[1], m * ho * wo),
                          out=buffers.get("product", (self.out_per_group, m * ho * wo), np.float32))
            out[start:start + m, g * self.out_per_group:(g + 1) * self.out_per_group] = \
                y.reshape(self.out_per_group, m, ho, wo).transpose(1, 0, 2, 3)
        if self.bias is not None:
            out[start:start + m] += self.bias

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        blocks = [(start, min(self.rows, n - start)) for start in range(0, n, self.rows)]
        workers = min(self.threads, len(blocks))
        if workers == 1:
            for start, m in blocks:
                self._block(0, x, out, start, m)
            return out
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="snncc-conv")

        def work(worker: int) -> None:
            for start, m in blocks[worker::workers]:
                self._block(worker, x, out, start, m)

        for done in [self._pool.submit(work, w) for w in range(workers)]:
            done.result()
        return out


class _KeptBuffers(_Buffers):
    """Arrays kept for every shape asked for under one name: a batch's convolution builds its im2col blocks in
    slices of the batch whose last one is shorter, and with one array per name the two shapes would evict each
    other (fresh pages, twice per layer and batch)."""

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        return super().get(f"{name}{shape}", shape, dtype)


@dataclass
class _WindowCounts:
    """What :func:`_kernels.temporal_units_counted` counted for one population and batch: spikes ``counts`` (B, K)
    per step of its window, the most spikes of one neuron per sample ``peak`` (B,), and ``synops`` (B, F, K), the
    synaptic operations its spikes cause in each of the F synaptic operands it feeds."""

    counts: np.ndarray
    peak: np.ndarray
    synops: np.ndarray


def _values_pool(op: ops.Op) -> bool:
    """Whether ``op`` is a max pooling of values that the temporal units' kernel computes (no padding)."""
    return isinstance(op, ops.MaxPool2d) and not any(op.padding)


class CythonTemporalSimulator(TemporalSimulator):
    """The temporal (FS/AMOS) simulator with compiled units: the same schedule and numpy kernels for the linear ops
    (they act on decoded values, where BLAS is the fast path), and the units in :func:`_kernels.temporal_units`,
    which reproduce the window functions of :mod:`snncc.runtime.dynamics` bit for bit.

    Convolutions (``convolution``, :mod:`snncc.runtime.graded_convolution`): ``"reference"`` builds the
    reference's im2col matrix with the compiled copy loop and multiplies it with the same BLAS product, in blocks of
    samples that stay in the cache, on ``threads`` threads (:class:`_BlockedConv2d`: the same values), in arrays
    kept from batch to batch; ``"onednn"`` runs torch's CPU convolution (faster, values within float rounding of
    the reference's); ``"measured"`` (the default) times both per layer on the first batch of each size and keeps
    the faster (:attr:`convolution_choices`).

    More compiled pieces, all exact:

    - :meth:`run_batch` counts instead of storing spike trains: :func:`_kernels.temporal_units_counted` computes a
      population's values with the same per-neuron function as :func:`_kernels.temporal_units` and, in the same
      pass, its spikes per step, its most spikes per neuron and the synaptic operations of its spikes in every
      layer it feeds (each spike adds its fan-out: integer sums, exact in any order). The K spike trains of a
      population (K bytes per neuron) never go through memory;
    - a max pooling without padding read only by a population (the FS and AMOS conversions pool the currents)
      runs in that population's kernel, sample by sample, the pooled current kept in cache (the reference's order
      and NaN rule; :func:`_kernels.temporal_units_counted`);
    - so does a residual junction read only by a population, ``[Affine ->] Add(x, [Affine(y)])`` (the FS and
      AMOS conversions' ResNet blocks), its sum formed sample by sample with numpy's roundings;
    - synaptic operations of graded inputs (the analog input, pooled values) are counted with
      :func:`_kernels.count_events` (integers summed in float64, as the reference's float64 product sums them);
    - in :meth:`run_batch`, Affine and Add of float32 values (residual junctions) run
      :func:`_kernels.affine_steps` and :func:`_kernels.add_steps` (numpy's two roundings) into kept arrays.

    :meth:`run_stream` keeps the reference's bookkeeping on spike trains (with the compiled units and convolutions).
    numpy's BLAS runs on one thread during a batch unless ``OPENBLAS_NUM_THREADS`` says otherwise, as in the
    reference (:mod:`snncc.runtime.blas_threads`). One instance reuses its arrays from batch to batch: it must not
    run two batches at the same time.
    """

    def __init__(self, graph: Graph, timesteps: int | None = None, threads: int | None = None,
                 convolution: str | None = None) -> None:
        super().__init__(graph, timesteps)
        if threads is not None and threads < 1:
            raise SimulationError(f"threads must be at least 1, got {threads}")
        self.threads = threads or default_threads()
        self.convolution = check_convolution(convolution)
        self._convs: dict[str, Convolution] = {}
        self._unit_buffers = _Buffers()  # outputs of populations, convolutions, Affine and Add, kept
        self._affine = {n: _affine_operands(self.graph.op(n), self.types[n].shape) for n in graph.find(ops.Affine)}
        self._params = {}
        for node in self.populations():
            neuron = self.graph.op(node).neuron
            k = neuron.steps
            is_amos = isinstance(neuron, Amos)
            f32 = lambda values: np.ascontiguousarray(values, dtype=np.float32)  # noqa: E731
            self._params[node] = (
                f32(neuron.threshold), f32(np.zeros(k) if is_amos else neuron.height), f32(neuron.weight),
                f32(neuron.gain if is_amos else np.ones(k)),
                neuron.inhibition_matrix() if is_amos else np.zeros((k, k), np.float32), np.float32(neuron.offset),
                is_amos)
        # The fan-outs of every synaptic operand a population's spikes reach, (F, n) per population, and for each
        # entry of synaptic_inputs the row of its source's array (None for a graded operand).
        rows: dict[str, list[np.ndarray]] = {node: [] for node in self._params}
        self._fan_out_rows: list[int | None] = []
        for _, weights, source in self.synaptic_inputs:
            self._fan_out_rows.append(None if source is None else len(rows[source]))
            if source is not None:
                rows[source].append(weights)
        # int32 synapse counts, each row zero-padded to whole blocks of units (what the counting kernel reads).
        self._fan_outs = {}
        for node, arrays in rows.items():
            size = self.types[node].size
            padded = np.zeros((len(arrays), -(-size // _kernels.UNIT_BLOCK) * _kernels.UNIT_BLOCK), np.int32)
            for row, weights in enumerate(arrays):
                if weights.max(initial=0) > np.iinfo(np.int32).max:
                    raise SimulationError(f"{node!r}: a neuron has {int(weights.max()):,} synapses, more than "
                                          "the compiled runtime counts (2^31 - 1); use the reference backend")
                padded[row, :size] = weights
            self._fan_outs[node] = padded
        # A max pooling without padding read only by a population (the FS and AMOS conversions pool the currents)
        # runs in the population's kernel, sample by sample, its output in cache: population -> its pooling.
        readers_of: dict[str, list[str]] = {n: [] for n in self.order}
        for n in self.order:
            for u in self.operands[n]:
                readers_of[u].append(n)
        self._pools: dict[str, str] = {}
        for node in self._params:
            (pool,) = self.operands[node]
            if readers_of[pool] == [node] and pool not in graph.outputs and _values_pool(self.ops[pool]):
                self._pools[node] = pool
        # A residual junction read only by a population, [Affine ->] Add(x, [Affine(y)]), runs in its kernel too:
        # population -> (Add, x, y, the shortcut's Affine or None, the sum's Affine or None).
        self._junctions: dict[str, tuple[str, str, str, str | None, str | None]] = {}
        for node in self._params:
            if node not in self._pools:
                junction = self._junction(node, readers_of)
                if junction is not None:
                    self._junctions[node] = junction
        self._pooled = set(self._pools.values()) | {
            n for add, _, _, shortcut, rescale in self._junctions.values() for n in (add, shortcut, rescale) if n}

    def _junction(self, population: str, readers_of: dict[str, list[str]]
                  ) -> tuple[str, str, str, str | None, str | None] | None:
        """The residual junction feeding ``population`` only, [Affine ->] Add(x, [Affine(y)]) with every node read
        by the next alone, as (Add, x, y, the shortcut's Affine or None, the sum's Affine or None); else None."""
        def only_for(node: str, reader: str) -> bool:
            return readers_of[node] == [reader] and node not in self.graph.outputs

        (node,) = self.operands[population]
        rescale = None
        if isinstance(self.ops[node], ops.Affine) and only_for(node, population):
            rescale, (node,) = node, self.operands[node]
        if not isinstance(self.ops[node], ops.Add) or not only_for(node, rescale or population) \
                or len(self.operands[node]) != 2:
            return None
        first, second = self.operands[node]
        for x, y in ((first, second), (second, first)):
            if isinstance(self.ops[y], ops.Affine) and only_for(y, node) and x != y:
                return node, x, self.operands[y][0], y, rescale
        return node, first, second, None, rescale

    def _junction_inputs(self, population: str, values: dict[str, np.ndarray]) -> tuple | None:
        """The operands of ``population``'s junction kernel, or None where an operand is not float32 in C order
        (then the junction's nodes run one by one, as the reference's numpy computes them)."""
        add, x, y, shortcut, rescale = self._junctions[population]
        operands = [values[x], values[y]]
        if any(v.dtype != np.float32 or not v.flags.c_contiguous for v in operands):
            return None
        batch = operands[0].shape[0]
        scales = [*(self._affine[shortcut] if shortcut else (None, None)),
                  *(self._affine[rescale] if rescale else (None, None))]
        return operands[0].reshape(batch, -1), (operands[1].reshape(batch, -1), *scales)

    def _events(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        steps, batch = x.shape[:2]
        events = np.ascontiguousarray(x).reshape(steps * batch, -1)
        if events.dtype not in (np.uint8, np.float32):
            return super()._events(x, weights)
        synops = np.zeros(steps * batch, dtype=np.float64)
        _kernels.count_events(events, np.ascontiguousarray(weights, dtype=np.float64), synops,
                              _threads(self.threads, events.size))
        return synops.reshape(steps, batch)

    def _convolve(self, node: str, values: dict[str, np.ndarray], keep_output: bool) -> bool:
        """The compiled-im2col convolution of ``node`` into ``values`` where it applies; whether it did."""
        op = self.ops[node]
        if not isinstance(op, ops.Conv2d) or op.input_gains is not None:
            return False
        (src,) = self.operands[node]
        value = values[src]
        if value.dtype != np.float32 or not value.flags.c_contiguous:
            return False
        conv = self._convs.get(node)
        if conv is None:
            conv = self._convs[node] = self._new_convolution(op, value.shape[1:], self.types[node].shape)
        shape = (value.shape[0],) + self.types[node].shape
        out = self._unit_buffers.get(node, shape, np.float32) if keep_output else np.empty(shape, np.float32)
        values[node] = conv(value, out)
        return True

    def _new_convolution(self, op: ops.Conv2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
                         ) -> Convolution:
        """The implementation of ``self.convolution`` for one layer (see :mod:`snncc.runtime.graded_convolution`)."""
        reference = _BlockedConv2d(op, in_shape, out_shape, self.threads)
        if self.convolution == "reference":
            return reference
        onednn = OneDNNConv2d(op, in_shape, out_shape, self.threads)
        if self.convolution == "onednn":
            return onednn
        return MeasuredConv2d({"reference": reference, "onednn": onednn})

    @property
    def convolution_choices(self) -> dict[str, str]:
        """The implementation that runs each convolution node built so far; where measured, the one chosen for the
        largest batch size run ("unmeasured" before the first batch)."""
        names = {_BlockedConv2d: "reference", OneDNNConv2d: "onednn"}
        choices = {}
        for node, conv in self._convs.items():
            if isinstance(conv, MeasuredConv2d):
                choices[node] = conv.choices[max(conv.choices)][0] if conv.choices else "unmeasured"
            else:
                choices[node] = names[type(conv)]
        return choices

    def _elementwise(self, node: str, values: dict[str, np.ndarray]) -> bool:
        """Affine and Add of float32 values (a residual junction's rescalings and its sum) in the compiled
        element-wise kernels, with the reference's roundings, into arrays kept from batch to batch; whether it did.
        (numpy's fresh temporaries page-fault on every batch, as in the rate runtime's junctions.)"""
        op = self.ops[node]
        if not isinstance(op, (ops.Affine, ops.Add)):
            return False
        args = [values[u] for u in self.operands[node]]
        if any(a.dtype != np.float32 or not a.flags.c_contiguous for a in args):
            return False
        batch = args[0].shape[0]
        out = self._unit_buffers.get(node, (batch,) + self.types[node].shape, np.float32)
        rows = [a.reshape(batch, -1) for a in args]
        threads = _threads(self.threads, out.size)
        if isinstance(op, ops.Affine):
            _kernels.affine_steps(rows[0], *self._affine[node], out.reshape(batch, -1), threads)
        else:
            _kernels.add_steps(rows[0], rows[1], out.reshape(batch, -1), threads)
        values[node] = out
        return True

    def _unit_inputs(self, node: str, values: dict[str, np.ndarray]) -> np.ndarray:
        (src,) = self.operands[node]
        return np.ascontiguousarray(values[src], dtype=np.float32)

    def _evaluate(self, node: str, x: np.ndarray, values: dict[str, np.ndarray],
                  spikes: dict[str, np.ndarray]) -> None:
        # Fresh output arrays: values live on after the call in run_stream (the column matrices are kept).
        if self._convolve(node, values, keep_output=False):
            return
        if node not in self._params:
            super()._evaluate(node, x, values, spikes)
            return
        current = self._unit_inputs(node, values)
        threshold, height, weight, gain, inhibition, offset, is_amos = self._params[node]
        out = np.empty(current.size, dtype=np.float32)
        trains = np.empty((len(threshold), current.size), dtype=np.uint8)
        _kernels.temporal_units(current.reshape(-1), threshold, height, weight, gain, inhibition, offset, is_amos,
                                out, trains, _threads(self.threads, current.size))
        values[node] = out.reshape(current.shape)
        spikes[node] = trains.reshape((len(threshold),) + current.shape)

    def _count_window(self, node: str, values: dict[str, np.ndarray]) -> _WindowCounts:
        """Run population ``node`` on its input with :func:`_kernels.temporal_units_counted` (its value into
        ``values``, in an array kept from batch to batch) and return what it counted."""
        pool, junction = self._pools.get(node), None
        if node in self._junctions:
            fused = self._junction_inputs(node, values)
            if fused is None:  # the junction's nodes one by one, then the plain kernel
                add, _, _, shortcut, rescale = self._junctions[node]
                for part in (shortcut, add, rescale):
                    if part is not None and not self._elementwise(part, values):
                        TemporalSimulator._evaluate(self, part, None, values, {})
            else:
                current, junction = fused
        if junction is None:
            current = self._unit_inputs(pool or node, values)
        batch = current.shape[0]
        threshold, height, weight, gain, inhibition, offset, is_amos = self._params[node]
        fan_outs = self._fan_outs[node]
        out = self._unit_buffers.get(node, (batch,) + self.types[node].shape, np.float32)
        counts = np.empty((batch, len(threshold)), dtype=np.int64)
        peak = np.empty(batch, dtype=np.int64)
        synops = np.empty((batch, len(fan_outs), len(threshold)), dtype=np.float64)
        geometry = None
        if pool is not None:  # the population's operand, pooled in its kernel
            op = self.ops[pool]
            geometry = (current.shape[1:], op.kernel, op.stride)
        _kernels.temporal_units_counted(current.reshape(batch, -1), threshold, height, weight, gain, inhibition,
                                        offset, is_amos, out.reshape(batch, -1), counts, peak, fan_outs, synops,
                                        _threads(self.threads, current.size), geometry, junction)
        values[node] = out
        return _WindowCounts(counts, peak, synops)

    def _run_batch(self, x: np.ndarray) -> BatchResult:
        """The reference's :meth:`~TemporalSimulator.run_batch` and :meth:`~TemporalSimulator._result` with the
        populations counted in their kernel (same values, spikes, synaptic operations and peaks)."""
        batch = x.shape[0]
        values: dict[str, np.ndarray] = {}
        counted: dict[str, _WindowCounts] = {}
        for node in self.order:
            if node in self._params:
                counted[node] = self._count_window(node, values)
            elif node in self._pooled:
                continue  # computed in its population's kernel (a pooling or a junction)
            elif not (self._convolve(node, values, keep_output=True)  # outputs are copied out below
                      or self._elementwise(node, values)):
                TemporalSimulator._evaluate(self, node, x, values, {})
        T = self.timesteps
        spikes = {n: np.zeros((T, batch), dtype=np.float32) for n in self.populations()}
        for n, window in counted.items():
            self._place(spikes[n], self.start[n], window.counts.T)
        max_per_neuron = {n: int(window.peak.max()) if window.peak.size else 0 for n, window in counted.items()}
        synops = np.zeros((T, batch), dtype=np.float64)
        for (src, weights, source), row in zip(self.synaptic_inputs, self._fan_out_rows):
            if source is not None:
                self._place(synops, self.start[source], counted[source].synops[:, row].T)
            else:
                events = self._events(values[src].reshape(1, batch, -1), weights)
                self._place(synops, max(self.end[src] - 1, 0), events)
        return BatchResult(self._readouts(values, batch), spikes, synops, max_per_neuron)


__all__ = ["DENSE_ABOVE", "CythonSimulator", "CythonTemporalSimulator", "default_threads"]
