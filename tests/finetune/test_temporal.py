"""Fine-tuning a temporally coded (FS) graph: the K-step windows and the pipelined schedule trained end to end."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.errors import SnnccError  # noqa: E402
from snncc.finetune import FinetuneOptions, finetune  # noqa: E402
from snncc.ir import ops  # noqa: E402
from snncc.passes import PassContext, run_pipeline  # noqa: E402
from snncc.runtime import Simulator  # noqa: E402
from snncc.runtime.temporal import TemporalSimulator  # noqa: E402
from tests.conftest import small_cnn  # noqa: E402
from tests.finetune.tiny import SCALING, training_set  # noqa: E402

STEPS = 4


def _fs_cnn():
    x, _ = training_set(64, seed=2)
    graph = run_pipeline(small_cnn(), f"canonicalize,normalize,convert-fs{{steps={STEPS}}}",
                         PassContext(calibration=SCALING.apply(x)))
    graph.attrs["input_scaling"] = SCALING.to_json()
    return graph


def _fs_neurons(graph) -> dict:
    return {n: graph.op(n).neuron for n in graph.topological_order() if isinstance(graph.op(n), ops.Population)}


def test_surrogate_trains_the_fs_parameters_and_the_weights_and_the_runtime_runs_the_result():
    graph, (x, y) = _fs_cnn(), training_set()
    latency = TemporalSimulator(graph).latency
    assert latency == STEPS * len(_fs_neurons(graph))
    options = FinetuneOptions(timesteps=latency, epochs=2, lr=3e-3, batch_size=8, limit=48, val_limit=16)
    tuned = finetune(graph, (x, y), "surrogate", options)
    history = tuned.attrs["finetune"]["history"]
    assert history[1]["loss"] < history[0]["loss"]
    before, after = _fs_neurons(graph), _fs_neurons(tuned)
    for node, neuron in before.items():  # every window parameter of every population moved
        for field in ("threshold", "height", "weight"):
            assert getattr(after[node], field) != getattr(neuron, field), (node, field)
    assert not np.array_equal(tuned.op("conv1").weight, graph.op("conv1").weight)
    # The recorded validation accuracy is the temporal simulator's on the held-back images with the written graph.
    runtime = Simulator(tuned, timesteps=None, backend="reference").run(x[32:48])
    assert tuned.attrs["finetune"]["val_accuracy"][-1] == runtime.accuracy(y[32:48], latency)


@pytest.mark.parametrize("method, timesteps, message", [
    ("surrogate", 8, r"--timesteps 8 is shorter than the latency of this temporally coded graph, 12 steps .* "
                     r"give --timesteps 12"),
    ("proxy", 12, r"method 'proxy' needs the ANN the rate conversion assumed, .* use --method surrogate"),
])
def test_what_cannot_train_an_fs_graph_is_refused(method, timesteps, message):
    graph = _fs_cnn()
    assert TemporalSimulator(graph).latency == 12
    with pytest.raises(SnnccError, match=message):
        finetune(graph, training_set(), method, FinetuneOptions(timesteps=timesteps, limit=48, val_limit=16))
