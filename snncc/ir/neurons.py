"""Neuron models: parameter records with their update equations. The dynamics live in the runtime.

Units: membrane potentials and thresholds are in the units of the synaptic input current (after normalization the
threshold is 1); time constants are in time steps. A neuron model enters a graph through a
:class:`~snncc.ir.ops.Population`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from snncc.errors import IRError

RESETS = ("subtract", "zero")


@dataclass(frozen=True)
class NeuronModel:
    """Base of neuron models; ``kind`` names the model in the text and file forms."""

    kind = "neuron"
    #: The parameters a chip stores as integers: at the hw level each must be an integer (or a tuple of them).
    hw_integer_fields: ClassVar[tuple[str, ...]] = ("threshold",)
    #: Whether a population of these emits the few-spike code (the temporal models, and hw-level circuits of an
    #: FS graph such as the Loihi 2 FS max pooling's max neuron) rather than rate-coded trains.
    emits_few_spike_code: ClassVar[bool] = False

    @property
    def neurons_per_unit(self) -> int:
        """Neurons per element of a population's input (1, except for circuits such as an AMOS unit)."""
        return 1

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Raise IRError if the parameters do not fit a population of this per-sample input shape."""

    def to_json(self) -> dict:
        return {"kind": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

    def __str__(self) -> str:
        params = ", ".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self))
        return f"{self.kind}({params})"


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _fmt(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + " ".join(f"{v:.6g}" for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


Parameter = float | tuple[float, ...]
"""An IF/LIF parameter: one float for the whole population, or a tuple of one value per channel (axis 0 of a
sample's shape: the channels of a convolution's output, the neurons of a linear layer's)."""


def _parameter(model: NeuronModel, name: str) -> Parameter:
    """Field ``name`` of ``model`` as a float, or as a tuple of floats for per-channel values (JSON gives lists)."""
    value = getattr(model, name)
    if isinstance(value, (tuple, list, np.ndarray)):
        try:
            value = tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1))
        except (TypeError, ValueError):
            raise IRError(f"{model.kind}: {name} must be a number or a sequence of numbers, got {value!r}") from None
        if not value:
            raise IRError(f"{model.kind}: {name} has no values; give one number, or one per channel")
    else:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise IRError(f"{model.kind}: {name} must be a number or a sequence of numbers, got {value!r}") from None
    object.__setattr__(model, name, value)
    return value


def _values(value: Parameter) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


def _check_common(model: NeuronModel, threshold: Parameter, reset: str) -> None:
    if not all(np.isfinite(t) and t > 0 for t in _values(threshold)):
        raise IRError(f"{model.kind}: threshold must be a positive finite number (or one per channel), got {threshold}")
    if reset not in RESETS:
        raise IRError(f"{model.kind}: reset must be one of {RESETS}, got {reset!r}")


def _check_v_init(model: IF | LIF) -> None:
    if not all(np.isfinite(v) for v in _values(model.v_init)):
        raise IRError(f"{model.kind}: v_init must be finite, got {model.v_init}")


def _check_channels(model: NeuronModel, names: tuple[str, ...], shape: tuple[int, ...]) -> None:
    """Per-channel parameters must have one value per channel, axis 0 of the population's per-sample shape."""
    for name in names:
        value = getattr(model, name)
        if isinstance(value, tuple):
            channels = shape[0] if shape else 1
            if len(value) != channels:
                raise IRError(f"{model.kind}: {name} has {len(value)} values but the population has {channels} "
                              f"channels (axis 0 of its input shape {list(shape)}); give one value per channel, "
                              "or one number for all")


