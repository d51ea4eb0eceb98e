"""IR ops: frozen records of an operation's parameters, registered by ``kind`` in :data:`OPS`.

Every table that handles ops (serializer, text printer, frontend, runtime kernels, target lowerings) is keyed by the
op class or its ``kind``; nothing dispatches on names with if/elif chains. Numpy parameters are copied to float32 and
made read-only, so an op can be shared between graphs. Shapes are per sample: the batch axis is never part of an IR
shape.

``infer`` computes the output type from the input types and raises :class:`~snncc.errors.IRError` naming the field
and the shapes when they do not fit. Linear ops keep the coding of their input (:attr:`Op.keeps_coding`).

Array parameters keep their kind: a float array is stored as float32 (whatever float width it came in), an integer
or boolean array keeps its dtype (the int8 weight mantissas, exponents and integer biases of the hw level), so a
graph at the ann and snn levels holds float32 arrays only and one at the hw level what the chip stores.

Properties that passes and simulators read instead of lists of op classes: ``synaptic`` (inputs arrive through
weights), ``passes_spikes`` with ``fill_value`` (a binary spike train stays one through the op: rearrangements,
subsampling and zero padding), ``is_view`` (all elements in order, only the shape changes) and ``levels`` (the IR
levels at which the op is legal; :data:`snncc.ir.verify.LEVELS` holds each level's other rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np

from snncc.errors import IRError
from snncc.ir import functions
from snncc.ir.codings import Analog, Coding, FewSpikeCode, Rate
from snncc.ir.neurons import NeuronModel
from snncc.ir.types import DEFAULT_DTYPE, TensorType, check_format

ANN, SNN, HW = "ann", "snn", "hw"
#: The levels of ops a chip can hold as they are (synaptic layers, rearrangements, populations, readouts).
_EVERY_LEVEL = frozenset({ANN, SNN, HW})


def _frozen_array(value: np.ndarray) -> np.ndarray:
    """A read-only copy: float32 for floats, the same dtype for integers and booleans."""
    kind = np.asarray(value).dtype.kind
    if kind not in "fiub":
        raise IRError(f"array parameters must be real numbers or integers, got dtype {np.asarray(value).dtype}")
    array = np.array(value, dtype=np.float32 if kind == "f" else None, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Op:
    """Base class. ``arity`` is the number of inputs (None: one or more); ``levels`` where the op is legal."""

    kind: ClassVar[str] = "op"
    arity: ClassVar[int | None] = 1
    levels: ClassVar[frozenset[str]] = frozenset({ANN, SNN})
    keeps_coding: ClassVar[bool] = True
    # Synaptic ops are the ones whose inputs arrive through weights: their events are counted as synaptic operations.
    synaptic: ClassVar[bool] = False
    # Every output element is one of the input's elements, or the constant ``fill_value`` where the op pads: a
    # binary spike train stays a binary spike train through the op when it pads with zero (silent inputs).
    passes_spikes: ClassVar[bool] = False
    # The output holds all of the input's elements in the same (row-major) order; only the per-sample shape changes.
    # A view of a population's spikes is that population's spikes (the simulators read them in place).
    is_view: ClassVar[bool] = False

    @property
    def fill_value(self) -> float:
        """The constant an op of ``passes_spikes`` writes where an output element has no input element (0.0 when
        it pads nothing); a padding with a non-zero constant does not pass spikes."""
        return 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                object.__setattr__(self, f.name, _frozen_array(value))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Check the fields on their own; raise IRError naming the field."""

    def infer(self, inputs: list[TensorType]) -> TensorType:
        """Output type for the given input types."""
        raise NotImplementedError

    def output_coding(self, inputs: list[TensorType]) -> Coding:
        codings = {t.coding for t in inputs}
        if len(codings) > 1:
            raise IRError(f"{self.kind}: inputs carry different codings {sorted(map(str, codings))}")
        return inputs[0].coding

    def params(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: object) -> Op:
        return type(self)(**{**self.params(), **changes})

    def same_as(self, other: Op) -> bool:
        """Structural equality, comparing arrays by value."""
        if type(self) is not type(other):
            return False
        return all(_same_value(a, getattr(other, name)) for name, a in self.params().items())

    def per_input(self) -> tuple[Op, ...]:
        """A synaptic op as single-input ops, one per operand, whose outputs added up in operand order are this
        op's output: ``(self,)`` for an op with one operand (see :class:`_SharedWeights` for the others)."""
        return (self,)


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def _pair(name: str, kind: str, value: tuple[int, ...], n: int = 2, minimum: int = 1) -> None:
    if len(value) != n or any(int(v) != v or v < minimum for v in value):
        raise IRError(f"{kind}: {name} must be {n} integers >= {minimum}, got {value}")


