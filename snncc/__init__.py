"""snncc: an ANN-to-SNN conversion compiler.

``snncc.load(path)`` reads a ``.snn`` file into a :class:`snncc.ir.Graph`; the compile and evaluate entry points are
in :mod:`snncc.api`.
"""

__version__ = "0.1.0"

from snncc.ir.serialize import load, save  # noqa: E402

__all__ = ["__version__", "load", "save"]
