"""``convert-fs`` and ``convert-amos``: temporally coded SNNs with few spikes (Stoeckl & Maass 2020, 2021).

Every activation becomes a population of temporal neurons that receive their input once and answer within ``K``
steps (see :mod:`snncc.ir.neurons` for the FS and AMOS equations, :mod:`snncc.runtime.temporal` for the layer
pipeline):

- **ReLU** (and ``Clip(0, c)``) use the exact closed form, a rounding binary expansion on ``[0, alpha)``
  (:func:`~snncc.passes.fs_fit.relu_closed_form`). After ``normalize`` (per-channel ranges folded into the weights)
  ``alpha = 1``; without it ``alpha`` is the layer's ``percentile``-th percentile on the calibration data.
- **Any other element-wise activation** (LeakyReLU, SiLU, GELU, sigmoid, tanh, hard sigmoid/swish, ...) gets FS
  parameters fitted on the inputs that layer receives on the calibration data
  (:func:`~snncc.passes.fs_fit.fit_few_spike`; deterministic for the seed, cached).
- **Max pooling after a monotone activation** is moved in front of it (``maxpool(f(x)) = f(maxpool(x))`` for a
  non-decreasing ``f``), so the pooled currents feed a quarter of the neurons and no spike-domain max is needed;
  after a non-monotone activation the max is taken over the decoded values.
- Biases stay in their layers (the current is delivered once, bias included); average pooling, Add and Concat act
  on decoded values; a softmax at the output is dropped and every output gets a ``Readout``.

``convert-amos`` does the same and then turns every FS unit into an AMOS circuit of ``K`` neurons that each fire at
most once (:meth:`~snncc.ir.neurons.Amos.from_few_spike`, exact), refining the fitted units' parameters by
gradient descent when ``refine=true`` (kept only where the error drops).

Per population the pass records the fit in ``graph.meta[node]["fs_fit"]``: the method, and the mean squared and
maximum absolute error of the unit against the activation on that layer's calibration inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from snncc.errors import PassError, UnsupportedModelError
from snncc.ir import ANN, SNN, Graph, ops
from snncc.ir.neurons import Amos
from snncc.passes.base import Pass, PassContext, register
from snncc.passes.fs_fit import FitResult, FitSettings, fit_error, fit_few_spike, refine_amos, relu_closed_form, subsample
from snncc.runtime import run_analog

_SAMPLES_PER_BATCH = 4096


def is_monotone(op: ops.Op) -> bool:
    return isinstance(op, ops.PointwiseActivation) and op.monotone


def _activations(graph: Graph) -> list[str]:
    return [n for n in graph.topological_order() if isinstance(graph.op(n), ops.PointwiseActivation)]


def _describe(op: ops.Op) -> dict:
    """A JSON description of an activation, for the fit cache key."""
    return {"op": op.kind, **{k: (v if not isinstance(v, float) or np.isfinite(v) else str(v))
                              for k, v in op.params().items()}}


def swap_max_pools(graph: Graph) -> list[str]:
    """Move every MaxPool2d that follows a monotone activation (its only user) in front of it; returns the pools."""
    moved = []
    for pool in graph.find(ops.MaxPool2d):
        (act,) = graph.inputs(pool)
        if not is_monotone(graph.op(act)) or len(graph.users(act)) != 1 or act in graph.outputs:
            continue
        (source,) = graph.inputs(act)
        graph.set_inputs(pool, [source])
        for user, _ in graph.users(pool):
            graph.set_inputs(user, [act if u == pool else u for u in graph.inputs(user)])
        graph.set_inputs(act, [pool])
        graph.outputs[:] = [act if o == pool else o for o in graph.outputs]
        moved.append(pool)
    return moved


def collect_inputs(graph: Graph, nodes: list[str], x: np.ndarray, seed: int,
                   progress: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A seeded random subsample of the inputs of every node in ``nodes`` over calibration inputs ``x``, and the
    exact maximum of each (a subsample would miss it)."""
    sources = {n: graph.inputs(n)[0] for n in nodes}
    kept: dict[str, list[np.ndarray]] = {n: [] for n in nodes}
    maxima = {n: -np.inf for n in nodes}
    rng = np.random.default_rng(seed)

    def keep(values: dict[str, np.ndarray]) -> None:
        for n, src in sources.items():
            flat = values[src].reshape(-1)
            maxima[n] = max(maxima[n], float(flat.max()))
            if flat.size > _SAMPLES_PER_BATCH:
                flat = flat[rng.choice(flat.size, _SAMPLES_PER_BATCH, replace=False)]
            kept[n].append(flat.astype(np.float32))

    for start in tqdm(range(0, len(x), 512), desc="calibrating FS", unit="chunk", disable=not progress, leave=False):
        run_analog(graph, x[start:start + 512], batch_size=128, record=set(sources.values()), on_batch=keep)
    return {n: np.concatenate(parts) for n, parts in kept.items()}, maxima