def _spatial_out(kind: str, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int, int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    out = []
    for axis in range(2):
        span = dilation[axis] * (kernel[axis] - 1) + 1
        padded = size[axis] + padding[axis] + padding[axis + 2]
        if padded < span:
            raise IRError(f"{kind}: kernel extent {span} exceeds padded input size {padded} (input {size})")
        out.append((padded - span) // stride[axis] + 1)
    return out[0], out[1]


def _expect_rank(kind: str, t: TensorType, rank: int) -> None:
    if len(t.shape) != rank:
        raise IRError(f"{kind}: expected an input of rank {rank} per sample, got shape {t.shape}")


@dataclass(frozen=True, eq=False)
class _SharedWeights(Op):
    """A Conv2d or Linear that reads ``k`` inputs through one weight array, with one gain per input.

    With ``input_gains = (g_0, ..., g_{k-1})`` (each a scalar or one value per input channel, i.e. per input
    feature of a Linear) the op computes, from its operands ``x_0, ..., x_{k-1}`` of one shape,

        y = (((op(x_0; W * g_0) + b) + op(x_1; W * g_1)) + ...) + op(x_{k-1}; W * g_{k-1})

    where ``W * g_i`` scales the input-channel axis of the weights and is rounded to float32, and the bias is added
    once, after the first input's product. Without ``input_gains`` (None) the op has one operand and gain 1.

    This is how the ``sew`` pass carries ``conv(A + g S)``, a sum of binary spike trains, without a graded signal:
    every train is a synaptic input of its own (its events cost their own fan-out), and the weights stay one array.
    Why one op rather than one copy per input with ``W * g_i`` folded in (what the pass did before): fine-tuning
    (a torch lowering) must train ``W`` once, and ``d y / d W = sum_i g_i x_i`` only flows through a shared
    parameter; a chip stores each weight once and scales an input by its gain (a per-axon or per-connection
    weight exponent on most neuromorphic chips). The sum order and the rounding of ``W * g_i`` are those of the
    copies: ``per_input()`` returns exactly those copies, and every kernel runs through them, so the numbers are
    the same as the graph of copies, bit for bit. Not legal at the ANN level (a rule of the ann level in
    :mod:`snncc.ir.verify`): the ANN passes (canonicalize, normalize) fold into and rescale one operand.
    """

    arity: ClassVar[int | None] = None

    @property
    def input_count(self) -> int:
        return 1 if self.input_gains is None else len(self.input_gains)

    def _gains_axis(self) -> int:
        """The length of a per-channel gain: the input channels (Conv2d) or input features (Linear)."""
        raise NotImplementedError

    def _scaled_weight(self, gain: np.ndarray) -> np.ndarray:
        """``W * gain`` over the input-channel axis, in float64 (exact for float32 factors)."""
        raise NotImplementedError

    def _freeze_gains(self) -> None:
        if self.input_gains is None:
            return
        # Gains take the number kind of the weights: float32 beside float weights, as given beside integer ones.
        floats = self.weight.dtype.kind == "f"
        gains = tuple(_frozen_array(np.asarray(g, np.float32) if floats else np.asarray(g)) for g in self.input_gains)
        object.__setattr__(self, "input_gains", gains)
        if not gains:
            raise IRError(f"{self.kind}: input_gains must hold one gain per input, got none")
        for i, g in enumerate(gains):
            if g.shape not in ((), (self._gains_axis(),)):
                raise IRError(f"{self.kind}: input gain {i} has shape {g.shape}; expected a scalar or one value per "
                              f"input channel ({self._gains_axis()},)")
            if not np.all(np.isfinite(g)):
                raise IRError(f"{self.kind}: input gain {i} is not finite")

    def per_input(self) -> tuple[Op, ...]:
        """One single-input op per operand: weights ``W * g_i`` rounded to float32, the bias in the first only
        (the per-train copies the op stands for; the kernels and the synaptic-operation count use them)."""
        if self.input_gains is None:
            return (self,)
        cached = self.__dict__.get("_per_input")
        if cached is None:
            cached = tuple(self.replace(weight=self._scaled_weight(g), input_gains=None,
                                        bias=self.bias if i == 0 else None)
                           for i, g in enumerate(self.input_gains))
            self.__dict__["_per_input"] = cached  # the op is immutable, so its copies are too
        return cached

    def _operand(self, inputs: list[TensorType]) -> TensorType:
        """The operands' common type; raises IRError when their number or shapes do not fit."""
        if len(inputs) != self.input_count:
            raise IRError(f"{self.kind}: {len(inputs)} operands but {self.input_count} input gain(s); give one gain "
                          "per operand (input_gains) or a single operand")
        shapes = {t.shape for t in inputs}
        if len(shapes) > 1:
            raise IRError(f"{self.kind}: operands of one shared-weight layer must have one shape, got "
                          f"{[t.shape for t in inputs]}")
        return inputs[0]


@dataclass(frozen=True, eq=False)
class Input(Op):
    """A graph input of per-sample ``shape``; its coding is always analog (the data enter as constant currents).

    ``dtype`` and ``bits`` give its number format (:class:`~snncc.ir.types.TensorType`); unset, float32."""

    kind: ClassVar[str] = "Input"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    arity: ClassVar[int | None] = 0
    shape: tuple[int, ...] = ()
    name: str = "input"
    dtype: str | None = None  # None: float32, the format of every ann- and snn-level input
    bits: int | None = None

    def validate(self) -> None:
        if not self.shape or any(int(d) != d or d < 1 for d in self.shape):
            raise IRError(f"Input {self.name!r}: shape must be positive integers, got {self.shape}")
        check_format(self.dtype or DEFAULT_DTYPE, self.bits, f"Input {self.name!r}")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        return TensorType(tuple(self.shape), Analog(), self.dtype or DEFAULT_DTYPE, self.bits)


@dataclass(frozen=True, eq=False)
class Conv2d(_SharedWeights):
    """2-D convolution ``y[o] = b[o] + sum_{i,kh,kw} W[o,i,kh,kw] * pad(x)[i, s*y+d*kh, s*x+d*kw]`` (cross-correlation).

    ``padding`` is (top, left, bottom, right). ``pad_value`` is the value padded in per input channel: 0 except after
    an input normalization ``(x - mean) / std`` has been folded into the weights, where padding with ``mean`` keeps
    the folded layer exact at the borders. ``input_gains``: several operands through the same weights, see
    :class:`_SharedWeights` (a gain is a scalar or one value per input channel).
    """

    kind: ClassVar[str] = "Conv2d"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    synaptic: ClassVar[bool] = True
    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 1, 1)))
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    pad_value: np.ndarray | None = None
    input_gains: tuple[np.ndarray, ...] | None = None

    def validate(self) -> None:
        if self.weight.ndim != 4:
            raise IRError(f"Conv2d: weight must be [out, in/groups, kh, kw], got shape {self.weight.shape}")
        out_channels = self.weight.shape[0]
        if self.groups < 1 or out_channels % self.groups:
            raise IRError(f"Conv2d: groups={self.groups} must divide the {out_channels} output channels")
        if self.bias is not None and self.bias.shape != (out_channels,):
            raise IRError(f"Conv2d: bias shape {self.bias.shape} does not match {out_channels} output channels")
        _pair("stride", self.kind, self.stride)
        _pair("dilation", self.kind, self.dilation)
        _pair("padding", self.kind, self.padding, n=4, minimum=0)
        if self.pad_value is not None and self.pad_value.shape != (self.in_channels,):
            raise IRError(f"Conv2d: pad_value must have one entry per input channel ({self.in_channels}), "
                          f"got shape {self.pad_value.shape}")
        if self.pad_value is not None and self.input_gains is not None:
            raise IRError("Conv2d: pad_value applies to one analog operand; a layer with input_gains reads spike "
                          "trains, which are padded with zeros")
        self._freeze_gains()

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    def _gains_axis(self) -> int:
        return self.in_channels

    def _scaled_weight(self, gain: np.ndarray) -> np.ndarray:
        out_ch, per_group, kh, kw = self.weight.shape
        grouped = self.weight.astype(np.float64).reshape(self.groups, out_ch // self.groups, per_group, kh, kw)
        factor = np.broadcast_to(np.asarray(gain, np.float64), (self.in_channels,))
        return (grouped * factor.reshape(self.groups, 1, per_group, 1, 1)).reshape(self.weight.shape)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = self._operand(inputs)
        _expect_rank(self.kind, x, 3)
        if x.shape[0] != self.in_channels:
            raise IRError(f"Conv2d: input has {x.shape[0]} channels, weight {self.weight.shape} with "
                          f"groups={self.groups} expects {self.in_channels}")
        h, w = _spatial_out(self.kind, x.shape[1:], self.weight.shape[2:], self.stride, self.padding, self.dilation)
        return TensorType((self.weight.shape[0], h, w), self.output_coding(inputs))


@dataclass(frozen=True, eq=False)
class Linear(_SharedWeights):
    """Fully connected layer ``y = W x + b`` with ``W`` of shape [out, in] on a rank-1 input. ``input_gains``:
    several operands through the same weights, see :class:`_SharedWeights` (a gain is a scalar or one value per
    input feature)."""

    kind: ClassVar[str] = "Linear"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    synaptic: ClassVar[bool] = True
    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1)))
    bias: np.ndarray | None = None
    input_gains: tuple[np.ndarray, ...] | None = None

    def validate(self) -> None:
        if self.weight.ndim != 2:
            raise IRError(f"Linear: weight must be [out, in], got shape {self.weight.shape}")
        if self.bias is not None and self.bias.shape != (self.weight.shape[0],):
            raise IRError(f"Linear: bias shape {self.bias.shape} does not match {self.weight.shape[0]} outputs")
        self._freeze_gains()

    def _gains_axis(self) -> int:
        return self.weight.shape[1]

    def _scaled_weight(self, gain: np.ndarray) -> np.ndarray:
        return self.weight.astype(np.float64) * np.asarray(gain, np.float64).reshape(1, -1)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = self._operand(inputs)
        if x.shape != (self.weight.shape[1],):
            raise IRError(f"Linear: input shape {x.shape} does not match weight {self.weight.shape} "
                          f"(expected ({self.weight.shape[1]},))")
        return TensorType((self.weight.shape[0],), self.output_coding(inputs))


