"""The Loihi targets: check, legalization to the hw level, the emulator and the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snncc.errors import FormatError, PassError
from snncc.ir import SNN, Graph, ops, verify
from snncc.ir.neurons import LIF, CubaLIF
from snncc.runtime import Simulator
from snncc.targets.base import TARGETS, TargetError, get_target
from snncc.targets.bundle import read_bundle
from snncc.targets.emit import emit
from snncc.targets.emit import verify as verify_bundle
from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi import emulator  # noqa: F401  (registers the loihi1 and loihi2 backends)
from snncc.targets.loihi.legalize import LoihiFold

from .conftest import small_snn


def test_both_variants_are_registered_with_their_constraints():
    get_target("loihi1")
    assert {"loihi1", "loihi2"} <= set(TARGETS)
    assert TARGETS["loihi1"].constraints.neurons_per_core == 1024
    assert TARGETS["loihi1"].constraints.resets == ("zero",)
    assert TARGETS["loihi2"].constraints.graded_spikes
    with pytest.raises(TargetError, match="unknown target 'tpu'; known targets: .*loihi1"):
        get_target("tpu")


@pytest.mark.parametrize("variant", ["loihi1", "loihi2"])
def test_legalized_graph_is_hw_level_with_integer_formats_and_placements(snn, variant):
    hw = get_target(variant).legalize(snn)
    verify(hw)
    assert hw.level == "hw"
    for node in hw.topological_order():
        op = hw.op(node)
        if op.synaptic:
            assert op.weight.dtype == np.int16 and np.all(op.weight % 2 == 0)
            assert np.abs(op.weight).max() <= 256
            assert op.bias is None or np.all(op.bias % 64 == 0)
            assert hw.placement(node) is not None
        if isinstance(op, ops.Population):
            assert isinstance(op.neuron, CubaLIF) and hw.placement(node) is not None
            la.threshold_register(op.neuron.threshold)  # (vth << 6) + 1
    reset = {"loihi1": "zero", "loihi2": "subtract"}[variant]
    assert hw.op("s2").neuron.reset == reset
    assert hw.op("pool.or").neuron.threshold == 65  # the OR gate of the max pooling
    assert hw.op("x").dtype == "uint8"
    # the first layer's bias (it carries the input's mean) sets its scale; a negative exponent keeps 8-bit weights
    assert hw.meta["conv"]["weight_exp"] < 0 and np.abs(hw.op("conv").weight).max() > 128
    assert hw.meta["fc"]["weight_exp"] == 0 and np.abs(hw.op("fc").weight).max() == 254


def test_fold_keeps_the_float_network_except_the_or_gate(snn, pixels):
    folded, _ = LoihiFold().apply(snn)
    # the input scaling is folded into the first convolution: the same currents from raw pixels
    from snncc.runtime.kernels import apply
    from snncc.data import InputScaling

    x = InputScaling.from_json(snn.attrs["input_scaling"]).apply(pixels.astype(np.float32))
    expected = apply(snn.op("conv"), x)
    got = apply(folded.op("conv"), pixels.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert isinstance(folded.op("pool.or").neuron, LIF)


@pytest.mark.parametrize("weight_exp", [0, -1, 1])
def test_emulator_matches_an_independent_integer_loop(weight_exp):
    """A hw graph Linear -> CubaLIF -> Linear -> Readout run by the emulator and by plain Python integers."""
    rng = np.random.default_rng(4)
    g = Graph(level="hw")
    x = g.add(ops.Input(shape=(6,), name="x", dtype="uint8"), name="x")
    w1 = (rng.integers(-40, 40, (5, 6)) * 2).astype(np.int16)
    b1 = (rng.integers(-50, 50, 5) * 64).astype(np.int32)
    fc1 = g.add(ops.Linear(weight=w1, bias=b1), [x], name="fc1", weight_exp=weight_exp)
    neuron = CubaLIF(threshold=la.record_threshold(3000), current_decay=3000, voltage_decay=100, decay_unit=4096,
                     bias=0, reset="zero", initial_voltage=1000)
    pop = g.add(ops.Population(neuron=neuron), [fc1], name="pop")
    w2 = (rng.integers(-100, 100, (2, 5)) * 2).astype(np.int16)
    fc2 = g.add(ops.Linear(weight=w2), [pop], name="fc2")
    g.outputs = [g.add(ops.Readout(), [fc2], name="r")]
    g.attrs["loihi"] = {"variant": "loihi1", "membrane_scale": {}, "reset": "zero"}
    inputs = rng.integers(0, 256, (3, 6))
    T = 7
    result = Simulator(g, T, backend="loihi1").run(inputs, apply_scaling=False)

    def trunc(a, keep):
        p = a * keep
        return (abs(p) >> 12) * (1 if p >= 0 else -1)

    def wrap(a):
        return ((a + 2 ** 23) % 2 ** 24) - 2 ** 23

    for n, sample in enumerate(inputs):
        u, v = [0] * 5, [1000] * 5
        spikes_prev, total = [0] * 5, [0, 0]
        answers = []
        for step in range(T + 2):  # depth 2: the answer of step t is at chip step t + 2
            # fc2 reads the spikes of the previous step; fc1 reads the input of the previous step (none at step 0)
            readout_in = [sum(int(w2[o, j]) * spikes_prev[j] for j in range(5)) << 6 for o in range(2)]
            spikes = [0] * 5
            for j in range(5):
                total_in = sum(int(w1[j, i]) * int(sample[i]) for i in range(6))
                shifted = total_in << weight_exp if weight_exp > 0 else total_in >> -weight_exp  # floor
                a = (shifted << 6) if step >= 1 else 0
                a += int(b1[j]) if step >= 1 else 0
                u[j] = wrap(trunc(u[j], 4096 - 3000) + a)
                v[j] = max(-(2 ** 23 - 1), min(2 ** 23 - 1, trunc(v[j], 4096 - 100) + u[j]))
                if v[j] >= neuron.threshold:
                    spikes[j], v[j] = 1, 0
            total = [t + r for t, r in zip(total, readout_in)] if step >= 2 else total
            if step >= 2:
                answers.append([t / (step - 1) for t in total])
            spikes_prev = spikes
        np.testing.assert_allclose(result.outputs[:, n], np.array(answers), rtol=1e-6)


def test_check_lists_every_violation_at_once():
    g = small_snn(signed=True)
    violations = get_target("loihi1").check(g)
    assert [v.node for v in violations] == ["s1", "s2"]
    assert all("Loihi 1 has only binary spikes" in v.remedy for v in violations)
    g2 = small_snn()
    g2.replace("s2", ops.Population(neuron=LIF(tau_mem=5.0)))
    (v,) = get_target("loihi2").check(g2)
    assert v.node == "s2" and v.actual == "LIF"


def test_a_model_that_does_not_fit_says_what_and_by_how_much():
    from snncc.ir import IF

    rng = np.random.default_rng(0)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 32, 32), name="x"), name="x")
    conv = g.add(ops.Conv2d(weight=rng.normal(0, 0.1, (200, 1, 3, 3)).astype(np.float32), padding=(1, 1, 1, 1)),
                 [x], name="conv")
    s1 = g.add(ops.Population(neuron=IF()), [conv], name="s1")
    flat = g.add(ops.Flatten(), [s1], name="flat")
    fc = g.add(ops.Linear(weight=rng.normal(0, 0.1, (4, 200 * 32 * 32)).astype(np.float32)), [flat], name="fc")
    s2 = g.add(ops.Population(neuron=IF()), [fc], name="s2")
    out = g.add(ops.Linear(weight=rng.normal(0, 0.1, (3, 4)).astype(np.float32)), [s2], name="out")
    g.outputs = [g.add(ops.Readout(), [out], name="r")]
    text = "\n".join(str(v) for v in get_target("loihi1").check(g))
    assert "s2: a loihi1 core; actual one neuron has 204800 synapses, a core holds 131072" in text
    assert "graph: 128 cores (1 chip); actual 200 cores (one per block of the layers that fit), 72 too many" in text
    assert get_target("loihi2").check(g) == []  # 8,192 neurons per core: 25 cores


def test_bundle_is_written_atomically_and_verify_detects_changes(snn, pixels, tmp_path):
    out = tmp_path / "bundle"
    manifest = emit(snn, "loihi2", out, timesteps=8, activity_data=pixels[:4])
    assert set(manifest["files"]) == {"hw.snn", "source.snn", "network.net", "README.md"}
    assert manifest["synops_per_inference"] > 0 and manifest["energy"]["joules"] > 0
    assert "Davies et al." in manifest["energy"]["source"]
    assert manifest["pipeline"]["full"].endswith("loihi-partition{variant=loihi2}")
    assert (f"run 8 answer steps; the answer of step t is ready at chip step t + {manifest['latency_steps']}"
            in (out / "README.md").read_text())
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["format"] == "snncc-bundle"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    labels = np.zeros(len(pixels), int)
    report = verify_bundle(out, pixels, labels)
    assert 0 <= report["prediction_agreement"] <= 1 and report["images"] == len(pixels)
    # a modified file and a missing file are named
    (out / "network.net").write_bytes((out / "network.net").read_bytes() + b"x")
    (out / "README.md").unlink()
    with pytest.raises(TargetError) as info:
        read_bundle(out)
    assert "network.net: modified" in str(info.value) and "README.md: missing" in str(info.value)
    (out / "manifest.json").write_text("{}")
    with pytest.raises(FormatError, match="not an snncc bundle manifest"):
        read_bundle(out)


def test_a_failing_emit_leaves_nothing(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(TargetError, match="does not fit loihi1"):
        emit(small_snn(signed=True), "loihi1", out)
    assert list(tmp_path.iterdir()) == []
    # a failure while writing (here: the target's files) removes the temporary directory too
    target = get_target("loihi2")
    original = type(target).package

    def broken(self, graph, directory, context):
        (directory / "partial").write_text("half")
        raise OSError("disk full")

    type(target).package = broken
    try:
        with pytest.raises(OSError, match="disk full"):
            emit(small_snn(), "loihi2", out)
    finally:
        type(target).package = original
    assert list(tmp_path.iterdir()) == []


def _wide_snn() -> Graph:
    """A convolution whose 2 x 40 x 40 output exceeds a Loihi 1 core (1,024 compartments)."""
    from snncc.data import InputScaling
    from snncc.ir import IF

    rng = np.random.default_rng(5)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 40, 40), name="x"), name="x")
    conv = g.add(ops.Conv2d(weight=rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32),
                            bias=rng.normal(0.1, 0.05, 2).astype(np.float32), padding=(1, 1, 1, 1)), [x], name="conv")
    s1 = g.add(ops.Population(neuron=IF()), [conv], name="s1")
    conv2 = g.add(ops.Conv2d(weight=rng.normal(0, 0.3, (3, 2, 3, 3)).astype(np.float32), stride=(2, 2)), [s1],
                  name="conv2")
    s2 = g.add(ops.Population(neuron=IF()), [conv2], name="s2")
    flat = g.add(ops.Flatten(), [s2], name="flat")
    fc = g.add(ops.Linear(weight=rng.normal(0, 0.1, (4, 3 * 19 * 19)).astype(np.float32)), [flat], name="fc")
    g.outputs = [g.add(ops.Readout(), [fc], name="r")]
    g.attrs["input_scaling"] = InputScaling(scale=1 / 255).to_json()
    return g


def test_partitioning_splits_rows_and_channels_without_changing_a_spike():
    from snncc.passes import run_pipeline
    from snncc.targets.loihi.legalize import LoihiQuantize

    g = _wide_snn()
    target = get_target("loihi1")
    hw = target.legalize(g)
    unsplit = run_pipeline(g, [LoihiFold(), LoihiQuantize(variant="loihi1")])
    blocks = [n for n in hw.find(ops.Population) if n.startswith("s1.b")]
    assert len(blocks) == 4  # two channels of 1,600 neurons, each in two blocks of rows
    assert all(hw.types()[n].size <= 1024 for n in hw.find(ops.Population))
    cores = {hw.placement(n) for n in blocks}
    assert len(cores) == 4
    resources = target.resources(hw)
    assert all(core["neurons"] <= 1024 for core in resources["per_core"])
    x = np.random.default_rng(6).integers(0, 256, (5, 1, 40, 40))
    split_result = Simulator(hw, 10, backend="loihi1").run(x)
    whole_result = Simulator(unsplit, 10, backend="loihi1").run(x)
    np.testing.assert_array_equal(split_result.outputs, whole_result.outputs)
    for pop in ("s1", "s2"):
        parts = [n for n in split_result.spikes if n.startswith(f"{pop}.b")] or [pop]
        np.testing.assert_array_equal(sum(split_result.spikes[n] for n in parts), whole_result.spikes[pop])


def _two_chip_snn() -> Graph:
    """100 channels of 40 x 40 IF neurons (160,000: 157 Loihi 1 cores), then a 1x1 convolution whose output rows
    each fill a core's 4,096 input axons (100 x 40): more than the 128 cores of one Loihi 1 chip."""
    from snncc.data import InputScaling
    from snncc.ir import IF

    rng = np.random.default_rng(8)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 40, 40), name="x"), name="x")
    conv = g.add(ops.Conv2d(weight=rng.normal(0, 0.5, (100, 1, 3, 3)).astype(np.float32),
                            bias=rng.normal(0.1, 0.05, 100).astype(np.float32), padding=(1, 1, 1, 1)), [x],
                 name="conv")
    s1 = g.add(ops.Population(neuron=IF()), [conv], name="s1")
    conv2 = g.add(ops.Conv2d(weight=rng.normal(0, 0.1, (1, 100, 1, 1)).astype(np.float32)), [s1], name="conv2")
    s2 = g.add(ops.Population(neuron=IF()), [conv2], name="s2")
    flat = g.add(ops.Flatten(), [s2], name="flat")
    fc = g.add(ops.Linear(weight=rng.normal(0, 0.1, (3, 1600)).astype(np.float32)), [flat], name="fc")
    g.outputs = [g.add(ops.Readout(), [fc], name="r")]
    g.attrs["input_scaling"] = InputScaling(scale=1 / 255).to_json()
    return g


