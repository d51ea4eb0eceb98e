"""Execution of SNN-level graphs: the numpy reference simulator (the specification) and the Cython runtime behind
one facade.

``Simulator(graph, timesteps=T).run(x)`` returns a :class:`SimulationResult` whose ``outputs[t]`` is the network's
answer after ``t + 1`` steps, so a single run gives the accuracy for every latency up to ``T``.

Backends are a registry, :data:`BACKENDS` (name -> :class:`Backend`), that later work extends with
:func:`register_backend` (a target's emulator, the torch lowering): ``"reference"`` (:mod:`snncc.runtime.reference`,
numpy, the specification) and ``"cython"`` (:mod:`snncc.runtime.cython_engine`, compiled kernels, the same spikes)
and ``"torch"`` (:mod:`snncc.runtime.torch_lowering`, rate-coded and temporal graphs, on the CPU or a CUDA
device; torch is imported only when it runs).
The default (``backend=None``) is the compiled runtime where it is built and the reference otherwise, silently;
asking for ``"cython"`` by name when the extension is missing falls back to the reference with one warning saying
how to build it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from snncc.data import InputScaling
from snncc.errors import SimulationError
from snncc.ir import Graph
from snncc.runtime.analog import check_input, run_analog
from snncc.runtime.reference import ReferenceSimulator
from snncc.runtime.temporal import TemporalSimulator, is_temporal

# The backend of ``Simulator(..., backend=None)``: its fallback is silent (the user asked for no backend in
# particular). The test suite switches it with SNNCC_TEST_BACKEND.
DEFAULT_BACKEND = "cython"

BUILD_HINT = ("build it with `python -m pip install -e .` in the snncc source tree (needs Cython and a C compiler; "
              "see setup.py)")


class BackendFallbackWarning(UserWarning):
    """The requested backend is not available and the reference simulator runs instead."""


_warned_fallback = False


KERNEL_VARIANTS = ("avx512", "avx2", "portable")  # widest first
#: Iterations an idle OpenMP thread spins before it sleeps (see load_kernels).
SPIN_COUNT = 10_000


def load_kernels():
    """Import the compiled kernels; raises ImportError when they are not built.

    The build compiles the same source for several instruction sets (see setup.py); this returns the widest variant
    the CPU supports, or the one named by ``SNNCC_KERNELS=portable|avx2|avx512``. The spikes are the same in every
    variant: the arithmetic is element-wise IEEE float32 everywhere.

    How OpenMP's idle threads wait: libgomp's default spins for about 300,000 iterations (a millisecond or so)
    before sleeping, and spinning workers take the cores from everything else: on a 2-core machine shared with
    other work, two such threads ran LeNet-5 2.6x slower than two that sleep at once (``OMP_WAIT_POLICY=PASSIVE``).
    Sleeping at once costs a wake-up at every parallel region, which the temporal runtime pays between each
    oneDNN convolution and each population kernel: FS on the ResNet-14 ran at 2,416-2,478 images/s so (2
    threads) against 2,890-3,104 with a short spin, the LeNet-5 at 44,000-52,000 against 59,000-64,000, while the
    rate-coded LeNet-5, its average-pooling variant and the VGG stayed within noise (docs/benchmark.md, same
    machine, one session). So idle threads spin for :data:`SPIN_COUNT` iterations (tens of microseconds) and then
    sleep, unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``. libgomp reads these once, when the
    extension loads it, so they are set before the first import.
    """
    import importlib

    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    from snncc.runtime import _kernels

    wanted = os.environ.get("SNNCC_KERNELS", "auto")
    if wanted not in KERNEL_VARIANTS + ("auto",):
        raise SimulationError(f"SNNCC_KERNELS={wanted!r}; choose one of auto, {', '.join(KERNEL_VARIANTS)}")
    for name in KERNEL_VARIANTS[:-1]:
        if wanted in ("auto", name) and _kernels.cpu_supports(name):
            try:
                module = importlib.import_module(f"snncc.runtime._kernels_{name}")
            except ImportError:
                if wanted == name:
                    raise
                continue
            if module.build_stamp() == _kernels.build_stamp():  # not a stale file of an earlier build
                return module
            if wanted == name:
                raise ImportError(f"snncc.runtime._kernels_{name} is from another build than snncc.runtime._kernels; "
                                  f"rebuild: {BUILD_HINT}")
    if wanted not in ("auto", "portable"):
        raise ImportError(f"SNNCC_KERNELS={wanted} but this CPU does not support it")
    return _kernels


def cython_available() -> tuple[bool, str]:
    """Whether the compiled kernels import, and if not why."""
    try:
        load_kernels()
    except ImportError as exc:
        return False, str(exc)
    return True, ""


@dataclass(frozen=True)
class Backend:
    """A simulator backend of :class:`Simulator`.

    ``rate(graph, timesteps, threads)`` and ``temporal(graph, timesteps, threads)`` build the engine for rate-coded
    and for temporal (FS/AMOS) graphs (None: the backend does not run that kind); an engine has ``run_batch(x)``
    returning a :class:`~snncc.runtime.reference.BatchResult`, ``populations()`` and ``timesteps`` (temporal engines
    also ``latency``). ``available()`` says whether it can run here and, if not, why; ``fallback`` names the backend
    that runs instead (None: refuse); ``hint`` tells the user how to make it available. ``devices``: the factories
    also take ``device=`` (a torch device name such as ``"cuda"``); a device asked of another backend is refused."""

    name: str
    rate: Callable[..., object] | None
    temporal: Callable[..., object] | None
    available: Callable[[], tuple[bool, str]] = lambda: (True, "")
    fallback: str | None = None
    hint: str = ""
    description: str = ""
    devices: bool = False


#: The registered backends by name.
BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, replace: bool = False) -> None:
    """Add ``backend`` to :data:`BACKENDS`; a name already registered is refused unless ``replace``."""
    if backend.name in BACKENDS and not replace:
        raise SimulationError(f"a backend named {backend.name!r} is already registered; pass replace=True to "
                              "replace it")
    if backend.fallback is not None and backend.fallback not in BACKENDS and backend.fallback != backend.name:
        raise SimulationError(f"backend {backend.name!r}: its fallback {backend.fallback!r} is not registered; "
                              f"registered: {', '.join(BACKENDS)}")
    BACKENDS[backend.name] = backend


def _reference_rate(graph: Graph, timesteps: int | None, threads: int | None) -> ReferenceSimulator:
    return ReferenceSimulator(graph, timesteps)


def _reference_temporal(graph: Graph, timesteps: int | None, threads: int | None) -> TemporalSimulator:
    return TemporalSimulator(graph, timesteps)


def _cython_rate(graph: Graph, timesteps: int | None, threads: int | None) -> object:
    from snncc.runtime.cython_engine import CythonSimulator

    return CythonSimulator(graph, timesteps, threads=threads)


def _cython_temporal(graph: Graph, timesteps: int | None, threads: int | None) -> object:
    from snncc.runtime.cython_engine import CythonTemporalSimulator

    return CythonTemporalSimulator(graph, timesteps, threads=threads)


def torch_available() -> tuple[bool, str]:
    """Whether torch imports (the torch backend's only requirement)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    return True, ""


def _torch(graph: Graph, timesteps: int | None, threads: int | None, device: str | None = None) -> object:
    """Rate-coded and temporal graphs alike (runtime/torch_lowering.py picks the lowering)."""
    from snncc.runtime.torch_lowering import TorchSimulator  # torch is imported only here

    return TorchSimulator(graph, timesteps, device=device)


register_backend(Backend("reference", _reference_rate, _reference_temporal,
                         description="the numpy reference simulator (the specification)"))
register_backend(Backend("cython", _cython_rate, _cython_temporal, available=lambda: cython_available(),
                         fallback="reference", hint=BUILD_HINT,
                         description="the compiled Cython runtime (the same spikes, several times faster)"))
register_backend(Backend("torch", _torch, _torch, available=torch_available,
                         hint="install torch: python -m pip install -e \".[torch]\" in the snncc source tree",
                         description="the torch lowering (runtime/torch_lowering.py), on the CPU or a CUDA device",
                         devices=True))


def _registered(name: str) -> Backend:
    """The backend registered as ``name``. The targets register their emulators (``loihi1``, ``loihi2``) when they
    load, which is on first use, so a name not yet registered may be one of theirs."""
    if name not in BACKENDS:
        from snncc.targets.base import load_targets

        load_targets()
    if name not in BACKENDS:
        raise SimulationError(f"unknown backend {name!r}; registered: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def _engine(graph: Graph, timesteps: int | None, backend: str | None, threads: int | None,
            device: str | None = None) -> tuple[object, str]:
    """The engine for ``backend`` (None: :data:`DEFAULT_BACKEND`) and the name of the backend that actually runs."""
    global _warned_fallback
    temporal = is_temporal(graph)
    if not temporal and timesteps is None:
        raise SimulationError("timesteps must be given for a rate-coded network (its answer improves with time)")
    explicit = backend is not None
    name = backend if explicit else DEFAULT_BACKEND
    seen = []
    while True:
        entry = _registered(name)
        ok, why = entry.available()
        if ok:
            break
        if entry.fallback is None or entry.fallback in seen:
            raise SimulationError(f"backend {name!r} is not available here ({why}); {entry.hint or 'choose another'}")
        if explicit and not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"the {name} backend is not available ({why}); simulating with the {entry.fallback} "
                          f"backend instead. To use it, {entry.hint}.", BackendFallbackWarning, stacklevel=3)
        seen.append(name)
        name = entry.fallback
    factory = entry.temporal if temporal else entry.rate
    if factory is None:
        kind = "temporal (FS/AMOS)" if temporal else "rate-coded"
        raise SimulationError(f"backend {name!r} does not run {kind} graphs; use "
                              f"{', '.join(n for n, b in BACKENDS.items() if (b.temporal if temporal else b.rate))}")
    if device is None:
        return factory(graph, timesteps, threads), name
    if not entry.devices:
        raise SimulationError(f"backend {name!r} runs on the CPU only and takes no device (asked for {device!r}); "
                              f"a device is for {', '.join(n for n, b in BACKENDS.items() if b.devices)}")
    return factory(graph, timesteps, threads, device=device), name


