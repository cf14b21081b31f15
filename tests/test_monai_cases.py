"""The situations MONAI's own loss tests check, run on our drop-ins with MONAI's class as the reference.

For every drop-in (``DiceLoss``, ``TverskyLoss``, ``GeneralizedDiceLoss``, ``FocalLoss``, ``DiceCELoss``,
``DiceFocalLoss``) each situation of MONAI's test file is rebuilt here (same shapes, arguments and kinds of
data; literal tensors where MONAI uses them, seeded random ones where MONAI draws at random) and both
``monai.losses.<name>`` (installed, 1.6.x) and ``monai_losses_ext.<name>`` are run with the same arguments:

* values (``test_values_match_monai``, ids ``<loss>-values-<n>``): ours equals MONAI's value and input
  gradient (float32, atol = rtol = 1e-5). Cases where MONAI reads logits as probabilities (no activation
  on a Dice term) are the one refusal we intend: ours runs them with ``validate=False``, and
  ``test_refused_by_default`` checks that the default raises the "these look like logits" ValueError.
  The other refusal ours documents (with ``softmax=True`` a one-hot target must sum to 1 at every voxel)
  is treated the same way for the one MONAI case that feeds an all-zero target.
* (B, C) inputs without spatial axes (``test_no_spatial_matches_monai``): equal to MONAI.
* ill shapes / ill options (``test_ill_cases_raise_like_monai``, ids ``<loss>-ill-shape-<n>``,
  ``<loss>-ill-opt-<n>``): MONAI raises; ours raises an instance of MONAI's exception type that is also a
  ValueError or TypeError (e.g. a shape error is both AssertionError and ValueError).
* warnings (``test_warnings_match_monai``): where MONAI warns (a flag ignored for one channel, scalar alpha
  ignored), ours emits the same category and message, and the values agree.
* ``ignore_index``: values as above, plus ``test_consistency_checks`` (the loss does not change when only
  ignored voxels change, a cropped input gives the same loss, one-hot and index targets agree) and
  ``test_ignored_voxels_get_no_gradient``.
* GeneralizedDiceLoss differentiability with a target that requires grad (``test_gdl_differentiable``).
* empty batches B = 0 (``test_empty_batch_is_refused``): ours raises a ValueError naming the empty batch.
* TorchScript (``test_torchscript``): ours is not scriptable and says so (a TypeError naming torch.compile);
  ``torch.export`` (``test_torch_export``): skipped at run time while MONAI's own class does not export.

Mapping to MONAI's files (tests/losses/ in Project-MONAI/MONAI):

* test_dice_loss.py: TEST_CASES -> dice-values-0..16 (MONAI's duplicate row once); test_ill_shape ->
  dice-ill-shape-1; test_ill_opts -> dice-ill-opt-1..3; test_input_warnings -> dice-warn-1..3; test_script ->
  dice-script;
  TestDiceLossIgnoreIndex -> dice-ignore-*, consistency dice-crop / dice-onehot-vs-index, gradient check.
* test_tversky_loss.py: TEST_CASES -> tversky-values-0..15; test_ill_shape -> tversky-ill-shape-1 and
  tversky-ill-opt-1..2; test_input_warnings -> tversky-warn-1..3; test_script -> tversky-script;
  test_export -> tversky-export.
* test_generalized_dice_loss.py: TEST_CASES -> gdl-values-0..12 (MONAI's duplicate row once); test_ill_shape /
  test_ill_opts -> gdl-ill-shape-1, gdl-ill-opt-1..3; test_input_warnings -> gdl-warn-1..3; test_differentiability /
  test_batch -> gdl-differentiable-1..2; test_script -> gdl-script.
* test_focal_loss.py: TEST_CASES -> focal-values-0..7; test_consistency_with_cross_entropy_2d(_no_reduction,
  _onehot_label) -> focal-values-ce2d-*; test_consistency_with_cross_entropy_classification(_01) ->
  focal-no-spatial-1..2; test_bin_seg_2d, test_empty_class_2d, test_multi_class_seg_2d, test_bin_seg_3d ->
  focal-values-<situation>-*; test_foreground -> focal-values-foreground-*; test_ill_opts / test_ill_shape /
  test_ill_class_weight -> focal-ill-opt-1, focal-ill-shape-1, focal-ill-weight-1..3;
  test_alpha_sequence_broadcasting -> focal-values-alpha-seq-*, focal-ill-alpha-1; test_warnings ->
  focal-warn-1..3; test_script -> focal-script-*.
* test_dice_ce_loss.py: TEST_CASES -> dicece-values-0..6; test_ill_shape(2, 3) -> dicece-ill-shape-1..3;
  test_export -> dicece-export. Extra: dicece-ill-opt-1..2 (negative lambdas, which MONAI rejects).
* test_dice_focal_loss.py: test_result_onehot_target_include_bg -> dicefocal-values-bg-*;
  test_result_no_onehot_no_bg -> dicefocal-values-nobg-*; test_with_alpha -> dicefocal-values-alpha-*;
  test_ill_shape(2, 3) -> dicefocal-ill-shape-1..3; test_ill_lambda -> dicefocal-ill-opt-1;
  test_script -> dicefocal-script.
* test_ignore_index_losses.py (Dice, Focal, Tversky): -> <loss>-ignore-* values and the consistency checks.

Not covered: MONAI's CUDA variants (CPU only here); its 100-draw loops (one seeded draw each); its
exception-message regexes (only the exception types are compared); DiceCELoss(reduction="none") (MONAI's
test is commented out); AsymmetricUnifiedFocalLoss in test_ignore_index_losses.py (not one of our drop-ins).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import monai.losses as monai_losses
import pytest
import torch
import torch.nn.functional as F
from monai.networks import one_hot

import monai_losses_ext

TOL = dict(atol=1e-5, rtol=1e-5)
LOGITS = "these look like logits"  # our validate=True refusal of logits where probabilities are read
UNLABELLED = "must sum to 1"  # our validate=True refusal of an unlabelled voxel in a softmax one-hot target
EMPTY_BATCH = re.compile(r"empty.*batch|batch.*empty|B\s*=\s*0", re.IGNORECASE | re.DOTALL)


@dataclass
class Case:
    """One situation: the loss class name, its arguments, the input and the target.

    refused: None, or the message our default (``validate=True``) raises for data MONAI accepts; the value
    comparison then runs ours with ``validate=False``.
    """

    cls: str
    kwargs: dict
    input: torch.Tensor
    target: torch.Tensor
    refused: str | None = None
    grad: bool = True
    extra: dict = field(default_factory=dict)


def t(data, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(data, dtype=dtype)


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def randint(seed: int, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def onehot_of(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(B, *spatial) int labels -> (B, n, *spatial) float one-hot."""
    return F.one_hot(labels, n).movedim(-1, 1).float()


