"""Legalization for NIR: passes that rewrite what NIR cannot state, and the check that lists what remains.

NIR (:mod:`snncc.targets.nir.export`) has no way to state three things that snncc's rate-coded SNNs use:

- **an initial membrane**: snncc starts IF neurons at ``v_init * threshold`` (0.5 by default, Bu et al. ICLR 2022),
  every NIR reader at 0. ``nir-initial-membrane{mode=drop}`` sets ``v_init = 0``; ``mode=bias`` also adds
  ``v_init * threshold / T`` to the bias of the layer that feeds the population, so that over ``T`` steps the same
  charge arrives (exact at step ``T`` for a constant current into an IF neuron: ``floor(T I + v_init)`` spikes
  either way, if the membrane does not cross earlier; spread over time otherwise);
- **reset by subtraction**: NIR's IF/LIF/CubaLIF set ``v = v_reset`` after a spike, and Norse and snnTorch reset to
  zero whatever the file says. ``nir-reset`` makes every population reset to zero (the residual charge above the
  threshold is lost);
- **a padding value**: after the input normalization is folded into the first convolution, snncc pads that layer
  with the input mean (``Conv2d.pad_value``); NIR pads with zeros. ``nir-input-padding`` moves the value into the
  input scaling (the reader feeds ``x - p``) and ``W p`` into the bias, which is exact:
  ``conv_p(x) + b = conv_0(x - p) + (b + sum W p)``.

:func:`legalize_for_nir` is the pass list; :func:`check_nir` lists, before anything is written, every node that a
flavor of NIR cannot carry, with the limit, the actual value and the remedy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from snncc.data import InputScaling
from snncc.errors import PassError
from snncc.ir import IF, LIF, SNN, CubaLIF, Graph, ops
from snncc.passes.base import Pass, PassContext, register
from snncc.targets.base import Violation

INITIAL_MEMBRANE_MODES = ("drop", "bias")


@register
@dataclass(frozen=True)
class NirInputPadding(Pass):
    """Move the padding value of a convolution that reads the network input into the input scaling and the bias."""

    name = "nir-input-padding"
    requires_level = SNN

    def run(self, graph: Graph, context: PassContext) -> bool:
        changed = False
        for source in graph.input_nodes():
            users = [graph.op(u) for u, _ in graph.users(source)]
            padded = [op for op in users if isinstance(op, ops.Conv2d) and op.pad_value is not None]
            if not padded:
                continue
            values = {tuple(op.pad_value.tolist()) for op in padded}
            if len(values) > 1 or len(padded) != len(users):
                continue  # the input cannot be shifted for one user only: check_nir reports the layers
            shift = padded[0].pad_value.astype(np.float64)
            for user, _ in graph.users(source):
                op = graph.op(user)
                weight = op.weight.astype(np.float64)
                per_group = weight.shape[1]
                group_of_output = np.arange(weight.shape[0]) // (weight.shape[0] // op.groups)
                added = np.array([(weight[o] * shift[g * per_group:(g + 1) * per_group, None, None]).sum()
                                  for o, g in enumerate(group_of_output)])
                bias = np.zeros(weight.shape[0]) if op.bias is None else op.bias.astype(np.float64)
                graph.replace(user, op.replace(pad_value=None, bias=bias + added))
            scaling = InputScaling.from_json(graph.attrs["input_scaling"]) if "input_scaling" in graph.attrs \
                else InputScaling()
            stds = np.broadcast_to(np.asarray(scaling.std), shift.shape)
            means = np.broadcast_to(np.asarray(scaling.mean), shift.shape) + shift * stds
            means, stds = (tuple(np.unique(v)) if len(np.unique(v)) == 1 else tuple(v) for v in (means, stds))
            graph.attrs["input_scaling"] = InputScaling(scaling.scale, means, stds).to_json()
            graph.attrs["nir_input_shift"] = shift.tolist()
            changed = True
        return changed


@register
@dataclass(frozen=True)
class NirReset(Pass):
    """Every IF/LIF/CubaLIF population resets to zero, as NIR's ``v_reset = 0`` and every NIR reader do."""

    name = "nir-reset"
    requires_level = SNN

    def run(self, graph: Graph, context: PassContext) -> bool:
        changed = False
        for node in graph.find(ops.Population):
            neuron = graph.op(node).neuron
            if isinstance(neuron, (IF, LIF, CubaLIF)) and neuron.reset != "zero":
                if getattr(neuron, "signed", False):
                    raise PassError(f"{node!r}: signed IF neurons need reset by subtraction, which NIR cannot "
                                    "state; convert without signed spikes (convert-rate without signed=true)")
                graph.replace(node, ops.Population(neuron=_with(neuron, reset="zero")))
                changed = True
        return changed


