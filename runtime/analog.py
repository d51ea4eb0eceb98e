"""Execute a graph with analog values only: the ANN level, used for calibration and for checking passes.

``run_analog(graph, x)`` evaluates the graph once per sample, in batches, with the kernels of
:mod:`snncc.runtime.kernels`. ``record`` names nodes whose outputs are handed to a callback per batch, which is how
calibration collects activation statistics without holding every activation of the data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from snncc.data import sample_fits
from snncc.errors import SimulationError
from snncc.ir import Graph
from snncc.ir.ops import Input
from snncc.runtime.kernels import apply


def check_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Return ``x`` as float32 of the graph's input shape; flat data feed flat inputs. Raises SimulationError."""
    (node,) = graph.input_nodes() or [None]
    if node is None:
        raise SimulationError("the graph has no input")
    shape = tuple(graph.op(node).shape)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] == shape:
        return x
    if x.ndim >= 2 and sample_fits(x.shape[1:], shape):
        return x.reshape((x.shape[0],) + shape)
    raise SimulationError(f"input data of shape {x.shape[1:]} per sample does not fit the model input "
                          f"{graph.op(node).name!r} of shape {shape}; check the data set and --input-scaling")


def run_analog(graph: Graph, x: np.ndarray, batch_size: int = 256, record: Iterable[str] = (),
               on_batch: Callable[[dict[str, np.ndarray]], None] | None = None) -> list[np.ndarray]:
    """Outputs of the graph for inputs ``x`` (one array per graph output, batch axis first)."""
    x = check_input(graph, x)
    order = graph.topological_order()
    record = set(record)
    outputs: list[list[np.ndarray]] = [[] for _ in graph.outputs]
    for start in range(0, len(x), batch_size):
        values: dict[str, np.ndarray] = {}
        for node in order:
            op = graph.op(node)
            if isinstance(op, Input):
                values[node] = x[start:start + batch_size]
            else:
                values[node] = apply(op, *(values[u] for u in graph.inputs(node)))
        if on_batch is not None:
            on_batch({n: values[n] for n in record})
        for i, out in enumerate(graph.outputs):
            outputs[i].append(values[out])
    return [np.concatenate(parts) for parts in outputs]