@dataclass(frozen=True)
class IF(NeuronModel):
    """Integrate-and-fire neuron without leak.

    Per time step ``t`` with input current ``I(t)``::

        v(t) = v(t-1) + I(t)
        s(t) = 1 if v(t) >= threshold else 0
        v(t) = v(t) - s(t) * threshold          (reset="subtract", Rueckauer et al. 2017)
        v(t) = v(t) * (1 - s(t))                (reset="zero")

    with ``v(0) = v_init * threshold``. Reset by subtraction keeps the residual charge, so for a constant current
    ``I`` in ``[0, threshold]`` the spike count after ``T`` steps is ``floor(T*I/threshold + v_init)``; ``v_init = 0.5``
    turns that floor into rounding and removes the expected quantization error (Bu et al., "Optimal ANN-SNN
    conversion for high-accuracy and ultra-low-latency spiking neural networks", ICLR 2022).

    ``threshold`` and ``v_init`` are one number, or a tuple of one value per channel (axis 0 of the population's
    per-sample shape), as fine-tuning learns them.

    ``signed=True`` adds negative spikes that take back earlier positive ones: with ``N(t)`` the net spike count,
    ``s(t) = -1`` when ``v(t) < 0`` and ``N(t-1) > 0``, and then ``v(t) = v(t) + threshold``. The net count then
    follows ``max(0, round(sum_tau I(tau) / threshold))`` at every step instead of over-counting when a positive
    input is followed by a negative one (the "unevenness" error of rate conversion). This is the signed neuron with
    memory of Wang et al., "Signed neuron with memory: towards simple, accurate and high-efficient ANN-SNN
    conversion", IJCAI 2022. It needs a target that carries signed (or graded) spikes.
    """

    kind = "IF"
    threshold: Parameter = 1.0
    reset: str = "subtract"
    v_init: Parameter = 0.5
    signed: bool = False

    def __post_init__(self) -> None:
        _parameter(self, "threshold")
        _parameter(self, "v_init")
        object.__setattr__(self, "signed", bool(self.signed))
        _check_common(self, self.threshold, self.reset)
        _check_v_init(self)
        if self.signed and self.reset != "subtract":
            raise IRError("IF: signed spikes need reset='subtract' (a negative spike adds the threshold back)")

    @property
    def per_channel(self) -> bool:
        """Whether any parameter has one value per channel."""
        return isinstance(self.threshold, tuple) or isinstance(self.v_init, tuple)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_channels(self, ("threshold", "v_init"), shape)


@dataclass(frozen=True)
class LIF(NeuronModel):
    """Leaky integrate-and-fire neuron in discrete time.

    ``v(t) = beta * v(t-1) + I(t)`` with ``beta = exp(-1 / tau_mem)`` (``tau_mem`` in time steps), then the same
    threshold, spike and reset as :class:`IF`; ``v(0) = v_init * threshold``. ``tau_mem = inf`` is the IF neuron.
    ``threshold``, ``tau_mem`` and ``v_init`` are one number, or a tuple of one value per channel.

    ``tau_mem = 0`` gives ``beta = 0``: a memoryless neuron, ``v(t) = I(t)`` and ``s(t) = 1`` exactly when
    ``I(t) >= threshold``. It is a threshold gate of its inputs at each step; the ``sew`` pass builds the AND and
    IAND connect functions of SEW-ResNet from it (input ``a + b`` with threshold 1.5, ``b - a`` with 0.5).
    """

    kind = "LIF"
    threshold: Parameter = 1.0
    tau_mem: Parameter = 20.0
    reset: str = "subtract"
    v_init: Parameter = 0.0

    def __post_init__(self) -> None:
        _parameter(self, "threshold")
        _parameter(self, "tau_mem")
        _parameter(self, "v_init")
        _check_common(self, self.threshold, self.reset)
        _check_v_init(self)
        if not all(t >= 0 for t in _values(self.tau_mem)):
            raise IRError(f"LIF: tau_mem must be positive (in time steps), or 0 for a memoryless neuron, "
                          f"got {self.tau_mem}")

    @property
    def beta(self) -> Parameter:
        """Per-step decay factor of the membrane (0 for a memoryless neuron, ``tau_mem = 0``); a tuple for a
        per-channel ``tau_mem``."""
        betas = tuple(0.0 if tau == 0 else float(np.exp(-1.0 / tau)) for tau in _values(self.tau_mem))
        return betas if isinstance(self.tau_mem, tuple) else betas[0]

    @property
    def per_channel(self) -> bool:
        """Whether any parameter has one value per channel."""
        return any(isinstance(getattr(self, n), tuple) for n in ("threshold", "tau_mem", "v_init"))

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_channels(self, ("threshold", "tau_mem", "v_init"), shape)


