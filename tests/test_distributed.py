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
