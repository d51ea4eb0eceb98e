"""Reference simulator of temporally coded SNNs (FS and AMOS populations): layer-pipelined windows of K steps.

Time structure. Every population of a temporal neuron model (:data:`~snncc.ir.neurons.TEMPORAL_NEURONS`) has a
window of ``K`` steps. Its input current is complete when the windows of all populations it depends on have ended,
is delivered once, and the population spikes during its own window::

    start(p) = max(end(q) for populations q upstream of p)      (0 when p depends on the input only)
    end(p)   = start(p) + K(p)

A spike at step ``t`` of a window carries the weight ``d(t)`` of its neuron model, so what the next layer receives
from a population is its decoded value ``offset + sum_t d(t) z(t)``; linear ops (Conv2d, Linear, pooling, Add,
...) act on that value, which by linearity equals summing the weighted synaptic input of every spike. Where the
branches of an Add end at different times, the earlier one waits (a delay line on hardware).

The latency of the network is the end of its last window: the readout answers after ``latency`` steps, and
``outputs[t]`` is zero before that. Layers are pipelined: while a layer works on input ``i`` the next works on
``i - 1``, so a stream of inputs is answered at one input every ``K`` steps (:meth:`TemporalSimulator.run_stream`
executes exactly that schedule and gives the same values and spikes).

Counted per step: spikes of every population (at the steps they occur), and synaptic operations: a synaptic op
fed by spikes (through Flatten/Reshape/Identity) costs ``fan_out`` per spike at the step of the spike; one fed by
graded values (the analog input, a pooled or summed value) costs ``fan_out`` per non-zero input once, when its
input is complete.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.ir.neurons import TEMPORAL_NEURONS
from snncc.runtime.blas_threads import BlasThreads, engine_blas_threads
from snncc.runtime.dynamics import run_window
from snncc.runtime.kernels import apply, fan_outs
from snncc.runtime.reference import BatchResult


def is_temporal(graph: Graph) -> bool:
    """Whether ``graph`` has populations of a temporal neuron model (and so runs on this simulator)."""
    return any(isinstance(graph.op(n).neuron, TEMPORAL_NEURONS) for n in graph.find(ops.Population))


class TemporalSimulator:
    """Simulate an SNN of FS/AMOS populations for ``timesteps`` steps (default: its latency), one batch at a time."""

    def __init__(self, graph: Graph, timesteps: int | None = None) -> None:
        if graph.level != ops.SNN:
            raise SimulationError(f"the simulator executes SNN-level graphs; this graph is at the {graph.level} "
                                  "level (convert it first, e.g. with the convert-fs pass)")
        self.graph = graph
        self.blas_threads = engine_blas_threads()
        self.order = graph.topological_order()
        self.types = graph.types()
        # Looked up once: the graph's lookups go through networkx, which per batch costs as much as a small layer.
        self.ops = {n: graph.op(n) for n in self.order}
        self.operands = {n: graph.inputs(n) for n in self.order}
        mixed = [n for n in graph.find(ops.Population) if not isinstance(graph.op(n).neuron, TEMPORAL_NEURONS)]
        if mixed:
            raise SimulationError(f"populations {mixed} are rate-coded but the graph also has few-spike populations; "
                                  "convert the whole graph with one method")
        self.start: dict[str, int] = {}
        self.end: dict[str, int] = {}
        for node in self.order:
            ready = max((self.end[u] for u in graph.inputs(node)), default=0)
            op = graph.op(node)
            self.start[node] = ready
            self.end[node] = ready + op.neuron.steps if isinstance(op, ops.Population) else ready
        self.latency = max(max(self.end[o] for o in graph.outputs), 1)
        self.timesteps = self.latency if timesteps is None else timesteps
        if self.timesteps < 1:
            raise SimulationError(f"timesteps must be at least 1, got {self.timesteps}")
        # Every operand of a synaptic op: (operand, its fan-out, the population whose spikes reach it or None).
        self.synaptic_inputs: list[tuple[str, np.ndarray, str | None]] = []
        for node in self.order:
            op = graph.op(node)
            if op.synaptic:
                srcs = graph.inputs(node)
                for src, weights in zip(srcs, fan_outs(op, self.types[srcs[0]].shape)):
                    self.synaptic_inputs.append((src, weights.ravel(), self._spike_source(src)))

    def _spike_source(self, node: str) -> str | None:
        """The population whose spikes reach ``node``'s output unchanged, or None for a graded value."""
        while self.graph.op(node).is_view:  # a view of a population's spikes is those spikes, relabelled
            (node,) = self.graph.inputs(node)
        return node if isinstance(self.graph.op(node), ops.Population) else None

    def populations(self) -> dict[str, int]:
        """Number of neurons of every population (an AMOS unit counts its K neurons)."""
        return {n: self.types[n].size * op.neuron.neurons_per_unit
                for n, op in self.ops.items() if isinstance(op, ops.Population)}

    def stages(self) -> dict[str, int]:
        """Pipeline stage of every node: the index of the window at whose end its value is complete."""
        stage: dict[str, int] = {}
        for node in self.order:
            before = max((stage[u] for u in self.graph.inputs(node)), default=0)
            stage[node] = before + (1 if isinstance(self.graph.op(node), ops.Population) else 0)
        return stage

    def _evaluate(self, node: str, x: np.ndarray, values: dict[str, np.ndarray],
                  spikes: dict[str, np.ndarray]) -> None:
        op = self.ops[node]
        args = [values[u] for u in self.operands[node]]
        if isinstance(op, ops.Input):
            values[node] = x
        elif isinstance(op, ops.Population):
            values[node], spikes[node] = run_window(op.neuron, args[0])
        elif isinstance(op, ops.Readout):
            values[node] = args[0]
        else:
            values[node] = apply(op, *args)

    def run_batch(self, x: np.ndarray) -> BatchResult:
        """Simulate one batch ``x`` (B, *input shape), numpy's BLAS on :attr:`blas_threads`
        (:mod:`snncc.runtime.blas_threads`: OpenBLAS's sums depend on its number of threads)."""
        with BlasThreads(self.blas_threads):
            return self._run_batch(x)

    def _run_batch(self, x: np.ndarray) -> BatchResult:
        batch = x.shape[0]
        values: dict[str, np.ndarray] = {}
        spike_trains: dict[str, np.ndarray] = {}
        for node in self.order:
            self._evaluate(node, x, values, spike_trains)
        return self._result(batch, values, spike_trains)

    def _result(self, batch: int, values: dict[str, np.ndarray], spike_trains: dict[str, np.ndarray]) -> BatchResult:
        T = self.timesteps
        spikes = {n: np.zeros((T, batch), dtype=np.float32) for n in self.populations()}
        max_per_neuron = {}
        for n, trains in spike_trains.items():
            per_step = trains.reshape(trains.shape[0], batch, -1).sum(axis=2, dtype=np.int64)
            self._place(spikes[n], self.start[n], per_step)
            # FS: a neuron's spikes are its unit's spikes over the window; AMOS: neuron j is row j of the unit.
            per_neuron = trains if self.graph.op(n).neuron.neurons_per_unit > 1 else trains.sum(axis=0, dtype=np.int64)
            max_per_neuron[n] = int(per_neuron.max()) if per_neuron.size else 0
        synops = np.zeros((T, batch), dtype=np.float64)
        for src, weights, source in self.synaptic_inputs:
            if source is not None:
                trains = spike_trains[source].reshape(spike_trains[source].shape[0], batch, -1)
                self._place(synops, self.start[source], self._events(trains, weights))
            else:
                events = self._events(values[src].reshape(1, batch, -1), weights)
                self._place(synops, max(self.end[src] - 1, 0), events)
        return BatchResult(self._readouts(values, batch), spikes, synops, max_per_neuron)

    def _readouts(self, values: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
        """Every graph output per step: zero before the latency, the decoded value from then on."""
        outputs = []
        for o in self.graph.outputs:
            out = np.zeros((self.timesteps, batch) + self.types[o].shape, dtype=np.float32)
            if self.latency <= self.timesteps:
                out[self.latency - 1:] = values[o]
            outputs.append(out)
        return outputs

    @staticmethod
    def _events(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Synaptic operations of ``x`` (steps, B, n): per step and sample, the sum of ``weights`` (n) over the
        non-zero entries (float64: integers, exact)."""
        return (x != 0).astype(np.float64) @ weights

    @staticmethod
    def _place(target: np.ndarray, start: int, per_step: np.ndarray) -> None:
        """Add ``per_step`` (steps, B) into ``target`` (T, B) from step ``start``; steps past T are cut off."""
        stop = min(start + len(per_step), len(target))
        if stop > start:
            target[start:stop] += per_step[:stop - start]

    def run_stream(self, x: np.ndarray) -> tuple[BatchResult, list[int]]:
        """Simulate ``x`` as a stream through the layer pipeline: at tick ``w`` stage ``s`` works on input ``w - s``.

        Returns the result (the same values and spikes as :meth:`run_batch`) and, for every input, the step at
        whose end its answer is complete. With one window length ``K`` and ``D`` stages, input ``i`` is answered at
        step ``(i + D) K``: one input every ``K`` steps once the pipeline is full.
        """
        with BlasThreads(self.blas_threads):
            return self._run_stream(x)

    def _run_stream(self, x: np.ndarray) -> tuple[BatchResult, list[int]]:
        windows = {self.graph.op(n).neuron.steps for n in self.populations()}
        if len(windows) != 1:
            raise SimulationError(f"pipelined streaming needs one window length; populations use {sorted(windows)}")
        (k,) = windows
        stage = self.stages()
        depth = max(stage.values())
        by_stage: dict[int, list[str]] = defaultdict(list)
        for node in self.order:
            by_stage[stage[node]].append(node)
        n = len(x)
        values: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        trains: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        answered = [0] * n
        for tick in range(n + depth):
            for s in range(depth + 1):  # every stage works on its own input during this tick
                i = tick - s
                if 0 <= i < n:
                    for node in by_stage[s]:
                        self._evaluate(node, x[i:i + 1], values[i], trains[i])
                    if s == depth:
                        answered[i] = tick * k  # tick w >= 1 is the window of steps ((w-1)K, wK]
        merged_values = {node: np.concatenate([v[node] for v in values]) for node in values[0]}
        merged_trains = {p: np.concatenate([t[p] for t in trains], axis=1) for p in trains[0]}
        return self._result(n, merged_values, merged_trains), answered
