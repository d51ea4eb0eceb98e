"""The numpy reference simulator: the specification of how an SNN-level graph executes.

Time is discrete. At every step ``t = 1..T`` each node computes its output from its operands' outputs at the same
step, in topological order (a feed-forward graph has no delays). Analog values that do not change in time (the
input image, and everything computed from it alone, such as the first layer's current) are computed once and reused
at every step. Stateful ops:

- :class:`~snncc.ir.ops.Population`: the neuron model's step function from :mod:`snncc.runtime.dynamics` (the
  one definition of the dynamics), spikes of 0/1 (-1/0/1 for signed IF neurons);
- :class:`~snncc.ir.ops.SpikingMaxPool2d`: increments of the running max of cumulative inputs;
- :class:`~snncc.ir.ops.Readout`: the running mean of its input.

Schedule: a batch is simulated in chunks of time steps; within a chunk every stateless op runs once on all steps of
the chunk (time folded into the batch axis), stateful ops loop over the chunk's steps carrying their state across
chunks. For a feed-forward graph this computes exactly what step-by-step execution computes, with bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.runtime.blas_threads import BlasThreads, engine_blas_threads
from snncc.runtime.dynamics import dynamics_of
from snncc.runtime.kernels import _pad_spatial, _pool_reduce, apply, fan_outs

# Chunks of time steps are sized so that one node's output stays below this many float32 values.
_CHUNK_VALUES = 1 << 24


@dataclass
class _Signal:
    data: np.ndarray  # (B, *shape) when constant, else (Tc, B, *shape)
    constant: bool

    def steps(self, tc: int) -> np.ndarray:
        return np.broadcast_to(self.data, (tc,) + self.data.shape) if self.constant else self.data


class _PopulationState:
    """A population's state in the reference: the entry of its neuron model in
    :data:`~snncc.runtime.dynamics.DYNAMICS` (looked up when the batch starts), its parameters and its state."""

    def __init__(self, op: ops.Population, shape: tuple[int, ...]) -> None:
        self.dynamics = dynamics_of(op.neuron, stepped=True)
        self.params = self.dynamics.parameters(op.neuron, shape[1:], np)
        self.state = self.dynamics.start(self.params, shape)

    def step(self, current: np.ndarray) -> np.ndarray:
        self.state, spikes = self.dynamics.step(self.params, self.state, current)
        return spikes


class _MaxCountState:
    def __init__(self, op: ops.SpikingMaxPool2d, shape: tuple[int, ...]) -> None:
        self.op = op
        self.counts = np.zeros(shape, dtype=np.float32)
        self.previous: np.ndarray | None = None

    def step(self, spikes: np.ndarray) -> np.ndarray:
        self.counts += spikes
        padded = _pad_spatial(self.counts, self.op.padding, -np.inf)
        running_max = _pool_reduce(padded, self.op.kernel, self.op.stride, "max")
        out = running_max if self.previous is None else running_max - self.previous
        self.previous = running_max
        return out


class _ReadoutState:
    def __init__(self, op: ops.Readout, shape: tuple[int, ...]) -> None:
        self.total = np.zeros(shape, dtype=np.float64)
        self.t = 0

    def step(self, current: np.ndarray) -> np.ndarray:
        self.total += current
        self.t += 1
        return (self.total / self.t).astype(np.float32)


STATEFUL = {ops.Population: _PopulationState, ops.SpikingMaxPool2d: _MaxCountState, ops.Readout: _ReadoutState}


@dataclass
class BatchResult:
    outputs: list[np.ndarray]  # per graph output: (T, B, *shape)
    spikes: dict[str, np.ndarray]  # per population: (T, B) spikes emitted at each step
    synops: np.ndarray  # (T, B) synaptic operations at each step
    # Per population, the most spikes one neuron emitted (tracked by the temporal simulator, where it is bounded).
    max_spikes_per_neuron: dict[str, int] = field(default_factory=dict)


class ReferenceSimulator:
    """Simulate an SNN-level graph for ``timesteps`` steps, one batch at a time."""

    def __init__(self, graph: Graph, timesteps: int) -> None:
        if graph.level != ops.SNN:
            raise SimulationError(f"the simulator executes SNN-level graphs; this graph is at the {graph.level} "
                                  "level (convert it first, e.g. with the convert-rate pass)")
        if timesteps < 1:
            raise SimulationError(f"timesteps must be at least 1, got {timesteps}")
        self.graph, self.timesteps = graph, timesteps
        self.blas_threads = engine_blas_threads()
        self.order = graph.topological_order()
        self.types = graph.types()
        # Per synaptic node, one fan-out per operand (a shared-weight layer has several, see ops._SharedWeights).
        self.fan_outs = {}
        for node in self.order:
            op = graph.op(node)
            if op.synaptic:
                shape = self.types[graph.inputs(node)[0]].shape
                self.fan_outs[node] = [f.ravel().astype(np.float32) for f in fan_outs(op, shape)]
        self.last_use = {}
        for node in self.order:
            for u in graph.inputs(node):
                self.last_use[u] = node
        largest = max(t.size for t in self.types.values())
        self._chunk_budget = max(1, _CHUNK_VALUES // largest)
        self._populations = {n: self.types[n].size for n in self.order if isinstance(graph.op(n), ops.Population)}

    def populations(self) -> dict[str, int]:
        """Number of neurons of every population."""
        return dict(self._populations)

    def run_batch(self, x: np.ndarray) -> BatchResult:
        """Simulate one batch ``x`` (B, *input shape), numpy's BLAS on :attr:`blas_threads`
        (:mod:`snncc.runtime.blas_threads`: OpenBLAS's sums depend on its number of threads)."""
        with BlasThreads(self.blas_threads):
            return self._run_batch(x)

    def _run_batch(self, x: np.ndarray) -> BatchResult:
        graph, T = self.graph, self.timesteps
        batch = x.shape[0]
        tc_max = max(1, min(T, self._chunk_budget // batch))
        # Each state has the shape of its op's input (a batch of it).
        states = {n: STATEFUL[type(graph.op(n))](graph.op(n), (batch,) + self.types[graph.inputs(n)[0]].shape)
                  for n in self.order if type(graph.op(n)) in STATEFUL}
        spikes = {n: np.zeros((T, batch), dtype=np.float32) for n in self.populations()}
        synops = np.zeros((T, batch), dtype=np.float64)
        outputs = [np.zeros((T, batch) + self.types[o].shape, dtype=np.float32) for o in graph.outputs]
        constants: dict[str, _Signal] = {}
        for t0 in range(0, T, tc_max):
            tc = min(tc_max, T - t0)
            values: dict[str, _Signal] = dict(constants)
            for node in self.order:
                if node in constants:
                    continue
                op = graph.op(node)
                args = [values[u] for u in graph.inputs(node)]
                if isinstance(op, ops.Input):
                    out = constants[node] = _Signal(x, True)
                elif node in states:
                    state = states[node]
                    steps = args[0].steps(tc)
                    out = _Signal(np.stack([state.step(steps[i]) for i in range(tc)]), False)
                    if node in spikes:  # spike events, negative spikes of signed neurons included
                        spikes[node][t0:t0 + tc] = np.abs(out.data).reshape(tc, batch, -1).sum(axis=2)
                elif all(a.constant for a in args):
                    out = constants[node] = _Signal(apply(op, *(a.data for a in args)), True)
                else:
                    flat = [a.steps(tc).reshape((tc * batch,) + a.data.shape[-len(self.types[u].shape):])
                            for a, u in zip(args, graph.inputs(node))]
                    result = apply(op, *flat)
                    out = _Signal(result.reshape((tc, batch) + result.shape[1:]), False)
                    for arg, weights in zip(args, self.fan_outs.get(node, ())):
                        if not arg.constant:  # each operand's events cost its own fan-out
                            events = (arg.data != 0).reshape(tc, batch, -1).astype(np.float32)
                            synops[t0:t0 + tc] += events @ weights
                values[node] = out
                for u in graph.inputs(node):
                    if self.last_use.get(u) == node and u not in constants:
                        del values[u]
            for i, o in enumerate(graph.outputs):
                outputs[i][t0:t0 + tc] = values[o].steps(tc)
        return BatchResult(outputs, spikes, synops)
