"""Fused multi-step neuron layers for the torch lowering: all ``T`` steps of an IF/LIF population in one
``torch.autograd.Function``, with the backward pass written out as the reverse-time recursion of backpropagation
through time (BPTT) with a surrogate derivative (Neftci, Mostafa & Zenke, "Surrogate gradient learning in spiking
neural networks", IEEE Signal Processing Magazine 2019).

Why: stepping :func:`snncc.runtime.dynamics.membrane_step` under autograd records five to eight elementwise ops per
step, each allocating a tensor and saving its operands, and the backward pass replays them one by one. The fused
forward runs the same float32 operations in the same order without autograd bookkeeping, in place, and saves only
the pre-reset membranes; the backward recomputes the spikes and surrogate derivatives from them in one vectorised
pass and runs three elementwise ops per step.

The dynamics are the table's (:func:`~snncc.runtime.dynamics.membrane_step`), for ``t = 1..T`` from ``v_0 = v_init``::

    h_t = beta v_{t-1} + I_t         (IF: h_t = v_{t-1} + I_t, no multiplication)
    s_t = H(h_t - theta)             (forward: exactly h_t >= theta)
    v_t = h_t - s_t theta            (reset by subtraction)
    v_t = h_t (1 - s_t)              (reset to zero)

and the surrogate derivative is the :class:`~snncc.runtime.dynamics.Surrogate`'s (an entry of
:data:`~snncc.runtime.dynamics.SURROGATES`), ``g_t = F'((h_t - theta) / w) / w`` for ``ds_t / dh_t``. As in autograd
through the table's step, the reset is differentiated too (the spike in ``v_t`` carries the surrogate).

Backward, with ``S_t = dL/ds_t`` the incoming gradient and ``V_t = dL/dv_t`` (``V_T = 0``), for ``t = T..1``::

    subtract:  G_t = S_t - theta V_t;        dL/dh_t = V_t + G_t g_t
    zero:      G_t = S_t - h_t V_t;          dL/dh_t = (1 - s_t) V_t + G_t g_t
    dL/dI_t = dL/dh_t;                       V_{t-1} = beta dL/dh_t

and, summed over time (and over the axes a scalar or per-channel parameter was broadcast along)::

    dL/dtheta = -sum_t (G_t g_t + s_t V_t)   (subtract)    dL/dtheta = -sum_t G_t g_t   (zero)
    dL/dbeta  =  sum_t v_{t-1} dL/dh_t

Two forms of the same layer: :class:`CompiledMembraneSteps` (CPU, float32 or float64, a surrogate shape the kernels
know and a float width) runs the forward steps and the backward recursion each as one OpenMP pass over memory
(runtime/_train_kernels.pyx), in the currents' memory layout, so that a channels-last batch stays channels-last;
:class:`MembraneSteps`, the torch form, runs elsewhere (CUDA, a tensor width) or with ``SNNCC_TRAIN_KERNELS=torch``.
Their spikes and membranes are bit-identical; their gradients agree to float rounding (the sums over time and
batch run in another order, and torch's vectorised ``addcmul`` may fuse a multiply-add where the kernels never do).

Spiking max pooling over all ``T`` steps has the same two forms: :class:`CompiledSpikingMaxPool` (CPU, one kernel
pass each way, no counts tensor) and :class:`SpikingMaxPool` (torch ops, elsewhere); their outputs are identical.

Supported: unsigned IF (both resets) and LIF (including the memoryless gate ``beta = 0``), scalar or per-channel
threshold and decay, with a :class:`~snncc.runtime.dynamics.Surrogate` spike. Signed IF and CubaLIF stay on the
table's step function under autograd (:func:`fused_steps` answers None for them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from snncc.runtime.dynamics import MembraneParameters, SpikeFunction, Surrogate


class MembraneSteps(torch.autograd.Function):
    """``apply(currents, threshold, decay, v_init, derivative, subtract) -> spikes``: all ``T`` steps of an unsigned
    IF/LIF population (the module docstring's equations). ``currents`` is (T, B, *shape); ``threshold``, ``decay``
    (None for IF) and ``v_init`` broadcast over (B, *shape); ``derivative(x)`` is the surrogate derivative at
    ``x = h - theta``. Returns the spikes (T, B, *shape), 0/1 of the currents' dtype."""

    @staticmethod
    def forward(ctx, currents, threshold, decay, v_init, derivative, subtract):
        shape = tuple(currents.shape[1:])
        spikes = currents.new_empty(currents.shape)
        membranes = currents.new_empty(currents.shape)  # h_t, the membrane before the reset: all backward needs
        v = v_init.expand(shape).clone()  # membrane_start
        for t in range(currents.shape[0]):
            if decay is not None:
                v.mul_(decay)
            h = torch.add(v, currents[t], out=membranes[t])
            torch.ge(h, threshold, out=spikes[t])  # the comparison written as 0/1 of the spikes' dtype
            if subtract:  # v - s * theta: s * theta is exact, so one rounding, as the table's two operations
                torch.addcmul(h, spikes[t], threshold, value=-1, out=v)
            else:  # v * (1 - s), as the table
                torch.mul(h, 1 - spikes[t], out=v)
        ctx.derivative, ctx.subtract = derivative, subtract
        ctx.save_for_backward(membranes, spikes, threshold, decay, v_init)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        membranes, spikes, threshold, decay, v_init = ctx.saved_tensors
        subtract = ctx.subtract
        # g_t, then (in place, step by step) G_t g_t: the surrogate's share of dL/dh_t
        surrogate_share = ctx.derivative(membranes - threshold)
        grad_current = torch.empty_like(membranes)
        grad_v = torch.zeros_like(membranes[0])  # V_T = 0
        for t in reversed(range(membranes.shape[0])):
            coupling = threshold if subtract else membranes[t]
            grad_s = torch.addcmul(grad_spikes[t], grad_v, coupling, value=-1)  # G_t
            surrogate_share[t].mul_(grad_s)
            if subtract:
                torch.add(grad_v, surrogate_share[t], out=grad_current[t])
            else:
                torch.addcmul(surrogate_share[t], grad_v, 1 - spikes[t], out=grad_current[t])
            grad_v = grad_current[t] if decay is None else grad_current[t] * decay
        grad_threshold = grad_decay = None
        if ctx.needs_input_grad[1]:
            grad_threshold = -surrogate_share.sum_to_size(threshold.shape)
            if subtract:  # - s_t V_t, with V_t = beta dL/dh_{t+1} for t < T and V_T = 0
                later = grad_current[1:] if decay is None else grad_current[1:] * decay
                grad_threshold = grad_threshold - (spikes[:-1] * later).sum_to_size(threshold.shape)
        if decay is not None and ctx.needs_input_grad[2]:
            after = membranes - spikes * threshold if subtract else membranes * (1 - spikes)  # v_t
            share = grad_current * torch.cat([v_init.expand_as(after[:1]), after[:-1]])
            grad_decay = share.sum_to_size(decay.shape)
        grad_currents = grad_current if ctx.needs_input_grad[0] else None
        return grad_currents, grad_threshold, grad_decay, None, None, None


def _train_kernels():
    """The compiled kernels (runtime/_train_kernels.pyx), or None where the extension is not built or the
    environment variable ``SNNCC_TRAIN_KERNELS=torch`` asks for the torch form (to compare the two)."""
    global _TRAIN_KERNELS
    if os.environ.get("SNNCC_TRAIN_KERNELS", "compiled") == "torch":
        return None
    if _TRAIN_KERNELS is None:
        try:
            from snncc.runtime import _train_kernels
        except ImportError:
            _TRAIN_KERNELS = False
        else:
            _TRAIN_KERNELS = _train_kernels
    return _TRAIN_KERNELS or None


_TRAIN_KERNELS: object = None


def _kernel_threads() -> int:
    """The kernels' OpenMP threads: torch's intra-op thread count."""
    return torch.get_num_threads()


def _memory_order(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The permutation of ``tensor``'s axes in whose order its memory is C-contiguous (the identity for a
    contiguous tensor, (0, 2, 3, 1) for a channels-last image batch), or None where it is not dense."""
    order = tuple(sorted(range(tensor.dim()), key=lambda i: (-tensor.stride(i), i)))
    return order if tensor.permute(order).is_contiguous() else None


def _layout(currents: torch.Tensor) -> tuple[int, ...] | None:
    """The memory order of the currents (T, B, *shape) with time outermost, from the order of one step (a current
    constant in time is an expanded view, stride 0 over T); None where a step is not dense."""
    inner = _memory_order(currents[0])
    return None if inner is None else (0,) + tuple(i + 1 for i in inner)


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``permute(order)``."""
    return tuple(sorted(range(len(order)), key=order.__getitem__))


def _per_neuron(value: torch.Tensor, shape: tuple[int, ...], inner: tuple[int, ...]) -> torch.Tensor:
    """``value`` broadcast to the population ``shape`` (B, *shape), laid out in the memory order ``inner`` of the
    currents' steps and flattened: a contiguous (M,) copy, element ``i`` for neuron ``i`` of the kernels. A scalar
    is one fill (copying a broadcast value through the permutation is several times slower)."""
    value = value.detach()
    if value.numel() == 1:
        return value.reshape(1).expand(int(np.prod(shape))).contiguous()
    return value.expand(shape).permute(inner).contiguous().reshape(-1)


def _array(tensor: torch.Tensor):
    """A numpy view of a CPU tensor's memory (no copy), for the compiled kernels."""
    return tensor.detach().numpy()


class CompiledMembraneSteps(torch.autograd.Function):
    """``apply(currents, threshold, decay, v_init, shape_code, width, subtract) -> spikes``: :class:`MembraneSteps`
    with the forward steps and the backward recursion each one compiled pass over memory
    (:mod:`snncc.runtime._train_kernels`), on CPU float32/float64 tensors. Same arguments as MembraneSteps except
    the surrogate, given as its kernel code (``_train_kernels.SURROGATE_CODES``) and a float width. Spikes and saved
    membranes are bit-identical to MembraneSteps'; gradients equal its up to the order of the sums over time."""

    @staticmethod
    def forward(ctx, currents, threshold, decay, v_init, shape_code, width, subtract, timesteps=None):
        kernels = _train_kernels()
        ctx.constant_input = timesteps is not None
        if ctx.constant_input:  # (B, *shape), the same at every step: its gradient is summed over time in the kernel
            currents = currents.unsqueeze(0).expand((timesteps,) + tuple(currents.shape))
        T, shape = currents.shape[0], tuple(currents.shape[1:])
        # The kernels run over the neurons in memory order, so a channels-last batch stays channels-last (no copy):
        # the parameters are laid out the same way and the spikes and membranes come back with the currents' strides.
        order = _layout(currents)
        if order is None:
            currents, order = currents.contiguous(), tuple(range(currents.dim()))
        inner = tuple(i - 1 for i in order[1:])
        dense = currents.permute(order)
        constant = dense.stride(0) == 0  # the same current at every step: read once per neuron and step
        flat = (dense[:1] if constant else dense).reshape(1 if constant else T, -1)
        spikes = currents.new_empty(dense.shape)  # in memory order; permuted back to (T, B, *shape) on return
        membranes = currents.new_empty(dense.shape)  # h_t, the membrane before the reset: all backward needs
        threshold_n, v_init_n = _per_neuron(threshold, shape, inner), _per_neuron(v_init, shape, inner)
        decay_n = _per_neuron(decay, shape, inner) if decay is not None else currents.new_empty(0)
        scratch = currents.new_empty(flat.shape[1])
        kernels.membrane_forward(_array(flat), constant, _array(threshold_n), _array(decay_n), _array(v_init_n),
                                 subtract, _array(spikes.view(T, -1)), _array(membranes.view(T, -1)),
                                 _array(scratch), _kernel_threads())
        back = _inverse(order)
        ctx.shape_code, ctx.width, ctx.subtract, ctx.order = shape_code, width, subtract, order
        membranes = membranes.permute(back)
        ctx.save_for_backward(membranes, threshold, decay, threshold_n, decay_n, v_init_n)
        return spikes.permute(back)

    @staticmethod
    def backward(ctx, grad_spikes):
        membranes, threshold, decay, threshold_n, decay_n, v_init_n = ctx.saved_tensors
        kernels = _train_kernels()
        order, back = ctx.order, _inverse(ctx.order)
        membranes = membranes.permute(order)  # memory order, contiguous
        T = membranes.shape[0]
        grad_current = membranes.new_empty((1,) + membranes.shape[1:]) if ctx.constant_input else torch.empty_like(
            membranes)
        per_neuron = [membranes.new_empty(threshold_n.shape) for _ in range(3)]  # dL/dtheta, two scratch
        grad_decay_n = membranes.new_empty(decay_n.shape)
        kernels.membrane_backward(_array(grad_spikes.permute(order).contiguous().view(T, -1)),
                                  _array(membranes.view(T, -1)), _array(threshold_n), _array(decay_n),
                                  _array(v_init_n), ctx.subtract, ctx.shape_code, ctx.width,
                                  _array(grad_current.view(grad_current.shape[0], -1)), _array(per_neuron[1]),
                                  _array(per_neuron[0]),
                                  _array(grad_decay_n), _array(per_neuron[2]), _kernel_threads())
        grad_threshold = grad_decay = None
        population = tuple(membranes.shape[1:])  # (B, *shape) in memory order
        inner_back = _inverse(tuple(i - 1 for i in order[1:]))
        if ctx.needs_input_grad[1]:
            grad_threshold = per_neuron[0].view(population).permute(inner_back).sum_to_size(threshold.shape)
        if decay is not None and ctx.needs_input_grad[2]:
            grad_decay = grad_decay_n.view(population).permute(inner_back).sum_to_size(decay.shape)
        grad_currents = grad_current.permute(back) if ctx.needs_input_grad[0] else None
        if grad_currents is not None and ctx.constant_input:
            grad_currents = grad_currents[0]
        return grad_currents, grad_threshold, grad_decay, None, None, None, None, None


def _compiled_surrogate(currents: torch.Tensor, spike: Surrogate) -> int | None:
    """The kernel code of ``spike``'s shape where the compiled kernels apply to ``currents`` (built extension, CPU,
    float32 or float64, a float width), else None."""
    kernels = _train_kernels()
    if (kernels is None or currents.device.type != "cpu" or currents.dtype not in (torch.float32, torch.float64)
            or torch.is_tensor(spike.width)):
        return None
    return kernels.SURROGATE_CODES.get(spike.shape)


def membrane_steps(params: MembraneParameters, currents: torch.Tensor, spike: Surrogate,
                   compiled: bool = True, timesteps: int | None = None) -> torch.Tensor:
    """The spikes (T, B, *shape) of an unsigned IF/LIF population with parameter record ``params`` driven by
    ``currents`` (T, B, *shape), or, given ``timesteps`` T, by the current ``currents`` (B, *shape) at every step
    (the compiled form then sums its gradient over time in the backward kernel, with no (T, B, *shape) gradient
    in between); in one :class:`CompiledMembraneSteps` call where the compiled kernels apply (and ``compiled``),
    else one :class:`MembraneSteps` call."""
    like = currents
    threshold = params.threshold if torch.is_tensor(params.threshold) else like.new_tensor(params.threshold)
    v_init = params.v_init if torch.is_tensor(params.v_init) else like.new_tensor(params.v_init)
    decay = params.decay
    if decay is not None and not torch.is_tensor(decay):
        decay = like.new_tensor(decay)
    code = _compiled_surrogate(currents, spike) if compiled else None
    if code is not None and all(p.dtype == currents.dtype for p in (threshold, v_init) + (() if decay is None
                                                                                          else (decay,))):
        return CompiledMembraneSteps.apply(currents, threshold, decay, v_init, code, float(spike.width),
                                           params.subtract, timesteps)
    if timesteps is not None:
        currents = currents.unsqueeze(0).expand((timesteps,) + tuple(currents.shape))
    return MembraneSteps.apply(currents, threshold, decay, v_init, spike.derivative, params.subtract)


@dataclass(frozen=True)
class FusedSteps:
    """A fused multi-step form of one step model: ``supports(params, spike)`` says whether it applies to this
    population (else the table's step function runs under autograd); ``run(params, currents, spike,
    timesteps=None)`` -> spikes, with ``timesteps`` for a current constant in time (B, *shape)."""

    supports: Callable[[object, SpikeFunction], bool]
    run: Callable[..., torch.Tensor]


#: Fused forms by the class of the dynamics' parameter record (runtime/dynamics.py). Signed IF (its take-back of
#: spikes needs the net count as a second state) and CubaLIF are not fused.
FUSED: dict[type, FusedSteps] = {
    MembraneParameters: FusedSteps(lambda params, spike: isinstance(spike, Surrogate) and not params.signed,
                                   membrane_steps),
}


def fused_steps(params: object, spike: SpikeFunction) -> Callable[..., torch.Tensor] | None:
    """The fused multi-step function for a population with parameter record ``params`` and ``spike``, or None
    where there is none (then step with the table's function)."""
    entry = FUSED.get(type(params))
    return entry.run if entry is not None and entry.supports(params, spike) else None



class SpikingMaxPool(torch.autograd.Function):
    """``apply(steps, kernel, stride, padding) -> spikes``: spiking max pooling
    (:class:`~snncc.ir.ops.SpikingMaxPool2d`) of spike trains ``steps`` (T, B, C, H, W), ``padding`` (top, left,
    bottom, right) with -inf as the reference pads. With ``N(t) = sum_{tau <= t} s(tau)`` the running counts and
    ``M(t)`` their max over each window, the output is ``y(t) = M(t) - M(t-1)`` (``M(0) = 0``).

    Exact: the counts are sums of small integers and a maximum does not round, so ``max_pool2d`` gives the
    reference's ``M`` whatever order it visits a window in. Backward, with ``g(t) = dL/dy(t)``::

        dL/dM(t) = g(t) - g(t+1)   (g(T+1) = 0)
        dL/dN(t) = dL/dM(t) routed to the first maximal element of each window (max_pool2d's backward; one
                   subgradient of the maximum, where chaining torch.maximum over the window's views would split it
                   between tied elements)
        dL/ds(t) = sum_{tau >= t} dL/dN(tau)
    """

    @staticmethod
    def forward(ctx, steps, kernel, stride, padding):
        T, B = steps.shape[:2]
        order = _layout(steps) or tuple(range(steps.dim()))  # summed in memory order: a layout kept, no copy
        counts = torch.cumsum(steps.permute(order), dim=0).permute(_inverse(order))
        counts = counts.reshape((T * B,) + tuple(steps.shape[2:]))
        top, left, bottom, right = padding
        if any(padding):
            counts = torch.nn.functional.pad(counts, (left, right, top, bottom), value=float("-inf"))
        running_max, argmax = torch.nn.functional.max_pool2d(counts, kernel, stride, return_indices=True)
        running_max = running_max.reshape((T, B) + tuple(running_max.shape[1:]))
        out = torch.empty_like(running_max)
        out[0] = running_max[0]
        torch.sub(running_max[1:], running_max[:-1], out=out[1:])
        ctx.kernel, ctx.stride, ctx.padding, ctx.shape = kernel, stride, padding, tuple(steps.shape)
        ctx.save_for_backward(counts, argmax)
        return out

    @staticmethod
    def backward(ctx, grad):
        counts, argmax = ctx.saved_tensors
        T, B, C, H, W = ctx.shape
        grad_max = grad.clone()
        grad_max[:-1] -= grad[1:]
        grad_counts = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_max.reshape((T * B,) + tuple(grad.shape[2:])), counts, list(ctx.kernel), list(ctx.stride),
            [0, 0], [1, 1], False, argmax)
        top, left = ctx.padding[:2]
        grad_counts = grad_counts[:, :, top:top + H, left:left + W].reshape(ctx.shape)
        if any(ctx.padding):
            grad_counts = grad_counts.contiguous()
        for t in range(T - 2, -1, -1):  # the reverse running sum, in place
            grad_counts[t] += grad_counts[t + 1]
        return grad_counts, None, None, None


