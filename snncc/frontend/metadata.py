"""What an ONNX model says about its input: the preprocessing ``compile`` uses when the user gives none.

Read from the model's ``metadata_props`` (keys and values case-insensitive):

* the ONNX metadata convention for images (onnx/docs/MetadataProps.md, "Image Category Definition"):
  ``Image.BitmapPixelFormat`` (``Gray8``, ``Rgb8``, ``Bgr8``, ``Rgba8``, ``Bgra8``: channel order and count),
  ``Image.ColorSpaceGamma`` (``SRGB``, ``Linear``) and ``Image.NominalPixelRange``: ``NominalRange_0_255`` (the model
  takes 0..255 pixels), ``Normalized_0_1`` (``pixels / 255``), ``Normalized_1_1`` (``pixels / 127.5 - 1``),
  ``NominalRange_16_235`` (video range, ``16 + pixels * 219 / 255``);
* snncc's own keys for what the convention lacks: ``snncc.input_scaling``, JSON ``{"scale", "mean", "std"}``
  (per-channel lists allowed) as :class:`~snncc.data.InputScaling` records it, which takes precedence over the
  pixel range; ``snncc.input_range``, JSON ``[low, high]``: the range of the values the first layer saw in
  training (after scaling), if the trainer recorded it.

The convention attaches the keys to inputs whose type denotation is ``IMAGE``; snncc models have one input, so the
keys are read whether or not it carries the denotation. :func:`image_metadata` writes the same keys on export.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from snncc.data.scaling import InputScaling
from snncc.errors import DataError, FrontendError, InputRangeWarning, ModelMetadataWarning

PIXEL_FORMAT = "Image.BitmapPixelFormat"
GAMMA = "Image.ColorSpaceGamma"
PIXEL_RANGE = "Image.NominalPixelRange"
SCALING_KEY = "snncc.input_scaling"
RANGE_KEY = "snncc.input_range"

#: Image.BitmapPixelFormat: channels and whether the channel order is reversed (BGR), which no affine map undoes.
PIXEL_FORMATS = {"gray8": (1, False), "rgb8": (3, False), "bgr8": (3, True), "rgba8": (4, False),
                 "bgra8": (4, True)}
GAMMAS = ("srgb", "linear")
#: Image.NominalPixelRange: the scaling from 0..255 pixels and the range of the model's input values.
PIXEL_RANGES = {"nominalrange_0_255": (InputScaling(), (0.0, 255.0)),
                "normalized_0_1": (InputScaling(1 / 255), (0.0, 1.0)),
                "normalized_1_1": (InputScaling(1 / 255, 0.5, 0.5), (-1.0, 1.0)),
                "nominalrange_16_235": (InputScaling(219 / 255, -16.0, 1.0), (16.0, 235.0))}
#: How far outside the declared range, in widths of that range, calibration data may reach before the warning.
RANGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class InputDeclaration:
    """The preprocessing and input range a model declares; every field None when it declares nothing."""

    scaling: InputScaling | None = None
    scaling_source: str | None = None
    input_range: tuple[float, float] | None = None
    range_source: str | None = None
    channels: int | None = None


def _props(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """metadata_props by lower-cased key: (key as written, value)."""
    return {p.key.lower(): (p.key, p.value) for p in model.metadata_props}


def read_declaration(model: onnx.ModelProto, where: str = "the model") -> InputDeclaration:
    """The :class:`InputDeclaration` of ``model``'s metadata; malformed values raise FrontendError."""
    props = _props(model)

    def get(key: str) -> tuple[str, str] | None:
        return props.get(key.lower())

    scaling = scaling_source = input_range = range_source = channels = None
    if (entry := get(PIXEL_FORMAT)) is not None:
        fmt = entry[1].strip().lower()
        if fmt not in PIXEL_FORMATS:
            raise FrontendError(f"{where}: metadata {entry[0]}={entry[1]!r} is not one of Gray8, Rgb8, Bgr8, Rgba8, "
                                f"Bgra8 (ONNX metadata convention)")
        channels, reversed_order = PIXEL_FORMATS[fmt]
        if reversed_order:
            warnings.warn(f"{where} declares {entry[0]}={entry[1]}: it takes channels in BGR order, and snncc's "
                          f"image readers give RGB; reverse the channel axis of the data (x[:, ::-1]) before "
                          f"calibration and evaluation", ModelMetadataWarning, stacklevel=3)
    if (entry := get(GAMMA)) is not None:
        gamma = entry[1].strip().lower()
        if gamma not in GAMMAS:
            raise FrontendError(f"{where}: metadata {entry[0]}={entry[1]!r} is not SRGB or Linear")
        if gamma == "linear":
            warnings.warn(f"{where} declares {entry[0]}=Linear: it takes linear-light pixels, and image files hold "
                          f"sRGB-coded values; linearize the data before calibration and evaluation (no affine "
                          f"input scaling does this)", ModelMetadataWarning, stacklevel=3)
    if (entry := get(PIXEL_RANGE)) is not None:
        key = entry[1].strip().lower()
        if key not in PIXEL_RANGES:
            raise FrontendError(f"{where}: metadata {entry[0]}={entry[1]!r} is not one of NominalRange_0_255, "
                                f"Normalized_0_1, Normalized_1_1, NominalRange_16_235 (ONNX metadata convention)")
        scaling, input_range = PIXEL_RANGES[key]
        scaling_source = range_source = f"ONNX metadata {entry[0]}={entry[1]}"
    if (entry := get(SCALING_KEY)) is not None:
        try:
            scaling = InputScaling.from_json(json.loads(entry[1]))
        except (ValueError, TypeError, DataError) as exc:
            raise FrontendError(f"{where}: metadata {entry[0]} is not JSON {{scale, mean, std}}: {exc}") from exc
        scaling_source = f"ONNX metadata {entry[0]}"
    if (entry := get(RANGE_KEY)) is not None:
        input_range = _range(entry, where)
        range_source = f"ONNX metadata {entry[0]}, the training inputs' range"
    return InputDeclaration(scaling, scaling_source, input_range, range_source, channels)


