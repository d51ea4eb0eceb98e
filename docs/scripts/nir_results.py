"""NIR export and import, measured: docs/results/nir-MODEL.json and docs/results/nir-snntorch-import.json.

1. An average-pooling model (``--model``: LeNet-5 on MNIST, the default, or the VGG on Fashion-MNIST), compiled with the default rate pipeline, is
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
    python docs/scripts/nir_results.py --importers    # what snnTorch's and Norse's importers read (1 minute)
    python docs/scripts/nir_results.py --markdown     # the tables of docs/nir.md from the JSON reports
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
#: The average-pooling models NIR can state, with their data sets.
MODELS = {"lenet5-avg-mnist": "mnist", "vgg-avg-fmnist": "fashion-mnist"}
DATA = Path("/work/shared/data")
TIMESTEPS = (8, 16, 32, 64)


def _apply(graph, passes):
    for p in passes:
        graph, _ = p.apply(graph)
    return graph


def _accuracy_per_t(graph, x, y, timesteps=None) -> dict[str, float]:
    timesteps = timesteps or TIMESTEPS
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
            if part == "ablations" and n >= len(y) and name in out["test_set"]:
                out[part][name] = out["test_set"][name]  # the same images: measured once
                continue
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


def peer_agreement(legal, x, timesteps: int, round_trip_images: int) -> dict:
    reference = Simulator(legal, timesteps).run(x).outputs
    scaled = InputScaling.from_json(legal.attrs["input_scaling"]).apply(x)
    results = {}
    import nir

    with tempfile.TemporaryDirectory() as tmp:
        for flavor, run in PEERS.items():
            path = write_nir(legal, Path(tmp) / f"lenet5-avg-{flavor}.nir", flavor=flavor)
            start = time.time()
            outputs = run(nir.read(path), scaled, timesteps)
            back = Simulator(import_nir(path), timesteps).run(x[:round_trip_images]).outputs
            results[flavor] = {
                "prediction_agreement": {str(t): float((outputs[t - 1].argmax(1) == reference[t - 1].argmax(1)).mean())
                                         for t in TIMESTEPS if t <= timesteps},
                "max_output_difference": float(np.abs(outputs - reference).max()),
                "images_with_an_output_difference_above_1e-4": int((np.abs(outputs - reference).max(axis=(0, 2))
                                                                    > 1e-4).sum()),
                "round_trip_images": len(back[0]),
                "round_trip_max_output_difference": float(np.abs(back - reference[:, :len(back[0])]).max()),
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


def importer_behaviour(timesteps: int = 24) -> dict:
    """What snnTorch's and Norse's importers make of each NIR construct: a small CNN of the LeNet-5 layer kinds
    (tests/targets/nir_graphs.py, IF neurons, reset to zero) is exported with one thing changed from the flavor
    that works for that reader, then run by the reader; the outcome is an error or the difference from snncc."""
    import dataclasses
    import sys

    import nir

    from snncc.targets.nir.export import export_nir
    from snncc.targets.nir.flavors import FLAVORS

    sys.path.insert(0, str(ROOT))
    from tests.targets.nir_graphs import small_cnn, small_inputs

    x = small_inputs(32)

    def outcome(run, graph, reference) -> str:
        try:
            outputs = run(graph, x, timesteps)
        except Exception as exc:  # what the reader raises is the finding
            return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        if outputs.shape != reference.shape:
            return f"runs, but the output has shape {outputs.shape[1:]} instead of {reference.shape[1:]}"
        agreement = float((outputs[-1].argmax(1) == reference[-1].argmax(1)).mean())
        return f"runs: max. output difference {float(np.abs(outputs - reference).max()):.3g}, " \
               f"prediction agreement {100 * agreement:.0f} %"

    def flatten_from(start: int):
        def change(graph):
            graph.nodes["flatten"].start_dim = start
            return graph
        return change

    results = {}
    for reader, run in PEERS.items():
        base = FLAVORS[reader]
        cases = {f"the {reader} flavor": (base, None, small_cnn()),
                 "nir.IF neurons": (dataclasses.replace(base, if_as_lif=False), None, small_cnn()),
                 "IF neurons as nir.LIF (tau = 1e10 dt)": (dataclasses.replace(base, if_as_lif=True), None,
                                                           small_cnn()),
                 "nir.AvgPool2d": (dataclasses.replace(base, sum_pool=False), None, small_cnn()),
                 "nir.SumPool2d, 1/k in the next weights": (dataclasses.replace(base, sum_pool=True), None,
                                                            small_cnn()),
                 "a nir.I readout": (dataclasses.replace(base, integrator_readout=True), None, small_cnn()),
                 "a grouped convolution (groups=2)": (dataclasses.replace(base, grouped_conv=True), None,
                                                      small_cnn(groups=2)),
                 "nir.Flatten start_dim=0": (base, flatten_from(0), small_cnn()),
                 "nir.Flatten start_dim=1": (base, flatten_from(1), small_cnn())}
        results[reader] = {}
        for name, (flavor, change, graph) in cases.items():
            reference = Simulator(graph, timesteps, backend="reference").run(x).outputs
            exported = export_nir(graph, flavor)
            exported = change(exported) if change else exported
            results[reader][name] = outcome(run, exported, reference)
            print(reader, name, results[reader][name], flush=True)
    return results


def markdown(report: dict, imported: dict) -> str:
    """The tables of docs/nir.md ("Measured") from the two reports."""
    lines = []
    for part, title in (("test_set", "the test set"), ("ablations", "the first images of the test set")):
        costs = report["legalization_costs"][part]
        ts = sorted({t for v in costs.values() if isinstance(v, dict) for t in v["accuracy"]}, key=int)
        lines += [f"Accuracy, {costs['images']:,} images ({title}):", "",
                  "| SNN | " + " | ".join(f"T={t}" for t in ts) + " |", "|---|" + "---:|" * len(ts)]
        for name, value in costs.items():
            if name == "images":
                continue
            cells = [f"{100 * value['accuracy'][t]:.2f} %" if t in value["accuracy"] else "" for t in ts]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    agreement = report["peer_agreement"]
    ts = sorted(next(iter(agreement["flavors"].values()))["prediction_agreement"], key=int)
    lines += [f"Prediction agreement with snncc's NIR-legal SNN, {agreement['images']:,} test images:", "",
              "| reader (flavor) | " + " | ".join(f"T={t}" for t in ts) + " | max. output difference | images with "
              "a difference > 1e-4 | round trip through snncc's import |", "|---|" + "---:|" * (len(ts) + 3)]
    for flavor, value in agreement["flavors"].items():
        cells = [f"{100 * value['prediction_agreement'][t]:.1f} %" for t in ts]
        lines.append(f"| {flavor} | " + " | ".join(cells) + f" | {value['max_output_difference']:.2g} | "
                     f"{value['images_with_an_output_difference_above_1e-4']} | "
                     f"{value['round_trip_max_output_difference']:.2g} |")
    lines += ["", f"snnTorch-written SNN ({imported['network']}), {imported['inputs']} inputs, "
              f"{imported['timesteps']} steps, {imported['output_spikes']:,} output spikes: max. difference of "
              f"snncc's output from snnTorch's spike rates {imported['max_output_difference']:.2g}, "
              f"{imported['steps_with_a_different_spike_count']} steps with a different spike count."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5-avg-mnist", choices=sorted(MODELS))
    parser.add_argument("--limit", type=int, default=10000, help="test images for the legalization costs")
    parser.add_argument("--agreement-images", type=int, default=1000)
    parser.add_argument("--ablation-images", type=int, default=2000, help="test images for each legalization alone")
    parser.add_argument("--bias-at", type=int, default=32, help="T of the v_init-as-bias variant")
    parser.add_argument("--timesteps", default="8,16,32,64", help="the T at which accuracy and agreement are read")
    parser.add_argument("--round-trip-images", type=int, default=100,
                        help="images run through export, nir.read and snncc's import again")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--importers", action="store_true", help="only what each importer reads: nir-importers.json")
    parser.add_argument("--markdown", action="store_true", help="only print the tables of the reports in --out")
    args = parser.parse_args()
    global TIMESTEPS
    TIMESTEPS = tuple(int(t) for t in args.timesteps.split(","))
    if args.importers:
        report = {"timesteps": 24, "behaviour": importer_behaviour()}
        (args.out / "nir-importers.json").write_text(json.dumps(report, indent=1) + "\n")
        for reader, cases in report["behaviour"].items():
            print(f"\n{reader}:\n" + "\n".join(f"- {name}: {result}" for name, result in cases.items()))
        return
    if args.markdown:
        print(markdown(*(json.loads((args.out / name).read_text())
                         for name in (f"nir-{args.model}.json", "nir-snntorch-import.json"))))
        return
    import nir
    import norse
    import snntorch
    import torch

    model = ROOT / "models" / f"{args.model}.onnx"
    train = load_dataset(DATA / MODELS[args.model], split="train", limit=2000)
    test = load_dataset(DATA / MODELS[args.model], split="test", limit=args.limit)
    snn = compile_model(model, calibration=train[0])
    legal = _apply(snn, legalize_for_nir())
    environment = {"snncc": __version__, "nir": nir.version, "snntorch": snntorch.__version__,
                   "norse": getattr(norse, "__version__", "1.1.0"), "torch": torch.__version__,
                   "python": platform.python_version(),
                   "machine": "2 CPU cores shared with five other jobs: the seconds are indicative only"}
    report = {"model": model.name, "pipeline": snn.attrs["pipeline"], "calibration_images": 2000,
              "test_images": len(test[1]), "environment": environment,
              "legalization_costs": legalization_costs(snn, test[0], test[1], args.ablation_images,
                                                       args.bias_at),
              "peer_agreement": {"images": args.agreement_images, "timesteps": max(TIMESTEPS),
                                 "flavors": peer_agreement(legal, test[0][:args.agreement_images], max(TIMESTEPS),
                                                           args.round_trip_images)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"nir-{args.model}.json").write_text(json.dumps(report, indent=1) + "\n")
    imported = {"environment": environment, **snntorch_import()}
    print(imported)
    (args.out / "nir-snntorch-import.json").write_text(json.dumps(imported, indent=1) + "\n")
    print(f"wrote {args.out / f'nir-{args.model}.json'} and {args.out / 'nir-snntorch-import.json'}")
    print(markdown(report, imported))


if __name__ == "__main__":
    main()
