"""The one exception hierarchy of snncc.

Every error a user can cause is a :class:`SnnccError`; its message names the node (or file), the limit, the actual
value and what to do next. Internal invariants may still use ``assert``; user input never does.
"""

from __future__ import annotations


class SnnccError(Exception):
    """Base class of every error snncc raises for bad input or an unsupported model."""


class DataError(SnnccError):
    """A data set could not be read (missing file, wrong magic number, shapes that do not match)."""


class FormatError(SnnccError):
    """A file written by snncc (``.snn``, report) is corrupt, truncated or of an unknown schema version."""


class FrontendError(SnnccError):
    """An ONNX model could not be read or imported."""


class UnsupportedModelError(FrontendError):
    """The model uses operators or attributes snncc cannot convert; the message lists every offending node."""


class IRError(SnnccError):
    """An op or graph was constructed with invalid fields (shapes, ranks, values)."""


class VerificationError(IRError):
    """A graph broke a rule of its IR level (for example an analog edge feeding a spiking-only op)."""


class PassError(SnnccError):
    """A pass failed; the message names the pass and the pipeline that ran before it."""


class PipelineSyntaxError(PassError):
    """A pipeline string could not be parsed or names an unknown pass or option."""


class SimulationError(SnnccError):
    """A graph could not be executed (wrong input shape, unsupported op in the simulator)."""


class SnnccWarning(UserWarning):
    """Base class of the warnings snncc emits (filter them with ``warnings.simplefilter(..., SnnccWarning)``)."""


class InputRangeWarning(SnnccWarning):
    """Calibration data, after the input scaling, fall far outside the input range the model declares."""


class ModelMetadataWarning(SnnccWarning):
    """The model's metadata asks for preprocessing snncc does not perform (channel order, linear gamma)."""
