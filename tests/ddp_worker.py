"""Runs the losses with ``distributed=True`` on 2 gloo processes (CPU) and saves each rank's loss and DDP
gradients, for tests/test_distributed.py. Usage: python tests/ddp_worker.py OUT_DIR SPLIT (e.g. 2,2 or 3,1)."""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import monai_losses_ext as E

SM = dict(softmax=True, to_onehot_y=True)
# name -> factory(distributed) ; the batch statistics each one pools are in the comment
CASES = {
    "dice_batch": lambda d: E.DiceLoss(batch=True, distributed=d, **SM),  # batch Dice sums
    "dice_mean": lambda d: E.DiceLoss(distributed=d, **SM),  # mean over samples
    "dice_sum_sigmoid": lambda d: E.DiceLoss(sigmoid=True, to_onehot_y=True, reduction="sum", distributed=d),
    "gdl_batch": lambda d: E.GeneralizedDiceLoss(batch=True, distributed=d, **SM),  # class volumes
    "tversky_batch": lambda d: E.FocalTverskyLoss(batch=True, distributed=d, **SM),
    "dice_ce_batch": lambda d: E.DiceCELoss(batch=True, weight=torch.tensor([0.5, 1.0, 2.0]), distributed=d, **SM),
    "focal": lambda d: E.FocalLoss(to_onehot_y=True, alpha=0.25, distributed=d),  # voxel count
    "focal_ignore": lambda d: E.FocalLoss(to_onehot_y=True, use_softmax=True, ignore_index=2, distributed=d),
    "weighted_ce": lambda d: E.WeightedCELoss(weight=[0.2, 1.0, 3.0], distributed=d),  # weight sum
    "topk_ce": lambda d: E.TopKCELoss(k=15, distributed=d),  # global threshold
    "unified_focal": lambda d: E.UnifiedFocalLoss(batch=True, distributed=d, **SM),
    "exp_log": lambda d: E.ExpLogLoss(batch=True, distributed=d, **SM),
    "lovasz_per_image": lambda d: E.LovaszSoftmaxLoss(per_image=True, distributed=d),
    "combo": lambda d: E.ComboLoss(batch=True, distributed=d, **SM),
}


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 6, 5, 4, generator=g)
    y = torch.randint(0, 3, (4, 1, 6, 5, 4), generator=g)
    return x, y


def make_model():
    torch.manual_seed(1)
    return torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)


def run_case(name, model, x, y, distributed):
    loss_fn = CASES[name](distributed)
    out = model(x)
    loss = loss_fn(out, y)
    loss.backward()
    inner = model.module if isinstance(model, DDP) else model
    return float(loss.detach()), [p.grad.detach().clone() for p in inner.parameters()]


def _worker(rank, world, init_file, out_dir, split):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, y = make_data()
    start = sum(split[:rank])
    xs, ys = x[start : start + split[rank]], y[start : start + split[rank]]
    results = {}
    for name in CASES:
        model = DDP(make_model())
        results[name] = run_case(name, model, xs, ys, True)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def main(out_dir: str, split: str) -> None:
    sizes = [int(s) for s in split.split(",")]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(len(sizes), init_file, out_dir, sizes), nprocs=len(sizes), join=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
