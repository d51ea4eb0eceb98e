"""``load_dataset``: one entry point that recognises the data set formats users have and says what it found.

Recognised, in this order, for a directory: IDX files in the MNIST layout, ``.npy`` pairs, CIFAR-10/100 binary
files, (refused) CIFAR python batches, a folder of class subfolders of images, a flat folder of images. For a file:
``.npz``, one file of an ``.npy`` pair, a CIFAR ``.bin``. A path that does not exist may be the prefix of an
``.npy`` pair (``P`` for ``P_x.npy``/``P_y.npy``).

Images are returned unscaled (0..255 pixels) as float32 ``(N, C, H, W)`` (IDX images get their channel axis), feature
vectors as ``(N, F)``, labels as int64; scaling is the separate, recorded :class:`~snncc.data.InputScaling`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from snncc.data import arrays, cifar, idx, images
from snncc.errors import DataError

SUPPORTED = ("a directory of IDX files (MNIST layout), an .npz with x and y, a pair of .npy files (x.npy/y.npy), "
             "a folder of images (one subfolder per class, or file names ending in _<label>), or CIFAR-10/100 "
             "binary files (.bin)")


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`load_dataset` found: the format, the number of samples, their shape and values, the classes."""

    format: str
    path: str
    count: int
    sample_shape: tuple[int, ...]
    stored_dtype: str
    value_range: tuple[float, float]
    classes: int
    max_label: int
    class_names: tuple[str, ...] | None = None
    labels_from: str | None = None

    @property
    def channels(self) -> int | None:
        return self.sample_shape[0] if len(self.sample_shape) == 3 else None

    def describe(self) -> str:
        shape = "x".join(map(str, self.sample_shape))
        channels = f" ({self.channels} channel{'s' * (self.channels != 1)})" if self.channels else ""
        low, high = self.value_range
        text = (f"{self.format} {self.path}: {self.count} samples of {shape}{channels}, {self.stored_dtype}, values "
                f"{low:g}..{high:g}, {self.classes} classes (labels 0..{self.max_label})")
        return text + (f" (labels from {self.labels_from})" if self.labels_from else "")

    def to_json(self) -> dict:
        return {"format": self.format, "path": self.path, "count": self.count,
                "sample_shape": list(self.sample_shape),
                "stored_dtype": self.stored_dtype, "value_range": list(self.value_range), "classes": self.classes,
                "max_label": self.max_label}


class _Found(NamedTuple):
    """What one format reader found, before the common checks."""

    x: np.ndarray
    y: np.ndarray
    format: str
    class_names: list[str] | None = None
    labels_from: str | None = None


class Dataset(tuple):
    """``(x, y)``, unpacked as before, with the :class:`DatasetInfo` as ``.info``."""

    info: DatasetInfo

    def __new__(cls, x: np.ndarray, y: np.ndarray, info: DatasetInfo) -> Dataset:
        self = super().__new__(cls, (x, y))
        self.info = info
        return self

    @property
    def x(self) -> np.ndarray:
        return self[0]

    @property
    def y(self) -> np.ndarray:
        return self[1]


def load_dataset(path: str | Path, split: str = "test", limit: int | None = None, *,
                 resize: tuple[int, int] | None = None, center_crop: tuple[int, int] | None = None,
                 channels: int | None = None, cifar100_labels: str = "fine") -> Dataset:
    """Load ``(x, y)`` from any format of the module docstring; ``.info`` says what was found.

    ``split`` picks train or test where the format has splits (IDX, CIFAR, ``{split}_x.npy``, ``train/`` and
    ``test/`` image folders). ``limit`` keeps the first ``limit`` samples in file order, so results are
    reproducible (image folders decode only those). ``resize`` / ``center_crop`` (height, width) and ``channels``
    (1 or 3) apply to image folders; ``cifar100_labels`` picks ``fine`` (100 classes) or ``coarse`` (20) labels.
    """
    path = Path(path)
    if limit is not None and limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    found = _read(path, split, limit, resize, center_crop, channels, cifar100_labels)
    x, y, fmt, class_names, labels_from = found
    if (resize is not None or center_crop is not None or channels is not None) and not fmt.startswith("image folder"):
        raise DataError(f"resize, center crop and channels apply to folders of images; {path} is {fmt} data")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise DataError(f"{path}: samples must have shape (N, F), (N, H, W) or (N, C, H, W), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: {len(x)} samples but labels of shape {y.shape}; expected ({len(x)},)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{path}: labels must be integer class indices, got {y.dtype} values such as {y[:3]}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: labels must be class indices 0, 1, ...; found {int(y.min())}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) == 0:
        raise DataError(f"{path}: the data set is empty")
    classes = len(class_names) if class_names else len(np.unique(y))
    info = DatasetInfo(format=fmt, path=str(path), count=len(x), sample_shape=tuple(x.shape[1:]),
                       stored_dtype=str(x.dtype), value_range=(float(x.min()), float(x.max())), classes=classes,
                       max_label=int(y.max()),
                       class_names=tuple(class_names) if class_names else None, labels_from=labels_from)
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64), info)


