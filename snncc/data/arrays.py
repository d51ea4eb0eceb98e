"""Numpy data sets: an ``.npz`` archive with arrays ``x`` and ``y``, or a pair of ``.npy`` files.

The ``.npy`` pairs users have: ``x.npy``/``y.npy`` or ``images.npy``/``labels.npy`` in a directory, the split-named
``{split}_x.npy``/``{split}_y.npy`` (and ``{split}_images.npy``/``{split}_labels.npy``), or a prefix ``P`` naming
``P_x.npy``/``P_y.npy``. Everything is read with ``allow_pickle=False``: an object array is refused, never unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snncc.errors import DataError

PAIR_NAMES = (("x", "y"), ("images", "labels"))


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DataError(f"{path} lacks arrays {sorted(missing)}; an .npz data set needs 'x' and 'y' "
                                f"(it has {sorted(archive.files)})")
            return archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from exc


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"cannot read {path}: {exc} (snncc reads numeric arrays only, never pickled objects)") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} as .npy: {exc}") from exc


def find_npy_pair(path: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files that ``path`` names: a directory, one file of a pair, or a prefix; else None."""
    if path.is_dir():
        for x_name, y_name in PAIR_NAMES:
            for prefix in (f"{split}_", f"{split}-", ""):
                x, y = path / f"{prefix}{x_name}.npy", path / f"{prefix}{y_name}.npy"
                if x.is_file() and y.is_file():
                    return x, y
        return None
    if path.suffix == ".npy":
        stem = path.name[:-len(".npy")]
        for x_name, y_name in PAIR_NAMES:
            for own, other in ((x_name, y_name), (y_name, x_name)):
                if stem == own or stem.endswith(("_" + own, "-" + own)):
                    partner = path.with_name(stem[:len(stem) - len(own)] + other + ".npy")
                    if not partner.is_file():
                        raise DataError(f"{path} has no partner {partner.name} next to it; a .npy data set is a "
                                        f"pair of files ({x_name}.npy and {y_name}.npy)")
                    return (path, partner) if own == x_name else (partner, path)
        raise DataError(f"{path}: a single .npy is not a data set; name the pair x.npy/y.npy, images.npy/labels.npy "
                        f"or NAME_x.npy/NAME_y.npy, or save both in one .npz (np.savez(path, x=..., y=...))")
    for x_name, y_name in PAIR_NAMES:
        x, y = path.with_name(f"{path.name}_{x_name}.npy"), path.with_name(f"{path.name}_{y_name}.npy")
        if x.is_file() and y.is_file():
            return x, y
    return None


def load_npy_pair(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    return _read_npy(pair[0]), _read_npy(pair[1])