def _range(entry: tuple[str, str], where: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in json.loads(entry[1]))
    except (ValueError, TypeError) as exc:
        raise FrontendError(f"{where}: metadata {entry[0]}={entry[1]!r} is not a JSON pair [low, high]") from exc
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise FrontendError(f"{where}: metadata {entry[0]}={entry[1]!r} must be finite with low <= high")
    return low, high


def read_declaration_file(path: str | Path) -> InputDeclaration:
    """:func:`read_declaration` of an ONNX file, without loading its weights."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise FrontendError(f"{path}: cannot read the ONNX model: {exc}") from exc
    return read_declaration(model, str(path))


def image_metadata(pixel_format: str, scaling: InputScaling, input_range: tuple[float, float] | None = None,
                   gamma: str = "SRGB") -> dict[str, str]:
    """The metadata_props an exporter writes for a model fed ``scaling.apply(pixels)``.

    ``Image.NominalPixelRange`` is written only where the scaling is one of the convention's ranges exactly."""
    if pixel_format.lower() not in PIXEL_FORMATS:
        raise ValueError(f"pixel format {pixel_format!r} is not one of {sorted(PIXEL_FORMATS)}")
    props = {PIXEL_FORMAT: pixel_format, GAMMA: gamma}
    names = {"nominalrange_0_255": "NominalRange_0_255", "normalized_0_1": "Normalized_0_1",
             "normalized_1_1": "Normalized_1_1", "nominalrange_16_235": "NominalRange_16_235"}
    for key, (known, _) in PIXEL_RANGES.items():
        if known == scaling:
            props[PIXEL_RANGE] = names[key]
    props[SCALING_KEY] = json.dumps(scaling.to_json())
    if input_range is not None:
        props[RANGE_KEY] = json.dumps([float(input_range[0]), float(input_range[1])])
    return props


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set ``props`` in ``model.metadata_props``, replacing entries of the same key (case-insensitive)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key.lower() not in {k.lower() for k in props}]
    del model.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def check_calibration_range(calibration: np.ndarray, declaration: InputDeclaration, scaling: InputScaling,
                            where: str = "the model") -> bool:
    """Warn (InputRangeWarning, once per call) when scaled calibration data fall far outside the declared range.

    "Far" is more than RANGE_TOLERANCE widths of the range beyond either end: 0..255 data into a 0..1 model reach
    254 widths past it; data in 0..1 for a model trained on -0.42..2.8 do not. Returns True if it warned."""
    if declaration.input_range is None or calibration is None or calibration.size == 0:
        return False
    low, high = declaration.input_range
    width = max(high - low, 1e-12)
    seen_low, seen_high = float(calibration.min()), float(calibration.max())
    if seen_low >= low - RANGE_TOLERANCE * width and seen_high <= high + RANGE_TOLERANCE * width:
        return False
    hint = ""
    if seen_high > 25 * max(abs(high), abs(low), 1e-12):
        hint = " They look like unscaled 0..255 pixels:"
    warnings.warn(f"calibration data after the input scaling ({scaling.describe()}) range over "
                  f"{seen_low:.4g}..{seen_high:.4g}, but {where} declares inputs in {low:g}..{high:g} "
                  f"({declaration.range_source}).{hint} pass --input-scaling unit for 0..255 pixels into a 0..1 "
                  f"model, or the scaling the model was trained with (input_scaling= in Python); otherwise the "
                  f"calibrated thresholds and the accuracy suffer", InputRangeWarning, stacklevel=3)
    return True


def choose_scaling(explicit: InputScaling | None, declaration: InputDeclaration) -> tuple[InputScaling, str]:
    """The scaling compile uses and where it came from: the user's (always wins), the model's metadata, or none."""
    if explicit is not None:
        return explicit, "given (--input-scaling / input_scaling=)"
    if declaration.scaling is not None:
        return declaration.scaling, declaration.scaling_source
    return InputScaling(), "default: the model declares no preprocessing in its ONNX metadata"
