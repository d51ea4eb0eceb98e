"""Readers for the data sets a user points snncc at: IDX image sets (``.gz`` or raw) and ``.npz`` archives.

A data set is returned as ``(x, y)`` with ``x`` of dtype float32 and shape ``(N, C, H, W)`` (a channel axis is added
to single-channel IDX images) and ``y`` of dtype int64. Pixel values are returned unscaled (0..255 for IDX files);
scaling is an explicit option of compile/eval (:class:`InputScaling`) so that it is recorded in the ``.snn`` file.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snncc.errors import DataError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}

# File stems of the two standard layouts: MNIST's original names and the dotted variant some mirrors use.
_SPLIT_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
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


def _find(directory: Path, stem: str) -> Path:
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / candidate).is_file():
            return directory / candidate
    raise DataError(f"no IDX file {stem}[.gz] in {directory}; expected the standard MNIST file names")


def load_dataset(path: str | Path, split: str = "test", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(x, y)`` from a directory of IDX files (``split`` picks train or test) or from an ``.npz`` with ``x``, ``y``.

    ``limit`` keeps the first ``limit`` samples (in file order, so results are reproducible).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist; pass a directory of IDX files or an .npz with x and y")
    if path.is_dir():
        if split not in _SPLIT_STEMS:
            raise DataError(f"unknown split {split!r} for IDX data in {path}; use one of {sorted(_SPLIT_STEMS)}")
        image_stem, label_stem = _SPLIT_STEMS[split]
        x, y = read_idx(_find(path, image_stem)), read_idx(_find(path, label_stem))
    else:
        x, y = _load_npz(path)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: images must have shape (N, H, W) or (N, C, H, W), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but labels of shape {y.shape}")
    if limit is not None:
        if limit <= 0:
            raise DataError(f"--limit must be positive, got {limit}")
        x, y = x[:limit], y[:limit]
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DataError(f"{path} lacks arrays {sorted(missing)}; an .npz data set needs 'x' and 'y'")
            return archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from exc


@dataclass(frozen=True)
class InputScaling:
    """The affine map ``x' = (x * scale - mean) / std`` from stored pixels to the model's input.

    The default leaves inputs unchanged. ``InputScaling(scale=1/255)`` maps 0..255 pixels to 0..1. It is recorded in
    the ``.snn`` file so that ``eval`` feeds the SNN exactly what ``compile`` calibrated on.
    """

    scale: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.std == 0:
            raise DataError("input scaling std must be non-zero")

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x * np.float32(self.scale) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def to_json(self) -> dict[str, float]:
        return {"scale": self.scale, "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, data: dict) -> InputScaling:
        return cls(float(data.get("scale", 1.0)), float(data.get("mean", 0.0)), float(data.get("std", 1.0)))

    @classmethod
    def parse(cls, text: str) -> InputScaling:
        """Parse ``none``, ``unit`` (x/255) or ``scale[,mean[,std]]`` as written on the command line."""
        if text in ("none", ""):
            return cls()
        if text == "unit":
            return cls(scale=1 / 255)
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError as exc:
            raise DataError(f"--input-scaling {text!r}: expected none, unit or SCALE[,MEAN[,STD]]") from exc
        if not 1 <= len(values) <= 3:
            raise DataError(f"--input-scaling {text!r}: expected 1 to 3 numbers, got {len(values)}")
        return cls(*values)
