"""The target framework: what a chip can hold (:class:`Constraints`), what a graph breaks (:class:`Violation`) and
the interface every target implements (:class:`Target`), with the registry :data:`TARGETS`.

A target is one registry entry. It has

- ``name`` and ``description``;
- ``constraints``: a frozen :class:`Constraints` record (formats, limits, what the chip supports);
- ``pipeline``: the legalization pipeline, text of ordinary passes (``snncc.passes``), that takes an snn-level
  graph to the target's form (the ``hw`` level for chips; an exchange format such as NIR may stay at ``snn``);
- ``check(graph) -> list[Violation]``: every violation at once, before anything is written;
- ``legalize(graph) -> graph``: run the pipeline (the default runs :attr:`pipeline`);
- ``float_pipeline``: the passes that keep the graph a float snn-level graph but make it compute what the chip
  will (Loihi: max pooling as OR gates and, on Loihi 1, the reset to zero), and ``trainable_form(graph)``,
  which runs it: the graph that ``snncc finetune --target NAME`` trains, so that the fine-tuning sees the chip's
  approximations (empty: the target has none, and fine-tuning for it is refused);
- ``package(graph, directory, context) -> list[str]``: write the target's own files into ``directory`` (a fresh
  temporary directory, see :mod:`snncc.targets.bundle`) and return their names; the bundle adds
  ``manifest.json`` and ``README.md`` and renames the directory into place;
- ``backend``: the name of the runtime backend that emulates it (``None``: none), used by ``snncc verify``;
- ``resources(graph) -> dict``, ``io_spec(graph) -> dict`` and ``energy(synops) -> dict`` for the manifest.

Adding a target (NIR, SpiNNaker, BrainScaleS-2) is writing one subclass and calling :func:`register_target`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from snncc.errors import SnnccError
from snncc.ir import Graph


class TargetError(SnnccError):
    """A graph does not fit a target (the message lists every violation), or a bundle is invalid."""


@dataclass(frozen=True)
class Constraints:
    """What one chip (or format) can hold, as data. ``None`` means no limit.

    Formats are text: ``int8``, ``int24`` (a signed 24-bit state), ``float32``. ``neurons_per_core``: compartments
    of one core; ``fan_in``/``fan_out``: synapses into / out of one neuron; ``synaptic_memory_bits``: synapse
    memory of one core; ``cores_per_chip``, ``chips``; ``timestep_s``: the length of one algorithmic step (None:
    the chip runs as fast as its slowest core, no fixed step). ``neuron_models``, ``resets`` and ``codings``: what
    the chip runs. ``graded_spikes``: whether a spike may carry an integer payload (Loihi 2). ``sources``: where
    each limit comes from.
    """

    weight_format: str
    state_format: str
    neurons_per_core: int | None
    fan_in: int | None
    fan_out: int | None
    synaptic_memory_bits: int | None
    cores_per_chip: int | None
    chips: int | None
    timestep_s: float | None
    neuron_models: tuple[str, ...]
    resets: tuple[str, ...]
    codings: tuple[str, ...]
    graded_spikes: bool = False
    sources: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Violation:
    """One thing a graph does that the target cannot: the node, the limit, the actual value and the remedy."""

    node: str
    limit: str
    actual: str
    remedy: str

    def __str__(self) -> str:
        return f"{self.node}: {self.limit}; actual {self.actual}; remedy: {self.remedy}"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PackageContext:
    """What ``package`` may read beyond the graph: the float (snn-level) graph it came from."""

    source: Graph | None = None
    extra: dict = field(default_factory=dict)


class Target:
    """Base of every target; see the module docstring for the interface."""

    name: str = ""
    description: str = ""
    constraints: Constraints
    pipeline: str = ""
    float_pipeline: str = ""
    backend: str | None = None
    #: The energy of one synaptic operation in joules and the paper it comes from (None: not published).
    energy_per_synop_j: float | None = None
    energy_source: str = ""

    #: What ``describe`` says of the target's options (empty: none).
    options_text: str = ""

    @property
    def form_name(self) -> str:
        """The name ``trainable_form`` marks its graphs with: the target's name, or what every system of the same
        chip shares (a Loihi 1 model fine-tuned for one chip is fine-tuned for 32 of them)."""
        return self.name

    def with_options(self, options: dict[str, str]) -> Target:
        """This target with the options of a ``name{key=value,...}`` spec (:func:`get_target`)."""
        raise TargetError(f"target {self.name!r} takes no options (got {', '.join(sorted(options))}); name it "
                          "alone")

    def check(self, graph: Graph) -> list[Violation]:
        """Every violation of the target's constraints by ``graph`` (an snn-level graph), all at once."""
        raise NotImplementedError

    def legalize(self, graph: Graph) -> Graph:
        """``graph`` in the target's form: the legalization pipeline, run on the pass machinery."""
        from snncc.passes import run_pipeline

        self.require_fits(graph)
        return run_pipeline(graph, self.pipeline)

    def trainable_form(self, graph: Graph) -> Graph:
        """``graph`` (snn level) after :attr:`float_pipeline`: still a float SNN, but one that computes what the
        chip will, for fine-tuning against the chip's approximations, marked ``attrs["target_form"] = name`` (a
        graph already in this form is returned as it is); every violation of the target is raised first (a
        coding the target refuses, a model that does not fit)."""
        from snncc.passes import run_pipeline

        if not self.float_pipeline:
            raise TargetError(f"target {self.name!r} has no float form to fine-tune for; fine-tune without "
                              "--target, or choose a target that has one (snncc targets)")
        self.require_fits(graph)
        if graph.attrs.get("target_form") == self.form_name:
            return graph
        out = run_pipeline(graph, self.float_pipeline)
        out.attrs["target_form"] = self.form_name
        return out

    def require_fits(self, graph: Graph) -> None:
        """Raise :class:`TargetError` listing every violation, if there is any."""
        violations = self.check(graph)
        if violations:
            raise TargetError(f"the model does not fit {self.name} ({len(violations)} violation"
                              f"{'s' if len(violations) != 1 else ''}):\n  " +
                              "\n  ".join(str(v) for v in violations))

    def package(self, graph: Graph, directory: Path, context: PackageContext) -> list[str]:
        """Write the target's own files into ``directory``; return their names (relative paths)."""
        raise NotImplementedError

    def io_spec(self, graph: Graph) -> dict:
        """What the manifest says about the legalized graph beyond shapes: ``input_encoding``, ``readout``,
        ``latency_steps``, ``timing`` (a sentence for the bundle's README: when the answer is read, in the
        target's own terms), ``files`` (name -> description of the target's own files), ``details``."""
        return {}

    def resources(self, graph: Graph) -> dict:
        """Resource use of the legalized graph: per core and per chip (the manifest's ``resources``)."""
        return {}

    def energy(self, synops_per_inference: float) -> dict:
        """The energy ``synops_per_inference`` synaptic operations imply, with the figure's source."""
        if self.energy_per_synop_j is None:
            return {"joules": None, "source": "no published per-operation figure"}
        return {"joules_per_synop": self.energy_per_synop_j,
                "joules": synops_per_inference * self.energy_per_synop_j, "source": self.energy_source}

    def describe(self) -> str:
        """A few lines for ``snncc targets``."""
        c = self.constraints
        lines = [f"{self.name}: {self.description}",
                 f"  weights {c.weight_format}, state {c.state_format}, neurons/core {c.neurons_per_core}, "
                 f"fan-in {c.fan_in}, fan-out {c.fan_out}, synaptic memory/core {c.synaptic_memory_bits} bits, "
                 f"cores/chip {c.cores_per_chip}, chips {c.chips}" + self.options_text,
                 f"  neuron models {', '.join(c.neuron_models)}; resets {', '.join(c.resets)}; codings "
                 f"{', '.join(c.codings)}; graded spikes {'yes' if c.graded_spikes else 'no'}",
                 f"  pipeline: {self.pipeline or '(none)'}; emulator: {self.backend or 'none'}"]
        return "\n".join(lines)


