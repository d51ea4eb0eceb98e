"""The fused IF/LIF layers (runtime/torch_fused.py), in both forms (the torch MembraneSteps and the compiled
CompiledMembraneSteps of runtime/_train_kernels.pyx), against the dynamics table's membrane_step: forward spikes and
membranes identical, gradients equal to autograd through the table's step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snncc.ir import IF, LIF, CubaLIF  # noqa: E402
from snncc.runtime.dynamics import HEAVISIDE, Surrogate, dynamics_of, membrane_step  # noqa: E402
from snncc.runtime.torch_fused import _train_kernels, fused_steps, membrane_steps  # noqa: E402

#: The forms of the fused layer: compiled (skipped where the extension is not built) and torch.
FORMS = [pytest.param(True, id="compiled", marks=pytest.mark.skipif(_train_kernels() is None,
                                                                   reason="runtime/_train_kernels not built")),
         pytest.param(False, id="torch")]

SHAPE = (3, 4, 5)  # per sample: channels first, so per-channel values have shape (3, 1, 1)
T, BATCH = 7, 6

NEURONS = {
    "if-subtract": IF(threshold=1.0, reset="subtract", v_init=0.5),
    "if-zero": IF(threshold=0.75, reset="zero"),
    "if-per-channel": IF(threshold=(1.0, 0.5, 1.5), reset="subtract", v_init=0.25),
    "lif-subtract": LIF(threshold=0.5, tau_mem=4.0, reset="subtract", v_init=0.2),
    "lif-zero-per-channel": LIF(threshold=(0.5, 1.0, 0.75), tau_mem=(2.0, 5.0, 8.0), reset="zero"),
    "lif-gate": LIF(threshold=0.5, tau_mem=0.0),
}


def _parameters(neuron, dtype: torch.dtype):
    """The table's parameter record of ``neuron`` as leaf tensors of ``dtype`` that require gradients."""
    record = dynamics_of(neuron).parameters(neuron, SHAPE, np)
    fields = {}
    for name in ("threshold", "decay"):
        value = getattr(record, name)
        if value is not None:
            fields[name] = torch.tensor(np.asarray(value, np.float64), dtype=dtype, requires_grad=True)
    fields["v_init"] = torch.tensor(np.asarray(record.v_init, np.float64), dtype=dtype)
    return dataclasses.replace(record, **fields)


def _currents(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(0.3, 0.6, (T, BATCH) + SHAPE), dtype=dtype, requires_grad=True)


def _table_steps(params, currents: torch.Tensor, spike) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Spikes and membranes after each step from the table's membrane_step, under autograd."""
    state = dynamics_of(IF()).start(params, tuple(currents.shape[1:]))
    out, membranes = [], []
    for current in currents:
        state, s = membrane_step(params, state, current, spike)
        out.append(s)
        membranes.append(state.v)
    return torch.stack(out), membranes


@pytest.mark.parametrize("compiled", FORMS)
@pytest.mark.parametrize("name", sorted(NEURONS))
def test_forward_spikes_and_membranes_are_the_tables(name, compiled):
    params = _parameters(NEURONS[name], torch.float32)
    currents = _currents(torch.float32)
    spike = Surrogate("fast-sigmoid", 0.5)
    with torch.no_grad():
        expected, membranes = _table_steps(params, currents, spike)
        ours = membrane_steps(params, currents, spike, compiled=compiled)
    assert 0 < float(expected.mean()) < 1  # some fire, some do not
    assert torch.equal(ours, expected)
    # The membranes: the saved pre-reset h_t, reset as the table resets, equal the table's v_t bit for bit.
    currents_leaf = currents.detach().requires_grad_(True)  # run again to read the saved membranes
    out = membrane_steps(params, currents_leaf, spike, compiled=compiled)
    assert type(out.grad_fn).__name__ == ("CompiledMembraneSteps" if compiled else "MembraneSteps") + "Backward"
    h = out.grad_fn.saved_tensors[0]
    v = h - out * params.threshold if params.subtract else h * (1 - out)
    for t in range(T):
        assert torch.equal(v[t], membranes[t]), t


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, dict(rtol=1e-5, atol=1e-6)),
                                             (torch.float64, dict(rtol=1e-12, atol=1e-13))])