@dataclass(frozen=True, eq=False)
class _Pool2d(Op):
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    def validate(self) -> None:
        _pair("kernel", self.kind, self.kernel)
        _pair("stride", self.kind, self.stride)
        _pair("padding", self.kind, self.padding, n=4, minimum=0)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        _expect_rank(self.kind, x, 3)
        h, w = _spatial_out(self.kind, x.shape[1:], self.kernel, self.stride, self.padding)
        return TensorType((x.shape[0], h, w), self.output_coding(inputs))


@dataclass(frozen=True, eq=False)
class AvgPool2d(_Pool2d):
    """Average pooling; with ``count_include_pad`` false the divisor counts only the real (unpadded) inputs."""

    kind: ClassVar[str] = "AvgPool2d"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    synaptic: ClassVar[bool] = True
    count_include_pad: bool = False


@dataclass(frozen=True, eq=False)
class MaxPool2d(_Pool2d):
    """Max pooling of real values (padding acts as -inf). At the SNN level it is legal only on analog edges."""

    kind: ClassVar[str] = "MaxPool2d"


@dataclass(frozen=True, eq=False)
class SpikingMaxPool2d(_Pool2d):
    """Max pooling of spike trains by their running spike counts.

    With ``N_j(t)`` the number of spikes input ``j`` of a window has emitted up to step ``t``, the output emits a
    spike at ``t`` exactly when ``max_j N_j(t) > max_j N_j(t-1)``. Spike counts grow by at most one per step, so the
    output is a binary spike train and its count equals ``max_j N_j(t)`` at every step: the max pooling of the
    rates, without the approximation of gating by an online rate estimate (Rueckauer et al. 2017, Sec. 2.2.4).
    """

    kind: ClassVar[str] = "SpikingMaxPool2d"
    levels: ClassVar[frozenset[str]] = frozenset({SNN, HW})


