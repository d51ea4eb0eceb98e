"""The constraints of Loihi 1 and Loihi 2 (sources in :mod:`snncc.targets.loihi.target`'s docstring), apart from
the target so that the legalization passes read them without importing the emulator."""

from __future__ import annotations

from snncc.targets.base import Constraints

_LOIHI1_SOURCE = "Davies et al., IEEE Micro 38(1), 2018"
_LOIHI2_SOURCE = "Intel Loihi 2 technology brief, 2021; Orchard et al., IEEE SiPS 2021"
_COMMON = dict(weight_format="int8 mantissa x 2^(6+exp), exp in [-8, 7], sign modes mixed/excitatory/inhibitory",
               state_format="int24 current (wraps) and voltage (saturates), 12-bit decays", timestep_s=None)

CONSTRAINTS: dict[str, Constraints] = {
    "loihi1": Constraints(neurons_per_core=1024, fan_in=4096, fan_out=4096, synaptic_memory_bits=128 * 1024 * 8,
                          cores_per_chip=128, chips=1, resets=("zero",), graded_spikes=False,
                          neuron_models=("IF (as CUBA)",), codings=("rate",), sources=(_LOIHI1_SOURCE,), **_COMMON),
    "loihi2": Constraints(neurons_per_core=8192, fan_in=None, fan_out=None, synaptic_memory_bits=937_500 * 8,
                          cores_per_chip=128, chips=1, resets=("zero", "subtract (microcode)"), graded_spikes=True,
                          neuron_models=("IF (as CUBA)", "FS (microcode, graded spikes)"), codings=("rate", "fs"),
                          sources=(_LOIHI2_SOURCE,), **_COMMON),
}