@pytest.mark.parametrize("surrogate", ["fast-sigmoid", "arctan", "triangle", "logistic"])
@pytest.mark.parametrize("compiled", FORMS)
@pytest.mark.parametrize("name", sorted(NEURONS))
def test_gradients_equal_autograd_through_the_tables_step(name, compiled, surrogate, dtype, tolerance):
    """The explicit BPTT recursion against autograd through membrane_step with the same Surrogate: the gradients
    of a loss mixing every step's spikes, for the currents, the threshold and the decay. (A numerical gradcheck
    cannot apply: the forward pass is the exact Heaviside step, whose numerical derivative is 0, not the
    surrogate; the float64 comparison to 1e-12 is its stand-in.)"""
    spike = Surrogate(surrogate, 0.5)
    weights = torch.tensor(np.random.default_rng(5).normal(0, 1, (T, BATCH) + SHAPE), dtype=dtype)
    grads = []
    for run in (lambda p, c: _table_steps(p, c, spike)[0], lambda p, c: membrane_steps(p, c, spike, compiled=compiled)):
        params, currents = _parameters(NEURONS[name], dtype), _currents(dtype)
        leaves = [currents] + [getattr(params, n) for n in ("threshold", "decay") if getattr(params, n) is not None]
        (run(params, currents) * weights).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for expected, ours in zip(*grads):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(ours, expected, **tolerance)


def _channels_last_steps(x: torch.Tensor) -> torch.Tensor:
    """(T, B, C, H, W) with each step's batch channels-last, as the lowering's convolutions hand it on."""
    T, B = x.shape[:2]
    return x.reshape((T * B,) + tuple(x.shape[2:])).contiguous(memory_format=torch.channels_last).reshape(x.shape)


#: Layouts of the currents the lowering passes: (T, B, *shape) contiguous, constant in time (the analog image's
#: first layer: an expanded view, stride 0 over T), and channels-last steps (the training convolutions').
LAYOUTS = {
    "contiguous": lambda image: image.unsqueeze(0).repeat((T,) + (1,) * image.dim()) * torch.arange(
        1.0, T + 1).reshape((T,) + (1,) * image.dim()) / T,
    "constant": lambda image: image.unsqueeze(0).expand((T,) + tuple(image.shape)),
    "constant-channels-last": lambda image: image.contiguous(memory_format=torch.channels_last).unsqueeze(0).expand(
        (T,) + tuple(image.shape)),
    "channels-last": lambda image: _channels_last_steps(LAYOUTS["contiguous"](image)),
}


