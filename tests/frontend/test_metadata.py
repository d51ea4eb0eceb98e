"""Preprocessing from ONNX metadata: parsing the convention's keys and snncc's own, compile's default scaling (the
user's flag wins), the message that says which scaling was used, and the calibration range warning."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import snncc
from snncc.api import compile_model
from snncc.cli import main
from snncc.data import PRESETS, InputScaling, load_dataset
from snncc.errors import DataError, FrontendError, InputRangeWarning, ModelMetadataWarning
from snncc.frontend.metadata import (
    InputDeclaration, check_calibration_range, image_metadata, read_declaration, set_metadata,
)
from snncc.ir.text import to_text
from tests.conftest import REPO

SAMPLE = REPO / "snncc" / "sample"


def _model(props: dict[str, str] | None = None, channels: int = 1):
    """A conv-relu-flatten-gemm model on (N, channels, 4, 4) with the given metadata_props."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (2, channels, 3, 3)).astype(np.float32)
    fc = rng.normal(0, 0.5, (3, 8)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", 1, ["N", channels, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, ["N", 3])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    set_metadata(model, props or {})
    return model


def test_the_conventions_pixel_ranges_and_formats():
    cases = {"NominalRange_0_255": (InputScaling(), (0, 255)), "Normalized_0_1": (InputScaling(1 / 255), (0, 1)),
             "normalized_1_1": (InputScaling(1 / 255, 0.5, 0.5), (-1, 1)),
             "NominalRange_16_235": (InputScaling(219 / 255, -16.0, 1.0), (16, 235))}
    for value, (scaling, value_range) in cases.items():
        declared = read_declaration(_model({"image.nominalpixelrange": value, "Image.BitmapPixelFormat": "Gray8"}))
        assert declared.scaling == scaling and declared.input_range == value_range and declared.channels == 1
        assert declared.scaling_source == f"ONNX metadata image.nominalpixelrange={value}"
    pixels = np.array([[0.0, 255.0]], dtype=np.float32)
    np.testing.assert_allclose(cases["normalized_1_1"][0].apply(pixels), [[-1, 1]], atol=1e-6)
    np.testing.assert_allclose(cases["NominalRange_16_235"][0].apply(pixels), [[16, 235]], atol=1e-4)
    assert read_declaration(_model()) == InputDeclaration()


def test_snncc_keys_take_precedence_and_bad_values_are_errors():
    props = image_metadata("Rgb8", PRESETS["cifar10"], (-2.0, 2.5))
    assert props["Image.BitmapPixelFormat"] == "Rgb8" and "Image.NominalPixelRange" not in props
    declared = read_declaration(_model({**props, "Image.NominalPixelRange": "Normalized_0_1"}))
    assert declared.scaling == PRESETS["cifar10"] and declared.scaling_source == "ONNX metadata snncc.input_scaling"
    assert declared.input_range == (-2.0, 2.5) and declared.channels == 3
    assert image_metadata("Gray8", InputScaling(1 / 255))["Image.NominalPixelRange"] == "Normalized_0_1"
    for key, value, message in [("Image.NominalPixelRange", "0..1", "is not one of NominalRange_0_255"),
                                ("Image.BitmapPixelFormat", "Yuv", "is not one of Gray8, Rgb8"),
                                ("Image.ColorSpaceGamma", "Rec709", "is not SRGB or Linear"),
                                ("snncc.input_scaling", "{\"scale\": \"x\"}", "is not JSON {scale, mean, std}"),
                                ("snncc.input_range", "[1]", "is not a JSON pair [low, high]"),
                                ("snncc.input_range", "[2, 1]", "must be finite with low <= high")]:
        with pytest.raises(FrontendError, match=None) as info:
            read_declaration(_model({key: value}), "m.onnx")
        assert str(info.value).startswith(f"m.onnx: metadata {key}") and message in str(info.value)


def test_bgr_and_linear_models_warn_that_snncc_does_not_convert():
    with pytest.warns(ModelMetadataWarning, match="BGR order.*x\\[:, ::-1\\]"):
        read_declaration(_model({"Image.BitmapPixelFormat": "Bgr8"}))
    with pytest.warns(ModelMetadataWarning, match="linear-light pixels"):
        read_declaration(_model({"Image.ColorSpaceGamma": "Linear"}))


def test_set_metadata_replaces_keys_and_keeps_others():
    model = _model({"author": "me", "Image.NominalPixelRange": "NominalRange_0_255"})
    set_metadata(model, {"image.nominalpixelrange": "Normalized_0_1"})
    assert {p.key: p.value for p in model.metadata_props} == {"author": "me",
                                                              "image.nominalpixelrange": "Normalized_0_1"}


def test_compile_defaults_to_the_declared_scaling_and_an_explicit_one_wins(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(image_metadata("Gray8", InputScaling(1 / 255), (0.0, 1.0))), path)
    pixels = np.random.default_rng(1).integers(0, 256, (20, 1, 4, 4)).astype(np.float32)
    graph = compile_model(path, calibration=pixels)
    assert graph.attrs["input_scaling"] == InputScaling(1 / 255).to_json()
    assert graph.attrs["input_scaling_source"] == "ONNX metadata snncc.input_scaling"
    explicit = compile_model(path, calibration=pixels / 255, input_scaling=InputScaling())
    assert explicit.attrs["input_scaling"] == InputScaling().to_json()
    assert explicit.attrs["input_scaling_source"].startswith("given")
    assert to_text(graph) == to_text(explicit)  # the same calibration values, so the same SNN
    plain = tmp_path / "plain.onnx"
    onnx.save(_model(), plain)
    assert compile_model(plain, calibration=pixels).attrs["input_scaling_source"].startswith("default")
    with pytest.raises(DataError, match="3 per-channel values but .*plain.onnx has 1 channels"):
        compile_model(plain, calibration=pixels, input_scaling=PRESETS["imagenet"])
    with pytest.raises(DataError, match="the calibration data: samples of shape \\(1, 5, 5\\), but"):
        compile_model(plain, calibration=np.zeros((2, 1, 5, 5), dtype=np.float32))


def test_raw_pixels_into_a_model_that_declares_0_to_1_warn_once_with_the_remedy(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model({"Image.NominalPixelRange": "Normalized_0_1"}), path)
    pixels = np.random.default_rng(1).integers(0, 256, (20, 1, 4, 4)).astype(np.float32)
    pixels[0, 0, 0, :2] = 0, 255
    with pytest.warns(InputRangeWarning) as caught:
        compile_model(path, calibration=pixels, input_scaling=InputScaling())
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "range over 0..255" in message and "declares inputs in 0..1" in message
    assert "unscaled 0..255 pixels" in message and "--input-scaling unit" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        compile_model(path, calibration=pixels)  # the declared pixels / 255: no warning


def test_the_range_rule():
    declared = InputDeclaration(input_range=(0.0, 1.0), range_source="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        assert not check_calibration_range(np.array([-0.9, 1.9]), declared, InputScaling())
        assert not check_calibration_range(np.array([5.0]), InputDeclaration(), InputScaling())
    with pytest.warns(InputRangeWarning, match="range over -0.4242..2.821"):
        assert check_calibration_range(np.array([-0.4242, 2.821]), declared, PRESETS["mnist"])


def test_shipped_lenet_compiles_without_a_scaling_flag_like_with_unit(tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    x, y = load_dataset(SAMPLE / "mnist-train-1000.npz", limit=100)
    np.savez(calib, x=x.astype(np.uint8), y=y)
    graphs = []
    for flags in ([], ["--input-scaling", "unit"]):
        out = tmp_path / f"lenet{len(flags)}.snn"
        with warnings.catch_warnings():
            warnings.simplefilter("error", InputRangeWarning)
            assert main(["compile", str(REPO / "models" / "lenet5-mnist.onnx"), "-o", str(out), "--calib", str(calib),
                         "--quiet", *flags]) == 0
        graphs.append(snncc.load(out))
    out = capsys.readouterr().out
    assert "input scaling: unit (x * 1/255, mean 0, std 1); ONNX metadata snncc.input_scaling" in out
    assert "input scaling: unit (x * 1/255, mean 0, std 1); given (--input-scaling" in out
    assert "calibration data: .npz" in out and "100 samples of 1x28x28" in out
    assert to_text(graphs[0]) == to_text(graphs[1])
    for a, b in zip(*(g.topological_order() for g in graphs)):
        for field, value in graphs[0].op(a).params().items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, getattr(graphs[1].op(b), field))
    assert graphs[0].attrs["input_scaling"] == graphs[1].attrs["input_scaling"]


@pytest.mark.parametrize("name", ["lenet5-mnist", "lenet5-avg-mnist", "vgg-fmnist", "vgg-avg-fmnist", "silu-fmnist",
                                  "resnet-fmnist", "resnet20-cifar10"])
def test_every_shipped_model_declares_its_card_scaling(name):
    card = json.loads((REPO / "models" / f"{name}.json").read_text())
    for suffix in (".onnx", ".dynamo.onnx"):
        declared = read_declaration(onnx.load(str(REPO / "models" / f"{name}{suffix}"), load_external_data=False))
        assert declared.scaling == InputScaling.from_json(card["input_scaling"])
        assert declared.input_range == (0.0, 1.0) and declared.channels == card["input_shape"][1]
    sample = SAMPLE / "lenet5-mnist.onnx"
    assert sample.read_bytes() == (REPO / "models" / "lenet5-mnist.onnx").read_bytes()


def test_cli_prints_the_range_warning_as_one_line(tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    x, y = load_dataset(SAMPLE / "mnist-train-1000.npz", limit=20)
    np.savez(calib, x=x.astype(np.uint8), y=y)
    with warnings.catch_warnings():  # pytest records warnings; show them through the formatter as Python does
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        assert main(["compile", str(REPO / "models" / "lenet5-mnist.onnx"), "-o", str(tmp_path / "x.snn"),
                     "--calib", str(calib), "--input-scaling", "none", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("snncc: warning: calibration data after the input scaling (none (x unchanged)) range over "
                          "0..255") and "--input-scaling unit" in err and err.count("\n") == 1
    assert warnings.formatwarning("m", UserWarning, "f.py", 1, "").startswith("f.py:1: UserWarning: m")
