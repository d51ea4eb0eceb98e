"""The torch lowering of SNN-level graphs: ``lower(graph)`` is a differentiable ``torch.nn.Module`` whose forward pass
is the reference simulator's (:mod:`snncc.runtime.reference`) for rate coding and the temporal simulator's
(:mod:`snncc.runtime.temporal`) for FS/AMOS coding, for fine-tuning with surrogate gradients (Neftci, Mostafa &
Zenke, "Surrogate gradient learning in spiking neural networks", IEEE Signal Processing Magazine 2019) and as the
simulator backend ``"torch"``.

Rate coding, multi-step schedule (:class:`LoweredGraph`): ``module(x, T)`` walks the graph once in topological
order. A stateless op (convolution, linear layer, pooling, views, adds) runs once on all steps of a chunk folded
into the batch axis, ``(T * B, *shape)``; a stateful op (population, spiking max pooling, readout) loops over the
steps of its own input. There is no Python loop over layers per step. As in the reference, values constant in time
(the input and everything computed from it alone, the first layer's current) are computed once, on ``(B, *shape)``.
With gradients the T steps are one chunk; without, they run in chunks with every stateful op's state carried
across, as the reference runs, which bounds memory and gives the same results bit for bit.

Temporal coding (:class:`LoweredTemporalGraph`): every node once per input, each FS/AMOS population a window of K
steps on its complete gate input, the spikes placed at the steps of its window by the temporal simulator's
schedule, the answer at the latency.

The arithmetic is the reference's, in its order: the neurons are the step and window functions of
:data:`snncc.runtime.dynamics.DYNAMICS` (not written again here), biases are added after the products, a
shared-weight layer (``input_gains``) adds ``op(x_i; W * g_i)`` in operand order with the bias in the first, pooling
adds (or takes the max of) the window's views in the reference's order, the readout's running mean is accumulated in
float64. Only the convolutions' and matrix products' internal summation order is torch's, so currents may differ
from the reference's in the last bits (bounded by the float32 order bound); spikes then agree except where a
membrane lies within that rounding of a threshold.

Trainable (``nn.Parameter``): every weight array (one per shared-weight layer, used by all its operands), every
bias, the neurons' thresholds and neuron biases, the LIF decay ``beta = exp(-1 / tau_mem)``, the CubaLIF
current/voltage retention factors, and every array of an FS/AMOS record (thresholds, heights, output weights,
gains, inhibition, offset). Fixed buffers: input gains, the IF/LIF ``v_init`` as the fraction of the threshold
the IR stores (the initial membrane is ``v_init * threshold`` of the current, trained threshold, so it moves with
it), CubaLIF's absolute initial voltage, Affine scales and shifts, pad values. ``parameters_of(node)`` selects them
by graph node.

Write-back: :meth:`LoweredGraph.to_graph` is the lowered graph with every trained parameter written into its op
(each module's ``trained_op(op)``), so a fine-tuned module becomes a ``.snn`` that every simulator runs.

Analog mode: ``module.forward_analog(x)`` runs the ANN the conversion assumed with the same parameters (each
population its rate function, spiking max pooling a max pooling, the readout its input), for proxy learning and
calibration against the ANN.

Not lowered: any op without an entry in :data:`LOWERINGS`, refused with an :class:`~snncc.errors.SimulationError`
naming the node, and graphs that mix rate and temporal populations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from snncc.errors import SimulationError, SnnccError
from snncc.ir import IF, LIF, CubaLIF, Graph, ops
from snncc.ir.neurons import Amos, FewSpike, NeuronModel
from snncc.runtime.dynamics import GATE_SURROGATE, Surrogate, Window, dynamics_of, is_logic_gate
from snncc.runtime.kernels import fan_outs
from snncc.runtime.reference import _CHUNK_VALUES, BatchResult
from snncc.runtime.temporal import TemporalSimulator, is_temporal
from snncc.runtime.torch_fused import fused_steps, spiking_max_pool
from snncc.runtime.torch_memory import keep_freed_memory

#: Fields of a neuron model's parameter record (see runtime/dynamics.py) that the lowering trains.
TRAINABLE_NEURON_FIELDS = frozenset({"threshold", "decay", "bias", "keep_u", "keep_v"})


def _tensor(value: np.ndarray | float, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.array(value, dtype=np.float32), device=device)  # a copy: IR arrays are read-only


def _parameter(value: np.ndarray | None, device: torch.device) -> nn.Parameter | None:
    return None if value is None else nn.Parameter(_tensor(value, device))


def _array(value: torch.Tensor | None) -> np.ndarray | None:
    """A trained tensor as the float32 numpy array an op stores."""
    return None if value is None else value.detach().cpu().numpy().astype(np.float32)


class _Fixed:
    """A lowered op without trained parameters: its op is written back unchanged."""

    def trained_op(self, op: ops.Op) -> ops.Op:
        return op


def _pad_spatial(x: torch.Tensor, padding: tuple[int, int, int, int],
                 value: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Pad (top, left, bottom, right) with a scalar, or with one value per channel (a tensor of shape (C,))."""
    t, l, b, r = padding
    if not (t or l or b or r):
        return x
    if not torch.is_tensor(value):
        return F.pad(x, (l, r, t, b), value=float(value))
    out = value.reshape(1, -1, 1, 1).expand(x.shape[0], -1, x.shape[2] + t + b, x.shape[3] + l + r).clone()
    out[:, :, t:t + x.shape[2], l:l + x.shape[3]] = x
    return out


