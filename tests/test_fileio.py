"""The atomic writer: the user's umask decides the mode, a failing writer leaves the old file and no debris, and
every file snncc writes goes through it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from snncc import fileio
from snncc.api import plot_accuracy, write_json
from snncc.ir import save
from tests.conftest import small_cnn

UMASKS = [0o022, 0o077, 0o002]


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", UMASKS)
def test_new_file_gets_the_mode_the_umask_allows(tmp_path, umask, mask):
    umask(mask)
    path = fileio.write_text(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert _mode(path) == 0o666 & ~mask  # 0644 under 022, never mkstemp's 0600


@pytest.mark.parametrize("mask", UMASKS)
def test_every_snncc_writer_honours_the_umask(tmp_path, umask, mask):
    """The .snn file, the JSON report and the plot, as the command line writes them."""
    umask(mask)
    graph = small_cnn()
    report = {"images": 3, "snn": [{"timesteps": 8, "accuracy": 0.5}, {"timesteps": 16, "accuracy": 0.75}]}
    written = [save(graph, tmp_path / "m.snn"), write_json(report, tmp_path / "r.json"),
               plot_accuracy({"m": report}, tmp_path / "p.png")]
    for path in written:
        assert _mode(Path(path)) == 0o666 & ~mask, path
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.snn", "p.png", "r.json"]


def test_fit_cache_entries_get_the_umask_mode_and_read_back(tmp_path, umask, monkeypatch):
    """The FS fit cache goes through the same writer: same mode, and the entry reads back as the same neuron."""
    from snncc.passes import fs_fit

    umask(0o027)
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(tmp_path))
    key = "ab" * 32
    fs_fit._cache_write(key, fs_fit.FitResult(fs_fit.relu_closed_form(4), 0.25, 0.5, "fit"))
    entry = tmp_path / "fs-fits" / f"{key}.json"
    assert _mode(entry) == 0o640
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
    cached = fs_fit._cache_read(key)
    assert cached.method == "cache" and (cached.mse, cached.max_abs_error) == (0.25, 0.5)
    assert cached.neuron.to_json() == fs_fit.relu_closed_form(4).to_json()


def test_a_failing_writer_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = fileio.write_bytes(tmp_path / "data.bin", b"old content")
    with pytest.raises(RuntimeError, match="disk full"):
        with fileio.atomic_writer(path) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_a_failing_first_write_creates_no_file(tmp_path):
    with pytest.raises(TypeError):
        fileio.write_json({"value": object()}, tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_snn_save_keeps_the_old_file(tmp_path, monkeypatch):
    """A save that fails while writing the arrays leaves the previous .snn file readable and unchanged."""
    from snncc import ir
    from snncc.ir import serialize

    path = save(small_cnn(seed=1), tmp_path / "m.snn")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(serialize.np, "save", broken_save)
    with pytest.raises(OSError, match="no space"):
        save(small_cnn(seed=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.snn"]
    np.testing.assert_array_equal(ir.load(path).op("conv1").weight, small_cnn(seed=1).op("conv1").weight)


def test_replacing_a_file_is_complete(tmp_path):
    path = fileio.write_text(tmp_path / "a.txt", "first")
    fileio.write_text(path, "second, longer than the first")
    assert path.read_text() == "second, longer than the first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
