"""The compiled path of the Loihi emulator (:class:`~snncc.targets.loihi.emulator.LoihiEmulator`): the same
integers as its numpy path, which stays the specification and the fallback where nothing is built.

Two things make it fast:

- **one synaptic sum per source**: the legalization splits a layer into blocks of output channels (one per core),
  each a synaptic node of the same source; the blocks' sums ``sum_j q_ij s_j`` are computed by one event-driven
  kernel of the Cython runtime over the blocks' weights side by side (one pass over the source's spikes instead of
  one per block), and each block reads its channels. The sums are integers held exactly in float32 (below ``2^24``,
  checked per layer), so how they are grouped changes none of them; the synaptic operations are the blocks'
  fan-outs added together, integers in float64;
- **one pass per population**: a synaptic node whose only consumer is its population hands its sums on unshifted;
  :func:`_cuba.population_window` applies the exponent shift, ``<< 6``, the layer bias and the CUBA step of
  :mod:`snncc.targets.loihi.arithmetic` (wrap, saturation, threshold, reset) neuron by neuron and step by step
  (``targets/loihi/_cuba.pyx``, whose docstring lists the equations and the functions of ``arithmetic.py`` they
  are), instead of a dozen numpy passes over int64 (T, batch, ...) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.ir import Graph, ops
from snncc.ir.neurons import CubaLIF
from snncc.runtime.kernels import apply
from snncc.targets.loihi import arithmetic as la


def available() -> tuple[bool, str]:
    """Whether the compiled path is built: the emulator's ``_cuba`` module and the Cython runtime's kernels."""
    from snncc.runtime import cython_available

    runtime, why = cython_available()
    if not runtime:
        return False, why
    try:
        from snncc.targets.loihi import _cuba  # noqa: F401
    except ImportError as exc:
        return False, (f"the Loihi emulator's compiled step is not built ({exc}); pip install -e . compiles "
                       "targets/loihi/_cuba.pyx")
    return True, ""


@dataclass(frozen=True)
class Block:
    """A synaptic node's share of its group's sums: channels ``[start, stop)`` of ``group``."""

    group: int
    start: int
    stop: int


@dataclass(frozen=True)
class PendingSums:
    """A synaptic node's output on the compiled path before its population: ``sums`` (T or 1, batch, N) float32
    integers ``sum q s`` (1 step: the same at every step), to be shifted by ``weight_exp``, ``<< 6``, plus
    ``bias`` (per channel, int32, or None)."""

    sums: np.ndarray
    weight_exp: int
    bias: np.ndarray | None


def _merge_key(op: ops.Op, src: str):
    """Blocks with the same key compute their sums as one op: same source and geometry (and padding values, one
    per input channel), plain weights."""
    if getattr(op, "input_gains", None) is not None:
        return None
    if isinstance(op, ops.Linear):
        return ("linear", src)
    if isinstance(op, ops.Conv2d) and op.groups == 1:
        pad = None if op.pad_value is None else np.asarray(op.pad_value, np.float32).tobytes()
        return ("conv", src, op.weight.shape[1:], tuple(op.stride), tuple(op.padding), tuple(op.dilation), pad)
    return None


class Synapses:
    """The sums of the emulator's synaptic nodes, one kernel per group of blocks: event-driven for spike-fed
    nodes, the numpy kernel (:func:`snncc.runtime.kernels.apply`) once per input for those of the graded input
    (``constant``: the same payload at every step)."""

    def __init__(self, graph: Graph, float_ops: dict[str, ops.Op], types: dict, fan_out: dict[str, np.ndarray],
                 threads: int, constant: set[str]) -> None:
        from snncc.runtime.cython_engine import _EventSynapse

        groups: dict = {}
        for node, op in float_ops.items():
            src = graph.inputs(node)[0]
            key = _merge_key(op, src) if src in constant or _EventSynapse.supports(op) else None
            groups.setdefault(key if key is not None else ("single", node), []).append(node)
        self.blocks: dict[str, Block] = {}
        self.plans: list = []
        self.sources: list[str] = []
        self.constant = constant
        for members in groups.values():
            index = len(self.plans)
            src = graph.inputs(members[0])[0]
            weights, start = [], 0
            for node in members:
                channels = float_ops[node].weight.shape[0]
                self.blocks[node] = Block(index, start, start + channels)
                weights.append(float_ops[node].weight)
                start += channels
            merged = float_ops[members[0]].replace(weight=np.concatenate(weights), bias=None)
            out_shape = (start,) + tuple(types[members[0]].shape[1:])
            fan = np.sum([fan_out[n] for n in members], axis=0)
            plan = _EventSynapse(merged, tuple(types[src].shape), out_shape, fan, threads) \
                if src not in constant and _EventSynapse.supports(merged) else None
            self.plans.append((plan, merged, fan, out_shape))
            self.sources.append(src)

    def __contains__(self, node: str) -> bool:
        return node in self.blocks

    def sums(self, node: str, spikes: np.ndarray, cache: dict, synops: np.ndarray) -> np.ndarray:
        """``node``'s sums (T, batch, N) float32 (a view of its group's; (1, batch, N) for the graded input),
        computed once per group and run (``cache``), and the group's synaptic operations added to ``synops`` (T,
        batch) then."""
        from snncc.targets.loihi.emulator import binary_sums

        block = self.blocks[node]
        plan, merged, fan, out_shape = self.plans[block.group]
        constant = self.sources[block.group] in self.constant  # the payload (batch, *shape), the same every step
        T, batch = (1, spikes.shape[0]) if constant else spikes.shape[:2]
        if block.group not in cache:
            if constant:
                synops += (spikes != 0).reshape(batch, -1).astype(np.float32) @ fan.astype(np.float32)
                sums = apply(merged, spikes)
            else:
                sums = binary_sums(plan, merged, fan, spikes, synops)
            cache[block.group] = sums.reshape((T, batch) + out_shape)
        total = cache[block.group]
        plane = int(np.prod(total.shape[3:], dtype=np.int64))
        flat = total.reshape(T, batch, -1)
        return flat[:, :, block.start * plane:block.stop * plane]


def fusable(neuron: CubaLIF) -> bool:
    """Whether ``population_window`` takes the record: scalar integer bias and threshold (the records of the
    Loihi legalization); others run the numpy path."""
    scalars = (neuron.bias, neuron.threshold, neuron.current_decay, neuron.voltage_decay)
    return all(np.ndim(s) == 0 and float(s) == int(s) for s in scalars) \
        and neuron.decay_unit == la.DECAY_UNIT and 0 <= int(neuron.current_decay) <= la.DECAY_UNIT \
        and 0 <= int(neuron.voltage_decay) <= la.DECAY_UNIT


def population_window(pending: PendingSums, neuron: CubaLIF, start: la.CubaState, timesteps: int,
                      counts: np.ndarray, threads: int) -> np.ndarray:
    """The population's spikes (T, batch, N) uint8 over its window from the state ``start`` (the same for every
    sample, int64 of the population's shape), its spike counts added to ``counts`` (T, batch):
    ``_cuba.population_window``."""
    from snncc.targets.loihi import _cuba

    sums = pending.sums
    if sums.dtype != np.float32 or sums.strides[-1] != sums.itemsize:
        sums = np.ascontiguousarray(sums, dtype=np.float32)
    batch, n = sums.shape[1], sums.shape[2]
    spikes = np.empty((timesteps, batch, n), np.uint8)
    bias = None if pending.bias is None else np.ascontiguousarray(pending.bias, dtype=np.int32).ravel()
    u0 = np.ascontiguousarray(start.u, dtype=np.int64).reshape(n)
    v0 = np.ascontiguousarray(start.v, dtype=np.int64).reshape(n)
    _cuba.population_window(sums, pending.weight_exp, bias, u0, v0, int(neuron.current_decay),
                            int(neuron.voltage_decay), int(neuron.bias), int(neuron.threshold),
                            neuron.reset == "subtract", spikes, counts, threads)
    return spikes