@dataclass
class SimulationResult:
    """Everything one simulation run measured.

    ``outputs``: (T, N, *shape) readout of the first graph output after each step; ``all_outputs`` for every graph
    output. ``spikes``: per population, (T, N) spikes emitted at each step. ``synops``: (T, N) synaptic operations
    (spike events times fan-out) at each step. ``neurons``: size of every population. For temporal codings,
    ``latency`` (steps until the answer) and ``max_spikes_per_neuron`` (over all neurons and inputs).
    """

    outputs: np.ndarray
    all_outputs: list[np.ndarray]
    spikes: dict[str, np.ndarray]
    synops: np.ndarray
    neurons: dict[str, int] = field(default_factory=dict)
    # Temporal codings (FS, AMOS): steps until the answer is complete, and the most spikes of any one neuron.
    latency: int | None = None
    max_spikes_per_neuron: int | None = None

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
    """Run an SNN-level graph on a batch of inputs for ``timesteps`` steps.

    ``backend``: a name registered in :data:`BACKENDS`; None (the default) is the compiled runtime where it is
    built and the reference otherwise. ``self.backend`` is the one that runs (the reference after a fallback). ``timesteps`` may be None for temporal codings (FS, AMOS): their latency. ``threads``: threads of the Cython kernels (default: OpenMP's default).
    ``device``: where a backend that has devices (``torch``) runs, ``"cpu"`` or ``"cuda"`` (None: its default, the
    CPU); asked of another backend it is refused.
    """

    def __init__(self, graph: Graph, timesteps: int | None, backend: str | None = None, batch_size: int = 100,
                 threads: int | None = None, device: str | None = None) -> None:
        if backend is not None:
            _registered(backend)
        if batch_size < 1:
            raise SimulationError(f"batch size must be positive, got {batch_size}")
        if threads is not None and threads < 1:
            raise SimulationError(f"threads must be at least 1, got {threads}")
        self.graph, self.timesteps, self.batch_size, self.threads = graph, timesteps, batch_size, threads
        self._engine, self.backend = _engine(graph, timesteps, backend, threads, device)
        self.timesteps = self._engine.timesteps
        self.latency = getattr(self._engine, "latency", None)

    def run(self, x: np.ndarray, progress: bool = False, apply_scaling: bool = True) -> SimulationResult:
        """Simulate the samples ``x`` (N, *input shape).

        ``x`` holds the data as stored (pixels, say): the input scaling recorded in the graph by ``compile``
        (``graph.attrs["input_scaling"]``, none for a graph without one) maps them to the model's inputs, as
        ``snncc eval`` and :func:`snncc.api.evaluate` do. ``apply_scaling=False`` takes ``x`` as model inputs,
        already scaled.
        """
        if apply_scaling:
            x = InputScaling.from_json(self.graph.attrs.get("input_scaling", {})).apply(np.asarray(x))
        x = check_input(self.graph, x)
        parts = []
        for start in tqdm(range(0, len(x), self.batch_size), desc=f"simulating T={self.timesteps} ({self.backend})",
                          unit="batch", disable=not progress, leave=False):
            parts.append(self._engine.run_batch(x[start:start + self.batch_size]))
        if not parts:
            raise SimulationError("no input samples to simulate")
        all_outputs = [np.concatenate([p.outputs[i] for p in parts], axis=1) for i in range(len(parts[0].outputs))]
        spikes = {n: np.concatenate([p.spikes[n] for p in parts], axis=1) for n in parts[0].spikes}
        synops = np.concatenate([p.synops for p in parts], axis=1)
        most = None
        if self.latency is not None:
            most = max((m for p in parts for m in p.max_spikes_per_neuron.values()), default=0)
        return SimulationResult(all_outputs[0], all_outputs, spikes, synops, self._engine.populations(),
                                latency=self.latency, max_spikes_per_neuron=most)


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "BackendFallbackWarning", "register_backend", "SimulationResult", "Simulator", "TemporalSimulator",
           "cython_available", "is_temporal", "run_analog"]
