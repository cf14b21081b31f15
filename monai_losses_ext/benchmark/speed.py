"""Speed and memory: every registered loss, forward+backward, against MONAI's (or PyTorch's) equivalent and
against installed peers (segmentation_models_pytorch, kornia), on the same tensors in the same run.

Time ratio = ours / reference (lower is better): ours and the reference are alternated and the ratio is the
median over the repeats of the ratio of adjacent runs (far steadier on a shared machine than either time).
Memory = peak allocation during forward+backward above the inputs, in multiples of the logits' bytes.
Peers' losses are compared for cost only: their formulas, defaults and reductions differ from ours in
places (e.g. kornia's Dice averages over the batch), so their values are not expected to match.
"""

from __future__ import annotations

import csv
import importlib.util
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import losses as E
from ..registry import list_losses
from ._measure import peak_extra_bytes, steady_allocator, time_call, time_pair

SM = dict(softmax=True, to_onehot_y=True)
Factory = Callable[[], torch.nn.Module]


class _IndexTarget(torch.nn.Module):
    """Feeds ``(B, 1, *spatial)`` index labels, the form MONAI pipelines produce, to a loss that takes
    ``(B, *spatial)`` long labels; ``flatten_2d`` reshapes 3D inputs to ``(B, C, D*H, W)`` for losses that only
    take 2D images (their sums over the spatial axes are unchanged by the reshape)."""

    def __init__(self, loss: torch.nn.Module, flatten_2d: bool = False) -> None:
        super().__init__()
        self.loss, self.flatten_2d = loss, flatten_2d

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t[:, 0].long()
        if self.flatten_2d and x.ndim > 4:
            x = x.reshape(*x.shape[:2], -1, x.shape[-1])
            t = t.reshape(t.shape[0], -1, t.shape[-1])
        return self.loss(x, t)


