"""Peer comparison (optional): SpikingJelly's ann2snn on the shipped LeNet-5, the same data and T as
docs/scripts/benchmark_runtime.py; prints the measurement (docs/results/peers.json keeps it next to snncc's, and
``benchmark_runtime.py --render`` puts both in docs/benchmark.md).

Runs in its own virtual environment, so that the peer's dependencies never reach snncc's::

    python -m venv --system-site-packages /tmp/venv-peers
    /tmp/venv-peers/bin/pip install -c constraints.txt spikingjelly      # keeps torch==2.13.0
    /tmp/venv-peers/bin/python docs/scripts/benchmark_peers.py [--data ../shared/data] [--T 32] [--threads 2]

The weights come from models/lenet5-mnist.onnx (the ONNX initializers are named like the torch parameters) loaded
into models/architectures.py's LeNet5; its input normalization is applied to the data (SpikingJelly cannot trace
it). SpikingJelly converts it with its own normalization (99.9th percentile of
activations on the same 500 training images) into IF neurons with reset by subtraction; the network's output is
averaged over T steps, as snncc's readout does. Max pooling stays a max over the spikes of each step (SpikingJelly
keeps MaxPool2d), which is not snncc's running-max-of-counts pooling, so the accuracies differ by method, not by
simulator. Timing: best of --repeats runs over the images, batch 100, torch on --threads threads, no gradients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _idx(path: Path) -> np.ndarray:
    import gzip
    import struct

    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import onnx
    import torch
    from onnx import numpy_helper
    from spikingjelly.activation_based import ann2snn, functional

    from models.architectures import LeNet5

    torch.set_num_threads(args.threads)
    mnist = args.data / "mnist"
    x_train = _idx(mnist / "train-images-idx3-ubyte.gz")[:500].astype(np.float32)[:, None] / 255
    x_test = _idx(mnist / "t10k-images-idx3-ubyte.gz")[:args.images].astype(np.float32)[:, None] / 255
    y_test = _idx(mnist / "t10k-labels-idx1-ubyte.gz")[:args.images].astype(np.int64)

    lenet = LeNet5().eval()
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
               for i in onnx.load(str(REPO / "models" / "lenet5-mnist.onnx")).graph.initializer}
    lenet.load_state_dict(weights)
    # SpikingJelly's recipe cannot trace the division of the model's input normalization: normalize the data
    # instead and convert the rest (the same function).
    ann = torch.nn.Sequential(lenet.features, torch.nn.Flatten(), lenet.classifier).eval()
    x_train = (x_train - LeNet5.MEAN) / LeNet5.STD
    x_test = (x_test - LeNet5.MEAN) / LeNet5.STD
    calibration = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x_train),
                                                                             torch.zeros(len(x_train))),
                                              batch_size=100)
    recipe = ann2snn.RateCodingRecipe(calibration, mode="99.9%")
    snn = ann2snn.Converter(recipe).convert(ann).eval()
    xs = torch.from_numpy(x_test)
    best, predictions = float("inf"), None
    with torch.no_grad():
        for _ in range(args.repeats):
            start = time.perf_counter()
            parts = []
            for i in range(0, len(xs), 100):
                functional.reset_net(snn)
                batch = xs[i:i + 100]
                total = sum(snn(batch) for _ in range(args.T))
                parts.append((total / args.T).argmax(1))
            best = min(best, time.perf_counter() - start)
            predictions = torch.cat(parts).numpy()
        ann_accuracy = float((ann(xs).argmax(1).numpy() == y_test).mean())
    result = {"peer": "spikingjelly ann2snn RateCodingRecipe(mode=99.9%)",
              "model": "lenet5-mnist", "T": args.T, "images": len(xs), "threads": args.threads,
              "seconds": best, "images_per_second": len(xs) / best,
              "accuracy": float((predictions == y_test).mean()), "ann_accuracy_torch": ann_accuracy,
              "torch": torch.__version__}
    # docs/results/peers.json pairs this with snncc's Cython runtime measured right after it, with
    # `benchmark_runtime.py --child snn ... --backend cython --T 32` (see docs/benchmark.md); print only here.
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
