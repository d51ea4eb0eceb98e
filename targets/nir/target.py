"""The NIR target: ``snncc emit MODEL.snn --target nir -o DIR`` writes a bundle whose own files are the network in
NIR, once per reader that needs its own form (:mod:`snncc.targets.nir.flavors`).

NIR is a file format, not a chip: it has no cores, no fixed-point formats and no published energy. What it cannot
state is legalized first, by the pipeline :data:`PIPELINE` (:mod:`snncc.targets.nir.legalize`): the input padding
value moves into the input scaling and the bias (exact), every neuron resets to zero, every membrane starts at 0.
The bundle's "emulator" is therefore snncc's reference simulator on the legalized graph, which computes what the NIR
readers compute on these files (snnTorch 1.0.0 and Norse 1.1.0 gave the same class on 1,000 of 1,000 MNIST images,
docs/nir.md), so ``snncc verify`` reports the accuracy cost of the legalization against the float SNN.
"""

from __future__ import annotations

from pathlib import Path

from snncc.ir import Graph, ops
from snncc.ir.ops import SNN
from snncc.passes import run_pipeline
from snncc.targets.base import Constraints, PackageContext, Target, Violation, register_target
from snncc.targets.nir.export import DEFAULT_DT, check_nir, write_nir
from snncc.targets.nir.flavors import FLAVORS

#: The legalization of every NIR bundle (its passes register when this package is imported).
PIPELINE = "nir-input-padding,nir-reset,nir-initial-membrane{mode=drop}"
#: The file each flavor is written to, and who reads it.
FILES = {"spec": ("network.nir", "the network as the NIR specification states it (nir.IF neurons, nir.AvgPool2d, a "
                  "nir.I integrator readout)"),
         "snntorch": ("network.snntorch.nir", "the form snnTorch 1.0.0's import_from_nir reads (IF as a LIF of "
                      "decay 1, no integrator: average the last layer's current over time)"),
         "norse": ("network.norse.nir", "the form Norse 1.1.0's from_nir reads (sum pooling with its 1/k in the "
                   "next layer's weights, no integrator)")}

CONSTRAINTS = Constraints(
    weight_format="float32", state_format="float32", neurons_per_core=None, fan_in=None, fan_out=None,
    synaptic_memory_bits=None, cores_per_chip=None, chips=None, timestep_s=DEFAULT_DT,
    neuron_models=("IF", "LIF", "CubaLIF"), resets=("zero",), codings=("rate",),
    sources=("NIR: Pedersen et al., Nature Communications 15, 2024, and the nir package's node definitions",))


class NirTarget(Target):
    name = "nir"
    description = "NIR files (Neuromorphic Intermediate Representation) for snnTorch, Norse and other NIR readers"
    constraints = CONSTRAINTS
    pipeline = PIPELINE
    backend = "reference"

    def check(self, graph: Graph) -> list[Violation]:
        if graph.level != SNN:
            return [Violation("graph", "an snn-level graph", graph.level, "compile the model first (snncc compile)")]
        legal = run_pipeline(graph, PIPELINE)  # what the export will see: the passes fix what they can
        return check_nir(legal, "spec")

    def package(self, graph: Graph, directory: Path, context: PackageContext) -> list[str]:
        """One file per flavor the graph can be written in (the spec always; a reader's flavor unless the graph
        has what that reader cannot build, such as grouped convolutions)."""
        written = []
        for flavor, (name, _) in FILES.items():
            if flavor == "spec" or not check_nir(graph, FLAVORS[flavor]):
                write_nir(graph, directory / name, flavor)
                written.append(name)
        return written

    def io_spec(self, graph: Graph) -> dict:
        skipped = [f for f in FILES if f != "spec" and check_nir(graph, FLAVORS[f])]
        return {"input_encoding": "analog: the scaled image as the same input current at every time step "
                                  f"(dt = {DEFAULT_DT} s)",
                "latency_steps": 0,
                "timing": "run the NIR graph for the bundle's timesteps (each of dt); NIR's edges carry no delay, so "
                          "the answer is the readout's time average over those steps.",
                "readout": "the time average of the last layer's current (nir.I in network.nir); the class is its "
                           "argmax",
                "files": {name: text for f, (name, text) in FILES.items() if f not in skipped},
                "details": {"reset": "to zero", "initial_membrane": 0.0, "threshold_comparison":
                            "snncc spikes at v >= threshold, NIR's equations at v > threshold",
                            "flavors_not_written": skipped}}

    def resources(self, graph: Graph) -> dict:
        types = graph.types()
        neurons = sum(types[n].size for n in graph.find(ops.Population))
        return {"cores": None, "chips": None, "neurons": int(neurons),
                "note": "NIR is a file format: the reader decides where the neurons run"}


register_target(NirTarget())

__all__ = ["CONSTRAINTS", "FILES", "NirTarget", "PIPELINE"]
