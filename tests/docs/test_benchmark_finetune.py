"""docs/scripts/benchmark_finetune.py's report: the median of repeated runs and the markdown table (the ratio to the
faster peer, never to snncc's own baseline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "scripts" / "benchmark_finetune.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("benchmark_finetune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(speed: float, load: float = 2.0) -> dict:
    return {"images_per_second": speed, "load_average": [load, load + 1], "peak_rss_mib": 1000.0}


def test_median_run_keeps_every_speed(script):
    runs = [_run(3.0, 1.0), _run(9.0, 2.0), _run(5.0, 3.0), _run(4.0, 4.0)]
    median = script._median_run(runs)
    assert median["images_per_second"] == 4.0 and median["load_average"] == [4.0, 5.0]  # the lower middle run
    assert median["all_images_per_second"] == [3.0, 9.0, 5.0, 4.0]
    assert script._median_run(runs[:3])["images_per_second"] == 5.0


def test_markdown_ratio_is_to_the_faster_peer(script):
    frameworks = ["snncc", "snncc-baseline", "spikingjelly", "snntorch"]
    speeds = {"snncc": 12.0, "snncc-baseline": 3.0, "spikingjelly": 4.0, "snntorch": 5.0}
    results = {8: {f: script._median_run([_run(v), _run(v + 1)]) for f, v in speeds.items()}}
    report = {"batch_size": 64, "steps": 8, "threads": 2, "repeats": 2, "frameworks": frameworks, "note": "",
              "machine": {"cpu": "cpu", "instruction_sets": ["avx2"], "cores": 2}, "results": results}
    text = script.markdown(report)
    assert "| 8 | 12.0 | 3.0 | 4.0 | 5.0 | 2.40x |" in text  # 12 / max(4, 5), the baseline not a peer
    assert "median of 2 runs" in text and "snncc 12.0/13.0" in text
    assert "snntorch 2.0-3.0" in text  # the load average before and after


def test_markdown_says_when_the_peers_kept_freed_memory(script):
    results = {8: {f: script._median_run([_run(v)]) for f, v in {"snncc": 6.0, "snntorch": 5.0}.items()}}
    report = {"batch_size": 64, "steps": 8, "threads": 2, "repeats": 1, "frameworks": ["snncc", "snntorch"],
              "note": "", "machine": {"cpu": "cpu", "instruction_sets": [], "cores": 2}, "results": results}
    assert "GLIBC_TUNABLES" not in script.markdown(report)
    report["peers_keep_freed_memory"] = True
    assert f"GLIBC_TUNABLES={script.KEEP_FREED_MEMORY}" in script.markdown(report)
