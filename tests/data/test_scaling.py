"""InputScaling: per-channel arithmetic, the command-line forms and presets, the JSON forms old and new."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.data import PRESETS, InputScaling
from snncc.errors import DataError


def _former_scalar_apply(x, scale, mean, std):
    """The arithmetic of the scalar InputScaling before per-channel values (kept here to pin bit-identity)."""
    return ((x * np.float32(scale) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def test_scalar_scaling_is_bit_identical_to_the_former_scalar_form():
    x = np.random.default_rng(0).integers(0, 256, size=(4, 3, 5, 5)).astype(np.float32)
    for scale, mean, std in ((1 / 255, 0.0, 1.0), (1 / 255, 0.1307, 0.3081), (2.0, -1.5, 0.7)):
        assert InputScaling(scale, mean, std).apply(x).tobytes() == _former_scalar_apply(x, scale, mean, std).tobytes()


def test_per_channel_scaling_normalizes_each_channel_of_images_and_vectors():
    cifar = PRESETS["cifar10"]
    x = np.random.default_rng(1).integers(0, 256, size=(2, 3, 4, 4)).astype(np.float32)
    out = cifar.apply(x)
    for c in range(3):
        expected = _former_scalar_apply(x[:, c], 1 / 255, cifar.mean[c], cifar.std[c])
        np.testing.assert_array_equal(out[:, c], expected)
    features = InputScaling(1.0, (1.0, 2.0), (2.0, 4.0)).apply(np.array([[3.0, 6.0]], dtype=np.float32))
    np.testing.assert_array_equal(features, [[1.0, 1.0]])


@pytest.mark.parametrize("text, expected", [
    ("none", InputScaling()),
    ("unit", InputScaling(1 / 255)),
    ("0.5", InputScaling(0.5)),
    ("0.5,0.1", InputScaling(0.5, 0.1)),
    ("0.5,0.1,0.2", InputScaling(0.5, 0.1, 0.2)),
    ("1,0.1,0.2,0.3,0.4,0.5,0.6", InputScaling(1.0, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))),
    ("0.00392156862745098,0.5,0.5,2,2", InputScaling(1 / 255, (0.5, 0.5), (2.0, 2.0))),
    ("imagenet", InputScaling(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    ("CIFAR10", InputScaling(1 / 255, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    ("cifar100", InputScaling(1 / 255, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
    ("mnist", InputScaling(1 / 255, 0.1307, 0.3081)),
])
def test_parse_accepts_every_documented_form(text, expected):
    assert InputScaling.parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("abc", "expected none, unit (x/255), SCALE[,MEAN[,STD]], SCALE,MEAN1..MEANC,STD1..STDC or a preset"),
    ("1,2,3,4", "4 numbers; per-channel scaling takes SCALE, then C means, then C standard deviations (an odd count)"),
    ("1,0,0", "std must be non-zero"),
    ("1,0.1,0.2,0.3,1,0,1", "std must be non-zero"),
])
def test_parse_errors_say_what_is_expected(text, message):
    with pytest.raises(DataError, match=None) as info:
        InputScaling.parse(text)
    assert message in str(info.value)


def test_mismatched_mean_and_std_counts_are_refused():
    with pytest.raises(DataError, match="2 means but 3 standard deviations"):
        InputScaling(1.0, (0.1, 0.2), (1.0, 1.0, 1.0))


def test_old_style_json_loads_and_scalars_are_written_in_the_old_form():
    old = {"scale": 0.00392156862745098, "mean": 0.0, "std": 1.0}  # what .snn files and model cards hold today
    scaling = InputScaling.from_json(old)
    assert scaling == InputScaling(1 / 255) and scaling.to_json() == old
    assert InputScaling.from_json({}) == InputScaling()
    cifar = PRESETS["cifar10"].to_json()
    assert cifar["mean"] == [0.4914, 0.4822, 0.4465] and InputScaling.from_json(cifar) == PRESETS["cifar10"]
    with pytest.raises(DataError, match="unknown fields \\['gamma'\\]"):
        InputScaling.from_json({"scale": 1, "gamma": 2})


def test_channel_count_against_the_model_and_the_data_names_both_counts():
    with pytest.raises(DataError) as info:
        PRESETS["imagenet"].check_channels((1, 28, 28), where="lenet.onnx")
    assert "3 per-channel values but lenet.onnx has 1 channels" in str(info.value)
    PRESETS["imagenet"].check_channels((3, 32, 32))
    PRESETS["mnist"].check_channels((1, 28, 28))
    with pytest.raises(DataError, match="3 per-channel values but the data have 1 channels"):
        PRESETS["cifar10"].apply(np.zeros((2, 1, 4, 4), dtype=np.float32))


def test_describe_names_presets_and_numbers():
    assert PRESETS["cifar10"].describe().startswith("cifar10 (x * 1/255, mean 0.4914,0.4822,0.4465")
    assert InputScaling().describe() == "none (x unchanged)"
    assert InputScaling(2.0, 1.0, 3.0).describe() == "x * 2, mean 1, std 3"