# the inputs MONAI's overlap-loss files share
X1 = t([[[[1.0, -1.0], [-1.0, 1.0]]]])  # (1, 1, 2, 2)
Y1 = t([[[[1.0, 0.0], [1.0, 1.0]]]])
X2 = t([[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]])  # (2, 1, 2, 2)
Y2 = t([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]])
X2B = t([[[[1.0, -0.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]])
P_SOFT = t([[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]])  # probabilities, also the soft target
P3 = t([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])  # (2, 2, 3) probabilities
Y3 = t([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])  # (2, 1, 3) index labels
L3 = t([[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # (2, 2, 3) logits
Y3B = t([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]])  # (2, 1, 3) index labels


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=1)


# ---------------------------------------------------------------------------------------------- values
def _overlap_cases(cls: str, rows: list) -> list:
    return [pytest.param(Case(cls, kw, x, y), id=f"{_SHORT[cls]}-values-{i}") for i, (kw, x, y) in enumerate(rows)]


_SHORT = {
    "DiceLoss": "dice",
    "TverskyLoss": "tversky",
    "GeneralizedDiceLoss": "gdl",
    "FocalLoss": "focal",
    "DiceCELoss": "dicece",
    "DiceFocalLoss": "dicefocal",
}
S4 = {"smooth_nr": 1e-4, "smooth_dr": 1e-4}
S6 = {"smooth_nr": 1e-6, "smooth_dr": 1e-6}
BG = {"include_background": True}
OH = {"include_background": True, "to_onehot_y": True}

DICE_ROWS = [
    ({**BG, "sigmoid": True, **S6}, X1, Y1),
    ({**BG, "sigmoid": True, **S4}, X2, Y2),
    ({**BG, **S4, "soft_label": True}, P_SOFT, P_SOFT),
    ({**BG, **S4, "soft_label": False}, P_SOFT, P_SOFT),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 0}, P3, Y3),
    ({**OH, "sigmoid": True, **S4}, L3, Y3B),
    ({**OH, "sigmoid": True, "reduction": "none", **S4}, L3, Y3B),
    ({**OH, "softmax": True, **S4}, L3, Y3B),
    ({**OH, "softmax": True, "reduction": "sum", **S4}, L3, Y3B),
    ({**BG, "sigmoid": True, "squared_pred": True}, X1, Y1),
    ({**BG, "sigmoid": True, "jaccard": True}, X1, Y1),
    ({**BG, "other_act": torch.tanh, **S4}, X2, Y2),
    ({**OH, "other_act": log_softmax, **S4}, L3, Y3B),
    ({**BG, "other_act": torch.tanh, **S4, "batch": True}, X2B, Y2),
    ({**BG, "other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-4, "batch": True}, X2B, Y2),
    ({**BG, "other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-4, "batch": False}, X2B, Y2),
    ({**OH, "other_act": log_softmax, **S4, "weight": (0, 1)}, L3, Y3B),
]

TVERSKY_ROWS = [
    ({**BG, "sigmoid": True, **S6}, X1, Y1),
    ({**BG, "sigmoid": True, **S4}, X2, Y2),
    ({**BG, **S4, "soft_label": True}, P_SOFT, P_SOFT),
    ({**BG, **S4, "soft_label": False}, P_SOFT, P_SOFT),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 0}, P3, Y3),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 1e-3}, P3, Y3),
    ({**OH, "sigmoid": True, **S4}, L3, Y3B),
    ({**OH, "sigmoid": True, "batch": True}, L3, Y3B),
    ({**OH, "sigmoid": True, "reduction": "sum", **S4}, L3, Y3B),
    ({**OH, "softmax": True, **S4}, L3, Y3B),
    ({**OH, "softmax": True, "reduction": "none", **S4}, L3, Y3B),
    ({**BG, "sigmoid": True, "alpha": 0.3, "beta": 0.7, **S6}, X1, Y1),
    ({**BG, "sigmoid": True, "alpha": 0.7, "beta": 0.3, **S6}, X1, Y1),
    ({**BG, "other_act": torch.tanh, **S4}, X2, Y2),
    ({**BG, "other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-3, "batch": True}, X2, Y2),
    ({**OH, "other_act": log_softmax, **S4}, L3, Y3B),
]

GDL_ROWS = [
    ({**BG, "sigmoid": True, **S6}, X1, Y1),
    ({**BG, "sigmoid": True, **S4}, X2, Y2),
    ({**BG, **S4, "soft_label": True}, P_SOFT, P_SOFT),
    ({**BG, **S4, "soft_label": False}, P_SOFT, P_SOFT),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0}, P3, Y3),
    ({**OH, "sigmoid": True, **S4}, L3, Y3B),
    ({**OH, "softmax": True, **S4}, L3, Y3B),
    ({**OH, "softmax": True, "reduction": "sum", **S4}, L3, Y3B),
    ({**OH, "softmax": True, "reduction": "none", **S4}, L3, Y3B),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 1e-8, "smooth_dr": 1e-8}, P3, 0 * Y3),
    (
        {**OH, "softmax": True, "w_type": "simple", "smooth_nr": 0, "smooth_dr": 0},
        t([[[0.0, 10.0, 10.0, 10.0], [10.0, 0.0, 0.0, 0.0]]]),
        t([[[1, 1, 0, 0]]], torch.int64),
    ),
    ({**BG, "other_act": torch.tanh, **S4}, X2, Y2),
    ({**OH, "other_act": log_softmax, **S4}, L3, Y3B),
]

