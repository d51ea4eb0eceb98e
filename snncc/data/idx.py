"""The IDX format of MNIST and Fashion-MNIST (LeCun et al.): one file of images, one of labels, optionally gzipped.

A file is the magic ``0x0000TTNN`` (``TT`` the element type, ``NN`` the number of dimensions), ``NN`` big-endian
32-bit dimension sizes, then the elements in row-major order, big-endian.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from snncc.errors import DataError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}

# File stems of the two standard layouts: MNIST's original names and the dotted variant some mirrors use.
SPLIT_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its declared shape and dtype."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); expected 0x0000TTNN")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX payload has {len(raw) - header} bytes, the header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx(directory: Path, stem: str) -> Path | None:
    """The IDX file of ``stem`` in ``directory`` (``.gz`` or raw, dashed or dotted name), or None."""
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def has_idx(directory: Path) -> bool:
    return any(find_idx(directory, stem) for stems in SPLIT_STEMS.values() for stem in stems)


def load_idx_directory(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``split`` (train or test) from a directory in the MNIST layout."""
    if split not in SPLIT_STEMS:
        raise DataError(f"unknown split {split!r} for IDX data in {directory}; use one of {sorted(SPLIT_STEMS)}")
    found = []
    for stem in SPLIT_STEMS[split]:
        path = find_idx(directory, stem)
        if path is None:
            raise DataError(f"no IDX file {stem}[.gz] in {directory}; expected the standard MNIST file names")
        found.append(read_idx(path))
    return found[0], found[1]