def test_a_multi_chip_system_holds_what_one_chip_cannot_and_computes_the_same(tmp_path):
    from snncc.passes import run_pipeline
    from snncc.targets.loihi.legalize import LoihiQuantize

    g = _two_chip_snn()
    (violation,) = get_target("loihi1").check(g)
    assert violation.limit == "128 cores (1 chip)" and "--target loihi1{chips=2}" in violation.remedy
    target = get_target("loihi1{chips=2}")
    assert (target.name, target.variant, target.backend, target.constraints.chips) == ("loihi1{chips=2}", "loihi1",
                                                                                      "loihi1", 2)
    assert target.pipeline.endswith("loihi-partition{variant=loihi1,chips=2}")
    assert target.check(g) == []
    hw = target.legalize(g)
    resources = target.resources(hw)
    assert resources["chips"] == 2 and [c["chip"] for c in resources["per_chip"]] == [0, 1]
    assert all(c["cores"] <= 128 for c in resources["per_chip"])
    assert sum(c["cores"] for c in resources["per_chip"]) == resources["cores"] > 128
    # The same integers as the population unsplit: the chips change where neurons are, not what they compute.
    unsplit = run_pipeline(g, [LoihiFold(), LoihiQuantize(variant="loihi1")])
    x = np.random.default_rng(9).integers(0, 256, (2, 1, 40, 40))
    np.testing.assert_array_equal(Simulator(hw, 6, backend="loihi1").run(x).outputs,
                                  Simulator(unsplit, 6, backend="loihi1").run(x).outputs)
    with pytest.raises(PassError, match=r"more than the 128 of 1 chip; run loihi-partition\{variant=loihi1,chips=2"):
        run_pipeline(unsplit, "loihi-partition{variant=loihi1}")
    # The bundle names the system, and verify rebuilds that target from the manifest.
    manifest = emit(g, "loihi1{chips=2}", tmp_path / "bundle", timesteps=6, activity_data=x[:1])
    assert manifest["target"] == "loihi1{chips=2}" and manifest["resources"]["chips"] == 2
    report = verify_bundle(tmp_path / "bundle", x, np.zeros(len(x), int))
    assert report["target"] == "loihi1{chips=2}" and report["images"] == 2


