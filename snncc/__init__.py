"""snncc: an ANN-to-SNN conversion compiler.

``snncc.load(path)`` reads a ``.snn`` file into a :class:`snncc.ir.Graph`; ``snncc.compile_model`` (an ONNX file or
a ``torch.nn.Module`` in) and the evaluate entry points are in :mod:`snncc.api`, which ``import snncc`` loads only
when ``compile_model`` is first used (it pulls in onnx and the passes).
"""

__version__ = "0.1.0"

from snncc.ir.serialize import load, save  # noqa: E402

__all__ = ["__version__", "compile_model", "load", "save"]


def __getattr__(name: str):
    if name == "compile_model":
        from snncc.api import compile_model

        return compile_model
    raise AttributeError(f"module 'snncc' has no attribute {name!r}")
