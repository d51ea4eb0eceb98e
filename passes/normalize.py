"""``normalize``: data-based weight normalization (Diehl et al. 2015; Rueckauer et al. 2017).

Calibration data run through the ANN; for every ReLU/Clip the scale ``lambda`` is the ``percentile``-th percentile
of its positive activations (``percentile=100`` is the maximum), per layer or per channel. Every tensor then gets a
scale ``s`` with ``ANN value = s * normalized value``, chosen so that each activation's scale is its ``lambda``:
a layer feeding an activation with scale ``lambda_l`` from an input of scale ``s_in`` becomes

    W'[o, i] = W[o, i] * s_in[i] / lambda_l[o],        b'[o] = b[o] / lambda_l[o]

(Rueckauer et al. 2017, Eq. 6, with per-channel scales). Pooling, reshapes, slices and ReLU keep scales (they are
positively homogeneous; a slice keeps the scales of the elements it keeps). A channel padding under a per-channel
scale gives its new channels scale 1: their constant needs no rescaling, and a zero stays zero under any later
rescale. Where two scales meet (Add, an activation not fed by a layer) an ``Affine`` rescales; graph outputs are
rescaled to ``s = 1``. The normalized ANN computes the same function as before (a Clip bound
becomes ``max / lambda``), and after conversion an IF neuron with threshold 1 saturates exactly where the
normalized activation reaches 1.

Scales pass through an activation only if it is positively homogeneous, ``f(a x) = a f(x)`` for ``a > 0`` (ReLU,
LeakyReLU; Clip with its bounds divided by ``lambda``). Any other element-wise activation (Sigmoid, Tanh,
HardSigmoid, HardSwish, SiLU, GELU) is a scale barrier: its input is brought back to scale 1 (the layer feeding it
keeps its original units) and its output has scale 1, so it computes exactly its original function. Such layers
are left for few-spike coding, which fits its neurons in the original units; rate coding refuses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from snncc.errors import PassError
from snncc.ir import ANN, Graph, ops
from snncc.passes.base import Pass, PassContext, register
from snncc.runtime import run_analog

GRANULARITIES = ("layer", "channel")

#: The activations whose scale ``lambda`` is measured, and the cap of that scale: a Clip's upper bound (its
#: normalized bound ``max / lambda`` is then at least 1). A Clip keeps scalar bounds, so its scale is per layer
#: (``max / lambda`` stays one number); a ReLU's may be per channel.
_NORMALIZED_ACTIVATIONS: dict[type[ops.Op], Callable[[ops.Op], tuple[float, bool]]] = {
    ops.Relu: lambda op: (np.inf, True),
    ops.Clip: lambda op: (op.max, False),
}
"""activation class -> ``op -> (cap of lambda, whether lambda may be per channel)``."""


def activation_scales(graph: Graph, x: np.ndarray, percentile: float, granularity: str,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """``lambda`` of every ReLU/Clip node: a scalar (layer) or a per-channel array broadcastable to its shape."""
    nodes = graph.find(tuple(_NORMALIZED_ACTIVATIONS))
    collected: dict[str, list[np.ndarray]] = {n: [] for n in nodes}

    def keep(values: dict[str, np.ndarray]) -> None:
        for n, v in values.items():
            collected[n].append(v.astype(np.float32, copy=False))

    for start in tqdm(range(0, len(x), 1024), desc="calibrating", unit="chunk", disable=not progress, leave=False):
        run_analog(graph, x[start:start + 1024], batch_size=128, record=nodes, on_batch=keep)
    types = graph.types()
    scales = {}
    for n in nodes:
        acts = np.concatenate(collected.pop(n))
        op = graph.op(n)
        cap, per_channel_allowed = _NORMALIZED_ACTIVATIONS[type(op)](op)
        if granularity == "layer" or not per_channel_allowed:
            lam = _positive_percentile(acts.reshape(-1), percentile)
            scales[n] = np.array(min(lam, cap) if lam > 0 else 1.0, dtype=np.float64)
        else:
            channels = types[n].shape[0]
            per_channel = np.moveaxis(acts, 1, 0).reshape(channels, -1)
            lam = np.array([_positive_percentile(c, percentile) for c in per_channel])
            fallback = lam[lam > 0].max() if np.any(lam > 0) else 1.0
            lam = np.minimum(np.where(lam > 0, lam, fallback), cap)
            scales[n] = lam.reshape((channels,) + (1,) * (len(types[n].shape) - 1))
    return scales


def _positive_percentile(values: np.ndarray, percentile: float) -> float:
    positive = values[values > 0]
    if positive.size == 0:
        return 0.0
    return float(np.percentile(positive, percentile)) if percentile < 100 else float(positive.max())


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        return False
    return bool(np.allclose(np.broadcast_to(a, shape), np.broadcast_to(b, shape), rtol=1e-12, atol=0))


def _channel_scale(scale: np.ndarray, shape: tuple[int, ...], node: str) -> np.ndarray:
    """A scale as a per-channel vector; raises if it varies inside a channel."""
    full = np.broadcast_to(scale, shape)
    per_channel = full.reshape(shape[0], -1)
    if not np.allclose(per_channel, per_channel[:, :1]):
        raise PassError(f"node {node!r}: the input scale varies within channels and cannot be folded into weights")
    return per_channel[:, 0]


class _Rescaler:
    """Walks the graph once in topological order, rewriting weights and tracking each node's scale."""

    def __init__(self, graph: Graph, lambdas: dict[str, np.ndarray]) -> None:
        self.graph, self.lambdas = graph, lambdas
        self.types = graph.types()
        self.scale: dict[str, np.ndarray] = {}

    def target(self, node: str) -> np.ndarray | None:
        """The scale a layer's output should have: its only user's lambda, if that user is an activation."""
        users = self.graph.users(node)
        if len(users) == 1 and node not in self.graph.outputs and users[0][0] in self.lambdas:
            return self.lambdas[users[0][0]]
        return None

    def rescale_input(self, node: str, port: int, have: np.ndarray, want: np.ndarray) -> None:
        """Insert an Affine so that operand ``port`` of ``node`` arrives in scale ``want`` instead of ``have``."""
        operands = self.graph.inputs(node)
        shape = self.types[operands[port]].shape
        # _compact keeps a scalar factor scalar; per-channel factors broadcast to the operand's shape.
        factor = np.broadcast_to(np.asarray(have, np.float64) / np.asarray(want, np.float64), shape)
        fix = self.graph.add(ops.Affine(scale=_compact(factor), shift=np.zeros(())), [operands[port]],
                             name=f"{node}.rescale", created_by="normalize")
        operands[port] = fix
        self.graph.set_inputs(node, operands)

    def visit(self, node: str) -> None:
        """Rewrite ``node`` for the scales of its operands and record the scale of its output."""
        op = self.graph.op(node)
        rule = next((SCALE_RULES[cls] for cls in type(op).__mro__ if cls in SCALE_RULES), None)
        if rule is None:
            raise PassError(f"node {node!r}: normalize does not handle {op.kind}")
        self.scale[node] = rule(self, node, op, [self.scale[u] for u in self.graph.inputs(node)])

    def finish_outputs(self) -> None:
        for i, out in enumerate(list(self.graph.outputs)):
            if not _same(self.scale[out], np.ones(())):
                restore = self.graph.insert_after(out, ops.Affine(scale=_compact(self.scale[out]),
                                                                  shift=np.zeros(())),
                                                  name=f"{out}.rescale", created_by="normalize")
                self.graph.outputs[i] = restore


