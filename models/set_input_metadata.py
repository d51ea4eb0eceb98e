"""Record the preprocessing of the shipped models in their ONNX metadata, leaving their graphs byte for byte as is.

Usage (from the repository root)::

    python models/set_input_metadata.py --data /path/to/shared/data

For every ``models/*.onnx`` (and ``snncc/sample/lenet5-mnist.onnx``, a copy of ``models/lenet5-mnist.onnx``) it
writes the keys of ``models/train.py``'s ``write_input_metadata`` (pixel format, sRGB, ``Normalized_0_1``,
``snncc.input_scaling`` = ``pixels / 255`` and the range of the training inputs, measured on the training data in
``--data``), checks that onnxruntime gives bit-identical outputs before and after on real test images, and updates
the SHA-256 and sizes in the model cards (``models/<name>.md``, and the JSON cards that record them). Future exports
write the same keys themselves (``models/train.py``, ``models/make_resnet_cifar.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from snncc.data import load_dataset  # noqa: E402

# model name: (pixel format, data set folder in --data, split whose range the model was trained on)
MODELS = {"lenet5-mnist": ("Gray8", "mnist", "train"), "vgg-fmnist": ("Gray8", "fashion-mnist", "train"),
          "silu-fmnist": ("Gray8", "fashion-mnist", "train"), "resnet-fmnist": ("Gray8", "fashion-mnist", "train"),
          # random-but-fixed weights whose BatchNorm statistics were measured on the 20 CIFAR-10 test images
          "resnet20-cifar10": ("Rgb8", "cifar10-first20-test-foolbox/test_first20.bin", "test")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def stamp(path: Path, pixel_format: str, input_range: tuple[float, float], x_test: np.ndarray) -> tuple[str, str]:
    """Write the metadata into ``path``; return its SHA-256 before and after."""
    from models.train import write_input_metadata

    before_sha, before = sha256(path), outputs(path, x_test)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / path.name
        shutil.copyfile(path, work)
        write_input_metadata(work, pixel_format, input_range)
        after = outputs(work, x_test)
        if before.tobytes() != after.tobytes():
            raise RuntimeError(f"{path}: onnxruntime outputs changed with the metadata")
        shutil.copyfile(work, path)
    return before_sha, sha256(path)


def update_cards(name: str, changes: dict[str, tuple[str, str, int, int]]) -> None:
    """Replace the old SHA-256 and sizes of each file by the new ones in the model card and the JSON cards."""
    card = REPO_ROOT / "models" / f"{name}.md"
    text = card.read_text()
    for file_name, (old_sha, new_sha, old_size, new_size) in changes.items():
        text = text.replace(old_sha, new_sha)
        text = text.replace(f"{old_size:,} B", f"{new_size:,} B")
        json_card = REPO_ROOT / "models" / (file_name.removesuffix(".onnx") + ".json")
        data = json.loads(json_card.read_text())
        if "sha256" in data or "bytes" in data:
            data.update({"sha256": new_sha, "bytes": new_size})
            json_card.write_text(json.dumps(data, indent=2) + "\n")
    card.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (mnist/, fashion-mnist/, ...)")
    args = parser.parse_args(argv)
    from models.train import INPUT_SCALING

    for name, (pixel_format, folder, split) in MODELS.items():
        train, _ = load_dataset(args.data / folder, split=split)
        scaled = INPUT_SCALING.apply(train)
        input_range = (min(float(scaled.min()), 0.0), float(scaled.max()))
        x_test = INPUT_SCALING.apply(load_dataset(args.data / folder, split="test", limit=64)[0])
        changes = {}
        for suffix in (".onnx", ".dynamo.onnx"):
            path = REPO_ROOT / "models" / f"{name}{suffix}"
            old_size = path.stat().st_size
            old_sha, new_sha = stamp(path, pixel_format, input_range, x_test)
            changes[path.name] = (old_sha, new_sha, old_size, path.stat().st_size)
            print(f"{path.name}: {pixel_format}, training inputs {input_range[0]:g}..{input_range[1]:g}; "
                  f"{old_size} -> {path.stat().st_size} bytes, sha256 {new_sha}; onnxruntime outputs identical")
        update_cards(name, changes)
    sample = REPO_ROOT / "snncc" / "sample" / "lenet5-mnist.onnx"
    shutil.copyfile(REPO_ROOT / "models" / "lenet5-mnist.onnx", sample)
    print(f"{sample}: copied from models/lenet5-mnist.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