@dataclass(frozen=True, eq=False)
class GlobalAvgPool(Op):
    """Mean over the spatial axes: [C, H, W] -> [C]. (ONNX keeps [C, 1, 1]; the frontend adds a Reshape if used.)"""

    kind: ClassVar[str] = "GlobalAvgPool"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    synaptic: ClassVar[bool] = True

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        _expect_rank(self.kind, x, 3)
        return TensorType((x.shape[0], 1, 1), self.output_coding(inputs))


@dataclass(frozen=True, eq=False)
class Pad2d(Op):
    """Constant padding of the two spatial axes, (top, left, bottom, right)."""

    kind: ClassVar[str] = "Pad2d"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    passes_spikes: ClassVar[bool] = True
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    value: float = 0.0

    def validate(self) -> None:
        _pair("padding", self.kind, self.padding, n=4, minimum=0)

    @property
    def fill_value(self) -> float:
        return self.value

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        _expect_rank(self.kind, x, 3)
        t, l, b, r = self.padding
        return replace(x, shape=(x.shape[0], x.shape[1] + t + b, x.shape[2] + l + r))


@dataclass(frozen=True, eq=False)
class ChannelPad(Op):
    """Constant padding of the first per-sample axis (channels, or the features of a vector):

    ``y[c] = x[c - before]`` for ``before <= c < before + C``, else ``value``; ``C + before + after`` channels.
    The zero-padded identity shortcut of CIFAR ResNets (He et al. 2016, option A) is one.
    """

    kind: ClassVar[str] = "ChannelPad"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    passes_spikes: ClassVar[bool] = True
    before: int = 0
    after: int = 0
    value: float = 0.0

    def validate(self) -> None:
        _pair("(before, after)", self.kind, (self.before, self.after), minimum=0)

    @property
    def fill_value(self) -> float:
        return self.value

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        if not x.shape:
            raise IRError(f"ChannelPad: needs an input with a channel axis, got shape {x.shape}")
        return replace(x, shape=(x.shape[0] + self.before + self.after,) + x.shape[1:])


