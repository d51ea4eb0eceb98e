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
  :class:`~snncc.ir.neurons.CubaLIF` record (24-bit wrap of ``u``, saturation of ``v``, truncation toward zero);
- the **readout** sums the integer input of its output compartments (a membrane without threshold).

Each synaptic layer delays by one step, so a graph of synaptic depth ``D`` answers ``D`` steps late. The emulator
runs ``T + D`` chip steps and reports step ``t`` of the answer at chip step ``t + D`` (for the readout, the sum so
far divided by ``t + 1``; the zeros of the first ``D`` steps add nothing), the spikes and synaptic operations of a
node at chip step ``t + depth``: for a feed-forward graph whose paths to a node all have one length (every
sequential network) this is the network without delays, which is what the float SNN computes.

Arithmetic: the integer sums are computed by the float32 kernels of :mod:`snncc.runtime.kernels` on integer
values, which is exact while every partial sum stays below ``2^24`` (checked per layer from its largest weight,
fan-in and input; float64 otherwise).
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

_EXACT_FLOAT32 = 1 << 24
_CHUNK_VALUES = 1 << 23


def _as_float_op(op: ops.Op, dtype: type) -> ops.Op:
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


class LoihiEmulator:
    """Run a Loihi hw-level graph for ``timesteps`` answer steps (``T + D`` chip steps), one batch at a time."""

    def __init__(self, graph: Graph, timesteps: int, variant: str) -> None:
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
        self.delay = max(self.depth.values())
        self.float_ops, self.fan_outs = {}, {}
        for node in self.order:
            op = graph.op(node)
            if op.synaptic:
                src = graph.inputs(node)[0]
                bound = self._sum_bound(op, src)
                self.float_ops[node] = _as_float_op(op, np.float32 if bound < _EXACT_FLOAT32 else np.float64)
                self.fan_outs[node] = fan_outs(op, self.types[src].shape)[0].ravel()
            elif isinstance(op, ops.Population) and not isinstance(op.neuron, CubaLIF):
                raise SimulationError(f"{node!r}: {op.neuron.kind} neurons are not Loihi neurons (CubaLIF)")
        self._populations = {n: self.types[n].size for n in self.order if isinstance(graph.op(n), ops.Population)}
        largest = max(t.size for t in self.types.values())
        self._samples_per_chunk = max(1, _CHUNK_VALUES // (largest * (timesteps + self.delay)))

    def _sum_bound(self, op: ops.Op, src: str) -> int:
        payload = 255 if isinstance(self.graph.op(src), ops.Input) else 1
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
        graph, T, D = self.graph, self.timesteps, self.delay
        steps, batch = T + D, x.shape[0]
        payload = np.asarray(x)
        if not np.all(np.isfinite(payload)) or np.any(payload != np.round(payload)) or payload.min() < 0 \
                or payload.max() > 255:
            raise SimulationError("the Loihi emulator takes the data as stored, integers 0..255 (uint8 pixels); "
                                  "the input scaling is folded into the first layer")
        values: dict[str, np.ndarray] = {}  # every value (steps, batch, *shape)
        spikes = {n: np.zeros((T, batch), np.float32) for n in self._populations}
        synops = np.zeros((T, batch), np.float64)
        outputs = []
        for node in self.order:
            op = graph.op(node)
            args = [values[u] for u in graph.inputs(node)]
            if isinstance(op, ops.Input):
                values[node] = np.broadcast_to(payload.astype(np.int64), (steps,) + payload.shape)
            elif op.synaptic:
                values[node] = self._synaptic(node, op, args[0], steps, batch, synops)
            elif isinstance(op, ops.Population):
                out = self._population(node, op.neuron, args[0])
                d = self.depth[node]
                spikes[node] += out[d:d + T].reshape(T, batch, -1).sum(axis=2)
                values[node] = out
            elif isinstance(op, ops.Readout):
                total = np.cumsum(args[0], axis=0, dtype=np.float64)
                values[node] = total
            else:
                flat = [a.reshape((steps * batch,) + a.shape[2:]) for a in args]
                result = apply(op, *flat)
                values[node] = result.reshape((steps, batch) + result.shape[1:])
        for out in graph.outputs:
            total = values[out][D:D + T]
            counts = np.arange(1, T + 1, dtype=np.float64).reshape((T,) + (1,) * (total.ndim - 1))
            outputs.append((total / counts).astype(np.float32))
        return BatchResult(outputs, spikes, synops)

    def _synaptic(self, node: str, op: ops.Op, x: np.ndarray, steps: int, batch: int,
                  synops: np.ndarray) -> np.ndarray:
        """The population's input in membrane units at every chip step: the sources' previous step, weighted,
        shifted, plus the layer's bias."""
        src = self.graph.inputs(node)[0]
        d, T = self.depth[src], self.timesteps
        events = (x[d:d + T] != 0).reshape(T, batch, -1).astype(np.float32)
        synops += events @ self.fan_outs[node].astype(np.float32)
        float_op = self.float_ops[node]
        dtype = float_op.weight.dtype
        previous = x[:-1]  # arrives one step later
        flat = previous.reshape(((steps - 1) * batch,) + x.shape[2:]).astype(dtype)
        accumulated = np.rint(apply(float_op, flat)).astype(np.int64)
        current = la.synaptic_input(accumulated, int(self.graph.meta[node].get("weight_exp", 0)))
        out = np.zeros((steps, batch) + current.shape[1:], np.int64)
        out[1:] = current.reshape((steps - 1, batch) + current.shape[1:])
        if op.bias is not None:  # switched on at the layer's first input step, chip step = its depth
            out[self.depth[node]:] += op.bias.astype(np.int64).reshape((1, 1, -1) + (1,) * (current.ndim - 2))
        return out

    def _population(self, node: str, neuron: CubaLIF, current: np.ndarray) -> np.ndarray:
        if neuron.decay_unit != la.DECAY_UNIT:
            raise SimulationError(f"{node!r}: CubaLIF decay_unit is {neuron.decay_unit}; Loihi's decays are in "
                                  f"units of {la.DECAY_UNIT}")
        shape = current.shape[1:]
        state = la.CubaState(np.zeros(shape, np.int64), np.full(shape, neuron.initial_voltage, np.int64))
        out = np.zeros(current.shape, np.uint8)
        for t in range(current.shape[0]):
            state, s = la.cuba_step(state, current[t], neuron.current_decay, neuron.voltage_decay, neuron.bias,
                                    neuron.threshold, subtract=neuron.reset == "subtract")
            out[t] = s
        return out


def _factory(variant: str):
    def build(graph: Graph, timesteps: int | None, threads: int | None) -> LoihiEmulator:
        return LoihiEmulator(graph, timesteps, variant)
    return build


for _variant in ("loihi1", "loihi2"):
    register_backend(Backend(_variant, _factory(_variant), None,
                             description=f"the {_variant} emulator: the chip's integer arithmetic on a hw-level "
                                         f"graph legalized for {_variant}"), replace=True)
