"""The input scaling: the affine map from stored values (pixels) to what the model's first layer takes.

``x' = (x * scale - mean[c]) / std[c]``, with ``mean`` and ``std`` one value for every channel or one value per
channel ``c`` (axis 1 of ``(N, C, H, W)`` images and of ``(N, F)`` feature vectors). It is recorded in the ``.snn``
file so that ``eval`` feeds the SNN exactly what ``compile`` calibrated on.

The presets are the per-channel statistics the usual torch recipes normalize with: ImageNet (the torchvision
models' ``Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])``), CIFAR-10 and CIFAR-100 (the
training-set mean and standard deviation of each channel of ``pixels / 255``) and MNIST (0.1307 / 0.3081).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.errors import DataError

SYNTAX = ("none, unit (x/255), SCALE[,MEAN[,STD]], SCALE,MEAN1..MEANC,STD1..STDC or a preset "
          "(imagenet, cifar10, cifar100, mnist)")


def _values(name: str, value: float | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in (np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()))
    if not values:
        raise DataError(f"input scaling {name} needs at least one value")
    if not all(np.isfinite(values)):
        raise DataError(f"input scaling {name} must be finite numbers, got {list(values)}")
    return values


@dataclass(frozen=True, init=False)
class InputScaling:
    """``x' = (x * scale - mean[c]) / std[c]`` from stored values to the model's input.

    The default leaves inputs unchanged. ``InputScaling(scale=1/255)`` maps 0..255 pixels to 0..1;
    ``InputScaling(1/255, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))`` is the CIFAR-10 normalization.
    ``mean`` and ``std`` are kept as tuples (one entry: the same value for every channel).
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(self, scale: float = 1.0, mean: float | tuple[float, ...] = 0.0,
                 std: float | tuple[float, ...] = 1.0) -> None:
        if np.ndim(scale) != 0:
            raise DataError(f"input scaling scale must be one number, got {scale!r}")
        object.__setattr__(self, "scale", _values("scale", scale)[0])
        means, stds = _values("mean", mean), _values("std", std)
        if len(means) != len(stds) and 1 not in (len(means), len(stds)):
            raise DataError(f"input scaling has {len(means)} means but {len(stds)} standard deviations; give one "
                            f"value, or one per channel for both")
        if any(s == 0 for s in stds):
            raise DataError(f"input scaling std must be non-zero, got {list(stds)}")
        object.__setattr__(self, "mean", means)
        object.__setattr__(self, "std", stds)

    @property
    def channels(self) -> int | None:
        """The number of channels the per-channel values are for, or None if every value is a scalar."""
        n = max(len(self.mean), len(self.std))
        return None if n == 1 else n

    def check_channels(self, sample_shape: tuple[int, ...], where: str = "the model") -> None:
        """Raise DataError if per-channel values do not match axis 0 of a per-sample shape ``(C, ...)``."""
        channels = self.channels
        if channels is None:
            return
        have = sample_shape[0] if sample_shape else 1
        if have != channels:
            raise DataError(f"the input scaling has {channels} per-channel values but {where} has {have} channels "
                            f"(input shape {tuple(sample_shape)}); give one mean and std, or {have} of each")

    def _operand(self, values: tuple[float, ...], ndim: int) -> np.float32 | np.ndarray:
        if len(values) == 1:
            return np.float32(values[0])  # the scalar path is bit for bit the former scalar InputScaling
        return np.asarray(values, dtype=np.float32).reshape((1, len(values)) + (1,) * max(ndim - 2, 0))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The scaled float32 copy of a batch ``x`` of shape ``(N, C, ...)``."""
        if self.channels is not None and (x.ndim < 2 or x.shape[1] != self.channels):
            raise DataError(f"the input scaling has {self.channels} per-channel values but the data have "
                            f"{x.shape[1] if x.ndim >= 2 else 1} channels (shape {tuple(x.shape)}, channel axis 1)")
        mean, std = self._operand(self.mean, x.ndim), self._operand(self.std, x.ndim)
        return ((x * np.float32(self.scale) - mean) / std).astype(np.float32)

    def to_json(self) -> dict[str, float | list[float]]:
        """``{"scale", "mean", "std"}``; scalars stay numbers (the form of files written before per-channel values)."""
        def form(values: tuple[float, ...]) -> float | list[float]:
            return values[0] if len(values) == 1 else list(values)
        return {"scale": self.scale, "mean": form(self.mean), "std": form(self.std)}

    @classmethod
    def from_json(cls, data: dict) -> InputScaling:
        """Read :meth:`to_json`'s form; numbers (older files) and lists are both accepted."""
        if not isinstance(data, dict):
            raise DataError(f"input scaling must be an object with scale, mean and std, got {data!r}")
        unknown = set(data) - {"scale", "mean", "std"}
        if unknown:
            raise DataError(f"input scaling has unknown fields {sorted(unknown)}; expected scale, mean and std")
        try:
            return cls(data.get("scale", 1.0), data.get("mean", 0.0), data.get("std", 1.0))
        except (TypeError, ValueError) as exc:
            raise DataError(f"input scaling {data!r} is not numbers: {exc}") from exc

    @classmethod
    def parse(cls, text: str) -> InputScaling:
        """Parse the command line's form: ``none``, ``unit``, a preset, ``SCALE[,MEAN[,STD]]`` or
        ``SCALE,MEAN1..MEANC,STD1..STDC`` (an odd count of at least 3 numbers)."""
        key = text.strip().lower()
        if key in ("none", ""):
            return cls()
        if key in PRESETS:
            return PRESETS[key]
        try:
            values = [float(v) for v in key.split(",")]
        except ValueError:
            raise DataError(f"--input-scaling {text!r}: expected {SYNTAX}") from None
        if len(values) <= 3:
            return cls(*values)
        if len(values) % 2 == 0:
            raise DataError(f"--input-scaling {text!r}: {len(values)} numbers; per-channel scaling takes SCALE, then "
                            f"C means, then C standard deviations (an odd count), e.g. 0.00392,0.5,0.5,0.5,0.2,0.2,0.2")
        channels = (len(values) - 1) // 2
        return cls(values[0], tuple(values[1:1 + channels]), tuple(values[1 + channels:]))

    def describe(self) -> str:
        """A short text: the preset's name where it is one, else the numbers."""
        for name, preset in PRESETS.items():
            if preset == self:
                return f"{name} ({preset._numbers()})"
        return self._numbers()

    def _numbers(self) -> str:
        if self == InputScaling():
            return "none (x unchanged)"
        def join(values: tuple[float, ...]) -> str:
            return ",".join(f"{v:.6g}" for v in values)
        scale = "1/255" if abs(self.scale - 1 / 255) < 1e-12 else f"{self.scale:.6g}"
        return f"x * {scale}, mean {join(self.mean)}, std {join(self.std)}"


PRESETS: dict[str, InputScaling] = {
    "unit": InputScaling(1 / 255),
    "imagenet": InputScaling(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": InputScaling(1 / 255, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": InputScaling(1 / 255, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": InputScaling(1 / 255, 0.1307, 0.3081),
}
