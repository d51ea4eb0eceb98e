"""``proxy``: proxy learning of a converted rate SNN through its ANN.

After Kheradpisheh, Mirsadeghi & Masquelier, "Spiking neural networks trained via proxy" (IEEE Access 2022,
arXiv:2109.13208). The ANN and the SNN share every weight (here: one :class:`~snncc.runtime.torch_lowering.
LoweredGraph`, whose :meth:`~snncc.runtime.torch_lowering.LoweredGraph.forward_analog` is the ANN the conversion
assumed, with the same ``nn.Parameter`` objects). Per batch:

1. the SNN runs forward for ``T`` steps (no gradient graph is kept); its output ``o_snn`` is the readout after ``T``
   steps, the mean output current, in the ANN's output units;
2. the ANN runs forward on the same images, ``o_ann``;
3. the loss is computed on the SNN's output, ``L(o_snn, y)``, and its gradient with respect to the output,
   ``dL/do`` evaluated at ``o = o_snn``, is back-propagated through the ANN: for every parameter ``w``,
   ``grad w = (d o_ann / d w)^T dL/do |_(o = o_snn)``.

:func:`proxy_logits` carries exactly this as ``o_snn + (o_ann - o_ann.detach())``: its value is ``o_snn`` bit for
bit (``o_ann - o_ann.detach()`` is exactly zero) and its gradient is the identity onto ``o_ann``.

Where it falls short of backpropagation through time (the ``surrogate`` method):

- the Jacobian is the ANN's, taken at the ANN's activations, not the SNN's. Only the output error knows about the
  SNN; every hidden layer's error (the floor of spike counting at small T, residual membrane charge, the timing that
  spiking max pooling sees, saturation) is invisible to the gradient. At small T, where the SNN's hidden rates are
  far from the ANN's activations, the gradient points where the ANN, not the SNN, improves;
- nothing that exists only in the SNN is trained: the initial membrane, the number of steps, spike timing; the
  thresholds get only the gradient of the ANN's ``clip(I / theta, 0, 1)``;
- it equals BPTT of the rate-coded loss only in the limit where the SNN computes the ANN's function.

What it gains: no unrolling in time, so the backward pass costs one ANN backward, and the SNN's forward pass keeps
no activations (memory independent of ``T``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from snncc.runtime.torch_lowering import LoweredGraph

PAPER = ("Kheradpisheh, Mirsadeghi & Masquelier, Spiking neural networks trained via proxy, IEEE Access 2022, "
         "arXiv:2109.13208")


def proxy_logits(module: LoweredGraph, x: torch.Tensor, timesteps: int, output: int = 0) -> torch.Tensor:
    """Output ``output`` of the SNN after ``timesteps`` steps as its value, with the ANN's gradient: ``o_snn +
    (o_ann - o_ann.detach())``, shape (B, *output shape). ``x`` are model inputs (already scaled)."""
    with torch.no_grad():
        snn = module(x, timesteps).outputs[output][-1]
    ann = module.forward_analog(x).outputs[output]
    return snn + (ann - ann.detach())


def proxy_loss(module: LoweredGraph, x: torch.Tensor, labels: torch.Tensor, timesteps: int,
               output: int = 0) -> torch.Tensor:
    """The proxy learning loss: cross-entropy of the SNN's output (softmax of the readout after ``timesteps``
    steps) against ``labels``, back-propagated through the ANN (:func:`proxy_logits`)."""
    return F.cross_entropy(proxy_logits(module, x, timesteps, output), labels)
