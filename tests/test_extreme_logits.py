"""Saturated logits: the fused cross-entropy still equals PyTorch's log-softmax value, gradients stay finite."""

from __future__ import annotations

import monai.losses as ML
import torch

import monai_losses_ext as E


def _saturated():
    torch.manual_seed(0)
    t = torch.randint(0, 3, (2, 1, 6, 5, 4))
    x = torch.randn(2, 3, 6, 5, 4)
    wrong = (t[:, 0] + 1) % 3
    # a third of the voxels certain and wrong: the true class's softmax probability underflows float32
    x.scatter_(1, wrong.unsqueeze(1), torch.where(torch.rand(2, 1, 6, 5, 4) < 0.33, 300.0, 0.0))
    return x, t


def test_dice_ce_equals_monai_on_saturated_logits():
    x, t = _saturated()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = E.DiceCELoss(softmax=True, to_onehot_y=True)(xa, t)
    ref = ML.DiceCELoss(softmax=True, to_onehot_y=True)(xb, t)
    assert ref.item() > 50  # the CE really is in the underflow range
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    ours.backward(), ref.backward()
    assert torch.isfinite(xa.grad).all()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-7)


def test_weighted_ce_equals_torch_on_saturated_logits():
    x, t = _saturated()
    w = torch.tensor([0.2, 1.0, 3.0])
    ours = E.WeightedCELoss(weight=w)(x, t)
    ref = torch.nn.CrossEntropyLoss(weight=w)(x, t[:, 0])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