@pytest.mark.skipif(_train_kernels() is None, reason="runtime/_train_kernels not built")
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", ["if-subtract", "if-per-channel", "lif-zero-per-channel"])
def test_compiled_form_on_many_blocks_threads_and_layouts(name, layout):
    """The compiled form against the torch form on a population of several kernel blocks with a partial last one
    (M = 4 * 3 * 21 * 11 = 2772 neurons, blocks of 512), two threads, and the currents in each layout of
    :data:`LAYOUTS`: spikes identical (and in the currents' layout), gradients within float32 rounding of the sums
    over time (torch's vectorised addcmul may fuse a multiply-add, the kernel never does), including the gradient
    of a constant current summed over T."""
    shape, batch = (3, 21, 11), 4
    neuron = NEURONS[name]
    rng = np.random.default_rng(3)
    image = torch.tensor(rng.normal(0.3, 0.6, (batch,) + shape), dtype=torch.float32)
    weights = torch.tensor(rng.normal(0, 1, (T, batch) + shape), dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for compiled in (True, False):
            record = dynamics_of(neuron).parameters(neuron, shape, np)
            fields = {n: torch.tensor(np.asarray(getattr(record, n), np.float32), requires_grad=n != "v_init")
                      for n in ("threshold", "decay", "v_init") if getattr(record, n) is not None}
            params = dataclasses.replace(record, **fields)
            leaf = image.clone().requires_grad_(True)
            currents = LAYOUTS[layout](leaf)
            out = membrane_steps(params, currents, Surrogate("fast-sigmoid", 0.5), compiled=compiled)
            if compiled and "channels-last" in layout:  # the layout kept: the next convolution copies nothing
                assert out.stride() == _channels_last_steps(out).stride()
            (out * weights).sum().backward()
            results.append((out.detach(), [leaf.grad] + [fields[n].grad for n in ("threshold", "decay")
                                                          if n in fields]))
    finally:
        torch.set_num_threads(threads)
    (spikes, grads), (expected_spikes, expected_grads) = results
    assert 0 < float(spikes.mean()) < 1
    assert torch.equal(spikes, expected_spikes)
    for ours, expected in zip(grads, expected_grads):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(_train_kernels() is None, reason="runtime/_train_kernels not built")
def test_the_torch_form_where_the_kernels_do_not_apply(monkeypatch):
    """A tensor surrogate width, or SNNCC_TRAIN_KERNELS=torch, runs MembraneSteps."""
    params = _parameters(NEURONS["if-subtract"], torch.float32)
    currents = _currents(torch.float32)
    out = membrane_steps(params, currents, Surrogate("fast-sigmoid", torch.tensor(0.5)))
    assert type(out.grad_fn).__name__ == "MembraneStepsBackward"
    assert type(membrane_steps(params, currents, Surrogate()).grad_fn).__name__ == "CompiledMembraneStepsBackward"
    monkeypatch.setenv("SNNCC_TRAIN_KERNELS", "torch")
    assert type(membrane_steps(params, currents, Surrogate()).grad_fn).__name__ == "MembraneStepsBackward"


def test_signed_if_cubalif_and_the_hard_threshold_are_not_fused():
    record = dynamics_of(IF()).parameters(IF(signed=True), SHAPE, torch)
    assert fused_steps(record, Surrogate()) is None
    cuba = CubaLIF()
    assert fused_steps(dynamics_of(cuba).parameters(cuba, SHAPE, torch), Surrogate()) is None
    assert fused_steps(dynamics_of(IF()).parameters(IF(), SHAPE, torch), HEAVISIDE) is None
    assert fused_steps(dynamics_of(IF()).parameters(IF(), SHAPE, torch), Surrogate()) is membrane_steps


def test_synops_are_counted_without_gradients_and_on_request():
    """``LoweredGraph.count_synops``: None counts only when gradients are off (evaluation, the simulator backend);
    True counts in a training forward too, the same figures; False never."""
    from snncc.runtime import reference
    from snncc.runtime.torch_lowering import lower
    from tests.runtime.test_torch_lowering import _dyadic_inputs, every_op_graph

    graph = every_op_graph()
    x = _dyadic_inputs(4)
    expected = reference.ReferenceSimulator(graph, 5).run_batch(x).synops
    module = lower(graph)
    assert module(torch.as_tensor(x), 5).synops is None
    with torch.no_grad():
        np.testing.assert_array_equal(module(torch.as_tensor(x), 5).synops.numpy(), expected)
    module.count_synops = True
    np.testing.assert_array_equal(module(torch.as_tensor(x), 5).synops.numpy(), expected)
    module.count_synops = False
    with torch.no_grad():
        assert module(torch.as_tensor(x), 5).synops is None


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (1, 1), (1, 0, 2, 1))])
def test_spiking_max_pool_equals_its_composition_of_torch_ops(kernel, stride, padding):
    """Forward: M(t) - M(t-1) of the running counts' window max, computed here by chaining torch.maximum over the
    window's views (the reference's formulation). Backward: autograd through cumsum, max_pool2d and the difference
    (the same argmax, so the same subgradient)."""
    import torch.nn.functional as F

    from snncc.runtime.torch_fused import spiking_max_pool

    rng = np.random.default_rng(2)
    steps = torch.tensor((rng.uniform(size=(T, BATCH, 3, 7, 8)) < 0.4).astype(np.float64), requires_grad=True)
    weights = torch.tensor(rng.normal(size=(T, BATCH, 3) + ((8, 7) if padding[0] else (3, 4))))
    ours = spiking_max_pool(steps, kernel, stride, padding)
    assert ours.shape == weights.shape
    (ours * weights).sum().backward()
    counts = torch.cumsum(steps, 0).reshape((T * BATCH, 3, 7, 8))
    t, l, b, r = padding
    counts = F.pad(counts, (l, r, t, b), value=float("-inf"))
    ho, wo = (counts.shape[2] - kernel[0]) // stride[0] + 1, (counts.shape[3] - kernel[1]) // stride[1] + 1
    chained = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            view = counts[:, :, i:i + stride[0] * (ho - 1) + 1:stride[0], j:j + stride[1] * (wo - 1) + 1:stride[1]]
            chained = view if chained is None else torch.maximum(chained, view)
    chained = chained.reshape(weights.shape)
    assert torch.equal(ours, torch.cat([chained[:1], chained[1:] - chained[:-1]]))
    assert set(torch.unique(ours).tolist()) == {0.0, 1.0}
    leaf = steps.detach().requires_grad_(True)
    pooled = F.max_pool2d(F.pad(torch.cumsum(leaf, 0).reshape(counts.shape[0], 3, 7, 8), (l, r, t, b),
                                value=float("-inf")), kernel, stride).reshape(weights.shape)
    (torch.diff(pooled, dim=0, prepend=torch.zeros_like(pooled[:1])) * weights).sum().backward()
    assert steps.grad.abs().sum() > 0
    torch.testing.assert_close(steps.grad, leaf.grad, rtol=1e-12, atol=1e-12)
    # A channels-last batch of steps (the training convolutions' layout): the same spikes and gradients.
    channels_last = _channels_last_steps(steps.detach()).requires_grad_(True)
    pooled = spiking_max_pool(channels_last, kernel, stride, padding)
    assert torch.equal(pooled, ours)
    (pooled * weights).sum().backward()
    assert torch.equal(channels_last.grad, steps.grad)


