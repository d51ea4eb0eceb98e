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


class _Population:
    """IF/LIF population (see :class:`~snncc.ir.neurons.IF`): state ``v`` (B, n) float32."""

    def __init__(self, op: ops.Population, size: int, threads: int) -> None:
        neuron = op.neuron
        if not isinstance(neuron, (IF, LIF)):
            raise SimulationError(f"the Cython runtime has no dynamics for neuron model {neuron.kind}")
        self.size, self.threads = size, threads
        # The reference's float32 constants, computed the same way.
        self.threshold = np.float32(neuron.threshold)
        self.leak = isinstance(neuron, LIF)
        self.decay = np.float32(neuron.beta) if self.leak else np.float32(1)
        self.subtract = neuron.reset == "subtract"
        self.v_init = np.float32(neuron.v_init) * self.threshold
        self.buffers = _Buffers()

    def start(self, batch: int) -> np.ndarray:
        return np.full((batch, self.size), self.v_init, dtype=np.float32)

    def run(self, v: np.ndarray, signal: _Signal, tc: int, batch: int, shape: tuple[int, ...]
            ) -> tuple[_Signal, np.ndarray]:
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

    def run(self, state: tuple[np.ndarray, np.ndarray], signal: _Signal, tc: int, batch: int, shape: tuple[int, ...]
            ) -> tuple[_Signal, np.ndarray]:
        v, net = state
        current = _flat_steps(signal, tc, batch)
        spikes = self.buffers.get("spikes", (tc, batch, self.size), np.float32)
        counts = np.empty((tc, batch), dtype=np.float32)
        _kernels.signed_population_steps(current, v, net, spikes, counts, self.threshold,
                                         _threads(self.threads, spikes.size))
        return _Signal(spikes.reshape((tc, batch) + shape), False), counts


class _Readout:
    """Running mean of the input current: state ``total`` (B, n) float64."""

    def __init__(self, size: int, threads: int) -> None:
        self.size, self.threads = size, threads

    def start(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.size), dtype=np.float64)

    def run(self, total: np.ndarray, signal: _Signal, tc: int, batch: int, t0: int, shape: tuple[int, ...]
            ) -> _Signal:
        out = np.empty((tc, batch, self.size), dtype=np.float32)
        _kernels.readout_steps(_flat_steps(signal, tc, batch), total, t0, out, _threads(self.threads, out.size))
        return _Signal(out.reshape((tc, batch) + shape), False)


def _taps(size: int, out_size: int, kernel: int, stride: int, pad: int, dilation: int = 1
          ) -> tuple[np.ndarray, np.ndarray]:
    start, pairs = _kernels.conv_taps(size, out_size, kernel, stride, pad, dilation)
    return start, np.ascontiguousarray(pairs, dtype=np.int32)


class _MaxPool:
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

    def run(self, state: tuple[np.ndarray, np.ndarray], signal: _Signal, tc: int, batch: int) -> _Signal:
        counts, window_max = state
        spikes = np.ascontiguousarray(signal.data).reshape((tc, batch) + self.in_shape)
        out = self.buffers.get("out", (tc, batch) + self.out_shape, np.uint8)
        _kernels.maxpool_steps(spikes, counts, window_max, out, self.op.kernel, self.op.stride, self.op.padding,
                               _threads(self.threads, spikes.size))
        return _Signal(out, False, True)


class _PopulationMaxPool:
    """An IF/LIF population whose only consumer is a spiking max pooling, run as one kernel: the population's spike
    train is never written to memory (:func:`_kernels.population_maxpool_steps`). Runs at the population's node;
    the pooling's node then has its value already."""

    def __init__(self, population: _Population, pool: _MaxPool, pool_node: str) -> None:
        self.population, self.pool, self.pool_node = population, pool, pool_node

    def start(self, batch: int) -> np.ndarray:
        return self.population.start(batch)

    def run(self, v: np.ndarray, pool_state: tuple[np.ndarray, np.ndarray], signal: _Signal, tc: int, batch: int
            ) -> tuple[_Signal, np.ndarray]:
        pop, pool = self.population, self.pool
        counts, window_max = pool_state
        out = pool.buffers.get("out", (tc, batch) + pool.out_shape, np.uint8)
        spike_counts = np.empty((tc, batch), dtype=np.float32)
        _kernels.population_maxpool_steps(_flat_steps(signal, tc, batch), v, spike_counts, pop.threshold, pop.decay,
                                          pop.leak, pop.subtract, counts, window_max, out, pool.in_shape,
                                          pool.op.kernel, pool.op.stride, pool.op.padding,
                                          _threads(pop.threads, tc * batch * pop.size))
        return _Signal(out, False, True), spike_counts


