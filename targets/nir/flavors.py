"""What an NIR file must look like for the program that reads it: the spec, snnTorch 1.0.0 or Norse 1.1.0.

NIR (Pedersen et al., "Neuromorphic intermediate representation: a unified instruction set for interoperable
brain-inspired computing", Nature Communications 15, 2024) states neurons as continuous-time equations and leaves
the time step, the batch axis and the readout to the reader. The importers of the peers read less than the spec
states, each something different (measured on the versions named; docs/nir.md has the details):

- ``spec``: every node as the ``nir`` package defines it: ``nir.IF`` for IF neurons, ``nir.AvgPool2d`` and the
  readout as a ``nir.I`` integrator.
- ``snntorch``: snnTorch's ``import_from_nir`` builds ``nir.IF`` as a leaky neuron of decay 0.9 (which fails in
  its own graph), so IF neurons are written as ``nir.LIF`` with a decay that rounds to 1 in float32; it reads
  ``nir.AvgPool2d``; it has no mapping for ``nir.I``, so the file ends with the last synaptic layer and the reader
  averages its current over time; it takes one threshold per population.
- ``norse``: Norse's ``from_nir`` reads ``nir.IF`` (reset to zero) and ``nir.SumPool2d`` but not ``nir.AvgPool2d``
  or ``nir.Scale``, so average pooling is written as sum pooling with the ``1/k`` folded into the weights of the
  next synaptic layer; it ignores ``r`` of ``nir.LIF``, so a LIF's input gain goes into its threshold; no readout
  node (Norse passes ``nir.I`` through unchanged).

Neither reader builds grouped convolutions (both take the per-group input channels for all of them).

Every flavor writes ``nir.Flatten`` with ``start_dim = -rank``: all per-sample axes under NIR's types (which have
no batch axis, so ``start_dim=1`` fails ``nir.read``'s type check), and all but the batch axis where a reader runs
``torch.nn.Flatten(start_dim, end_dim)`` on batched tensors (where ``start_dim=0`` would flatten the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

from snncc.errors import SnnccError


@dataclass(frozen=True)
class Flavor:
    """How one reader wants the file.

    ``if_as_lif``: write IF neurons as ``nir.LIF`` with (almost) no leak. ``sum_pool``: average pooling as
    ``nir.SumPool2d`` with its divisor folded into the next synaptic layer. ``integrator_readout``: end the graph
    with a ``nir.I`` node (else with the last synaptic layer's current).
    ``lif_gain_in_threshold``: write ``nir.LIF`` with ``r = 1`` and the threshold scaled by ``dt / tau`` (Norse
    ignores ``r``) instead of ``r = tau / dt`` (snnTorch's own convention); the spikes are the same under the spec.
    ``grouped_conv``: whether the reader builds grouped convolutions. ``uniform_threshold``: whether the reader
    takes only one threshold per population.
    """

    name: str
    if_as_lif: bool = False
    sum_pool: bool = False
    integrator_readout: bool = True
    lif_gain_in_threshold: bool = False
    grouped_conv: bool = True
    uniform_threshold: bool = False


FLAVORS: dict[str, Flavor] = {f.name: f for f in (
    Flavor("spec"),
    Flavor("snntorch", if_as_lif=True, integrator_readout=False, grouped_conv=False,
           uniform_threshold=True),
    Flavor("norse", sum_pool=True, integrator_readout=False, lif_gain_in_threshold=True,
           grouped_conv=False),
)}


def flavor_named(name: str) -> Flavor:
    """The flavor called ``name``; SnnccError listing the flavors otherwise."""
    if name not in FLAVORS:
        raise SnnccError(f"unknown NIR flavor {name!r}; available: {', '.join(FLAVORS)} (spec: the NIR "
                         "specification; snntorch, norse: what those importers read)")
    return FLAVORS[name]
