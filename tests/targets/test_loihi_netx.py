"""The netx HDF5 of a Loihi bundle, read back by a reader written here from lava-dl's netx schema (h5py only)."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.ir import ops
from snncc.passes import run_pipeline
from snncc.targets.loihi.legalize import LoihiFold, LoihiQuantize

h5py = pytest.importorskip("h5py")


def read_layers(path):
    """What netx's loader reads (src/lava/lib/dl/netx/hdf5.py and utils.NetDict): /layer/<i> in order, `type` as
    ASCII, `shape` channels first, weights and biases as integers, `neuron/{type, iDecay, vDecay, vThMant,
    refDelay, gradedSpike}`."""
    def text(d):
        v = d[()]
        return (v[0] if getattr(v, "shape", ()) else v).decode("ascii")

    layers = []
    with h5py.File(path, "r") as f:
        for i in range(len(f["layer"])):
            g = f["layer"][f"{i}"]
            layer = {"type": text(g["type"]), "shape": tuple(int(s) for s in g["shape"][()])}
            for key in ("weight", "bias"):
                if key in g:
                    layer[key] = g[key][()].astype(int)
            for key in ("stride", "padding", "dilation", "groups"):
                if key in g:
                    layer[key] = g[key][()]
            if "neuron" in g:
                n = g["neuron"]
                layer["neuron"] = {"type": text(n["type"]), **{k: int(n[k][()]) for k in
                                                                 ("iDecay", "vDecay", "vThMant", "refDelay")},
                                   "gradedSpike": bool(n["gradedSpike"][()])}
            layers.append(layer)
    return layers


@pytest.mark.parametrize("variant", ["loihi1", "loihi2"])
def test_netx_layers_shapes_and_parameters_match_the_hw_graph(snn, tmp_path, variant):
    from snncc.targets.loihi.netx import write_netx

    hw = run_pipeline(snn, [LoihiFold(), LoihiQuantize(variant=variant)])
    write_netx(hw, tmp_path)
    layers = read_layers(tmp_path / "network.net")
    assert [layer["type"] for layer in layers] == ["input", "conv", "conv", "flatten", "dense", "dense"]
    assert layers[0]["shape"] == (1, 8, 8)
    conv, gate, _, fc, out = layers[1:]
    assert conv["shape"] == (4, 8, 8) and gate["shape"] == (4, 4, 4) and fc["shape"] == (12,)
    np.testing.assert_array_equal(conv["weight"], hw.op("conv").weight)
    np.testing.assert_array_equal(conv["bias"] << 6, hw.op("conv").bias)
    assert conv["padding"].tolist() == [1, 1] and conv["stride"].tolist() == [1, 1] and conv["groups"] == 1
    assert gate["groups"] == 4 and np.all(gate["weight"] == 2)
    np.testing.assert_array_equal(fc["weight"], hw.op("fc").weight)
    neuron = hw.op("s2").neuron
    assert fc["neuron"] == {"type": "CUBA", "iDecay": neuron.current_decay, "vDecay": neuron.voltage_decay,
                            "vThMant": (neuron.threshold - 1) >> 6, "refDelay": 1, "gradedSpike": False}
    # netx's loader passes du = iDecay - 1 to Lava's LIF, whose current decays by du + 1 (ds_offset)
    assert fc["neuron"]["iDecay"] - 1 == 4095
    assert out["neuron"]["vThMant"] == 2 ** 17 - 1  # the readout integrates and is read, not thresholded
    assert isinstance(hw.op("out"), ops.Linear) and out["shape"] == (3,)


def test_snnccs_own_reader_agrees_and_refuses_other_files(snn, tmp_path):
    from snncc.errors import FormatError
    from snncc.targets.loihi.netx import read_netx, write_netx

    hw = run_pipeline(snn, [LoihiFold(), LoihiQuantize(variant="loihi2")])
    write_netx(hw, tmp_path)
    ours, theirs = read_netx(tmp_path / "network.net"), read_layers(tmp_path / "network.net")
    assert [layer["type"] for layer in ours] == [layer["type"] for layer in theirs]
    assert ours[4]["neuron"]["snnccReset"] == "subtract" and ours[1]["snnccRole"] == "neurons"
    # the folded normalization pads with the stored value (0.2 * 0.5 + 0.2) * 255 = 76.5, rounded to an integer
    assert ours[1]["snnccPadValue"].tolist() in ([76], [77])
    assert ours[2]["snnccRole"] == "or-gate"
    (tmp_path / "bad.net").write_bytes(b"not hdf5")
    with pytest.raises(FormatError, match="not an HDF5 file"):
        read_netx(tmp_path / "bad.net")
