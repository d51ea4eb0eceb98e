"""The targets' passes and emulator backends are found by name before any target was imported."""

from __future__ import annotations

import subprocess
import sys

# A fresh interpreter: in the test session other tests have imported the targets already.
_FRESH = """
import sys
from snncc.passes import parse_pipeline
from snncc.runtime import BACKENDS
assert not any(m.startswith("snncc.targets.") and m != "snncc.targets" for m in sys.modules), sorted(sys.modules)
assert "loihi2" not in BACKENDS
print([p.name for p in parse_pipeline("canonicalize,normalize,convert-rate,nir-reset,loihi-fold")])
"""

_BACKEND = """
import numpy as np
from snncc.ir import SNN, Graph, IF, ops
from snncc.runtime import Simulator
g = Graph(level=SNN)
x = g.add(ops.Input(shape=(2,)))
g.outputs = [g.add(ops.Readout(), [g.add(ops.Population(neuron=IF()), [x])])]
try:
    Simulator(g, timesteps=4, backend="loihi2")
except Exception as exc:  # the emulator wants a legalized graph: a refusal of the graph, not of the name
    assert "unknown backend" not in str(exc), exc
    print("refused:", type(exc).__name__)
else:
    print("built")
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_pipeline_names_target_passes_without_importing_a_target():
    assert _run(_FRESH).strip() == "['canonicalize', 'normalize', 'convert-rate', 'nir-reset', 'loihi-fold']"


def test_a_simulation_names_an_emulator_backend_without_importing_a_target():
    assert _run(_BACKEND).strip() in {"built", "refused: SimulationError"}


def test_an_unknown_pass_still_lists_every_pass_including_the_targets():
    out = _run("""
from snncc.errors import PipelineSyntaxError
from snncc.passes import parse_pipeline
try:
    parse_pipeline("no-such-pass")
except PipelineSyntaxError as exc:
    print(exc)
""")
    assert "unknown pass 'no-such-pass'" in out and "nir-reset" in out and "loihi-quantize" in out