def _full_rank(scale: np.ndarray, rank: int) -> np.ndarray:
    """A scale with leading axes of size 1 added up to the per-sample ``rank`` (broadcasting is unchanged)."""
    scale = np.asarray(scale, np.float64)
    return scale.reshape((1,) * (rank - scale.ndim) + scale.shape)


def _slice_scale(scale: np.ndarray, op: ops.Slice, rank: int) -> np.ndarray:
    """The scale of a slice's output: the input scale sliced along the axes on which it varies."""
    if np.ndim(scale) == 0:
        return scale
    scale = _full_rank(scale, rank)
    index = tuple(slice(None) if n == 1 else slice(a, b, c)
                  for n, a, b, c in zip(scale.shape, op.starts, op.stops, op.steps))
    return scale[index]


def _compact(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    flat = value.reshape(-1)
    return np.asarray(flat[0]) if flat.size and np.all(flat == flat[0]) else value


# ---- scale rules: one per op class, ``rule(rescaler, node, op, operand scales) -> output scale`` ----------------
# A rule may rewrite the op (weights, bounds, padding constants) or insert an Affine before it; the table is looked
# up along the op class's MRO, so a rule for PointwiseActivation covers every activation without its own rule.

ScaleRule = Callable[[_Rescaler, str, ops.Op, list[np.ndarray]], np.ndarray]
_ONE = np.ones(())
_ONE.setflags(write=False)  # shared by every rule that returns scale 1


def _layer_scales(r: _Rescaler, node: str, op: ops.Conv2d | ops.Linear) -> tuple[np.ndarray, np.ndarray]:
    """The output scale of a Conv2d or Linear (its activation's lambda, else 1) and that scale per output."""
    s_out = r.target(node)
    s_out = _ONE if s_out is None else s_out
    out_vec = np.broadcast_to(np.asarray(s_out, np.float64).reshape(-1), (op.weight.shape[0],))
    return np.asarray(s_out, np.float64), out_vec


def _scale_linear(r: _Rescaler, node: str, op: ops.Linear, s_in: list[np.ndarray]) -> np.ndarray:
    s_out, out_vec = _layer_scales(r, node, op)
    in_vec = np.broadcast_to(s_in[0], r.types[r.graph.inputs(node)[0]].shape).astype(np.float64)
    weight = op.weight * in_vec[None, :] / out_vec[:, None]
    bias = None if op.bias is None else op.bias / out_vec
    r.graph.replace(node, op.replace(weight=weight, bias=bias))
    return s_out


def _scale_conv(r: _Rescaler, node: str, op: ops.Conv2d, s_in: list[np.ndarray]) -> np.ndarray:
    s_out, out_vec = _layer_scales(r, node, op)
    in_vec = _channel_scale(s_in[0], r.types[r.graph.inputs(node)[0]].shape, node)
    out_ch, per_group, kh, kw = op.weight.shape
    grouped = op.weight.astype(np.float64).reshape(op.groups, out_ch // op.groups, per_group, kh, kw)
    grouped = grouped * in_vec.reshape(op.groups, 1, per_group, 1, 1)
    weight = grouped.reshape(op.weight.shape) / out_vec[:, None, None, None]
    changes = {} if op.pad_value is None else {"pad_value": op.pad_value / in_vec}
    bias = None if op.bias is None else op.bias / out_vec
    r.graph.replace(node, op.replace(weight=weight, bias=bias, **changes))
    return s_out


def _scale_affine(r: _Rescaler, node: str, op: ops.Affine, s_in: list[np.ndarray]) -> np.ndarray:
    s_out = r.target(node)
    s_out = s_in[0] if s_out is None else s_out
    r.graph.replace(node, ops.Affine(scale=_compact(op.scale * np.asarray(s_in[0]) / s_out),
                                     shift=_compact(op.shift / np.asarray(s_out))))
    return np.asarray(s_out, np.float64)


def _scale_relu(r: _Rescaler, node: str, op: ops.Op, s_in: list[np.ndarray]) -> np.ndarray:
    """A normalized activation: its input arrives in the scale ``lambda`` of the activation, its output keeps it."""
    lam = r.lambdas[node]
    if not _same(s_in[0], lam):
        r.rescale_input(node, 0, s_in[0], lam)
    return lam


def _scale_clip(r: _Rescaler, node: str, op: ops.Clip, s_in: list[np.ndarray]) -> np.ndarray:
    lam = _scale_relu(r, node, op, s_in)
    r.graph.replace(node, ops.Clip(min=op.min / float(lam), max=op.max / float(lam)))
    return lam


def _keep_scale(r: _Rescaler, node: str, op: ops.Op, s_in: list[np.ndarray]) -> np.ndarray:
    """Positively homogeneous ops (pooling, LeakyReLU, Identity): the output has the input's scale."""
    return s_in[0]


def _scale_input(r: _Rescaler, node: str, op: ops.Input, s_in: list[np.ndarray]) -> np.ndarray:
    return _ONE


def _scale_pad2d(r: _Rescaler, node: str, op: ops.Pad2d, s_in: list[np.ndarray]) -> np.ndarray:
    if op.value and np.ndim(s_in[0]):
        raise PassError(f"node {node!r}: non-zero padding after a per-channel scale is not supported")
    r.graph.replace(node, ops.Pad2d(padding=op.padding, value=op.value / float(s_in[0])))
    return s_in[0]


def _scale_slice(r: _Rescaler, node: str, op: ops.Slice, s_in: list[np.ndarray]) -> np.ndarray:
    return _slice_scale(s_in[0], op, len(r.types[node].shape))


def _scale_channel_pad(r: _Rescaler, node: str, op: ops.ChannelPad, s_in: list[np.ndarray]) -> np.ndarray:
    if np.ndim(s_in[0]) == 0:
        r.graph.replace(node, op.replace(value=op.value / float(s_in[0])))
        return s_in[0]
    # The new channels hold value in scale 1: exact for any value, and 0 stays 0 under any rescale.
    scale = _full_rank(s_in[0], len(r.types[node].shape))
    scale = np.broadcast_to(scale, (r.types[r.graph.inputs(node)[0]].shape[0],) + scale.shape[1:])
    widths = [(op.before, op.after)] + [(0, 0)] * (scale.ndim - 1)
    return np.pad(scale, widths, constant_values=1.0)


def _scale_reshape(r: _Rescaler, node: str, op: ops.Op, s_in: list[np.ndarray]) -> np.ndarray:
    """Flatten and Reshape: a per-element scale is reshaped with the values."""
    if np.ndim(s_in[0]) == 0:
        return s_in[0]
    return np.broadcast_to(s_in[0], r.types[r.graph.inputs(node)[0]].shape).reshape(r.types[node].shape)


def _scale_add(r: _Rescaler, node: str, op: ops.Add, s_in: list[np.ndarray]) -> np.ndarray:
    if not _same(s_in[0], s_in[1]):
        r.rescale_input(node, 1, s_in[1], s_in[0])
    return s_in[0]


def _scale_concat(r: _Rescaler, node: str, op: ops.Concat, s_in: list[np.ndarray]) -> np.ndarray:
    if all(np.ndim(s) == 0 for s in s_in) and all(_same(s, s_in[0]) for s in s_in):
        return s_in[0]
    operands = r.graph.inputs(node)
    return np.concatenate([np.broadcast_to(s, r.types[u].shape) for s, u in zip(s_in, operands)], axis=op.axis)


def _scale_barrier(r: _Rescaler, node: str, op: ops.Op, s_in: list[np.ndarray]) -> np.ndarray:
    """An activation that is not positively homogeneous (and Softmax): original units in and out."""
    if not _same(s_in[0], _ONE):
        r.rescale_input(node, 0, s_in[0], _ONE)
    return _ONE


SCALE_RULES: dict[type[ops.Op], ScaleRule] = {
    ops.Input: _scale_input,
    ops.Conv2d: _scale_conv,
    ops.Linear: _scale_linear,
    ops.Affine: _scale_affine,
    ops.Relu: _scale_relu,
    ops.Clip: _scale_clip,
    ops.LeakyRelu: _keep_scale,
    ops.MaxPool2d: _keep_scale,
    ops.AvgPool2d: _keep_scale,
    ops.GlobalAvgPool: _keep_scale,
    ops.Identity: _keep_scale,
    ops.Pad2d: _scale_pad2d,
    ops.Slice: _scale_slice,
    ops.ChannelPad: _scale_channel_pad,
    ops.Flatten: _scale_reshape,
    ops.Reshape: _scale_reshape,
    ops.Add: _scale_add,
    ops.Concat: _scale_concat,
    ops.PointwiseActivation: _scale_barrier,
    ops.Softmax: _scale_barrier,
}
"""How each op class rewrites itself for its operands' scales and which scale its output has."""


@register
@dataclass(frozen=True)
class Normalize(Pass):
    """Data-based normalization: each activation's ``percentile`` on calibration data becomes threshold 1."""

    name = "normalize"
    requires_level = ANN
    percentile: float = 99.99
    granularity: str = "channel"

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise PassError(f"normalize: percentile must be in (0, 100], got {self.percentile}")
        if self.granularity not in GRANULARITIES:
            raise PassError(f"normalize: granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    def run(self, graph: Graph, context: PassContext) -> bool:
        if graph.attrs.get("normalization"):
            return False  # already normalized: normalizing twice would re-measure scales of 1
        if context.calibration is None or len(context.calibration) == 0:
            raise PassError("normalize needs calibration data; pass --calib DATA (a few thousand training "
                            "images are enough)")
        lambdas = activation_scales(graph, context.calibration, self.percentile, self.granularity,
                                    context.progress)
        rescaler = _Rescaler(graph, lambdas)
        for node in graph.topological_order():
            rescaler.visit(node)
            if node in lambdas:
                graph.meta.setdefault(node, {})["lambda"] = np.asarray(lambdas[node]).reshape(-1).tolist()
        rescaler.finish_outputs()
        graph.attrs["normalization"] = {"percentile": self.percentile, "granularity": self.granularity,
                                        "calibration_samples": int(len(context.calibration))}
        return True
