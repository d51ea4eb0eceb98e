"""The ``.snn`` file form: a zip archive holding ``graph.json`` and one ``.npy`` file per array.

``graph.json``::

    {"format": "snncc.snn", "schema_version": 1, "snncc_version": "...", "level": "snn",
     "attrs": {...}, "outputs": [...],
     "nodes": [{"id": "conv1", "kind": "Conv2d", "inputs": ["input"], "params": {...}, "meta": {...}}, ...]}

A parameter value is JSON, except ``{"array": "arrays/3.npy"}`` for a numpy array, ``{"scalar": "arrays/4.npy"}``
for a numpy scalar given for an array parameter (``Affine(scale=np.float32(0.5))``: a 0-d ``.npy`` read back as the
same scalar, so its dtype and its arithmetic survive), ``{"neuron": {...}}`` for a neuron model and
``{"float": "inf"}`` for a non-finite float; a parameter that is None by default and None is left out.
Arrays keep their dtype (float32 at the ann and snn levels; int8, int32, ... at the hw level) and integer neuron
parameters stay JSON integers. A node placed on a chip (hw level) has ``"placement": {"chip": 0, "core": 3}``.
Reading uses ``allow_pickle=False`` and validates everything (format, version, node keys, op kinds, parameter
names, shapes via the op constructors, the level verifier); writing goes through
:func:`snncc.fileio.atomic_writer`, so a failure never leaves a half-written file.

Version 1 covers all of this: ann- and snn-level files are written exactly as before the hw level existed (an old
reader refuses an hw-level file by its unknown level, never misreads it), so there is no version 2 yet.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from snncc import __version__
from snncc.errors import FormatError, IRError
from snncc.fileio import atomic_writer
from snncc.ir.graph import Graph
from snncc.ir.neurons import NeuronModel, neuron_from_json
from snncc.ir.ops import OPS
from snncc.ir.placement import Placement
from snncc.ir.verify import verify

FORMAT = "snncc.snn"
SCHEMA_VERSION = 1
_NODE_KEYS = frozenset({"id", "kind", "inputs", "params", "meta", "placement"})


def _encode(value: object, arrays: dict[str, np.ndarray]) -> object:
    if isinstance(value, np.ndarray):
        name = f"arrays/{len(arrays)}.npy"
        arrays[name] = value
        return {"array": name}
    if isinstance(value, NeuronModel):
        return {"neuron": {k: _encode(v, arrays) for k, v in value.to_json().items()}}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": str(value)}
    if isinstance(value, tuple):
        return [_encode(v, arrays) for v in value]
    return value


def _encode_param(annotation: str, value: object, arrays: dict[str, np.ndarray]) -> object:
    if isinstance(value, np.generic) and annotation.startswith("np.ndarray"):
        # Ops keep a numpy scalar given for an array field as it is (canonicalize merges scalar Affines in
        # float64); as a JSON number it would come back as a float without a shape.
        encoded = _encode(np.asarray(value), arrays)
        return {"scalar": encoded["array"]}
    return _encode(value, arrays)


def _decode(value: object, archive: zipfile.ZipFile, where: str) -> object:
    if isinstance(value, dict):
        if set(value) == {"array"}:
            name = value["array"]
            try:
                with archive.open(name) as fh:
                    return np.load(io.BytesIO(fh.read()), allow_pickle=False)
            except (KeyError, ValueError, OSError) as exc:
                raise FormatError(f"{where}: array {name!r} is missing or unreadable: {exc}") from None
        if set(value) == {"scalar"}:
            scalar = _decode({"array": value["scalar"]}, archive, where)
            if scalar.ndim != 0:
                raise FormatError(f"{where}: scalar {value['scalar']!r} has shape {scalar.shape}")
            return scalar[()]
        if set(value) == {"neuron"}:
            fields_ = {k: _decode(v, archive, where) for k, v in value["neuron"].items()}
            return neuron_from_json(fields_)
        if set(value) == {"float"}:
            return float(value["float"])
        raise FormatError(f"{where}: unexpected object {sorted(value)}")
    if isinstance(value, list):
        return tuple(_decode(v, archive, where) for v in value)
    return value


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in graph metadata")


def graph_to_json(graph: Graph, arrays: dict[str, np.ndarray]) -> dict:
    nodes = []
    for node in graph.topological_order():
        op = graph.op(node)
        params = {f.name: _encode_param(str(f.type), getattr(op, f.name), arrays) for f in fields(op)
                  if not (f.default is None and getattr(op, f.name) is None)}
        entry = {"id": node, "kind": op.kind, "inputs": graph.inputs(node), "params": params,
                 "meta": graph.meta.get(node, {})}
        if graph.placement(node) is not None:
            entry["placement"] = graph.placement(node).to_json()
        nodes.append(entry)
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "snncc_version": __version__,
            "level": graph.level, "attrs": graph.attrs, "outputs": graph.outputs, "nodes": nodes}


def save(graph: Graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` atomically (verified first: an invalid graph is never written)."""
    verify(graph)
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    document = json.dumps(graph_to_json(graph, arrays), indent=1, default=_json_default, allow_nan=False)
    with atomic_writer(path) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("graph.json", document)
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, np.array(array, order="C"), allow_pickle=False)
            archive.writestr(name, buffer.getvalue())
    return path


