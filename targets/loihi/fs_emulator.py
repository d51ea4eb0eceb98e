"""The Loihi 2 emulator of FS graphs: the microcode FS neuron and graded-spike synapses of
:mod:`snncc.targets.loihi.fewspike`, in the chip's integers, registered as the ``loihi2`` backend's temporal engine.

Per FS layer (one window of ``K`` steps; the chip's pipeline runs every layer at once on successive inputs, which
changes nothing for one input, so the emulator runs the layers one after the other):

- the synaptic layer's input window: at each of its ``K`` steps ``t`` the graded spikes of the source population
  carry the payload ``p(t)`` (the same for every neuron of a population), so the synapse's sum is ``p(t) sum_j
  q_ij z_j(t)``; it is shifted by the weight exponent and by 6 and added to the saturating 24-bit accumulator
  (the binary sums ``sum q z`` by float32 kernels, exact below ``2^24``, the rest in int64);
- the boundary: ``v = sat(acc + bias)``;
- the window: ``z(t) = v >= T(t)``, ``v = sat(v - h(t) z(t))``, ``t = 0 .. K-1``;
- the first layer reads the stored pixels as one graded event each; the readout integrates its input (never
  fires), and its value divided by the membrane scale is the float SNN's readout, up to the integers;
- an FS max pooling (:mod:`snncc.targets.loihi.fs_maxpool`): its gather's per-step input ``(p(t) m(t)) << 6``, the
  max neuron's bitmask ``m(t)`` read back from it and the online lexicographic max of the window's trains.

The outputs follow the float simulator's clock (:mod:`snncc.runtime.temporal`): zero before the latency ``L K``,
the answer from then on; spikes are placed at the steps of each population's window there (on the chip every
step is one later: the answer of input ``i`` is complete at chip step ``i K + L K + 1``).
"""

from __future__ import annotations

import numpy as np

from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.ir.ops import HW
from snncc.runtime.kernels import apply, fan_outs
from snncc.runtime.reference import BatchResult
from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi.emulator import binary_sums, compiled_synapses, stored_pixels
from snncc.targets.loihi.fewspike import STATE_MAX, LoihiFewSpike
from snncc.targets.loihi.fs_maxpool import LoihiFewSpikeMax, masks, max_trains

_EXACT_FLOAT32 = 1 << 24


def _sat(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -STATE_MAX, STATE_MAX)


def _integers(values, node: str, what: str) -> np.ndarray:
    a = np.asarray(values, np.float64)
    if np.any(a != np.round(a)) or np.abs(a).max(initial=0) > STATE_MAX:
        raise SimulationError(f"{node!r}: its {what} are not 24-bit integers; legalize the graph for loihi2 "
                              "(snncc emit --target loihi2)")
    return a.astype(np.int64)


