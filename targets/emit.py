"""Emit a bundle for any registered target, and verify one: the two jobs of ``snncc emit`` and ``snncc verify``.

:func:`emit` checks the snn-level graph against the target (every violation at once, nothing written), legalizes
it, measures its activity on sample data when given (synaptic operations per inference, from the emulator), and
writes the bundle atomically (:mod:`snncc.targets.bundle`). :func:`verify` re-hashes every file of a bundle, runs
the float SNN it came from and the target's emulator on the same data, and reports ``float_accuracy``,
``target_accuracy``, ``prediction_agreement`` (the fraction of inputs where both give the same class) and the
resource table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snncc.ir import Graph
from snncc.targets.base import PackageContext, Target, TargetError, get_target
from snncc.targets.bundle import read_bundle, write_bundle

DEFAULT_TIMESTEPS = 32


def _simulate(graph: Graph, x: np.ndarray, timesteps: int, backend: str, batch_size: int = 100,
              progress: bool = False):
    from snncc.runtime import Simulator

    return Simulator(graph, timesteps, backend=backend, batch_size=batch_size).run(x, progress=progress)


def rate_timing(timesteps: int, latency_steps: int) -> str:
    """When a rate-coded bundle's answer is ready: each synaptic layer delays by one chip step."""
    return (f"run {timesteps} answer steps; the answer of step t is ready at chip step t + {latency_steps} (one "
            "step per synaptic layer).")


def _readme(target: Target, manifest: dict, timing: str) -> str:
    io, res = manifest["io"], manifest["resources"]
    energy = manifest["energy"]
    joules = energy.get("joules")
    lines = [f"# {target.name} bundle", "",
             f"Written by snncc {manifest['snncc_version']} for {target.description}.", "",
             "## Files", "",
             "- `manifest.json`: what this bundle holds, the sha256 of every file, resources and energy.",
             "- `hw.snn`: the legalized (hw-level) snncc graph that `snncc verify` emulates.",
             "- `source.snn`: the float SNN before legalization, the reference of `snncc verify`.",
             *[f"- `{name}`: {desc}" for name, desc in manifest.get("target_files", {}).items()], "",
             "## Input and output", "",
             f"- input `{io['input']['node']}`, shape {io['input']['shape']}, {io['input']['dtype']}: "
             f"{io['input']['encoding']}",
             f"- output `{io['output']['node']}`, shape {io['output']['shape']}: {io['output']['readout']}",
             f"- {timing}", "",
             "## Resources", "",
             (f"{res.get('cores')} cores on {res.get('chips')} chip(s); per core in `manifest.json` "
              "(`resources.per_core`)." if res.get("cores") is not None else res.get("note", "No cores.")), "",
             "## Energy", "",
             (f"{manifest['synops_per_inference']:,.0f}" if manifest["synops_per_inference"] is not None
              else "Not measured:") + " synaptic operations per inference"
             + (f", about {joules * 1e6:.3g} uJ ({energy['source']})." if joules is not None else "."), "",
             "Check the bundle and its accuracy with `snncc verify DIR --data DATA`.", ""]
    return "\n".join(lines)