class _BCE(torch.nn.Module):
    """torch BCEWithLogitsLoss on the one-hot of index labels (built inside, as a pipeline would)."""

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = torch.zeros_like(x).scatter_(1, t.long(), 1.0)
        pw = torch.full((x.shape[1], *[1] * (x.ndim - 2)), self.pos_weight, device=x.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(x, g, pos_weight=pw)


class _CentralMask(torch.nn.Module):
    """Calls a masked loss with the mask of the central half of every spatial axis (the same for ours and
    MONAI's), built at each call from the input's shape."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros((1, 1, *x.shape[2:]), device=x.device)
        mask[(..., *[slice(n // 4, n - n // 4) for n in x.shape[2:]])] = 1
        return self.loss(x, t, mask=mask)


class _Foreground(torch.nn.Module):
    """Feeds a binary loss that reads probabilities the foreground of a multi-class case: 1 - softmax(x)_0 and
    labels > 0 (the softmax is part of the timed step for ours and MONAI's alike)."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.loss(1 - torch.softmax(x, 1)[:, :1], (t > 0).to(x.dtype))


@dataclass
class Case:
    """One row group of the table: our loss (a registry name), the references it is timed against, the
    precomputed map it reads (``distance_map``, ``unsigned_map``, ``reference_map``, ``weight_map`` or
    ``instances``) and whether it is also timed against our DiceLoss (``vs_dice``: every map-reading loss, and
    the losses with a cost target relative to it)."""

    name: str
    registry: str
    ours: Factory
    refs: list[tuple[str, Factory]] = field(default_factory=list)
    map_key: str | None = None
    vs_dice: bool = False

    def __post_init__(self) -> None:
        self.vs_dice = self.vs_dice or self.map_key is not None


def _monai_cases() -> list[Case]:
    import monai.losses as ML

    w = [0.1, 1.0, 2.0, 3.0]
    return [
        Case("DiceLoss", "dice", lambda: E.DiceLoss(**SM), [("monai DiceLoss", lambda: ML.DiceLoss(**SM))]),
        Case(
            "DiceLoss squared, batch",
            "dice",
            lambda: E.DiceLoss(squared_pred=True, batch=True, **SM),
            [("monai DiceLoss", lambda: ML.DiceLoss(squared_pred=True, batch=True, **SM))],
        ),
        Case(
            "JaccardLoss",
            "jaccard",
            lambda: E.JaccardLoss(**SM),
            [("monai DiceLoss(jaccard)", lambda: ML.DiceLoss(jaccard=True, **SM))],
        ),
        Case(
            "TverskyLoss",
            "tversky",
            lambda: E.TverskyLoss(alpha=0.3, beta=0.7, **SM),
            [("monai TverskyLoss", lambda: ML.TverskyLoss(alpha=0.3, beta=0.7, **SM))],
        ),
        Case("FocalTverskyLoss", "focal_tversky", lambda: E.FocalTverskyLoss(**SM)),
        Case(
            "GeneralizedDiceLoss",
            "generalized_dice",
            lambda: E.GeneralizedDiceLoss(**SM),
            [("monai GeneralizedDiceLoss", lambda: ML.GeneralizedDiceLoss(**SM))],
        ),
        Case("LogCoshDiceLoss", "log_cosh_dice", lambda: E.LogCoshDiceLoss(**SM)),
        Case("SensitivitySpecificityLoss", "sensitivity_specificity", lambda: E.SensitivitySpecificityLoss(**SM)),
        Case(
            "WeightedCELoss",
            "weighted_ce",
            lambda: E.WeightedCELoss(weight=w),
            [("torch CrossEntropyLoss", lambda: _IndexTarget(torch.nn.CrossEntropyLoss(weight=torch.tensor(w))))],
        ),
        Case(
            "WeightedBCELoss",
            "weighted_bce",
            lambda: E.WeightedBCELoss(pos_weight=3.0, to_onehot_y=True),
            [("torch BCEWithLogitsLoss", lambda: _BCE(3.0))],
        ),
        Case(
            "FocalLoss (sigmoid)",
            "focal",
            lambda: E.FocalLoss(to_onehot_y=True, alpha=0.25),
            [("monai FocalLoss", lambda: ML.FocalLoss(to_onehot_y=True, alpha=0.25))],
        ),
        Case(
            "FocalLoss (softmax)",
            "focal",
            lambda: E.FocalLoss(to_onehot_y=True, use_softmax=True),
            [("monai FocalLoss", lambda: ML.FocalLoss(to_onehot_y=True, use_softmax=True))],
        ),
        Case("TopKCELoss", "topk_ce", lambda: E.TopKCELoss(k=10)),
        Case("DiceCELoss", "dice_ce", lambda: E.DiceCELoss(**SM), [("monai DiceCELoss", lambda: ML.DiceCELoss(**SM))]),
        Case(
            "DiceFocalLoss",
            "dice_focal",
            lambda: E.DiceFocalLoss(**SM),
            [("monai DiceFocalLoss", lambda: ML.DiceFocalLoss(**SM))],
        ),
        Case(
            "GeneralizedDiceFocalLoss",
            "generalized_dice_focal",
            lambda: E.GeneralizedDiceFocalLoss(**SM),
            [("monai GeneralizedDiceFocalLoss", lambda: ML.GeneralizedDiceFocalLoss(**SM))],
        ),
        Case(
            "MaskedDiceLoss (central mask)",
            "masked_dice",
            lambda: _CentralMask(E.MaskedDiceLoss(**SM)),
            [("monai MaskedDiceLoss", lambda: _CentralMask(ML.MaskedDiceLoss(**SM)))],
        ),
        Case("DiceTopKLoss", "dice_topk", lambda: E.DiceTopKLoss(**SM)),
        Case("ComboLoss", "combo", lambda: E.ComboLoss(**SM), vs_dice=True),
        Case("UnifiedFocalLoss", "unified_focal", lambda: E.UnifiedFocalLoss(**SM)),
        Case(
            "AsymmetricUnifiedFocalLoss (foreground vs background)",
            "asymmetric_unified_focal",
            lambda: _Foreground(E.AsymmetricUnifiedFocalLoss()),
            [("monai AsymmetricUnifiedFocalLoss", lambda: _Foreground(ML.AsymmetricUnifiedFocalLoss()))],
        ),
        Case("ExpLogLoss", "exp_log", lambda: E.ExpLogLoss(**SM), vs_dice=True),
        Case("LovaszSoftmaxLoss", "lovasz_softmax", lambda: E.LovaszSoftmaxLoss(), vs_dice=True),
        Case(
            "CompoundLoss (Dice + 0.5 weighted CE)",
            "compound",
            lambda: E.CompoundLoss({"dice": E.DiceLoss(**SM), "ce": (E.WeightedCELoss(), 0.5)}),
        ),
        # geometry losses: ours read maps precomputed by the transforms, MONAI's compute them at every step
        Case(
            "BoundaryLoss (precomputed map)",
            "boundary",
            lambda: E.BoundaryLoss(**SM),
            [("monai BoundaryLoss", lambda: ML.BoundaryLoss(**SM))],
            "distance_map",
        ),
        Case(
            "DiceBoundaryLoss (alpha 0.5, precomputed map)",
            "dice_boundary",
            lambda: E.DiceBoundaryLoss(alpha=0.5, **SM),
            [],
            "distance_map",
        ),
        Case(
            "HausdorffDTLoss (precomputed map)",
            "hausdorff_dt",
            lambda: E.HausdorffDTLoss(**SM),
            [("monai HausdorffDTLoss", lambda: ML.HausdorffDTLoss(**SM))],
            "unsigned_map",
        ),
        Case(
            "LogHausdorffDTLoss (precomputed map, d_P per step)",
            "log_hausdorff_dt",
            lambda: E.LogHausdorffDTLoss(**SM),
            [("monai LogHausdorffDTLoss", lambda: ML.LogHausdorffDTLoss(**SM))],
            "reference_map",
        ),
        Case("WeightMapCELoss (precomputed map)", "weight_map_ce", lambda: E.WeightMapCELoss(), [], "weight_map"),
        Case("BlobLoss (precomputed instances)", "blob", lambda: E.BlobLoss(**SM), [], "instances"),
    ]


def peer_references() -> dict[str, list[tuple[str, Factory]]]:
    """Equivalent losses of the peer libraries that are importable here, keyed by the name of the case they
    match (kornia's focal loss is a softmax one, smp's multiclass focal loss a one-vs-rest sigmoid one)."""
    peers: dict[str, list[tuple[str, Factory]]] = {}
    if importlib.util.find_spec("kornia") is not None:
        import kornia.losses as K

        for case, label, make in (
            ("DiceLoss", "kornia DiceLoss", lambda: _IndexTarget(K.DiceLoss(), flatten_2d=True)),
            (
                "TverskyLoss",
                "kornia TverskyLoss",
                lambda: _IndexTarget(K.TverskyLoss(alpha=0.3, beta=0.7), flatten_2d=True),
            ),
            (
                "FocalLoss (softmax)",
                "kornia FocalLoss",
                lambda: _IndexTarget(K.FocalLoss(alpha=0.25, reduction="mean")),
            ),
        ):
            peers.setdefault(case, []).append((label, make))
    if importlib.util.find_spec("segmentation_models_pytorch") is not None:
        import segmentation_models_pytorch.losses as S

        mc = dict(mode="multiclass", from_logits=True)
        for case, make in (
            ("DiceLoss", lambda: S.DiceLoss(**mc)),
            ("JaccardLoss", lambda: S.JaccardLoss(**mc)),
            ("TverskyLoss", lambda: S.TverskyLoss(alpha=0.3, beta=0.7, **mc)),
            ("FocalLoss (sigmoid)", lambda: S.FocalLoss(mode="multiclass", alpha=0.25)),
            ("LovaszSoftmaxLoss", lambda: S.LovaszLoss(mode="multiclass")),
        ):
            label = f"smp {make().__class__.__name__}"
            peers.setdefault(case, []).append((label, lambda make=make: _IndexTarget(make())))
    return peers


def cases(peers: bool = True) -> list[Case]:
    """Every benchmark case: each registered loss at least once, with MONAI/PyTorch and peer references."""
    out = _monai_cases()
    missing = sorted(set(list_losses()) - {c.registry for c in out})
    if missing:
        raise RuntimeError(f"speed benchmark has no case for the registered losses {missing}")
    if peers:
        extra = peer_references()
        unknown = sorted(set(extra) - {c.name for c in out})
        if unknown:
            raise RuntimeError(f"peer references for cases that do not exist: {unknown}")
        for c in out:
            c.refs = c.refs + extra.get(c.name, [])
    return out


def make_labels(batch: int, classes: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Lesion-like index labels ``(B, 1, size, size, size)``: a few balls of each foreground class."""
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


def make_maps(labels: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """The maps the transforms would have cached for each case."""
    from ..transforms import LesionInstances, SignedDistanceMap, UNetWeightMap

    cases_ = [labels[b].cpu() for b in range(labels.shape[0])]

    def stack(f):
        return torch.stack([torch.as_tensor(f(c)) for c in cases_]).to(labels.device)

    return {
        "distance_map": stack(SignedDistanceMap(num_classes=classes)),
        "unsigned_map": stack(SignedDistanceMap(num_classes=classes, mode="unsigned")),
        "reference_map": stack(SignedDistanceMap(num_classes=classes, mode="unsigned", convention="reference")),
        "weight_map": stack(UNetWeightMap()),
        "instances": stack(lambda c: LesionInstances()((c > 0).to(torch.uint8))),
    }


_MAP_KWARG = {
    "distance_map": "distance_map",
    "unsigned_map": "distance_map",
    "reference_map": "distance_map",
    "weight_map": "weight_map",
    "instances": "instances",
}


@dataclass
class Row:
    loss: str
    registry: str
    reference: str
    ours_ms: float
    ref_ms: float | None
    ratio: float | None
    ours_mem: float
    ref_mem: float | None


def run(
    device: str | torch.device = "cpu",
    size: int = 96,
    batch: int = 2,
    classes: int = 4,
    repeats: int = 5,
    amp: bool = False,
    only: list[str] | None = None,
    peers: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Row], list[tuple[str, float, float, float]], str]:
    """Time every case. Returns the rows, the cost of the ``vs_dice`` losses against our DiceLoss (name, ours s,
    Dice s, ratio) and a one-paragraph description of the setting."""
    import monai

    device = torch.device(device)
    torch.manual_seed(0)
    logits = (torch.randn((batch, classes, size, size, size), device=device) * 2).requires_grad_(True)
    labels = make_labels(batch, classes, size, device)
    maps = make_maps(labels, classes)
    logit_bytes = logits.numel() * logits.element_size()
    wanted = {s.lower() for s in only} if only else None
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def step(loss: torch.nn.Module, map_key: str | None = None):
        kwargs = {_MAP_KWARG[map_key]: maps[map_key]} if map_key else {}

        def fn():
            logits.grad = None
            with torch.autocast(device.type, enabled=amp, dtype=dtype):
                value = loss(logits, labels, **kwargs)
            value.backward()
            logits.grad = None

        return fn

    rows: list[Row] = []
    map_rows = []
    for case in cases(peers):
        if wanted and case.name.lower() not in wanted and case.registry not in wanted:
            continue
        ours = case.ours().to(device)
        f_ours = step(ours, case.map_key)
        m_ours = peak_extra_bytes(f_ours, device) / logit_bytes
        if not case.refs:
            t = time_call(f_ours, device, repeats)
            rows.append(Row(case.name, case.registry, "—", t * 1e3, None, None, m_ours, None))
        for ref_name, ref_f in case.refs:
            ref = ref_f().to(device)
            f_ref = step(ref)
            if case.map_key is None:
                t_ours, t_ref, ratio = time_pair(f_ours, f_ref, device, repeats)
            else:  # MONAI's distance losses take seconds per step and churn memory: timed apart, fewer repeats
                t_ours, t_ref = time_call(f_ours, device, repeats), time_call(f_ref, device, 2)
                ratio = t_ours / t_ref
            m_ref = peak_extra_bytes(f_ref, device) / logit_bytes
            rows.append(Row(case.name, case.registry, ref_name, t_ours * 1e3, t_ref * 1e3, ratio, m_ours, m_ref))
        if case.vs_dice:  # against our DiceLoss (for a map-reading loss: the in-loss cost of reading the map)
            map_rows.append((case.name, *time_pair(f_ours, step(E.DiceLoss(**SM)), device, repeats)))
        if progress:
            r = rows[-1]
            progress(
                f"{case.name}: {r.ours_ms:.1f} ms" + (f" vs {r.ref_ms:.1f} ms ({r.reference})" if r.ref_ms else "")
            )

    dev_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    )
    setting = (
        f"B={batch}, C={classes}, {size}^3, forward+backward, {device.type}{' + autocast' if amp else ''} "
        f"({dev_name}, {torch.get_num_threads()} threads), torch {torch.__version__}, MONAI {monai.__version__}; "
        f"times: min of {repeats} runs; time ratio: median of the ratios of adjacent runs (ours and the reference "
        f"alternated); memory = peak extra allocation / logits bytes ({logit_bytes / 2**20:.0f} MiB)."
    )
    return rows, map_rows, setting


def to_markdown(rows: list[Row], map_rows, setting: str) -> str:
    fmt = lambda v, f: "—" if v is None else f.format(v)  # noqa: E731
    out = [
        f"Loss benchmark: {setting}\n",
        "| loss | reference | ours (ms) | reference (ms) | time ratio | ours memory (x logits) "
        "| reference memory (x logits) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {r.loss} | {r.reference} | {r.ours_ms:.1f} | {fmt(r.ref_ms, '{:.1f}')} | {fmt(r.ratio, '{:.2f}x')} | "
        f"{r.ours_mem:.2f} | {fmt(r.ref_mem, '{:.2f}')} |"
        for r in rows
    ]
    if map_rows:
        out += [
            "",
            "Against our DiceLoss (alternated, same tensors): the losses that read a precomputed map (their in-loss "
            "cost) and those whose cost is bounded relative to it (ComboLoss, ExpLogLoss at most 2x; "
            "LovaszSoftmaxLoss at most 10x):",
            "",
            "| loss | ours (ms) | our DiceLoss (ms) | ratio |",
            "|---|---:|---:|---:|",
        ]
        out += [f"| {n} | {tm * 1e3:.1f} | {td * 1e3:.1f} | {r:.2f}x |" for n, tm, td, r in map_rows]
    return "\n".join(out) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "loss",
                "registry",
                "reference",
                "ours_ms",
                "reference_ms",
                "time_ratio",
                "ours_mem_x_logits",
                "reference_mem_x_logits",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.loss,
                    r.registry,
                    r.reference,
                    f"{r.ours_ms:.3f}",
                    "" if r.ref_ms is None else f"{r.ref_ms:.3f}",
                    "" if r.ratio is None else f"{r.ratio:.4f}",
                    f"{r.ours_mem:.3f}",
                    "" if r.ref_mem is None else f"{r.ref_mem:.3f}",
                ]
            )


def main(args) -> str:
    """Run the speed part with the parsed CLI arguments; prints and writes ``speed.md`` / ``speed.csv``."""
    heap_kept = steady_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, map_rows, setting = run(
        device=args.device,
        size=args.size,
        batch=args.batch,
        classes=args.classes,
        repeats=args.repeats,
        amp=args.amp,
        only=args.only,
        peers=not args.no_peers,
        progress=lambda msg: print("  " + msg, file=sys.stderr, flush=True),
    )
    if heap_kept:
        setting += " CPU heap: glibc keeps freed memory, as it settles into during a training loop."
    table = to_markdown(rows, map_rows, setting)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(table)
    write_csv(rows, out / "speed.csv")
    print(table)
    return table