@dataclass(frozen=True, eq=False)
class Slice(Op):
    """Strided slice of every per-sample axis: ``y[i_0, i_1, ...] = x[start_0 + step_0 i_0, start_1 + step_1 i_1,
    ...]`` with ``0 <= i_k < ceil((stop_k - start_k) / step_k)`` (numpy's ``x[start:stop:step, ...]``).

    ``x[:, :, ::2, ::2]`` (the subsampling of option-A shortcuts) is ``starts=(0, 0, 0)``, ``steps=(1, 2, 2)``.
    """

    kind: ClassVar[str] = "Slice"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    passes_spikes: ClassVar[bool] = True
    starts: tuple[int, ...] = ()
    stops: tuple[int, ...] = ()
    steps: tuple[int, ...] = ()

    def validate(self) -> None:
        rank = len(self.starts)
        if not rank or len(self.stops) != rank or len(self.steps) != rank:
            raise IRError(f"Slice: starts {self.starts}, stops {self.stops} and steps {self.steps} must have one "
                          "entry per per-sample axis")
        _pair("starts", self.kind, self.starts, n=rank, minimum=0)
        _pair("steps", self.kind, self.steps, n=rank)
        if any(b <= a for a, b in zip(self.starts, self.stops)):
            raise IRError(f"Slice: every stop must exceed its start (no empty slices), got starts {self.starts} "
                          f"and stops {self.stops}")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        _expect_rank(self.kind, x, len(self.starts))
        if any(stop > d for stop, d in zip(self.stops, x.shape)):
            raise IRError(f"Slice: stops {self.stops} exceed the input shape {x.shape}")
        shape = tuple(len(range(a, b, c)) for a, b, c in zip(self.starts, self.stops, self.steps))
        return replace(x, shape=shape)


