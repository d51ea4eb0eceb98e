"""Fine-tuning checkpoints: a directory that ``--resume`` continues from to the same final weights.

Layout (version 1)::

    DIR/state.json           what the run had done, and which arrays file holds its tensors
    DIR/arrays-EEEEEE.npz    the tensors after epoch E: "param/<name>" (module parameters), "optim/<i>/<key>"
                             (optimizer state of parameter i), "rng/torch" (torch's generator state, uint8)

``state.json``::

    {"format": "snncc.finetune-checkpoint", "schema_version": 1, "snncc_version": "...",
     "epoch": 2, "step": 64, "method": "surrogate", "options": {...}, "graph_sha256": "...", "data_sha256": "...",
     "history": [{"epoch": 1, "loss": ..., "train_accuracy": ..., "val_accuracy": ..., "seconds": ...}, ...],
     "arrays": {"file": "arrays-000002.npz", "sha256": "..."}, "parameters": ["layers.0.weight", ...],
     "optimizer": {"0": {"arrays": ["exp_avg", ...], "values": {...}}, ...}}

Every file is written atomically (:mod:`snncc.fileio`), the arrays file first under a new name, ``state.json`` last:
``state.json`` is the commit point, so a run killed while writing leaves the previous checkpoint whole. The
shuffling needs no stored generator: epoch ``e`` draws its order from ``numpy.random.default_rng([seed, e])``.
Reading uses ``allow_pickle=False`` and checks everything (format, version, keys, the arrays file's SHA-256, array
names, shapes and finiteness); a checkpoint of another input graph, other data or other result-deciding options
(:data:`~snncc.finetune.options.RESULT_OPTIONS`) is refused with the differences named.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snncc import __version__, fileio
from snncc.errors import FormatError
from snncc.ir import Graph
from snncc.ir.serialize import _json_default, graph_to_json

FORMAT = "snncc.finetune-checkpoint"
SCHEMA_VERSION = 1
STATE = "state.json"
_KEYS = {"format", "schema_version", "snncc_version", "epoch", "step", "method", "options", "graph_sha256",
         "data_sha256", "history", "arrays", "parameters", "optimizer"}


def graph_sha256(graph: Graph) -> str:
    """SHA-256 of a graph's content: its JSON form (without the snncc version) and every array's dtype, shape and
    bytes, in node order. Two graphs that simulate alike by construction (the same file, loaded twice) agree."""
    arrays: dict[str, np.ndarray] = {}
    document = graph_to_json(graph, arrays)
    document.pop("snncc_version", None)
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, default=_json_default).encode())
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def data_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of a training set as loaded (float32 samples, int64 labels), whatever file format it came from."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)):
        digest.update(f"{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class Checkpoint:
    """The state of a run after ``epoch`` completed epochs (``step`` optimizer steps)."""

    epoch: int
    step: int
    method: str
    options: dict
    graph_sha256: str
    data_sha256: str
    parameters: dict[str, np.ndarray]
    optimizer: dict[int, dict[str, object]]  # parameter index -> state (numpy arrays, or JSON numbers)
    torch_rng: np.ndarray
    history: list[dict] = field(default_factory=list)


def save_checkpoint(checkpoint: Checkpoint, directory: str | Path) -> Path:
    """Write ``checkpoint`` into ``directory`` (created if needed), atomically as a whole."""
    directory = Path(directory)
    arrays: dict[str, np.ndarray] = {f"param/{name}": value for name, value in checkpoint.parameters.items()}
    optimizer: dict[str, dict] = {}
    for index, state in checkpoint.optimizer.items():
        entry: dict = {"arrays": [], "values": {}}
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                arrays[f"optim/{index}/{key}"] = value
                entry["arrays"].append(key)
            else:
                entry["values"][key] = value
        optimizer[str(index)] = entry
    arrays["rng/torch"] = checkpoint.torch_rng
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    name = f"arrays-{checkpoint.epoch:06d}.npz"
    fileio.write_bytes(directory / name, payload)
    state = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "snncc_version": __version__,
             "epoch": checkpoint.epoch, "step": checkpoint.step, "method": checkpoint.method,
             "options": checkpoint.options, "graph_sha256": checkpoint.graph_sha256,
             "data_sha256": checkpoint.data_sha256, "history": checkpoint.history,
             "arrays": {"file": name, "sha256": hashlib.sha256(payload).hexdigest()},
             "parameters": list(checkpoint.parameters), "optimizer": optimizer}
    fileio.write_json(state, directory / STATE)
    for stale in directory.glob("arrays-*.npz"):  # earlier epochs' tensors, no longer referenced
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return directory


def _corrupt(directory: Path, why: str) -> FormatError:
    return FormatError(f"checkpoint {directory} is corrupt or incomplete: {why}; start afresh without --resume, or "
                       "resume from an intact checkpoint directory")


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read and validate the checkpoint in ``directory``."""
    directory = Path(directory)
    if not (directory / STATE).is_file():
        raise FormatError(f"{directory} is not a fine-tuning checkpoint (no {STATE}); pass the directory given to "
                          "--checkpoint")
    try:
        state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(directory, f"{STATE} is not readable JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _corrupt(directory, f"{STATE} is not a {FORMAT} file")
    if state.get("schema_version") != SCHEMA_VERSION:
        raise FormatError(f"checkpoint {directory} has schema version {state.get('schema_version')}; this snncc "
                          f"reads version {SCHEMA_VERSION}")
    missing = _KEYS - set(state)
    if missing:
        raise _corrupt(directory, f"{STATE} lacks {sorted(missing)}")
    _check_types(directory, state)
    path = directory / state["arrays"]["file"]
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise _corrupt(directory, f"its arrays file {path.name} is missing or unreadable ({exc})") from None
    if hashlib.sha256(payload).hexdigest() != state["arrays"]["sha256"]:
        raise _corrupt(directory, f"{path.name} does not match the SHA-256 that {STATE} records")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _corrupt(directory, f"{path.name} is not a readable .npz ({exc})") from None
    expected = {f"param/{n}" for n in state["parameters"]} | {"rng/torch"}
    expected |= {f"optim/{i}/{k}" for i, entry in state["optimizer"].items() for k in entry["arrays"]}
    if set(arrays) != expected:
        raise _corrupt(directory, f"{path.name} holds {sorted(set(arrays) ^ expected)[:5]} unexpectedly or not")
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _corrupt(directory, f"array {name} is not finite")
    optimizer: dict[int, dict[str, object]] = {}
    for index, entry in state["optimizer"].items():
        optimizer[int(index)] = {**entry["values"], **{k: arrays[f"optim/{index}/{k}"] for k in entry["arrays"]}}
    return Checkpoint(epoch=state["epoch"], step=state["step"], method=state["method"], options=state["options"],
                      graph_sha256=state["graph_sha256"], data_sha256=state["data_sha256"],
                      parameters={n: arrays[f"param/{n}"] for n in state["parameters"]}, optimizer=optimizer,
                      torch_rng=arrays["rng/torch"], history=state["history"])


def _check_types(directory: Path, state: dict) -> None:
    checks = {"epoch": int, "step": int, "method": str, "options": dict, "graph_sha256": str, "data_sha256": str,
              "history": list, "arrays": dict, "parameters": list, "optimizer": dict}
    names = {int: "an integer", str: "a string", dict: "an object", list: "a list"}
    for key, kind in checks.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise _corrupt(directory, f"{key} must be {names[kind]}, got {json.dumps(state[key])[:40]}")
    if state["epoch"] < 0 or state["step"] < 0:
        raise _corrupt(directory, f"epoch {state['epoch']} and step {state['step']} must not be negative")
    arrays = state["arrays"]
    if set(arrays) != {"file", "sha256"} or not all(isinstance(v, str) for v in arrays.values()) \
            or Path(arrays["file"]).name != arrays["file"]:
        raise _corrupt(directory, f"arrays must name a file in the directory and its sha256, got {arrays!r}")
    for index, entry in state["optimizer"].items():
        if not index.isdigit() or not isinstance(entry, dict) or set(entry) != {"arrays", "values"}:
            raise _corrupt(directory, f"optimizer entry {index!r} is malformed")


def check_matches(checkpoint: Checkpoint, directory: str | Path, *, method: str, options: dict, graph: str,
                  data: str) -> None:
    """Refuse to resume ``checkpoint`` under another input graph, data set, method or result-deciding options."""
    differences = []
    if checkpoint.graph_sha256 != graph:
        differences.append("the input .snn differs from the one the checkpoint was trained from")
    if checkpoint.data_sha256 != data:
        differences.append("the training data (after --limit) differ")
    if checkpoint.method != method:
        differences.append(f"method {method!r}, checkpoint {checkpoint.method!r}")
    for name, value in options.items():
        if checkpoint.options.get(name) != value:
            differences.append(f"{name} {value!r}, checkpoint {checkpoint.options.get(name)!r}")
    if differences:
        raise FormatError(f"checkpoint {directory} does not match this run: {'; '.join(differences)}; resume with "
                          "the options, data and .snn of the interrupted run, or start afresh without --resume")
