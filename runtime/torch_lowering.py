"""The torch lowering of rate-coded SNN-level graphs: ``lower(graph)`` is a differentiable ``torch.nn.Module`` whose
forward pass is the reference simulator's (:mod:`snncc.runtime.reference`), for fine-tuning with surrogate gradients
(Neftci, Mostafa & Zenke, "Surrogate gradient learning in spiking neural networks", IEEE Signal Processing Magazine
2019) and as the simulator backend ``"torch"``.

Multi-step schedule: ``module(x, T)`` walks the graph once in topological order. A stateless op (convolution,
linear layer, pooling, views, adds) runs once on all ``T`` steps folded into the batch axis, ``(T * B, *shape)``; a
stateful op (population, spiking max pooling, readout) loops over the ``T`` steps of its own input. There is no
Python loop over layers per step. As in the reference, values constant in time (the input and everything computed
from it alone, the first layer's current) are computed once, on ``(B, *shape)``.

The arithmetic is the reference's, in its order: the neurons are the step functions of
:data:`snncc.runtime.dynamics.DYNAMICS` (not written again here), biases are added after the products, a
shared-weight layer (``input_gains``) adds ``op(x_i; W * g_i)`` in operand order with the bias in the first, pooling
adds (or takes the max of) the window's views in the reference's order, the readout's running mean is accumulated in
float64. Only the convolutions' and matrix products' internal summation order is torch's, so currents may differ
from the reference's in the last bits (bounded by the float32 order bound); spikes then agree except where a
membrane lies within that rounding of a threshold.

Trainable (``nn.Parameter``): every weight array (one per shared-weight layer, used by all its operands), every
bias, the neurons' thresholds and neuron biases, the LIF decay ``beta = exp(-1 / tau_mem)`` and the CubaLIF
current/voltage retention factors. Fixed buffers: input gains, ``v_init`` (the initial membrane of the lowered
graph, ``v_init * threshold`` at lowering time), Affine scales and shifts, pad values.

Not lowered yet: temporal (FS, AMOS) populations, and any op without an entry in :data:`LOWERINGS`; both are refused
with an :class:`~snncc.errors.SimulationError` naming the node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.runtime.dynamics import Surrogate, dynamics_of
from snncc.runtime.kernels import fan_outs
from snncc.runtime.reference import BatchResult
from snncc.runtime.torch_fused import fused_steps, spiking_max_pool

#: Fields of a neuron model's parameter record (see runtime/dynamics.py) that the lowering trains.
TRAINABLE_NEURON_FIELDS = frozenset({"threshold", "decay", "bias", "keep_u", "keep_v"})


def _tensor(value: np.ndarray | float, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.array(value, dtype=np.float32), device=device)  # a copy: IR arrays are read-only


def _parameter(value: np.ndarray | None, device: torch.device) -> nn.Parameter | None:
    return None if value is None else nn.Parameter(_tensor(value, device))


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

    def product(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = _pad_spatial(x, self.op.padding, 0.0 if self.pad_value is None else self.pad_value)
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


class _Stateless(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _stateless(function: Callable[..., torch.Tensor]) -> Callable[[ops.Op, torch.device], nn.Module]:
    return lambda op, device: _Stateless(op, function)


# ----------------------------------------------------------------------------------------------------------------
# Stateful ops: each loops over the T steps of its input, given as (T, B, *shape)
# ----------------------------------------------------------------------------------------------------------------

class _Population(nn.Module):
    """A population of a stepped neuron model: the entry of :data:`~snncc.runtime.dynamics.DYNAMICS`, with the
    tensors of its parameter record as parameters (:data:`TRAINABLE_NEURON_FIELDS`) or buffers."""

    stateful = True

    def __init__(self, op: ops.Population, shape: tuple[int, ...], spike: Surrogate, device: torch.device) -> None:
        super().__init__()
        self.dynamics = dynamics_of(op.neuron, stepped=True)
        self.spike = spike
        record = self.dynamics.parameters(op.neuron, shape, np)
        self._record = record
        self._tensor_fields = []
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if isinstance(value, (np.ndarray, np.generic)):
                self._tensor_fields.append(f.name)
                if f.name in TRAINABLE_NEURON_FIELDS:
                    self.register_parameter(f.name, nn.Parameter(_tensor(value, device)))
                else:
                    self.register_buffer(f.name, _tensor(value, device))

    def parameters_record(self):
        return dataclasses.replace(self._record, **{name: getattr(self, name) for name in self._tensor_fields})

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        params = self.parameters_record()
        fused = fused_steps(params, self.spike)
        if fused is not None:  # all T steps in one autograd Function (runtime/torch_fused.py)
            return fused(params, steps, self.spike)
        state = self.dynamics.start(params, tuple(steps.shape[1:]))
        out = []
        for current in steps:
            state, s = self.dynamics.step(params, state, current, self.spike)
            out.append(s)
        return torch.stack(out)


class _SpikingMaxPool2d(nn.Module):
    """Increments of the running max of cumulative spike counts (the reference's ``_MaxCountState``)."""

    stateful = True

    def __init__(self, op: ops.SpikingMaxPool2d) -> None:
        super().__init__()
        self.op = op

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        return spiking_max_pool(steps, self.op.kernel, self.op.stride, self.op.padding)


class _Readout(nn.Module):
    """The running mean ``(1/t) sum_tau I(tau)``, accumulated in float64 and rounded once, as the reference."""

    stateful = True

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        total = torch.cumsum(steps.to(torch.float64), dim=0)
        t = torch.arange(1, len(steps) + 1, dtype=torch.float64, device=steps.device)
        return (total / t.reshape((-1,) + (1,) * (steps.dim() - 1))).to(torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# The table and the module
# ----------------------------------------------------------------------------------------------------------------

#: How each op class is lowered: ``factory(op, device)`` -> module (stateless modules take one tensor per operand,
#: steps folded into the batch). Populations, which need their shape and spike function, are built by
#: :class:`LoweredGraph` through :class:`_Population`.
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
    ops.SpikingMaxPool2d: lambda op, device: _SpikingMaxPool2d(op),
    ops.Readout: lambda op, device: _Readout(),
}


@dataclass
class LoweredResult:
    """What one forward pass of a :class:`LoweredGraph` computed.

    ``outputs``: per graph output, (T, B, *shape) (the readout after each step; differentiable). ``spikes``: per
    population, (T, B) spike events at each step (negative spikes of signed neurons counted; differentiable, for
    spike-count penalties). ``synops``: (T, B) float64 synaptic operations per step, counted as the reference does
    (events times the fan-out of the weights at lowering time), or None where they were not counted
    (:attr:`LoweredGraph.count_synops`)."""

    outputs: list[torch.Tensor]
    spikes: dict[str, torch.Tensor]
    synops: torch.Tensor | None


class LoweredGraph(nn.Module):
    """A rate-coded SNN-level graph as a torch module: ``forward(x, timesteps) -> LoweredResult`` with ``x`` the
    model inputs (B, *input shape), already scaled."""

    #: Whether a forward pass counts synaptic operations: True, False, or None (the default) for "when gradients are
    #: off" -- counted in evaluation and by the simulator backend (which runs under ``torch.no_grad``), skipped in a
    #: training forward, where the count carries no gradient and costs a pass over every layer's input events.
    count_synops: bool | None = None

    def __init__(self, graph: Graph, spike: Surrogate, device: torch.device) -> None:
        super().__init__()
        if graph.level != ops.SNN:
            raise SimulationError(f"the torch lowering takes SNN-level graphs; this graph is at the {graph.level} "
                                  "level (convert it first, e.g. with the convert-rate pass)")
        self.graph, self.spike, self.device = graph, spike, device
        self.order = graph.topological_order()
        types = graph.types()
        self.shapes = {n: types[n].shape for n in self.order}
        self.layers = nn.ModuleList()
        self.index: dict[str, int] = {}
        self.fan_outs: dict[str, list[torch.Tensor]] = {}
        for node in self.order:
            op = graph.op(node)
            if isinstance(op, ops.Input):
                continue
            module = self._lower(node, op, types[graph.inputs(node)[0]].shape, device)
            self.index[node] = len(self.layers)
            self.layers.append(module)
            if op.synaptic:
                self.fan_outs[node] = [_tensor(f.ravel(), device)
                                       for f in fan_outs(op, types[graph.inputs(node)[0]].shape)]
        self.populations = [n for n in self.order if isinstance(graph.op(n), ops.Population)]
        self._population_set = frozenset(self.populations)
        # Where each value is read for the last time: it is dropped there (outputs are kept), bounding memory.
        self.last_use = {u: node for node in self.order for u in graph.inputs(node)}

    def _lower(self, node: str, op: ops.Op, in_shape: tuple[int, ...], device: torch.device) -> nn.Module:
        if isinstance(op, ops.Population):
            dynamics = dynamics_of(op.neuron)
            if not dynamics.stepped:
                raise SimulationError(f"node {node!r}: {op.neuron.kind} populations (temporal coding) are not "
                                      "lowered to torch yet; simulate with the reference or cython backend")
            return _Population(op, in_shape, self.spike, device)
        factory = LOWERINGS.get(type(op))
        if factory is None:
            raise SimulationError(f"node {node!r}: {op.kind} is not lowered to torch yet (lowered: "
                                  f"{', '.join(sorted(c.kind for c in LOWERINGS))}, Population)")
        return factory(op, device)

    def forward(self, x: torch.Tensor, timesteps: int) -> LoweredResult:
        graph, T = self.graph, timesteps
        if T < 1:
            raise SimulationError(f"timesteps must be at least 1, got {T}")
        x = torch.as_tensor(np.array(x, dtype=np.float32) if isinstance(x, np.ndarray) else x, dtype=torch.float32,
                            device=self.device)
        batch = x.shape[0]
        # node -> (tensor, constant): a constant is (B, *shape), computed once; otherwise (T * B, *shape).
        values: dict[str, tuple[torch.Tensor, bool]] = {}
        spikes: dict[str, torch.Tensor] = {}
        counting = not torch.is_grad_enabled() if self.count_synops is None else self.count_synops
        synops = torch.zeros((T, batch), dtype=torch.float64, device=self.device) if counting else None

        def steps(node: str) -> torch.Tensor:
            data, constant = values[node]
            if constant:
                return data.unsqueeze(0).expand((T,) + tuple(data.shape))
            return data.reshape((T, batch) + tuple(data.shape[1:]))

        for node in self.order:
            op = graph.op(node)
            if isinstance(op, ops.Input):
                values[node] = (x, True)
                continue
            module = self.layers[self.index[node]]
            inputs = graph.inputs(node)
            if getattr(module, "stateful", False):
                out = module(steps(inputs[0]))
                if node in self._population_set:  # spike events, negative spikes of signed neurons included
                    events = out.abs() if getattr(op.neuron, "signed", False) else out  # else 0/1 already
                    spikes[node] = events.reshape(T, batch, -1).sum(dim=2)
                values[node] = (out.reshape((T * batch,) + tuple(out.shape[2:])), False)
            elif all(values[u][1] for u in inputs):
                values[node] = (module(*(values[u][0] for u in inputs)), True)
            else:
                flat = [steps(u).reshape((T * batch,) + tuple(self.shapes[u])) for u in inputs]
                values[node] = (module(*flat), False)
                with torch.no_grad():
                    for u, weights in zip(inputs, self.fan_outs.get(node, ()) if counting else ()):
                        if not values[u][1]:  # each operand's events cost its own fan-out
                            events = (steps(u) != 0).reshape(T, batch, -1).to(torch.float32)
                            synops += (events @ weights).to(torch.float64)
            for u in inputs:
                if self.last_use[u] == node and u not in graph.outputs:
                    values.pop(u, None)
        outputs = [steps(o) for o in graph.outputs]
        return LoweredResult(outputs, spikes, synops)


def _device(device: str | torch.device | None) -> torch.device:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SimulationError(f"device {device} was asked for but torch sees no CUDA device here; use device='cpu'")
    return device


def lower(graph: Graph, surrogate: str = "fast-sigmoid", width: float = 0.5,
          device: str | torch.device | None = None) -> LoweredGraph:
    """The rate-coded SNN-level ``graph`` as a differentiable :class:`LoweredGraph` on ``device`` (default CPU).

    Spikes are the hard threshold ``v >= theta`` forward and the surrogate derivative ``surrogate`` (a name of
    :data:`snncc.runtime.dynamics.SURROGATES`) of ``width`` backward."""
    return LoweredGraph(graph, Surrogate(surrogate, width), _device(device))


class TorchSimulator:
    """The simulator backend ``"torch"``: the lowering's forward pass without gradients, as a
    :class:`~snncc.runtime.reference.BatchResult`."""

    def __init__(self, graph: Graph, timesteps: int, device: str | None = None) -> None:
        if timesteps < 1:
            raise SimulationError(f"timesteps must be at least 1, got {timesteps}")
        self.timesteps = timesteps
        self.module = lower(graph, device=device)
        types = graph.types()
        self._populations = {n: types[n].size for n in self.module.populations}

    def populations(self) -> dict[str, int]:
        return dict(self._populations)

    def run_batch(self, x: np.ndarray) -> BatchResult:
        with torch.no_grad():
            result = self.module(x, self.timesteps)
        return BatchResult([o.cpu().numpy() for o in result.outputs],
                           {n: result.spikes[n].cpu().numpy() for n in self._populations},
                           result.synops.cpu().numpy())
