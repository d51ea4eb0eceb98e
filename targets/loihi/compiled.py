"""The compiled path of the Loihi emulator (:class:`~snncc.targets.loihi.emulator.LoihiEmulator`): the same
integers as its numpy path, which stays the specification and the fallback where nothing is built.

Two things make it fast:

- **one synaptic sum per source**: the legalization splits a layer into blocks of output channels (one per core),
  each a synaptic node of the same source; the blocks' sums ``sum_j q_ij s_j`` are computed by one event-driven
  kernel of the Cython runtime over the blocks' weights side by side (one pass over the source's spikes instead of
  one per block), and each block reads its channels. The sums are integers held exactly in float32 (below ``2^24``,
  checked per layer), so how they are grouped changes none of them; the synaptic operations are the blocks'
  fan-outs added together, integers in float64. Blocks of output *rows* (Loihi 1's convolutions whose channel
  does not fit a core: each block a convolution over a ``Slice`` of the input rows under it) are regrouped the
  same way: their sums are rows ``[R0, R0 + h)`` of one convolution over the whole source (the layer's padding
  restored, each distinct channel's weights once), so neither the slices nor one kernel call per block are run;
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
    """A synaptic node's share of its group's sums: channels ``[start, stop)`` of ``group`` (and of a block of
    output rows, its rows ``[rows[0], rows[1])``)."""

    group: int
    start: int
    stop: int
    rows: tuple[int, int] | None = None


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


@dataclass(frozen=True)
class RowBlock:
    """A block of output rows: a Conv2d (one group) over a ``Slice`` of input rows ``[a, b)`` of ``source`` (every
    channel, every column), padded at the top only where ``a`` is the first row and at the bottom only where ``b``
    is past the last (so that its padding is the padding of the whole layer, not rows of the source)."""

    source: str
    sliced: str
    a: int
    b: int


def _row_block(graph: Graph, node: str, op: ops.Op, types: dict, constant: set[str]) -> RowBlock | None:
    if not isinstance(op, ops.Conv2d) or op.groups != 1:
        return None
    (sliced,) = graph.inputs(node)
    slice_op = graph.op(sliced)
    if not isinstance(slice_op, ops.Slice) or sliced in graph.outputs:
        return None
    (source,) = graph.inputs(sliced)
    shape = tuple(types[source].shape)
    if source in constant or len(shape) != 3 or len(slice_op.starts) != 3:
        return None
    (c0, c1, cs), (a, b, rs), (w0, w1, ws) = (slice(*span).indices(n) for span, n in
                                              zip(zip(slice_op.starts, slice_op.stops, slice_op.steps), shape))
    if (c0, c1, cs, w0, w1, ws, rs) != (0, shape[0], 1, 0, shape[2], 1, 1):
        return None
    top, _, bottom, _ = op.padding
    if (top and a != 0) or (bottom and b != shape[1]):
        return None
    return RowBlock(source, sliced, a, b)


def _row_key(op: ops.Conv2d, rows: RowBlock):
    pad = None if op.pad_value is None else np.asarray(op.pad_value, np.float32).tobytes()
    return ("rows", rows.source, op.weight.shape[1:], tuple(op.stride), tuple(op.dilation),
            (op.padding[1], op.padding[3]), pad)


def _whole_layer(members: list[str], float_ops: dict[str, ops.Op], rows: dict[str, RowBlock], types: dict):
    """The convolution over the whole source whose rows are the row blocks ``members``' sums: its op (each
    distinct channel's weights once), output shape, and each member's channels and first output row; None where
    the blocks are not rows of one convolution (then each runs on its own slice).

    A block whose slice starts at input row ``a`` with top padding ``p`` reads, for its output row ``r``, input rows
    ``a - p + stride r + dilation k``; the whole layer's output row ``R`` reads ``stride R - P + dilation k``; so
    the block is the layer's rows from ``R0 = (a - p + P) / stride`` on, ``P`` the largest top padding of the
    blocks (the first block's, the layer's own)."""
    first = float_ops[members[0]]
    source_shape = types[rows[members[0]].source].shape
    top = max(float_ops[n].padding[0] for n in members)
    bottom = max(float_ops[n].padding[2] for n in members)
    stride, dilation, kh = first.stride[0], first.dilation[0], first.weight.shape[2]
    height = (source_shape[1] + top + bottom - dilation * (kh - 1) - 1) // stride + 1
    channels: dict[bytes, tuple[int, int]] = {}
    weights, layout = [], {}
    for node in members:
        op, block, (_, h, w) = float_ops[node], rows[node], types[node].shape
        offset = block.a - op.padding[0] + top
        if offset % stride or offset // stride + h > height or w != types[members[0]].shape[2]:
            return None
        key = op.weight.tobytes()
        if key not in channels:
            start = sum(len(x) for x in weights)
            channels[key] = (start, start + op.weight.shape[0])
            weights.append(op.weight)
        layout[node] = (channels[key], (offset // stride, offset // stride + h))
    merged = first.replace(weight=np.concatenate(weights), bias=None,
                           padding=(top, first.padding[1], bottom, first.padding[3]))
    return merged, (merged.weight.shape[0], height, types[members[0]].shape[2]), layout


def _source_fan_out(members: list[str], fan_out: dict[str, np.ndarray], rows: dict[str, RowBlock],
                    source_shape: tuple[int, ...]) -> np.ndarray:
    """The row blocks' fan-outs added at the source neurons their slices read (the synaptic operations one spike
    of the source costs, the blocks together)."""
    channels, height, width = source_shape
    total = np.zeros(source_shape, np.float64)
    for node in members:
        block = rows[node]
        total[:, block.a:block.b, :] += np.asarray(fan_out[node], np.float64).reshape(channels, block.b - block.a,
                                                                                       width)
    return total.ravel()


class Synapses:
    """The sums of the emulator's synaptic nodes, one kernel per group of blocks: event-driven for spike-fed
    nodes, the numpy kernel (:func:`snncc.runtime.kernels.apply`) once per input for those of the graded input
    (``constant``: the same payload at every step)."""

    def __init__(self, graph: Graph, float_ops: dict[str, ops.Op], types: dict, fan_out: dict[str, np.ndarray],
                 threads: int, constant: set[str]) -> None:
        from snncc.runtime.cython_engine import _EventSynapse

        groups: dict = {}
        rows: dict[str, RowBlock] = {}
        for node, op in float_ops.items():
            src = graph.inputs(node)[0]
            block = _row_block(graph, node, op, types, constant)
            if block is not None:
                rows[node] = block
                key = _row_key(op, block)
            else:
                key = _merge_key(op, src) if src in constant or _EventSynapse.supports(op) else None
            groups.setdefault(key if key is not None else ("single", node), []).append(node)
        self.blocks: dict[str, Block] = {}
        self.plans: list = []
        self.sources: list[str] = []
        self.constant = constant
        for key, members in groups.items():
            whole = _whole_layer(members, float_ops, rows, types) if key[0] == "rows" else None
            if whole is not None:
                self._add_rows(members, whole, rows, types, fan_out, threads)
            elif key[0] == "rows":  # not rows of one convolution: each block on its own slice
                for node in members:
                    self._add_group([node], graph.inputs(node)[0], float_ops, types, fan_out, threads)
            else:
                self._add_group(members, graph.inputs(members[0])[0], float_ops, types, fan_out, threads)
        # The slices that only row blocks read: their blocks take the whole source, so nobody needs them.
        regrouped = {node for node, block in self.blocks.items() if block.rows is not None}
        self.bypassed = {rows[node].sliced for node in regrouped
                         if all(user in regrouped for user, _ in graph.users(rows[node].sliced))}

    def _add_group(self, members: list[str], src: str, float_ops: dict[str, ops.Op], types: dict,
                   fan_out: dict[str, np.ndarray], threads: int) -> None:
        """Blocks of channels of one source, side by side."""
        index = len(self.plans)
        weights, start = [], 0
        for node in members:
            channels = float_ops[node].weight.shape[0]
            self.blocks[node] = Block(index, start, start + channels)
            weights.append(float_ops[node].weight)
            start += channels
        merged = float_ops[members[0]].replace(weight=np.concatenate(weights), bias=None)
        out_shape = (start,) + tuple(types[members[0]].shape[1:])
        self._add_plan(merged, src, out_shape, np.sum([fan_out[n] for n in members], axis=0), types, threads)

    def _add_rows(self, members: list[str], whole: tuple, rows: dict[str, RowBlock], types: dict,
                  fan_out: dict[str, np.ndarray], threads: int) -> None:
        """Blocks of rows of one source: one convolution over all of it (:func:`_whole_layer`)."""
        merged, out_shape, layout = whole
        src = rows[members[0]].source
        for node, ((start, stop), span) in layout.items():
            self.blocks[node] = Block(len(self.plans), start, stop, span)
        fan = _source_fan_out(members, fan_out, rows, tuple(types[src].shape))
        self._add_plan(merged, src, out_shape, fan, types, threads)

    def _add_plan(self, merged: ops.Op, src: str, out_shape: tuple[int, ...], fan: np.ndarray, types: dict,
                  threads: int) -> None:
        """A group's kernel: event-driven for spike-fed sources the Cython kernel takes, else the numpy kernel."""
        from snncc.runtime.cython_engine import _EventSynapse

        plan = _EventSynapse(merged, tuple(types[src].shape), out_shape, fan, threads) \
            if src not in self.constant and _EventSynapse.supports(merged) else None
        self.plans.append((plan, merged, fan, out_shape))
        self.sources.append(src)

    def __contains__(self, node: str) -> bool:
        return node in self.blocks

    def source(self, node: str) -> str:
        """The node whose values ``node``'s sums are computed from (a row block's: the source of its slice)."""
        return self.sources[self.blocks[node].group]

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
        if block.rows is not None:  # one channel's rows are contiguous: a view, (T, batch, rows * width)
            return total[:, :, block.start:block.stop, block.rows[0]:block.rows[1]].reshape(T, batch, -1)
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
