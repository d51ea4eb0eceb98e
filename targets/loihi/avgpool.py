"""Average pooling folded into the synaptic layer after it, exactly: the chip has no pooling, and needs none.

Average pooling is linear, so a convolution (or a dense layer) that reads a pooled map reads the unpooled map
through a larger kernel. For a pool of kernel ``k`` and stride ``s_p`` (no pool padding) and a convolution of
weights ``W`` (kernel ``K``, stride ``s``, padding ``p``)::

    y[o, Y, X] = b[o] + sum_{i,a,b} W[o,i,a,b] pooled[i, s Y + a - p, s X + b - p]
    pooled[i, u, v] = (1 / k_h k_w) sum_{m,n} x[i, s_p u + m, s_p v + n]

so ``y`` is a convolution of ``x`` with kernel ``(K - 1) s_p + k`` (entry ``a s_p + m`` collects ``W[.., a, ..] /
k_h k_w``), stride ``s s_p`` and padding ``p s_p``. The padding is exact when a padded pooled position covers
padded input only: ``k <= s_p`` at the top and left, and no leftover input rows or columns at the bottom and right
(``(H - k) % s_p == 0`` with ``s_p >= k``); otherwise, and for a dilated convolution or a non-zero pad value, the
fold is refused. A dense layer after ``Flatten`` gets, for each pooled position, its weight spread over the
window divided by ``k_h k_w`` (no padding involved). The folded layer has ``k_h k_w`` times the synapses per
neuron of the original when the pool's windows do not overlap: the price in synaptic memory, which the
partitioning counts.
"""

from __future__ import annotations

import numpy as np

from snncc.errors import PassError
from snncc.ir import Graph, ops


def _expanded_kernel(w: np.ndarray, pool: ops.AvgPool2d) -> np.ndarray:
    (kh, kw), (sh, sw) = pool.kernel, pool.stride
    out, cin, a_n, b_n = w.shape
    big = np.zeros((out, cin, (a_n - 1) * sh + kh, (b_n - 1) * sw + kw), np.float64)
    share = w.astype(np.float64) / (kh * kw)
    for a in range(a_n):
        for b in range(b_n):
            big[:, :, a * sh:a * sh + kh, b * sw:b * sw + kw] += share[:, :, a:a + 1, b:b + 1]
    return big


def _fold_into_conv(graph: Graph, pool_node: str, pool: ops.AvgPool2d, conv_node: str, conv: ops.Conv2d,
                    in_shape: tuple[int, ...]) -> ops.Conv2d:
    (kh, kw), (sh, sw) = pool.kernel, pool.stride
    if conv.dilation != (1, 1) or conv.input_gains is not None:
        raise PassError(f"{pool_node!r}: average pooling folds into an undilated, single-operand convolution; "
                        f"{conv_node!r} has dilation {conv.dilation}")
    if conv.groups != 1 and conv.groups != in_shape[0]:
        raise PassError(f"{pool_node!r}: the convolution {conv_node!r} after it has {conv.groups} groups; the fold "
                        "handles ordinary and depthwise convolutions")
    if any(conv.padding):
        _, h, w = in_shape
        if conv.pad_value is not None and np.any(conv.pad_value != 0):
            raise PassError(f"{pool_node!r}: {conv_node!r} pads with non-zero values; the fold cannot keep them")
        if kh > sh or kw > sw or (h - kh) % sh or (w - kw) % sw:
            raise PassError(f"{pool_node!r}: a {pool.kernel} pool of stride {pool.stride} over {h}x{w} before the "
                            f"padded convolution {conv_node!r} does not fold exactly at the borders (the padded "
                            "pooled positions would cover real inputs); use non-overlapping pools that tile the map")
    top, left, bottom, right = conv.padding
    return conv.replace(weight=_expanded_kernel(conv.weight, pool).astype(np.float32),
                        stride=(conv.stride[0] * sh, conv.stride[1] * sw),
                        padding=(top * sh, left * sw, bottom * sh, right * sw))


def _fold_into_linear(linear: ops.Linear, pool: ops.AvgPool2d, in_shape: tuple[int, ...],
                      pooled_shape: tuple[int, ...]) -> ops.Linear:
    (kh, kw), (sh, sw) = pool.kernel, pool.stride
    c, ph, pw = pooled_shape
    w = linear.weight.astype(np.float64).reshape(-1, c, ph, pw) / (kh * kw)
    big = np.zeros((w.shape[0],) + tuple(in_shape), np.float64)
    for u in range(ph):
        for v in range(pw):
            big[:, :, u * sh:u * sh + kh, v * sw:v * sw + kw] += w[:, :, u:u + 1, v:v + 1]
    return linear.replace(weight=big.reshape(w.shape[0], -1).astype(np.float32))


def fold_average_pools(graph: Graph) -> bool:
    """Fold every AvgPool2d into the Conv2d, or Flatten + Linear, that reads it (module docstring); a pool that
    cannot be folded exactly is refused with a PassError naming why."""
    changed = False
    for node in graph.find(ops.AvgPool2d):
        pool = graph.op(node)
        types = graph.types()
        (src,) = graph.inputs(node)
        in_shape, pooled_shape = types[src].shape, types[node].shape
        users = graph.users(node)
        if any(pool.padding):
            raise PassError(f"{node!r}: average pooling with padding {pool.padding} does not fold into the next "
                            "layer exactly; pad the convolution instead")
        if len(users) != 1 or node in graph.outputs:
            raise PassError(f"{node!r}: average pooling folds into the one synaptic layer that reads it; it has "
                            f"{len(users)} users")
        (user, _), = users
        op = graph.op(user)
        if isinstance(op, ops.Conv2d):
            graph.replace(user, _fold_into_conv(graph, node, pool, user, op, in_shape))
        elif isinstance(op, ops.Flatten) and len(graph.users(user)) == 1 \
                and isinstance(graph.op(graph.users(user)[0][0]), ops.Linear) \
                and graph.op(graph.users(user)[0][0]).input_gains is None:
            linear_node = graph.users(user)[0][0]
            graph.replace(linear_node, _fold_into_linear(graph.op(linear_node), pool, in_shape, pooled_shape))
        else:
            raise PassError(f"{node!r}: average pooling folds into a Conv2d or a Flatten + Linear after it, not "
                            f"into {op.kind}")
        graph.bypass(node)
        changed = True
    return changed