@register
@dataclass(frozen=True)
class ConvertFewSpike(Pass):
    """Activations -> FS populations of ``steps`` time steps (closed form for ReLU, fitted otherwise)."""

    name = "convert-fs"
    requires_level = ANN
    steps: int = 8
    percentile: float = 99.99
    fit_iterations: int = 1000
    fit_restarts: int = 3
    cache: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 32:
            raise PassError(f"{self.name}: steps must be between 1 and 32, got {self.steps}")
        if not 0 < self.percentile <= 100:
            raise PassError(f"{self.name}: percentile must be in (0, 100], got {self.percentile}")
        if self.fit_iterations < 0 or self.fit_restarts < 1:
            raise PassError(f"{self.name}: fit_iterations must be >= 0 and fit_restarts >= 1")

    def settings(self) -> FitSettings:
        return FitSettings(iterations=self.fit_iterations, restarts=self.fit_restarts)

    def run(self, graph: Graph, context: PassContext) -> bool:
        self._check_supported(graph)
        normalized = bool(graph.attrs.get("normalization"))
        swap_max_pools(graph)
        nodes = _activations(graph)
        closed = {n for n in nodes if self._closed_form_applies(graph.op(n), normalized)}
        need_data = [n for n in nodes if n not in closed or not normalized]
        samples: dict[str, np.ndarray] = {}
        maxima: dict[str, float] = {}
        if need_data:
            if context.calibration is None or len(context.calibration) == 0:
                raise PassError(f"{self.name} needs calibration data to fit the neurons of {need_data[:3]}"
                                f"{' ...' if len(need_data) > 3 else ''}; pass --calib DATA")
            samples, maxima = collect_inputs(graph, need_data, context.calibration, context.seed, context.progress)
        for node in tqdm(nodes, desc=f"{self.name}: fitting", unit="layer", disable=not context.progress, leave=False):
            op = graph.op(node)
            result = self._unit(op, node in closed, normalized, samples.get(node), maxima.get(node), context.seed)
            result = self.finish_unit(op, result, samples.get(node), context.seed)
            graph.replace(node, ops.Population(neuron=result.neuron))
            info = {"method": result.method, "mse": result.mse, "max_abs_error": result.max_abs_error,
                    "activation": op.kind}
            graph.meta.setdefault(node, {})["fs_fit"] = info
        for out in list(graph.outputs):
            if isinstance(graph.op(out), ops.Softmax):
                graph.bypass(out)
        graph.attrs["level"] = SNN
        for i, out in enumerate(list(graph.outputs)):
            graph.outputs[i] = graph.insert_after(out, ops.Readout(), name=f"{out}.readout", created_by=self.name)
        graph.attrs["conversion"] = {"method": self.method(), "pass": self.to_text(), "steps": self.steps}
        return True

    def method(self) -> str:
        return "fs"

    def finish_unit(self, op: ops.Op, result: FitResult, samples: np.ndarray | None, seed: int) -> FitResult:
        """Hook for convert-amos: the unit as this pass emits it."""
        return result

    @staticmethod
    def _closed_form_applies(op: ops.Op, normalized: bool) -> bool:
        if isinstance(op, ops.Relu):
            return True
        # Clip(0, c): the binary expansion saturates at alpha, which must not exceed c.
        return isinstance(op, ops.Clip) and op.min == 0 and (op.max >= 1 - 1e-6 or not normalized)

    def _unit(self, op: ops.Op, closed_form: bool, normalized: bool, samples: np.ndarray | None,
              maximum: float | None, seed: int) -> FitResult:
        function = op.function  # the activation's own float32 function, the ANN executor's kernel
        if closed_form:
            if normalized:
                alpha = 1.0 if not isinstance(op, ops.Clip) else min(1.0, op.max)
            else:
                positive = samples[samples > 0]
                if self.percentile == 100:
                    alpha = maximum if maximum > 0 else 1.0
                else:
                    alpha = float(np.percentile(positive, self.percentile)) if positive.size else 1.0
                alpha = min(alpha, op.max) if isinstance(op, ops.Clip) else alpha
            neuron = relu_closed_form(self.steps, alpha)
            check = subsample(samples, 4096, seed) if samples is not None else \
                np.linspace(-0.5, 1.5, 4097, dtype=np.float32) * alpha
            mse, worst = fit_error(neuron, function, check)
            return FitResult(neuron, mse, worst, "closed-form")
        return fit_few_spike(function, _describe(op), samples, self.steps, seed, self.settings(), self.cache)

    def _check_supported(self, graph: Graph) -> None:
        problems = []
        for node in graph.topological_order():
            op = graph.op(node)
            if isinstance(op, ops.Softmax) and node not in graph.outputs:
                problems.append(f"{node!r} (Softmax): only a softmax at the output can be dropped")
        if problems:
            raise UnsupportedModelError(f"{self.name} cannot convert:\n  " + "\n  ".join(problems))


@register
@dataclass(frozen=True)
class ConvertAmos(ConvertFewSpike):
    """Activations -> AMOS circuits of ``steps`` neurons firing at most once each (from the FS units, refined)."""

    name = "convert-amos"
    refine: bool = True

    def method(self) -> str:
        return "amos"

    def finish_unit(self, op: ops.Op, result: FitResult, samples: np.ndarray | None, seed: int) -> FitResult:
        fs = result.neuron
        if not self.refine or result.method == "closed-form" or samples is None:
            return FitResult(Amos.from_few_spike(fs), result.mse, result.max_abs_error, result.method)
        return refine_amos(op.function, _describe(op), samples, fs, seed, self.settings(), self.cache)
