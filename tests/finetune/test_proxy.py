"""Proxy learning (snncc/finetune/proxy.py): the SNN's output forward, the ANN's gradient backward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from snncc.finetune.proxy import proxy_logits, proxy_loss  # noqa: E402
from snncc.runtime import reference  # noqa: E402
from snncc.runtime.torch_lowering import lower  # noqa: E402
from tests.runtime.test_torch_analog import converted_cnn  # noqa: E402

T = 6


def _setup():
    graph, x = converted_cnn()
    labels = torch.as_tensor(np.random.default_rng(2).integers(0, 5, len(x)))
    return graph, lower(graph), torch.as_tensor(x), labels


def test_the_forward_value_is_the_snns_output_bit_for_bit():
    graph, module, x, _ = _setup()
    logits = proxy_logits(module, x, T)
    with torch.no_grad():
        snn = module(x, T).outputs[0][-1]
    assert torch.equal(logits.detach(), snn)
    ann = module.forward_analog(x).outputs[0].detach()
    assert not torch.allclose(logits.detach(), ann, atol=1e-3)  # the SNN's output, not the ANN's
    ref = reference.ReferenceSimulator(graph, T).run_batch(x.numpy()).outputs[0][-1]
    np.testing.assert_allclose(logits.detach().numpy(), ref, atol=1e-5)


def test_gradients_are_the_anns_backward_pass_of_the_loss_gradient_at_the_snns_output():
    _, module, x, labels = _setup()
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(proxy_loss(module, x, labels, T), params, allow_unused=True)
    # Explicitly: dL/do of the cross-entropy at o = o_snn, (softmax(o_snn) - onehot(y)) / B, back through the ANN.
    with torch.no_grad():
        snn = module(x, T).outputs[0][-1]
    delta = (torch.softmax(snn, dim=1) - F.one_hot(labels, snn.shape[1]).to(snn.dtype)) / len(x)
    ann = module.forward_analog(x).outputs[0]
    expected = torch.autograd.grad(ann, params, grad_outputs=delta, allow_unused=True)
    assert sum(g is not None for g in grads) >= 8  # weights and biases of four layers at least
    for name, g, e in zip([n for n, p in module.named_parameters() if p.requires_grad], grads, expected):
        assert (g is None) == (e is None), name
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7, msg=name)
    # ... which is not the gradient of the ANN's own loss (the SNN's output enters it).
    ann_grads = torch.autograd.grad(F.cross_entropy(module.forward_analog(x).outputs[0], labels), params,
                                    allow_unused=True)
    weight = [n for n, p in module.named_parameters() if p.requires_grad].index("layers.0.weight")
    assert not torch.allclose(grads[weight], ann_grads[weight])