@pytest.mark.parametrize("spec, message", [
    ("loihi1{chips=0}", "not a number of chips"),
    ("loihi1{chips=many}", "not a number of chips"),
    ("loihi1{cores=4}", "has no option 'cores'"),
    ("loihi1{chips}", "not key=value"),
    ("nir{chips=2}", "takes no options"),
    ("loihi3{chips=2}", "unknown target"),
])
def test_target_specs_with_bad_options_are_refused_by_name(spec, message):
    with pytest.raises(TargetError, match=message):
        get_target(spec)


def test_a_spec_without_options_is_the_registered_target():
    assert get_target("loihi1{}") is get_target("loihi1") is get_target(" loihi1{ } ")


def test_a_model_tuned_for_a_chip_fits_a_system_of_those_chips(snn):
    """The float form is the chip's (its gates and reset), whatever the number of chips."""
    form = get_target("loihi1").trainable_form(snn)
    assert form.attrs["target_form"] == "loihi1"
    assert get_target("loihi1{chips=4}").check(form) == []
    assert get_target("loihi1{chips=4}").trainable_form(form) is form
    assert "loihi1's float form" in str(get_target("loihi2").check(form)[0])


def test_fold_is_idempotent(snn):
    once, changed = LoihiFold().apply(snn)
    assert changed
    twice, changed_again = LoihiFold().apply(once)
    assert not changed_again
    from snncc.ir import to_text

    assert to_text(twice) == to_text(once)


