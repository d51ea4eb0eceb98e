"""NIR export and import, measured: docs/results/nir-lenet5-avg.json and docs/results/nir-snntorch-import.json.

1. The average-pooling LeNet-5 (models/lenet5-avg-mnist.onnx), compiled with the default rate pipeline, is
   legalized for NIR (snncc.targets.nir.legalize_for_nir) and its accuracy measured on the MNIST test set against
   the unlegalized SNN on the full test set; each legalization alone (reset to zero; v_init = 0) and the initial
   membrane folded into a bias instead of dropped (mode=bias, at T) on the first ``--ablation-images``.
2. The legalized SNN is written to NIR in the snntorch and norse flavors, loaded with each package's own importer
   and run on ``--agreement-images`` test images: the fraction of images whose predicted class equals snncc's at
   each T, and the largest difference of the running-mean outputs.
3. A small SNN built in snnTorch (two Linear + Leaky layers, reset to zero) is written to NIR by snnTorch, imported
   by snncc and run on the same constant input: the largest difference from snnTorch's own output spike rates.

Run from the repository root (CPU; about 45 minutes on 2 cores shared with five other jobs for the full test set):
    python docs/scripts/nir_results.py [--limit 10000] [--agreement-images 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from snncc import __version__
from snncc.api import compile_model
from snncc.data import InputScaling, load_dataset
from snncc.frontend.nir import import_nir
from snncc.runtime import Simulator
from snncc.targets.nir import legalize_for_nir, write_nir
from snncc.targets.nir.legalize import NirInitialMembrane, NirInputPadding, NirReset
from snncc.targets.nir.peers import PEERS

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "lenet5-avg-mnist.onnx"
DATA = Path("/work/shared/data/mnist")
TIMESTEPS = (8, 16, 32, 64)


def _apply(graph, passes):
    for p in passes:
        graph, _ = p.apply(graph)
    return graph


def _accuracy_per_t(graph, x, y, timesteps=TIMESTEPS) -> dict[str, float]:
    result = Simulator(graph, max(timesteps)).run(x)
    return {str(t): float(result.accuracy(y, t)) for t in timesteps}


def legalization_costs(snn, x, y, ablation_images: int, bias_at: int) -> dict:
    """Accuracy of the unlegalized and the NIR-legal SNN on all of ``x``; of each legalization alone and of the
    bias variant on the first ``ablation_images``."""
    full = {
        "unlegalized (v_init=0.5, reset by subtraction)": [],
        "NIR-legal: reset to zero, v_init=0 (legalize_for_nir())": legalize_for_nir(),
    }
    ablations = {
        "unlegalized (v_init=0.5, reset by subtraction)": [],
        "reset to zero only": [NirInputPadding(), NirReset()],
        "v_init=0 only": [NirInputPadding(), NirInitialMembrane()],
        "NIR-legal: reset to zero, v_init=0 (legalize_for_nir())": legalize_for_nir(),
    }
    out = {"test_set": {"images": len(y)}, "ablations": {"images": min(ablation_images, len(y))}}
    for part, variants, n in (("test_set", full, len(y)), ("ablations", ablations, ablation_images)):
        for name, passes in variants.items():
            start = time.time()
            out[part][name] = {"accuracy": _accuracy_per_t(_apply(snn, passes), x[:n], y[:n]),
                               "seconds": round(time.time() - start)}
            print(part, name, out[part][name], flush=True)
    name = f"NIR-legal, v_init folded into a bias for T={bias_at} (legalize_for_nir('bias', {bias_at}))"
    legal = _apply(snn, legalize_for_nir("bias", bias_at))
    n = ablation_images
    out["ablations"][name] = {"accuracy": {str(bias_at): float(Simulator(legal, bias_at).run(x[:n]).accuracy(
        y[:n], bias_at))}}
    print(name, out["ablations"][name], flush=True)
    return out


def peer_agreement(legal, x, timesteps: int) -> dict:
    reference = Simulator(legal, timesteps).run(x).outputs
    scaled = InputScaling.from_json(legal.attrs["input_scaling"]).apply(x)
    results = {}
    import nir

    with tempfile.TemporaryDirectory() as tmp:
        for flavor, run in PEERS.items():
            path = write_nir(legal, Path(tmp) / f"lenet5-avg-{flavor}.nir", flavor=flavor)
            start = time.time()
            outputs = run(nir.read(path), scaled, timesteps)
            back = Simulator(import_nir(path), timesteps).run(x).outputs
            results[flavor] = {
                "prediction_agreement": {str(t): float((outputs[t - 1].argmax(1) == reference[t - 1].argmax(1)).mean())
                                         for t in TIMESTEPS if t <= timesteps},
                "max_output_difference": float(np.abs(outputs - reference).max()),
                "images_with_an_output_difference_above_1e-4": int((np.abs(outputs - reference).max(axis=(0, 2))
                                                                    > 1e-4).sum()),
                "round_trip_max_output_difference": float(np.abs(back - reference).max()),
                "file_bytes": path.stat().st_size,
                "seconds": round(time.time() - start),
            }
            print(flavor, results[flavor], flush=True)
    return results


def snntorch_import(timesteps: int = 40) -> dict:
    import nir
    import snntorch as snn
    import torch
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)

    def leaky(n, beta, threshold, **kw):  # vector parameters: snnTorch's export needs them to type the graph
        return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), threshold), init_hidden=True,
                         reset_mechanism="zero", reset_delay=False, **kw)

    net = torch.nn.Sequential(torch.nn.Linear(20, 32), leaky(32, 0.8, 0.5), torch.nn.Linear(32, 5),
                              leaky(5, 0.9, 0.3, output=True))
    x = torch.rand(256, 20) * 2
    utils.reset(net)
    with torch.no_grad():
        spikes = torch.stack([net(x)[0] for _ in range(timesteps)]).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snntorch.nir"
        nir.write(path, export_to_nir(net, torch.randn(20)))
        graph = import_nir(path)
    rates = np.cumsum(spikes, axis=0) / np.arange(1, timesteps + 1)[:, None, None]
    outputs = Simulator(graph, timesteps).run(x.numpy()).outputs
    return {"network": "Linear(20,32), Leaky(beta 0.8, threshold 0.5), Linear(32,5), Leaky(beta 0.9, threshold 0.3); "
                       "reset to zero, reset_delay=False", "inputs": 256, "timesteps": timesteps,
            "output_spikes": int(spikes.sum()), "max_output_difference": float(np.abs(outputs - rates).max()),
            "steps_with_a_different_spike_count": int((np.abs(outputs - rates) * np.arange(1, timesteps + 1)[
                :, None, None] > 0.5).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10000, help="test images for the legalization costs")
    parser.add_argument("--agreement-images", type=int, default=1000)
    parser.add_argument("--ablation-images", type=int, default=2000, help="test images for each legalization alone")
    parser.add_argument("--bias-at", type=int, default=32, help="T of the v_init-as-bias variant")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args()
    import nir
    import norse
    import snntorch
    import torch

    train = load_dataset(DATA, split="train", limit=2000)
    test = load_dataset(DATA, split="test", limit=args.limit)
    snn = compile_model(MODEL, calibration=train[0])
    legal = _apply(snn, legalize_for_nir())
    environment = {"snncc": __version__, "nir": nir.version, "snntorch": snntorch.__version__,
                   "norse": getattr(norse, "__version__", "1.1.0"), "torch": torch.__version__,
                   "python": platform.python_version(),
                   "machine": "2 CPU cores shared with five other jobs: the seconds are indicative only"}
    report = {"model": MODEL.name, "pipeline": snn.attrs["pipeline"], "calibration_images": 2000,
              "test_images": len(test[1]), "environment": environment,
              "legalization_costs": legalization_costs(snn, test[0], test[1], args.ablation_images,
                                                       args.bias_at),
              "peer_agreement": {"images": args.agreement_images, "timesteps": max(TIMESTEPS),
                                 "flavors": peer_agreement(legal, test[0][:args.agreement_images], max(TIMESTEPS))}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nir-lenet5-avg.json").write_text(json.dumps(report, indent=1) + "\n")
    imported = {"environment": environment, **snntorch_import()}
    print(imported)
    (args.out / "nir-snntorch-import.json").write_text(json.dumps(imported, indent=1) + "\n")
    print(f"wrote {args.out / 'nir-lenet5-avg.json'} and {args.out / 'nir-snntorch-import.json'}")


if __name__ == "__main__":
    main()
