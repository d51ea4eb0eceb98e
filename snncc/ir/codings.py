"""Codings: how the value of a tensor is carried in time. They are types on edges, not ops.

- :class:`Analog`: a real value, the same at every time step (the ANN level, the input image, constant currents).
- :class:`Rate`: the value is the mean over time of a per-step signal (spike trains of a rate-converted SNN, and the
  graded currents that linear ops compute from them). After ``t`` steps the estimate of value ``a`` is
  ``(1/t) * sum_{tau<=t} s(tau)``.

Linear ops keep the coding of their input; a :class:`~snncc.ir.ops.Population` maps a coding to spikes; a
:class:`~snncc.ir.ops.Readout` maps spikes back to an analog estimate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Coding:
    """Base of all codings; subclasses are registered by ``kind`` for the text and file forms."""

    kind = "coding"

    @property
    def is_temporal(self) -> bool:
        return True

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Analog(Coding):
    """Real values constant in time (one evaluation per input)."""

    kind = "analog"

    @property
    def is_temporal(self) -> bool:
        return False


@dataclass(frozen=True)
class Rate(Coding):
    """Rate coding: a value is the time average of a per-step signal (Rueckauer et al. 2017)."""

    kind = "rate"


@dataclass(frozen=True)
class FewSpikeCode(Coding):
    """Temporal coding of the FS and AMOS neurons (Stoeckl & Maass 2020, 2021): layer by layer in windows.

    A population of a temporal neuron model (:data:`~snncc.ir.neurons.TEMPORAL_NEURONS`) receives its input current
    once, spikes during its own window of ``K`` steps, and a spike at step ``t`` of the window carries the weight
    ``d(t)`` of its neuron model. The value on the edge is therefore ``offset + sum_t d(t) z(t)``, complete at the end
    of the producer's window; linear ops on it act on that value (by linearity, the same as summing each spike's
    weighted synaptic input). Layers are pipelined: a layer works on one input while the next works on the previous.
    """

    kind = "fs"


CODINGS: dict[str, type[Coding]] = {c.kind: c for c in (Analog, Rate, FewSpikeCode)}


def coding_from_kind(kind: str) -> Coding:
    return CODINGS[kind]()