def test_an_existing_bundle_is_replaced_and_another_directory_refused(snn, tmp_path):
    out = tmp_path / "bundle"
    emit(snn, "loihi1", out, timesteps=4)
    first = read_bundle(out).manifest["files"]["hw.snn"]
    emit(snn, "loihi2", out, timesteps=4)
    assert read_bundle(out).manifest["target"] == "loihi2" and read_bundle(out).manifest["files"]["hw.snn"] != first
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(TargetError, match="exists and is not a bundle"):
        emit(snn, "loihi2", other)
    assert sorted(p.name for p in other.iterdir()) == ["mine.txt"]


def test_reset_to_zero_compensation_lowers_thresholds_and_recovers_spikes(snn, pixels):
    """Calibrated on images, the Loihi 1 thresholds drop (factors in [0.5, 1]) and each layer's spike count moves
    to the float SNN's, which the reset to zero undershoots."""
    from snncc.passes import run_pipeline
    from snncc.targets.loihi.legalize import LoihiQuantize
    from snncc.targets.loihi.reset_compensation import calibrate_reset_to_zero

    T = 16
    reference = Simulator(snn, T).run(pixels)
    plain = run_pipeline(snn, [LoihiFold(), LoihiQuantize(variant="loihi1")])
    before = Simulator(plain, T, backend="loihi1").run(pixels)
    g = snn.clone()
    factors = calibrate_reset_to_zero(g, pixels, T)
    assert set(factors) == {"s1", "s2"} and all(0.5 <= f <= 1.0 for f in factors.values())
    assert g.attrs["loihi_reset_compensation"] == factors
    hw = run_pipeline(g, [LoihiFold(), LoihiQuantize(variant="loihi1")])
    assert hw.attrs["loihi"]["reset_compensation"] == factors
    after = Simulator(hw, T, backend="loihi1").run(pixels)
    for pop in factors:
        if factors[pop] < 1.0:
            assert hw.op(pop).neuron.threshold < plain.op(pop).neuron.threshold
        want = reference.spikes[pop].sum()
        assert abs(after.spikes[pop].sum() - want) <= abs(before.spikes[pop].sum() - want)
    # loihi2 resets by subtraction and ignores the factors
    hw2 = run_pipeline(g, [LoihiFold(), LoihiQuantize(variant="loihi2")])
    assert "reset_compensation" not in hw2.attrs["loihi"]
