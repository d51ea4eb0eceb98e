"""Neuron models: parameter records with their update equations. The dynamics live in the runtime.

Units: membrane potentials and thresholds are in the units of the synaptic input current (after normalization the
threshold is 1); time constants are in time steps. A neuron model enters a graph through a
:class:`~snncc.ir.ops.Population`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from snncc.errors import IRError

RESETS = ("subtract", "zero")


@dataclass(frozen=True)
class NeuronModel:
    """Base of neuron models; ``kind`` names the model in the text and file forms."""

    kind = "neuron"

    def to_json(self) -> dict:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def __str__(self) -> str:
        params = ", ".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self))
        return f"{self.kind}({params})"


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_common(model: NeuronModel, threshold: float, reset: str) -> None:
    if not np.isfinite(threshold) or threshold <= 0:
        raise IRError(f"{model.kind}: threshold must be a positive finite number, got {threshold}")
    if reset not in RESETS:
        raise IRError(f"{model.kind}: reset must be one of {RESETS}, got {reset!r}")


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

    ``signed=True`` adds negative spikes that take back earlier positive ones: with ``N(t)`` the net spike count,
    ``s(t) = -1`` when ``v(t) < 0`` and ``N(t-1) > 0``, and then ``v(t) = v(t) + threshold``. The net count then
    follows ``max(0, round(sum_tau I(tau) / threshold))`` at every step instead of over-counting when a positive
    input is followed by a negative one (the "unevenness" error of rate conversion). This is the signed neuron with
    memory of Wang et al., "Signed neuron with memory: towards simple, accurate and high-efficient ANN-SNN
    conversion", IJCAI 2022. It needs a target that carries signed (or graded) spikes.
    """

    kind = "IF"
    threshold: float = 1.0
    reset: str = "subtract"
    v_init: float = 0.5
    signed: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "v_init", float(self.v_init))
        object.__setattr__(self, "signed", bool(self.signed))
        _check_common(self, self.threshold, self.reset)
        if self.signed and self.reset != "subtract":
            raise IRError("IF: signed spikes need reset='subtract' (a negative spike adds the threshold back)")


@dataclass(frozen=True)
class LIF(NeuronModel):
    """Leaky integrate-and-fire neuron in discrete time.

    ``v(t) = beta * v(t-1) + I(t)`` with ``beta = exp(-1 / tau_mem)`` (``tau_mem`` in time steps), then the same
    threshold, spike and reset as :class:`IF`; ``v(0) = v_init * threshold``. ``tau_mem = inf`` is the IF neuron.
    """

    kind = "LIF"
    threshold: float = 1.0
    tau_mem: float = 20.0
    reset: str = "subtract"
    v_init: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "tau_mem", float(self.tau_mem))
        object.__setattr__(self, "v_init", float(self.v_init))
        _check_common(self, self.threshold, self.reset)
        if not self.tau_mem > 0:
            raise IRError(f"LIF: tau_mem must be positive (in time steps), got {self.tau_mem}")

    @property
    def beta(self) -> float:
        """Per-step decay factor of the membrane."""
        return float(np.exp(-1.0 / self.tau_mem))


NEURON_MODELS: dict[str, type[NeuronModel]] = {m.kind: m for m in (IF, LIF)}


def neuron_from_json(data: dict) -> NeuronModel:
    kind = data.get("kind")
    if kind not in NEURON_MODELS:
        raise IRError(f"unknown neuron model {kind!r}; known: {sorted(NEURON_MODELS)}")
    cls = NEURON_MODELS[kind]
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise IRError(f"neuron model {kind}: unknown fields {sorted(unknown)}")
    return cls(**{k: v for k, v in data.items() if k != "kind"})
