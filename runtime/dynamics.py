"""One definition of every neuron model's dynamics, looked up by model class in :data:`DYNAMICS`.

Every simulator and fit of snncc computes neurons through this module: the reference simulator
(:mod:`snncc.runtime.reference`), the temporal simulator (:mod:`snncc.runtime.temporal`), the FS/AMOS fits
(:mod:`snncc.passes.fs_fit`, with torch tensors and relaxed or surrogate spikes) and, later, the torch lowering for
fine-tuning. The compiled kernels (``runtime/_kernels.pyx``) are specialized copies for speed and are tested against
these functions spike for spike.

The functions are generic over the array module: they use only arithmetic operators and comparisons, so numpy
arrays and torch tensors go through the same lines (torch is never imported at module import time; the surrogate
gradients import it when a tensor first needs one). They are generic over the spike function too: the hard
threshold :data:`HEAVISIDE` (``v >= theta``), a :class:`Surrogate` (the same Heaviside forward, a chosen derivative
backward) or a relaxation for fitting.

Two kinds of entries, one table:

- **Step models** (IF, LIF): a parameter record, a state record per population and ``step(params, state, current,
  spike) -> (state, spikes)``, one time step of the membrane.
- **Window models** (FS, AMOS): the gate input is delivered once and the unit answers within its window of K steps;
  ``window(params, x, spike) -> Window(value, spikes, membranes)`` is the whole window.

Float32 order: every operation below is written in the order the simulators have always used (decay, add the
current, compare, reset; FS/AMOS outputs summed in step order with the offset last), because the compiled kernels
reproduce exactly that order and the published figures were computed with it. A spike ``s`` in {0, 1} enters the
arithmetic as a multiplication (``v - s * theta``), which gives the same float32 result as a masked update for
finite values, and is what a surrogate gradient needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from snncc.errors import SimulationError
from snncc.ir.neurons import IF, LIF, Amos, CubaLIF, FewSpike, NeuronModel

Array = Any  # a numpy array or a torch tensor


# ----------------------------------------------------------------------------------------------------------------
# Array helpers: dispatch on the array type, never import torch here
# ----------------------------------------------------------------------------------------------------------------

def _is_numpy(value: Array) -> bool:
    return isinstance(value, (np.ndarray, np.generic, float, int))


def as_float(condition: Array, like: Array) -> Array:
    """A boolean array as 0/1 of ``like``'s floating dtype."""
    if isinstance(condition, (np.ndarray, np.generic)):
        return condition.astype(like.dtype)
    return condition.to(like.dtype)


def _sigmoid(u: Array) -> Array:
    return 1 / (1 + np.exp(-u)) if _is_numpy(u) else u.sigmoid()


def _zeros_like(like: Array) -> Array:
    return np.zeros_like(like) if _is_numpy(like) else like.new_zeros(like.shape)


def _broadcast(value: Array, like: Array) -> Array:
    """``value`` broadcast to ``like``'s shape (a view)."""
    return np.broadcast_to(value, np.shape(like)) if _is_numpy(like) else value.expand_as(like)


