"""NIR export: an SNN-level graph as a Neuromorphic Intermediate Representation file (``snncc[nir]``).

``legalize_for_nir()`` (passes), ``check_nir(graph, flavor)`` (violations), ``export_nir(graph, flavor)`` (a
``nir.NIRGraph``) and ``write_nir(graph, path, flavor)``; the import is :mod:`snncc.frontend.nir`. See docs/nir.md.
"""

from snncc.targets.nir.export import DEFAULT_DT, check_nir, export_nir, write_nir
from snncc.targets.nir.flavors import FLAVORS, Flavor
from snncc.targets.nir.legalize import NirViolation, legalize_for_nir

__all__ = ["DEFAULT_DT", "FLAVORS", "Flavor", "NirViolation", "check_nir", "export_nir", "legalize_for_nir",
           "write_nir"]