@pytest.mark.skipif(_train_kernels() is None, reason="runtime/_train_kernels not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (1, 1), (1, 0, 2, 1)),
                                                   ((3, 2), (2, 3), (0, 1, 1, 0)), ((1, 1), (2, 2), (0, 0, 0, 0))])
def test_compiled_spiking_max_pool_equals_the_torch_form(kernel, stride, padding, dtype):
    """The compiled pooling (one pass each way, the window's position saved as a byte) against SpikingMaxPool
    (cumsum, max_pool2d with its int64 indices, the reverse running sum in torch): identical outputs and argmax
    routing, so identical gradients where windows do not overlap and equal to rounding where they do (the sums over
    windows and time run in another order); in the layout of the steps, for contiguous and channels-last steps
    and a gradient arriving in the other layout; non-integer steps too (counts are summed in time order)."""
    from snncc.runtime.torch_fused import CompiledSpikingMaxPool, SpikingMaxPool

    rng = np.random.default_rng(5)
    spikes = (rng.uniform(size=(T, BATCH, 3, 7, 8)) < 0.4) * rng.choice([1.0, 0.5, 1.25], size=(T, BATCH, 3, 7, 8))
    steps = torch.tensor(spikes, dtype=dtype)
    expected = SpikingMaxPool.apply(steps.clone().requires_grad_(True), kernel, stride, padding)
    weights = torch.tensor(rng.normal(size=tuple(expected.shape)), dtype=dtype)
    overlap = kernel[0] > stride[0] or kernel[1] > stride[1]
    for layout in (lambda x: x, _channels_last_steps):
        leaf = steps.clone().requires_grad_(True)
        reference = SpikingMaxPool.apply(leaf, kernel, stride, padding)
        (reference * weights).sum().backward()
        ours_leaf = layout(steps.clone()).requires_grad_(True)
        ours = CompiledSpikingMaxPool.apply(ours_leaf, kernel, stride, padding)
        assert torch.equal(ours, reference)
        assert ours.stride() == layout(torch.empty_like(reference)).stride()  # the steps' layout kept
        (ours * _channels_last_steps(weights)).sum().backward()  # the gradient in the other layout
        assert ours_leaf.grad.stride() == ours_leaf.stride()
        assert leaf.grad.abs().sum() > 0
        if overlap:
            torch.testing.assert_close(ours_leaf.grad, leaf.grad, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                       atol=1e-5 if dtype == torch.float32 else 1e-12)
        else:
            assert torch.equal(ours_leaf.grad, leaf.grad)


@pytest.mark.parametrize("compiled", FORMS)
@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
@pytest.mark.parametrize("name", ["if-subtract", "if-zero", "lif-zero-per-channel"])
def test_a_constant_current_given_once_equals_its_expansion_over_time(name, layout, compiled):
    """``membrane_steps(..., timesteps=T)`` on a (B, *shape) current (the lowering's first layer): the spikes of
    the expanded (T, B, *shape) current exactly, and the gradient of the current, which the compiled backward sums
    over time itself (t = T..1) where autograd's expand sums the (T, B, *shape) gradient, equal to rounding; on a
    population of several kernel blocks and two threads."""
    shape, batch = (3, 21, 11), 4
    neuron = NEURONS[name]
    rng = np.random.default_rng(8)
    image = torch.tensor(rng.normal(0.3, 0.6, (batch,) + shape), dtype=torch.float32)
    if layout == "channels-last":
        image = image.contiguous(memory_format=torch.channels_last)
    weights = torch.tensor(rng.normal(0, 1, (T, batch) + shape), dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for once in (True, False):
            record = dynamics_of(neuron).parameters(neuron, shape, np)
            fields = {n: torch.tensor(np.asarray(getattr(record, n), np.float32), requires_grad=n != "v_init")
                      for n in ("threshold", "decay", "v_init") if getattr(record, n) is not None}
            params = dataclasses.replace(record, **fields)
            leaf = image.clone().requires_grad_(True)
            spike = Surrogate("arctan", 0.5)
            if once:
                out = membrane_steps(params, leaf, spike, compiled=compiled, timesteps=T)
            else:
                out = membrane_steps(params, leaf.unsqueeze(0).expand((T,) + tuple(leaf.shape)), spike,
                                     compiled=compiled)
            (out * weights).sum().backward()
            assert leaf.grad.shape == leaf.shape
            results.append((out.detach(), [leaf.grad] + [fields[n].grad for n in ("threshold", "decay")
                                                          if n in fields]))
    finally:
        torch.set_num_threads(threads)
    (spikes, grads), (expected_spikes, expected_grads) = results
    assert 0 < float(spikes.mean()) < 1
    assert torch.equal(spikes, expected_spikes)
    for ours, expected in zip(grads, expected_grads):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
