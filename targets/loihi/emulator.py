"""The Loihi emulator: executes a Loihi hw-level graph with the chip's integer arithmetic
(:mod:`snncc.targets.loihi.arithmetic`), registered as the runtime backends ``loihi1`` and ``loihi2``.

What runs, per time step of the chip:

- the **input** arrives from the host as graded events whose payload is the stored value (a uint8 pixel) at every
  step (on Loihi 1, which has no graded spikes, the host writes the first layer's synaptic sums as per-neuron
  biases instead; the integers are the same);
- every **synaptic layer** accumulates ``sum q s`` over the spikes (or payloads) that its sources emitted at the
  *previous* step (a spike crosses the mesh in one step, as Lava's Dense process buffers its output by one step),
  shifts it by the weight exponent and by 6, and its population adds the layer's bias (the neuron bias, a
  per-channel membrane-unit integer of the hw graph) from the layer's first input step on (chip step = its
  synaptic depth; the host switches each layer's bias on then, listed in the bundle's manifest), so that no
  layer integrates its bias before its first input arrives;
- every **population** runs the CUBA step of :func:`~snncc.targets.loihi.arithmetic.cuba_step` on its
  :class:`~snncc.ir.neurons.CubaLIF` record (24-bit wrap of ``u``, saturation of ``v``, truncation toward zero)
  over its window (:func:`~snncc.targets.loihi.arithmetic.cuba_window`: the same integers, in int32 where the
  record allows);
- the **readout** sums the integer input of its output compartments (a membrane without threshold).

Each synaptic layer delays by one step, so a graph of synaptic depth ``D`` answers ``D`` steps late: step ``t`` of
the answer is read at chip step ``t + D`` (the readout's sum so far divided by ``t + 1``). The emulator computes
each node over its own window of chip steps ``[depth, depth + T)``: before it the node has received nothing (its
layer bias is still off; a population only decays from its initial voltage, and the emulator refuses a neuron
that would fire then), and nothing after it reaches the answer. Paths of different synaptic depth into one node
(which would need the delays themselves) are refused. For a sequential network the windows are the float SNN's
steps ``0..T-1`` one for one, which is what makes the comparison of ``verify`` a comparison step by step.

Arithmetic: the integer sums are computed by float32 kernels on integer values (the Cython runtime's event-driven
synapses where it is built, else :mod:`snncc.runtime.kernels`), which is exact while every partial sum stays
below ``2^24``: checked per layer from its largest weight, fan-in and input, and refused otherwise. The input's
payload is the same at every step, so the first layer's product is computed once.

Two paths give the same integers: the numpy path below (the specification, and the fallback where nothing is
compiled: :func:`~snncc.targets.loihi.arithmetic.synaptic_input`, the layer bias and
:func:`~snncc.targets.loihi.arithmetic.cuba_window` as numpy passes), and the compiled path of
:mod:`snncc.targets.loihi.compiled` (one event-driven sum per group of channel or row blocks of one source, and one
compiled pass per population for the shift, bias and CUBA step: ``targets/loihi/_cuba.pyx``), used where it is
built (``compiled=None``; ``True`` requires it, ``False`` runs numpy).
"""

from __future__ import annotations

import numpy as np

from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.ir.neurons import CubaLIF
from snncc.ir.ops import HW
from snncc.runtime import Backend, register_backend
from snncc.runtime.kernels import apply, fan_outs
from snncc.runtime.reference import BatchResult
from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi import compiled as lc

_EXACT_FLOAT32 = 1 << 24
_CHUNK_VALUES = 1 << 23


def _as_float_op(op: ops.Op) -> ops.Op:
    """The synaptic op with its stored integers as floats (for the BLAS kernels) and no bias (added later)."""
    fields = {"weight": op.weight.astype(np.float32), "bias": None}
    if isinstance(op, ops.Conv2d) and op.pad_value is not None:
        fields["pad_value"] = op.pad_value.astype(np.float32)
    return op.replace(**fields)


