"""Pass infrastructure: the Pass base class, the registry, text pipelines and the pass manager.

A pass is a frozen dataclass with a kebab-case ``name``, typed option fields and ``run(graph, context)`` that
rewrites the graph in place and returns whether it changed anything. :meth:`Pass.apply` works on a clone, checks
the input level, runs the pass, runs the level verifier and wraps any failure in a :class:`PassError` naming the
pass and the pipeline that ran before it.

Pipelines are text that round-trips: ``canonicalize,normalize{percentile=99.9},convert-rate{v_init=0.5}``.
Set ``SNNCC_DEBUG_PASSES=1`` to print each pass and the graph after it.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar

import numpy as np

from snncc.errors import PassError, PipelineSyntaxError, SnnccError
from snncc.ir import Graph, to_text, verify


@dataclass
class PassContext:
    """What passes may read beyond the graph: calibration inputs (already scaled) and a seed."""

    calibration: np.ndarray | None = None
    seed: int = 0
    progress: bool = False


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str] = ""
    #: Level the input graph must be at (None: any).
    requires_level: ClassVar[str | None] = None
    #: (option, value) -> a known cost of that choice that the user should hear about (``snncc compile`` prints it).
    option_notes: ClassVar[dict[tuple[str, object], str]] = {}

    def notes(self) -> list[str]:
        """The :attr:`option_notes` that apply to this pass's options, each prefixed with the pass."""
        return [f"{self.to_text()}: {note}" for (option, value), note in self.option_notes.items()
                if getattr(self, option) == value]

    def run(self, graph: Graph, context: PassContext) -> bool:
        raise NotImplementedError

    def apply(self, graph: Graph, context: PassContext | None = None, before: str = "") -> tuple[Graph, bool]:
        """Run on a clone of ``graph``; returns the new graph and whether it changed."""
        context = context or PassContext()
        where = f"pass {self.to_text()!r}" + (f" (after {before})" if before else "")
        if self.requires_level is not None and graph.level != self.requires_level:
            raise PassError(f"{where}: needs a graph at the {self.requires_level} level, got {graph.level}")
        result = graph.clone()
        try:
            changed = self.run(result, context)
            verify(result)
        except PassError as exc:
            raise PassError(f"{where}: {exc}") from exc
        except SnnccError as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        record = list(result.attrs.get("passes", []))
        record.append(self.to_text())
        result.attrs["passes"] = record
        if os.environ.get("SNNCC_DEBUG_PASSES"):
            print(f"--- after {self.to_text()} (changed={changed})\n{to_text(result)}", file=sys.stderr)
        return result, changed

    def to_text(self) -> str:
        options = [f"{f.name}={_format_option(getattr(self, f.name))}" for f in fields(self)
                   if f.default is MISSING or getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(options) + "}" if options else "")


def _format_option(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse_option(cls: type[Pass], key: str, text: str) -> object:
    field_types = {f.name: f.type for f in fields(cls)}
    if key not in field_types:
        known = ", ".join(sorted(field_types)) or "none"
        raise PipelineSyntaxError(f"pass {cls.name!r} has no option {key!r} (options: {known})")
    kind = field_types[key]
    try:
        if kind in (bool, "bool"):
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        if kind in (int, "int"):
            return int(text)
        if kind in (float, "float"):
            return float(text)
        return text
    except ValueError:
        raise PipelineSyntaxError(f"pass {cls.name!r}: option {key}={text!r} is not a valid {kind}") from None


PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    PASSES[cls.name] = cls
    return cls


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """Parse ``name{key=value,...},name,...`` into pass instances."""
    passes, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _ITEM.match(text, position)
        if not match or match.end() == position:
            raise PipelineSyntaxError(f"cannot parse pipeline {text!r} at position {position}: "
                                      "expected name or name{key=value,...}")
        name, body = match.group(1), match.group(2)
        if name not in PASSES:
            from snncc.targets.base import load_targets  # the targets register their passes when they load

            load_targets()
        if name not in PASSES:
            raise PipelineSyntaxError(f"unknown pass {name!r}; available: {', '.join(sorted(PASSES))}")
        cls = PASSES[name]
        options = {}
        for item in filter(None, (s.strip() for s in (body or "").split(","))):
            if "=" not in item:
                raise PipelineSyntaxError(f"pass {name!r}: option {item!r} is not key=value")
            key, value = (s.strip() for s in item.split("=", 1))
            options[key] = _parse_option(cls, key, value)
        try:
            passes.append(cls(**options))
        except SnnccError as exc:
            raise PipelineSyntaxError(f"pass {name!r}: {exc}") from None
        position = match.end()
    if not passes:
        raise PipelineSyntaxError("empty pipeline")
    return passes


def pipeline_text(passes: list[Pass]) -> str:
    return ",".join(p.to_text() for p in passes)


def pipeline_notes(pipeline: str | list[Pass]) -> list[str]:
    """Every note on a known cost of the options in ``pipeline`` (:meth:`Pass.notes`), in pipeline order."""
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    return [note for p in passes for note in p.notes()]


def run_pipeline(graph: Graph, pipeline: str | list[Pass], context: PassContext | None = None) -> Graph:
    """Run every pass in order. ``graph.attrs['pipeline']`` records how the graph was made: the pipeline it came
    with (if any), then this one's passes, so that a graph compiled, then legalized or put in a chip's float form,
    still says how it was compiled."""
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    before = graph.attrs.get("pipeline", "")
    done: list[Pass] = []
    for p in passes:
        graph, _ = p.apply(graph, context, before=pipeline_text(done))
        done.append(p)
    graph.attrs["pipeline"] = ",".join(text for text in (before, pipeline_text(passes)) if text)
    return graph
