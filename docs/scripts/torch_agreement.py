"""The torch backend against the reference simulators on every shipped model and coding (issue 14, acceptance 1).

Every configuration is compiled from its shipped model (calibration on the first ``--calib`` training images) and
simulated on the first ``--limit`` test images (default: all 10,000) by the reference (``ReferenceSimulator`` for
rate coding, ``TemporalSimulator`` for FS/AMOS) and by the torch lowering (``TorchSimulator``). Per configuration
it records (the SiLU model has no rate coding: convert-rate refuses SiLU, an IF neuron's rate is a rectified
linear function of its input, so it is compared in its FS and AMOS codings):

- ``spikes``: the reference's spikes, counted per neuron, step and image (a negative spike of a signed neuron
  counts one);
- ``flips``: the (neuron, step, image) triples where the two differ. Both engines record what every population
  emits (the scripts wrap the population updates; the engines have no tracing code). torch's convolutions and
  matrix products sum in their own order, so a spike may flip where a membrane lies within float rounding of a
  threshold; the tests (tests/runtime/test_torch_agreement.py) check that the first flip of each batch is such a
  case;
- ``max_output_difference``: the largest absolute difference of the readouts over every step and image (a flipped
  spike moves a rate readout by its weight / T), and ``max_output_difference_without_flips`` over the images
  without a flipped spike, where only the summation order differs; ``images_with_flips`` counts the others;
- ``class_agreement``: the fraction of images whose predicted class (after the last step) is the same, and both
  accuracies.

    python docs/scripts/torch_agreement.py                      # all configurations, 10,000 images each
    python docs/scripts/torch_agreement.py --limit 1000 --only vgg-rate,silu-fs8 --update
    python docs/scripts/torch_agreement.py --against cython --update   # the full sets, against the Cython runtime

The reference is too slow for the full test sets of the larger models on a 2-core machine (hours per
configuration), so ``--against cython`` compares the torch backend with the Cython runtime instead, which
tests/runtime and docs/scripts/fingerprint.py hold spike for spike to the reference. The Cython engine reports
spikes per population, step and image (not per neuron), so that table counts ``count_differences``: the summed
absolute differences of those counts, a lower bound of the flips (two flips in one population and step can cancel),
with the images where a count or a readout differs (by more than 1e-5) as ``images_differing``.

writes docs/results/torch-agreement.json (``--out``) and the table docs/torch-agreement.md (``--markdown``). Wall times are of a shared machine and only indicative.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shipped import REPO, load_model_data  # noqa: E402

from snncc.api import compile_model  # noqa: E402
from snncc.fileio import write_json, write_text  # noqa: E402
from snncc.ir import Graph, ops  # noqa: E402
from snncc.runtime import reference, temporal, torch_lowering  # noqa: E402
from snncc.runtime.reference import BatchResult, ReferenceSimulator  # noqa: E402
from snncc.runtime.temporal import TemporalSimulator, is_temporal  # noqa: E402
from snncc.runtime.torch_lowering import TorchSimulator  # noqa: E402

RATE = "canonicalize,normalize,convert-rate"
#: name -> (model, pipeline, time steps or None for a temporal coding)
CONFIGS = {
    "lenet-rate": ("lenet5-mnist", RATE, 32),
    "lenet-signed": ("lenet5-mnist", RATE + "{signed=true}", 16),
    "lenet-fs8": ("lenet5-mnist", "canonicalize,normalize,convert-fs{steps=8}", None),
    "lenet-amos8": ("lenet5-mnist", "canonicalize,normalize,convert-amos{steps=8}", None),
    "vgg-rate": ("vgg-fmnist", RATE, 16),
    "resnet-rate": ("resnet-fmnist", RATE, 16),
    "resnet-sew-add": ("resnet-fmnist", RATE + ",sew{connect=add}", 16),
    "resnet-sew-iand": ("resnet-fmnist", RATE + ",sew{connect=iand}", 16),
    "silu-fs8": ("silu-fmnist", "canonicalize,normalize,convert-fs{steps=8}", None),
    "silu-amos8": ("silu-fmnist", "canonicalize,normalize,convert-amos{steps=8}", None),
}


@contextmanager
def _wrapped(owner: object, name: str, record) -> Iterator[None]:
    """Replace ``owner.name`` by a function that calls the original and passes (self, result, args) to
    ``record``; restored on exit."""
    original = getattr(owner, name)

    def wrapper(self, *args):
        result = original(self, *args)
        record(self, result, args)
        return result

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


class Traces:
    """What every population emitted in one batch, per population in topological order (the order in which the
    engines first step them): spikes (T or K, B, n) int8, and for the reference's IF/LIF populations the membrane
    before the reset and the threshold."""

    def __init__(self) -> None:
        self._order: list[int] = []
        self._owners: list[object] = []
        self.spikes: dict[int, list[np.ndarray]] = {}
        self.membranes: dict[int, list[np.ndarray]] = {}
        self.thresholds: dict[int, np.ndarray] = {}

    def add(self, owner: object, spikes: np.ndarray, membrane: np.ndarray | None = None, threshold=None) -> None:
        """Record what ``owner`` (a population's state or module, or None for a new population) emitted."""
        key = len(self._order) if owner is None else id(owner)
        if owner is not None:
            self._owners.append(owner)  # kept alive, so that its id names it for the whole batch
        if key not in self.spikes:
            self._order.append(key)
            self.spikes[key], self.membranes[key] = [], []
            self.thresholds[key] = threshold
        self.spikes[key].append(spikes.reshape(spikes.shape[0], spikes.shape[1], -1).astype(np.int8))
        if membrane is not None:
            self.membranes[key].append(membrane.reshape(membrane.shape[0], membrane.shape[1], -1))

    def by_population(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: np.concatenate(self.spikes[k]) for n, k in zip(names, self._order)}

    def membranes_by_population(self, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {n: (np.concatenate(self.membranes[k]), self.thresholds[k]) for n, k in zip(names, self._order)
                if self.membranes[k]}


@contextmanager
def _record_reference_rate(traces: Traces, membranes: bool) -> Iterator[None]:
    original = reference._PopulationState.step

    def step(self, current):
        v = None
        if membranes and hasattr(self.params, "decay"):
            v = self.state.v * self.params.decay if self.params.decay is not None else self.state.v.copy()
            v = (v + current)[None]
        spikes = original(self, current)
        traces.add(self, spikes[None], v, getattr(self.params, "threshold", None))
        return spikes

    reference._PopulationState.step = step
    try:
        yield
    finally:
        reference._PopulationState.step = original


@contextmanager
def _record_reference_temporal(traces: Traces) -> Iterator[None]:
    original = temporal.run_window

    def run_window(neuron, x):
        value, spikes = original(neuron, x)
        traces.add(None, spikes)  # one window per population and batch, in topological order
        return value, spikes

    temporal.run_window = run_window
    try:
        yield
    finally:
        temporal.run_window = original


@contextmanager
def _record_torch(traces: Traces) -> Iterator[None]:
    def record_steps(module, result, args):
        traces.add(module, result[0].detach().cpu().numpy())

    def record_window(module, window, args):
        import torch

        traces.add(module, torch.stack(window.spikes).detach().cpu().numpy())

    with _wrapped(torch_lowering._Population, "run", record_steps), \
            _wrapped(torch_lowering._WindowPopulation, "forward", record_window):
        yield


def run_traced(graph: Graph, x: np.ndarray, steps: int | None, membranes: bool = False
               ) -> tuple[BatchResult, BatchResult, dict, dict, dict]:
    """One batch ``x`` (model inputs, scaled) through the reference and the torch backend: both results, the spikes
    of every population per neuron for each, and (``membranes``) the reference's membranes before reset with the
    thresholds of its IF/LIF populations."""
    names = [n for n in graph.topological_order() if isinstance(graph.op(n), ops.Population)]
    ref_traces, torch_traces = Traces(), Traces()
    if is_temporal(graph):
        with _record_reference_temporal(ref_traces):
            ref = TemporalSimulator(graph, steps).run_batch(x)
    else:
        with _record_reference_rate(ref_traces, membranes):
            ref = ReferenceSimulator(graph, steps).run_batch(x)
    with _record_torch(torch_traces):
        low = TorchSimulator(graph, steps).run_batch(x)
    return (ref, low, ref_traces.by_population(names), torch_traces.by_population(names),
            ref_traces.membranes_by_population(names))


def compare(graph: Graph, x: np.ndarray, y: np.ndarray, steps: int | None, batch_size: int = 100) -> dict:
    """The agreement figures of one configuration on model inputs ``x`` (scaled) with labels ``y``."""
    spikes = flips = 0
    difference = difference_unflipped = 0.0
    images_with_flips = 0
    same_class = correct_ref = correct_torch = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        ref, low, ref_spikes, torch_spikes, _ = run_traced(graph, xb, steps)
        spikes += sum(int(np.abs(s).sum()) for s in ref_spikes.values())
        flipped = np.zeros(len(xb), dtype=bool)  # images with a flipped spike anywhere
        for n in ref_spikes:
            differs = ref_spikes[n] != torch_spikes[n]
            flips += int(differs.sum())
            flipped |= differs.any(axis=(0, 2))
        per_image = np.abs(ref.outputs[0].astype(np.float64) - low.outputs[0]).reshape(
            ref.outputs[0].shape[0], len(xb), -1).max(axis=(0, 2))
        difference = max(difference, float(per_image.max()))
        if (~flipped).any():
            difference_unflipped = max(difference_unflipped, float(per_image[~flipped].max()))
        images_with_flips += int(flipped.sum())
        classes = [o[-1].reshape(len(xb), -1).argmax(axis=1) for o in (ref.outputs[0], low.outputs[0])]
        same_class += int((classes[0] == classes[1]).sum())
        correct_ref += int((classes[0] == yb).sum())
        correct_torch += int((classes[1] == yb).sum())
    n = len(x)
    return {"images": n, "spikes": spikes, "flips": flips, "flip_rate": flips / max(spikes, 1),
            "images_with_flips": images_with_flips, "max_output_difference": difference,
            "max_output_difference_without_flips": difference_unflipped, "class_agreement": same_class / n,
            "accuracy_reference": correct_ref / n, "accuracy_torch": correct_torch / n}


def compare_with_cython(graph: Graph, x: np.ndarray, y: np.ndarray, steps: int | None,
                        batch_size: int = 100) -> dict:
    """The torch backend against the Cython runtime: per-population spike counts per step and image, readouts at
    every step, classes (see the module docstring)."""
    from snncc.runtime import Simulator

    cython = Simulator(graph, steps, backend="cython", batch_size=batch_size)
    torch_backend = Simulator(graph, steps, backend="torch", batch_size=batch_size)
    spikes = count_differences = images_differing = 0
    difference = 0.0
    same_class = correct_cython = correct_torch = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        a = cython.run(xb, apply_scaling=False)
        b = torch_backend.run(xb, apply_scaling=False)
        differs = np.zeros(len(xb), dtype=bool)
        for n, counts in a.spikes.items():
            spikes += int(np.abs(counts).sum())
            delta = np.abs(counts.astype(np.int64) - b.spikes[n].astype(np.int64))
            count_differences += int(delta.sum())
            differs |= delta.any(axis=0)
        per_image = np.abs(a.outputs.astype(np.float64) - b.outputs).reshape(
            a.outputs.shape[0], len(xb), -1).max(axis=(0, 2))
        difference = max(difference, float(per_image.max()))
        differs |= per_image > 1e-5
        images_differing += int(differs.sum())
        classes = [o[-1].reshape(len(xb), -1).argmax(axis=1) for o in (a.outputs, b.outputs)]
        same_class += int((classes[0] == classes[1]).sum())
        correct_cython += int((classes[0] == yb).sum())
        correct_torch += int((classes[1] == yb).sum())
    n = len(x)
    return {"images": n, "spikes": spikes, "count_differences": count_differences,
            "count_difference_rate": count_differences / max(spikes, 1), "images_differing": images_differing,
            "max_output_difference": difference, "class_agreement": same_class / n,
            "accuracy_cython": correct_cython / n, "accuracy_torch": correct_torch / n}


def compiled(name: str, data_root: Path, calib: int, limit: int | None):
    """The compiled graph of configuration ``name``, its scaled test inputs, labels and time steps."""
    model_name, pipeline, steps = CONFIGS[name]
    model, scaling, calibration, x, y = load_model_data(model_name, data_root, calib, limit)
    graph = compile_model(model, calibration=calibration, pipeline=pipeline, input_scaling=scaling)
    return graph, scaling.apply(x), y, steps


def markdown(results: dict, against_cython: dict | None = None) -> str:
    """docs/torch-agreement.md: the table of ``results`` (configurations of the JSON file) and, where measured,
    that of ``against_cython``."""
    lines = ["# The torch backend against the reference simulators", "",
             "Written by `python docs/scripts/torch_agreement.py` (see its docstring) from "
             "docs/results/torch-agreement.json. Per configuration: the shipped model compiled with the pipeline "
             "(calibration on the first training images), simulated on the first test images by the reference "
             "(`ReferenceSimulator` for rate coding, `TemporalSimulator` for FS/AMOS) and by the torch backend "
             "(CPU, float32). Spikes are compared per neuron, step and image; a flip is a (neuron, step, image) "
             "where they differ. A flipped spike moves a rate readout by its weight / T, so the output difference "
             "is given over all images and over the images without a flip, where only the summation order of "
             "torch's convolutions and products differs. The SiLU model has no rate coding (convert-rate refuses "
             "SiLU). The script's default is all 10,000 test images; a table may hold fewer for some configurations "
             "(`--limit`, as many as the time allowed; the images column says how many). Wall times are of a "
             "2-core machine shared with other work (load about 20 when these were measured), only indicative.", "",
             "| configuration | pipeline | T | images | spikes | flips (images) | flip rate | max output difference "
             "(without flips) | classes equal | accuracy reference / torch | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | `{r['pipeline']}` | {r['timesteps']} | {r['images']:,} | {r['spikes']:,} | "
                     f"{r['flips']} ({r['images_with_flips']}) | {r['flip_rate']:.1e} | "
                     f"{r['max_output_difference']:.2e} ({r['max_output_difference_without_flips']:.2e}) | "
                     f"{r['class_agreement']:.2%} | {r['accuracy_reference']:.2%} / {r['accuracy_torch']:.2%} | "
                     f"{r['seconds_shared_machine']:.0f} |")
    if against_cython:
        lines += ["", "## The full test sets, against the Cython runtime", "",
                  "`--against cython`: the torch backend against the Cython runtime (which the runtime's tests and "
                  "docs/scripts/fingerprint.py hold spike for spike to the reference) on every test image. The "
                  "Cython engine reports spikes per population, step and image, so the table counts the summed "
                  "absolute differences of those counts (a lower bound of the flips) and the images where a count "
                  "or a readout (by more than 1e-5) differs. Configurations missing here have not been run this way yet "
                  "(machine time); the table above has them on fewer images against the reference.", "",
                  "| configuration | pipeline | T | images | spikes | count differences (rate) | images differing "
                  "| max output difference | classes equal | accuracy Cython / torch | seconds |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in against_cython.items():
            lines.append(f"| {name} | `{r['pipeline']}` | {r['timesteps']} | {r['images']:,} | {r['spikes']:,} | "
                         f"{r['count_differences']} ({r['count_difference_rate']:.1e}) | {r['images_differing']} | "
                         f"{r['max_output_difference']:.2e} | {r['class_agreement']:.2%} | "
                         f"{r['accuracy_cython']:.2%} / {r['accuracy_torch']:.2%} | "
                         f"{r['seconds_shared_machine']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--calib", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None, help="test images per configuration (default: all)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "torch-agreement.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "torch-agreement.md")
    parser.add_argument("--update", action="store_true",
                        help="keep the configurations already in --out that this run does not compute")
    parser.add_argument("--against", choices=("reference", "cython"), default="reference",
                        help="compare with the reference simulators (per neuron) or with the Cython runtime "
                             "(per population; fast enough for the full test sets)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    results, against_cython = {}, {}
    if args.update and args.out.is_file():
        previous = json.loads(args.out.read_text())
        if previous.get("schema_version") != 1:
            raise SystemExit(f"{args.out}: not a torch-agreement file of schema version 1")
        results = previous["configurations"]
        against_cython = previous.get("against_cython", {})
    table = results if args.against == "reference" else against_cython
    for name in names:
        start = time.perf_counter()
        graph, x, y, steps = compiled(name, args.data, args.calib, args.limit)
        measure = compare if args.against == "reference" else compare_with_cython
        table[name] = {"model": CONFIGS[name][0], "pipeline": CONFIGS[name][1],
                       "timesteps": steps if steps is not None else TemporalSimulator(graph).latency,
                       **measure(graph, x, y, steps, args.batch_size)}
        table[name]["seconds_shared_machine"] = time.perf_counter() - start
        table[name]["calibration_images"] = args.calib
        print(name, json.dumps({k: v for k, v in table[name].items() if k not in ("model", "pipeline")}), flush=True)
        write_json({"schema_version": 1, "configurations": results,
                    **({"against_cython": against_cython} if against_cython else {})}, args.out, indent=1)
    write_text(args.markdown, markdown(results, against_cython))
    print(f"wrote {args.out} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
