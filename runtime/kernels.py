"""Numpy kernels of the stateless ops, on batched arrays ``x`` of shape ``(N, *sample_shape)``.

These define the arithmetic of every linear op and activation for the ANN executor and the reference simulator
(which folds time into the batch axis). They look up by op class in :data:`KERNELS`. Element-wise activations run
their op's ``function`` (defined in :mod:`snncc.ir.functions`: float32, no overflow anywhere in the float32 range).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from snncc.errors import SimulationError
from snncc.ir import ops

# im2col buffers larger than this many float32 values are built in slices of the batch, bounding peak memory.
_IM2COL_BUDGET = 1 << 24


def _pad_spatial(x: np.ndarray, padding: tuple[int, int, int, int], value: float | np.ndarray = 0.0) -> np.ndarray:
    t, l, b, r = padding
    if not (t or l or b or r):
        return x
    if np.ndim(value) == 0:
        return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=float(value))
    out = np.empty((x.shape[0], x.shape[1], x.shape[2] + t + b, x.shape[3] + l + r), dtype=x.dtype)
    out[...] = np.asarray(value, dtype=x.dtype)[None, :, None, None]
    out[:, :, t:t + x.shape[2], l:l + x.shape[3]] = x
    return out


Columns = Callable[[int, int, int, np.ndarray], None]


def _require_one_operand(op: ops.Op) -> None:
    if getattr(op, "input_gains", None) is not None:
        raise SimulationError(f"{op.kind} with input_gains reads several operands: run it through op.per_input() "
                              "(kernels.apply does)")


def per_input_sum(kernel: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """The kernel of a synaptic op with several operands (``input_gains``, see ``ops._SharedWeights``): ``kernel``
    on each single-input op of ``op.per_input()`` and its operand, added in operand order. That is exactly what
    the per-train copies and their Adds computed, so the float32 sums are the same."""
    def run(op: ops.Op, *xs: np.ndarray) -> np.ndarray:
        singles = op.per_input()
        out = kernel(singles[0], xs[0])
        for single, x in zip(singles[1:], xs[1:]):
            out = out + kernel(single, x)
        return out
    return run


def conv2d(op: ops.Conv2d, x: np.ndarray, columns: Columns | None = None,
           empty: Callable[[str, tuple[int, ...]], np.ndarray] | None = None) -> np.ndarray:
    """Cross-correlation by im2col: one matrix product per group over column blocks built slice by slice.

    The reduction axis is ordered channels-last, ``(ky, kx, c)``: with binary inputs the event-driven Cython kernel
    adds the same terms in the same order (it visits input positions one by one, all spiking channels of a
    position together), so both give the same float32 sums.

    ``columns(start, m, first_channel, cols)`` fills one block of the im2col matrix, ``cols`` (kh, kw, C per group,
    m, Ho, Wo), from samples ``start:start + m`` and channels from ``first_channel`` (default: numpy strided copies
    of the padded input); ``empty(name, shape)`` gives the float32 arrays (default: fresh ones). The Cython runtime
    passes a compiled copy loop and buffers it keeps: the same matrices, so the same products.
    """
    _require_one_operand(op)
    out_ch, in_per_group, kh, kw = op.weight.shape
    (sh, sw), (dh, dw) = op.stride, op.dilation
    top, left, bottom, right = op.padding
    n = x.shape[0]
    ho = (x.shape[2] + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + left + right - dw * (kw - 1) - 1) // sw + 1
    if empty is None:
        empty = lambda name, shape: np.empty(shape, dtype=np.float32)  # noqa: E731
    if columns is None:
        xp = _pad_spatial(x, op.padding, 0.0 if op.pad_value is None else op.pad_value)

        def columns(start: int, m: int, first_channel: int, cols: np.ndarray) -> None:
            channels = xp[start:start + m, first_channel:first_channel + in_per_group]
            for i in range(kh):
                for j in range(kw):
                    window = channels[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
                    cols[i, j] = window.transpose(1, 0, 2, 3)
    out = empty("out", (n, out_ch, ho, wo))
    out_per_group = out_ch // op.groups
    rows = max(1, _IM2COL_BUDGET // max(1, ho * wo * in_per_group * kh * kw))
    for start in range(0, n, rows):
        m = min(rows, n - start)
        for g in range(op.groups):
            cols = empty("im2col", (kh, kw, in_per_group, m, ho, wo))
            columns(start, m, g * in_per_group, cols)
            w = op.weight[g * out_per_group:(g + 1) * out_per_group].transpose(0, 2, 3, 1).reshape(out_per_group, -1)
            y = np.matmul(w, cols.reshape(kh * kw * in_per_group, m * ho * wo),
                          out=empty("product", (out_per_group, m * ho * wo)))
            out[start:start + m, g * out_per_group:(g + 1) * out_per_group] = \
                y.reshape(out_per_group, m, ho, wo).transpose(1, 0, 2, 3)
    if op.bias is not None:
        out += op.bias[None, :, None, None]
    return out


def _pool_reduce(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], reduce: str) -> np.ndarray:
    """Max or sum over every pooling window of an already padded input.

    Accumulates the kh*kw strided views element-wise: far faster in numpy than reducing a window view.
    """
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    combine = np.maximum if reduce == "max" else np.add
    out = None
    for i in range(kh):
        for j in range(kw):
            view = x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            out = view.astype(np.float32, copy=True) if out is None else combine(out, view, out=out)
    return out


def linear(op: ops.Linear, x: np.ndarray) -> np.ndarray:
    _require_one_operand(op)
    y = x @ op.weight.T
    if op.bias is not None:
        y += op.bias
    return y


def max_pool2d(op: ops.MaxPool2d, x: np.ndarray) -> np.ndarray:
    return _pool_reduce(_pad_spatial(x, op.padding, -np.inf), op.kernel, op.stride, "max")


def avg_pool2d(op: ops.AvgPool2d, x: np.ndarray) -> np.ndarray:
    xp = _pad_spatial(x, op.padding, 0.0)
    sums = _pool_reduce(xp, op.kernel, op.stride, "sum")
    if op.count_include_pad or not any(op.padding):
        return sums / np.float32(op.kernel[0] * op.kernel[1])
    ones = _pad_spatial(np.ones((1, 1) + x.shape[2:], dtype=np.float32), op.padding, 0.0)
    counts = _pool_reduce(ones, op.kernel, op.stride, "sum")
    return sums / counts


def global_avg_pool(op: ops.GlobalAvgPool, x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3), keepdims=True, dtype=np.float32)


def pad2d(op: ops.Pad2d, x: np.ndarray) -> np.ndarray:
    return _pad_spatial(x, op.padding, op.value)


def channel_pad(op: ops.ChannelPad, x: np.ndarray) -> np.ndarray:
    widths = [(0, 0), (op.before, op.after)] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, widths, constant_values=np.float32(op.value))


def slice_(op: ops.Slice, x: np.ndarray) -> np.ndarray:
    index = tuple(slice(a, b, c) for a, b, c in zip(op.starts, op.stops, op.steps))
    return np.ascontiguousarray(x[(slice(None),) + index])


def affine(op: ops.Affine, x: np.ndarray) -> np.ndarray:
    return (x * op.scale + op.shift).astype(np.float32, copy=False)


def softmax(op: ops.Softmax, x: np.ndarray) -> np.ndarray:
    axis = op.axis + 1
    shifted = x - x.max(axis=axis, keepdims=True)
    z = np.exp(shifted)
    total = z.sum(axis=axis, keepdims=True)
    return shifted - np.log(total) if op.log else z / total


def _reshape_to(shape: Callable[[ops.Op, np.ndarray], tuple[int, ...]]):
    return lambda op, x: x.reshape((x.shape[0],) + shape(op, x))


KERNELS: dict[type[ops.Op], Callable[..., np.ndarray]] = {
    ops.Conv2d: per_input_sum(conv2d),
    ops.Linear: per_input_sum(linear),
    ops.MaxPool2d: max_pool2d,
    ops.AvgPool2d: avg_pool2d,
    ops.GlobalAvgPool: global_avg_pool,
    ops.Pad2d: pad2d,
    ops.ChannelPad: channel_pad,
    ops.Slice: slice_,
    ops.Affine: affine,
    ops.Flatten: _reshape_to(lambda op, x: (int(np.prod(x.shape[1:])),)),
    ops.Reshape: _reshape_to(lambda op, x: tuple(op.shape)),
    ops.Identity: lambda op, x: x,
    ops.Add: lambda op, a, b: a + b,
    ops.Concat: lambda op, *xs: np.concatenate(xs, axis=op.axis + 1),
    ops.Softmax: softmax,
    # Element-wise activations: the op's own scalar function (snncc.ir.functions), so that a pass fitting an
    # activation and the executor running it compute the same numbers.
    **{cls: lambda op, x: op.function(x) for cls in ops.POINTWISE_ACTIVATIONS},
}


def apply(op: ops.Op, *inputs: np.ndarray) -> np.ndarray:
    """Evaluate stateless ``op`` on batched inputs."""
    try:
        kernel = KERNELS[type(op)]
    except KeyError:
        raise SimulationError(f"{op.kind} has no stateless kernel (it is a stateful SNN op)") from None
    return kernel(op, *inputs)


def fan_out(op: ops.Op, sample_shape: tuple[int, ...]) -> np.ndarray:
    """Number of synapses leaving each input element of synaptic ``op`` (same shape as one input sample).

    A spike on input element ``i`` costs ``fan_out[i]`` synaptic operations (accumulates). An op with several
    operands has one fan-out per operand: :func:`fan_outs`.
    """
    _require_one_operand(op)
    if isinstance(op, ops.Linear):
        return (op.weight != 0).sum(axis=0).astype(np.float64)
    if isinstance(op, ops.GlobalAvgPool):
        return np.ones(sample_shape)
    if isinstance(op, (ops.Conv2d, ops.AvgPool2d)):
        channels, h, w = sample_shape
        if isinstance(op, ops.Conv2d):
            out_ch, in_per_group, kh, kw = op.weight.shape
            nonzero = (op.weight != 0).reshape(op.groups, out_ch // op.groups, in_per_group, kh, kw).sum(axis=1)
            per_channel = nonzero.reshape(channels, kh, kw).astype(np.float64)
            stride, dilation = op.stride, op.dilation
        else:
            kh, kw = op.kernel
            per_channel = np.ones((channels, kh, kw))
            stride, dilation = op.stride, (1, 1)
        t, l, b, r = op.padding
        ho = (h + t + b - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (w + l + r - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        padded = np.zeros((channels, h + t + b, w + l + r))
        for i in range(kh):
            for j in range(kw):
                y0, x0 = i * dilation[0], j * dilation[1]
                padded[:, y0:y0 + stride[0] * (ho - 1) + 1:stride[0], x0:x0 + stride[1] * (wo - 1) + 1:stride[1]] \
                    += per_channel[:, i, j][:, None, None]
        return padded[:, t:t + h, l:l + w]
    raise SimulationError(f"{op.kind} is not a synaptic op")


def fan_outs(op: ops.Op, sample_shape: tuple[int, ...]) -> list[np.ndarray]:
    """The fan-out of every operand of synaptic ``op`` (one shape for all): a spike on element ``i`` of operand
    ``j`` costs ``fan_outs[j][i]`` synaptic operations, the non-zero weights ``W * g_j`` leaving it."""
    return [fan_out(single, sample_shape) for single in op.per_input()]