# FocalLoss (test_focal_loss.py)
FX = t([[[[1.0, 1.0], [0.5, 0.0]], [[1.0, 1.0], [0.5, 0.0]], [[1.0, 1.0], [0.5, 0.0]]]])  # (1, 3, 2, 2) logits
FY = t([[[[0, 1], [2, 0]]]], torch.int64)  # (1, 1, 2, 2)
FY_OH = F.one_hot(FY.squeeze(1)).permute(0, 3, 1, 2)  # (1, 3, 2, 2) int64 one-hot
FOCAL_ROWS = [
    ({"to_onehot_y": True}, FX, FY),
    ({"to_onehot_y": False}, FX, FY_OH),
    ({"to_onehot_y": True, "include_background": False}, FX, FY),
    ({"to_onehot_y": True, "alpha": 0.8}, FX, FY),
    ({"to_onehot_y": True, "reduction": "none"}, FX, FY),
    ({"to_onehot_y": True, "weight": torch.tensor([0.5, 0.1, 0.2]), "reduction": "none"}, FX, FY),
    ({"to_onehot_y": True, "use_softmax": True}, FX, FY),
    ({"to_onehot_y": True, "alpha": 0.8, "use_softmax": True}, FX, FY),
]


def _focal_situations() -> list:
    """test_consistency_with_cross_entropy_2d*, test_bin_seg_2d, test_empty_class_2d, test_multi_class_seg_2d,
    test_bin_seg_3d, test_foreground and test_alpha_sequence_broadcasting."""
    out = []
    # gamma = 0 against BCE on (128, 10, 8, 4): one seeded draw each (MONAI loops 100 draws)
    x = rand(1, 128, 10, 8, 4)
    y_dense = randint(2, 0, 2, (128, 10, 8, 4)).float()
    y_index = randint(3, 0, 10, (128, 1, 8, 4))
    for name, kw, y in [
        ("ce2d-mean", {"to_onehot_y": False, "gamma": 0.0, "reduction": "mean", "weight": 1.0}, y_dense),
        ("ce2d-none", {"to_onehot_y": False, "gamma": 0.0, "reduction": "none", "weight": 1.0}, y_dense),
        ("ce2d-onehot-label", {"to_onehot_y": True, "gamma": 0.0, "reduction": "mean"}, y_index),
    ]:
        out.append(pytest.param(Case("FocalLoss", kw, x, y), id=f"focal-values-{name}"))
    seg = {
        "bin-seg-2d": (t([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], torch.int64), 2, 100.0, 50.0),
        "empty-class-2d": (torch.zeros(4, 4, dtype=torch.int64), 2, 1000.0, 500.0),
        "multi-class-seg-2d": (t([[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, 0, 0, 0]], torch.int64), 6, 1e3, 5e2),
        "bin-seg-3d": (t([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]] * 3, torch.int64), 2, 1e3, 5e2),
    }
    for name, (lab, n, scale, shift) in seg.items():
        lab = lab.unsqueeze(0)  # (1, *spatial)
        pred = scale * onehot_of(lab, n) - shift
        onehot = F.one_hot(lab, n).movedim(-1, 1)  # int64 one-hot, as MONAI builds it
        for use_softmax in (True, False):
            for alpha in (None, 0.5):
                for onehot_y in (True, False):
                    if onehot_y is False and name in ("bin-seg-2d", "empty-class-2d"):
                        continue  # MONAI checks these two with index labels only
                    kw = {"to_onehot_y": onehot_y, "use_softmax": use_softmax}
                    if alpha is not None:
                        kw["alpha"] = alpha
                    y = lab.unsqueeze(1) if onehot_y else onehot
                    sid = f"{name}-{'softmax' if use_softmax else 'sigmoid'}-{'alpha' if alpha else 'noalpha'}"
                    sid += "-index" if onehot_y else "-onehot"
                    out.append(pytest.param(Case("FocalLoss", kw, pred, y), id=f"focal-values-{sid}"))
    bg, fg = torch.ones(1, 1, 5, 5), torch.zeros(1, 1, 5, 5)
    inp = torch.cat((bg, fg), dim=1)
    tgt = inp.clone()
    tgt[:, 0, 2, 2] = 0
    tgt[:, 1, 2, 2] = 1
    for inc in (True, False):
        kw = {"to_onehot_y": False, "include_background": inc}
        out.append(
            pytest.param(Case("FocalLoss", kw, inp, tgt), id=f"focal-values-foreground-{'fgbg' if inc else 'fg'}")
        )
    # alpha as a sequence. MONAI's test uses [0.1, 0.5, 2.0]; MONAI documents alpha in [0, 1] and ours enforces
    # that at construction (see test_out_of_domain_alpha_is_refused), so the in-domain case is compared here.
    logits = randn(4, 2, 3, 4, 4)
    labels = randint(5, 0, 3, (2, 1, 4, 4))
    for use_softmax in (True, False):
        kw = {"to_onehot_y": True, "gamma": 2.0, "alpha": [0.1, 0.5, 0.9], "use_softmax": use_softmax}
        sid = "softmax" if use_softmax else "sigmoid"
        out.append(pytest.param(Case("FocalLoss", kw, logits, labels), id=f"focal-values-alpha-seq-{sid}"))
    return out