def synaptic_depth(graph: Graph) -> dict[str, int]:
    """Per node, the synaptic layers on the longest path from the input to it (each delays by one chip step)."""
    depth: dict[str, int] = {}
    for node in graph.topological_order():
        base = max((depth[u] for u in graph.inputs(node)), default=0)
        depth[node] = base + (1 if graph.op(node).synaptic else 0)
    return depth


def compiled_synapses(graph: Graph, float_ops: dict[str, ops.Op], types: dict, fan_out: dict[str, np.ndarray]) -> dict:
    """Event-driven synapses of the Cython runtime for spike-fed float32 layers ``float_ops``, where it is built
    (the emulators are then several times faster; the sums are the same integers); empty otherwise."""
    from snncc.runtime import cython_available

    if not cython_available()[0]:
        return {}
    from snncc.runtime.cython_engine import _EventSynapse, default_threads

    plans = {}
    for node, op in float_ops.items():
        src = graph.inputs(node)[0]
        if _EventSynapse.supports(op):
            plans[node] = _EventSynapse(op, types[src].shape, types[node].shape, fan_out[node], default_threads())
    return plans


def stored_pixels(x: np.ndarray) -> np.ndarray:
    """``x`` checked to be the data as stored, integers 0..255 (the input scaling is folded into the first layer)."""
    pixels = np.asarray(x)
    if not np.all(np.isfinite(pixels)) or np.any(pixels != np.round(pixels)) or pixels.min() < 0 \
            or pixels.max() > 255:
        raise SimulationError("the Loihi emulator takes the data as stored, integers 0..255 (uint8 pixels); "
                              "the input scaling is folded into the first layer")
    return pixels


def binary_sums(plan, float_op: ops.Op, fan_out: np.ndarray, spikes: np.ndarray, synops: np.ndarray) -> np.ndarray:
    """``sum q s`` over binary spikes (T, batch, *shape) as float32 (sums of integers, exact below 2^24), shaped
    (T * batch, *out), and the synaptic operations they cost added to ``synops`` (T, batch): the compiled
    event-driven kernel ``plan`` where there is one, else the numpy kernel."""
    T, batch = spikes.shape[:2]
    if plan is not None:
        from snncc.runtime.cython_engine import _Signal

        signal = _Signal(np.ascontiguousarray(spikes, dtype=np.uint8), False, True)
        counted = np.zeros(T * batch, np.float64)
        result = plan.advance(signal, T, batch, counted)
        synops += counted.reshape(T, batch)
        return result.data
    events = (spikes != 0).reshape(T, batch, -1).astype(np.float32)
    synops += events @ fan_out.astype(np.float32)
    return apply(float_op, spikes.reshape((T * batch,) + spikes.shape[2:]).astype(np.float32))


