"""Loss speed in the bundles' own regime: sparse lesion labels, the bundles' patch sizes, and the loss's share of
the lesion bundle's training step; ours against MONAI's on the same tensors in one run.

Two tables (``python -m monai_losses_ext.benchmark regime``, or ``benchmarks/bench_regime.py``):

* **Sparse labels.** The MONAI-equivalent losses (Dice, DiceCE, DiceFocal, Tversky, Focal), forward + backward,
  for C = 2 (binary lesions) and C = 4 (a tumour-like nest of three classes) at 64^3 and 96^3, B = 2: index
  labels with about 0.5 % foreground in three balls per sample. Ours and MONAI's alternate; the ratio is the
  median over the repeats of the ratio of adjacent runs, the times the minimum of the repeats
  (``_measure.time_pair``).
* **Step share.** One optimiser step of the lesion bundle (its ``network_def``, optimiser, patch size, batch size
  times ``num_samples`` patches, a fraction ``pos_fraction`` of them centred on a lesion) with its default loss,
  ours and MONAI's alternated, and the loss's forward + backward alone on the same logits: the share is loss
  time / step time.
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import losses as E
from ._measure import steady_allocator, sync, time_pair

SM = dict(softmax=True, to_onehot_y=True)
FOREGROUND = 0.005  # fraction of lesion voxels in the sparse labels


def _pairs() -> dict[str, tuple[Callable, Callable]]:
    """The MONAI-equivalent losses of the table, as (ours, MONAI's) factories with the same arguments."""
    import monai.losses as ML

    tv = dict(alpha=0.3, beta=0.7, **SM)
    return {
        "Dice": (lambda: E.DiceLoss(**SM), lambda: ML.DiceLoss(**SM)),
        "DiceCE": (lambda: E.DiceCELoss(**SM), lambda: ML.DiceCELoss(**SM)),
        "DiceFocal": (lambda: E.DiceFocalLoss(**SM), lambda: ML.DiceFocalLoss(**SM)),
        "Tversky": (lambda: E.TverskyLoss(**tv), lambda: ML.TverskyLoss(**tv)),
        "Focal": (lambda: E.FocalLoss(to_onehot_y=True), lambda: ML.FocalLoss(to_onehot_y=True)),
    }


LOSSES = ("Dice", "DiceCE", "DiceFocal", "Tversky", "Focal")


def sparse_labels(
    batch: int, classes: int, size: int, fraction: float = FOREGROUND, blobs: int = 3, seed: int = 0
) -> torch.Tensor:
    """Index labels ``(B, 1, size, size, size)`` with about ``fraction`` foreground in ``blobs`` balls per sample.
    Two classes: the balls are label 1. More: nested shells, label 1 outside, label 2 inside 0.7 of the radius,
    label 3 inside 0.4 (a tumour's oedema, core and enhancing part); labels above ``classes - 1`` are not used."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    radius = (fraction * size**3 / blobs * 3 / (4 * torch.pi)) ** (1 / 3)
    labels = torch.zeros(batch, 1, size, size, size, dtype=torch.long)
    for b in range(batch):
        for _ in range(blobs):
            centre = radius + torch.rand(3, generator=g) * (size - 2 * radius)
            dist = ((grid - centre.view(3, 1, 1, 1)) ** 2).sum(0).sqrt()
            for label, shell in ((1, 1.0), (2, 0.7), (3, 0.4)):
                if label < classes:
                    labels[b, 0][dist <= radius * shell] = label
    return labels


@dataclass
class RegimeRow:
    classes: int
    size: int
    loss: str
    foreground: float
    ours_ms: float
    monai_ms: float
    ratio: float


def _loss_step(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def fn():
        x.grad = None
        loss(x, y).backward()
        x.grad = None

    return fn


def sparse_table(
    classes=(2, 4), sizes=(64, 96), batch: int = 2, repeats: int = 7, losses=LOSSES, device="cpu", progress=None
) -> list[RegimeRow]:
    """The sparse-label table: every loss in ``losses`` at every (C, size), ours against MONAI's."""
    device = torch.device(device)
    pairs = _pairs()
    rows = []
    for c in classes:
        for n in sizes:
            torch.manual_seed(0)
            x = (torch.randn((batch, c, n, n, n), device=device) * 2).requires_grad_(True)
            y = sparse_labels(batch, c, n).to(device)
            fg = float((y > 0).float().mean())
            for name in losses:
                ours, ref = (f().to(device) for f in pairs[name])
                t_ours, t_ref, ratio = time_pair(_loss_step(ours, x, y), _loss_step(ref, x, y), device, repeats)
                rows.append(RegimeRow(c, n, name, fg, t_ours * 1e3, t_ref * 1e3, ratio))
                if progress:
                    progress(f"C={c}, {n}^3, {name}: {t_ours * 1e3:.1f} ms vs {t_ref * 1e3:.1f} ms ({ratio:.2f}x)")
    return rows


@dataclass
class StepShare:
    loss: str
    patch: tuple[int, ...]
    patches: int
    ours_step_ms: float
    monai_step_ms: float
    step_ratio: float
    ours_loss_ms: float
    monai_loss_ms: float
    loss_ratio: float

    @property
    def ours_share(self) -> float:
        return self.ours_loss_ms / self.ours_step_ms

    @property
    def monai_share(self) -> float:
        return self.monai_loss_ms / self.monai_step_ms


def _bundle_config(bundle: Path, patch: tuple[int, ...] | None):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    if patch is not None:
        parser["patch_size"] = list(patch)
    return parser


def step_share(
    bundle: Path, repeats: int = 5, patch: tuple[int, ...] | None = None, device="cpu", seed: int = 0
) -> StepShare:
    """The loss's share of one training step of ``bundle`` (its network, optimiser, patch size and patches per
    step), with its default loss from this package and from MONAI; ``patch`` overrides the patch size."""
    import monai.losses as ML

    from ..registry import get_loss

    device = torch.device(device)
    cfg = _bundle_config(bundle, patch)
    defaults = cfg.get_parsed_content("loss_defaults")
    ours = get_loss(cfg["loss_name"], defaults=defaults)
    if not hasattr(ML, type(ours).__name__):
        raise ValueError(f"the bundle's default loss {type(ours).__name__} has no MONAI class of that name")
    ref = get_loss(f"monai.losses.{type(ours).__name__}", defaults=defaults)
    torch.manual_seed(seed)
    net = cfg.get_parsed_content("network_def", instantiate=True).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    patch = tuple(cfg["patch_size"])
    patches = int(cfg["batch_size"]) * int(cfg["num_samples"])
    c = int(cfg["num_classes"])
    x = torch.randn((patches, int(cfg["in_channels"]), *patch), device=device)
    y = sparse_labels(patches, c, patch[0], seed=seed).to(device)
    n_pos = round(patches * float(cfg["pos_fraction"]))
    y[n_pos:] = 0  # the negative patches of the sampler hold no lesion

    def train_step(loss):
        def fn():
            opt.zero_grad(set_to_none=True)
            loss(net(x), y).backward()
            opt.step()

        return fn

    with torch.no_grad():
        logits = net(x)
    logits.requires_grad_(True)
    step_o, step_r, step_ratio = time_pair(train_step(ours), train_step(ref), device, repeats)
    loss_o, loss_r, loss_ratio = time_pair(_loss_step(ours, logits, y), _loss_step(ref, logits, y), device, repeats)
    sync(device)
    return StepShare(
        type(ours).__name__,
        patch,
        patches,
        step_o * 1e3,
        step_r * 1e3,
        step_ratio,
        loss_o * 1e3,
        loss_r * 1e3,
        loss_ratio,
    )


def setting(device: str | torch.device, repeats: int) -> str:
    import monai

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return (
        f"{device.type} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}, MONAI "
        f"{monai.__version__}; forward + backward; times: min of {repeats} runs; ratio = ours / MONAI, the median "
        "of the ratios of adjacent runs (ours and MONAI's alternated on the same tensors)"
    )


def to_markdown(rows: list[RegimeRow], share: StepShare | None, text: str) -> str:
    out = [
        f"Sparse-label regime: B=2, index labels, about {FOREGROUND:.1%} foreground in three balls per sample; {text}.",
        "",
        "Time ratio ours / MONAI (lower is better; ours ms / MONAI ms):",
        "",
        "| C, size | " + " | ".join(LOSSES) + " |",
        "|---|" + "---:|" * len(LOSSES),
    ]
    for c, n in dict.fromkeys((r.classes, r.size) for r in rows):
        cells = []
        for name in LOSSES:
            hit = [r for r in rows if (r.classes, r.size, r.loss) == (c, n, name)]
            cells.append(f"{hit[0].ratio:.2f}x ({hit[0].ours_ms:.1f} / {hit[0].monai_ms:.1f})" if hit else "—")
        out.append(f"| {c}, {n}^3 | " + " | ".join(cells) + " |")
    if share is not None:
        patch = "x".join(map(str, share.patch))
        out += [
            "",
            f"Lesion bundle training step ({share.patches} patches of {patch}, its U-Net and AdamW), loss "
            f"{share.loss}:",
            "",
            "| | ours | MONAI | ratio |",
            "|---|---:|---:|---:|",
            f"| step (ms) | {share.ours_step_ms:.0f} | {share.monai_step_ms:.0f} | {share.step_ratio:.2f}x |",
            f"| loss forward + backward (ms) | {share.ours_loss_ms:.1f} | {share.monai_loss_ms:.1f} | "
            f"{share.loss_ratio:.2f}x |",
            f"| loss share of the step | {share.ours_share:.1%} | {share.monai_share:.1%} | |",
        ]
    return "\n".join(out) + "\n"


def write_csv(rows: list[RegimeRow], share: StepShare | None, out: Path) -> None:
    with open(out / "regime.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["classes", "size", "loss", "foreground", "ours_ms", "monai_ms", "time_ratio"])
        for r in rows:
            w.writerow(
                [
                    r.classes,
                    r.size,
                    r.loss,
                    f"{r.foreground:.5f}",
                    f"{r.ours_ms:.3f}",
                    f"{r.monai_ms:.3f}",
                    f"{r.ratio:.4f}",
                ]
            )
    if share is not None:
        data = {**share.__dict__, "ours_share": share.ours_share, "monai_share": share.monai_share}
        (out / "step_share.json").write_text(json.dumps(data, indent=1) + "\n")


def main(args) -> str:
    """The ``regime`` part of the CLI: both tables, printed and written to ``regime.md``, ``regime.csv`` and
    ``step_share.json`` in ``args.out``."""
    steady_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = (lambda msg: print("  " + msg, flush=True)) if not args.no_progress else None
    sizes = tuple(args.sizes) if args.sizes else (64, 96)
    rows = sparse_table(sizes=sizes, repeats=args.repeats, device=args.device, progress=progress)
    share = None
    if not args.no_step:
        bundle = (args.bundles or Path(__file__).resolve().parents[2] / "bundles") / "lesion_segmentation"
        patch = (args.step_patch,) * 3 if args.step_patch else None
        share = step_share(bundle, repeats=args.repeats, patch=patch, device=args.device)
    table = to_markdown(rows, share, setting(args.device, args.repeats))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "regime.md").write_text(table)
    write_csv(rows, share, out)
    print(table)
    return table
