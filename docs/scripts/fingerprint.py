"""Fingerprints of the compiled SNNs and their simulated spikes, to show that a refactoring changes nothing.

Every configuration behind a figure in README.md and docs/ (rate, signed rate, FS, AMOS, quantized FS, SEW) is
compiled from its shipped model (calibration on the first ``--calib`` training images) and simulated on the first
``--limit`` test images. The fingerprint of a configuration is the SHA-256 of the readout values of every step and of
the spike counts per population, step and image, so two runs agree only if every spike and every readout value is the
same. ``--write FILE`` records them; ``--check FILE`` compares and exits non-zero on any difference, naming it.

    python docs/scripts/fingerprint.py --write /tmp/before.json       # on the old code
    python docs/scripts/fingerprint.py --check /tmp/before.json       # on the new code

The figures scripts (rate_results.py, temporal_results.py, residual_results.py) compute their accuracies and spike
counts from exactly these simulated values, on more images; equal fingerprints on the same code path mean that the
figures reproduce. The default is the reference simulator (the specification); ``--backend cython`` checks the
compiled runtime the same way, with the temporal runtime's convolutions on the reference's im2col product
(``convolution="reference"``: the measured choice of oneDNN, the default, sums in another order, so its hashes
would depend on which implementation was faster on the day; runtime/graded_convolution.py).

The hashes include the last bits of BLAS products, whose summation order depends on the CPU and the BLAS kernel, so
compare fingerprints taken on the same machine: write the baseline on the old code, then check the new code there.
It also depends on OpenBLAS's number of threads; since session 24 every simulator runs numpy's BLAS on one thread
(runtime/blas_threads.py) unless ``OPENBLAS_NUM_THREADS`` is set, and baselines written before that (with
OpenBLAS's default, one thread per core) differ from later checks in the last bits: on the 2-core AMD machine 13 of
the 16 configurations hashed differently, with the same accuracies and at most 0.3 spikes per image apart.
``docs/results/fingerprint-{reference,cython}.json`` are the baselines of issue 13 (code 47515c1, 2-core Intel
machine with AVX-512); the code after issue 13 printed ``same`` for all 16 configurations against both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shipped import load_model_data  # noqa: E402

from snncc.api import compile_model  # noqa: E402
from snncc.fileio import write_json  # noqa: E402
from snncc.runtime import Simulator  # noqa: E402

RATE = "canonicalize,normalize,convert-rate"
#: name -> (model, pipeline, time steps or None for a temporal coding)
CONFIGS = {
    "lenet-rate": ("lenet5-mnist", RATE, 32),
    "lenet-rate-avgpool": ("lenet5-mnist", "canonicalize,normalize,convert-rate{maxpool=avg}", 16),
    "lenet-signed": ("lenet5-mnist", "canonicalize,normalize,convert-rate{signed=true}", 16),
    "lenet-fs8": ("lenet5-mnist", "canonicalize,normalize,convert-fs{steps=8}", None),
    "lenet-amos8": ("lenet5-mnist", "canonicalize,normalize,convert-amos{steps=8}", None),
    "vgg-rate": ("vgg-fmnist", RATE, 16),
    "vgg-signed": ("vgg-fmnist", "canonicalize,normalize,convert-rate{signed=true}", 8),
    "vgg-fs6": ("vgg-fmnist", "canonicalize,normalize,convert-fs{steps=6}", None),
    "vgg-fs8-q6": ("vgg-fmnist", "canonicalize,normalize,convert-fs{steps=8},quantize-neurons{bits=6}", None),
    "resnet-rate": ("resnet-fmnist", RATE, 16),
    "resnet-fs8": ("resnet-fmnist", "canonicalize,normalize,convert-fs{steps=8}", None),
    "resnet-sew-add": ("resnet-fmnist", RATE + ",sew{connect=add}", 16),
    "resnet-sew-and": ("resnet-fmnist", RATE + ",sew{connect=and}", 16),
    "resnet-sew-iand": ("resnet-fmnist", RATE + ",sew{connect=iand}", 16),
    "silu-fs12": ("silu-fmnist", "canonicalize,normalize,convert-fs{steps=12}", None),
    "silu-amos12": ("silu-fmnist", "canonicalize,normalize,convert-amos{steps=12}", None),
}


def fingerprint(name: str, data_root: Path, calib: int, limit: int, backend: str) -> dict:
    model_name, pipeline, steps = CONFIGS[name]
    model, scaling, calibration, x, y = load_model_data(model_name, data_root, calib, limit)
    graph = compile_model(model, calibration=calibration, pipeline=pipeline, input_scaling=scaling)
    result = Simulator(graph, steps, backend=backend).run(x)  # the recorded input scaling applies
    digest = hashlib.sha256()
    for output in result.all_outputs:
        digest.update(np.ascontiguousarray(output, dtype=np.float32).tobytes())
    for population in sorted(result.spikes):
        digest.update(population.encode())
        digest.update(np.ascontiguousarray(result.spikes[population], dtype=np.float64).tobytes())
    steps_run = result.outputs.shape[0]
    accuracy = float((result.outputs[-1].reshape(len(y), -1).argmax(axis=1) == y).mean())
    return {"sha256": digest.hexdigest(), "steps": steps_run, "accuracy": accuracy,
            "spikes_per_image": result.spikes_per_image(steps_run), "images": int(len(y))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path)
    mode.add_argument("--check", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--calib", type=int, default=500)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--backend", default="reference")
    from snncc.runtime import graded_convolution

    graded_convolution.DEFAULT_CONVOLUTION = "reference"  # the reference's sums (module docstring)
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    expected = json.loads(args.check.read_text()) if args.check else {}
    found, different = {}, []
    for name in names:
        found[name] = fingerprint(name, args.data, args.calib, args.limit, args.backend)
        status = ""
        if args.check:
            if name not in expected:
                status = "  (not in the reference file)"
            elif expected[name]["sha256"] != found[name]["sha256"]:
                different.append(name)
                status = f"  DIFFERENT (was accuracy {expected[name]['accuracy']:.4f}, " \
                         f"spikes/image {expected[name]['spikes_per_image']:.1f})"
            else:
                status = "  same"
        print(f"{name:20s} {found[name]['sha256'][:16]} acc {found[name]['accuracy']:.4f} "
              f"spikes/image {found[name]['spikes_per_image']:.1f}{status}", flush=True)
    if args.write:
        write_json(found, args.write, indent=1)
    if different:
        print(f"{len(different)} configuration(s) differ: {', '.join(different)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
