"""Folders of image files (PNG, JPEG and the other formats Pillow reads), as users keep them.

Two layouts:

* **class per subfolder** (torchvision's ``ImageFolder``): ``root/<class>/<image>``; the classes sorted by name are
  labels 0, 1, ...; files within a class in name order;
* **flat**: ``root/<image>``, every file name ending in ``_<label>`` before the extension (``cifar10_07_6.png`` is
  label 6), or a labels file ``labels.txt`` / ``labels.csv`` of lines ``<file name>,<label>`` (comma, tab or
  spaces; a header line is skipped; labels are integers, or class names numbered in sorted order).

Images come out as ``(N, C, H, W)`` uint8: 8-bit grayscale (mode ``L``) as one channel, everything else as RGB
(palette images expanded, alpha dropped). All images must have one size and one channel count, or the error names
the first two files that differ; ``resize=(H, W)`` (bilinear) and then ``center_crop=(H, W)`` bring them to one size.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from snncc.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
LABEL_FILES = ("labels.txt", "labels.csv")
SPLIT_FOLDERS = ("train", "test", "val", "validation")
_GRAY_MODES = {"1", "L", "LA"}
_LABEL_SUFFIX = re.compile(r".*_(\d+)")
SIZE_REMEDY = "pass --resize H,W and/or --center-crop H,W (resize=(H, W), center_crop=(H, W) in Python)"


def image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def class_folders(directory: Path) -> list[tuple[str, list[Path]]]:
    """``(class name, files)`` of every subfolder holding images, classes in sorted order."""
    found = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files(sub)
        if files:
            found.append((sub.name, files))
    return found


def split_folder(directory: Path, split: str) -> Path | None:
    """``directory/<split>`` when the directory is a root of split folders (train/, test/, ...) of images."""
    subs = [p for p in directory.iterdir() if p.is_dir()]
    if subs and all(p.name in SPLIT_FOLDERS for p in subs) and (directory / split).is_dir():
        return directory / split
    return None


def _label_file(directory: Path) -> Path | None:
    return next((directory / n for n in LABEL_FILES if (directory / n).is_file()), None)


def flat_labels(directory: Path, files: list[Path]) -> tuple[np.ndarray, list[str] | None, str]:
    """Labels of a flat folder: from a labels file, else from the ``_<label>`` suffix of every file name.

    Returns the labels, the class names (None for integer labels) and where the labels came from."""
    label_file = _label_file(directory)
    if label_file is not None:
        return (*_read_label_file(label_file, files), label_file.name)
    labels = []
    for f in files:
        match = _LABEL_SUFFIX.fullmatch(f.stem)
        if match is None:
            raise DataError(f"{f} has no _<label> suffix (as in cat_3.png) and {directory} has no "
                            f"{' or '.join(LABEL_FILES)}; name every image NAME_<label>.EXT, add a labels file of "
                            f"'<file name>,<label>' lines, or sort the images into one subfolder per class")
        labels.append(int(match.group(1)))
    return np.asarray(labels, dtype=np.int64), None, "file name suffixes _<label>"


def _read_label_file(path: Path, files: list[Path]) -> tuple[np.ndarray, list[str] | None]:
    table: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = [f for f in re.split(r"[,\t ]+", line.strip()) if f]
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected '<file name>,<label>', got {line!r}")
        if number == 1 and Path(fields[0]).suffix.lower() not in SUFFIXES:
            continue  # a header such as "filename,label"
        table[fields[0]] = fields[1]
    missing = [f.name for f in files if f.name not in table]
    if missing:
        raise DataError(f"{path} has no label for {len(missing)} of {len(files)} images, e.g. {missing[0]}")
    values = [table[f.name] for f in files]
    if all(re.fullmatch(r"\d+", v) for v in values):
        return np.asarray([int(v) for v in values], dtype=np.int64), None
    names = sorted(set(values))
    return np.asarray([names.index(v) for v in values], dtype=np.int64), names


def _pair(value: tuple[int, int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2 or min(value) < 1:
        raise DataError(f"{name} takes a height and a width of at least 1 pixel, got {value}")
    return int(value[0]), int(value[1])


def read_images(files: list[Path], channels: int | None = None, resize: tuple[int, int] | None = None,
                center_crop: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``files`` into ``(N, C, H, W)`` uint8; ``channels`` (1 or 3) converts every image to that mode."""
    from PIL import Image

    resize, center_crop = _pair(resize, "resize"), _pair(center_crop, "center crop")
    if channels not in (None, 1, 3):
        raise DataError(f"images can be read with 1 (grayscale) or 3 (RGB) channels, not {channels}")
    arrays, first = [], None
    for f in files:
        try:
            with Image.open(f) as image:
                image.load()
                mode = image.mode
                if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise DataError(f"{f} has {mode} pixels; snncc reads 8-bit images, convert it to 8 bits first")
                target = {1: "L", 3: "RGB"}[channels] if channels else ("L" if mode in _GRAY_MODES else "RGB")
                image = image.convert(target)
                if resize is not None:
                    image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"cannot read image {f}: {exc}") from exc
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if center_crop is not None:
            pixels = _center_crop(pixels, center_crop, f)
        if first is None:
            first = (f, pixels.shape)
        elif pixels.shape != first[1]:
            _mismatch(first, (f, pixels.shape))
        arrays.append(pixels)
    return np.stack(arrays)


def _center_crop(pixels: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
    h, w = pixels.shape[1:]
    if size[0] > h or size[1] > w:
        raise DataError(f"{path} is {h}x{w}, smaller than the center crop {size[0]}x{size[1]}; resize first "
                        f"(--resize) or crop less")
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return pixels[:, top:top + size[0], left:left + size[1]]


def _mismatch(a: tuple[Path, tuple[int, ...]], b: tuple[Path, tuple[int, ...]]) -> None:
    (fa, (ca, ha, wa)), (fb, (cb, hb, wb)) = a, b
    if ca != cb:
        kind = {1: "grayscale", 3: "RGB"}
        raise DataError(f"images differ in channels: {fa} is {kind[ca]} ({ca} channel{'s' * (ca > 1)}), {fb} is "
                        f"{kind[cb]} ({cb} channel{'s' * (cb > 1)}); convert them to one mode, or read them all "
                        f"with channels=1 or 3 (load_dataset(..., channels=3))")
    raise DataError(f"images differ in size: {fa} is {ha}x{wa}, {fb} is {hb}x{wb}; {SIZE_REMEDY}")