#: Every registered target by name.
TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Add ``target`` to :data:`TARGETS` (a name registered twice is an error)."""
    if target.name in TARGETS:
        raise TargetError(f"a target named {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


#: Modules that register targets when imported; :func:`get_target` imports them on first use.
TARGET_MODULES: list[str] = ["snncc.targets.loihi.target", "snncc.targets.nir.target"]


def load_targets() -> None:
    """Import every module of :data:`TARGET_MODULES`, which registers the targets, their legalization passes and
    their emulator backends. The pass and backend registries call it when asked for a name they do not hold, so a
    pipeline may name ``nir-reset`` or a simulation ``backend="loihi2"`` without importing a target first."""
    import importlib

    for module in TARGET_MODULES:
        importlib.import_module(module)


_SPEC = re.compile(r"^\s*([a-z][a-z0-9-]*)\s*(?:\{([^{}]*)\})?\s*$")


def get_target(name: str) -> Target:
    """The target a spec names: a registered name (``loihi1``), or one with options, ``name{key=value,...}``
    (``loihi1{chips=32}``: a system of 32 chips), which the target interprets (:meth:`Target.with_options`).
    Raises TargetError listing the known targets, or naming the option it does not take."""
    load_targets()
    match = _SPEC.match(name)
    base = match.group(1) if match else name
    if base not in TARGETS:
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}")
    if match is None or not match.group(2):
        return TARGETS[base]
    options = {}
    for item in filter(None, (part.strip() for part in match.group(2).split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise TargetError(f"target {name!r}: option {item!r} is not key=value")
        options[key.strip()] = value.strip()
    return TARGETS[base].with_options(options) if options else TARGETS[base]


def all_targets() -> dict[str, Target]:
    load_targets()
    return dict(TARGETS)


__all__ = ["Constraints", "PackageContext", "TARGETS", "TARGET_MODULES", "Target", "TargetError", "Violation",
           "all_targets", "get_target", "load_targets", "register_target"]
