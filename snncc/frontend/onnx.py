"""ONNX frontend: import an ONNX model (any common exporter, opsets 7 and up) into an ANN-level graph.

The import is a single walk over the ONNX nodes in their (topological) file order:

- a node whose inputs are all constants (initializers, Constant nodes, and the shapes of dynamic tensors) is
  evaluated at import time with ONNX's reference evaluator: this constant-folds the shape subgraphs exporters emit
  (Shape, Gather, Slice, Unsqueeze, Concat, ConstantOfShape, Cast, ...);
- every other node is translated by the converter registered for its ``op_type`` in :data:`CONVERTERS`.

Before the walk, activations that exporters write as several nodes (SiLU as ``x * sigmoid(x)``, GELU through
``Erf``, HardSwish through ``HardSigmoid`` in old opsets) are fused into one node (:mod:`snncc.frontend.fusion`).

The batch axis is symbolic: ``Shape`` of a dynamic tensor reports :data:`BATCH` for axis 0, so a Reshape target
computed from it is recognised; a batch dimension fixed at 1 in the model is treated as the batch axis all the same.
Nodes that cannot be converted are collected and reported together in one :class:`UnsupportedModelError`, with a
summary per operator type first (:mod:`snncc.frontend.unsupported`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from snncc.errors import FrontendError, IRError, UnsupportedModelError
from snncc.frontend.fusion import PATTERN_ONLY_OPERATORS, PRODUCTS, fuse_activations
from snncc.frontend.unsupported import Problem, unsupported_model_error
from snncc.ir import ops
from snncc.ir.graph import Graph
from snncc.ir.types import TensorType

#: Stand-in for the symbolic batch size inside constant-folded shape computations.
BATCH = 1_000_003
MIN_OPSET = 7


class _Unsupported(Exception):
    """Raised by a converter; collected per node and reported together."""


@dataclass
class _Context:
    graph: Graph
    opset: int
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    dynamic: dict[str, str] = field(default_factory=dict)  # ONNX tensor name -> IR node id
    types: dict[str, TensorType] = field(default_factory=dict)  # IR node id -> type
    fixed_batch: bool = False

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.constants

    def const(self, node: onnx.NodeProto, index: int, default: np.ndarray | None = None) -> np.ndarray | None:
        if index >= len(node.input) or node.input[index] == "":
            return default
        name = node.input[index]
        if name not in self.constants:
            raise _Unsupported(f"input {index} ({name!r}) must be a constant (an initializer or Constant node)")
        return self.constants[name]

    def dyn(self, node: onnx.NodeProto, index: int = 0) -> str:
        name = node.input[index]
        if name not in self.dynamic:
            raise _Unsupported(f"input {index} ({name!r}) must be a tensor computed from the model input")
        return self.dynamic[name]

    def shape(self, ir_node: str) -> tuple[int, ...]:
        return self.types[ir_node].shape

    def add(self, node: onnx.NodeProto, op: ops.Op, inputs: list[str]) -> str:
        try:
            ir_node = self.graph.add(op, inputs, name=node.name or node.output[0], onnx_op=node.op_type)
            self.types[ir_node] = op.infer([self.types[u] for u in inputs])
        except IRError as exc:
            raise _Unsupported(str(exc)) from None
        return ir_node


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(value: object) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


# ---- converters ------------------------------------------------------------------------------------------------


def _spatial_padding(node: onnx.NodeProto, attrs: dict, size: tuple[int, int], kernel: tuple[int, int],
                     stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        pads = _ints(attrs.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4:
            raise _Unsupported(f"pads {pads} are not 2-D")
        return pads  # ONNX order (x1_begin, x2_begin, x1_end, x2_end) is (top, left, bottom, right)
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    begin, end = [], []
    for axis in range(2):
        out = -(-size[axis] // stride[axis])
        total = max((out - 1) * stride[axis] + (kernel[axis] - 1) * dilation[axis] + 1 - size[axis], 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return (begin[0], begin[1], end[0], end[1])


def _conv(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node, 0)
    weight, bias = ctx.const(node, 1), ctx.const(node, 2)
    if weight.ndim != 4:
        raise _Unsupported(f"only 2-D convolutions are supported (weight of rank {weight.ndim})")
    attrs = _attrs(node)
    stride, dilation = _ints(attrs.get("strides", (1, 1))), _ints(attrs.get("dilations", (1, 1)))
    padding = _spatial_padding(node, attrs, ctx.shape(x)[1:], weight.shape[2:], stride, dilation)
    return ctx.add(node, ops.Conv2d(weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation,
                                    groups=int(attrs.get("group", 1))), [x])


def _gemm(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node, 0)
    b, c = ctx.const(node, 1), ctx.const(node, 2)
    attrs = _attrs(node)
    if attrs.get("transA", 0):
        raise _Unsupported("transA=1 on the data input is not supported")
    weight = float(attrs.get("alpha", 1.0)) * (b if attrs.get("transB", 0) else b.T)
    bias = None
    if c is not None:
        c = float(attrs.get("beta", 1.0)) * np.asarray(c, dtype=np.float32)
        if c.size not in (1, weight.shape[0]):
            raise _Unsupported(f"bias C of shape {c.shape} varies across the batch")
        bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],))
    return ctx.add(node, ops.Linear(weight=weight, bias=bias), [x])


def _matmul(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node, 0)
    weight = ctx.const(node, 1)
    if weight.ndim != 2 or len(ctx.shape(x)) != 1:
        raise _Unsupported(f"only (batch, features) x (features, out) products are supported, got data "
                           f"{('N',) + ctx.shape(x)} and weight {weight.shape}")
    return ctx.add(node, ops.Linear(weight=weight.T), [x])


def _per_sample_constant(ctx: _Context, value: np.ndarray, x: str) -> np.ndarray:
    """A constant operand of a broadcasting binary op, as an array broadcastable to one sample."""
    value = np.asarray(value, dtype=np.float32)
    rank = len(ctx.shape(x)) + 1
    if value.ndim > rank or (value.ndim == rank and value.shape[0] != 1):
        raise _Unsupported(f"constant of shape {value.shape} broadcasts over the batch axis")
    return value[0] if value.ndim == rank else value


def _binary(ctx: _Context, node: onnx.NodeProto) -> str:
    a, b = node.input[0], node.input[1]
    kind = node.op_type
    if a in ctx.dynamic and b in ctx.dynamic:
        if kind != "Add":
            raise _Unsupported(f"{kind} of two computed tensors is not supported"
                               + (f"; snncc reads such products only as the activations {PRODUCTS}"
                                  if kind == "Mul" else ""))
        return ctx.add(node, ops.Add(), [ctx.dynamic[a], ctx.dynamic[b]])
    x_first = a in ctx.dynamic
    x = ctx.dyn(node, 0 if x_first else 1)
    c = _per_sample_constant(ctx, ctx.const(node, 1 if x_first else 0), x)
    one, zero = np.ones((), np.float32), np.zeros((), np.float32)
    if kind == "Add":
        scale, shift = one, c
    elif kind == "Sub":
        scale, shift = (one, -c) if x_first else (-one, c)
    elif kind == "Mul":
        scale, shift = c, zero
    elif x_first:  # Div
        if np.any(c == 0):
            raise _Unsupported("division by a constant that contains zeros")
        scale, shift = (1.0 / c).astype(np.float32), zero
    else:
        raise _Unsupported("division of a constant by a computed tensor is not supported")
    return ctx.add(node, ops.Affine(scale=scale, shift=shift), [x])


def _batch_norm(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node, 0)
    gamma, beta, mean, var = (ctx.const(node, i).astype(np.float64) for i in range(1, 5))
    attrs = _attrs(node)
    if attrs.get("training_mode", 0):
        raise _Unsupported("training_mode=1; export the model in eval mode")
    scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    trailing = (1,) * (len(ctx.shape(x)) - 1)
    return ctx.add(node, ops.Affine(scale=scale.reshape((-1,) + trailing),
                                    shift=(beta - mean * scale).reshape((-1,) + trailing)), [x])


def _relu(ctx: _Context, node: onnx.NodeProto) -> str:
    return ctx.add(node, ops.Relu(), [ctx.dyn(node)])


def _leaky_relu(ctx: _Context, node: onnx.NodeProto) -> str:
    return ctx.add(node, ops.LeakyRelu(alpha=float(_attrs(node).get("alpha", 0.01))), [ctx.dyn(node)])


def _activation(op: type[ops.Op]) -> Callable[[_Context, onnx.NodeProto], str]:
    """The converter of an ONNX activation without attributes."""
    return lambda ctx, node: ctx.add(node, op(), [ctx.dyn(node)])


def _hard_sigmoid(ctx: _Context, node: onnx.NodeProto) -> str:
    attrs = _attrs(node)
    op = ops.HardSigmoid(alpha=float(attrs.get("alpha", 0.2)), beta=float(attrs.get("beta", 0.5)))
    return ctx.add(node, op, [ctx.dyn(node)])


def _gelu(ctx: _Context, node: onnx.NodeProto) -> str:
    approximate = _attrs(node).get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return ctx.add(node, ops.Gelu(approximate=approximate), [ctx.dyn(node)])


def _swish(ctx: _Context, node: onnx.NodeProto) -> str:
    alpha = float(_attrs(node).get("alpha", 1.0))
    if not math.isclose(alpha, 1.0, rel_tol=1e-6):
        raise _Unsupported(f"Swish with alpha={alpha:g}, x * sigmoid({alpha:g} x), is not supported; only alpha=1 "
                           "(SiLU) is")
    return ctx.add(node, ops.Silu(), [ctx.dyn(node)])


def _clip(ctx: _Context, node: onnx.NodeProto) -> str:
    if ctx.opset < 11:
        attrs = _attrs(node)
        low, high = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
    else:
        low_c, high_c = ctx.const(node, 1), ctx.const(node, 2)
        low = -math.inf if low_c is None else float(low_c)
        high = math.inf if high_c is None else float(high_c)
    # Exporters write float32 extremes for "no bound".
    low = -math.inf if low <= -3.4e38 else low
    high = math.inf if high >= 3.4e38 else high
    return ctx.add(node, ops.Clip(min=low, max=high), [ctx.dyn(node)])


def _pool_geometry(ctx: _Context, node: onnx.NodeProto, x: str, allow_ceil: bool):
    attrs = _attrs(node)
    kernel = _ints(attrs["kernel_shape"])
    if len(kernel) != 2:
        raise _Unsupported(f"only 2-D pooling is supported (kernel_shape {kernel})")
    stride = _ints(attrs.get("strides", (1, 1)))
    if _ints(attrs.get("dilations", (1, 1))) != (1, 1):
        raise _Unsupported("dilated pooling is not supported")
    size = ctx.shape(x)[1:]
    padding = list(_spatial_padding(node, attrs, size, kernel, stride, (1, 1)))
    if attrs.get("ceil_mode", 0):
        for axis in range(2):
            padded = size[axis] + padding[axis] + padding[axis + 2]
            out = -(-(padded - kernel[axis]) // stride[axis]) + 1
            if (out - 1) * stride[axis] >= size[axis] + padding[axis]:
                out -= 1  # the last window must start inside the input or its leading padding
            extra = (out - 1) * stride[axis] + kernel[axis] - padded
            if extra > 0:
                if not allow_ceil:
                    raise _Unsupported("ceil_mode=1 changes the output size of this average pooling; "
                                       "re-export with ceil_mode=False or pad the input explicitly")
                padding[axis + 2] += extra
    return attrs, kernel, stride, tuple(padding)


def _max_pool(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    _, kernel, stride, padding = _pool_geometry(ctx, node, x, allow_ceil=True)
    return ctx.add(node, ops.MaxPool2d(kernel=kernel, stride=stride, padding=padding), [x])


def _avg_pool(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    attrs, kernel, stride, padding = _pool_geometry(ctx, node, x, allow_ceil=False)
    return ctx.add(node, ops.AvgPool2d(kernel=kernel, stride=stride, padding=padding,
                                       count_include_pad=bool(attrs.get("count_include_pad", 0))), [x])


def _global_avg_pool(ctx: _Context, node: onnx.NodeProto) -> str:
    return ctx.add(node, ops.GlobalAvgPool(), [ctx.dyn(node)])


def _global_max_pool(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    return ctx.add(node, ops.MaxPool2d(kernel=ctx.shape(x)[1:], stride=(1, 1)), [x])


def _reshape_to(ctx: _Context, node: onnx.NodeProto, x: str, full: tuple[int, ...]) -> str:
    """Reshape ``x`` to the full (batch-first) shape ``full``; the batch axis must stay first and unchanged."""
    sample = ctx.shape(x)
    if full == (-1,):
        raise _Unsupported(f"reshape to {list(full)} merges the batch axis with the other axes")
    if full and full[0] in (BATCH, -1) or (full and full[0] == 1 and ctx.fixed_batch):
        target = list(full[1:])
    else:
        raise _Unsupported(f"reshape to {full} changes the batch axis")
    if target.count(-1) > 1:
        raise _Unsupported(f"reshape target {full} has more than one -1")
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(sample) // max(known, 1)
    target = tuple(int(d) for d in target)
    if math.prod(target) != math.prod(sample):
        raise _Unsupported(f"cannot reshape per-sample shape {sample} to {target}")
    if target == sample:
        return x
    op = ops.Flatten() if len(target) == 1 else ops.Reshape(shape=target)
    return ctx.add(node, op, [x])


def _reshape(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    target = [int(d) for d in ctx.const(node, 1)] if ctx.opset >= 5 else list(_attrs(node)["shape"])
    full_in = (BATCH,) + ctx.shape(x)
    if not _attrs(node).get("allowzero", 0):
        target = [full_in[i] if d == 0 else d for i, d in enumerate(target)]
    return _reshape_to(ctx, node, x, tuple(target))


def _flatten(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    axis = int(_attrs(node).get("axis", 1))
    rank = len(ctx.shape(x)) + 1
    axis = axis + rank if axis < 0 else axis
    if axis < 1 or any(d != 1 for d in ctx.shape(x)[:axis - 1]):
        raise _Unsupported(f"Flatten with axis={axis} merges the batch axis with others")
    return _reshape_to(ctx, node, x, (BATCH, math.prod(ctx.shape(x))))


def _squeeze_unsqueeze(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    full = [BATCH, *ctx.shape(x)]
    axes = ctx.const(node, 1) if ctx.opset >= 13 else _attrs(node).get("axes")
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(full) if d == 1]
        axes = sorted(int(a) + len(full) if a < 0 else int(a) for a in np.atleast_1d(axes))
        if 0 in axes or any(full[a] != 1 for a in axes):
            raise _Unsupported(f"cannot squeeze axes {axes} of shape {tuple(full)}")
        out = [d for i, d in enumerate(full) if i not in axes]
    else:
        rank = len(full) + len(np.atleast_1d(axes))
        axes = sorted(int(a) + rank if a < 0 else int(a) for a in np.atleast_1d(axes))
        if 0 in axes:
            raise _Unsupported("unsqueezing in front of the batch axis is not supported")
        out = list(full)
        for a in axes:
            out.insert(a, 1)
    return _reshape_to(ctx, node, x, tuple(out))


def _concat(ctx: _Context, node: onnx.NodeProto) -> str:
    inputs = [ctx.dyn(node, i) for i in range(len(node.input))]
    rank = len(ctx.shape(inputs[0])) + 1
    axis = int(_attrs(node)["axis"])
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise _Unsupported("concatenation along the batch axis")
    return ctx.add(node, ops.Concat(axis=axis - 1), inputs)


def _identity(ctx: _Context, node: onnx.NodeProto) -> str:
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        if bool(np.asarray(ctx.const(node, 2))):
            raise _Unsupported("Dropout with training_mode=True; export the model in eval mode")
    return ctx.add(node, ops.Identity(), [ctx.dyn(node)])


def _cast(ctx: _Context, node: onnx.NodeProto) -> str:
    if _attrs(node).get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        raise _Unsupported("cast of a computed tensor to a non-float type")
    return ctx.add(node, ops.Identity(), [ctx.dyn(node)])


def _softmax(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    rank = len(ctx.shape(x)) + 1
    axis = int(_attrs(node).get("axis", -1 if ctx.opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0 or (ctx.opset < 13 and rank > 2 and axis != rank - 1):
        raise _Unsupported(f"softmax over axis {axis} of a rank-{rank} tensor is not supported")
    return ctx.add(node, ops.Softmax(axis=axis - 1, log=node.op_type == "LogSoftmax"), [x])


def _pad(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    attrs = _attrs(node)
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise _Unsupported(f"pad mode {mode!r}; only constant padding is supported")
    if ctx.opset < 11:
        pads, value = _ints(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = _ints(ctx.const(node, 1))
        value_c = ctx.const(node, 2)
        value = 0.0 if value_c is None or value_c.size == 0 else float(value_c)
        if len(node.input) > 3 and node.input[3]:
            raise _Unsupported("Pad with explicit axes is not supported")
    rank = len(ctx.shape(x)) + 1
    if rank not in (2, 4) or len(pads) != 2 * rank or pads[0] or pads[rank] or min(pads) < 0:
        raise _Unsupported(f"only non-negative padding of the channel and spatial axes of (N, C, H, W) or the "
                           f"features of (N, F) is supported, got pads {pads}")
    if pads[1] or pads[rank + 1]:  # the channel axis: the zero-padded shortcut of CIFAR ResNets
        x = ctx.add(node, ops.ChannelPad(before=pads[1], after=pads[rank + 1], value=value), [x])
        if rank == 2 or not any(pads[i] for i in (2, 3, 6, 7)):
            return x
    return ctx.add(node, ops.Pad2d(padding=(pads[2], pads[3], pads[6], pads[7]), value=value), [x])


def _slice(ctx: _Context, node: onnx.NodeProto) -> str:
    """ONNX Slice with constant starts/ends/axes/steps; the batch axis must be kept whole, steps positive."""
    x = ctx.dyn(node)
    full = (BATCH,) + ctx.shape(x)
    if ctx.opset < 10:
        attrs = _attrs(node)
        starts, ends = _ints(attrs["starts"]), _ints(attrs["ends"])
        axes = _ints(attrs.get("axes", range(len(starts))))
        steps = (1,) * len(starts)
    else:
        starts, ends = _ints(ctx.const(node, 1)), _ints(ctx.const(node, 2))
        axes = _ints(ctx.const(node, 3, np.arange(len(starts))))
        steps = _ints(ctx.const(node, 4, np.ones(len(starts), np.int64)))
    begin, stop, stride = [0] * len(full), list(full), [1] * len(full)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + len(full) if axis < 0 else axis
        if not 0 <= axis < len(full):
            raise _Unsupported(f"slice axis {axis} out of range for rank {len(full)}")
        if step <= 0:
            raise _Unsupported(f"slice step {step} on axis {axis}; only positive steps are supported")
        size = full[axis]
        start, end = (max(0, min(v + size if v < 0 else v, size)) for v in (start, end))
        if axis == 0:
            if start != 0 or step != 1 or end < (1 if ctx.fixed_batch else BATCH):
                raise _Unsupported("slicing the batch axis is not supported")
            continue
        if end <= start:
            raise _Unsupported(f"slice [{start}:{end}:{step}] of axis {axis} (size {size}) is empty")
        last = start + (end - 1 - start) // step * step  # the last index taken: equal slices get equal stops
        begin[axis], stop[axis], stride[axis] = start, last + 1, step
    if begin[1:] == [0] * len(ctx.shape(x)) and tuple(stop[1:]) == ctx.shape(x) and set(stride) == {1}:
        return x
    return ctx.add(node, ops.Slice(starts=begin[1:], stops=stop[1:], steps=stride[1:]), [x])


def _reduce_mean(ctx: _Context, node: onnx.NodeProto) -> str:
    """ReduceMean over the two spatial axes (how ``torch.export`` writes global average pooling)."""
    x = ctx.dyn(node)
    attrs = _attrs(node)
    rank = len(ctx.shape(x)) + 1
    axes = ctx.const(node, 1) if ctx.opset >= 18 else attrs.get("axes")
    if axes is None or np.size(axes) == 0:
        raise _Unsupported("ReduceMean over all axes (including the batch axis) is not supported")
    axes = sorted(int(a) + rank if a < 0 else int(a) for a in np.atleast_1d(axes))
    if rank != 4 or axes != [2, 3]:
        raise _Unsupported(f"only ReduceMean over the spatial axes of (N, C, H, W) is supported, got axes {axes} "
                           f"of rank {rank}")
    pooled = ctx.add(node, ops.GlobalAvgPool(), [x])
    if attrs.get("keepdims", 1):
        return pooled
    return _reshape_to(ctx, node, pooled, (BATCH, ctx.shape(x)[0]))


def _transpose(ctx: _Context, node: onnx.NodeProto) -> str:
    x = ctx.dyn(node)
    perm = _attrs(node).get("perm")
    if perm is None or tuple(perm) != tuple(range(len(ctx.shape(x)) + 1)):
        raise _Unsupported(f"transposition {perm} of a computed tensor is not supported")
    return ctx.add(node, ops.Identity(), [x])


CONVERTERS: dict[str, Callable[[_Context, onnx.NodeProto], str]] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary,
    "BatchNormalization": _batch_norm,
    "Relu": _relu, "Clip": _clip, "LeakyRelu": _leaky_relu,
    "Sigmoid": _activation(ops.Sigmoid), "Tanh": _activation(ops.Tanh), "HardSigmoid": _hard_sigmoid,
    "HardSwish": _activation(ops.HardSwish), "Gelu": _gelu, "Swish": _swish,
    "MaxPool": _max_pool, "AveragePool": _avg_pool, "GlobalAveragePool": _global_avg_pool,
    "GlobalMaxPool": _global_max_pool,
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze_unsqueeze, "Unsqueeze": _squeeze_unsqueeze,
    "Concat": _concat, "Identity": _identity, "Dropout": _identity, "Cast": _cast,
    "Softmax": _softmax, "LogSoftmax": _softmax, "Pad": _pad, "Transpose": _transpose,
    "Slice": _slice, "ReduceMean": _reduce_mean,
}

# Outputs beyond the first that a converter ignores, when nothing reads them.
_IGNORABLE_EXTRA_OUTPUTS = {"Dropout", "BatchNormalization", "MaxPool"}


# ---- the import ------------------------------------------------------------------------------------------------


def load_model(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Read and check an ONNX model; a truncated or invalid file raises FrontendError."""
    if isinstance(source, onnx.ModelProto):
        model = source
        where = model.graph.name or "<model>"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise FrontendError(f"{path}: no such ONNX file")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf raises its own DecodeError, onnx raises others
            raise FrontendError(f"{path}: not a readable ONNX model (truncated or corrupt?): {exc}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise FrontendError(f"{where}: the ONNX checker rejects this model: {str(exc).splitlines()[0]}") from None
    return model


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise FrontendError("the model imports no default-domain (ai.onnx) opset")


def _graph_input(model: onnx.ModelProto, initializers: set[str]) -> tuple[str, tuple[int, ...], bool]:
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise FrontendError(f"snncc compiles models with exactly one input; this one has {len(inputs)}: "
                            f"{[i.name for i in inputs]}")
    value = inputs[0]
    tensor = value.type.tensor_type
    if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        raise FrontendError(f"input {value.name!r} has element type "
                            f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}; snncc needs float inputs")
    dims = tensor.shape.dim
    if len(dims) not in (2, 4):
        raise FrontendError(f"input {value.name!r} has rank {len(dims)}; snncc compiles models whose input is "
                            "(batch, channels, height, width) images or (batch, features) vectors")
    sample = []
    for i, d in enumerate(dims[1:], start=1):
        if not d.HasField("dim_value") or d.dim_value < 1:
            raise FrontendError(f"input {value.name!r}: axis {i} has no fixed size ({d.dim_param or '?'}); "
                                "export the model with fixed channel and spatial sizes (only the batch may vary)")
        sample.append(int(d.dim_value))
    fixed_batch = dims[0].HasField("dim_value") and dims[0].dim_value == 1
    return value.name, tuple(sample), fixed_batch


def import_onnx(source: str | Path | onnx.ModelProto) -> Graph:
    """Import an ONNX model into an ANN-level graph. Raises FrontendError / UnsupportedModelError."""
    model = load_model(source)
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(f"opset {opset} is older than the oldest supported opset {MIN_OPSET}; "
                                    "upgrade the model with onnx.version_converter")
    onnx_graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in onnx_graph.initializer}
    input_name, sample_shape, fixed_batch = _graph_input(model, set(constants))
    graph = Graph()
    ctx = _Context(graph, opset, constants=constants, fixed_batch=fixed_batch)
    input_node = graph.add(ops.Input(shape=sample_shape, name=input_name), name=input_name)
    ctx.dynamic[input_name] = input_node
    ctx.types[input_node] = graph.op(input_node).infer([])

    used = {name for n in onnx_graph.node for name in n.input} | {o.name for o in onnx_graph.output}
    fusion = fuse_activations(onnx_graph.node, constants, input_name, [o.name for o in onnx_graph.output])
    problems: list[Problem] = []
    # Outputs of failed or skipped nodes that would have been constants (shape computations, failed folds).
    unknown_constants: set[str] = set()
    for node in fusion.nodes:
        label = f"{node.name or node.output[0]!r} ({node.op_type})"
        constant_inputs = all(ctx.is_const(name) or name in unknown_constants for name in node.input)
        if any(name and name not in ctx.dynamic and name not in ctx.constants for name in node.input):
            # It depends on a node that already failed (and is reported). Report it too when it could not be
            # converted whatever that node produced: an unknown operator reading a computed tensor (the QLinearConv
            # after a QuantizeLinear); a node that would have been folded or converted is not reported.
            if node.op_type == "Shape" or constant_inputs:
                unknown_constants.update(node.output)
            elif (reason := _unknown_operator(node)) is not None:
                problems.append(Problem(label, node.op_type, f"{reason}{fusion.note(node)}"))
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(Problem(label, node.op_type, _unknown_operator(node)))
            if constant_inputs:
                unknown_constants.update(node.output)
            continue
        try:
            if all(ctx.is_const(name) for name in node.input):
                _fold(ctx, node)
            elif node.op_type == "Shape":
                _shape(ctx, node)
            elif node.op_type in CONVERTERS:
                extra = [o for o in node.output[1:] if o and o in used]
                if extra:
                    raise _Unsupported(f"its extra outputs {extra} are used (training-mode or index outputs)")
                ctx.dynamic[node.output[0]] = CONVERTERS[node.op_type](ctx, node)
            else:
                raise _Unsupported(_unknown_operator(node))
        except (_Unsupported, IRError) as exc:  # IRError: a converter built an op from invalid attribute values
            problems.append(Problem(label, node.op_type, f"{exc}{fusion.note(node)}"))
            if constant_inputs:
                unknown_constants.update(node.output)
    if problems:
        raise unsupported_model_error(problems)
    for out, origin in fusion.fused.items():  # record the exporter's nodes, not the operator they were fused into
        if out in ctx.dynamic:
            graph.meta[ctx.dynamic[out]]["onnx_op"] = origin
    for out in onnx_graph.output:
        if out.name not in ctx.dynamic:
            raise UnsupportedModelError(f"graph output {out.name!r} does not depend on the input")
        graph.outputs.append(ctx.dynamic[out.name])
    graph.attrs.update({"source": {"producer": model.producer_name, "producer_version": model.producer_version,
                                   "opset": opset}})
    return graph


