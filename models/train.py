"""Train the ANN models that snncc ships and export them to ONNX.

Usage (from the repository root)::

    python models/train.py lenet5-mnist --data /path/to/mnist
    python models/train.py vgg-fmnist --data /path/to/fashion-mnist [--epochs N] [--out models/]
    python models/train.py silu-fmnist --data /path/to/fashion-mnist --threads 1
    python models/train.py resnet-fmnist --data /path/to/fashion-mnist --threads 1
    python models/train.py lenet5-avg-mnist --data /path/to/mnist
    python models/train.py vgg-avg-fmnist --data /path/to/fashion-mnist

The ``-avg`` models are the shipped LeNet-5 and VGG with average instead of max pooling. They are not trained from
scratch: their weights start from the shipped max-pooling model's ONNX file (``TrainConfig.init_from``; the VGG in
its exported, BatchNorm-folded form) and are fine-tuned for a few epochs with the same augmentation, which costs a
fraction of a full training run.

``--data`` is a directory with the four standard IDX files (``train-images-idx3-ubyte.gz`` ...). The model is
trained on the 60,000 training images only and evaluated on the 10,000 test images. After training the model is
exported twice, each next to a small JSON card:

* ``<out>/<name>.onnx``: legacy TorchScript exporter (``dynamo=False``), opset 13, dynamic batch axis;
* ``<out>/<name>.dynamo.onnx``: ``torch.export``-based exporter (``dynamo=True``), dynamic batch axis, one
  self-contained file (no external data).

Both files are checked (``onnx.checker``, onnxruntime at batch sizes 1 and 7 against torch) and evaluated with
onnxruntime on the full test set. Inputs are ``pixels / 255``; the dataset normalisation is inside the model, and the
files record their preprocessing in their ONNX metadata (``write_input_metadata``), which ``snncc compile`` reads.

Everything is seeded (``--seed``): weight initialisation, the shuffling order and the augmentation draw from
generators seeded per run, and torch runs on ``--threads`` CPU threads (2 by default), so a rerun on the same
machine and software versions reproduces the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.architectures import LeNet5, ResNetFashion, SiLUFashion, VGGFashion, count_parameters  # noqa: E402
from snncc.data import InputScaling, load_dataset  # noqa: E402

if TYPE_CHECKING:
    import onnxruntime

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: fall back to the per-epoch log lines only
    tqdm = None

#: Pixels are fed to the exported models as ``pixels / 255``; the normalisation is inside the model.
INPUT_SCALING = InputScaling(scale=1 / 255)
LEGACY_OPSET = 13
DYNAMO_OPSET = 18


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (the recipe of one shipped model)."""

    name: str
    dataset: str
    model: Callable[[], nn.Module] = field(repr=False)
    epochs: int
    batch_size: int
    optimizer: str  # "adamw" or "sgd" (Nesterov momentum)
    lr: float  # peak learning rate of the one-cycle schedule
    weight_decay: float
    max_shift: int  # random translation of up to +-max_shift pixels (zero padding + random crop)
    hflip: bool  # random horizontal flips (p = 0.5)
    label_smoothing: float = 0.0
    momentum: float = 0.9
    warmup_fraction: float = 0.15  # share of the steps spent ramping the learning rate up
    channels_last: bool = False  # NHWC memory format during training (faster CPU convolutions; same maths)
    seed: int = 0
    init_from: str | None = None  # a shipped model (models/<name>.onnx) whose weights the network starts from


    def recipe(self) -> dict[str, object]:
        """The JSON-serialisable part of the config (the model factory is left out)."""
        return {k: v for k, v in asdict(self).items() if k != "model"}

    def build(self) -> nn.Module:
        """A fresh network: initialized by torch's (seeded) defaults, or with the weights of ``init_from``."""
        model = self.model()
        if self.init_from is not None:
            load_onnx_weights(model, REPO_ROOT / "models" / f"{self.init_from}.onnx")
        return model


