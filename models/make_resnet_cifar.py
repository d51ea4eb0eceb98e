"""Build and export ``resnet20-cifar10``: a CIFAR-10 ResNet-20 with option-A shortcuts and random-but-fixed weights.

Usage (from the repository root)::

    python models/make_resnet_cifar.py --data /path/to/cifar10-first20-test-foolbox [--seed 0] [--npz OUT.npz]

There is no CIFAR-10 training set on the development machine, so the network is not trained. It exists to test
that snncc imports and converts the residual pattern exporters emit for the option-A shortcut of He et al. 2016
(``x[:, :, ::2, ::2]`` zero-padded in channels). The weights come from a seeded generator:

* convolutions: Kaiming-normal (fan-out) initialisation, the fully connected layer torch's default;
* BatchNorm affine parameters: ``gamma ~ U(0.5, 1.5)``, ``beta ~ N(0, 0.25^2)``, so that the ReLUs cut at varied
  points;
* BatchNorm running statistics: the exact (cumulative, ``momentum=None``) average of the batch statistics of
  training-mode forward passes over the 20 real CIFAR-10 test images, their mirror images and two randomly shifted
  copies (+-4 px), so that the eval-mode network keeps its activations at a realistic scale;
* the fully connected layer's bias: ``-W mean(f)`` over the pooled features ``f`` of those 80 images, so that the
  logits are centred and the predicted classes vary between images (without it nearly all land in one class).

The model is exported twice, like the trained models (``models/train.py``): ``<out>/resnet20-cifar10.onnx``
(TorchScript exporter, opset 13) and ``<out>/resnet20-cifar10.dynamo.onnx`` (``torch.export``, opset 18), both with
a dynamic batch axis, each checked with ``onnx.checker`` and onnxruntime against torch and described by a JSON card.
Inputs are ``pixels / 255`` of shape ``(N, 3, 32, 32)``; the per-channel CIFAR-10 normalisation is inside the model,
and the files record that preprocessing in their ONNX metadata.
``--data`` is the directory holding ``test_first20.bin`` (CIFAR-10 binary records: 1 label byte, then 1024 R, 1024
G, 1024 B bytes, row-major) or that file itself. ``--npz`` also writes the 20 images as an ``.npz`` (``x`` uint8
``(20, 3, 32, 32)``, ``y`` uint8) that ``snncc compile --calib`` and ``snncc eval --data`` read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.architectures import ResNetCifar, count_parameters  # noqa: E402
from models.train import (  # noqa: E402
    DYNAMO_OPSET, INPUT_SCALING, LEGACY_OPSET, export_dynamo, export_legacy, make_session, onnx_predict,
    training_input_range, write_input_metadata,
)

NAME = "resnet20-cifar10"
SAMPLE_SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 binary records into ``(x uint8 (N, 3, 32, 32), y uint8 (N,))``."""
    if path.is_dir():
        path = path / "test_first20.bin"
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
    records = raw.reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, *SAMPLE_SHAPE).copy(), records[:, 0].copy()


def shifted(x: torch.Tensor, generator: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    """Each image translated by up to ``max_shift`` px (zero fill): a random crop of the zero-padded image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def build(seed: int, images: torch.Tensor) -> nn.Module:
    """The seeded ResNet-20 with randomised BatchNorm parameters and running statistics measured on ``images``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ResNetCifar()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=generator))
        bn.bias.copy_(0.25 * torch.randn(bn.num_features, generator=generator))
        bn.momentum = None  # cumulative average: the running statistics are the mean of all batches' statistics
        bn.reset_running_stats()
    batches = (images, images.flip(-1), shifted(images, generator), shifted(images.flip(-1), generator))
    model.train()
    for batch in batches:
        model(batch)
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
    # Centre the logits: a random network's pooled features share a large common component, and without this
    # almost every image lands in the same class.
    features = torch.cat([torch.flatten(model.pool(model.stages(model.stem(model.normalized(b)))), 1)
                          for b in batches])
    model.fc.bias.copy_(-model.fc.weight @ features.mean(0))
    return model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="directory with test_first20.bin (CIFAR-10 binary records), or the file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models", help="output directory (default: models/)")
    parser.add_argument("--npz", type=Path, default=None, help="also write the images and labels to this .npz")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    command = "python models/make_resnet_cifar.py " + " ".join(sys.argv[1:] if argv is None else argv)

    pixels, labels = read_cifar_records(args.data)
    x = torch.from_numpy(INPUT_SCALING.apply(pixels.astype(np.float32)))
    model = build(args.seed, x)
    torch_logits = model(x).detach().numpy()
    torch_pred = torch_logits.argmax(1)
    print(f"[{NAME}] {count_parameters(model)} parameters; torch predictions {torch_pred.tolist()} "
          f"(labels {labels.tolist()}; {int((torch_pred == labels).sum())}/{len(labels)} right by chance)")

    args.out.mkdir(parents=True, exist_ok=True)
    if args.npz is not None:
        np.savez_compressed(args.npz, x=pixels, y=labels)
    import onnx

    for suffix, dynamo, export, opset in ((".onnx", False, export_legacy, LEGACY_OPSET),
                                          (".dynamo.onnx", True, export_dynamo, DYNAMO_OPSET)):
        path = args.out / f"{NAME}{suffix}"
        export(model, path, SAMPLE_SHAPE)
        write_input_metadata(path, "Rgb8", training_input_range(x))
        session = make_session(path)
        for n in (1, 7):
            out = session.run(None, {session.get_inputs()[0].name: x[:n].numpy()})[0]
            np.testing.assert_allclose(out, torch_logits[:n], rtol=1e-4, atol=1e-4, err_msg=str(path))
        logits = onnx_predict(session, x.numpy())
        ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
        card = {
            "name": NAME,
            "dataset": "CIFAR-10 layout; random-but-fixed weights (not trained)",
            "input_scaling": INPUT_SCALING.to_json(),
            "input_shape": ["batch", *SAMPLE_SHAPE],
            "num_classes": 10,
            "onnx_file": path.name,
            "onnx_opset": opset,
            "exporter": f"torch.onnx.export(dynamo={dynamo})",
            "onnx_ops": dict(sorted(ops.items())),
            "parameters": count_parameters(model),
            "torch_version": torch.__version__,
            "seed": args.seed,
            "sample": {"images": "first 20 CIFAR-10 test images (test_first20.bin)",
                       "labels": labels.tolist(),
                       "torch_predictions": torch_pred.tolist(),
                       "onnxruntime_predictions": logits.argmax(1).tolist(),
                       "max_abs_diff_vs_torch": float(np.abs(logits - torch_logits).max())},
            "bytes": path.stat().st_size,
            "sha256": sha256(path),
            "command": command,
        }
        path.with_name(path.name.removesuffix(".onnx") + ".json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"[{NAME}] {path}: opset {opset}, {card['bytes']} bytes, onnxruntime predictions "
              f"{card['sample']['onnxruntime_predictions']}, max |logit diff| vs torch "
              f"{card['sample']['max_abs_diff_vs_torch']:.2e}\n    ops: {card['onnx_ops']}")
        if card["sample"]["onnxruntime_predictions"] != torch_pred.tolist():
            print(f"[{NAME}] WARNING: onnxruntime and torch disagree on {path}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
