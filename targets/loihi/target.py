"""The Loihi 1 and Loihi 2 targets: constraints, the check, the legalization pipeline and the bundle.

Limits, with their sources:

- Loihi 1 (Davies et al., "Loihi: a neuromorphic manycore processor with on-chip learning", IEEE Micro 38(1),
  2018): 128 neuromorphic cores per chip, 1,024 compartments per core, 4,096 input and 4,096 output axons per
  core, 128 KB of synaptic memory per core (16 MB per chip), weights of up to 8 bits (mixed sign mode: 8 bits with
  the sign), 24-bit current and voltage, 12-bit decays, reset to zero, binary spikes. Energy: 23.6 pJ per
  synaptic spike operation (the paper's table of energy per operation).
- Loihi 2 (Intel, "Taking neuromorphic computing to the next level with Loihi 2", technology brief, 2021;
  Orchard et al., "Efficient neuromorphic signal processing with Loihi 2", IEEE SiPS 2021): 128 cores per chip,
  up to 1 million neurons (8,192 per core) and 120 million synapses per chip (here 937,500 8-bit synapses per
  core, the chip's total over its cores), programmable neurons (the reset by subtraction runs as microcode) and
  graded spikes with an integer payload (the input's pixels). The brief publishes no energy per synaptic
  operation; the manifest gives Loihi 1's figure as an upper estimate and says so.

Multi-chip systems: ``loihi1{chips=N}`` (``loihi2{chips=N}``) is the same chip in a system of ``N`` (Kapoho Bay: 2
Loihi 1 chips, Nahuku: 8 or 32, Pohoiki Beach: 64). The placement's cores are numbered over the chips in order
(core ``k`` on chip ``k // 128``; the local search may leave a number unused); each chip's cores, neurons and
synapses are in the manifest. The arithmetic, and so the emulator, is the same whatever the
number of chips; what is not modelled is the time spikes take between chips (the emulator's steps are algorithmic
steps, not wall-clock time). A model that needs more cores than the system has is a violation naming by how much
and how many chips it needs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from snncc.errors import SnnccError
from snncc.ir import Graph, ops
from snncc.ir.neurons import IF, LIF, FewSpike
from snncc.ir.ops import SNN
from snncc.passes import run_pipeline
from snncc.targets.base import PackageContext, Target, TargetError, Violation, register_target
from snncc.targets.loihi.constraints import CONSTRAINTS
from snncc.targets.loihi.emulator import synaptic_depth  # importing it registers the loihi1/loihi2 backends
from snncc.targets.loihi.fs_maxpool import MAX_WINDOW, LoihiFewSpikeMax, pooled_population
from snncc.targets.loihi.legalize import core_limits, plan_blocks

#: The ops the Loihi lowering has a construct for (the rest are violations with a remedy).
_SUPPORTED = (ops.Input, ops.Conv2d, ops.Linear, ops.Population, ops.SpikingMaxPool2d, ops.AvgPool2d, ops.Flatten,
              ops.Readout)
_REMEDIES = {
    ops.Add: "residual networks are not lowered to Loihi yet; use a sequential model",
    ops.Concat: "concatenations are not lowered to Loihi yet; use a sequential model",
    ops.GlobalAvgPool: "global average pooling is not folded yet; flatten into the classifier instead",
    ops.MaxPool2d: "FS max pooling (of the currents, before the neurons) runs on Loihi 2 as a bit-serial max of "
                   "the FS trains, which needs graded spikes: use --target loihi2, an average-pooling model "
                   "(models/lenet5-avg-mnist.onnx, models/vgg-avg-fmnist.onnx, folded exactly) or rate coding",
}


class LoihiTarget(Target):
    energy_per_synop_j = 23.6e-12
    options_text = " (a system of N chips: NAME{chips=N})"

    def __init__(self, variant: str, chips: int = 1) -> None:
        self.variant, self.chips = variant, chips
        self.name = variant if chips == 1 else f"{variant}{{chips={chips}}}"
        self.constraints = dataclasses.replace(CONSTRAINTS[variant], chips=chips)
        self.backend = variant
        partition = f"variant={variant}" + (f",chips={chips}" if chips > 1 else "")
        self.pipeline = f"loihi-fold,loihi-quantize{{variant={variant}}},loihi-partition{{{partition}}}"
        # The float form fine-tuning trains (legalize.py): the OR gates and the chip's reset; the exact folds wait.
        self.float_pipeline = "loihi-gates" + (",loihi-reset{variant=loihi1}" if variant == "loihi1" else "")
        self.description = {"loihi1": "Intel Loihi 1 (reset to zero, binary spikes, 1,024 compartments per core)",
                            "loihi2": "Intel Loihi 2 (reset by subtraction, FS neurons and FS max pooling in "
                                      "microcode, graded spikes, 8,192 neurons per core)"}[variant]
        self.energy_source = ("Davies et al., IEEE Micro 38(1), 2018: 23.6 pJ per synaptic spike operation (Loihi 1)"
                              + ("" if variant == "loihi1" else "; Loihi 2 publishes no per-operation figure, so "
                                 "this is Loihi 1's, an upper estimate"))

    @property
    def form_name(self) -> str:
        return self.variant  # the float form (gates, reset) is the chip's, however many chips the system has

    def with_options(self, options: dict[str, str]) -> LoihiTarget:
        unknown = sorted(set(options) - {"chips"})
        if unknown:
            raise TargetError(f"target {self.variant!r} has no option {unknown[0]!r} (options: chips, the chips of a "
                             f"multi-chip system, e.g. {self.variant}{{chips=32}})")
        try:
            chips = int(options["chips"])
        except ValueError:
            chips = 0
        if chips < 1:
            raise TargetError(f"target {self.variant!r}: chips={options['chips']!r} is not a number of chips (1 or "
                             "more)")
        return LoihiTarget(self.variant, chips)

    def check(self, graph: Graph) -> list[Violation]:
        if graph.level != SNN:
            return [Violation("graph", "the Loihi legalization starts from an snn-level graph", graph.level,
                              "compile the model first (snncc compile)")]
        violations = []
        form = graph.attrs.get("target_form")  # the float form of a target (snncc finetune --target)
        if form is not None and form != self.form_name:
            violations.append(Violation("graph", f"the converted SNN or {self.form_name}'s float form",
                                        f"{form}'s float form (its reset and gates, fine-tuned for {form})",
                                        f"emit it with --target {form}, or fine-tune the converted .snn with "
                                        f"--target {self.form_name}"))
        for node in graph.topological_order():
            op = graph.op(node)
            if isinstance(op, ops.Population) and graph.meta.get(node, {}).get("or_gate") \
                    and isinstance(op.neuron, LIF) and op.neuron.tau_mem == 0:
                continue  # a max pooling that loihi-fold already made an OR gate (a graph in the float form)
            if isinstance(op, ops.MaxPool2d) and self.constraints.graded_spikes:
                found = pooled_population(graph, node)  # FS max pooling: the max of the trains (fs_maxpool.py)
                if isinstance(found, str):
                    violations.append(Violation(node, "an FS max pooling of one convolution's currents into FS "
                                                f"neurons, windows of at most {MAX_WINDOW} inputs", found,
                                                "pool 2x2 between a convolution and its FS neurons, or use an "
                                                "average-pooling model"))
                continue
            if not isinstance(op, _SUPPORTED):
                violations.append(Violation(node, f"{self.name} lowers {', '.join(c.__name__ for c in _SUPPORTED)}",
                                            op.kind, _REMEDIES.get(type(op), "rewrite the model without it")))
            elif getattr(op, "input_gains", None) is not None:
                violations.append(Violation(node, "one operand per synaptic layer", f"{len(op.input_gains)} operands",
                                            "shared-weight (SEW) layers are not lowered to Loihi yet"))
            elif isinstance(op, ops.Population):
                violations += self._check_neuron(node, op.neuron)
        for src in graph.input_nodes():
            for user, _ in graph.users(src):
                if not isinstance(graph.op(user), (ops.Conv2d, ops.Linear)):
                    violations.append(Violation(user, "the input feeds synaptic layers (graded events)",
                                                graph.op(user).kind, "start the model with a Conv2d or Linear"))
        if violations:
            return violations
        return self._check_resources(graph)

    def _check_neuron(self, node: str, neuron) -> list[Violation]:
        if isinstance(neuron, FewSpike):
            if not self.constraints.graded_spikes:
                return [Violation(node, "binary spikes only (Loihi 1)", f"FS K={neuron.steps} (graded spikes d(t))",
                                  "use --target loihi2 (graded spikes), or --method rate for Loihi 1 (FS through "
                                  "unrolled neurons and delays is not lowered)")]
            return []
        if not isinstance(neuron, IF):
            return [Violation(node, f"{self.name} runs rate-coded IF neurons as CUBA", neuron.kind,
                              "compile with --method rate, or --method fs for Loihi 2 (AMOS and LIF are not "
                              "lowered)")]
        if neuron.signed:
            remedy = ("Loihi 1 has only binary spikes: compile without convert-rate{signed=true}"
                      if self.variant == "loihi1" else
                      "signed spikes through graded payloads are not lowered yet: compile without "
                      "convert-rate{signed=true}")
            return [Violation(node, "unsigned spikes", "signed IF (negative spikes)", remedy)]
        return []

    def _check_resources(self, graph: Graph) -> list[Violation]:
        from snncc.targets.loihi.legalize import LoihiFold, LoihiPartition, LoihiQuantize
        from snncc.targets.partition import first_fit

        try:
            hw = run_pipeline(graph, [LoihiFold(), LoihiQuantize(variant=self.variant)])
        except SnnccError as exc:
            return [Violation("graph", "quantizable to Loihi's formats", "failed", str(exc))]
        limits = core_limits(self.constraints)
        types = hw.types()
        violations, blocks_total = [], 0
        for pop in hw.find(ops.Population):
            (syn,) = hw.inputs(pop)
            blocks = plan_blocks(hw.op(syn), types[hw.inputs(syn)[0]].shape, types[pop].shape, limits)
            if isinstance(blocks, str):
                violations.append(Violation(pop, f"a {self.name} core", blocks,
                                            "make the layer smaller (fewer channels or a smaller kernel)"))
            else:
                blocks_total += len(blocks)
        if violations:  # the layers that fit, a block per core: what the rest would need
            cores, counted = blocks_total, "one per block of the layers that fit"
        else:  # first-fit over the split blocks: the placement's local search never uses more cores
            units, _ = LoihiPartition(variant=self.variant).split(hw)
            cores, counted = max(first_fit(units, limits), default=-1) + 1, "first-fit"
        per_chip = self.constraints.cores_per_chip
        if cores > per_chip * self.chips:
            needed = -(-cores // per_chip)
            violations.append(Violation("graph", f"{per_chip * self.chips} cores ({self.chips} chip"
                                        f"{'s' if self.chips > 1 else ''})",
                                        f"{cores} cores ({counted}), {cores - per_chip * self.chips} too many",
                                        f"a system of at least {needed} chips (--target {self.variant}{{chips="
                                        f"{needed}}}), a smaller model, or Loihi 2 (8,192 neurons per core)"))
        return violations

    def resources(self, graph: Graph) -> dict:
        types = graph.types()
        per_core: dict[tuple[int, int], dict] = {}
        for node in graph.topological_order():
            p = graph.placement(node)
            op = graph.op(node)
            if p is None:
                continue
            entry = per_core.setdefault((p.chip, p.core), {"chip": p.chip, "core": p.core, "neurons": 0,
                                                           "synapses": 0, "nodes": []})
            entry["nodes"].append(node)
            if isinstance(op, (ops.Population, ops.Readout)):
                entry["neurons"] += types[node].size
            if op.synaptic:
                entry["synapses"] += types[node].size * int(np.prod(op.weight.shape[1:]))
        cores = sorted(per_core.values(), key=lambda e: (e["chip"], e["core"]))
        chips = {}
        for e in cores:
            chip = chips.setdefault(e["chip"], {"chip": e["chip"], "cores": 0, "neurons": 0, "synapses": 0})
            chip["cores"] += 1
            chip["neurons"] += e["neurons"]
            chip["synapses"] += e["synapses"]
        c = self.constraints
        return {"cores": len(cores), "chips": len(chips), "per_core": cores, "per_chip": list(chips.values()),
                "inter_core_routes": graph.attrs.get("loihi", {}).get("inter_core_routes"),
                "limits": {"neurons_per_core": c.neurons_per_core, "synapses_per_core": c.synaptic_memory_bits // 8,
                           "input_axons_per_core": c.fan_in, "cores_per_chip": c.cores_per_chip}}

    def io_spec(self, graph: Graph) -> dict:
        if graph.attrs["loihi"].get("coding") == "fs":
            return self._few_spike_io_spec(graph)
        depth = synaptic_depth(graph)
        encoding = ("graded events from the host, payload = the stored value (uint8 pixel), at every step"
                    if self.variant == "loihi2" else
                    "Loihi 1 has no graded spikes: the host computes the first layer's synaptic sums of the stored "
                    "values (uint8 pixels) and writes them as that layer's per-neuron biases (the same integers)")
        return {"input_encoding": encoding, "latency_steps": max(depth.values()),
                "readout": "the summed integer input of the output compartments (their membrane, never "
                           "thresholded); the class is its argmax",
                "files": {"network.net": "the network in lava-dl's netx HDF5 layout (sequential layers, CUBA "
                                         "neurons) with snncc* extension datasets (netx.py's docstring)"},
                "details": {"reset": graph.attrs["loihi"]["reset"],
                            "bias_start_step": {n: d for n, d in depth.items() if graph.op(n).synaptic},
                            "membrane_scale": graph.attrs["loihi"]["membrane_scale"],
                            **({"reset_compensation": graph.attrs["loihi"]["reset_compensation"]}
                               if "reset_compensation" in graph.attrs["loihi"] else {})}}

    @staticmethod
    def _few_spike_io_spec(graph: Graph) -> dict:
        info = graph.attrs["loihi"]
        k = info["steps"]
        # The synaptic layers before the readout's, less the max poolings' gathers (a pooling takes one step).
        pools: dict[str, int] = {}
        for node in graph.topological_order():
            op = graph.op(node)
            pools[node] = max((pools[u] for u in graph.inputs(node)), default=0) + int(
                isinstance(op, ops.Population) and isinstance(op.neuron, LoihiFewSpikeMax))
        pooling = max(pools[o] for o in graph.outputs)
        fs_layers = max(synaptic_depth(graph).values()) - 1 - pooling
        latency = fs_layers * k + pooling + 1
        after = f", {pooling} max poolings of one step each" if pooling else ""
        return {"input_encoding": "one graded event per pixel from the host, payload = the stored value (uint8), "
                                  f"at chip step i*{k} for input i",
                "latency_steps": latency,
                "timing": f"FS coding, K = {k} steps per layer: input i enters at chip step i*{k}; its answer is read "
                          f"{latency} chip steps later ({fs_layers} FS layers of {k} steps{after}, plus one: "
                          "targets/loihi/fs_emulator.py, fs_maxpool.py); one answer per input, not a rate over "
                          "answer steps.",
                "readout": "the integrated input of the output compartments over the last window (never "
                           "thresholded), divided by the membrane scale 2^16; the class is its argmax",
                "files": {"network.net": "the network in lava-dl's netx HDF5 layout with FS layers as the "
                                         "snnccFewSpike extension neuron and FS max poolings as "
                                         "snnccFewSpikeMax (netx.py's docstring)"},
                "details": {"coding": "fs", "steps": k, "reset": info["reset"],
                            "membrane_scale": info["membrane_scale"], "payload_scale": info["payload_scale"],
                            "payload_bits": info["payload_bits"],
                            "schedule": f"every layer latches at chip steps s with s mod {k} = 1 + P, P the max "
                                        f"poolings before it (its step counter's phase); one input every {k} steps "
                                        "(targets/loihi/fewspike.py, fs_maxpool.py)"}}

    def package(self, graph: Graph, directory: Path, context: PackageContext) -> list[str]:
        """netx HDF5 of the graph before partitioning (one layer per population; the blocks are in the
        manifest), rebuilt from the source by the same deterministic passes."""
        from snncc.targets.loihi.legalize import LoihiFold, LoihiQuantize
        from snncc.targets.loihi.netx import write_netx

        layers = run_pipeline(context.source, [LoihiFold(), LoihiQuantize(variant=self.variant)])
        layers.attrs["timesteps"] = graph.attrs.get("timesteps")
        few_spike = layers.attrs["loihi"].get("coding") == "fs"  # FS biases act at the window boundary instead
        return write_netx(layers, directory, depth=None if few_spike else synaptic_depth(layers))


for _variant in CONSTRAINTS:
    register_target(LoihiTarget(_variant))

__all__ = ["CONSTRAINTS", "LoihiTarget"]