@dataclass(frozen=True, eq=False)
class Flatten(Op):
    """Flatten every per-sample axis into one (ONNX Flatten with axis=1)."""

    kind: ClassVar[str] = "Flatten"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    passes_spikes: ClassVar[bool] = True
    is_view: ClassVar[bool] = True

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        return replace(x, shape=(x.size,))


@dataclass(frozen=True, eq=False)
class Reshape(Op):
    """Reshape to the per-sample ``shape`` (row-major, like numpy)."""

    kind: ClassVar[str] = "Reshape"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    passes_spikes: ClassVar[bool] = True
    is_view: ClassVar[bool] = True
    shape: tuple[int, ...] = ()

    def validate(self) -> None:
        if not self.shape or any(d < 1 for d in self.shape):
            raise IRError(f"Reshape: target shape must be positive integers, got {self.shape}")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        if math.prod(self.shape) != x.size:
            raise IRError(f"Reshape: cannot reshape {x.shape} ({x.size} values) to {self.shape}")
        return replace(x, shape=tuple(self.shape))


@dataclass(frozen=True, eq=False)
class Affine(Op):
    """Element-wise ``y = x * scale + shift`` with arrays broadcastable to the per-sample shape.

    It carries BatchNorm in inference form, input normalization and the Mul/Add/Sub/Div-by-constant nodes of
    exporters until canonicalize folds it into a neighbouring Conv2d or Linear.
    """

    kind: ClassVar[str] = "Affine"
    scale: np.ndarray = field(default_factory=lambda: np.ones(()))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(()))

    def infer(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        for name in ("scale", "shift"):
            arr = getattr(self, name)
            try:
                out = np.broadcast_shapes(arr.shape, x.shape)
            except ValueError:
                out = None
            if out != x.shape:
                raise IRError(f"Affine: {name} of shape {arr.shape} does not broadcast to the input {x.shape}")
        return TensorType(x.shape, self.output_coding(inputs))


@dataclass(frozen=True, eq=False)
class Add(Op):
    """Element-wise sum of two inputs of equal shape (residual connections)."""

    kind: ClassVar[str] = "Add"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    arity: ClassVar[int | None] = 2

    def infer(self, inputs: list[TensorType]) -> TensorType:
        a, b = inputs
        if a.shape != b.shape:
            raise IRError(f"Add: input shapes {a.shape} and {b.shape} differ (broadcasting Adds are not supported)")
        return TensorType(a.shape, self.output_coding(inputs))


@dataclass(frozen=True, eq=False)
class Concat(Op):
    """Concatenation along per-sample ``axis`` (0 is the channel axis)."""

    kind: ClassVar[str] = "Concat"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    arity: ClassVar[int | None] = None
    axis: int = 0

    def infer(self, inputs: list[TensorType]) -> TensorType:
        first = inputs[0].shape
        if not 0 <= self.axis < len(first):
            raise IRError(f"Concat: axis {self.axis} out of range for per-sample shape {first}")
        for t in inputs[1:]:
            if len(t.shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(t.shape, first))
                                                 if i != self.axis):
                raise IRError(f"Concat: shapes {[t.shape for t in inputs]} differ off axis {self.axis}")
        shape = list(first)
        shape[self.axis] = sum(t.shape[self.axis] for t in inputs)
        return TensorType(tuple(shape), self.output_coding(inputs))