def _number(model: NeuronModel, name: str) -> int | float:
    """Field ``name`` as a Python int (an integer stays one, as a chip stores it) or a finite float."""
    value = getattr(model, name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise IRError(f"{model.kind}: {name} must be a number, got {value!r}")
    value = int(value) if isinstance(value, (int, np.integer)) else float(value)
    if not np.isfinite(value):
        raise IRError(f"{model.kind}: {name} must be finite, got {value}")
    object.__setattr__(model, name, value)
    return value


@dataclass(frozen=True)
class CubaLIF(NeuronModel):
    """Current-based leaky integrate-and-fire neuron: a synaptic current with its own decay feeds a leaky membrane.

    The record holds the parameters as a chip stores them. Per time step ``t`` with synaptic input ``I(t)`` (the
    weighted sum of the spikes that arrive at ``t``)::

        u(t) = R(u(t-1) * (D - current_decay) / D) + I(t)                 synaptic current
        v(t) = R(v(t-1) * (D - voltage_decay) / D) + u(t) + bias          membrane
        s(t) = 1 if v(t) >= threshold else 0
        v(t) = 0                                  where s(t) = 1         (reset="zero", as Loihi does)
        v(t) = v(t) - threshold                   where s(t) = 1         (reset="subtract")

    with ``u(0) = 0`` and ``v(0) = initial_voltage`` (in the units of ``v``, not a fraction of the threshold as
    IF's ``v_init``). The current is not reset by a spike. ``D = decay_unit`` makes the decays fractions
    ``current_decay / D`` of the state lost per step: ``D = 1`` with float decays in ``[0, 1]``, or ``D = 4096``
    with the 12-bit integer decays ``du, dv`` of Loihi. ``R`` is the rounding of the arithmetic the model runs
    in: none in floating point; on Loihi the product is truncated toward zero (``sign(x) (|x| >> 12)``), the
    states are 24-bit (``u`` wraps, ``v`` saturates) and ``s`` compares strictly, ``v > vth``, so an integer
    threshold here is ``(vThMant << 6) + 1`` (Davies et al., "Loihi: a neuromorphic manycore processor with
    on-chip learning", IEEE Micro 38(1), 2018; Lava's bit-accurate LIF process model). A target's integer
    emulator plugs in that arithmetic; the step itself is the one of the neuron dynamics table.

    ``current_decay = D`` (no memory: ``u(t) = I(t)``) and ``voltage_decay = 0`` is the IF neuron;
    ``voltage_decay = D (1 - beta)`` with ``current_decay = D`` is the LIF neuron of decay ``beta``.

    NIR's CubaLIF (Pedersen et al., "Neuromorphic intermediate representation: a unified instruction set for
    interoperable brain-inspired computing", Nature Communications 15, 2024) is the continuous form
    ``tau_syn dI/dt = -I + w_in S``, ``tau_mem dv/dt = (v_leak - v) + r I``; its forward-Euler step of length
    ``dt`` is this record with ``D = 1``, ``current_decay = dt / tau_syn``, ``voltage_decay = dt / tau_mem``,
    the input scaled by ``w_in dt / tau_syn``, the current by ``r dt / tau_mem`` and ``bias = v_leak dt /
    tau_mem``; an exporter folds those scales into the weights. ``dt`` is the length of a time step in seconds,
    kept so that a target or NIR can state time constants; the discrete dynamics above do not depend on it.

    Integer fields stay integers (as Python ints), so at the hw level the record is what the chip stores:
    :attr:`hw_integer_fields` must then all be integers.
    """

    kind = "CubaLIF"
    hw_integer_fields = ("threshold", "current_decay", "voltage_decay", "bias", "initial_voltage")
    threshold: int | float = 1.0
    current_decay: int | float = 1.0
    voltage_decay: int | float = 0.0
    decay_unit: int = 1
    bias: int | float = 0.0
    reset: str = "zero"
    initial_voltage: int | float = 0.0
    dt: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("threshold", "current_decay", "voltage_decay", "bias", "initial_voltage"):
            _number(self, name)
        _check_common(self, self.threshold, self.reset)
        unit = _number(self, "decay_unit")
        if not isinstance(unit, int) or unit < 1:
            raise IRError(f"CubaLIF: decay_unit must be a positive integer (1 for float decays, 4096 for Loihi's "
                          f"12-bit decays), got {self.decay_unit!r}")
        for name in ("current_decay", "voltage_decay"):
            if not 0 <= getattr(self, name) <= unit:
                raise IRError(f"CubaLIF: {name} must lie in [0, decay_unit={unit}], got {getattr(self, name)}")
        object.__setattr__(self, "dt", float(_number(self, "dt")))
        if self.dt <= 0:
            raise IRError(f"CubaLIF: dt (the time step in seconds) must be positive, got {self.dt}")


def _vector(model: NeuronModel, name: str, length: int | None = None) -> tuple[float, ...]:
    """Field ``name`` as a tuple of finite floats (of ``length`` when given); raises IRError naming the field."""
    try:
        values = tuple(float(v) for v in np.asarray(getattr(model, name), dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise IRError(f"{model.kind}: {name} must be a sequence of numbers, got {getattr(model, name)!r}") from None
    if not all(np.isfinite(values)):
        raise IRError(f"{model.kind}: {name} must be finite, got {values}")
    if length is not None and len(values) != length:
        raise IRError(f"{model.kind}: {name} has {len(values)} values, expected {length}")
    object.__setattr__(model, name, values)
    return values


def _check_temporal(model: NeuronModel, unit: str) -> int:
    """Validate the fields FS and AMOS share (threshold, weight, offset); returns K."""
    k = len(_vector(model, "threshold"))
    if k < 1:
        raise IRError(f"{model.kind}: needs at least one {unit} (threshold is empty)")
    _vector(model, "weight", k)
    object.__setattr__(model, "offset", float(model.offset))
    if not np.isfinite(model.offset):
        raise IRError(f"{model.kind}: offset must be finite, got {model.offset}")
    return k


@dataclass(frozen=True)
class FewSpike(NeuronModel):
    """Few-spikes (FS) neuron: approximates an activation function with at most ``K`` spikes in ``K`` time steps.

    Stoeckl & Maass, "Optimized spiking neurons can classify images with high accuracy through temporal coding with
    two spikes", Nature Machine Intelligence 3, 2021 (arXiv:2002.00860). The gate input ``x`` (the synaptic current
    from the previous layer, including the bias) is delivered once; then for ``t = 1..K``, without leak::

        v(1)   = x
        z(t)   = 1 if v(t) >= threshold[t] else 0
        v(t+1) = v(t) - height[t] * z(t)                (reset by subtraction of h(t))

    and the neuron's output value, what the next layer receives, is ``offset + sum_t weight[t] * z(t)``: a spike at
    step ``t`` reaches every synapse with weight ``d(t) = weight[t]``. ``offset`` is the output with no spike (for
    example -1 for tanh); a target folds it into the next layer's bias.

    For ReLU on ``[0, alpha)`` the exact parameters are a binary expansion: ``height[t] = weight[t] = alpha 2^-t``;
    ``threshold[t] = alpha (2^-t - 2^-(K+1))`` rounds instead of truncating (see snncc.passes.fs_fit).
    """

    kind = "FS"
    emits_few_spike_code: ClassVar[bool] = True
    threshold: tuple[float, ...] = (0.5,)
    height: tuple[float, ...] = (0.5,)
    weight: tuple[float, ...] = (0.5,)
    offset: float = 0.0

    def __post_init__(self) -> None:
        k = _check_temporal(self, "time step")
        _vector(self, "height", k)

    @property
    def steps(self) -> int:
        """K, the time steps one layer takes."""
        return len(self.threshold)


@dataclass(frozen=True)
class Amos(NeuronModel):
    """AMOS unit: ``K`` neurons that each fire at most once, together approximating an activation function.

    Stoeckl & Maass, "Recognizing images with at most one spike per neuron", arXiv:2001.01682, 2020. Every gate of
    the ANN becomes a small circuit: neuron ``j = 1..K`` receives the gate input ``x`` with weight ``gain[j]`` and
    inhibition from each earlier neuron ``i < j`` of its circuit, and decides at step ``j``::

        u(j) = gain[j] * x - sum_{i<j} inhibition[j, i] * z(i)
        z(j) = 1 if u(j) >= threshold[j] else 0

    The output value is ``offset + sum_j weight[j] * z(j)``. Each neuron has one chance to fire, so it spikes at most
    once per input. ``inhibition`` holds the strictly lower triangle row by row (``K (K-1) / 2`` values: (2,1),
    (3,1), (3,2), ...). With ``gain = 1`` and ``inhibition[j, i] = h(i)`` the unit computes exactly the FS neuron of
    the same thresholds: AMOS trades ``K`` times the neurons for at most one spike each.
    """

    kind = "AMOS"
    emits_few_spike_code: ClassVar[bool] = True
    threshold: tuple[float, ...] = (0.5,)
    weight: tuple[float, ...] = (0.5,)
    gain: tuple[float, ...] = (1.0,)
    inhibition: tuple[float, ...] = ()
    offset: float = 0.0

    def __post_init__(self) -> None:
        k = _check_temporal(self, "neuron per unit")
        _vector(self, "gain", k)
        _vector(self, "inhibition", k * (k - 1) // 2)

    @property
    def steps(self) -> int:
        return len(self.threshold)

    @property
    def neurons_per_unit(self) -> int:
        return len(self.threshold)

    def inhibition_matrix(self) -> np.ndarray:
        """(K, K) float32 matrix with ``inhibition[j, i]`` below the diagonal and zeros elsewhere."""
        k = self.steps
        matrix = np.zeros((k, k), dtype=np.float32)
        matrix[np.tril_indices(k, -1)] = self.inhibition
        return matrix

    @classmethod
    def from_few_spike(cls, fs: FewSpike) -> Amos:
        """The AMOS unit that computes exactly what ``fs`` computes (gain 1, inhibition ``h(i)``)."""
        k = fs.steps
        rows, cols = np.tril_indices(k, -1)
        return cls(threshold=fs.threshold, weight=fs.weight, gain=(1.0,) * k,
                   inhibition=tuple(fs.height[i] for i in cols), offset=fs.offset)


TEMPORAL_NEURONS = (FewSpike, Amos)
"""Neuron models of the temporal (layer-pipelined) codings: a layer takes ``steps`` time steps per input."""

NEURON_MODELS: dict[str, type[NeuronModel]] = {m.kind: m for m in (IF, LIF, CubaLIF, FewSpike, Amos)}


def neuron_from_json(data: dict) -> NeuronModel:
    kind = data.get("kind")
    if kind not in NEURON_MODELS:
        # The hw-level records of a target (LoihiFS, LoihiFSMax) register when the target loads, so that a hw.snn
        # of a bundle loads without importing the target first (as the pass and backend registries do).
        from snncc.targets.base import load_targets

        load_targets()
    if kind not in NEURON_MODELS:
        raise IRError(f"unknown neuron model {kind!r}; known: {sorted(NEURON_MODELS)}")
    cls = NEURON_MODELS[kind]
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise IRError(f"neuron model {kind}: unknown fields {sorted(unknown)}")
    return cls(**{k: v for k, v in data.items() if k != "kind"})
