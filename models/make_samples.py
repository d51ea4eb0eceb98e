"""Write the small test-image samples shipped in ``snncc/sample/``.

Usage (from the repository root)::

    python models/make_samples.py --mnist /path/to/mnist --fmnist /path/to/fashion-mnist [--count 1000]

Each test sample is the first ``count`` images (in file order) of the official ``t10k`` test set; the MNIST
calibration sample (used by ``snncc demo``) is the first ``count`` images of the training set. All are stored with
``np.savez_compressed`` as ``x`` (uint8, shape ``(count, 28, 28)``, raw pixels 0..255) and ``y`` (uint8 labels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from snncc.data import load_dataset  # noqa: E402

SAMPLE_DIR = REPO_ROOT / "snncc" / "sample"


def write_sample(data_dir: Path, out: Path, count: int, split: str = "test") -> None:
    """Save the first ``count`` images of ``split`` of the IDX data set in ``data_dir`` to ``out``."""
    x, y = load_dataset(data_dir, split=split, limit=count)
    pixels = x[:, 0]
    if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{data_dir}: expected integer pixels in 0..255")
    np.savez_compressed(out, x=pixels.astype(np.uint8), y=y.astype(np.uint8))
    print(f"{out}: x {pixels.shape} uint8, y {y.shape} uint8, labels {np.bincount(y, minlength=10).tolist()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, required=True, help="directory with the MNIST IDX files")
    parser.add_argument("--fmnist", type=Path, required=True, help="directory with the Fashion-MNIST IDX files")
    parser.add_argument("--count", type=int, default=1000, help="number of test images (default: 1000)")
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help="output directory (default: snncc/sample/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_sample(args.mnist, args.out / f"mnist-test-{args.count}.npz", args.count)
    write_sample(args.fmnist, args.out / f"fmnist-test-{args.count}.npz", args.count)
    write_sample(args.mnist, args.out / f"mnist-train-{args.count}.npz", args.count, split="train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
