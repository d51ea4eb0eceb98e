"""Fitting FS and AMOS neuron parameters to an activation function on the inputs a layer actually receives.

FS neurons (Stoeckl & Maass 2021) approximate an activation ``f`` by ``fs(x) = offset + sum_t d(t) z(t)`` with the
spikes ``z(t)`` of :func:`snncc.runtime.fewspike.few_spike`. Two ways to get the parameters:

- **Closed form for ReLU** (and Clip(0, c) with c at or above the range): a binary expansion of ``x`` on
  ``[0, alpha)``: ``h(t) = d(t) = alpha 2^-t``, and ``T(t) = alpha (2^-t - 2^-(K+1))``. The paper's thresholds
  ``T(t) = alpha 2^-t`` truncate to ``K`` bits; lowering every threshold by half a least significant bit makes the
  code round instead (``fs(x) = alpha round(2^K x / alpha) / 2^K``, saturating at ``alpha (1 - 2^-K)``), which halves
  the worst-case error and removes its bias, the same shift as ``v_init = 0.5`` for rate coding.
- **Gradient descent for any f** (the paper's method): minimize the squared error between ``f`` and ``fs``, from
  several starts (binary expansions of the input range, one with a staircase of non-resetting steps, then perturbed
  copies), with a penalty that keeps the membrane within the input range of its thresholds. The FS fit descends on
  a smooth relaxation, logistic spikes whose width shrinks from half to a hundredth of each step's height; every
  50 iterations the hard-spike solution is scored (with the least-squares output weights for its spikes) and the
  best is kept. The AMOS refinement uses a straight-through surrogate instead (hard spikes forward, the logistic's
  derivative backward), starting from the FS unit, which is already close. Going beyond the paper, which fits on a fixed
  interval, the error is taken over the layer's own input distribution measured on calibration data (plus a
  light uniform grid over its range so behaviour between samples stays sane): the error is smallest where the
  inputs actually are.

Every fit reports the error of its final parameters as computed by the runtime's own dynamics (float32, hard
spikes) on its samples, so the reported error is what the simulator gives. Fits are deterministic for a seed and
cached on disk (``$SNNCC_CACHE_DIR``, default ``~/.cache/snncc``) keyed by the function, K, the fit settings and a
hash of the samples; a cache entry that fails validation is ignored and refitted.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snncc.errors import PassError
from snncc.fileio import write_json
from snncc.ir.neurons import Amos, FewSpike
from snncc.runtime.fewspike import amos, few_spike

CACHE_SCHEMA_VERSION = 1
# Bumped whenever the fitting procedure changes, so stale cache entries are not reused.
FIT_VERSION = 1


@dataclass(frozen=True)
class FitSettings:
    """Knobs of the gradient fit. ``grid_weight``: share of the loss on the uniform grid over the input range."""

    iterations: int = 1000
    restarts: int = 3
    learning_rate: float = 0.01
    grid_weight: float = 0.05
    membrane_weight: float = 1e-3
    max_samples: int = 4096


@dataclass(frozen=True)
class FitResult:
    """Fitted neuron and its errors on the fit's samples: ``mse`` (the objective's data term, hard spikes) and
    ``max_abs_error`` over the samples."""

    neuron: FewSpike | Amos
    mse: float
    max_abs_error: float
    method: str  # "closed-form", "gradient" or "cache"

    def to_json(self) -> dict:
        return {"neuron": self.neuron.to_json(), "mse": self.mse, "max_abs_error": self.max_abs_error,
                "method": self.method}


def relu_closed_form(steps: int, alpha: float = 1.0) -> FewSpike:
    """FS parameters that compute ReLU on ``[0, alpha)`` exactly to ``steps`` bits, rounding to nearest."""
    if steps < 1:
        raise PassError(f"FS needs at least one time step, got K={steps}")
    if not alpha > 0:
        raise PassError(f"FS closed form: the range alpha must be positive, got {alpha}")
    powers = [alpha * 2.0 ** -t for t in range(1, steps + 1)]
    half_lsb = alpha * 2.0 ** -(steps + 1)
    return FewSpike(threshold=tuple(p - half_lsb for p in powers), height=tuple(powers), weight=tuple(powers))


def fit_error(neuron: FewSpike | Amos, function: Callable[[np.ndarray], np.ndarray],
              samples: np.ndarray) -> tuple[float, float]:
    """(mean squared error, max absolute error) of ``neuron`` against ``function`` on ``samples``, as simulated."""
    samples = np.asarray(samples, dtype=np.float32)
    dynamics = few_spike if isinstance(neuron, FewSpike) else amos
    out, _ = dynamics(neuron, samples)
    diff = out.astype(np.float64) - np.asarray(function(samples), dtype=np.float64)
    return float(np.mean(diff ** 2)), float(np.max(np.abs(diff))) if diff.size else 0.0


def _cache_dir() -> Path:
    return Path(os.environ.get("SNNCC_CACHE_DIR", Path.home() / ".cache" / "snncc")) / "fs-fits"


def _cache_key(description: dict, samples: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _cache_read(key: str) -> FitResult | None:
    from snncc.ir.neurons import neuron_from_json

    path = _cache_dir() / f"{key}.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("schema_version") != CACHE_SCHEMA_VERSION or data.get("key") != key:
            raise ValueError("schema or key mismatch")
        neuron = neuron_from_json(data["neuron"])
        return FitResult(neuron, float(data["mse"]), float(data["max_abs_error"]), "cache")
    except Exception as exc:  # a damaged cache entry must never stop a compile: refit instead
        warnings.warn(f"ignoring the FS fit cache entry {path} ({exc}); refitting", stacklevel=3)
        return None


def _cache_write(key: str, result: FitResult) -> None:
    directory = _cache_dir()
    try:
        data = {"schema_version": CACHE_SCHEMA_VERSION, "key": key, **result.to_json()}
        write_json(data, directory / f"{key}.json", indent=None)
    except OSError as exc:  # an unwritable cache only costs time
        warnings.warn(f"could not write the FS fit cache in {directory}: {exc}", stacklevel=3)


def subsample(values: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``values`` (flattened), drawn without replacement with a fixed seed, sorted."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.size > limit:
        flat = np.random.default_rng(seed).choice(flat, size=limit, replace=False)
    return np.sort(flat)


def fit_few_spike(function: Callable[[np.ndarray], np.ndarray], description: dict, samples: np.ndarray, steps: int,
                  seed: int = 0, settings: FitSettings = FitSettings(), cache: bool = True) -> FitResult:
    """Fit FS parameters with ``steps`` time steps to ``function`` on ``samples`` (the layer's gate inputs).

    ``description`` identifies the function in the cache key (e.g. ``{"op": "Silu"}``).
    """
    samples = subsample(samples, settings.max_samples, seed)
    if samples.size == 0 or not np.all(np.isfinite(samples)):
        raise PassError("FS fit: the calibration inputs of this layer are empty or not finite")
    key = _cache_key({"fit_version": FIT_VERSION, "kind": "FS", "function": description, "steps": steps,
                      "seed": seed, "settings": settings.__dict__}, samples)
    if cache and (hit := _cache_read(key)) is not None:
        return hit
    result = _gradient_fit(function, samples, steps, seed, settings)
    if cache:
        _cache_write(key, result)
    return result


def refine_amos(function: Callable[[np.ndarray], np.ndarray], description: dict, samples: np.ndarray,
                start: FewSpike, seed: int = 0, settings: FitSettings = FitSettings(),
                cache: bool = True) -> FitResult:
    """AMOS unit initialized from the FS fit ``start`` and refined by gradient descent on all its parameters
    (gains, the inhibition matrix, thresholds, output weights); the refinement is kept only if it lowers the error."""
    samples = subsample(samples, settings.max_samples, seed)
    key = _cache_key({"fit_version": FIT_VERSION, "kind": "AMOS", "function": description,
                      "start": start.to_json(), "seed": seed, "settings": settings.__dict__}, samples)
    if cache and (hit := _cache_read(key)) is not None:
        return hit
    initial = Amos.from_few_spike(start)
    mse, worst = fit_error(initial, function, samples)
    best = FitResult(initial, mse, worst, "from-fs")
    refined = _gradient_refine_amos(function, samples, initial, start.height, seed, settings)
    if refined.mse < best.mse:
        best = refined
    if cache:
        _cache_write(key, best)
    return best


# --- gradient descent (torch is imported here only: fitting is training) ---------------------------------------


def _spike(v, threshold, width):
    """Heaviside in the forward pass, logistic derivative of ``width`` in the backward pass (surrogate gradient)."""
    import torch

    soft = torch.sigmoid((v - threshold) / width)
    hard = (v >= threshold).to(v.dtype)
    return hard + soft - soft.detach()


def _inputs(function, samples: np.ndarray, settings: FitSettings):
    import torch

    lo, hi = float(samples[0]), float(samples[-1])
    span = max(hi - lo, 1e-6)
    grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 1024, dtype=np.float32)
    x = torch.from_numpy(samples)
    g = torch.from_numpy(grid)
    fx = torch.from_numpy(np.asarray(function(samples), dtype=np.float32))
    fg = torch.from_numpy(np.asarray(function(grid), dtype=np.float32))
    return x, fx, g, fg, lo, span


def _least_squares_readout(spikes: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Output weights and offset minimizing the weighted squared error for fixed spikes: ``[d..., offset]``.

    For fixed thresholds the spikes are fixed features, so the best ``d(t)`` and offset are a linear least-squares
    problem; a tiny ridge keeps steps that never fire at zero weight."""
    features = np.concatenate([spikes.T.astype(np.float64), np.ones((spikes.shape[1], 1))], axis=1)
    sw = np.sqrt(weights)[:, None]
    a, b = features * sw, target.astype(np.float64) * sw[:, 0]
    ridge = 1e-9 * np.eye(features.shape[1])
    return np.linalg.solve(a.T @ a + ridge, a.T @ b)


def _gradient_fit(function, samples: np.ndarray, steps: int, seed: int, settings: FitSettings) -> FitResult:
    """The fit in normalized units: inputs mapped to ``[0, 1]`` by the sample range, outputs by the function's range,
    so one learning rate suits every layer; the parameters are mapped back at the end."""
    import torch

    lo, span = float(samples[0]), max(float(samples[-1] - samples[0]), 1e-6)
    grid = np.linspace(lo - 0.05 * span, lo + 1.05 * span, 1024, dtype=np.float32)
    inputs = np.concatenate([samples, grid])
    targets = np.asarray(function(inputs), dtype=np.float64)
    f_lo, f_span = float(targets.min()), max(float(np.ptp(targets)), 1e-6)
    share = np.concatenate([np.full(samples.size, (1 - settings.grid_weight) / samples.size),
                            np.full(grid.size, settings.grid_weight / grid.size)])
    x = torch.from_numpy(((inputs - lo) / span).astype(np.float32))
    y = torch.from_numpy(((targets - f_lo) / f_span).astype(np.float32))
    w = torch.from_numpy(share.astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    powers = torch.tensor([2.0 ** -t for t in range(1, steps + 1)])

    def to_neuron(threshold, height, readout) -> FewSpike:
        return FewSpike(threshold=tuple(float(lo + span * t) for t in threshold),
                        height=tuple(float(span * h) for h in height),
                        weight=tuple(float(f_span * d) for d in readout[:-1]),
                        offset=float(f_lo + f_span * readout[-1]))

    def hard_spikes(threshold, height) -> np.ndarray:
        neuron = FewSpike(threshold=tuple(threshold), height=tuple(height), weight=(0.0,) * steps)
        return few_spike(neuron, x.numpy())[1].reshape(steps, -1)

    best: FitResult | None = None
    # Starting ranges: the whole sample range, and (for functions flat below zero, like ReLU, SiLU, GELU) the
    # positive part, where such functions need their resolution.
    # A third start spends a third of the steps on a staircase (height 0: the membrane is not reset, so the later
    # binary steps still see x) placed at quantiles of the inputs, for the curvature a binary code cannot follow.
    starts = [(0.0, 1.0, 0)]
    if lo < 0 < lo + span:
        starts += [(-lo / span, 1.0, 0), (-lo / span, 1.0, steps // 3)]
    for restart in range(settings.restarts):
        # A binary expansion of a starting range (perturbed after the first round of starts) with the best output
        # weights for its spikes; then gradient descent on everything.
        first, last, stairs = starts[restart % len(starts)]
        jitter = 1 + 0.4 * (torch.rand(steps, generator=generator) - 0.5) * (restart >= len(starts))
        bits = powers[:steps - stairs]
        quantiles = np.quantile(x.numpy()[:samples.size], np.linspace(0, 1, stairs + 2)[1:-1])
        height = torch.cat([torch.zeros(stairs), (last - first) * bits]) * jitter
        threshold = torch.cat([torch.tensor(quantiles, dtype=torch.float32), first + (last - first) * bits]) * jitter
        readout = _least_squares_readout(hard_spikes(threshold.tolist(), height.tolist()), y.numpy(), share)
        weight = torch.tensor(readout[:-1], dtype=torch.float32)
        offset = torch.tensor(float(readout[-1]))
        params = [p.requires_grad_(True) for p in (height, threshold, weight, offset)]
        optimizer = torch.optim.Adam(params, lr=settings.learning_rate)
        candidates = [(threshold.detach().tolist(), height.detach().tolist())]
        for iteration in range(settings.iterations):
            # Soft spikes whose width shrinks geometrically to a hundredth of each step's height: gradient descent
            # on a smooth relaxation first, then ever closer to the hard threshold.
            tau = 0.5 * 0.02 ** (iteration / max(settings.iterations - 1, 1))
            optimizer.zero_grad()
            v, out, penalty = x, offset.expand_as(x), 0.0
            for t in range(steps):
                z = torch.sigmoid((v - threshold[t]) / (height[t].detach().abs().clamp_min(1e-4) * tau))
                out = out + weight[t] * z
                v = v - height[t] * z
                # keep the membrane within the input range of the thresholds (the paper's regularizer)
                penalty = penalty + torch.relu((v - threshold[t]).abs() - 2).pow(2).mean()
            loss = (w * (out - y) ** 2).sum() + settings.membrane_weight * penalty
            loss.backward()
            optimizer.step()
            if (iteration + 1) % 50 == 0:
                candidates.append((threshold.detach().tolist(), height.detach().tolist()))
        for t_values, h_values in candidates:  # keep the best solution with hard spikes
            readout = _least_squares_readout(hard_spikes(t_values, h_values), y.numpy(), share)
            neuron = to_neuron(t_values, h_values, readout)
            mse, worst = fit_error(neuron, function, samples)
            if best is None or mse < best.mse:
                best = FitResult(neuron, mse, worst, "gradient")
    return best


def _gradient_refine_amos(function, samples: np.ndarray, initial: Amos, heights: tuple[float, ...], seed: int,
                          settings: FitSettings) -> FitResult:
    import torch

    x, fx, g, fg, lo, span = _inputs(function, samples, settings)
    torch.manual_seed(seed)
    k = initial.steps
    gain = torch.tensor(initial.gain).requires_grad_(True)
    inhibition = torch.from_numpy(initial.inhibition_matrix()).requires_grad_(True)
    threshold = torch.tensor(initial.threshold).requires_grad_(True)
    weight = torch.tensor(initial.weight).requires_grad_(True)
    offset = torch.tensor(initial.offset).requires_grad_(True)
    params = [gain, inhibition, threshold, weight, offset]
    optimizer = torch.optim.Adam(params, lr=0.1 * settings.learning_rate * span)
    mask = torch.tril(torch.ones(k, k), -1)
    widths = [max(abs(h), 1e-3 * span) / 4 for h in heights]  # the surrogate widths of the FS fit
    for _ in range(settings.iterations // 2):
        optimizer.zero_grad()
        loss = 0.0
        w = inhibition * mask
        for inp, target, share in ((x, fx, 1 - settings.grid_weight), (g, fg, settings.grid_weight)):
            spikes, out = [], offset.expand_as(inp)
            for j in range(k):
                u = gain[j] * inp
                for i in range(j):
                    u = u - w[j, i] * spikes[i]
                z = _spike(u, threshold[j], widths[j])
                spikes.append(z)
                out = out + weight[j] * z
            loss = loss + share * ((out - target) ** 2).mean()
        loss.backward()
        optimizer.step()
    rows, cols = np.tril_indices(k, -1)
    matrix = inhibition.detach().numpy()
    neuron = Amos(threshold=tuple(threshold.detach().tolist()), weight=tuple(weight.detach().tolist()),
                  gain=tuple(gain.detach().tolist()), inhibition=tuple(float(matrix[r, c]) for r, c in zip(rows, cols)),
                  offset=float(offset.detach()))
    mse, worst = fit_error(neuron, function, samples)
    return FitResult(neuron, mse, worst, "gradient")
