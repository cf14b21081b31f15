"""Forward+backward time and peak extra memory of every registered loss against its MONAI (or PyTorch)
equivalent, on the same tensors in the same run.

    python benchmarks/bench_losses.py                      # CPU, B=2, C=4, 96^3
    python benchmarks/bench_losses.py --device cuda --size 128 --amp

Prints a Markdown table (and writes it with --out). Time ratio = ours / reference (lower is better), the
median over the repeats of the ratio of adjacent runs; memory is the peak allocated during forward+backward
above the inputs, in multiples of the logits' bytes.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import monai
import monai.losses as ML
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import monai_losses_ext as E  # noqa: E402
from _measure import peak_extra_bytes, steady_allocator, time_call, time_pair  # noqa: E402

SM = dict(softmax=True, to_onehot_y=True)


class _CE(torch.nn.Module):
    """torch.nn.CrossEntropyLoss taking (B, 1, ...) index labels, the form MONAI pipelines produce."""

    def __init__(self, **kw):
        super().__init__()
        self.ce = torch.nn.CrossEntropyLoss(**kw)

    def forward(self, x, t):
        return self.ce(x, t[:, 0].long())


class _BCE(torch.nn.Module):
    """torch.nn.BCEWithLogitsLoss on the one-hot of index labels (built inside, as a pipeline would)."""

    def __init__(self, pos_weight):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, x, t):
        g = torch.zeros_like(x).scatter_(1, t.long(), 1.0)
        pw = torch.full((x.shape[1], *[1] * (x.ndim - 2)), self.pos_weight, device=x.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(x, g, pos_weight=pw)


# name, ours, reference (None: nothing equivalent in MONAI or PyTorch), reference label
CASES = [
    ("DiceLoss", lambda: E.DiceLoss(**SM), lambda: ML.DiceLoss(**SM), "monai DiceLoss"),
    ("DiceLoss squared, batch", lambda: E.DiceLoss(squared_pred=True, batch=True, **SM),
     lambda: ML.DiceLoss(squared_pred=True, batch=True, **SM), "monai DiceLoss"),
    ("JaccardLoss", lambda: E.JaccardLoss(**SM), lambda: ML.DiceLoss(jaccard=True, **SM), "monai DiceLoss(jaccard)"),
    ("TverskyLoss", lambda: E.TverskyLoss(alpha=0.3, beta=0.7, **SM),
     lambda: ML.TverskyLoss(alpha=0.3, beta=0.7, **SM), "monai TverskyLoss"),
    ("FocalTverskyLoss", lambda: E.FocalTverskyLoss(**SM), None, None),
    ("GeneralizedDiceLoss", lambda: E.GeneralizedDiceLoss(**SM), lambda: ML.GeneralizedDiceLoss(**SM),
     "monai GeneralizedDiceLoss"),
    ("LogCoshDiceLoss", lambda: E.LogCoshDiceLoss(**SM), None, None),
    ("SensitivitySpecificityLoss", lambda: E.SensitivitySpecificityLoss(**SM), None, None),
    ("WeightedCELoss", lambda: E.WeightedCELoss(weight=[0.1, 1, 2, 3]),
     lambda: _CE(weight=torch.tensor([0.1, 1, 2, 3])), "torch CrossEntropyLoss"),
    ("WeightedBCELoss", lambda: E.WeightedBCELoss(pos_weight=3.0, to_onehot_y=True), lambda: _BCE(3.0),
     "torch BCEWithLogitsLoss"),
    ("FocalLoss (sigmoid)", lambda: E.FocalLoss(to_onehot_y=True, alpha=0.25),
     lambda: ML.FocalLoss(to_onehot_y=True, alpha=0.25), "monai FocalLoss"),
    ("FocalLoss (softmax)", lambda: E.FocalLoss(to_onehot_y=True, use_softmax=True),
     lambda: ML.FocalLoss(to_onehot_y=True, use_softmax=True), "monai FocalLoss"),
    ("TopKCELoss", lambda: E.TopKCELoss(k=10), None, None),
    ("DiceCELoss", lambda: E.DiceCELoss(**SM), lambda: ML.DiceCELoss(**SM), "monai DiceCELoss"),
    ("DiceFocalLoss", lambda: E.DiceFocalLoss(**SM), lambda: ML.DiceFocalLoss(**SM), "monai DiceFocalLoss"),
    ("DiceTopKLoss", lambda: E.DiceTopKLoss(**SM), None, None),
    ("ComboLoss", lambda: E.ComboLoss(**SM), None, None),
    ("UnifiedFocalLoss", lambda: E.UnifiedFocalLoss(**SM), None, None),
    ("ExpLogLoss", lambda: E.ExpLogLoss(**SM), None, None),
    ("LovaszSoftmaxLoss", lambda: E.LovaszSoftmaxLoss(), None, None),
    # geometry losses: ours read maps precomputed by the transforms, MONAI's compute them at every step
    ("BoundaryLoss (precomputed map)", lambda: E.BoundaryLoss(**SM), lambda: ML.BoundaryLoss(**SM),
     "monai BoundaryLoss", "distance_map"),
    ("HausdorffDTLoss (precomputed map)", lambda: E.HausdorffDTLoss(**SM), lambda: ML.HausdorffDTLoss(**SM),
     "monai HausdorffDTLoss", "unsigned_map"),
    ("WeightMapCELoss (precomputed map)", lambda: E.WeightMapCELoss(), None, None, "weight_map"),
    ("BlobLoss (precomputed instances)", lambda: E.BlobLoss(**SM), None, None, "instances"),
]  # fmt: skip


def make_labels(batch: int, classes: int, size: int, device) -> torch.Tensor:
    """Lesion-like index labels: a few balls of each foreground class in a background volume."""
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    labels = torch.zeros(batch, 1, size, size, size, dtype=torch.long)
    for b in range(batch):
        for c in range(1, classes):
            for _ in range(4):
                centre = torch.rand(3, generator=g) * size
                radius = 2 + torch.rand(1, generator=g) * size / 8
                ball = ((grid - centre.view(3, 1, 1, 1)) ** 2).sum(0) <= radius**2
                labels[b, 0][ball] = c
    return labels.to(device)


def make_maps(labels: torch.Tensor, classes: int) -> dict:
    """The maps the transforms would have cached for each case."""
    from monai_losses_ext.transforms import LesionInstances, SignedDistanceMap, UNetWeightMap

    cases = [labels[b].cpu() for b in range(labels.shape[0])]
    stack = lambda f: torch.stack([torch.as_tensor(f(c)) for c in cases]).to(labels.device)  # noqa: E731
    return {
        "distance_map": stack(SignedDistanceMap(num_classes=classes)),
        "unsigned_map": stack(SignedDistanceMap(num_classes=classes, mode="unsigned")),
        "weight_map": stack(UNetWeightMap()),
        "instances": stack(lambda c: LesionInstances()((c > 0).to(torch.uint8))),
    }


def run(args) -> str:
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (args.batch, args.classes, *[args.size] * 3)
    logits = (torch.randn(shape, device=device) * 2).requires_grad_(True)
    labels = make_labels(args.batch, args.classes, args.size, device)
    maps = make_maps(labels, args.classes)
    logit_bytes = logits.numel() * logits.element_size()
    only = {s.lower() for s in args.only} if args.only else None

    def step(loss, map_key=None):
        kwargs = {}
        if map_key:
            kwargs = {"instances" if map_key == "instances" else "weight_map" if map_key == "weight_map" else "distance_map": maps[map_key]}

        def fn():
            logits.grad = None
            with torch.autocast(device.type, enabled=args.amp, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16):
                value = loss(logits, labels, **kwargs)
            value.backward()
            logits.grad = None

        return fn

    rows, map_rows = [], []
    for name, ours_f, ref_f, ref_name, *map_key in CASES:
        if only and name.lower() not in only:
            continue
        map_key = map_key[0] if map_key else None
        ours = ours_f().to(device)
        m_ours = peak_extra_bytes(step(ours, map_key), device) / logit_bytes
        if ref_f is None:
            t_ours = time_call(step(ours, map_key), device, args.repeats)
            rows.append((name, "—", t_ours, None, None, m_ours, None))
        else:
            ref = ref_f().to(device)
            if map_key is None:
                t_ours, t_ref, ratio = time_pair(step(ours, map_key), step(ref), device, args.repeats)
            else:  # MONAI's distance losses take seconds per step and churn memory: timed apart, fewer repeats
                t_ours = time_call(step(ours, map_key), device, args.repeats)
                t_ref = time_call(step(ref), device, 2)
                ratio = t_ours / t_ref
            m_ref = peak_extra_bytes(step(ref), device) / logit_bytes
            rows.append((name, ref_name, t_ours, t_ref, ratio, m_ours, m_ref))
        if map_key is not None:  # the in-loss cost of reading a map, against our DiceLoss on the same tensors
            map_rows.append((name, *time_pair(step(ours, map_key), step(E.DiceLoss(**SM)), device, args.repeats)))
        r = rows[-1]
        print(f"  {name}: {r[2] * 1e3:.1f} ms" + (f" vs {r[3] * 1e3:.1f} ms" if r[3] else ""), file=sys.stderr)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    head = (
        f"Loss benchmark: B={args.batch}, C={args.classes}, {args.size}^3, forward+backward, {device.type}"
        f"{' + autocast' if args.amp else ''} ({dev_name}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"MONAI {monai.__version__}; times: min of {args.repeats} runs; time ratio: median of the ratios of adjacent "
        f"runs (ours and the reference alternated; glibc heap kept, as in a training loop); memory = peak extra "
        f"allocation / logits bytes "
        f"({logit_bytes / 2**20:.0f} MiB).\n\n"
        "| loss | reference | ours (ms) | reference (ms) | time ratio | ours memory (x logits) | reference memory (x logits) |\n"
        "|---|---|---:|---:|---:|---:|---:|\n"
    )
    fmt = lambda v, f: "—" if v is None else f.format(v)  # noqa: E731
    body = "".join(
        f"| {n} | {rn} | {to * 1e3:.1f} | {fmt(tr and tr * 1e3, '{:.1f}')} | {fmt(ratio, '{:.2f}x')} | {mo:.2f} | {fmt(mr, '{:.2f}')} |\n"
        for n, rn, to, tr, ratio, mo, mr in rows
    )
    tail = ""
    if map_rows:
        tail = (
            "\nIn-loss cost of the losses that read a precomputed map, against our DiceLoss (alternated, same tensors):\n\n"
            "| loss | ours (ms) | our DiceLoss (ms) | ratio |\n|---|---:|---:|---:|\n"
            + "".join(f"| {n} | {tm * 1e3:.1f} | {td * 1e3:.1f} | {r:.2f}x |\n" for n, tm, td, r in map_rows)
        )
    return head + body + tail


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--amp", action="store_true", help="run the losses under torch.autocast")
    p.add_argument("--only", nargs="*", help="loss names (first column) to run")
    p.add_argument("--out", help="write the Markdown table to this file")
    args = p.parse_args(argv)
    steady_allocator()
    table = run(args)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