def _pool_reduce(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                 combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum or max over every window of a padded input, combining the kh * kw strided views in the reference's
    order (runtime/kernels.py ``_pool_reduce``), so the float32 results are the reference's."""
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            view = x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            out = view if out is None else combine(out, view)
    return out


def _cumsum_from(steps: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    """Running sums over axis 0 continuing from ``start`` (the previous chunk's last sum, None for none). The start
    is summed in front of the steps, so a run in chunks adds the same terms in the same order as one run."""
    if start is None:
        return torch.cumsum(steps, dim=0)
    return torch.cumsum(torch.cat([start.unsqueeze(0), steps]), dim=0)[1:]


# ----------------------------------------------------------------------------------------------------------------
# Stateless ops: each runs once on all steps folded into the batch
# ----------------------------------------------------------------------------------------------------------------

class _SharedWeightLayer(nn.Module):
    """Conv2d or Linear with one weight parameter for all operands: ``y = ((f(x_0; W g_0) + b) + f(x_1; W g_1))
    + ...`` (ops._SharedWeights). ``W * g_i`` is one float32 product per weight, the rounding of the reference's
    per-operand copies; the gradient of ``W`` is the sum over the operands."""

    def __init__(self, op: ops.Conv2d | ops.Linear, device: torch.device) -> None:
        super().__init__()
        self.weight = _parameter(op.weight, device)
        self.bias = _parameter(op.bias, device)
        self.gains = None if op.input_gains is None else [_tensor(g, device) for g in op.input_gains]

    def scaled_weights(self) -> list[torch.Tensor]:
        if self.gains is None:
            return [self.weight]
        return [self.weight * self._gain_shape(g) for g in self.gains]

    def _gain_shape(self, gain: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def product(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trained_op(self, op: ops.Conv2d | ops.Linear) -> ops.Conv2d | ops.Linear:
        """``op`` with the trained weight and bias (input gains and pad values are fixed)."""
        return dataclasses.replace(op, weight=_array(self.weight), bias=_array(self.bias))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        weights = self.scaled_weights()
        out = self.product(weights[0], xs[0])
        if self.bias is not None:
            out = self.add_bias(out)
        for weight, x in zip(weights[1:], xs[1:]):
            out = out + self.product(weight, x)
        return out


class _Conv2d(_SharedWeightLayer):
    def __init__(self, op: ops.Conv2d, device: torch.device) -> None:
        super().__init__(op, device)
        self.op = op
        self.pad_value = None if op.pad_value is None else _tensor(op.pad_value, device)

    def _gain_shape(self, gain: torch.Tensor) -> torch.Tensor:
        out_ch, per_group, kh, kw = self.weight.shape
        groups = self.op.groups
        factor = gain.expand(groups * per_group).reshape(groups, 1, per_group, 1, 1)
        return factor.expand(groups, out_ch // groups, per_group, 1, 1).reshape(out_ch, per_group, 1, 1)

    @staticmethod
    def _channels_last(x: torch.Tensor) -> bool:
        """Training on CPU: oneDNN's channels-last convolutions and their backward run about twice as fast as NCHW
        ones here (docs/finetune-speed.md). The fused layers keep the layout (torch_fused), so the spikes reach the
        next convolution channels-last without a copy. (Evaluation keeps NCHW: its results are the agreement
        tests'.)"""
        return torch.is_grad_enabled() and x.device.type == "cpu"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        top, left, bottom, right = self.op.padding
        if len(xs) == 1 and self.pad_value is None and (top, left) == (bottom, right) and self._channels_last(xs[0]):
            # Training: one oneDNN call with the zero padding and the bias inside (no padded copy, no bias pass).
            weight = self.scaled_weights()[0].contiguous(memory_format=torch.channels_last)
            out = F.conv2d(xs[0].contiguous(memory_format=torch.channels_last), weight, self.bias,
                           stride=self.op.stride, padding=(top, left), dilation=self.op.dilation,
                           groups=self.op.groups)
        else:
            out = super().forward(*xs)
        if self._channels_last(xs[0]):
            # With one input channel oneDNN answers NCHW (the two layouts coincide for such an input); the spikes
            # of the population behind would then be NCHW too and copied, T times larger, by the next convolution.
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def product(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = _pad_spatial(x, self.op.padding, 0.0 if self.pad_value is None else self.pad_value)
        if self._channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, stride=self.op.stride, dilation=self.op.dilation, groups=self.op.groups)

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.bias.reshape(1, -1, 1, 1)


class _Linear(_SharedWeightLayer):
    def _gain_shape(self, gain: torch.Tensor) -> torch.Tensor:
        return gain.reshape(1, -1) if gain.dim() else gain

    def product(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ weight.t()

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.bias


class _Stateless(_Fixed, nn.Module):
    """An op without parameters: ``function(op, *xs)`` on batched tensors."""

    def __init__(self, op: ops.Op, function: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.op, self.function = op, function

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.function(self.op, *xs)


def _avg_pool2d(op: ops.AvgPool2d, x: torch.Tensor) -> torch.Tensor:
    sums = _pool_reduce(_pad_spatial(x, op.padding, 0.0), op.kernel, op.stride, torch.add)
    if op.count_include_pad or not any(op.padding):
        return sums / float(np.float32(op.kernel[0] * op.kernel[1]))
    ones = _pad_spatial(x.new_ones((1, 1) + tuple(x.shape[2:])), op.padding, 0.0)
    return sums / _pool_reduce(ones, op.kernel, op.stride, torch.add)


def _slice(op: ops.Slice, x: torch.Tensor) -> torch.Tensor:
    return x[(slice(None),) + tuple(slice(a, b, c) for a, b, c in zip(op.starts, op.stops, op.steps))]


def _channel_pad(op: ops.ChannelPad, x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (0, 0) * (x.dim() - 2) + (op.before, op.after), value=float(np.float32(op.value)))


class _Affine(nn.Module):
    def __init__(self, op: ops.Affine, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("scale", _tensor(op.scale, device))
        self.register_buffer("shift", _tensor(op.shift, device))

    def trained_op(self, op: ops.Affine) -> ops.Affine:
        return op  # scale and shift are buffers, not trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _stateless(function: Callable[..., torch.Tensor]) -> Callable[[ops.Op, torch.device], nn.Module]:
    return lambda op, device: _Stateless(op, function)


# ----------------------------------------------------------------------------------------------------------------
# Stateful ops: each loops over the T steps of its input, given as (T, B, *shape)
# ----------------------------------------------------------------------------------------------------------------

def _neuron_parameter(value: torch.Tensor, stored: float | tuple[float, ...]) -> float | tuple[float, ...]:
    """A trained record tensor as the IR's neuron parameter: one float, or a tuple of one value per channel where
    the IR stored one (float32 values are exact as Python floats)."""
    values = tuple(float(v) for v in value.detach().cpu().numpy().astype(np.float64).ravel())
    return values if isinstance(stored, tuple) else values[0]


def _tau_mem(beta: torch.Tensor, stored: float | tuple[float, ...]) -> float | tuple[float, ...]:
    """The LIF time constant of a trained decay: ``tau_mem = -1 / ln(beta)`` (0 for the memoryless ``beta = 0``,
    inf for ``beta = 1``), so that ``float32(exp(-1 / tau_mem))`` is the trained ``beta`` again."""
    betas = beta.detach().cpu().numpy().astype(np.float64).ravel()
    if not ((betas >= 0) & (betas <= 1)).all():
        raise SimulationError(f"a trained LIF decay lies outside [0, 1] ({betas.min():g}..{betas.max():g}); keep "
                              "decays in [0, 1] while training (the fine-tuning loop clamps them)")
    with np.errstate(divide="ignore"):
        taus = tuple(0.0 if b == 0 else float(-1.0 / np.log(b)) if b < 1 else float("inf") for b in betas)
    return taus if isinstance(stored, tuple) else taus[0]


def _cuba_decay(keep: torch.Tensor, unit: int) -> float:
    """A CubaLIF decay from its trained retention factor: ``decay = D - keep * D`` inverts ``keep = (D - decay) /
    D`` exactly for float32 ``keep``."""
    return float(unit - np.float64(keep.detach().cpu().item()) * unit)


#: How a trained parameter record becomes a neuron model's fields, by neuron class: ``(neuron, module) -> fields``
#: (``module`` holds the record's tensors as attributes). Step models without an entry cannot be written back.
NEURON_WRITE_BACK: dict[type[NeuronModel], Callable[[NeuronModel, nn.Module], dict]] = {
    IF: lambda n, m: {"threshold": _neuron_parameter(m.threshold, n.threshold)},
    LIF: lambda n, m: {"threshold": _neuron_parameter(m.threshold, n.threshold),
                       "tau_mem": _tau_mem(m.decay, n.tau_mem)},
    CubaLIF: lambda n, m: {"threshold": float(m.threshold.detach().cpu().item()),
                           "bias": float(m.bias.detach().cpu().item()),
                           "current_decay": _cuba_decay(m.keep_u, n.decay_unit),
                           "voltage_decay": _cuba_decay(m.keep_v, n.decay_unit)},
}

#: Record fields that the IR stores as a fraction of the threshold, by neuron class: the lowering keeps the fraction
#: and multiplies it by the current threshold, so a trained threshold moves the initial membrane with it.
RELATIVE_TO_THRESHOLD: dict[type[NeuronModel], str] = {IF: "v_init", LIF: "v_init"}


class _Population(nn.Module):
    """A population of a stepped neuron model: the entry of :data:`~snncc.runtime.dynamics.DYNAMICS`, with the
    tensors of its parameter record as parameters (:data:`TRAINABLE_NEURON_FIELDS`) or buffers. A field of
    :data:`RELATIVE_TO_THRESHOLD` is kept as its fraction (buffer ``<field>_fraction``) and recomputed as
    ``fraction * threshold`` each forward pass, the float32 product the record of the neuron holds."""

    stateful = True

    def __init__(self, op: ops.Population, shape: tuple[int, ...], spike: Surrogate, device: torch.device) -> None:
        super().__init__()
        self.dynamics = dynamics_of(op.neuron, stepped=True)
        self.spike = GATE_SURROGATE if is_logic_gate(op.neuron) else spike  # a SEW gate: its exact derivative
        record = self.dynamics.parameters(op.neuron, shape, np)
        self._record = record
        self._tensor_fields = []
        self._relative = RELATIVE_TO_THRESHOLD.get(type(op.neuron))
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if f.name == self._relative:
                # The record of the same neuron with threshold 1 holds the fraction itself (v_init * 1.0, exact).
                unit = self.dynamics.parameters(dataclasses.replace(op.neuron, threshold=1.0), shape, np)
                self.register_buffer(f.name + "_fraction", _tensor(getattr(unit, f.name), device))
            elif isinstance(value, (np.ndarray, np.generic)):
                self._tensor_fields.append(f.name)
                if f.name in TRAINABLE_NEURON_FIELDS:
                    self.register_parameter(f.name, nn.Parameter(_tensor(value, device)))
                else:
                    self.register_buffer(f.name, _tensor(value, device))

    def parameters_record(self):
        fields = {name: getattr(self, name) for name in self._tensor_fields}
        if self._relative is not None:
            fields[self._relative] = getattr(self, self._relative + "_fraction") * self.threshold
        return dataclasses.replace(self._record, **fields)

    def trained_op(self, op: ops.Population) -> ops.Population:
        """``op`` with its neuron's trained fields (:data:`NEURON_WRITE_BACK`); ``v_init`` stays the fraction."""
        write_back = NEURON_WRITE_BACK.get(type(op.neuron))
        if write_back is None:
            raise SimulationError(f"trained {op.neuron.kind} neurons cannot be written back yet (written back: "
                                  f"{', '.join(sorted(m.kind for m in NEURON_WRITE_BACK))})")
        return dataclasses.replace(op, neuron=dataclasses.replace(op.neuron, **write_back(op.neuron, self)))

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        return self.run(steps, None)[0]

    def run_constant(self, current: torch.Tensor, timesteps: int) -> tuple[torch.Tensor, object]:
        """:meth:`run` from t = 0 on the current ``current`` (B, *shape) at each of ``timesteps`` steps; in training
        the fused form takes it unexpanded and sums its gradient over time itself."""
        params = self.parameters_record()
        fused = fused_steps(params, self.spike) if torch.is_grad_enabled() else None
        if fused is not None:
            return fused(params, current, self.spike, timesteps=timesteps), None
        return self.run(current.unsqueeze(0).expand((timesteps,) + tuple(current.shape)), None)

    def run(self, steps: torch.Tensor, state: object | None) -> tuple[torch.Tensor, object]:
        """The spikes of ``steps`` (T, B, *shape) from ``state`` (None: the state at t = 0) and the state after
        the last step, so that a run in chunks of steps equals one run."""
        params = self.parameters_record()
        if state is None and torch.is_grad_enabled():
            fused = fused_steps(params, self.spike)
            if fused is not None:  # training, one chunk: all T steps in one autograd Function (torch_fused.py)
                return fused(params, steps, self.spike), None
        if state is None:
            state = self.dynamics.start(params, tuple(steps.shape[1:]))
        out = []
        for current in steps:
            state, s = self.dynamics.step(params, state, current, self.spike)
            out.append(s)
        return torch.stack(out), state


class _SpikingMaxPool2d(_Fixed, nn.Module):
    """Increments of the running max of cumulative spike counts (the reference's ``_MaxCountState``)."""

    stateful = True

    def __init__(self, op: ops.SpikingMaxPool2d) -> None:
        super().__init__()
        self.op = op

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        return self.run(steps, None)[0]

    def run(self, steps: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
            ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``state``: the counts and the pooled counts after the previous chunk's last step (None at t = 0). With
        gradients on (one chunk, training) the pooling is :func:`~snncc.runtime.torch_fused.spiking_max_pool`, whose
        backward is explicit, and no state is returned."""
        if state is None and torch.is_grad_enabled():
            return spiking_max_pool(steps, self.op.kernel, self.op.stride, self.op.padding), None
        counts = _cumsum_from(steps, None if state is None else state[0])  # exact: sums of small integers
        flat = counts.reshape((-1,) + tuple(steps.shape[2:]))
        running_max = _pool_reduce(_pad_spatial(flat, self.op.padding, float("-inf")), self.op.kernel,
                                   self.op.stride, torch.maximum)
        running_max = running_max.reshape(steps.shape[:2] + running_max.shape[1:])
        first = running_max[:1] if state is None else running_max[:1] - state[1]
        return torch.cat([first, running_max[1:] - running_max[:-1]]), (counts[-1], running_max[-1])


class _Readout(_Fixed, nn.Module):
    """The running mean ``(1/t) sum_tau I(tau)``, accumulated in float64 and rounded once, as the reference."""

    stateful = True

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        return self.run(steps, None)[0]

    def run(self, steps: torch.Tensor, state: tuple[torch.Tensor, int] | None
            ) -> tuple[torch.Tensor, tuple[torch.Tensor, int]]:
        """``state``: the float64 total and the number of steps before this chunk (None at t = 0)."""
        total = _cumsum_from(steps.to(torch.float64), None if state is None else state[0])
        before = 0 if state is None else state[1]
        t = torch.arange(before + 1, before + len(steps) + 1, dtype=torch.float64, device=steps.device)
        mean = (total / t.reshape((-1,) + (1,) * (steps.dim() - 1))).to(torch.float32)
        return mean, (total[-1], before + len(steps))


# ----------------------------------------------------------------------------------------------------------------
# The table and the module
# ----------------------------------------------------------------------------------------------------------------

#: How each op class is lowered: ``factory(op, device)`` -> module (stateless modules take one tensor per operand,
#: steps folded into the batch). Populations, which need their shape and spike function, are built by
#: :class:`LoweredGraph` through :class:`_Population` and by :class:`LoweredTemporalGraph` through
#: :class:`_WindowPopulation`.
LOWERINGS: dict[type[ops.Op], Callable[[ops.Op, torch.device], nn.Module]] = {
    ops.Conv2d: _Conv2d,
    ops.Linear: _Linear,
    ops.AvgPool2d: _stateless(_avg_pool2d),
    ops.GlobalAvgPool: _stateless(lambda op, x: x.mean(dim=(2, 3), keepdim=True)),
    ops.Pad2d: _stateless(lambda op, x: _pad_spatial(x, op.padding, float(np.float32(op.value)))),
    ops.ChannelPad: _stateless(_channel_pad),
    ops.Slice: _stateless(_slice),
    ops.Affine: _Affine,
    ops.Flatten: _stateless(lambda op, x: x.reshape(x.shape[0], -1)),
    ops.Reshape: _stateless(lambda op, x: x.reshape((x.shape[0],) + tuple(op.shape))),
    ops.Identity: _stateless(lambda op, x: x),
    ops.Add: _stateless(lambda op, a, b: a + b),
    ops.Concat: _stateless(lambda op, *xs: torch.cat(xs, dim=op.axis + 1)),
    ops.MaxPool2d: _stateless(lambda op, x: _pool_reduce(_pad_spatial(x, op.padding, float("-inf")), op.kernel,
                                                        op.stride, torch.maximum)),  # graded values (FS graphs)
    ops.SpikingMaxPool2d: lambda op, device: _SpikingMaxPool2d(op),
    ops.Readout: lambda op, device: _Readout(),
}


class SpikeCounts(Mapping):
    """Per population, its spike events at each step, (T, B): the spike trains summed over the neurons, negative
    spikes of signed neurons counted. Summed where a train is added, or, ``lazy`` (in a training forward, where
    they are rarely read), where a count is first read: a training step that reads none skips a pass over every
    population's (T, B, *shape) spikes. A count read with gradients on is differentiable (spike-count penalties)."""

    def __init__(self, lazy: bool = False) -> None:
        self.lazy = lazy
        self._counts: dict[str, torch.Tensor | None] = {}  # in the order added; None: not summed yet
        self._trains: dict[str, tuple[torch.Tensor, bool]] = {}

    def add(self, node: str, trains: torch.Tensor, signed: bool) -> None:
        """The spike trains ``trains`` (T, B, *shape) of population ``node``, ``signed`` for signed neurons."""
        if self.lazy:
            self._counts[node], self._trains[node] = None, (trains, signed)
        else:
            self._counts[node] = _spike_events(trains, signed)

    def __getitem__(self, node: str) -> torch.Tensor:
        if self._counts[node] is None:
            self._counts[node] = _spike_events(*self._trains.pop(node))
        return self._counts[node]

    def __iter__(self):
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)


def _spike_events(trains: torch.Tensor, signed: bool) -> torch.Tensor:
    """(T, B) spike events of ``trains`` (T, B, *shape), summed over the neuron axes in place (a reshape would copy
    a channels-last batch; the sums are of small integers, exact in any order)."""
    events = trains.abs() if signed else trains  # else 0/1 already
    neuron_axes = tuple(range(2, events.dim()))
    return events.sum(dim=neuron_axes) if neuron_axes else events.reshape(events.shape[:2] + (-1,)).sum(dim=2)


@dataclass
class LoweredResult:
    """What one forward pass of a :class:`LoweredGraph` computed.

    ``outputs``: per graph output, (T, B, *shape) (the readout after each step; differentiable). ``spikes``: per
    population, (T, B) spike events at each step (negative spikes of signed neurons counted; differentiable, for
    spike-count penalties; a :class:`SpikeCounts` in a rate-coded forward). ``synops``: (T, B) float64 synaptic
    operations per step, counted as the reference does (events times the fan-out of the current weights, see
    :meth:`LoweredGraph.fan_outs_of`), or None where they
    were not counted (:attr:`LoweredGraph.count_synops`). ``max_spikes_per_neuron``: per population, the most spikes
    one neuron emitted (temporal graphs only, as the temporal simulator reports it)."""

    outputs: list[torch.Tensor]
    spikes: Mapping[str, torch.Tensor]
    synops: torch.Tensor | None
    max_spikes_per_neuron: dict[str, int] = dataclasses.field(default_factory=dict)


def _conv_fan_out(layer: _Conv2d, weight: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The synapses leaving each input element of a convolution with ``weight``: the adjoint convolution of ones
    with the non-zero mask of the weights, on the padded input, cropped to the real input (the count of
    :func:`snncc.runtime.kernels.fan_out`, computed on the weights' device)."""
    op = layer.op
    channels, h, w = in_shape
    t, l, b, r = op.padding
    hp, wp = h + t + b, w + l + r
    (kh, kw), (sh, sw), (dh, dw) = weight.shape[2:], op.stride, op.dilation
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    mask = (weight != 0).to(torch.float32)
    ones = mask.new_ones((1, weight.shape[0], ho, wo))
    reached = F.conv_transpose2d(ones, mask, stride=op.stride, dilation=op.dilation, groups=op.groups)
    reached = F.pad(reached, (0, wp - reached.shape[3], 0, hp - reached.shape[2]))  # rows no window reaches
    return reached[0, :, t:t + h, l:l + w].reshape(-1)


def _linear_fan_out(layer: _Linear, weight: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    return (weight != 0).sum(dim=0).to(torch.float32)


#: Fan-outs that follow a layer's trainable weights, by lowered class: ``count(layer, weight, input shape)`` -> the
#: synapses leaving each input element (flat). Synaptic ops without trainable weights (average pooling) keep the
#: fan-outs of the graph.
WEIGHT_FAN_OUTS: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor, tuple[int, ...]], torch.Tensor]] = {
    _Conv2d: _conv_fan_out,
    _Linear: _linear_fan_out,
}


class _LoweredByNode(nn.Module):
    """What the rate and the temporal lowering share: one module per graph node (``layers[index[node]]``), its
    parameters by node, and the fan-outs of the synaptic ops."""

    #: Whether a forward pass counts synaptic operations: True, False, or None (the default) for "when gradients are
    #: off" -- counted in evaluation and by the simulator backend (which runs under ``torch.no_grad``), skipped in a
    #: training forward, where the count carries no gradient and costs a pass over every layer's input events.
    count_synops: bool | None = None

    def _setup(self, graph: Graph, spike: Surrogate, device: torch.device) -> None:
        if graph.level != ops.SNN:
            raise SimulationError(f"the torch lowering takes SNN-level graphs; this graph is at the {graph.level} "
                                  "level (convert it first, e.g. with the convert-rate or convert-fs pass)")
        self.graph, self.spike, self.device = graph, spike, device
        self.order = graph.topological_order()
        types = graph.types()
        self.shapes = {n: types[n].shape for n in self.order}
        self.layers = nn.ModuleList()
        self.index: dict[str, int] = {}
        self._fixed_fan_outs: dict[str, list[torch.Tensor]] = {}
        self._fan_out_cache: dict[str, tuple[tuple[int, int], list[torch.Tensor]]] = {}
        for node in self.order:
            op = graph.op(node)
            if isinstance(op, ops.Input):
                continue
            in_shape = types[graph.inputs(node)[0]].shape
            module = self._lower(node, op, in_shape, device)
            self.index[node] = len(self.layers)
            self.layers.append(module)
            if op.synaptic and type(module) not in WEIGHT_FAN_OUTS:
                self._fixed_fan_outs[node] = [_tensor(f.ravel(), device) for f in fan_outs(op, in_shape)]
        self.populations = [n for n in self.order if isinstance(graph.op(n), ops.Population)]
        # Where each value is read for the last time: it is dropped there (outputs are kept), bounding memory.
        self.last_use = {u: node for node in self.order for u in graph.inputs(node)}

    def _lower(self, node: str, op: ops.Op, in_shape: tuple[int, ...], device: torch.device) -> nn.Module:
        raise NotImplementedError

    def _lower_stateless(self, node: str, op: ops.Op, device: torch.device) -> nn.Module:
        factory = LOWERINGS.get(type(op))
        if factory is None:
            raise SimulationError(f"node {node!r}: {op.kind} is not lowered to torch yet (lowered: "
                                  f"{', '.join(sorted(c.kind for c in LOWERINGS))}, Population)")
        return factory(op, device)

    def to_graph(self) -> Graph:
        """The lowered graph with every trained parameter written back into its op (each module's
        ``trained_op``): float32 weights, biases, thresholds, decays. Attributes, metadata and placements are
        copied; the result simulates as this module does."""
        graph = self.graph.clone()
        for node, i in self.index.items():
            try:
                graph.replace(node, self.layers[i].trained_op(graph.op(node)))
            except SnnccError as exc:
                raise type(exc)(f"node {node!r}: {exc}") from exc
        return graph

    def module_of(self, node: str) -> nn.Module:
        """The lowered module of graph node ``node``."""
        if node not in self.index:
            raise SimulationError(f"node {node!r} is not a lowered node of this graph (an input, or not in the "
                                  f"graph); lowered nodes: {', '.join(self.index)}")
        return self.layers[self.index[node]]

    def parameters_of(self, node: str) -> dict[str, nn.Parameter]:
        """The trainable parameters of graph node ``node`` by name (``weight``, ``bias``, ``threshold``, ...; empty
        for an op without any), to freeze or select them per layer: ``for p in m.parameters_of("conv1").values():
        p.requires_grad_(False)``."""
        return dict(self.module_of(node).named_parameters())

    def named_parameters_by_node(self) -> list[tuple[str, nn.Parameter]]:
        """Every trainable parameter as ``("<node>.<name>", parameter)``, in topological order (``named_parameters``
        names them by position in ``layers`` instead)."""
        return [(f"{node}.{name}", p) for node in self.index for name, p in self.parameters_of(node).items()]

    def fan_outs_of(self, node: str) -> list[torch.Tensor]:
        """Per operand of synaptic ``node``, the synapses leaving each input element (flat, float32): those of its
        current weights ``W * g_i``, recomputed when the weights have changed since the last call (an optimizer
        step, a loaded state), so synaptic operations follow fine-tuning (a weight trained away from zero adds its
        synapses). Average pooling keeps the graph's."""
        module = self.module_of(node)
        count = WEIGHT_FAN_OUTS.get(type(module))
        if count is None:
            return self._fixed_fan_outs[node]
        key = (module.weight._version, module.weight.data_ptr())
        cached = self._fan_out_cache.get(node)
        if cached is None or cached[0] != key:
            shape = self.shapes[self.graph.inputs(node)[0]]
            with torch.no_grad():
                cached = self._fan_out_cache[node] = (key, [count(module, w, shape) for w in module.scaled_weights()])
        return cached[1]

    def _input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.array(x, dtype=np.float32) if isinstance(x, np.ndarray) else x,
                               dtype=torch.float32, device=self.device)


class LoweredGraph(_LoweredByNode):
    """A rate-coded SNN-level graph as a torch module: ``forward(x, timesteps) -> LoweredResult`` with ``x`` the
    model inputs (B, *input shape), already scaled.

    With gradients enabled the T steps run as one chunk (the multi-step form backpropagation through time needs).
    Without gradients (evaluation) they run in chunks of steps, as the reference does, with every stateful op's
    state carried from one chunk to the next: at most about ``2^24`` values of the largest layer are held at once,
    whatever T is, and the results equal the one-chunk run exactly. ``chunk_steps`` sets the chunk length."""

    def __init__(self, graph: Graph, spike: Surrogate, device: torch.device) -> None:
        super().__init__()
        self._setup(graph, spike, device)
        self._population_set = frozenset(self.populations)
        self._largest = max(int(np.prod(s)) for s in self.shapes.values())

    def _lower(self, node: str, op: ops.Op, in_shape: tuple[int, ...], device: torch.device) -> nn.Module:
        if isinstance(op, ops.Population):
            dynamics = dynamics_of(op.neuron)
            if not dynamics.stepped:
                raise SimulationError(f"node {node!r}: {op.neuron.kind} populations (temporal coding) go to the "
                                      "temporal lowering; lower the whole graph with lower(graph), which picks it, "
                                      "and convert every activation with one method")
            return _Population(op, in_shape, self.spike, device)
        return self._lower_stateless(node, op, device)

    def eval_chunk_steps(self, batch: int, timesteps: int) -> int:
        """Steps per chunk without gradients: the reference's rule, about ``2^24`` values of the largest layer."""
        return max(1, min(timesteps, _CHUNK_VALUES // self._largest // batch))

    def forward(self, x: torch.Tensor, timesteps: int, chunk_steps: int | None = None) -> LoweredResult:
        T = timesteps
        if T < 1:
            raise SimulationError(f"timesteps must be at least 1, got {T}")
        x = self._input(x)
        if torch.is_grad_enabled() and self.device.type == "cpu":
            keep_freed_memory()  # training: each step's activations reuse the last step's memory (torch_memory.py)
        if chunk_steps is None:
            chunk_steps = T if torch.is_grad_enabled() else self.eval_chunk_steps(x.shape[0], T)
        elif chunk_steps < 1:
            raise SimulationError(f"chunk_steps must be at least 1, got {chunk_steps}")
        elif chunk_steps < T and torch.is_grad_enabled():
            # Backpropagation through time needs all T steps in one graph (the fused layers return no state).
            raise SimulationError(f"chunk_steps={chunk_steps} < T={T} with gradients enabled; chunks of steps are "
                                  "for evaluation: run under torch.no_grad(), or leave chunk_steps unset")
        states: dict[str, object] = {}
        constants: dict[str, torch.Tensor] = {}
        parts = [self._run_chunk(x, min(chunk_steps, T - t0), states, constants) for t0 in range(0, T, chunk_steps)]
        if len(parts) == 1:
            return parts[0]
        return LoweredResult([torch.cat([p.outputs[i] for p in parts]) for i in range(len(parts[0].outputs))],
                             {n: torch.cat([p.spikes[n] for p in parts]) for n in parts[0].spikes},
                             None if parts[0].synops is None else torch.cat([p.synops for p in parts]))

    def _run_chunk(self, x: torch.Tensor, T: int, states: dict[str, object],
                   constants: dict[str, torch.Tensor]) -> LoweredResult:
        """``T`` steps from ``states`` (updated in place); ``constants`` holds the values constant in time, computed
        in the first chunk and kept for the others."""
        graph = self.graph
        batch = x.shape[0]
        # node -> (tensor, constant): a constant is (B, *shape), computed once; otherwise (T * B, *shape).
        values: dict[str, tuple[torch.Tensor, bool]] = {n: (v, True) for n, v in constants.items()}
        spikes = SpikeCounts(lazy=torch.is_grad_enabled())
        counting = not torch.is_grad_enabled() if self.count_synops is None else self.count_synops
        synops = torch.zeros((T, batch), dtype=torch.float64, device=self.device) if counting else None

        def steps(node: str) -> torch.Tensor:
            data, constant = values[node]
            if constant:
                return data.unsqueeze(0).expand((T,) + tuple(data.shape))
            return data.reshape((T, batch) + tuple(data.shape[1:]))

        for node in self.order:
            if node in constants:
                continue
            op = graph.op(node)
            if isinstance(op, ops.Input):
                values[node] = (x, True)
                constants[node] = x
                continue
            module = self.layers[self.index[node]]
            inputs = graph.inputs(node)
            if getattr(module, "stateful", False):
                data, constant = values[inputs[0]]
                if constant and states.get(node) is None and hasattr(module, "run_constant"):
                    out, states[node] = module.run_constant(data, T)  # the first layer's current
                else:
                    out, states[node] = module.run(steps(inputs[0]), states.get(node))
                if node in self._population_set:
                    spikes.add(node, out, getattr(op.neuron, "signed", False))
                values[node] = (out.reshape((T * batch,) + tuple(out.shape[2:])), False)
            elif all(values[u][1] for u in inputs):
                values[node] = (module(*(values[u][0] for u in inputs)), True)
                constants[node] = values[node][0]
            else:
                flat = [steps(u).reshape((T * batch,) + tuple(self.shapes[u])) for u in inputs]
                values[node] = (module(*flat), False)
                if op.synaptic and counting:
                    with torch.no_grad():
                        for u, weights in zip(inputs, self.fan_outs_of(node)):
                            if not values[u][1]:  # each operand's events cost its own fan-out
                                events = (steps(u) != 0).reshape(T, batch, -1).to(torch.float32)
                                synops += (events @ weights).to(torch.float64)
            for u in inputs:
                if self.last_use[u] == node and u not in graph.outputs:
                    values.pop(u, None)
        outputs = [steps(o) for o in graph.outputs]
        return LoweredResult(outputs, spikes, synops)

    def forward_analog(self, x: torch.Tensor, record: tuple[str, ...] = ()) -> AnalogResult:
        """The ANN the conversion assumed, with this module's parameters (the same ``nn.Parameter`` objects):
        every population is its rate function (:data:`ANALOG_RATES`, e.g. IF's ``clip(I / theta, 0, 1)``, one
        spike per step at most), a spiking max pooling is the max pooling of those rates, a readout its input.
        One pass on ``(B, *shape)``, no time axis. ``record`` names nodes whose values are returned too."""
        graph = self.graph
        x = torch.as_tensor(np.array(x, dtype=np.float32) if isinstance(x, np.ndarray) else x, dtype=torch.float32,
                            device=self.device)
        values: dict[str, torch.Tensor] = {}
        keep = set(record) | set(graph.outputs)
        for node in self.order:
            op = graph.op(node)
            if isinstance(op, ops.Input):
                values[node] = x
                continue
            module = self.layers[self.index[node]]
            args = [values[u] for u in graph.inputs(node)]
            analog = ANALOG_FORMS.get(type(op))
            values[node] = module(*args) if analog is None else analog(node, op, module, *args)
            for u in graph.inputs(node):
                if self.last_use[u] == node and u not in keep:
                    values.pop(u, None)
        return AnalogResult([values[o] for o in graph.outputs], {n: values[n] for n in record})


@dataclass
class AnalogResult:
    """What :meth:`LoweredGraph.forward_analog` computed: per graph output its value (B, *shape), and the values of
    the recorded nodes (differentiable)."""

    outputs: list[torch.Tensor]
    values: dict[str, torch.Tensor]


def _if_rate(params, current: torch.Tensor) -> torch.Tensor:
    """IF (reset by subtraction or to zero, signed or not): for a constant current ``I`` the spike rate tends to
    ``clip(I / theta, 0, 1)`` (Rueckauer et al. 2017), the clipped ReLU that normalization and convert-rate assume."""
    return (current / params.threshold).clamp(0.0, 1.0)


#: The rate function of each stepped neuron model: ``rate(parameter record, current) -> rate`` in spikes per step.
ANALOG_RATES: dict[type, Callable[..., torch.Tensor]] = {IF: _if_rate}


def _analog_population(node: str, op: ops.Population, module: _Population, current: torch.Tensor) -> torch.Tensor:
    rate = ANALOG_RATES.get(type(op.neuron))
    if rate is None:
        raise SimulationError(f"node {node!r}: {op.neuron.kind} populations have no rate function in the analog "
                              f"mode of the torch lowering (models with one: "
                              f"{', '.join(sorted(m.kind for m in ANALOG_RATES))})")
    return rate(module.parameters_record(), current)


def _analog_max_pool(node: str, op: ops.SpikingMaxPool2d, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _pool_reduce(_pad_spatial(x, op.padding, float("-inf")), op.kernel, op.stride, torch.maximum)


#: How the stateful ops run in :meth:`LoweredGraph.forward_analog`: ``form(node, op, module, *operands)``; every
#: other op runs its lowered module on the analog values.
ANALOG_FORMS: dict[type[ops.Op], Callable[..., torch.Tensor]] = {
    ops.Population: _analog_population,
    ops.SpikingMaxPool2d: _analog_max_pool,
    ops.Readout: lambda node, op, module, x: x,
}


# ----------------------------------------------------------------------------------------------------------------
# Temporal graphs (FS, AMOS): one window per population, the temporal simulator's schedule
# ----------------------------------------------------------------------------------------------------------------

def _few_spike_trained(neuron: FewSpike, record: object) -> FewSpike:
    return dataclasses.replace(neuron, threshold=_floats(record.threshold), height=_floats(record.height),
                               weight=_floats(record.weight), offset=float(record.offset.detach()))


def _amos_trained(neuron: Amos, record: object) -> Amos:
    k = neuron.steps
    rows, cols = np.tril_indices(k, -1)  # the record's strictly lower triangle, row by row (Amos.inhibition)
    inhibition = record.inhibition.detach().cpu().numpy()[rows, cols]
    return dataclasses.replace(neuron, threshold=_floats(record.threshold), weight=_floats(record.weight),
                               gain=_floats(record.gain), inhibition=tuple(float(v) for v in inhibition),
                               offset=float(record.offset.detach()))


def _floats(values: torch.Tensor) -> tuple[float, ...]:
    """Float32 parameters as the IR's tuple of floats (exact: every float32 is a float)."""
    return tuple(float(v) for v in values.detach().cpu().numpy())


#: How a temporal neuron model takes back its trained window parameters (the record's tensors) into the IR, by model
#: class.
TRAINED_WINDOW_NEURONS: dict[type, Callable[[object, object], object]] = {
    FewSpike: _few_spike_trained,
    Amos: _amos_trained,
}


class _WindowPopulation(nn.Module):
    """A population of a window model (FS, AMOS): the window function of
    :data:`~snncc.runtime.dynamics.DYNAMICS` with the lowering's surrogate spike, every array of its parameter
    record an ``nn.Parameter`` (FS: threshold, height, output weight ``d`` per step and the offset; AMOS: threshold,
    output weight, gain per neuron, the inhibition matrix, of which only the strict lower triangle is read, and the
    offset)."""

    def __init__(self, op: ops.Population, spike: Surrogate, device: torch.device) -> None:
        super().__init__()
        self.dynamics = dynamics_of(op.neuron, stepped=False)
        self.spike = spike
        record = self.dynamics.parameters(op.neuron, (), np)
        self._record = record
        self._fields = [f.name for f in dataclasses.fields(record)]
        for name in self._fields:
            self.register_parameter(name, nn.Parameter(_tensor(getattr(record, name), device)))

    def parameters_record(self):
        return dataclasses.replace(self._record, **{name: getattr(self, name) for name in self._fields})

    def forward(self, x: torch.Tensor) -> Window:
        """The window of gate input ``x`` (B, *shape): value, and the spikes of each of its K steps."""
        return self.dynamics.window(self.parameters_record(), x, self.spike)

    def trained_op(self, op: ops.Population) -> ops.Population:
        """``op`` with the trained window parameters written back."""
        neuron = TRAINED_WINDOW_NEURONS[type(op.neuron)](op.neuron, self.parameters_record())
        return dataclasses.replace(op, neuron=neuron)


class LoweredTemporalGraph(_LoweredByNode):
    """A temporally coded SNN-level graph (FS or AMOS populations) as a torch module whose forward pass is the
    temporal simulator's (:class:`snncc.runtime.temporal.TemporalSimulator`, whose schedule it uses):

    - every node is evaluated once per input: a population runs its window of K steps on its complete gate input
      (the window function of the dynamics table with a :class:`~snncc.runtime.dynamics.Surrogate` spike) and
      passes on its decoded value ``offset + sum_t d(t) z(t)``; linear ops act on decoded values;
    - a population's window starts when the windows of all populations it depends on have ended (an Add of
      branches of different depth waits for the later one), so its spikes are placed at steps ``start .. start + K``
      of the (T, B) counts, cut off at T;
    - the readout answers at the latency (the end of the last window): ``outputs[t]`` is zero for ``t < latency - 1``
      and the value from there on;
    - synaptic operations as the temporal simulator counts them: a synaptic op fed by spikes costs ``fan_out`` per
      spike at the step of the spike, one fed by a graded value ``fan_out`` per non-zero input once, at the last
      step of its input's window.

    ``forward(x, timesteps=None)`` (default: the latency) returns a :class:`LoweredResult`. There is no time axis
    to chunk: every activation is held for one step of the batch, whatever T."""

    def __init__(self, graph: Graph, spike: Surrogate, device: torch.device) -> None:
        super().__init__()
        self.schedule = TemporalSimulator(graph)  # start, end and latency of every node; checks the populations
        self._setup(graph, spike, device)
        self.latency = self.schedule.latency
        # Per synaptic node, each operand and the population whose spikes reach it (None for a graded value).
        self._spike_sources = {n: [self.schedule._spike_source(u) for u in graph.inputs(n)]
                               for n in self.order if graph.op(n).synaptic}

    def _lower(self, node: str, op: ops.Op, in_shape: tuple[int, ...], device: torch.device) -> nn.Module:
        if isinstance(op, ops.Population):
            return _WindowPopulation(op, self.spike, device)
        if isinstance(op, ops.Readout):  # the value of a complete window; the answer is placed at the latency
            return _Stateless(op, lambda op, x: x)
        return self._lower_stateless(node, op, device)

    def forward(self, x: torch.Tensor, timesteps: int | None = None) -> LoweredResult:
        graph, schedule = self.graph, self.schedule
        T = self.latency if timesteps is None else timesteps
        if T < 1:
            raise SimulationError(f"timesteps must be at least 1, got {T}")
        x = self._input(x)
        batch = x.shape[0]
        values: dict[str, torch.Tensor] = {}
        spikes: dict[str, torch.Tensor] = {}
        most: dict[str, int] = {}
        synops = torch.zeros((T, batch), dtype=torch.float64, device=self.device)
        # Per population, its operands' synaptic costs are counted when its spikes are known.
        fed_by: dict[str, list[torch.Tensor]] = {p: [] for p in self.populations}
        for node, sources in self._spike_sources.items():
            for source, weights in zip(sources, self.fan_outs_of(node)):
                if source is not None:
                    fed_by[source].append(weights.to(torch.float64))
        for node in self.order:
            op = graph.op(node)
            inputs = graph.inputs(node)
            if isinstance(op, ops.Input):
                values[node] = x
                continue
            module = self.layers[self.index[node]]
            if isinstance(module, _WindowPopulation):
                window = module(values[inputs[0]])
                values[node] = window.value
                trains = torch.stack(window.spikes)  # (K, B, *shape)
                per_step = trains.reshape(len(trains), batch, -1).sum(dim=2)
                spikes[node] = _place(per_step, schedule.start[node], T)
                with torch.no_grad():
                    # FS: a neuron's spikes are its unit's over the window; AMOS: neuron j is row j of the unit.
                    per_neuron = trains if graph.op(node).neuron.neurons_per_unit > 1 else trains.sum(dim=0)
                    most[node] = int(per_neuron.max()) if per_neuron.numel() else 0
                    flat = trains.detach().reshape(len(trains), batch, -1).to(torch.float64)
                    for weights in fed_by[node]:
                        synops += _place(flat @ weights, schedule.start[node], T)
            else:
                values[node] = module(*(values[u] for u in inputs))
                if op.synaptic:
                    with torch.no_grad():
                        for u, source, weights in zip(inputs, self._spike_sources[node], self.fan_outs_of(node)):
                            if source is None:  # a graded value: each non-zero input costs its fan-out, once
                                events = (values[u].reshape(batch, -1) != 0).to(torch.float64) @ weights.double()
                                synops += _place(events.unsqueeze(0), max(schedule.end[u] - 1, 0), T)
            for u in inputs:
                if self.last_use[u] == node and u not in graph.outputs:
                    values.pop(u, None)
        outputs = [self._answer(values[o], T) for o in graph.outputs]
        return LoweredResult(outputs, spikes, synops, most)

    def _answer(self, value: torch.Tensor, T: int) -> torch.Tensor:
        """(T, B, *shape): zero before the latency, ``value`` from its last step on."""
        if self.latency > T:
            return value.new_zeros((T,) + tuple(value.shape))
        waiting = value.new_zeros((self.latency - 1,) + tuple(value.shape))
        return torch.cat([waiting, value.unsqueeze(0).expand((T - self.latency + 1,) + tuple(value.shape))])


def _place(per_step: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """(T, B): ``per_step`` (steps, B) from step ``start``, zeros elsewhere, steps past T cut off (differentiable)."""
    stop = min(start + len(per_step), T)
    if stop <= start:
        return per_step.new_zeros((T,) + tuple(per_step.shape[1:]))
    before = per_step.new_zeros((start,) + tuple(per_step.shape[1:]))
    after = per_step.new_zeros((T - stop,) + tuple(per_step.shape[1:]))
    return torch.cat([before, per_step[:stop - start], after])


def _device(device: str | torch.device | None) -> torch.device:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SimulationError(f"device {device} was asked for but torch sees no CUDA device here (torch "
                              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); run on the CPU "
                              "(device 'cpu', --device cpu) or on a machine with a CUDA GPU and a CUDA build of torch")
    return device


def lower(graph: Graph, surrogate: str = "fast-sigmoid", width: float = 0.5,
          device: str | torch.device | None = None) -> LoweredGraph | LoweredTemporalGraph:
    """The SNN-level ``graph`` as a differentiable module on ``device`` (default CPU): a :class:`LoweredGraph` for
    a rate-coded graph, a :class:`LoweredTemporalGraph` for one with FS/AMOS populations.

    Spikes are the hard threshold ``v >= theta`` forward and the surrogate derivative ``surrogate`` (a name of
    :data:`snncc.runtime.dynamics.SURROGATES`) of ``width`` backward."""
    lowering = LoweredTemporalGraph if is_temporal(graph) else LoweredGraph
    return lowering(graph, Surrogate(surrogate, width), _device(device))


class TorchSimulator:
    """The simulator backend ``"torch"``: the lowering's forward pass without gradients, as a
    :class:`~snncc.runtime.reference.BatchResult`. Rate-coded and temporal graphs (then ``timesteps`` None is the
    latency, and the engine has ``latency`` as the temporal simulator does); ``device`` as for :func:`lower`."""

    def __init__(self, graph: Graph, timesteps: int | None, device: str | None = None) -> None:
        if timesteps is not None and timesteps < 1:
            raise SimulationError(f"timesteps must be at least 1, got {timesteps}")
        self.module = lower(graph, device=device)
        temporal = isinstance(self.module, LoweredTemporalGraph)
        if timesteps is None and not temporal:
            raise SimulationError("timesteps must be given for a rate-coded network (its answer improves with time)")
        if temporal:
            self.latency = self.module.latency
            self._populations = self.module.schedule.populations()
        else:
            types = graph.types()
            self._populations = {n: types[n].size for n in self.module.populations}
        self.timesteps = self.latency if timesteps is None else timesteps

    def populations(self) -> dict[str, int]:
        return dict(self._populations)

    def run_batch(self, x: np.ndarray) -> BatchResult:
        with torch.no_grad():
            result = self.module(x, self.timesteps)
        return BatchResult([o.cpu().numpy() for o in result.outputs],
                           {n: result.spikes[n].cpu().numpy() for n in self._populations},
                           result.synops.cpu().numpy(), dict(result.max_spikes_per_neuron))
