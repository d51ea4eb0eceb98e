"""``canonicalize``: rewrite an imported ANN into the small canonical form the conversion passes expect.

Local rewrites, each a pattern, a check and a rewrite, applied until none matches:

- drop ``Identity`` (ONNX Identity, inference Dropout, float casts);
- merge consecutive ``Affine`` ops;
- fold an ``Affine`` that follows a Conv2d/Linear into its weights and bias (BatchNorm after conv, MatMul + Add,
  a bias written as a separate Add): ``W'[o] = W[o] * a[o]``, ``b' = b * a + c``; needs a per-output-channel affine;
- fold an ``Affine`` that precedes a Conv2d/Linear (input normalization ``(x - mean) / std``, BatchNorm before a
  layer): ``W'[o, i] = W[o, i] * a[i]``, ``b'[o] = b[o] + sum_i W[o, i] * c[i]``; zero padding of the affine's
  output becomes padding of its input with ``(0 - c) / a`` (``Conv2d.pad_value``), so the fold is exact at borders;
- fold a zero ``Pad2d`` into the following Conv2d's padding;
- merge consecutive ``Slice`` ops (exporters write one per axis): slicing ``[a1::c1]`` then ``[a2::c2]`` takes
  ``a1 + c1 a2, a1 + c1 (a2 + c2), ...``, the slice ``[a1 + c1 a2 :: c1 c2]``;
- move ``MaxPool2d`` behind a following monotone element-wise activation (``op.monotone``: ReLU, Clip, LeakyReLU
  with ``alpha >= 0``, Sigmoid, Tanh, HardSigmoid with ``alpha >= 0``): ``act(max(x)) = max(act(x))`` for
  non-decreasing ``act``, which puts every pooling after its population in the SNN. Non-monotone activations (SiLU,
  GELU, HardSwish) keep the pooling in front.

The result computes the same function as the input graph (checked against onnxruntime in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.ir import ANN, Graph, ops
from snncc.passes.base import Pass, PassContext, register


def _only_user(graph: Graph, node: str) -> str | None:
    users = graph.users(node)
    if len(users) == 1 and node not in graph.outputs:
        return users[0][0]
    return None


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a (channels,) vector if it only varies along the first per-sample axis, else None."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), dtype=np.float64)
    if value.ndim == rank and value.shape[0] == channels and all(d == 1 for d in value.shape[1:]):
        return value.reshape(channels).astype(np.float64)
    if rank == 1 and value.shape == (channels,):
        return value.astype(np.float64)
    return None


def _fold_affine_after(graph: Graph, layer: str, affine: str, types: dict) -> bool:
    op, aff = graph.op(layer), graph.op(affine)
    out_channels = op.weight.shape[0]
    rank = len(types[layer].shape)
    scale, shift = _per_channel(aff.scale, out_channels, rank), _per_channel(aff.shift, out_channels, rank)
    if scale is None or shift is None:
        return False
    weight = op.weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (op.weight.ndim - 1))
    bias = (np.zeros(out_channels) if op.bias is None else op.bias.astype(np.float64)) * scale + shift
    graph.replace(layer, op.replace(weight=weight, bias=bias))
    graph.bypass(affine)
    return True


def _fold_affine_before(graph: Graph, affine: str, layer: str, types: dict) -> bool:
    op, aff = graph.op(layer), graph.op(affine)
    in_shape = types[affine].shape
    if isinstance(op, ops.Linear):
        scale = np.broadcast_to(aff.scale, in_shape).astype(np.float64)
        shift = np.broadcast_to(aff.shift, in_shape).astype(np.float64)
        weight = op.weight.astype(np.float64)
        bias = (np.zeros(weight.shape[0]) if op.bias is None else op.bias.astype(np.float64)) + weight @ shift
        graph.replace(layer, op.replace(weight=weight * scale[None, :], bias=bias))
        graph.bypass(affine)
        return True
    channels = in_shape[0]
    scale, shift = _per_channel(aff.scale, channels, 3), _per_channel(aff.shift, channels, 3)
    if scale is None or shift is None:
        return False
    padded = any(op.padding)
    if padded and np.any(scale == 0):
        return False
    out_ch, per_group, kh, kw = op.weight.shape
    groups = op.groups
    weight = op.weight.astype(np.float64).reshape(groups, out_ch // groups, per_group, kh, kw)
    scale_g, shift_g = scale.reshape(groups, 1, per_group, 1, 1), shift.reshape(groups, 1, per_group, 1, 1)
    bias = (np.zeros(out_ch) if op.bias is None else op.bias.astype(np.float64))
    bias = bias + (weight * shift_g).sum(axis=(2, 3, 4)).reshape(out_ch)
    pad_value = op.pad_value
    if padded:
        current = np.zeros(channels) if op.pad_value is None else op.pad_value.astype(np.float64)
        pad_value = (current - shift) / scale
        if np.all(pad_value == 0):
            pad_value = None
    graph.replace(layer, op.replace(weight=(weight * scale_g).reshape(op.weight.shape), bias=bias,
                                    pad_value=pad_value))
    graph.bypass(affine)
    return True


def _merge_affines(graph: Graph, first: str, second: str) -> bool:
    a, b = graph.op(first), graph.op(second)
    merged = ops.Affine(scale=a.scale.astype(np.float64) * b.scale,
                        shift=a.shift.astype(np.float64) * b.scale + b.shift)
    graph.replace(second, merged)
    graph.bypass(first)
    return True


def _fold_pad(graph: Graph, pad: str, conv: str) -> bool:
    p, op = graph.op(pad), graph.op(conv)
    if p.value != 0 or op.pad_value is not None:
        return False
    padding = tuple(a + b for a, b in zip(op.padding, p.padding))
    graph.replace(conv, op.replace(padding=padding))
    graph.bypass(pad)
    return True


def _merge_slices(graph: Graph, first: str, second: str, types: dict) -> bool:
    a, b = graph.op(first), graph.op(second)
    starts = tuple(s1 + c1 * s2 for s1, c1, s2 in zip(a.starts, a.steps, b.starts))
    steps = tuple(c1 * c2 for c1, c2 in zip(a.steps, b.steps))
    stops = tuple(s + c * (n - 1) + 1 for s, c, n in zip(starts, steps, types[second].shape))
    graph.replace(second, ops.Slice(starts=starts, stops=stops, steps=steps))
    graph.bypass(first)
    return True


def _swap_pool_activation(graph: Graph, pool: str, act: str) -> bool:
    if not graph.op(act).monotone:
        return False
    (source,) = graph.inputs(pool)
    graph.set_inputs(act, [source])
    graph.set_inputs(pool, [act])
    graph.rewire(act, pool)  # the activation's users (and output slot) now read the pool
    return True


def _rewrite_once(graph: Graph) -> bool:
    types = graph.types()
    for node in graph.topological_order():
        op = graph.op(node)
        if isinstance(op, ops.Identity):
            graph.bypass(node)
            return True
        user = _only_user(graph, node)
        if user is None:
            continue
        user_op = graph.op(user)
        if isinstance(op, ops.Affine) and isinstance(user_op, ops.Affine):
            return _merge_affines(graph, node, user)
        if isinstance(op, (ops.Conv2d, ops.Linear)) and isinstance(user_op, ops.Affine):
            if _fold_affine_after(graph, node, user, types):
                return True
        if isinstance(op, ops.Affine) and isinstance(user_op, (ops.Conv2d, ops.Linear)):
            if _fold_affine_before(graph, node, user, types):
                return True
        if isinstance(op, ops.Slice) and isinstance(user_op, ops.Slice):
            return _merge_slices(graph, node, user, types)
        if isinstance(op, ops.Pad2d) and isinstance(user_op, ops.Conv2d):
            if _fold_pad(graph, node, user):
                return True
        if isinstance(op, ops.MaxPool2d) and isinstance(user_op, ops.PointwiseActivation):
            if _swap_pool_activation(graph, node, user):
                return True
    return False


@register
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Fold BatchNorm/affines and input scaling into layers, drop identities, order pooling after activations."""

    name = "canonicalize"
    requires_level = ANN

    def run(self, graph: Graph, context: PassContext) -> bool:
        changed = False
        while _rewrite_once(graph):
            changed = True
        return graph.remove_dead() or changed