def _float32(values: Any, xp: Any) -> Array:
    """``values`` as a float32 array of the array module ``xp`` (numpy or torch)."""
    return xp.asarray(values, dtype=xp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Spike functions
# ----------------------------------------------------------------------------------------------------------------

class SpikeFunction:
    """Maps a membrane ``v`` and a threshold to spikes of ``v``'s dtype."""

    def __call__(self, v: Array, threshold: Array) -> Array:
        raise NotImplementedError


@dataclass(frozen=True)
class Heaviside(SpikeFunction):
    """The hard threshold of every simulator: ``s = 1 if v >= threshold else 0`` (no gradient)."""

    def __call__(self, v: Array, threshold: Array) -> Array:
        return as_float(v >= threshold, v)


HEAVISIDE = Heaviside()


def _fast_sigmoid(u: Array) -> Array:
    return 0.5 / (1 + abs(u)) ** 2


def _arctan(u: Array) -> Array:
    return 0.5 / (1 + (math.pi / 2 * u) ** 2)


def _triangle(u: Array) -> Array:
    return (1 - abs(u)).clip(min=0)


def _logistic(u: Array) -> Array:
    s = _sigmoid(u)
    return s * (1 - s)


def _rectangle(u: Array) -> Array:
    return 0.5 * as_float(abs(u) <= 1, u)


#: Surrogate derivatives by name: ``F'(u)`` of a smooth step ``F`` from 0 to 1 (so each integrates to 1, as the
#: derivative of the Heaviside function, a Dirac delta, does). With width ``w`` the surrogate derivative of
#: ``H(v - theta)`` is ``F'((v - theta) / w) / w``.
#:
#: - ``fast-sigmoid`` (SuperSpike, Zenke & Ganguli, "SuperSpike: supervised learning in multilayer spiking neural
#:   networks", Neural Computation 30, 2018): ``F'(u) = 1 / (2 (1 + |u|)^2)``, the derivative of the fast sigmoid
#:   ``u / (1 + |u|)`` mapped to (0, 1).
#: - ``arctan`` (Fang et al., "Incorporating learnable membrane time constant to enhance learning of spiking neural
#:   networks", ICCV 2021): ``F(u) = arctan(pi u / 2) / pi + 1/2``, ``F'(u) = 1 / (2 (1 + (pi u / 2)^2))``.
#: - ``triangle`` (Esser et al., "Convolutional networks for fast, energy-efficient neuromorphic computing", PNAS
#:   2016; Bellec et al., "Long short-term memory and learning-to-learn in networks of spiking neurons", NeurIPS
#:   2018): ``F'(u) = max(0, 1 - |u|)``.
#: - ``logistic``: ``F = sigmoid``, ``F'(u) = sigmoid(u) (1 - sigmoid(u))``; the derivative the FS/AMOS fits use.
#: - ``rectangle`` (Wu, Deng, Li, Zhu & Shi, "Spatio-temporal backpropagation for training high-performance spiking
#:   neural networks", Frontiers in Neuroscience 2018): ``F'(u) = 1/2`` for ``|u| <= 1``, else 0; the derivative of
#:   ``F(u) = clip((u + 1) / 2, 0, 1)``. It is the logic gates' surrogate (:data:`GATE_SURROGATE`).
SURROGATES: dict[str, Callable[[Array], Array]] = {
    "fast-sigmoid": _fast_sigmoid, "arctan": _arctan, "triangle": _triangle, "logistic": _logistic,
    "rectangle": _rectangle}


_SURROGATE_FUNCTION = None


def _surrogate_function():
    """The torch autograd Function behind :class:`Surrogate`, defined on first use (torch imported here only)."""
    global _SURROGATE_FUNCTION
    if _SURROGATE_FUNCTION is None:
        import torch

        class SurrogateSpike(torch.autograd.Function):
            """Forward: exactly ``v >= threshold``. Backward: ``F'((v - theta) / w) / w`` for ``v``, its negative
            for a tensor ``threshold`` (summed over the axes it was broadcast along)."""

            @staticmethod
            def forward(ctx, v, threshold, derivative, width):
                threshold_tensor = torch.is_tensor(threshold)
                ctx.derivative, ctx.width, ctx.threshold_tensor = derivative, width, threshold_tensor
                ctx.save_for_backward(v, threshold if threshold_tensor else torch.as_tensor(threshold))
                return (v >= threshold).to(v.dtype)

            @staticmethod
            def backward(ctx, grad):
                v, threshold = ctx.saved_tensors
                slope = grad * (ctx.derivative((v - threshold) / ctx.width) / ctx.width)
                grad_v = slope.sum_to_size(v.shape) if ctx.needs_input_grad[0] else None
                grad_threshold = None
                if ctx.threshold_tensor and ctx.needs_input_grad[1]:
                    grad_threshold = -slope.sum_to_size(threshold.shape)
                return grad_v, grad_threshold, None, None

        _SURROGATE_FUNCTION = SurrogateSpike
    return _SURROGATE_FUNCTION


@dataclass(frozen=True, eq=False)
class Surrogate(SpikeFunction):
    """Heaviside forward (exactly :data:`HEAVISIDE`), surrogate derivative backward: ``F'((v - theta) / width) /
    width`` with ``F'`` the entry ``shape`` of :data:`SURROGATES` (surrogate gradient learning, Neftci, Mostafa &
    Zenke, IEEE Signal Processing Magazine 2019). ``width`` is in membrane units (thresholds are 1 after
    normalization); it may be a tensor. On numpy arrays it is the hard threshold (numpy has no gradients)."""

    shape: str = "fast-sigmoid"
    width: float = 0.5

    def __post_init__(self) -> None:
        if self.shape not in SURROGATES:
            raise SimulationError(f"unknown surrogate {self.shape!r}; choose one of {', '.join(SURROGATES)}")
        if isinstance(self.width, (int, float)) and not self.width > 0:
            raise SimulationError(f"surrogate width must be positive, got {self.width}")

    def derivative(self, x: Array) -> Array:
        """The backward pass's derivative of the spike with respect to the membrane at ``x = v - threshold``."""
        return SURROGATES[self.shape](x / self.width) / self.width

    def __call__(self, v: Array, threshold: Array) -> Array:
        if _is_numpy(v):
            return HEAVISIDE(v, threshold)
        return _surrogate_function().apply(v, threshold, SURROGATES[self.shape], self.width)


def is_logic_gate(neuron: NeuronModel) -> bool:
    """Whether ``neuron`` is a memoryless threshold gate (``LIF`` with ``tau_mem = 0``: ``s(t) = [I(t) >= theta]``),
    the neuron of the SEW connect functions AND and IAND (``passes/sew.py``)."""
    return isinstance(neuron, LIF) and np.all(np.asarray(neuron.tau_mem) == 0)


#: The surrogate spike of a logic gate, whatever the lowering's surrogate is. A gate of binary inputs ``a, b`` has
#: integer input levels and a threshold halfway between two of them (AND: ``a + b >= 1.5``, IAND: ``b - a >= 0.5``),
#: where it equals ``clip(I - theta + 1/2, 0, 1)`` exactly: AND ``= clip(a + b - 1, 0, 1) = a b``, IAND ``=
#: clip(b - a, 0, 1) = (1 - a) b``. The rectangle of width 1/2 is that function's derivative, 1 on the two levels
#: next to the threshold and 0 beyond: the gradient passes a gate unattenuated, as through the product of Fang et
#: al. ("Deep residual learning in spiking neural networks", NeurIPS 2021), ``d((1 - a) b)/db = 1 - a``. A smooth
#: surrogate would scale it by ``F'(1/(2w))/w`` per gate (fast-sigmoid, ``w = 1/2``: 1/4, and 1/16 at the
#: far level), so that the gradient reaching the early blocks of a deep AND/IAND network vanished.
GATE_SURROGATE = Surrogate("rectangle", 0.5)


@dataclass(frozen=True, eq=False)
class SigmoidRelaxation(SpikeFunction):
    """Soft spikes ``sigmoid((v - threshold) / width)`` in the forward pass too: the smooth relaxation the FS fit
    descends on (its width shrinks towards the hard threshold during the fit). Not a simulator's spike."""

    width: Array = 1.0

    def __call__(self, v: Array, threshold: Array) -> Array:
        return _sigmoid((v - threshold) / self.width)


@dataclass(frozen=True, eq=False)
class StraightThroughLogistic(SpikeFunction):
    """``hard + soft - soft.detach()`` with ``soft = sigmoid((v - threshold) / width)``: the straight-through
    logistic surrogate of the AMOS refinement in :mod:`snncc.passes.fs_fit` (torch tensors only).

    Its forward pass is Heaviside only up to one rounding (``(1 + soft) - soft`` may be ``1 - 2^-24``), unlike
    :class:`Surrogate` ``("logistic")`` whose forward is exact. It is kept, rather than replaced by that
    surrogate, because the published AMOS fits were computed with it and must not change in their last bits."""

    width: Array = 1.0

    def __call__(self, v: Array, threshold: Array) -> Array:
        soft = _sigmoid((v - threshold) / self.width)
        hard = as_float(v >= threshold, v)
        return hard + soft - soft.detach()


# ----------------------------------------------------------------------------------------------------------------
# IF and LIF: step models
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class MembraneParameters:
    """Float32 parameters of an IF/LIF population, each a scalar or an array broadcast over the per-sample shape
    (a per-channel value has shape ``(C, 1, ..., 1)``, channels on axis 0 of a sample).

    ``decay`` is ``beta = exp(-1 / tau_mem)`` for LIF and None for IF (no multiplication at all); ``v_init`` is the
    initial membrane ``v_init * threshold``."""

    threshold: Array
    decay: Array | None
    v_init: Array
    subtract: bool
    signed: bool


@dataclass
class MembraneState:
    """State of an IF/LIF population: the membrane ``v`` (batch, *shape) and, for signed neurons, the net spike
    count ``count`` (None otherwise)."""

    v: Array
    count: Array | None = None


def _per_channel(value: float | tuple[float, ...], shape: tuple[int, ...], xp: Any) -> Array:
    """A scalar, or a tuple of one value per channel as an array of shape ``(C, 1, ..., 1)`` for ``shape``."""
    if not isinstance(value, tuple):
        return _float32(value, xp)
    return _float32(value, xp).reshape((len(value),) + (1,) * (len(shape) - 1))


def membrane_parameters(neuron: IF | LIF, shape: tuple[int, ...], xp: Any = np) -> MembraneParameters:
    """The parameter record of ``neuron`` for a population of per-sample ``shape``, as arrays of ``xp``."""
    threshold = _per_channel(neuron.threshold, shape, xp)
    decay = _per_channel(neuron.beta, shape, xp) if isinstance(neuron, LIF) else None
    v_init = _per_channel(neuron.v_init, shape, xp) * threshold
    return MembraneParameters(threshold, decay, v_init, neuron.reset == "subtract", getattr(neuron, "signed", False))


def membrane_start(params: MembraneParameters, shape: tuple[int, ...]) -> MembraneState:
    """The state at ``t = 0`` for a batch of ``shape`` (batch first): ``v = v_init * threshold``, no spikes."""
    if _is_numpy(params.v_init):
        v = np.array(np.broadcast_to(params.v_init, shape), dtype=np.float32)
        count = np.zeros(shape, dtype=np.float32) if params.signed else None
    else:
        v = params.v_init.expand(shape).clone()
        count = v.new_zeros(shape) if params.signed else None
    return MembraneState(v, count)


def membrane_step(params: MembraneParameters, state: MembraneState, current: Array,
                  spike: SpikeFunction = HEAVISIDE) -> tuple[MembraneState, Array]:
    """One time step of IF/LIF neurons (:class:`~snncc.ir.neurons.IF`, :class:`~snncc.ir.neurons.LIF`)::

        v = beta * v          (LIF; beta = 0 is the memoryless gate v = I)
        v = v + I(t)
        s = H(v - theta)
        v = v - s * theta     (reset by subtraction, Rueckauer et al. 2017)
        v = v * (1 - s)       (reset to zero)

    Signed IF (Wang et al., IJCAI 2022) then takes back an earlier positive spike when the membrane fell below 0::

        n = (1 - s) * H'(v < 0) * [count > 0];   v = v + n * theta;   out = s - n;   count = count + out

    Returns the new state and the spikes (0/1, or -1/0/1 for signed neurons) of ``v``'s dtype.
    """
    v = state.v
    if params.decay is not None:
        v = v * params.decay
    v = v + current
    s = spike(v, params.threshold)
    if params.subtract:
        v = v - s * params.threshold
    else:
        v = v * (1 - s)
    if not params.signed:
        return MembraneState(v), s
    negative = (1 - s) * (1 - spike(v, 0.0)) * as_float(state.count > 0, v)
    v = v + negative * params.threshold
    out = s - negative
    return MembraneState(v, state.count + out), out


# ----------------------------------------------------------------------------------------------------------------
# Current-based LIF: a step model with two states
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CurrentParameters:
    """Float32 parameters of a :class:`~snncc.ir.neurons.CubaLIF` population: the fractions of current and
    voltage kept per step, ``keep_u = (D - current_decay) / D`` and ``keep_v = (D - voltage_decay) / D``, the
    threshold, the bias and the initial voltage."""

    keep_u: Array
    keep_v: Array
    threshold: Array
    bias: Array
    v_init: Array
    subtract: bool


@dataclass
class CurrentState:
    """State of a CubaLIF population: the synaptic current ``u`` and the membrane ``v``, each (batch, *shape)."""

    u: Array
    v: Array


def current_parameters(neuron: CubaLIF, shape: tuple[int, ...], xp: Any = np) -> CurrentParameters:
    unit = float(neuron.decay_unit)
    return CurrentParameters(_float32((unit - neuron.current_decay) / unit, xp),
                             _float32((unit - neuron.voltage_decay) / unit, xp), _float32(neuron.threshold, xp),
                             _float32(neuron.bias, xp), _float32(neuron.initial_voltage, xp),
                             neuron.reset == "subtract")


def current_start(params: CurrentParameters, shape: tuple[int, ...]) -> CurrentState:
    """``u(0) = 0``, ``v(0) = initial_voltage``."""
    if _is_numpy(params.v_init):
        return CurrentState(np.zeros(shape, np.float32), np.full(shape, params.v_init, np.float32))
    return CurrentState(params.v_init.new_zeros(shape), params.v_init.expand(shape).clone())


def current_step(params: CurrentParameters, state: CurrentState, current: Array,
                 spike: SpikeFunction = HEAVISIDE) -> tuple[CurrentState, Array]:
    """One time step of current-based LIF neurons in floating point (the ``R`` of the record's docstring is the
    identity; a chip's integer emulator supplies its own rounding)::

        u = keep_u * u + I(t)
        v = keep_v * v + u + bias
        s = H(v - theta)
        v = v - s * theta     (reset by subtraction)
        v = v * (1 - s)       (reset to zero, as Loihi)

    The current is not reset by a spike."""
    u = state.u * params.keep_u + current
    v = state.v * params.keep_v + u + params.bias
    s = spike(v, params.threshold)
    v = v - s * params.threshold if params.subtract else v * (1 - s)
    return CurrentState(u, v), s


# ----------------------------------------------------------------------------------------------------------------
# FS and AMOS: window models
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class FewSpikeParameters:
    """FS parameters as arrays (K,) of one array module (float32 numpy, or torch tensors in the fits)."""

    threshold: Array
    height: Array
    weight: Array
    offset: Array


@dataclass(frozen=True, eq=False)
class AmosParameters:
    """AMOS parameters: ``threshold``, ``weight``, ``gain`` (K,), ``inhibition`` (K, K), strictly lower triangular."""

    threshold: Array
    weight: Array
    gain: Array
    inhibition: Array
    offset: Array


@dataclass
class Window:
    """What a temporal unit produces over its window: the output ``value`` (what the next layer receives), the
    spikes of each step (K arrays of the input's shape) and, for FS, the membrane after each step's reset."""

    value: Array
    spikes: list[Array]
    membranes: list[Array]


def _per_step(spike: SpikeFunction | Sequence[SpikeFunction], k: int) -> Sequence[SpikeFunction]:
    return [spike] * k if isinstance(spike, SpikeFunction) else spike


def few_spike_parameters(neuron: FewSpike, shape: tuple[int, ...] = (), xp: Any = np) -> FewSpikeParameters:
    return FewSpikeParameters(_float32(neuron.threshold, xp), _float32(neuron.height, xp),
                              _float32(neuron.weight, xp), _float32(neuron.offset, xp))


def few_spike_window(params: FewSpikeParameters, x: Array, spike: SpikeFunction | Sequence[SpikeFunction] = HEAVISIDE,
                     offset_first: bool = False, observe: Callable[[int, Array], None] | None = None) -> Window:
    """FS neurons (Stoeckl & Maass, Nature Machine Intelligence 2021) with gate input ``x``, for ``t = 1..K``::

        v(1) = x;   z(t) = H(v(t) - T(t));   v(t+1) = v(t) - h(t) z(t);   value = offset + sum_t d(t) z(t)

    ``spike`` is one spike function or one per step. The value is summed in step order from 0 with the offset added
    last (the simulators and the Cython kernels); ``offset_first`` starts the sum at the offset instead (the FS fit's
    relaxation, whose fitted parameters depend on that rounding). ``observe(t, v)`` is called after each step with
    the membrane after its reset (the fit's membrane penalty, computed in the order it always was).
    """
    spikes_of = _per_step(spike, len(params.threshold))
    v = x
    value = _broadcast(params.offset, x) if offset_first else _zeros_like(x)
    spikes, membranes = [], []
    for t, spike_t in enumerate(spikes_of):
        z = spike_t(v, params.threshold[t])
        value = value + params.weight[t] * z
        v = v - params.height[t] * z
        spikes.append(z)
        membranes.append(v)
        if observe is not None:
            observe(t, v)
    if not offset_first:
        value = value + params.offset
    return Window(value, spikes, membranes)


def amos_parameters(neuron: Amos, shape: tuple[int, ...] = (), xp: Any = np) -> AmosParameters:
    return AmosParameters(_float32(neuron.threshold, xp), _float32(neuron.weight, xp), _float32(neuron.gain, xp),
                          _float32(neuron.inhibition_matrix(), xp), _float32(neuron.offset, xp))


def amos_window(params: AmosParameters, x: Array, spike: SpikeFunction | Sequence[SpikeFunction] = HEAVISIDE,
                offset_first: bool = False) -> Window:
    """AMOS units (Stoeckl & Maass, arXiv:2001.01682, 2020): neuron ``j = 1..K`` of a unit decides at step ``j``::

        u(j) = gain[j] x - sum_{i<j} W[j, i] z(i)   (subtracted in order of i);   z(j) = H(u(j) - T(j))
        value = offset + sum_j d(j) z(j)

    Each neuron fires at most once. ``spike`` and ``offset_first`` as for :func:`few_spike_window`.
    """
    spikes_of = _per_step(spike, len(params.threshold))
    value = _broadcast(params.offset, x) if offset_first else _zeros_like(x)
    spikes: list[Array] = []
    for j, spike_j in enumerate(spikes_of):
        u = x * params.gain[j]
        for i in range(j):
            u = u - params.inhibition[j, i] * spikes[i]
        z = spike_j(u, params.threshold[j])
        spikes.append(z)
        value = value + params.weight[j] * z
    if not offset_first:
        value = value + params.offset
    return Window(value, spikes, [])


# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NeuronDynamics:
    """How one neuron model evolves: ``parameters(neuron, shape, xp)`` builds its parameter record; a step model
    has ``start(params, batch_shape)`` and ``step(params, state, current, spike)``, a window model
    ``window(params, x, spike)``."""

    parameters: Callable[..., Any]
    start: Callable[..., Any] | None = None
    step: Callable[..., Any] | None = None
    window: Callable[..., Window] | None = None

    @property
    def stepped(self) -> bool:
        return self.step is not None


_MEMBRANE = NeuronDynamics(membrane_parameters, start=membrane_start, step=membrane_step)

#: Dynamics by neuron model class. New models (a current-based LIF, a chip's integer neuron) add an entry.
DYNAMICS: dict[type[NeuronModel], NeuronDynamics] = {
    IF: _MEMBRANE,
    LIF: _MEMBRANE,
    CubaLIF: NeuronDynamics(current_parameters, start=current_start, step=current_step),
    FewSpike: NeuronDynamics(few_spike_parameters, window=few_spike_window),
    Amos: NeuronDynamics(amos_parameters, window=amos_window),
}


def dynamics_of(neuron: NeuronModel, stepped: bool | None = None) -> NeuronDynamics:
    """The table entry of ``neuron``'s model; ``stepped`` True/False requires a step or a window model."""
    entry = DYNAMICS.get(type(neuron))
    if entry is None:
        raise SimulationError(f"no dynamics for neuron model {neuron.kind}; known models: "
                              f"{', '.join(sorted(m.kind for m in DYNAMICS))}")
    if stepped is not None and entry.stepped != stepped:
        kind = "stepped (rate-coded)" if stepped else "temporal (few-spike)"
        raise SimulationError(f"neuron model {neuron.kind} is not a {kind} model")
    return entry


def run_window(neuron: NeuronModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output value (float32, ``x.shape``) and spikes (K, *x.shape) uint8 of a temporal population with gate input
    ``x``: the hard-threshold window of the table entry, as the simulators use it."""
    entry = dynamics_of(neuron, stepped=False)
    x = np.asarray(x, dtype=np.float32)
    window = entry.window(entry.parameters(neuron, x.shape[1:], np), x)
    spikes = np.empty((len(window.spikes),) + x.shape, dtype=np.uint8)
    for t, z in enumerate(window.spikes):
        spikes[t] = z
    return np.asarray(window.value, dtype=np.float32), spikes