CONFIGS: dict[str, TrainConfig] = {
    "lenet5-mnist": TrainConfig(
        name="lenet5-mnist", dataset="MNIST", model=LeNet5, epochs=20, batch_size=128, optimizer="adamw",
        lr=3e-3, weight_decay=1e-4, max_shift=2, hflip=False,
    ),
    "vgg-fmnist": TrainConfig(
        name="vgg-fmnist", dataset="Fashion-MNIST", model=VGGFashion, epochs=20, batch_size=128, optimizer="sgd",
        lr=0.1, weight_decay=5e-4, max_shift=2, hflip=True, label_smoothing=0.1, channels_last=True,
    ),
    "silu-fmnist": TrainConfig(
        name="silu-fmnist", dataset="Fashion-MNIST", model=SiLUFashion, epochs=30, batch_size=128, optimizer="sgd",
        lr=0.1, weight_decay=5e-4, max_shift=2, hflip=True, label_smoothing=0.1, channels_last=True,
    ),
    # ResNet-14 layout (2 basic blocks per stage): ResNet-20 needed about twice the ~40 min training budget on one
    # thread of the shared 2-core machine (385-507 s per epoch); this one takes about 2/3 of its time per epoch.
    "resnet-fmnist": TrainConfig(
        name="resnet-fmnist", dataset="Fashion-MNIST", model=partial(ResNetFashion, blocks=2), epochs=10,
        batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, max_shift=2, hflip=True, label_smoothing=0.1,
        channels_last=True,
    ),
    "lenet5-avg-mnist": TrainConfig(
        name="lenet5-avg-mnist", dataset="MNIST", model=partial(LeNet5, pool="avg"), epochs=3, batch_size=128,
        optimizer="adamw", lr=1e-3, weight_decay=1e-4, max_shift=2, hflip=False, init_from="lenet5-mnist",
    ),
    "vgg-avg-fmnist": TrainConfig(
        name="vgg-avg-fmnist", dataset="Fashion-MNIST", model=partial(VGGFashion, pool="avg", conv_batchnorm=False),
        epochs=2, batch_size=128, optimizer="sgd", lr=0.01, weight_decay=5e-4, max_shift=2, hflip=True,
        label_smoothing=0.1, channels_last=True, init_from="vgg-fmnist",
    ),
}


#: ONNX node types whose initializers hold a torch module's parameters, with the module type and the parameter
#: (and buffer) names in the node's input order after the data input.
_ONNX_PARAMETERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv": (nn.Conv2d, ("weight", "bias")),
    "Gemm": (nn.Linear, ("weight", "bias")),
    "BatchNormalization": (nn.BatchNorm1d, ("weight", "bias", "running_mean", "running_var")),
}


def load_onnx_weights(model: nn.Module, path: Path) -> None:
    """Copy the parameters of an exported network (``path``) into ``model``, matching the ONNX nodes that hold
    parameters with the model's layers of the same kind in order. The shapes must agree exactly; Gemm must carry
    ``transB=1`` (torch's exports do), so its weight is torch's ``(out, in)``."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type in _ONNX_PARAMETERS]
    layers = [m for m in model.modules() if isinstance(m, tuple(kind for kind, _ in _ONNX_PARAMETERS.values()))]
    if len(nodes) != len(layers):
        raise ValueError(f"{path}: {len(nodes)} parameter nodes, the model has {len(layers)} layers")
    for node, layer in zip(nodes, layers):
        kind, names = _ONNX_PARAMETERS[node.op_type]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not isinstance(layer, kind) or (node.op_type == "Gemm" and attrs.get("transB") != 1):
            raise ValueError(f"{path}: node {node.name} ({node.op_type}) does not match layer {layer}")
        for name, source in zip(names, node.input[1:]):
            target = getattr(layer, name)
            value = torch.from_numpy(arrays[source].copy())
            if target is None or tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"{path}: {source} has shape {tuple(value.shape)}, {layer}.{name} "
                                 f"{None if target is None else tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(value)


# ----------------------------------------------------------------------------------------------------------- data


def load_split(data_dir: Path, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split with the project reader as ``(x in [0, 1] of shape (N, 1, 28, 28), int64 labels)``."""
    x, y = load_dataset(data_dir, split=split, limit=limit)
    return torch.from_numpy(INPUT_SCALING.apply(x)), torch.from_numpy(y)


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int, hflip: bool) -> torch.Tensor:
    """Randomly translate each image by up to ``max_shift`` pixels (zero fill) and, if ``hflip``, mirror half of them.

    The translation is a random ``H x W`` crop of the image zero-padded by ``max_shift`` on every side.
    """
    n, c, h, w = x.shape
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4)
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