class _ReferenceState:
    """A stateful op the kernels do not cover (e.g. max pooling of non-binary trains): the reference's own state."""

    def __init__(self, op: ops.Op, in_shape: tuple[int, ...]) -> None:
        self.op, self.in_shape = op, in_shape

    def start(self, batch: int):
        return STATEFUL[type(self.op)](self.op, (batch,) + self.in_shape)

    def run(self, state, signal: _Signal, tc: int) -> _Signal:
        steps = signal.steps(tc)
        return _Signal(np.stack([state.step(steps[i]) for i in range(tc)]), False)


class _EventSynapse:
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

    def run(self, signal: _Signal, tc: int, batch: int, synops: np.ndarray) -> _Signal:
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


class _SharedWeightSynapse:
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

    def run(self, signals: list[_Signal], tc: int, batch: int, synops: np.ndarray) -> _Signal:
        total = None
        for single, synapse, fan_out, signal in zip(self.singles, self.synapses, self.fan_outs, signals):
            if synapse is not None:
                current = synapse.run(signal, tc, batch, synops).data
            else:  # graded values: the reference's kernel, as CythonSimulator._dense runs it
                current = apply(single, signal.steps(tc).reshape((tc * batch,) + self.in_shape))
                if not signal.constant:
                    events = np.ascontiguousarray(signal.data).reshape(tc * batch, -1)
                    _kernels.count_events(events, fan_out, synops, _threads(self.threads, events.size))
                current = current.reshape((tc, batch) + self.out_shape)
            total = current if total is None else total + current
        return _Signal(total, False)


class _ConvPopulation:
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

    def run(self, signal: _Signal, tc: int, batch: int, synops: np.ndarray, states: dict
            ) -> tuple[_Signal, np.ndarray]:
        """The output node's value and the population's spikes per step and sample (Tc, B)."""
        synapse, population, pool = self.synapse, self.population, self.pool
        x = np.ascontiguousarray(signal.data).reshape((tc * batch,) + synapse.in_shape)
        v = states[self.population_node]
        if not synapse.sparse(x):
            current = synapse.dense(x, tc, batch, synops)
            if pool is None:
                return population.run(v, current, tc, batch, synapse.out_shape)
            return self.follower.run(v, states[self.output_node], current, tc, batch)
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


def _constant_conv2d(op: ops.Conv2d, x: np.ndarray, threads: int, buffers: _Buffers) -> np.ndarray:
    """The reference's :func:`~snncc.runtime.kernels.conv2d` with a compiled im2col (the same matrix, so the same
    BLAS product) and arrays kept from batch to batch. For the first layer's analog current, computed once per
    batch: numpy's strided copies and the fresh pages of the column matrix cost twice the product itself there."""
    pad_value = None if op.pad_value is None else np.ascontiguousarray(
        np.broadcast_to(np.asarray(op.pad_value, dtype=x.dtype), (x.shape[1],)), dtype=np.float32)

    def columns(start: int, m: int, first_channel: int, cols: np.ndarray) -> None:
        _kernels.im2col(x[start:start + m], cols, first_channel, op.stride, op.padding[:2], op.dilation, pad_value,
                        _threads(threads, cols.size))

    # The output is constant within a batch (copied out where it is a graph output), so its buffer can be reused.
    return conv2d(op, x, columns, lambda name, shape: buffers.get(name, shape, np.float32))