def load(path: str | Path) -> Graph:
    """Read and validate a ``.snn`` file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                document = json.loads(archive.read("graph.json"))
            except KeyError:
                raise FormatError(f"{path}: not an .snn file (no graph.json)") from None
            return _graph_from_json(document, archive, path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, json.JSONDecodeError, EOFError, zipfile.LargeZipFile) as exc:
        raise FormatError(f"{path}: corrupt or truncated .snn file ({exc})") from None


def _graph_from_json(doc: dict, archive: zipfile.ZipFile, path: Path) -> Graph:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FormatError(f"{path}: not an .snn file (format {doc.get('format') if isinstance(doc, dict) else doc!r})")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise FormatError(f"{path}: schema version {version} is not supported (this snncc reads version "
                          f"{SCHEMA_VERSION}); re-compile the model with this snncc")
    for key in ("level", "nodes", "outputs", "attrs"):
        if key not in doc:
            raise FormatError(f"{path}: graph.json lacks {key!r}")
    graph = Graph(level=doc["level"])
    graph.attrs = dict(doc["attrs"])
    graph.attrs["level"] = doc["level"]
    for entry in doc["nodes"]:
        where = f"{path}: node {entry.get('id')!r}" if isinstance(entry, dict) else f"{path}: node {entry!r}"
        if not isinstance(entry, dict) or not set(entry) <= _NODE_KEYS:
            raise FormatError(f"{where}: a node entry is an object with the keys {sorted(_NODE_KEYS)}, got "
                              f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
        kind = entry.get("kind")
        if kind not in OPS:
            raise FormatError(f"{where}: unknown op kind {kind!r}")
        cls = OPS[kind]
        params = entry.get("params", {})
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise FormatError(f"{where}: unknown parameters {sorted(unknown)} for {kind}")
        try:
            op = cls(**{k: _decode(v, archive, where) for k, v in params.items()})
            node = graph.add(op, entry.get("inputs", []), name=entry["id"], **entry.get("meta", {}))
        except (IRError, TypeError, KeyError) as exc:
            raise FormatError(f"{where}: {exc}") from None
        if node != entry["id"]:
            raise FormatError(f"{where}: duplicate node id")
        if "placement" in entry:
            place = entry["placement"]
            if not isinstance(place, dict) or set(place) != {"chip", "core"}:
                raise FormatError(f"{where}: placement must be {{\"chip\": int, \"core\": int}}, got {place!r}")
            try:
                graph.place(node, Placement(**place))
            except IRError as exc:
                raise FormatError(f"{where}: {exc}") from None
    graph.outputs = list(doc["outputs"])
    try:
        verify(graph)
    except IRError as exc:
        raise FormatError(f"{path}: {exc}") from None
    return graph