# ------------------------------------------------------------------------------------------------------- training


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD; weight decay applies to conv/linear weights only (not to biases or BN affine params)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` (put in eval mode) for all of ``x``."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    pred = np.asarray(logits).argmax(axis=1)
    return float((pred == np.asarray(y)).mean() * 100.0)


def train(config: TrainConfig, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
          y_test: torch.Tensor, progress: bool) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a fresh model per ``config`` and return it with a per-epoch log."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    model = config.build()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    generator = torch.Generator().manual_seed(config.seed)  # shuffling order and augmentation draws
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=config.warmup_fraction, anneal_strategy="cos",
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss, correct = 0.0, 0
        batches = range(0, len(x_train), config.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False) if progress and tqdm else batches
        for i in bar:
            index = order[i:i + config.batch_size]
            xb = augment(x_train[index], generator, config.max_shift, config.hflip).contiguous(
                memory_format=memory_format)
            yb = y_train[index]
            logits = model(xb)
            loss = criterion(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == yb).sum())
        test_acc = accuracy(predict(model, x_test), y_test)
        record = {"epoch": epoch, "loss": total_loss / len(x_train), "train_acc": 100.0 * correct / len(x_train),
                  "test_acc": test_acc, "seconds": time.perf_counter() - start}
        history.append(record)
        print(f"[{config.name}] epoch {epoch:2d}/{config.epochs}  loss {record['loss']:.4f}  "
              f"train {record['train_acc']:.2f}%  test {test_acc:.2f}%  ({record['seconds']:.0f}s)", flush=True)
    model.eval()
    return model.to(memory_format=torch.contiguous_format), history


# --------------------------------------------------------------------------------------------------------- export


def export_legacy(model: nn.Module, path: Path, sample_shape: tuple[int, ...] = (1, 28, 28)) -> None:
    """Export with the TorchScript-based exporter, opset 13, dynamic batch axis."""
    dummy = torch.zeros(1, *sample_shape)
    torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=LEGACY_OPSET, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def export_dynamo(model: nn.Module, path: Path, sample_shape: tuple[int, ...] = (1, 28, 28)) -> None:
    """Export with the ``torch.export``-based exporter, dynamic batch axis, as one self-contained file."""
    import onnx

    dummy = torch.zeros(2, *sample_shape)  # batch > 1 so that the batch dimension is not specialised to 1
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(model, (dummy,), dynamo=True, opset_version=DYNAMO_OPSET, input_names=["input"],
                                output_names=["logits"], dynamic_shapes=({0: batch},), optimize=True)
    onnx.save_model(program.model_proto, str(path), save_as_external_data=False)
    external = path.with_name(path.name + ".data")
    if external.exists():
        raise RuntimeError(f"{external} was written; the dynamo export must be a single file")


def write_input_metadata(path: Path, pixel_format: str, input_range: tuple[float, float]) -> None:
    """Record the model's preprocessing in the file's ``metadata_props`` (``snncc.frontend.metadata``): the ONNX
    image convention's pixel format, sRGB gamma and nominal range, snncc's input scaling and the range of the
    training inputs, so that ``snncc compile`` needs no ``--input-scaling``. The graph is left byte for byte as is."""
    import onnx

    from snncc.frontend.metadata import image_metadata, set_metadata

    model = onnx.load(str(path))
    graph = model.graph.SerializeToString()
    set_metadata(model, image_metadata(pixel_format, INPUT_SCALING, input_range))
    onnx.save_model(model, str(path), save_as_external_data=False)
    if onnx.load(str(path)).graph.SerializeToString() != graph:
        raise RuntimeError(f"{path}: writing the metadata changed the graph")


def training_input_range(x: torch.Tensor) -> tuple[float, float]:
    """The range of the (scaled) training inputs; the augmentations (shifts with zero fill, flips) stay inside it
    as long as it contains 0."""
    return min(float(x.min()), 0.0), float(x.max())


def make_session(path: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session for ``path`` (checked with ``onnx.checker`` first)."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predict(session: onnxruntime.InferenceSession, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits of an onnxruntime session for all of ``x``."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def check_onnx(path: Path, x_test: torch.Tensor, y_test: torch.Tensor,
               torch_logits: torch.Tensor) -> dict[str, object]:
    """Check an exported file: checker, batch sizes 1 and 7 against torch, accuracy on the whole test set."""
    import onnx

    session = make_session(path)
    for n in (1, 7):
        out = session.run(None, {session.get_inputs()[0].name: x_test[:n].numpy()})[0]
        if out.shape != (n, 10):
            raise RuntimeError(f"{path}: batch {n} gave output shape {out.shape}")
        np.testing.assert_allclose(out, torch_logits[:n].numpy(), rtol=1e-4, atol=1e-4, err_msg=str(path))
    logits = onnx_predict(session, x_test.numpy())
    max_diff = float(np.abs(logits - torch_logits.numpy()).max())
    agree = int((logits.argmax(1) == torch_logits.numpy().argmax(1)).sum())
    proto = onnx.load(str(path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    ops = Counter(node.op_type for node in proto.graph.node)
    return {"accuracy": accuracy(logits, y_test), "max_abs_diff_vs_torch": max_diff,
            "argmax_agreement_vs_torch": agree, "opset": opset, "ops": dict(sorted(ops.items())),
            "bytes": path.stat().st_size}


def write_card(path: Path, config: TrainConfig, exporter: str, check: dict[str, object], torch_acc: float,
               model: nn.Module, history: list[dict[str, float]], train_seconds: float, command: str) -> None:
    """Write the machine-readable JSON card next to an exported ONNX file."""
    card = {
        "name": config.name,
        "dataset": config.dataset,
        "input_scaling": INPUT_SCALING.to_json(),
        "input_shape": ["batch", 1, 28, 28],
        "num_classes": 10,
        "ann_test_accuracy": round(float(check["accuracy"]), 2),
        "torch_test_accuracy": round(torch_acc, 2),
        "test_set_size": 10000,
        "onnx_file": path.with_suffix(".onnx").name,
        "onnx_opset": check["opset"],
        "exporter": exporter,
        "onnx_ops": check["ops"],
        "parameters": count_parameters(model),
        "torch_version": torch.__version__,
        "training": {**config.recipe(), "wall_clock_seconds": round(train_seconds, 1),
                     "final_epoch": {k: round(v, 4) for k, v in history[-1].items()}},
        "command": command,
    }
    path.write_text(json.dumps(card, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(CONFIGS), help="which model to train")
    parser.add_argument("--data", type=Path, required=True, help="directory with the dataset's IDX files")
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models", help="output directory (default: models/)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's, 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="train on the first N training images only (smoke tests; not for shipped models)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar, per-epoch log lines only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    config = CONFIGS[args.name]
    overrides = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    if overrides:
        config = replace(config, **overrides)
    command = "python models/train.py " + " ".join(sys.argv[1:] if argv is None else argv)

    x_train, y_train = load_split(args.data, "train", args.train_limit)
    x_test, y_test = load_split(args.data, "test")
    print(f"[{config.name}] {len(x_train)} training / {len(x_test)} test images from {args.data}; "
          f"{count_parameters(config.model())} parameters; recipe {config.recipe()}", flush=True)

    start = time.perf_counter()
    model, history = train(config, x_train, y_train, x_test, y_test,
                           progress=not args.no_progress and sys.stderr.isatty())
    train_seconds = time.perf_counter() - start
    torch_logits = predict(model, x_test)
    torch_acc = accuracy(torch_logits, y_test)
    print(f"[{config.name}] trained in {train_seconds:.0f}s; torch test accuracy {torch_acc:.2f}%", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for suffix, dynamo, export in ((".onnx", False, export_legacy), (".dynamo.onnx", True, export_dynamo)):
        path = args.out / f"{config.name}{suffix}"
        export(model, path)
        write_input_metadata(path, "Gray8", training_input_range(x_train))
        check = check_onnx(path, x_test, y_test, torch_logits)
        write_card(path.with_name(path.name.removesuffix(".onnx") + ".json"), config,
                   f"torch.onnx.export(dynamo={dynamo})", check, torch_acc, model, history, train_seconds, command)
        results[path.name] = check
        print(f"[{config.name}] {path}: onnxruntime test accuracy {check['accuracy']:.2f}% "
              f"(opset {check['opset']}, {check['bytes']} bytes, max |logit diff| vs torch "
              f"{check['max_abs_diff_vs_torch']:.2e}, argmax agreement {check['argmax_agreement_vs_torch']}/10000)\n"
              f"    ops: {check['ops']}", flush=True)
    accuracies = {r["accuracy"] for r in results.values()}
    if len(accuracies) != 1 or abs(accuracies.pop() - torch_acc) > 1e-9:
        print(f"[{config.name}] WARNING: accuracies disagree: torch {torch_acc:.2f}%, "
              + ", ".join(f"{k} {v['accuracy']:.2f}%" for k, v in results.items()), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