class FewSpikeEmulator:
    """Run a Loihi 2 hw-level FS graph; ``timesteps`` on the float simulator's clock (default: the latency)."""

    def __init__(self, graph: Graph, timesteps: int | None) -> None:
        info = graph.attrs.get("loihi", {})
        if graph.level != HW or info.get("variant") != "loihi2" or info.get("coding") != "fs":
            raise SimulationError("the loihi2 FS emulator runs hw-level FS graphs legalized for loihi2 (snncc emit "
                                  f"--target loihi2 of an FS model); this graph is at the {graph.level} level")
        self.graph = graph
        self.order = graph.topological_order()
        self.types = graph.types()
        self.steps = int(info["steps"])
        self.scales = info["membrane_scale"]
        self.start: dict[str, int] = {}
        self.end: dict[str, int] = {}
        for node in self.order:
            op = graph.op(node)
            ready = [self.end[u] for u in graph.inputs(node)]
            if len(set(ready)) > 1:
                raise SimulationError(f"{node!r}: its operands' windows end at steps {sorted(set(ready))}; the chip's "
                                      "one-phase schedule runs sequential FS graphs (no delay lines)")
            self.start[node] = ready[0] if ready else 0
            self.end[node] = self.start[node] + (self.steps if isinstance(op, ops.Population) else 0)
            if isinstance(op, ops.Population) and isinstance(op.neuron, LoihiFewSpikeMax):
                # The pooled train answers in its FS layer's window (on the chip one step later: fs_maxpool.py).
                layer = self._population(graph.inputs(graph.inputs(node)[0])[0])
                self.start[node], self.end[node] = self.start[layer], self.end[layer]
            elif isinstance(op, ops.Population) and not isinstance(op.neuron, LoihiFewSpike):
                raise SimulationError(f"{node!r}: {op.neuron.kind} neurons in a Loihi 2 FS graph (LoihiFS and "
                                      "LoihiFSMax only)")
        self.latency = max(max(self.end[o] for o in graph.outputs), 1)
        self.timesteps = self.latency if timesteps is None else int(timesteps)
        if self.timesteps < 1:
            raise SimulationError(f"timesteps must be at least 1, got {self.timesteps}")
        self.neurons = {}
        for node in self.order:
            op = graph.op(node)
            if isinstance(op, ops.Population):
                n = op.neuron
                if n.steps != self.steps:
                    raise SimulationError(f"{node!r}: {n.steps} steps; the graph's FS windows have {self.steps}")
                if isinstance(n, LoihiFewSpikeMax):
                    self.neurons[node] = (None, None, _integers(n.weight, node, "payloads"))
                    continue
                self.neurons[node] = (_integers(n.threshold, node, "thresholds"),
                                      _integers(n.height, node, "heights"), _integers(n.weight, node, "payloads"))
        self.float_ops, self.fan_outs = {}, {}
        for node in self.order:
            op = graph.op(node)
            if op.synaptic:
                src = graph.inputs(node)[0]
                payload = 255 if self._constant(src) else 1
                bound = int(np.prod(op.weight.shape[1:])) * int(np.abs(op.weight).max(initial=0)) * payload
                if bound >= _EXACT_FLOAT32:
                    raise SimulationError(f"{node!r}: its synaptic sums may reach {bound:,}, beyond the 2^24 that "
                                          "the emulator's float32 products hold exactly")
                fields = {"weight": op.weight.astype(np.float32), "bias": None}
                if isinstance(op, ops.Conv2d) and op.pad_value is not None:
                    fields["pad_value"] = op.pad_value.astype(np.float32)
                self.float_ops[node] = op.replace(**fields)
                self.fan_outs[node] = fan_outs(op, self.types[src].shape)[0].ravel().astype(np.float64)
        # The gathers of FS max poolings: synaptic nodes that feed a max neuron (their sums are read per step).
        self.gathers = {n for n in self.float_ops if any(
            isinstance(graph.op(u).neuron, LoihiFewSpikeMax) for u, _ in graph.users(n)
            if isinstance(graph.op(u), ops.Population))}
        spike_fed = {n: op for n, op in self.float_ops.items() if not self._constant(graph.inputs(n)[0])}
        self.plans = compiled_synapses(graph, spike_fed, self.types, self.fan_outs)

    def _constant(self, node: str) -> bool:
        """Whether ``node``'s value is the input's (graded pixels delivered once) rather than spike trains."""
        while not isinstance(self.graph.op(node), (ops.Input, ops.Population)):
            node = self.graph.inputs(node)[0]
        return isinstance(self.graph.op(node), ops.Input)

    def populations(self) -> dict[str, int]:
        return {n: self.types[n].size for n in self.neurons}

    def run_batch(self, x: np.ndarray) -> BatchResult:
        graph, K, T = self.graph, self.steps, self.timesteps
        batch = len(x)
        pixels = stored_pixels(x)
        values: dict[str, np.ndarray] = {}  # graded input: (B, *shape); spikes: (K, B, *shape) uint8
        spikes = {n: np.zeros((T, batch), np.float32) for n in self.neurons}
        synops = np.zeros((T, batch), np.float64)
        for node in self.order:
            op = graph.op(node)
            args = [values[u] for u in graph.inputs(node)]
            if isinstance(op, ops.Input):
                values[node] = pixels.astype(np.float32)
            elif op.synaptic and node in self.gathers:
                values[node] = self._gather(node, args[0], batch, synops)
            elif op.synaptic:
                values[node] = self._integrate(node, op, args[0], batch, synops)
            elif isinstance(op, ops.Population):
                trains = max_trains(args[0], op.neuron.inputs) if isinstance(op.neuron, LoihiFewSpikeMax) \
                    else self._fire(node, args[0])
                self._place(spikes[node], self.start[node], trains.reshape(K, batch, -1).sum(axis=2))
                values[node] = trains
            elif isinstance(op, ops.Readout):
                values[node] = args[0].astype(np.float64) / self.scales[graph.inputs(node)[0]]
            elif self._constant(node):
                values[node] = apply(op, *args)
            else:
                flat = [a.reshape((K * batch,) + a.shape[2:]) for a in args]
                out = apply(op, *flat)
                values[node] = out.reshape((K, batch) + out.shape[1:])
        outputs = []
        for o in graph.outputs:
            out = np.zeros((T, batch) + self.types[o].shape, np.float32)
            if self.latency <= T:
                out[self.latency - 1:] = values[o]
            outputs.append(out)
        return BatchResult(outputs, spikes, synops)

    def _integrate(self, node: str, op: ops.Op, x: np.ndarray, batch: int, synops: np.ndarray) -> np.ndarray:
        """The boundary value ``sat(acc + bias)`` of the layer's neurons (int64, (B, *shape))."""
        src = self.graph.inputs(node)[0]
        exp = int(self.graph.meta[node].get("weight_exp", 0))
        shape = self.types[node].shape
        float_op = self.float_ops[node]
        if self._constant(src):  # one graded event per pixel, at the input's step
            sums = np.rint(apply(float_op, x)).astype(np.int64)
            acc = _sat(la.synaptic_input(sums, exp))
            self._place(synops, max(self.end[src] - 1, 0),
                        ((x != 0).reshape(1, batch, -1).astype(np.float64) @ self.fan_outs[node]))
        else:
            K = self.steps
            (payloads,) = [self.neurons[p][2] for p in [self._population(src)]]
            counted = np.zeros((K, batch), np.float64)
            binary = binary_sums(self.plans.get(node), float_op, self.fan_outs[node], x, counted)
            binary = np.rint(binary).astype(np.int64).reshape((K, batch) + shape)
            acc = np.zeros((batch,) + shape, np.int64)
            for t in range(K):
                acc = _sat(acc + la.synaptic_input(payloads[t] * binary[t], exp))
            self._place(synops, self.start[self._population(src)], counted)
        if op.bias is not None:
            acc = _sat(acc + op.bias.astype(np.int64).reshape((1, -1) + (1,) * (len(shape) - 1)))
        return acc

    def _gather(self, node: str, x: np.ndarray, batch: int, synops: np.ndarray) -> np.ndarray:
        """A max pooling's gather: per step ``t`` the synaptic input ``(p(t) sum_j 2^j z_j(t)) << 6`` of its max
        neurons, and the bitmask ``m(t)`` they read from it (int64, (K, B, *shape)); no accumulation."""
        src = self.graph.inputs(node)[0]
        layer = self._population(src)
        K = self.steps
        counted = np.zeros((K, batch), np.float64)
        binary = binary_sums(self.plans.get(node), self.float_ops[node], self.fan_outs[node], x, counted)
        binary = np.rint(binary).astype(np.int64).reshape((K, batch) + self.types[node].shape)
        payloads = self.neurons[layer][2].reshape((K,) + (1,) * (binary.ndim - 1))
        a = la.synaptic_input(payloads * binary, int(self.graph.meta[node].get("weight_exp", 0)))
        self._place(synops, self.start[layer], counted)
        (pop, _), = self.graph.users(node)
        return masks(a, self.neurons[pop][2])

    def _population(self, node: str) -> str:
        while not isinstance(self.graph.op(node), ops.Population):
            node = self.graph.inputs(node)[0]
        return node

    def _fire(self, node: str, v: np.ndarray) -> np.ndarray:
        threshold, height, _ = self.neurons[node]
        trains = np.zeros((self.steps,) + v.shape, np.uint8)
        for t in range(self.steps):
            z = v >= threshold[t]
            v = _sat(v - height[t] * z)
            trains[t] = z
        return trains

    @staticmethod
    def _place(target: np.ndarray, start: int, per_step: np.ndarray) -> None:
        stop = min(start + len(per_step), len(target))
        if stop > start:
            target[start:stop] += per_step[:stop - start]
