"""The binary versions of CIFAR-10 and CIFAR-100 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html).

CIFAR-10 binary: records of 3073 bytes, ``<label><1024 R><1024 G><1024 B>``, each plane 32x32 row-major; files
``data_batch_1.bin`` .. ``data_batch_5.bin`` (train) and ``test_batch.bin`` (test). CIFAR-100 binary: records of 3074
bytes, ``<coarse label><fine label><3072 pixels>``; files ``train.bin`` and ``test.bin``. Any other single ``.bin``
of whole records is read too. The "python versions" of both are pickles, which snncc never loads (unpickling can
run code); they are recognised and refused with a pointer to the binary version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snncc.errors import DataError

PIXELS = 3 * 32 * 32
RECORD = {10: 1 + PIXELS, 100: 2 + PIXELS}
SPLIT_FILES = {10: {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
               100: {"train": ["train.bin"], "test": ["test.bin"]}}
CLASSES = {10: 10, 100: 100}
LABEL_KINDS = ("fine", "coarse")
# The files of the python versions: cifar-10-batches-py and cifar-100-python.
PYTHON_NAMES = {"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                "batches.meta", "meta", "train", "test"}
PICKLE_REMEDY = ("snncc does not unpickle data (a pickle can run code); use the binary version instead "
                 "(cifar-10-binary.tar.gz: data_batch_*.bin, test_batch.bin; cifar-100-binary.tar.gz: train.bin, "
                 "test.bin) and point snncc at its directory or at one .bin file")


def is_python_batch(path: Path) -> bool:
    """True for a file of the CIFAR python versions (a pickle: protocol 2 starts with byte 0x80)."""
    if not path.is_file() or path.suffix not in ("", ".meta"):
        return False
    if path.name not in PYTHON_NAMES:
        return False
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def python_batches(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if is_python_batch(p))


def refuse_python(path: Path) -> DataError:
    return DataError(f"{path} is the CIFAR 'python version' (pickled batches); {PICKLE_REMEDY}")


def _variant(path: Path, size: int) -> int:
    """10 or 100, from the file name when it is a standard one, else from which record size divides the file."""
    for variant, splits in SPLIT_FILES.items():
        if any(path.name in names for names in splits.values()):
            if size % RECORD[variant] == 0:
                return variant
    fits = [v for v in (10, 100) if size and size % RECORD[v] == 0]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise DataError(f"{path}: {size} bytes is not a whole number of CIFAR-10 records ({RECORD[10]} bytes) nor "
                        f"of CIFAR-100 records ({RECORD[100]} bytes)")
    raise DataError(f"{path}: {size} bytes is a whole number of both CIFAR-10 and CIFAR-100 records; rename it "
                    f"after its data set's files (test_batch.bin for CIFAR-10, test.bin for CIFAR-100)")


def read_cifar_bin(path: Path, labels: str = "fine") -> tuple[np.ndarray, np.ndarray, int]:
    """Images ``(N, 3, 32, 32)`` uint8, labels and the variant (10 or 100) of one binary file.

    For CIFAR-100, ``labels`` picks the fine (100 classes, the default) or the coarse labels (20 superclasses)."""
    if labels not in LABEL_KINDS:
        raise DataError(f"CIFAR-100 labels must be one of {', '.join(LABEL_KINDS)}, got {labels!r}")
    raw = np.fromfile(path, dtype=np.uint8)
    variant = _variant(path, raw.size)
    records = raw.reshape(-1, RECORD[variant])
    label_bytes = RECORD[variant] - PIXELS
    y = records[:, label_bytes - 1 if labels == "fine" or variant == 10 else 0].astype(np.int64)
    x = records[:, label_bytes:].reshape(-1, 3, 32, 32)
    classes = 20 if variant == 100 and labels == "coarse" else CLASSES[variant]
    if y.size and y.max() >= classes:
        raise DataError(f"{path}: label {int(y.max())} in record {int(y.argmax())} is not below {classes}; the file "
                        f"is not CIFAR-{variant} binary records")
    return x, y, variant


def find_cifar_files(directory: Path, split: str) -> list[Path] | None:
    """The ``.bin`` files of ``split`` in ``directory``: the standard names, else its only ``.bin``; None if none."""
    bins = sorted(directory.glob("*.bin"))
    if not bins:
        return None
    for splits in SPLIT_FILES.values():
        if split in splits:
            found = [directory / name for name in splits[split] if (directory / name).is_file()]
            if found:
                return found
    if len(bins) == 1:
        return bins
    standard = {name for splits in SPLIT_FILES.values() for names in splits.values() for name in names}
    if any(b.name in standard for b in bins):
        raise DataError(f"{directory} has CIFAR binary files but none of split {split!r}: "
                        f"{', '.join(b.name for b in bins)}; use --split train or test")
    raise DataError(f"{directory} holds several .bin files ({', '.join(b.name for b in bins)}) with no standard "
                    f"CIFAR names; point at one of them")


def load_cifar_files(files: list[Path], labels: str = "fine") -> tuple[np.ndarray, np.ndarray, int]:
    parts = [read_cifar_bin(f, labels) for f in files]
    variants = {p[2] for p in parts}
    if len(variants) > 1:
        raise DataError(f"{files[0].parent} mixes CIFAR-10 and CIFAR-100 files")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), variants.pop()