def emit(graph: Graph, target_name: str, directory: str | Path, timesteps: int = DEFAULT_TIMESTEPS,
         activity_data: np.ndarray | None = None) -> dict:
    """Check, legalize and package ``graph`` for ``target_name`` into ``directory``; returns the manifest."""
    target = get_target(target_name)
    target.require_fits(graph)
    hw = target.legalize(graph)
    hw.attrs["timesteps"] = timesteps
    synops = None
    if activity_data is not None and target.backend is not None:
        result = _simulate(hw, activity_data, timesteps, target.backend)
        synops = result.synops_per_image(timesteps)
    inp = graph.input_nodes()[0]
    out = graph.outputs[0]
    types = hw.types()
    info = target.io_spec(hw)
    manifest = {
        "target": target.name,
        "pipeline": {"source": graph.attrs.get("pipeline", ""), "legalization": target.pipeline,
                     "full": ",".join(filter(None, [graph.attrs.get("pipeline", ""), target.pipeline]))},
        "timesteps": timesteps,
        "latency_steps": info.get("latency_steps", 0),
        "io": {"input": {"node": inp, "shape": list(types[inp].shape), "dtype": types[inp].format,
                         "encoding": info.get("input_encoding", ""),
                         "input_scaling": graph.attrs.get("input_scaling", {}),
                         "input_scaling_folded_into_first_layer": hw.attrs.get("folded_input_scaling")},
               "output": {"node": out, "shape": list(types[out].shape),
                          "readout": info.get("readout", "the class is the argmax of the readout")}},
        "resources": target.resources(hw),
        "constraints": target.constraints.to_json(),
        "synops_per_inference": synops,
        "synops_measured_on": None if activity_data is None else int(len(activity_data)),
        "energy": target.energy(synops) if synops is not None else
        {**target.energy(0.0), "joules": None, "note": "give --data to emit to measure synaptic operations"},
        "target_files": info.get("files", {}),
        **({"target_details": info["details"]} if "details" in info else {}),
    }

    def files(tmp: Path) -> list[str]:
        return target.package(hw, tmp, PackageContext(source=graph))

    # The README needs the manifest's figures; write_bundle adds format, versions and hashes.
    from snncc import __version__

    timing = info.get("timing") or rate_timing(timesteps, manifest["latency_steps"])
    readme = _readme(target, {**manifest, "snncc_version": __version__}, timing)
    write_bundle(directory, hw, graph, files, manifest, readme)
    return read_bundle(directory).manifest


def verify(directory: str | Path, x: np.ndarray, y: np.ndarray, backend_float: str | None = None,
           progress: bool = False) -> dict:
    """Check the bundle's hashes, run the float SNN and the target's emulator on ``(x, y)`` and compare (with
    ``progress``, a progress bar for each run: minutes on a full test set)."""
    bundle = read_bundle(directory)
    target = get_target(bundle.manifest["target"])
    if target.backend is None:
        raise TargetError(f"target {target.name} has no emulator; verify can only check the hashes")
    timesteps = int(bundle.manifest["timesteps"])
    source, hw = bundle.source_graph(), bundle.hw_graph()
    reference = _simulate(source, x, timesteps, backend_float, progress=progress)
    emulated = _simulate(hw, x, timesteps, target.backend, progress=progress)
    float_pred = reference.outputs[timesteps - 1].reshape(len(x), -1).argmax(axis=1)
    target_pred = emulated.outputs[timesteps - 1].reshape(len(x), -1).argmax(axis=1)
    synops = emulated.synops_per_image(timesteps)
    return {"bundle": str(directory), "target": target.name, "timesteps": timesteps, "images": int(len(x)),
            "float_accuracy": float((float_pred == y).mean()), "target_accuracy": float((target_pred == y).mean()),
            "prediction_agreement": float((float_pred == target_pred).mean()),
            "float_spikes_per_image": reference.spikes_per_image(timesteps),
            "target_spikes_per_image": emulated.spikes_per_image(timesteps),
            "synops_per_inference": synops, "energy": target.energy(synops),
            "resources": bundle.manifest["resources"]}


def resource_table(resources: dict) -> str:
    """The per-chip and per-core resources as a few text lines."""
    if resources.get("cores") is None:  # a file format (NIR): no cores to report
        return f"{resources.get('neurons', 0):,} neurons; {resources.get('note', 'no cores')}"
    lines = [f"{resources.get('cores')} cores on {resources.get('chips')} chip(s)"]
    limits = resources.get("limits", {})
    for core in resources.get("per_core", []):
        lines.append(f"  chip {core['chip']} core {core['core']:3d}: {core['neurons']:6d} neurons "
                     f"(of {limits.get('neurons_per_core')}), {core['synapses']:8d} synapses "
                     f"(of {limits.get('synapses_per_core')})")
    return "\n".join(lines)