@register
@dataclass(frozen=True)
class NirInitialMembrane(Pass):
    """Start every membrane at 0; ``mode=bias`` spreads the initial charge over ``timesteps`` steps as a bias."""

    name = "nir-initial-membrane"
    requires_level = SNN
    mode: str = "drop"
    timesteps: int = 0

    def __post_init__(self) -> None:
        if self.mode not in INITIAL_MEMBRANE_MODES:
            raise PassError(f"nir-initial-membrane: mode must be one of {INITIAL_MEMBRANE_MODES}, got {self.mode!r}")
        if self.mode == "bias" and self.timesteps < 1:
            raise PassError("nir-initial-membrane: mode=bias spreads the initial charge over the simulated time "
                            "steps; give timesteps=T (the T the exported model will run for)")

    def run(self, graph: Graph, context: PassContext) -> bool:
        changed = False
        for node in graph.find(ops.Population):
            neuron = graph.op(node).neuron
            if isinstance(neuron, CubaLIF) and neuron.initial_voltage != 0:
                graph.replace(node, ops.Population(neuron=_with(neuron, initial_voltage=0.0)))
                changed = True
            if not isinstance(neuron, (IF, LIF)) or not np.any(neuron.v_init):
                continue
            if self.mode == "bias":
                self._add_bias(graph, node, neuron)
            graph.replace(node, ops.Population(neuron=_with(neuron, v_init=0.0)))
            changed = True
        return changed

    def _add_bias(self, graph: Graph, node: str, neuron: IF | LIF) -> None:
        (source,) = graph.inputs(node)
        layer = graph.op(source)
        if not isinstance(layer, (ops.Conv2d, ops.Linear)) or layer.input_gains is not None \
                or graph.users(source) != [(node, 0)] or source in graph.outputs:
            raise PassError(f"{node!r}: nir-initial-membrane{{mode=bias}} folds the initial charge into the bias of "
                            f"the layer that feeds the population, but {source!r} ({layer.kind}) is not a Conv2d or "
                            "Linear used by this population only; use mode=drop")
        charge = np.asarray(neuron.v_init, np.float64) * np.asarray(neuron.threshold, np.float64) / self.timesteps
        out_channels = layer.weight.shape[0]
        bias = np.zeros(out_channels) if layer.bias is None else layer.bias.astype(np.float64)
        graph.replace(source, layer.replace(bias=bias + np.broadcast_to(charge, (out_channels,))))


def _with(neuron, **changes):
    """A copy of a neuron model with some fields changed (validated again)."""
    return replace(neuron, **changes)


def legalize_for_nir(initial_membrane: str = "drop", timesteps: int = 0) -> list[Pass]:
    """The passes that make an SNN-level graph expressible in NIR (any flavor), in order."""
    return [NirInputPadding(), NirReset(), NirInitialMembrane(mode=initial_membrane, timesteps=timesteps)]


#: What NIR (in one flavor) cannot carry is the target framework's one record of a violation: the node, the limit,
#: the actual value and the remedy.
NirViolation = Violation