@dataclass(frozen=True, eq=False)
class Identity(Op):
    """Passes its input through (ONNX Identity and inference-mode Dropout); canonicalize removes it."""

    kind: ClassVar[str] = "Identity"
    levels: ClassVar[frozenset[str]] = _EVERY_LEVEL
    passes_spikes: ClassVar[bool] = True
    is_view: ClassVar[bool] = True

    def infer(self, inputs: list[TensorType]) -> TensorType:
        return inputs[0]


@dataclass(frozen=True, eq=False)
class _Activation(Op):
    levels: ClassVar[frozenset[str]] = frozenset({ANN})

    def infer(self, inputs: list[TensorType]) -> TensorType:
        return inputs[0]


@dataclass(frozen=True, eq=False)
class PointwiseActivation(_Activation):
    """An element-wise activation ``y[i] = f(x[i])``.

    ``function(x)`` evaluates ``f`` on a numpy array and returns float32 (it is the op's runtime kernel, safe over
    the whole float32 range, see :mod:`snncc.ir.functions`). ``monotone`` is True when ``f`` is non-decreasing,
    ``x <= x'  =>  f(x) <= f(x')``: then ``f`` commutes with max pooling, ``max_j f(x_j) = f(max_j x_j)``. A
    conversion pass can treat every activation through these two members alone.
    """

    monotone: ClassVar[bool] = True

    def function(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Relu(PointwiseActivation):
    """``max(x, 0)``."""

    kind: ClassVar[str] = "Relu"

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.relu(x)


@dataclass(frozen=True, eq=False)
class Clip(PointwiseActivation):
    """``min(max(x, min), max)``; ReLU6 is ``Clip(0, 6)``. A missing bound is +-inf."""

    kind: ClassVar[str] = "Clip"
    min: float = 0.0
    max: float = math.inf

    def validate(self) -> None:
        if not self.min <= self.max:
            raise IRError(f"Clip: min {self.min} is greater than max {self.max}")

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.clip(x, self.min, self.max)


@dataclass(frozen=True, eq=False)
class LeakyRelu(PointwiseActivation):
    """``x if x >= 0 else alpha * x``; monotone for ``alpha >= 0``."""

    kind: ClassVar[str] = "LeakyRelu"
    alpha: float = 0.01

    @property
    def monotone(self) -> bool:  # type: ignore[override]
        return self.alpha >= 0

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.leaky_relu(x, self.alpha)


@dataclass(frozen=True, eq=False)
class Sigmoid(PointwiseActivation):
    """``1 / (1 + exp(-x))``, from 0 to 1."""

    kind: ClassVar[str] = "Sigmoid"

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.sigmoid(x)


@dataclass(frozen=True, eq=False)
class Tanh(PointwiseActivation):
    """``tanh(x) = 2 sigmoid(2x) - 1``, from -1 to 1."""

    kind: ClassVar[str] = "Tanh"

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.tanh(x)


@dataclass(frozen=True, eq=False)
class HardSigmoid(PointwiseActivation):
    """``max(0, min(1, alpha * x + beta))`` (ONNX defaults alpha 0.2, beta 0.5; torch's Hardsigmoid has alpha 1/6).

    Monotone for ``alpha >= 0``.
    """

    kind: ClassVar[str] = "HardSigmoid"
    alpha: float = 0.2
    beta: float = 0.5

    def validate(self) -> None:
        for name in ("alpha", "beta"):
            if not math.isfinite(getattr(self, name)):
                raise IRError(f"HardSigmoid: {name} must be finite, got {getattr(self, name)}")

    @property
    def monotone(self) -> bool:  # type: ignore[override]
        return self.alpha >= 0

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.hard_sigmoid(x, self.alpha, self.beta)


@dataclass(frozen=True, eq=False)
class HardSwish(PointwiseActivation):
    """``x * relu6(x + 3) / 6 = x * max(0, min(1, x / 6 + 1/2))``; its minimum is -3/8 at ``x = -3/2``."""

    kind: ClassVar[str] = "HardSwish"
    monotone: ClassVar[bool] = False

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.hard_swish(x)


@dataclass(frozen=True, eq=False)
class Silu(PointwiseActivation):
    """SiLU (Swish), ``x * sigmoid(x)``; its minimum is about -0.2785 at ``x = -1.2785``."""

    kind: ClassVar[str] = "Silu"
    monotone: ClassVar[bool] = False

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.silu(x)


GELU_APPROXIMATIONS = ("none", "tanh")


@dataclass(frozen=True, eq=False)
class Gelu(PointwiseActivation):
    """GELU, ``x * Phi(x)`` with ``Phi`` the standard normal distribution function: ``(1 + erf(x / sqrt 2)) / 2``
    with ``approximate="none"``, ``(1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`` with ``approximate="tanh"``.
    Its minimum is about -0.17 at ``x = -0.75``."""

    kind: ClassVar[str] = "Gelu"
    monotone: ClassVar[bool] = False
    approximate: str = "none"

    def validate(self) -> None:
        if self.approximate not in GELU_APPROXIMATIONS:
            raise IRError(f"Gelu: approximate must be one of {GELU_APPROXIMATIONS}, got {self.approximate!r}")

    def function(self, x: np.ndarray) -> np.ndarray:
        return functions.gelu(x, self.approximate)


@dataclass(frozen=True, eq=False)
class Softmax(_Activation):
    """Softmax (or log-softmax) over per-sample ``axis``; argmax-invariant, so the SNN readout drops it at the output."""

    kind: ClassVar[str] = "Softmax"
    axis: int = 0
    log: bool = False


@dataclass(frozen=True, eq=False)
class Population(Op):
    """A population of spiking neurons, one unit per element of its input current; it emits spikes (0 or 1 per step).

    A unit is one neuron, except for neuron models with ``neurons_per_unit > 1`` (an AMOS unit is a circuit of K
    neurons). IF/LIF populations emit rate-coded spike trains; FS and AMOS populations the few-spike code."""

    kind: ClassVar[str] = "Population"
    levels: ClassVar[frozenset[str]] = frozenset({SNN, HW})
    keeps_coding: ClassVar[bool] = False
    neuron: NeuronModel | None = None

    def validate(self) -> None:
        if not isinstance(self.neuron, NeuronModel):
            raise IRError(f"Population: neuron must be a neuron model, got {self.neuron!r}")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        self.neuron.check_input_shape(inputs[0].shape)
        coding = FewSpikeCode() if self.neuron.emits_few_spike_code else Rate()
        return TensorType(inputs[0].shape, coding)


@dataclass(frozen=True, eq=False)
class Readout(Op):
    """Non-spiking output: integrates its input current and reports the running mean ``(1/t) sum_tau I(tau)``.

    The class predicted after ``t`` steps is the argmax of that mean (a membrane without threshold, Rueckauer et al.
    2017), so one run answers for every latency up to the number of steps simulated.
    """

    kind: ClassVar[str] = "Readout"
    levels: ClassVar[frozenset[str]] = frozenset({SNN, HW})
    keeps_coding: ClassVar[bool] = False

    def infer(self, inputs: list[TensorType]) -> TensorType:
        return TensorType(inputs[0].shape, Analog())


OPS: dict[str, type[Op]] = {cls.kind: cls for cls in (
    Input, Conv2d, Linear, AvgPool2d, MaxPool2d, SpikingMaxPool2d, GlobalAvgPool, Pad2d, ChannelPad, Slice,
    Flatten, Reshape, Affine, Add, Concat, Identity, Relu, Clip, LeakyRelu, Sigmoid, Tanh, HardSigmoid, HardSwish,
    Silu, Gelu, Softmax, Population, Readout)}

#: Element-wise activations (each with ``function`` and ``monotone``).
POINTWISE_ACTIVATIONS: tuple[type[PointwiseActivation], ...] = tuple(
    cls for cls in OPS.values() if issubclass(cls, PointwiseActivation))
ACTIVATIONS: tuple[type[Op], ...] = (*POINTWISE_ACTIVATIONS, Softmax)
