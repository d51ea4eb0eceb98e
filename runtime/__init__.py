"""Execution of SNN-level graphs: the numpy reference simulator (the specification) behind one facade.

``Simulator(graph, timesteps=T).run(x)`` returns a :class:`SimulationResult` whose ``outputs[t]`` is the network's
answer after ``t + 1`` steps, so a single run gives the accuracy for every latency up to ``T``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from snncc.errors import SimulationError
from snncc.ir import Graph
from snncc.runtime.analog import check_input, run_analog
from snncc.runtime.reference import ReferenceSimulator

BACKENDS = ("reference",)


@dataclass
class SimulationResult:
    """Everything one simulation run measured.

    ``outputs``: (T, N, *shape) readout of the first graph output after each step; ``all_outputs`` for every graph
    output. ``spikes``: per population, (T, N) spikes emitted at each step. ``synops``: (T, N) synaptic operations
    (spike events times fan-out) at each step. ``neurons``: size of every population.
    """

    outputs: np.ndarray
    all_outputs: list[np.ndarray]
    spikes: dict[str, np.ndarray]
    synops: np.ndarray
    neurons: dict[str, int] = field(default_factory=dict)

    @property
    def total_neurons(self) -> int:
        return sum(self.neurons.values())

    def spikes_per_image(self, timesteps: int) -> float:
        """Mean number of spikes one image causes in the first ``timesteps`` steps."""
        return float(sum(s[:timesteps].sum(axis=0).mean() for s in self.spikes.values()))

    def synops_per_image(self, timesteps: int) -> float:
        return float(self.synops[:timesteps].sum(axis=0).mean())

    def accuracy(self, labels: np.ndarray, timesteps: int) -> float:
        """Top-1 accuracy of the readout after ``timesteps`` steps."""
        predictions = self.outputs[timesteps - 1].reshape(len(labels), -1).argmax(axis=1)
        return float((predictions == labels).mean())


class Simulator:
    """Run an SNN-level graph on a batch of inputs for ``timesteps`` steps."""

    def __init__(self, graph: Graph, timesteps: int, backend: str = "reference", batch_size: int = 100) -> None:
        if backend not in BACKENDS:
            raise SimulationError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        if batch_size < 1:
            raise SimulationError(f"batch size must be positive, got {batch_size}")
        self.graph, self.timesteps, self.backend, self.batch_size = graph, timesteps, backend, batch_size
        self._engine = ReferenceSimulator(graph, timesteps)

    def run(self, x: np.ndarray, progress: bool = False) -> SimulationResult:
        x = check_input(self.graph, x)
        parts = []
        for start in tqdm(range(0, len(x), self.batch_size), desc=f"simulating T={self.timesteps}",
                          unit="batch", disable=not progress, leave=False):
            parts.append(self._engine.run_batch(x[start:start + self.batch_size]))
        if not parts:
            raise SimulationError("no input samples to simulate")
        all_outputs = [np.concatenate([p.outputs[i] for p in parts], axis=1) for i in range(len(parts[0].outputs))]
        spikes = {n: np.concatenate([p.spikes[n] for p in parts], axis=1) for n in parts[0].spikes}
        synops = np.concatenate([p.synops for p in parts], axis=1)
        return SimulationResult(all_outputs[0], all_outputs, spikes, synops, self._engine.populations())


__all__ = ["BACKENDS", "SimulationResult", "Simulator", "run_analog"]