class CythonSimulator(ReferenceSimulator):
    """Simulate an SNN-level graph for ``timesteps`` steps with the compiled kernels, one batch at a time.

    ``threads``: OpenMP threads of the kernels (default: OpenMP's default). The dense BLAS products use numpy's
    BLAS threads, set with ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` before numpy is imported.
    """

    def __init__(self, graph: Graph, timesteps: int, threads: int | None = None) -> None:
        super().__init__(graph, timesteps)
        if threads is not None and threads < 1:
            raise SimulationError(f"threads must be at least 1, got {threads}")
        self.threads = threads or default_threads()
        graph, types = self.graph, self.types
        self._fan_outs64 = {n: [f.astype(np.float64) for f in fs] for n, fs in self.fan_outs.items()}
        self.binary: dict[str, bool] = {}
        self.plans: dict[str, object] = {}
        # Kept arrays of each constant convolution, per node: two first-layer convolutions of one shape must not
        # write into the same output buffer.
        self._constant_buffers: dict[str, _Buffers] = {}
        # (node, op, operands) in topological order, looked up once: the graph's lookups go through networkx,
        # which costs more per batch than the small layers' kernels.
        self.steps = [(node, graph.op(node), graph.inputs(node)) for node in self.order]
        for node, op, srcs in self.steps:
            shape = types[node].shape
            in_shape = types[srcs[0]].shape if srcs else ()
            binary_in = bool(srcs) and self.binary[srcs[0]]
            binary = False
            if isinstance(op, ops.Population) and getattr(op.neuron, "signed", False):
                self.plans[node] = _SignedPopulation(op, types[node].size, self.threads)
            elif isinstance(op, ops.Population):
                self.plans[node] = _Population(op, types[node].size, self.threads)
                binary = True
            elif isinstance(op, ops.Readout):
                self.plans[node] = _Readout(types[node].size, self.threads)
            elif isinstance(op, ops.SpikingMaxPool2d):
                if binary_in and _MaxPool.supports(op, in_shape, shape):
                    self.plans[node] = _MaxPool(op, in_shape, shape, self.threads)
                    binary = True
                else:
                    self.plans[node] = _ReferenceState(op, in_shape)
            elif isinstance(op, (ops.Conv2d, ops.Linear)) and op.input_gains is not None:
                self.plans[node] = _SharedWeightSynapse(op, in_shape, shape, self.fan_outs[node],
                                                        [self.binary[u] for u in srcs], self.threads)
            elif isinstance(op, (ops.Conv2d, ops.Linear)) and binary_in and _EventSynapse.supports(op):
                self.plans[node] = _EventSynapse(op, in_shape, shape, self.fan_outs[node][0], self.threads)
            elif op.is_view:
                binary = binary_in
            self.binary[node] = binary
        # A population feeding only a spiking max pooling runs fused with it (not a signed one: its float spikes
        # take the reference's pooling state).
        self.fused: dict[str, str] = {}  # population node -> pooling node
        consumers: dict[str, list[str]] = {n: [] for n in self.order}
        for node, _, srcs in self.steps:
            for u in srcs:
                consumers[u].append(node)
        for node, _, srcs in self.steps:
            plan = self.plans.get(node)
            src = srcs[0] if len(srcs) == 1 else None
            if (isinstance(plan, _MaxPool) and type(self.plans.get(src)) is _Population and consumers[src] == [node]
                    and src not in graph.outputs):
                self.plans[src] = _PopulationMaxPool(self.plans[src], plan, node)
                self.fused[src] = node
        # An event-driven convolution read only by such a population (alone or with its pooling) runs with it too.
        for node, op, _ in self.steps:
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

    def synapse_stats(self) -> dict[str, dict[str, float]]:
        """Per event-driven synaptic node: chunks run sparse and dense, and the mean input spike density."""
        synapses = {n: p.synapse if isinstance(p, _ConvPopulation) else p for n, p in self.plans.items()}
        for n, p in list(synapses.items()):
            if isinstance(p, _SharedWeightSynapse):  # one entry per operand: "node[i]"
                synapses.update({f"{n}[{i}]": s for i, s in enumerate(p.synapses) if s is not None})
        return {n: {**p.chunks, "density": p.events / p.inputs if p.inputs else 0.0}
                for n, p in synapses.items() if isinstance(p, _EventSynapse)}

    def run_batch(self, x: np.ndarray) -> BatchResult:
        graph, T, types = self.graph, self.timesteps, self.types
        x = np.ascontiguousarray(x, dtype=np.float32)
        batch = x.shape[0]
        if batch == 0:
            raise SimulationError("no input samples to simulate")
        tc_max = max(1, min(T, self._chunk_budget // batch))
        states = {n: p.start(batch) for n, p in self.plans.items() if hasattr(p, "start")}
        spikes = {n: np.zeros((T, batch), dtype=np.float32) for n in self.populations()}
        synops = np.zeros((T, batch), dtype=np.float64)
        outputs = [np.zeros((T, batch) + types[o].shape, dtype=np.float32) for o in graph.outputs]
        constants: dict[str, _Signal] = {}
        for t0 in range(0, T, tc_max):
            tc = min(tc_max, T - t0)
            values: dict[str, _Signal] = dict(constants)
            step_synops = synops[t0:t0 + tc].reshape(-1)  # a view: kernels add into it
            for node, op, srcs in self.steps:
                if node in constants or node in self.computed_earlier:
                    continue
                args = [values[u] for u in srcs]
                plan = self.plans.get(node)
                shape = types[node].shape
                if isinstance(op, ops.Input):
                    out = constants[node] = _Signal(x, True)
                elif isinstance(plan, _PopulationMaxPool):
                    pooled, counts = plan.run(states[node], states[plan.pool_node], args[0], tc, batch)
                    spikes[node][t0:t0 + tc] = counts
                    values[plan.pool_node] = pooled
                    out = None  # the population's spikes exist only inside the fused kernel
                elif isinstance(plan, _Population):
                    out, counts = plan.run(states[node], args[0], tc, batch, shape)
                    spikes[node][t0:t0 + tc] = counts
                elif isinstance(plan, _Readout):
                    out = plan.run(states[node], args[0], tc, batch, t0, shape)
                elif isinstance(plan, _MaxPool):
                    out = plan.run(states[node], args[0], tc, batch)
                elif isinstance(plan, _ReferenceState):
                    out = plan.run(states[node], args[0], tc)
                elif isinstance(op, ops.Conv2d) and op.input_gains is None and args[0].constant and \
                        args[0].data.dtype == np.float32:
                    buffers = self._constant_buffers.setdefault(node, _Buffers())
                    out = constants[node] = _Signal(_constant_conv2d(op, args[0].data, self.threads, buffers), True)
                elif all(a.constant for a in args):
                    out = constants[node] = _Signal(apply(op, *(a.data for a in args)), True)
                elif isinstance(plan, _EventSynapse):
                    out = plan.run(args[0], tc, batch, step_synops)
                elif isinstance(plan, _SharedWeightSynapse):
                    out = plan.run(args, tc, batch, step_synops)
                elif isinstance(plan, _ConvPopulation):
                    values[plan.output_node], counts = plan.run(args[0], tc, batch, step_synops, states)
                    spikes[plan.population_node][t0:t0 + tc] = counts
                    out = None  # the current exists only inside the fused kernel
                elif op.is_view and self.binary[node]:
                    out = _Signal(args[0].data.reshape((tc, batch) + shape), False, True)
                else:
                    out = self._dense(op, node, args, srcs, tc, batch, step_synops)
                values[node] = out
                for u in srcs:
                    if self.last_use.get(u) == node and u not in constants:
                        del values[u]
            for i, o in enumerate(graph.outputs):
                outputs[i][t0:t0 + tc] = values[o].steps(tc)
        return BatchResult(outputs, spikes, synops)

    def _dense(self, op: ops.Op, node: str, args: list[_Signal], srcs: list[str], tc: int, batch: int,
               synops: np.ndarray) -> _Signal:
        """The reference's numpy kernel on the time-folded chunk (float32 inputs: identical arithmetic)."""
        flat = [a.steps(tc).reshape((tc * batch,) + self.types[u].shape) for a, u in zip(args, srcs)]
        result = apply(op, *flat)
        for arg, fan_out in zip(args, self._fan_outs64.get(node, ())):
            if not arg.constant:  # as in the reference: each operand's events cost its own fan-out
                events = np.ascontiguousarray(arg.data).reshape(tc * batch, -1)
                _kernels.count_events(events, fan_out, synops, _threads(self.threads, events.size))
        return _Signal(result.reshape((tc, batch) + result.shape[1:]), False)


class CythonTemporalSimulator(TemporalSimulator):
    """The temporal (FS/AMOS) simulator with compiled units: the same schedule and numpy kernels for the linear ops
    (they act on decoded values, where BLAS is the fast path), and the units in :func:`_kernels.temporal_units`,
    which reproduce :mod:`snncc.runtime.fewspike` bit for bit."""

    def __init__(self, graph: Graph, timesteps: int | None = None, threads: int | None = None) -> None:
        super().__init__(graph, timesteps)
        if threads is not None and threads < 1:
            raise SimulationError(f"threads must be at least 1, got {threads}")
        self.threads = threads or default_threads()
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

    def _evaluate(self, node: str, x: np.ndarray, values: dict[str, np.ndarray],
                  spikes: dict[str, np.ndarray]) -> None:
        if node not in self._params:
            super()._evaluate(node, x, values, spikes)
            return
        (src,) = self.graph.inputs(node)
        current = np.ascontiguousarray(values[src], dtype=np.float32)
        threshold, height, weight, gain, inhibition, offset, is_amos = self._params[node]
        out = np.empty(current.size, dtype=np.float32)
        trains = np.empty((len(threshold), current.size), dtype=np.uint8)
        _kernels.temporal_units(current.reshape(-1), threshold, height, weight, gain, inhibition, offset, is_amos,
                                out, trains, _threads(self.threads, current.size))
        values[node] = out.reshape(current.shape)
        spikes[node] = trains.reshape((len(threshold),) + current.shape)


__all__ = ["DENSE_ABOVE", "CythonSimulator", "CythonTemporalSimulator", "default_threads"]
