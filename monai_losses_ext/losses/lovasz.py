"""Lovasz-softmax loss (Berman et al., 2018): a convex surrogate of the Jaccard loss, on 2D or 3D volumes."""

from __future__ import annotations

import torch

from ._base import LossBase
from ._inputs import Prepared
from ._stats import activate, is_distributed
from .pixel import masked_mean

__all__ = ["LovaszSoftmaxLoss", "lovasz_grad"]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order
    (Berman et al., 2018, Alg. 1): the increments of 1 - |gt n top-i| / |gt u top-i| along the sorted order."""
    total = gt_sorted.sum()
    inter = total - gt_sorted.cumsum(0)
    union = total + (1 - gt_sorted).cumsum(0)
    jac = 1 - inter / union
    if gt_sorted.numel() > 1:
        jac = torch.cat([jac[:1], jac[1:] - jac[:-1]])
    return jac


class LovaszSoftmaxLoss(LossBase):
    """Lovasz-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018), the mean over classes of the Lovasz
    extension of each class's Jaccard loss applied to the errors |g_c - p_c| of all voxels.

    ``classes="present"`` averages over the classes present in the target (the paper's default), "all" over
    every scored class. ``per_image`` computes it per sample and averages (with ``distributed=True`` over
    every rank's samples); otherwise the voxels of the whole batch form one set (not poolable over ranks: it
    needs one global sort, so ``distributed`` requires ``per_image=True``). Expects probabilities: pass
    ``softmax=True`` for logits (default) or ``sigmoid=True`` for one binary channel. Sorting makes it
    O(N log N) per class. Empty patch with ``classes="present"``: only the background is scored.
    """

    def __init__(
        self,
        classes: str = "present",
        per_image: bool = False,
        include_background: bool = True,
        to_onehot_y: bool = True,
        sigmoid: bool = False,
        softmax: bool = True,
        other_act=None,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, other_act=other_act, ignore_index=ignore_index, distributed=distributed,
                         validate=validate)  # fmt: skip
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}.")
        if distributed and not per_image:
            raise ValueError("LovaszSoftmaxLoss(distributed=True) needs per_image=True: the batch version sorts "
                             "all voxels of the global batch at once, which cannot be split over ranks.")  # fmt: skip
        self.classes, self.per_image = classes, per_image

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        x = prep.x
        p = activate(x.float() if x.dtype != torch.float64 else x, prep.act, 1)
        t = prep.target
        if prep.num_classes == 1:  # one binary channel: background and foreground
            p = torch.cat([1 - p, p], 1)
            t = torch.cat([1 - t, t], 1)
        first = self._first_kept(p.shape[1])
        groups = [slice(i, i + 1) for i in range(p.shape[0])] if self.per_image else [slice(None)]
        losses = [self._one(p[g], t[g], prep.valid[g] if prep.valid is not None else None, first, prep.is_index)
                  for g in groups]  # fmt: skip
        values = torch.stack(losses)
        if self.per_image:
            return masked_mean(values.sum(), values.numel(), self.distributed)
        return values[0]

    def _one(self, p, t, valid, first, is_index):
        terms = []
        v = valid.reshape(-1) if valid is not None else None
        for c in range(first, p.shape[1]):
            fg = (t[:, 0] == c) if is_index else t[:, c]
            fg = fg.reshape(-1).to(p.dtype)
            pc = p[:, c].reshape(-1)
            if v is not None:
                fg, pc = fg[v], pc[v]
            if self.classes == "present" and fg.sum() == 0:
                continue
            errors = (fg - pc).abs()
            errors_sorted, perm = torch.sort(errors, descending=True)
            terms.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
        if not terms:  # nothing present (all voxels ignored): zero with a graph
            return p.sum() * 0
        return torch.stack(terms).mean()
