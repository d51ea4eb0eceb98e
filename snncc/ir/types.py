"""The type of an edge: the per-sample shape (batch axis excluded), the coding and the number format.

The number format is a numpy ``dtype`` name and, for integers, the ``bits`` a chip keeps of it (a 24-bit state
held in an int32, a 13-bit bias): ``None`` is the dtype's full width. The default, ``float32`` at full width, is the
format of every ann- and snn-level edge, and a default format is not printed, so those graphs' text forms do not
show it. At the hw level a value may be an integer (an ``Input`` of ``dtype="uint8"`` pixels or of binary events);
the rearranging ops (Flatten, Reshape, Slice, the paddings, Identity) keep their input's format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.errors import IRError
from snncc.ir.codings import Analog, Coding

DEFAULT_DTYPE = "float32"
#: The dtypes an IR value or array may have: floats (ann, snn) and the integers chips store (hw).
DTYPES = ("float32", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")


def check_format(dtype: str, bits: int | None, where: str) -> None:
    """Raise IRError (naming ``where``) unless ``dtype`` is one of :data:`DTYPES` and ``bits`` fits in it."""
    if dtype not in DTYPES:
        raise IRError(f"{where}: dtype must be one of {DTYPES}, got {dtype!r}")
    if bits is None:
        return
    kind = np.dtype(dtype).kind
    width = 1 if kind == "b" else np.dtype(dtype).itemsize * 8
    if kind not in "iu" or isinstance(bits, bool) or int(bits) != bits or not 1 <= bits <= width:
        raise IRError(f"{where}: bits={bits!r} must be an integer from 1 to {width}, and only integer dtypes "
                      f"take a bit width (dtype {dtype})")


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    coding: Coding = Analog()
    dtype: str = DEFAULT_DTYPE
    bits: int | None = None

    def __post_init__(self) -> None:
        check_format(self.dtype, self.bits, f"type {list(self.shape)}")

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def format(self) -> str:
        """``int32:24`` (24 significant bits in an int32), ``int8``, or ``float32``."""
        return self.dtype if self.bits is None else f"{self.dtype}:{self.bits}"

    def __str__(self) -> str:
        text = f"[{','.join(map(str, self.shape))}] {self.coding}"
        return text if (self.dtype, self.bits) == (DEFAULT_DTYPE, None) else f"{text} {self.format}"