def _read(path: Path, split: str, limit: int | None, resize, center_crop, channels, cifar100_labels) -> _Found:
    """What ``path`` holds, read by the reader of its format."""
    if not path.exists():
        pair = arrays.find_npy_pair(path, split)
        if pair is not None:
            return _Found(*arrays.load_npy_pair(pair), ".npy pair")
        raise DataError(f"data path {path} does not exist; pass {SUPPORTED}")
    if path.is_file():
        return _read_file(path, cifar100_labels)
    if idx.has_idx(path):
        return _Found(*idx.load_idx_directory(path, split), "IDX")
    pair = arrays.find_npy_pair(path, split)
    if pair is not None:
        return _Found(*arrays.load_npy_pair(pair), ".npy pair")
    bins = cifar.find_cifar_files(path, split)
    if bins is not None:
        x, y, variant = cifar.load_cifar_files(bins, cifar100_labels)
        return _Found(x, y, f"CIFAR-{variant} binary")
    if cifar.python_batches(path):
        raise cifar.refuse_python(path)
    folder = images.split_folder(path, split) or path
    classes = images.class_folders(folder)
    if classes:
        files = [f for _, group in classes for f in group]
        labels = np.concatenate([np.full(len(group), i, dtype=np.int64) for i, (_, group) in enumerate(classes)])
        files, labels = files[:limit], labels[:limit]
        x = images.read_images(files, channels, resize, center_crop)
        return _Found(x, labels, "image folder (class per subfolder)", [name for name, _ in classes],
                      "subfolder names")
    files = images.image_files(folder)
    if files:
        y, names, labels_from = images.flat_labels(folder, files)
        files, y = files[:limit], y[:limit]
        x = images.read_images(files, channels, resize, center_crop)
        return _Found(x, y, "image folder", names, labels_from)
    raise DataError(f"{path}: found no data set; expected {SUPPORTED}")


def _read_file(path: Path, cifar100_labels: str) -> _Found:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _Found(*arrays.load_npz(path), ".npz")
    if suffix == ".npy":
        return _Found(*arrays.load_npy_pair(arrays.find_npy_pair(path, "")), ".npy pair")
    if suffix == ".bin":
        x, y, variant = cifar.load_cifar_files([path], cifar100_labels)
        return _Found(x, y, f"CIFAR-{variant} binary")
    if cifar.is_python_batch(path) or path.name.endswith((".pkl", ".pickle")):
        raise cifar.refuse_python(path)
    if suffix in images.SUFFIXES:
        raise DataError(f"{path} is one image; point at the folder that holds the images")
    raise DataError(f"{path}: unknown data format; pass {SUPPORTED}")


def sample_fits(data_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> bool:
    """Whether samples of ``data_shape`` feed a model input of per-sample ``model_shape``: the same shape, or flat
    samples of the same size (a flat input, or flat data reshaped to the input, as MNIST is often stored)."""
    data_shape, model_shape = tuple(data_shape), tuple(model_shape)
    if data_shape == model_shape:
        return True
    same_size = int(np.prod(data_shape)) == int(np.prod(model_shape))
    return same_size and (len(model_shape) == 1 or len(data_shape) == 1)


def check_sample_shape(data_shape: tuple[int, ...], model_shape: tuple[int, ...], data: str = "the data",
                       where: str = "the model") -> None:
    """Raise DataError when samples of ``data_shape`` cannot feed a model input of per-sample ``model_shape``.

    Channel mismatches are named as such (grayscale against RGB); a size mismatch of images gets the resize remedy."""
    data_shape, model_shape = tuple(data_shape), tuple(model_shape)
    if sample_fits(data_shape, model_shape):
        return
    if len(data_shape) == 3 and len(model_shape) == 3 and data_shape[0] != model_shape[0]:
        kinds = {1: "grayscale", 3: "RGB", 4: "RGBA"}
        raise DataError(f"{data} {data_shape} have {data_shape[0]} channel{'s' * (data_shape[0] != 1)} "
                        f"({kinds.get(data_shape[0], 'multi-channel')}) but {where} takes {model_shape[0]} "
                        f"({kinds.get(model_shape[0], 'multi-channel')}, input shape {model_shape}); convert the "
                        f"images (load_dataset(..., channels={model_shape[0]}) for image folders)")
    remedy = f"; for images {images.SIZE_REMEDY}" if len(data_shape) == 3 and len(model_shape) == 3 else ""
    raise DataError(f"{data}: samples of shape {data_shape}, but {where} takes {model_shape}{remedy}")


def check_against_model(info: DatasetInfo, sample_shape: tuple[int, ...], outputs: int | None = None,
                        where: str = "the model") -> None:
    """Raise DataError when the data set cannot be fed to a model input of per-sample ``sample_shape`` or has
    labels beyond the model's ``outputs`` classes."""
    check_sample_shape(info.sample_shape, sample_shape, str(info.path), where)
    if outputs is not None and info.max_label >= outputs:
        raise DataError(f"{info.path} has labels up to {info.max_label} but {where} has {outputs} outputs; "
                        f"check that the data set and the model match")