def _unknown_operator(node: onnx.NodeProto) -> str | None:
    """Why ``node`` cannot be converted whatever its inputs are, or None if it has a converter."""
    if node.domain not in ("", "ai.onnx"):
        return f"operator of domain {node.domain!r} is not supported"
    if node.op_type in PATTERN_ONLY_OPERATORS:
        return f"operator not supported on its own; snncc reads it only inside {PATTERN_ONLY_OPERATORS[node.op_type]}"
    if node.op_type not in CONVERTERS and node.op_type != "Shape":
        return "operator not supported"
    return None


def _fold(ctx: _Context, node: onnx.NodeProto) -> None:
    """Evaluate a node of constant inputs in the model's opset (the attribute forms of Unsqueeze, Slice, ... before
    opset 13 differ); the node goes into a one-node graph because the evaluator ignores ``opsets`` for a bare node."""
    inputs = list(dict.fromkeys(n for n in node.input if n))
    outputs = [n for n in node.output if n]
    untyped = onnx.TypeProto()
    graph = onnx.helper.make_graph([node], "fold", [onnx.helper.make_value_info(n, untyped) for n in inputs],
                                   [onnx.helper.make_value_info(n, untyped) for n in outputs])
    try:
        evaluator = ReferenceEvaluator(graph, opsets={"": ctx.opset})
        results = evaluator.run(None, {n: ctx.constants[n] for n in inputs})
    except Exception as exc:
        raise _Unsupported(f"constant folding failed: {exc}") from None
    for name, value in zip(outputs, results):
        ctx.constants[name] = np.asarray(value)


def _shape(ctx: _Context, node: onnx.NodeProto) -> None:
    full = np.array((BATCH,) + ctx.shape(ctx.dyn(node)), dtype=np.int64)
    attrs = _attrs(node)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    ctx.constants[node.output[0]] = full[start:None if end is None else int(end)]
