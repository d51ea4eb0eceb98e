"""Run an NIR graph in the simulators of the peers (snnTorch, Norse), to check what they make of a file.

Each runner loads the graph with that package's own NIR importer and steps it ``timesteps`` times on the same
input at every step (snncc's analog input current), batched; it returns the running mean of the graph's output,
``(T, N, *shape)``, the quantity snncc's Readout reports, so the two compare element by element and by argmax.
Both packages are optional (``pip install snntorch`` / ``norse``); a missing one raises ImportError.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _running_mean(step: Callable, x: np.ndarray, timesteps: int, batch_size: int) -> np.ndarray:
    import torch

    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32))
            outputs, total, state = [], 0.0, None
            for t in range(timesteps):
                y, state = step(batch, state)
                total = total + y.double()
                outputs.append((total / (t + 1)).float().numpy())
            parts.append(np.stack(outputs))
    return np.concatenate(parts, axis=1)


def run_snntorch(graph, x: np.ndarray, timesteps: int, batch_size: int = 500) -> np.ndarray:
    """snnTorch 1.0's ``import_from_nir``: its neurons keep their state inside the modules (init_hidden), so
    the module is rebuilt for every batch."""
    import contextlib
    import io

    from snntorch.import_nir import import_from_nir

    module = None

    def step(batch, state):
        nonlocal module
        if state is None:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints while it imports
                module = import_from_nir(graph)
        out = module(batch)
        return (out[0] if isinstance(out, tuple) else out), True

    return _running_mean(step, x, timesteps, batch_size)


def run_norse(graph, x: np.ndarray, timesteps: int, dt: float = 1e-4, batch_size: int = 500) -> np.ndarray:
    """Norse 1.1's ``from_nir`` (a stateful graph executor: ``module(x, state) -> (y, state)``)."""
    import warnings

    import norse.torch as norse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nirtorch.load's deprecation warning
        module = norse.from_nir(graph, dt=dt)
    return _running_mean(lambda batch, state: module(batch, state), x, timesteps, batch_size)


PEERS: dict[str, Callable] = {"snntorch": run_snntorch, "norse": run_norse}