class LoihiEmulator:
    """Run a Loihi hw-level graph for ``timesteps`` answer steps (chip steps ``D .. D + T - 1``), one batch at a
    time."""

    def __init__(self, graph: Graph, timesteps: int, variant: str, compiled: bool | None = None) -> None:
        if graph.level != HW or graph.attrs.get("loihi", {}).get("variant") != variant:
            raise SimulationError(f"the {variant} emulator runs hw-level graphs legalized for {variant} (snncc emit "
                                  f"--target {variant}); this graph is at the {graph.level} level"
                                  + (f", legalized for {graph.attrs['loihi']['variant']}"
                                     if "loihi" in graph.attrs else ""))
        if timesteps < 1:
            raise SimulationError(f"timesteps must be at least 1, got {timesteps}")
        self.graph, self.timesteps = graph, timesteps
        self.order = graph.topological_order()
        self.types = graph.types()
        self.depth = synaptic_depth(graph)
        # Values that are the same at every step: the input and rearrangements of it alone (a row block's slice).
        self.constant: set[str] = set()
        for node in self.order:
            op = graph.op(node)
            if isinstance(op, ops.Input) or (not op.synaptic and type(op) not in (ops.Population, ops.Readout)
                                             and all(u in self.constant for u in graph.inputs(node))):
                self.constant.add(node)
        self.delay = max(self.depth.values())
        self.float_ops, self.fan_outs = {}, {}
        for node in self.order:
            op = graph.op(node)
            if op.synaptic:
                src = graph.inputs(node)[0]
                bound = self._sum_bound(op, src)
                if bound >= _EXACT_FLOAT32:
                    raise SimulationError(f"{node!r}: its synaptic sums may reach {bound:,}, beyond the 2^24 that "
                                          "the emulator's float32 products hold exactly")
                self.float_ops[node] = _as_float_op(op)
                self.fan_outs[node] = fan_outs(op, self.types[src].shape)[0].ravel()
            elif isinstance(op, ops.Population) and not isinstance(op.neuron, CubaLIF):
                raise SimulationError(f"{node!r}: {op.neuron.kind} neurons are not Loihi neurons (CubaLIF)")
        self._populations = {n: self.types[n].size for n in self.order if isinstance(graph.op(n), ops.Population)}
        built, why = lc.available()
        if compiled and not built:
            raise SimulationError(f"the compiled Loihi emulator is not available: {why}")
        self.compiled = built if compiled is None else bool(compiled)
        self._starts: dict[str, la.CubaState] = {}
        if self.compiled:
            from snncc.runtime.cython_engine import default_threads

            self._threads = default_threads()
            self._synapses = lc.Synapses(graph, self.float_ops, self.types, self.fan_outs, self._threads,
                                         self.constant)
            # Synaptic nodes whose only consumer is a population the compiled step takes: their sums go to it as
            # they are (PendingSums), the shift, bias and CUBA step in one pass.
            self._fused = {n for n in self.float_ops if self._fuses(n)}
            self._bypassed = self._synapses.bypassed
        else:
            self._synapses, self._fused, self._bypassed = None, set(), set()
        largest = max(t.size for t in self.types.values())
        self._samples_per_chunk = max(1, _CHUNK_VALUES // (largest * timesteps))

    def _fuses(self, node: str) -> bool:
        consumers = self.graph.users(node)
        if len(consumers) != 1 or node in self.graph.outputs:
            return False
        op = self.graph.op(consumers[0][0])
        return isinstance(op, ops.Population) and isinstance(op.neuron, CubaLIF) and lc.fusable(op.neuron)

    def _sum_bound(self, op: ops.Op, src: str) -> int:
        payload = 255 if src in self.constant else 1
        fan_in = int(np.prod(op.weight.shape[1:]))
        return fan_in * int(np.abs(op.weight).max(initial=0)) * payload

    def populations(self) -> dict[str, int]:
        return dict(self._populations)

    def run_batch(self, x: np.ndarray) -> BatchResult:
        parts = [self._run(x[i:i + self._samples_per_chunk]) for i in range(0, len(x), self._samples_per_chunk)]
        if len(parts) == 1:
            return parts[0]
        return BatchResult([np.concatenate([p.outputs[i] for p in parts], axis=1) for i in range(len(parts[0].outputs))],
                           {n: np.concatenate([p.spikes[n] for p in parts], axis=1) for n in parts[0].spikes},
                           np.concatenate([p.synops for p in parts], axis=1))

    def _run(self, x: np.ndarray) -> BatchResult:
        """Every node's values over its window of chip steps ``[depth, depth + T)``, (T, batch, *shape): before
        it a node has seen no input (and its layer bias is off), after it nothing downstream reads it."""
        graph, T = self.graph, self.timesteps
        batch = x.shape[0]
        payload = stored_pixels(x)
        values: dict[str, np.ndarray] = {}
        spikes = {n: np.zeros((T, batch), np.float32) for n in self._populations}
        synops = np.zeros((T, batch), np.float64)
        group_sums: dict = {}  # the compiled path's sums of each group of blocks, for this chunk
        for node in self.order:
            if node in self._bypassed:  # a slice of rows that only row blocks read: they take its source
                continue
            op = graph.op(node)
            inputs = [self._synapses.source(node)] if self._synapses is not None and node in self._synapses \
                else graph.inputs(node)
            args = [values[u] for u in inputs]
            if isinstance(op, ops.Input):
                values[node] = payload.astype(np.float32)  # the same at every step: (batch, *shape)
            elif op.synaptic and node in self._fused:
                values[node] = self._pending_sums(node, op, args[0], batch, synops, group_sums)
            elif op.synaptic:
                values[node] = self._synaptic(node, op, args[0], batch, synops, group_sums)
            elif isinstance(op, ops.Population) and isinstance(args[0], lc.PendingSums):
                start = self._window_start(node, op.neuron)
                out = lc.population_window(args[0], op.neuron, start, T, spikes[node], self._threads)
                values[node] = out.reshape((T, batch) + self.types[node].shape)
            elif isinstance(op, ops.Population):
                out = self._population(node, op.neuron, args[0])
                spikes[node] += out.reshape(T, batch, -1).sum(axis=2)
                values[node] = out
            elif isinstance(op, ops.Readout):
                values[node] = np.cumsum(args[0], axis=0, dtype=np.float64)
            elif node in self.constant:
                values[node] = apply(op, *args)
            else:
                if len({self.depth[u] for u in graph.inputs(node)}) > 1:
                    raise SimulationError(f"{node!r}: its operands arrive through different numbers of synaptic "
                                          "layers (different delays); the Loihi emulator runs graphs whose paths "
                                          "to a node have one length")
                flat = [a.reshape((T * batch,) + a.shape[2:]) for a in args]
                result = apply(op, *flat)
                values[node] = result.reshape((T, batch) + result.shape[1:])
        counts = np.arange(1, T + 1, dtype=np.float64)
        outputs = [(values[o] / counts.reshape((T,) + (1,) * (values[o].ndim - 1))).astype(np.float32)
                   for o in graph.outputs]
        return BatchResult(outputs, spikes, synops)

    def _pending_sums(self, node: str, op: ops.Op, x: np.ndarray, batch: int, synops: np.ndarray,
                      group_sums: dict) -> lc.PendingSums:
        """The compiled path's synaptic node: its sums ``sum q s`` as float32 integers, (T, batch, N), or (1, batch,
        N) for the graded input (the same at every step), for its population's compiled step to shift and bias."""
        src = self.graph.inputs(node)[0]
        weight_exp = la.check_weight_exponent(int(self.graph.meta[node].get("weight_exp", 0)))
        bias = None if op.bias is None else np.asarray(op.bias)
        if src in self.constant:
            return lc.PendingSums(self._synapses.sums(node, x, group_sums, synops), weight_exp, bias)
        return lc.PendingSums(self._spike_sums(node, self.float_ops[node], x, batch, synops, group_sums)
                              .reshape(self.timesteps, batch, -1), weight_exp, bias)

    def _synaptic(self, node: str, op: ops.Op, x: np.ndarray, batch: int, synops: np.ndarray,
                  group_sums: dict | None = None) -> np.ndarray:
        """The population's input in membrane units over its window: the sums of the source's window (one step
        earlier on the chip), shifted, plus the layer's bias (on from the window's first step)."""
        src = self.graph.inputs(node)[0]
        T = self.timesteps
        float_op = self.float_ops[node]
        out_shape = self.types[node].shape
        weight_exp = int(self.graph.meta[node].get("weight_exp", 0))
        if src in self.constant:  # graded events with the same payload at every step
            synops += ((x != 0).reshape(batch, -1).astype(np.float32) @ self.fan_outs[node].astype(np.float32))
            sums = np.rint(apply(float_op, x)).astype(np.int64)
            out = np.broadcast_to(la.synaptic_input(sums, weight_exp), (T, batch) + out_shape)
        else:
            sums = self._spike_sums(node, float_op, x, batch, synops, group_sums).reshape((T, batch) + out_shape)
            if weight_exp == 0:  # exact integers in float32, and << 6 is exact there too: one conversion
                out = (sums * np.float32(1 << la.ACTIVATION_SHIFT)).astype(np.int64)
            else:
                out = la.synaptic_input(sums.astype(np.int64), weight_exp)
        if op.bias is not None:
            out = out + op.bias.astype(np.int64).reshape((1, 1, -1) + (1,) * (len(out_shape) - 1))
        return out

    def _spike_sums(self, node: str, float_op: ops.Op, spikes: np.ndarray, batch: int,
                    synops: np.ndarray, group_sums: dict | None = None) -> np.ndarray:
        """``sum q s`` over binary spikes (T, batch, *shape) as float32 (sums of integers, exact below 2^24), and
        the synaptic operations they cost added to ``synops`` (T, batch): on the compiled path the event-driven
        kernel of the node's group of blocks (:class:`~snncc.targets.loihi.compiled.Synapses`), else the numpy
        kernel."""
        if self._synapses is not None and node in self._synapses:
            return self._synapses.sums(node, spikes, group_sums, synops)
        return binary_sums(None, float_op, self.fan_outs[node], spikes, synops)

    def _window_start(self, node: str, neuron: CubaLIF) -> la.CubaState:
        """The population's state at its window's first chip step, the same for every sample (population shape):
        ``depth`` chip steps of :func:`~snncc.targets.loihi.arithmetic.cuba_step` without input (only the record's
        bias); refused if a neuron fires in them."""
        if node in self._starts:
            return self._starts[node]
        if neuron.decay_unit != la.DECAY_UNIT:
            raise SimulationError(f"{node!r}: CubaLIF decay_unit is {neuron.decay_unit}; Loihi's decays are in "
                                  f"units of {la.DECAY_UNIT}")
        shape = self.types[node].shape
        subtract = neuron.reset == "subtract"
        state = la.CubaState(np.zeros(shape, np.int64), np.full(shape, neuron.initial_voltage, np.int64))
        for _ in range(self.depth[node]):  # the chip steps before its first input: only the record's bias
            state, s = la.cuba_step(state, 0, neuron.current_decay, neuron.voltage_decay, neuron.bias,
                                    neuron.threshold, subtract=subtract)
            if s.any():
                raise SimulationError(f"{node!r}: fires before its first input arrives (initial voltage or bias "
                                      "at the threshold); the emulator's time alignment does not hold")
        self._starts[node] = state
        return state

    def _population(self, node: str, neuron: CubaLIF, current: np.ndarray) -> np.ndarray:
        """The numpy path's population: :func:`~snncc.targets.loihi.arithmetic.cuba_window` over its window,
        from the state of :meth:`_window_start` (the same for every sample: computed once, broadcast)."""
        start = self._window_start(node, neuron)
        shape = current.shape[1:]
        state = la.CubaState(np.broadcast_to(start.u, shape).copy(), np.broadcast_to(start.v, shape).copy())
        _, out = la.cuba_window(state, current, neuron.current_decay, neuron.voltage_decay, neuron.bias,
                                neuron.threshold, subtract=neuron.reset == "subtract")
        return out


def _factory(variant: str):
    def build(graph: Graph, timesteps: int | None, threads: int | None) -> LoihiEmulator:
        return LoihiEmulator(graph, timesteps, variant)
    return build


def _few_spike(graph: Graph, timesteps: int | None, threads: int | None):
    from snncc.targets.loihi.fs_emulator import FewSpikeEmulator

    return FewSpikeEmulator(graph, timesteps)


#: The temporal (FS) engine of each variant: Loihi 2's graded spikes; Loihi 1 has none (its check refuses FS).
_TEMPORAL = {"loihi1": None, "loihi2": _few_spike}

for _variant in ("loihi1", "loihi2"):
    register_backend(Backend(_variant, _factory(_variant), _TEMPORAL[_variant],
                             description=f"the {_variant} emulator: the chip's integer arithmetic on a hw-level "
                                         f"graph legalized for {_variant}"), replace=True)