class CompiledSpikingMaxPool(torch.autograd.Function):
    """:class:`SpikingMaxPool` with the forward and the backward each one compiled pass
    (``_train_kernels.max_pool_forward`` / ``max_pool_backward``), on CPU float32/float64 tensors of any layout:
    the running counts live in a thread's scratch (no (T, B, C, H, W) counts tensor), the window position of the
    maximum is saved as one byte per output element (not max_pool2d's int64 index), and the backward's reverse
    running sum over time runs inside the kernel. Output and gradient come back in the layout of ``steps`` (a
    channels-last batch stays channels-last). Same results as SpikingMaxPool: the forward exactly (sums of the
    same terms in the same order, exact maxima, the same first maximal position), the gradient up to the order of
    the sums where windows overlap."""

    @staticmethod
    def forward(ctx, steps, kernel, stride, padding):
        T, B, C, H, W = steps.shape
        (kh, kw), (sh, sw), (top, left, bottom, right) = kernel, stride, padding
        ho, wo = (H + top + bottom - kh) // sh + 1, (W + left + right - kw) // sw + 1
        if _layout(steps) is None:
            steps = steps.contiguous()
        order = _layout(steps)
        out = _like_layout((T, B, C, ho, wo), order, steps)
        argmax = _like_layout((T, B, C, ho, wo), order, steps, torch.uint8)
        last = (0, 1, 3, 4, 2)  # (T, B, H, W, C): the kernels' axes
        _train_kernels().max_pool_forward(_array(steps.permute(last)), kh, kw, sh, sw, top, left,
                                          _array(out.permute(last)), _array(argmax.permute(last)),
                                          _kernel_threads())
        ctx.geometry, ctx.shape, ctx.order = (kh, kw, sh, sw, top, left), tuple(steps.shape), order
        ctx.save_for_backward(argmax)
        return out

    @staticmethod
    def backward(ctx, grad):
        (argmax,) = ctx.saved_tensors
        grad_steps = _like_layout(ctx.shape, ctx.order, grad)
        last = (0, 1, 3, 4, 2)
        _train_kernels().max_pool_backward(_array(grad.permute(last)), _array(argmax.permute(last)), *ctx.geometry,
                                           _array(grad_steps.permute(last)), _kernel_threads())
        return grad_steps, None, None, None


def _like_layout(shape: tuple[int, ...], order: tuple[int, ...], like: torch.Tensor,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialized tensor of ``shape`` whose memory is C-contiguous in the axis order ``order``."""
    dense = like.new_empty([shape[i] for i in order], dtype=dtype or like.dtype)
    return dense.permute(_inverse(order))


def spiking_max_pool(steps: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Spiking max pooling of ``steps`` (T, B, C, H, W) in one :class:`CompiledSpikingMaxPool` call where the
    compiled kernels apply (CPU, float32/float64, windows of at most 256 positions: the saved position is a
    byte), else one :class:`SpikingMaxPool` call."""
    kernel, stride, padding = tuple(kernel), tuple(stride), tuple(padding)
    if (_train_kernels() is not None and steps.device.type == "cpu" and steps.dtype in (torch.float32, torch.float64)
            and kernel[0] * kernel[1] <= 256):
        return CompiledSpikingMaxPool.apply(steps, kernel, stride, padding)
    return SpikingMaxPool.apply(steps, kernel, stride, padding)
