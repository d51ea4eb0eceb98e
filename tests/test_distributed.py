"""Many processes: the shards of a torchrun world cover the data once, and ``snncc eval`` under torchrun gives the
report of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from snncc.cli import main
from snncc.distributed import DistributedError, World
from tests.conftest import REPO

SAMPLE = REPO / "snncc" / "sample"


@pytest.mark.parametrize("size, count", [(1, 7), (2, 7), (3, 10), (4, 3), (5, 0)])
def test_the_shards_cover_every_item_once_in_order(size, count):
    shards = [World(rank=r, size=size).shard(count) for r in range(size)]
    covered = [i for s in shards for i in range(count)[s]]
    assert covered == list(range(count))
    lengths = [len(range(count)[s]) for s in shards]
    assert max(lengths) - min(lengths) <= 1


def test_a_single_process_world_needs_no_torch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = World.from_env()
    assert (world.rank, world.size, world.is_writer, world.backend) == (0, 1, True, None)
    assert world.total(2.5) == 2.5


def test_a_partial_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributedError, match="MASTER_ADDR.*torchrun"):
        World.from_env()


LEAVING_RANK = """
import numpy as np, torch.distributed as dist
from snncc import distributed
world = distributed.World.from_env()
gathered = world.gather(np.array([world.rank], dtype=np.int64))
distributed.leave()
print(gathered.tolist(), dist.is_initialized())
"""


def test_a_joined_world_is_left_before_exit():
    # Without leave() gloo's threads outlive the interpreter and a quarter of the runs died with SIGABRT after
    # their work was done ("terminate called without an active exception").
    pytest.importorskip("torch.distributed")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        ranks.append(subprocess.Popen([sys.executable, "-c", LEAVING_RANK], env=env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for process in ranks:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        assert out.strip() == "[0, 1] False"


def test_the_command_line_leaves_the_world_and_says_whether_it_finished(monkeypatch, tmp_path):
    import snncc.cli

    calls = []
    monkeypatch.setattr(snncc.cli.distributed, "leave", calls.append)
    assert main(["inspect", str(SAMPLE / "lenet5-mnist.onnx")]) == 0
    assert main(["inspect", str(tmp_path / "missing.snn")]) == 2
    assert calls == [True, False]


def test_eval_under_torchrun_equals_one_process(tmp_path):
    pytest.importorskip("torch.distributed")
    snn = tmp_path / "lenet.snn"
    assert main(["compile", str(SAMPLE / "lenet5-mnist.onnx"), "-o", str(snn), "--calib",
                 str(SAMPLE / "mnist-train-1000.npz"), "--calib-limit", "200", "--quiet"]) == 0
    # 60 images in batches of 30: one process simulates the same two batches that the two ranks simulate, so the
    # gathered results must be identical, not merely close.
    common = ["eval", str(snn), "--data", str(SAMPLE / "mnist-train-1000.npz"), "--limit", "60", "--timesteps", "4,8",
              "--batch-size", "30", "--backend", "reference", "--onnx", str(SAMPLE / "lenet5-mnist.onnx"), "--quiet"]
    assert main([*common, "--report", str(tmp_path / "one.json")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "snncc", *common, "--report", str(tmp_path / "two.json")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["processes"] == 2 and "processes" not in one
    assert two["images"] == one["images"] == 60
    assert two["ann"]["accuracy"] == one["ann"]["accuracy"]
    assert two["snn"] == one["snn"]  # accuracy, spikes and synaptic operations per image at every T
    assert run.stdout.count("spikes/neuron") == 1  # one rank prints the table


def _weights(graph) -> dict:
    import numpy as np

    arrays = {}
    for node in graph.topological_order():
        op = graph.op(node)
        for name in ("weight", "bias"):
            value = getattr(op, name, None)
            if isinstance(value, np.ndarray):
                arrays[f"{node}.{name}"] = value
        threshold = getattr(getattr(op, "neuron", None), "threshold", None)
        if threshold is not None:
            arrays[f"{node}.threshold"] = np.asarray(threshold, dtype=np.float32)
    return arrays


def test_finetune_under_torchrun_equals_one_process(tmp_path):
    """Two data-parallel processes with the same global batch and seed train the same weights as one process, up
    to the order of the floating-point reduction; only rank 0 writes."""
    import numpy as np

    pytest.importorskip("torch.distributed")
    from snncc.ir import load

    snn = tmp_path / "lenet.snn"
    assert main(["compile", str(SAMPLE / "lenet5-mnist.onnx"), "-o", str(snn), "--calib",
                 str(SAMPLE / "mnist-train-1000.npz"), "--calib-limit", "200", "--quiet"]) == 0
    common = ["finetune", str(snn), "--data", str(SAMPLE / "mnist-train-1000.npz"), "--method", "surrogate",
              "--timesteps", "2", "--epochs", "1", "--limit", "100", "--val-limit", "0", "--batch-size", "20",
              "--lr", "1e-3", "--quiet"]
    assert main([*common, "-o", str(tmp_path / "one.snn")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "snncc", *common, "-o", str(tmp_path / "two.snn")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    original, one, two = (_weights(load(tmp_path / n)) for n in ("lenet.snn", "one.snn", "two.snn"))
    assert one.keys() == two.keys() and len(one) > 10
    assert any(not np.array_equal(one[k], original[k]) for k in one)  # it trained
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert load(tmp_path / "two.snn").attrs["finetune"]["processes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".snn") == ["lenet.snn", "one.snn", "two.snn"]