# DiceCELoss (test_dice_ce_loss.py); cases 3-5 feed 100.0 without an activation to the Dice term
CX = t([[[100.0, 100.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
DICECE_ROWS = [
    ({"to_onehot_y": True}, P3, Y3, None),
    ({"to_onehot_y": False}, P3, P3, None),
    ({"to_onehot_y": False}, P3, P3.to(torch.uint8), None),
    ({"include_background": False, "to_onehot_y": True, "weight": torch.tensor([1.0, 1.0])}, CX, Y3, LOGITS),
    (
        {
            "include_background": False,
            "to_onehot_y": True,
            "weight": torch.tensor([1.0, 1.0]),
            "lambda_dice": 1.0,
            "lambda_ce": 2.0,
        },
        CX,
        Y3,
        LOGITS,
    ),
    ({"include_background": False, "to_onehot_y": True, "weight": torch.tensor([0.0, 1.0])}, CX, Y3, LOGITS),
    (
        {"weight": torch.tensor([0.5]), "sigmoid": True},
        t([[[0.8, 0.6, 0.0]], [[0.0, 0.0, 0.9]]]),
        t([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]]),
        None,
    ),
]


def _dicefocal_cases() -> list:
    """test_result_onehot_target_include_bg, test_result_no_onehot_no_bg and test_with_alpha: MONAI compares
    DiceFocalLoss with DiceLoss + lambda * FocalLoss; here MONAI's DiceFocalLoss is the reference.
    The include-background ones give randn logits to the Dice term without an activation (ours: refused)."""
    out = []
    size = (3, 3, 5, 5)
    pred, label = randn(10, *size), randint(11, 0, 2, size)
    for red in ("sum", "mean", "none"):
        for wname, weight in (("none", None), ("tensor", torch.tensor([1.0, 1.0, 2.0])), ("tuple", (3, 2.0, 1))):
            for lf in (0.5, 1.0, 1.5):
                kw = {"include_background": True, "to_onehot_y": False, "reduction": red, "weight": weight}
                kw |= {"gamma": 1.0, "lambda_focal": lf}
                case = Case("DiceFocalLoss", kw, pred, label, refused=LOGITS)
                out.append(pytest.param(case, id=f"dicefocal-values-bg-{red}-w{wname}-lf{lf}"))
    # no background, softmax Dice. (3, 3, 5, 5): index labels from an argmax, as MONAI; (3, 2, 5, 5): MONAI
    # draws randint(0, 1), an all-zero "one-hot" target, which our softmax check refuses (dicefocal-values-
    # nobg-zero-target-*); the intended one-hot situation is compared with a proper random one-hot target.
    for n_ch, target_kind in ((3, "index"), (2, "onehot"), (2, "zero-target")):
        shape = (3, n_ch, 5, 5)
        pred = randn(12 + n_ch, *shape)
        if target_kind == "index":
            label = torch.argmax(randint(14, 0, n_ch - 1, shape), dim=1, keepdim=True)
        elif target_kind == "onehot":
            label = onehot_of(randint(15, 0, n_ch, (3, 5, 5)), n_ch).long()
        else:
            label = torch.zeros(shape, dtype=torch.int64)
        weights = (("2.0", 2.0),) if n_ch != 3 else (("tensor", torch.tensor([1.0, 2.0])), ("tuple", (2.0, 1)))
        for red in ("sum", "mean", "none"):
            for wname, weight in weights:
                for lf in (0.5, 1.0, 1.5):
                    kw = {"include_background": False, "softmax": True, "to_onehot_y": target_kind == "index"}
                    kw |= {"reduction": red, "weight": weight, "lambda_focal": lf}
                    refused = UNLABELLED if target_kind == "zero-target" else None
                    case = Case("DiceFocalLoss", kw, pred, label, refused=refused)
                    out.append(pytest.param(case, id=f"dicefocal-values-nobg-{target_kind}-{red}-w{wname}-lf{lf}"))
    for i, (red, wname, weight) in enumerate(
        (r, wn, w)
        for r in ("sum", "mean", "none")
        for wn, w in (("none", None), ("tensor", torch.tensor([1.0, 1.0, 2.0])), ("tuple", (3, 2.0, 1)))
    ):
        pred, label = randn(20 + i, *size), randint(40 + i, 0, 2, size)
        kw = {"include_background": True, "to_onehot_y": False, "reduction": red, "weight": weight}
        kw |= {"gamma": 1.0, "lambda_focal": 0.5, "alpha": 0.25}
        case = Case("DiceFocalLoss", kw, pred, label, refused=LOGITS)
        out.append(pytest.param(case, id=f"dicefocal-values-alpha-{red}-w{wname}"))
    return out


# ignore_index: TestDiceLossIgnoreIndex (test_dice_loss.py) and test_ignore_index_losses.py
IGN_X = torch.log(t([[[[0.8, 0.1], [0.1, 0.1]], [[0.1, 0.8], [0.1, 0.1]], [[0.1, 0.1], [0.8, 0.8]]]]))
IGN_Y = t([[[[0, 1], [2, 2]]]], torch.int64)
IGN_GRAD_Y = t([[[[0, 1, 0, 1], [1, 0, 1, 0], [2, 2, 2, 2], [2, 2, 2, 2]]]], torch.int64)
SENTINEL_1CH = t([[[[1, 0, 1, 0], [0, 1, 0, 1], [255, 255, 255, 255], [255, 255, 255, 255]]]])
MASKED_1CH = t([[[[1, 0, 255, 255], [0, 1, 255, 255], [0, 1, 255, 255], [0, 1, 255, 255]]]])
CLASS_IDX_Y = torch.cat([torch.zeros(1, 1, 2, 4), torch.ones(1, 1, 2, 4)], dim=2).long()
SINGLE_CH = {"DiceLoss": {"sigmoid": True}, "FocalLoss": {"use_softmax": False}, "TverskyLoss": {"sigmoid": True}}
MULTI_CH = {"DiceLoss": {"softmax": True}, "FocalLoss": {"use_softmax": True}, "TverskyLoss": {"softmax": True}}


def _ignore_cases() -> list:
    out = []
    oh_labels = randint(31, 0, 4, (2, 1, 8, 8))
    rows = [
        (
            "dice-ignore-index-target",
            "DiceLoss",
            {"to_onehot_y": True, "softmax": True, "ignore_index": 2},
            IGN_X,
            IGN_Y,
        ),
        (
            "dice-ignore-onehot-target",
            "DiceLoss",
            {"softmax": True, "ignore_index": 1},
            randn(30, 2, 4, 8, 8),
            one_hot(oh_labels, num_classes=4),
        ),
        (
            "dice-ignore-onehot-index-target",
            "DiceLoss",
            {"softmax": True, "to_onehot_y": True, "ignore_index": 1},
            randn(30, 2, 4, 8, 8),
            oh_labels,
        ),
        (
            "dice-ignore-gradient",
            "DiceLoss",
            {"to_onehot_y": True, "softmax": True, "ignore_index": 2},
            randn(32, 1, 3, 4, 4),
            IGN_GRAD_Y,
        ),
        (
            "focal-ignore-zero-contribution",
            "FocalLoss",
            {"ignore_index": 255, "use_softmax": False, "reduction": "none", "to_onehot_y": True},
            torch.zeros(1, 3, 2, 4),
            t([[[[255, 0, 1, 0], [1, 255, 0, 1]]]], torch.int64),
        ),
    ]
    for i, (cls, kw) in enumerate(SINGLE_CH.items()):
        s = _SHORT[cls]
        rows.append(
            (f"{s}-ignore-sentinel-1ch", cls, {"ignore_index": 255, **kw}, randn(50 + i, 1, 1, 4, 4), SENTINEL_1CH)
        )
        rows.append(
            (f"{s}-ignore-masked-mean", cls, {"ignore_index": 255, **kw}, randn(60 + i, 1, 1, 4, 4), MASKED_1CH)
        )
        rows.append(
            (
                f"{s}-ignore-none",
                cls,
                {"ignore_index": None, **kw},
                randn(70 + i, 1, 1, 4, 4),
                randint(80 + i, 0, 2, (1, 1, 4, 4)).float(),
            )
        )
    for i, (cls, kw) in enumerate(MULTI_CH.items()):
        s = _SHORT[cls]
        for ign in (0, 1):
            kwi = {"ignore_index": ign, "to_onehot_y": True, **kw}
            rows.append((f"{s}-ignore-class-index-{ign}", cls, kwi, randn(90 + i, 1, 2, 4, 4), CLASS_IDX_Y))
        rows.append(
            (
                f"{s}-ignore-sentinel-onehot",
                cls,
                {"ignore_index": 255, "to_onehot_y": True, **kw},
                randn(95 + i, 1, 3, 4, 4),
                SENTINEL_1CH.long(),
            )
        )
    for cid, cls, kw, x, y in rows:
        out.append(pytest.param(Case(cls, kw, x, y), id=cid))
    return out


# GeneralizedDiceLoss test_differentiability / test_batch
GDL_DIFF = [
    pytest.param(
        Case("GeneralizedDiceLoss", {}, torch.ones(1, 1, 1, 3), torch.ones(1, 1, 1, 3)), id="gdl-differentiable-1"
    ),
    pytest.param(
        Case("GeneralizedDiceLoss", {"batch": True}, torch.zeros(2, 3, 3, 3), torch.zeros(2, 3, 3, 3)),
        id="gdl-differentiable-2",
    ),
]

VALUE_CASES = (
    _overlap_cases("DiceLoss", DICE_ROWS)
    + _overlap_cases("TverskyLoss", TVERSKY_ROWS)
    + _overlap_cases("GeneralizedDiceLoss", GDL_ROWS)
    + _overlap_cases("FocalLoss", FOCAL_ROWS)
    + _focal_situations()
    + [
        pytest.param(Case("DiceCELoss", kw, x, y, refused=r), id=f"dicece-values-{i}")
        for i, (kw, x, y, r) in enumerate(DICECE_ROWS)
    ]
    + _dicefocal_cases()
    + _ignore_cases()
)
REFUSED_CASES = [p for p in VALUE_CASES if p.values[0].refused]

# (B, C) inputs without spatial axes: test_consistency_with_cross_entropy_classification(_01)
NO_SPATIAL_CASES = [
    pytest.param(
        Case(
            "FocalLoss",
            {"to_onehot_y": True, "gamma": g, "reduction": "mean"},
            rand(100, 128, 10),
            randint(101, 0, 10, (128, 1)),
        ),
        id=f"focal-no-spatial-{i}",
    )
    for i, g in enumerate((0.0, 0.1), start=1)
]


def _evaluate(module, case: Case, **override):
    """The loss value and, for a differentiable case, d(sum of the loss)/d(input)."""
    x = case.input.detach().clone().requires_grad_(case.grad)
    loss = getattr(module, case.cls)(**case.kwargs, **override)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loss(x, case.target.clone())
    grad = None
    if case.grad:
        (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


def _assert_matches_monai(case: Case) -> None:
    ref, ref_grad = _evaluate(monai_losses, case)
    ours, our_grad = _evaluate(monai_losses_ext, case, **({"validate": False} if case.refused else {}))
    torch.testing.assert_close(ours, ref, **TOL, msg=lambda m: f"value differs from MONAI's: {m}")
    if case.grad:
        torch.testing.assert_close(our_grad, ref_grad, **TOL, msg=lambda m: f"input gradient differs from MONAI's: {m}")


@pytest.mark.parametrize("case", VALUE_CASES)
def test_values_match_monai(case: Case) -> None:
    _assert_matches_monai(case)


@pytest.mark.parametrize("case", [pytest.param(p.values[0], id=f"{p.id}-default") for p in REFUSED_CASES])
def test_refused_by_default(case: Case) -> None:
    """Data MONAI accepts that ours refuses on purpose with validate=True (the default)."""
    loss = getattr(monai_losses_ext, case.cls)(**case.kwargs)
    with pytest.raises(ValueError, match=re.escape(case.refused)):
        loss(case.input.clone(), case.target.clone())


@pytest.mark.parametrize("case", NO_SPATIAL_CASES)
def test_no_spatial_matches_monai(case: Case) -> None:
    _assert_matches_monai(case)


def test_out_of_domain_alpha_is_refused() -> None:
    """MONAI's test_alpha_sequence_broadcasting uses alpha=[0.1, 0.5, 2.0]; MONAI documents alpha in [0, 1] but
    does not check it, ours rejects it at construction with a ValueError naming alpha."""
    with pytest.raises(ValueError, match="alpha"):
        monai_losses_ext.FocalLoss(to_onehot_y=True, alpha=[0.1, 0.5, 2.0], use_softmax=True)


# ------------------------------------------------------------------------------- ill shapes and options
ONES = torch.ones
ILL_CASES = [
    ("dice-ill-shape-1", "DiceLoss", {}, ONES(1, 2, 3), ONES(4, 5, 6)),
    ("dice-ill-opt-1", "DiceLoss", {"sigmoid": True, "softmax": True}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("dice-ill-opt-2", "DiceLoss", {"reduction": "unknown"}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("dice-ill-opt-3", "DiceLoss", {"reduction": None}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("tversky-ill-shape-1", "TverskyLoss", {}, ONES(2, 2, 3), ONES(4, 5, 6)),
    ("tversky-ill-opt-1", "TverskyLoss", {"reduction": "unknown"}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("tversky-ill-opt-2", "TverskyLoss", {"reduction": None}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("gdl-ill-shape-1", "GeneralizedDiceLoss", {}, ONES(1, 2, 3), ONES(4, 5, 6)),
    ("gdl-ill-opt-1", "GeneralizedDiceLoss", {"sigmoid": True, "softmax": True}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("gdl-ill-opt-2", "GeneralizedDiceLoss", {"reduction": "unknown"}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("gdl-ill-opt-3", "GeneralizedDiceLoss", {"reduction": None}, ONES(1, 1, 3), ONES(1, 1, 3)),
    ("focal-ill-opt-1", "FocalLoss", {"reduction": "unknown"}, ONES(1, 2, 3), ONES(1, 2, 3)),
    ("focal-ill-shape-1", "FocalLoss", {"reduction": "mean"}, ONES(1, 2, 3), ONES(1, 3)),
    (
        "focal-ill-weight-1",
        "FocalLoss",
        {"include_background": True, "weight": (1.0, 1.0, 2.0)},
        ONES(1, 4, 3, 3),
        ONES(1, 4, 3, 3),
    ),
    (
        "focal-ill-weight-2",
        "FocalLoss",
        {"include_background": False, "weight": (1.0, 1.0, 1.0, 1.0)},
        ONES(1, 4, 3, 3),
        ONES(1, 4, 3, 3),
    ),
    (
        "focal-ill-weight-3",
        "FocalLoss",
        {"include_background": False, "weight": (1.0, 1.0, -1.0)},
        ONES(1, 4, 3, 3),
        ONES(1, 4, 3, 3),
    ),
    (
        "focal-ill-alpha-1",
        "FocalLoss",
        {"to_onehot_y": True, "alpha": [0.1, 0.5], "use_softmax": True},
        randn(4, 2, 3, 4, 4),
        randint(5, 0, 3, (2, 1, 4, 4)),
    ),
    ("dicece-ill-shape-1", "DiceCELoss", {}, ONES(1, 2, 3), ONES(1, 2, 5)),
    ("dicece-ill-shape-2", "DiceCELoss", {}, ONES(1, 2, 3), ONES(1, 1, 2, 3)),
    ("dicece-ill-shape-3", "DiceCELoss", {}, ONES(1, 3, 4, 4), ONES(1, 2, 4, 4)),
    ("dicece-ill-opt-1", "DiceCELoss", {"lambda_dice": -1.0}, ONES(1, 2, 3), ONES(1, 2, 3)),
    ("dicece-ill-opt-2", "DiceCELoss", {"lambda_ce": -1.0}, ONES(1, 2, 3), ONES(1, 2, 3)),
    ("dicefocal-ill-shape-1", "DiceFocalLoss", {}, ONES(1, 2, 3), ONES(1, 2, 5)),
    ("dicefocal-ill-shape-2", "DiceFocalLoss", {}, ONES(1, 2, 3), ONES(1, 1, 2, 3)),
    ("dicefocal-ill-shape-3", "DiceFocalLoss", {}, ONES(1, 3, 4, 4), ONES(1, 2, 4, 4)),
    ("dicefocal-ill-opt-1", "DiceFocalLoss", {"lambda_dice": -1.0}, ONES(1, 2, 3), ONES(1, 2, 3)),
]


@pytest.mark.parametrize(("cls", "kwargs", "x", "y"), [pytest.param(*c[1:], id=c[0]) for c in ILL_CASES])
def test_ill_cases_raise_like_monai(cls: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    """Construction and call together: MONAI checks some options at call time, ours at construction."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as ref:
            getattr(monai_losses, cls)(**kwargs)(x, y)
        monai_type = type(ref.value)
        with pytest.raises(monai_type) as ours:
            getattr(monai_losses_ext, cls)(**kwargs)(x, y)
    assert isinstance(ours.value, (ValueError, TypeError)), (
        f"ours raised {type(ours.value).__name__} (MRO {[k.__name__ for k in type(ours.value).__mro__]}); "
        f"expected a subclass of {monai_type.__name__} and of ValueError or TypeError"
    )


# ---------------------------------------------------------------------------------------------- warnings
W1 = (ONES(1, 1, 3), ONES(1, 1, 3))
WARN_CASES = [
    ("dice-warn-1", "DiceLoss", {"include_background": False}, *W1),
    ("dice-warn-2", "DiceLoss", {"softmax": True}, *W1),
    ("dice-warn-3", "DiceLoss", {"to_onehot_y": True}, *W1),
    ("tversky-warn-1", "TverskyLoss", {"include_background": False, "softmax": False, "to_onehot_y": False}, *W1),
    ("tversky-warn-2", "TverskyLoss", {"include_background": False, "softmax": True, "to_onehot_y": False}, *W1),
    ("tversky-warn-3", "TverskyLoss", {"include_background": False, "softmax": False, "to_onehot_y": True}, *W1),
    ("gdl-warn-1", "GeneralizedDiceLoss", {"include_background": False}, *W1),
    ("gdl-warn-2", "GeneralizedDiceLoss", {"softmax": True}, *W1),
    ("gdl-warn-3", "GeneralizedDiceLoss", {"to_onehot_y": True}, *W1),
    ("focal-warn-1", "FocalLoss", {"to_onehot_y": True}, *W1),
    ("focal-warn-2", "FocalLoss", {"include_background": False}, *W1),
    (
        "focal-warn-3",
        "FocalLoss",
        {"include_background": False, "use_softmax": True, "alpha": 0.5},
        ONES(1, 3, 3),
        ONES(1, 3, 3),
    ),
]


def _call_recording(module, cls, kwargs, x, y):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = getattr(module, cls)(**kwargs)(x.clone(), y.clone())
    return out.detach(), {(w.category, str(w.message)) for w in caught}


@pytest.mark.parametrize(("cls", "kwargs", "x", "y"), [pytest.param(*c[1:], id=c[0]) for c in WARN_CASES])
def test_warnings_match_monai(cls: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    ref, ref_warnings = _call_recording(monai_losses, cls, kwargs, x, y)
    assert ref_warnings, "MONAI no longer warns here: the case needs updating"
    ours, our_warnings = _call_recording(monai_losses_ext, cls, kwargs, x, y)
    missing = ref_warnings - our_warnings
    assert not missing, f"MONAI warns {sorted(m for _, m in missing)}, ours does not (ours: {our_warnings})"
    torch.testing.assert_close(ours, ref, **TOL)


# ---------------------------------------------------------------------------------- ignore_index checks
def _ours(cls: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return getattr(monai_losses_ext, cls)(**kwargs)(x, y)


def _consistency_pairs() -> list:
    """Pairs of calls of ours that must agree (MONAI's own assertions in its ignore_index tests)."""
    pairs = []
    for i, (cls, kw) in enumerate(SINGLE_CH.items()):
        s = _SHORT[cls]
        base = randn(50 + i, 1, 1, 4, 4)
        alt = base.clone()
        alt[0, 0, 2:, :] += 5.0
        k = {"ignore_index": 255, **kw}
        pairs.append((f"{s}-ignored-rows-change", (cls, k, base, SENTINEL_1CH), (cls, k, alt, SENTINEL_1CH)))
        base = randn(60 + i, 1, 1, 4, 4)
        alt = base.clone()
        alt[:, :, :, 2:] += 10.0
        pairs.append((f"{s}-ignored-columns-change", (cls, k, base, MASKED_1CH), (cls, k, alt, MASKED_1CH)))
    for i, (cls, kw) in enumerate(MULTI_CH.items()):
        s = _SHORT[cls]
        for ign in (0, 1):
            base = randn(90 + i, 1, 2, 4, 4)
            alt = base.clone()
            alt[:, ign, slice(0, 2) if ign == 0 else slice(2, 4), :] += 5.0
            k = {"ignore_index": ign, "to_onehot_y": True, **kw}
            pairs.append((f"{s}-ignored-class-{ign}-change", (cls, k, base, CLASS_IDX_Y), (cls, k, alt, CLASS_IDX_Y)))
        base = randn(95 + i, 1, 3, 4, 4)
        alt = base.clone()
        alt[:, 1, 2:, :] += 5.0
        k = {"ignore_index": 255, "to_onehot_y": True, **kw}
        y = SENTINEL_1CH.long()
        pairs.append((f"{s}-ignored-sentinel-change", (cls, k, base, y), (cls, k, alt, y)))
    dice_kw = {"to_onehot_y": True, "softmax": True}
    pairs.append(
        (
            "dice-crop",
            ("DiceLoss", {**dice_kw, "ignore_index": 2}, IGN_X, IGN_Y),
            ("DiceLoss", dice_kw, IGN_X[:, :, :1, :], IGN_Y[:, :, :1, :]),
        )
    )
    x, labels = randn(30, 2, 4, 8, 8), randint(31, 0, 4, (2, 1, 8, 8))
    pairs.append(
        (
            "dice-onehot-vs-index",
            ("DiceLoss", {"softmax": True, "ignore_index": 1}, x, one_hot(labels, num_classes=4)),
            ("DiceLoss", {"softmax": True, "to_onehot_y": True, "ignore_index": 1}, x, labels),
        )
    )
    return [pytest.param(a, b, id=cid) for cid, a, b in pairs]


@pytest.mark.parametrize(("first", "second"), _consistency_pairs())
def test_consistency_checks(first: tuple, second: tuple) -> None:
    torch.testing.assert_close(_ours(*first), _ours(*second), **TOL)


@pytest.mark.parametrize("cls", ["DiceLoss", "TverskyLoss", "FocalLoss"])
def test_ignored_voxels_get_no_gradient(cls: str) -> None:
    """TestDiceLossIgnoreIndex.test_gradients_ignored (extended to the other ignore_index drop-ins)."""
    x = randn(32, 1, 3, 4, 4).requires_grad_(True)
    kw = {"to_onehot_y": True, "ignore_index": 2, **MULTI_CH[cls]}
    (grad,) = torch.autograd.grad(_ours(cls, kw, x, IGN_GRAD_Y), x)
    assert torch.all(grad[:, :, 2:, :] == 0.0), grad[:, :, 2:, :]
    assert torch.any(grad[:, :, :2, :] != 0.0)


@pytest.mark.parametrize("case", GDL_DIFF)
def test_gdl_differentiable(case: Case) -> None:
    """test_differentiability / test_batch: input and target both require grad; the loss has a graph."""
    x = case.input.clone().requires_grad_(True)
    y = case.target.clone().requires_grad_(True)
    ours = monai_losses_ext.GeneralizedDiceLoss(**case.kwargs)(x, y)
    assert ours.grad_fn is not None
    _assert_matches_monai(case)


# ----------------------------------------------------------------------------------------- empty batches
EMPTY_CASES = []
for _cls in _SHORT:
    _kw_index = {"to_onehot_y": True} | ({} if _cls == "FocalLoss" else {"softmax": True})
    _kw_dense = {} if _cls == "FocalLoss" else {"sigmoid": True}
    EMPTY_CASES += [
        pytest.param(
            _cls,
            _kw_index,
            torch.zeros(0, 3, 4, 4),
            torch.zeros(0, 1, 4, 4, dtype=torch.int64),
            id=f"{_SHORT[_cls]}-empty-batch-index",
        ),
        pytest.param(
            _cls, _kw_dense, torch.zeros(0, 2, 4, 4), torch.zeros(0, 2, 4, 4), id=f"{_SHORT[_cls]}-empty-batch-dense"
        ),
    ]


@pytest.mark.parametrize(("cls", "kwargs", "x", "y"), EMPTY_CASES)
def test_empty_batch_is_refused(cls: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    """B = 0 (MONAI returns NaN or an empty tensor): ours raises a ValueError that names the empty batch."""
    with pytest.raises(ValueError) as err:
        _ours(cls, kwargs, x, y)
    assert EMPTY_BATCH.search(str(err.value)), f"message does not mention the empty batch: {err.value}"


# --------------------------------------------------------------------------------- TorchScript / export
SCRIPT_CASES = [
    pytest.param("DiceLoss", {}, (2, 1, 8, 8), id="dice-script"),
    pytest.param("TverskyLoss", {}, (2, 1, 8, 8), id="tversky-script"),
    pytest.param("GeneralizedDiceLoss", {}, (2, 1, 8, 8), id="gdl-script"),
    pytest.param("FocalLoss", {"use_softmax": True}, (2, 2, 8, 8), id="focal-script-softmax"),
    pytest.param("FocalLoss", {"use_softmax": False}, (2, 2, 8, 8), id="focal-script-sigmoid"),
    pytest.param("DiceFocalLoss", {}, (2, 1, 8, 8), id="dicefocal-script"),
]


@pytest.mark.parametrize(("cls", "kwargs", "shape"), SCRIPT_CASES)
def test_torchscript(cls: str, kwargs: dict, shape: tuple) -> None:
    """MONAI's test_script_save scripts each loss; ours are not scriptable (docs/losses.md says why): scripting
    stops at once with that explanation and the way out (torch.compile), not a parse error inside a kernel;
    MONAI's class scripts and gives its eager value."""
    x = torch.ones(shape)
    ref = getattr(monai_losses, cls)(**kwargs)
    torch.testing.assert_close(torch.jit.script(ref)(x, x), ref(x, x), **TOL)
    with pytest.raises(TypeError, match=rf"{cls} cannot be compiled by torch.jit.script.*torch.compile"):
        torch.jit.script(getattr(monai_losses_ext, cls)(**kwargs))


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        pytest.param("TverskyLoss", (2, 1, 8, 8), id="tversky-export"),
        pytest.param("DiceCELoss", (2, 2, 8, 8), id="dicece-export"),
    ],
)
def test_torch_export(cls: str, shape: tuple) -> None:
    """MONAI's test_export_save (newer test versions): torch.export, and the exported module gives MONAI's value."""
    x = torch.ones(shape)
    try:
        torch.export.export(getattr(monai_losses, cls)(), (x, x))
    except Exception as e:  # MONAI's own class: no reference to match
        pytest.skip(f"MONAI's {cls} does not export under torch {torch.__version__}: {type(e).__name__}")
    exported = torch.export.export(getattr(monai_losses_ext, cls)(), (x, x))
    torch.testing.assert_close(exported.module()(x, x), getattr(monai_losses, cls)()(x, x), **TOL)
