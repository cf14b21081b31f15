"""Bad input stops with a ValueError/TypeError that names what was seen and what to do."""

from __future__ import annotations

import pytest
import torch

import monai_losses_ext as E

SM = dict(softmax=True, to_onehot_y=True)


def _x(c=3, shape=(2, 5, 6, 4)):
    torch.manual_seed(0)
    return torch.randn(shape[0], c, *shape[1:])


def _t(c=3, shape=(2, 5, 6, 4)):
    torch.manual_seed(1)
    return torch.randint(0, c, (shape[0], 1, *shape[1:]))


ALL_LOGIT_LOSSES = [
    lambda: E.DiceLoss(**SM),
    lambda: E.TverskyLoss(**SM),
    lambda: E.FocalTverskyLoss(**SM),
    lambda: E.GeneralizedDiceLoss(**SM),
    lambda: E.LogCoshDiceLoss(**SM),
    lambda: E.SensitivitySpecificityLoss(**SM),
    lambda: E.WeightedCELoss(),
    lambda: E.FocalLoss(to_onehot_y=True),
    lambda: E.TopKCELoss(),
    lambda: E.DiceCELoss(**SM),
    lambda: E.DiceFocalLoss(**SM),
    lambda: E.DiceTopKLoss(**SM),
    lambda: E.ComboLoss(**SM),
    lambda: E.UnifiedFocalLoss(**SM),
    lambda: E.ExpLogLoss(**SM),
    lambda: E.LovaszSoftmaxLoss(),
    lambda: E.WeightedBCELoss(to_onehot_y=True),
    lambda: E.JaccardLoss(**SM),
]


@pytest.mark.parametrize("make", ALL_LOGIT_LOSSES)
def test_every_loss_names_both_shapes_on_mismatch(make):
    with pytest.raises(ValueError, match=r"\(2, 1, 5, 6, 3\).*\(2, 3, 5, 6, 4\)"):
        make()(_x(), torch.zeros(2, 1, 5, 6, 3, dtype=torch.long))


@pytest.mark.parametrize("make", ALL_LOGIT_LOSSES)
def test_shape_errors_are_also_monai_assertion_errors(make):
    """MONAI's Dice, Tversky, generalized Dice and Hausdorff-DT losses raise AssertionError on a shape mismatch
    (its own tests check the type): ours is a ValueError and an AssertionError."""
    for t in (torch.zeros(2, 1, 5, 6, 3, dtype=torch.long), torch.zeros(3, 1, 5, 6, 4, dtype=torch.long)):
        with pytest.raises(AssertionError) as info:
            make()(_x(), t)
        assert isinstance(info.value, ValueError) and isinstance(info.value, E.InputShapeError)


@pytest.mark.parametrize("make", ALL_LOGIT_LOSSES)
def test_every_loss_rejects_an_empty_batch(make):
    """B = 0 (an empty last batch) stops with a message about the empty batch, not an aminmax RuntimeError."""
    for validate in (True, False):
        loss = make()
        loss.validate = validate
        with pytest.raises(ValueError, match=r"input \(0, 3, 5, 6, 4\) is empty \(B=0.*drop_last"):
            loss(torch.randn(0, 3, 5, 6, 4), torch.zeros(0, 1, 5, 6, 4, dtype=torch.long))


def test_near_integer_labels_are_shown_with_their_digits():
    t = _t().float()
    t[0, 0, 0, 0, 0] = 1 + 1e-7  # float32: 1.0000001
    with pytest.raises(ValueError, match=r"non-integer values such as \{1\.0000001\}"):
        E.DiceLoss(**SM)(_x(), t)


@pytest.mark.parametrize("make", ALL_LOGIT_LOSSES)
def test_every_loss_rejects_out_of_range_labels(make):
    t = _t()
    t[0, 0, 0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels \{0, 1, 2, 7\}.*\[0, 2\].*out of range: \{7\}"):
        make()(_x(), t)


@pytest.mark.parametrize("make", ALL_LOGIT_LOSSES)
def test_every_loss_rejects_nan_input(make):
    x = _x()
    x[1, 0, 2, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        make()(x, _t())


def test_mask_saved_as_0_255_points_to_remap():
    t = (_t(2) * 255).to(torch.uint8)
    with pytest.raises(ValueError, match=r"\{0, 255\}.*remap=\{255: 1\}"):
        E.DiceLoss(**SM)(_x(2), t)
    with pytest.raises(ValueError, match=r"\[0, 255\].*remap=\{255: 1\}"):
        E.DiceLoss(sigmoid=True)(_x(1), t.float())


def test_fractional_index_labels():
    t = _t().float()
    t[0, 0, 1, 1, 1] = 0.5
    with pytest.raises(ValueError, match="non-integer values such as \\{0.5\\}.*nearest"):
        E.DiceCELoss(**SM)(_x(), t)


def test_integer_valued_float_labels_are_fine():
    a = E.DiceLoss(**SM)(_x(), _t().float())
    b = E.DiceLoss(**SM)(_x(), _t())
    assert torch.equal(a, b)


def test_onehot_must_sum_to_one_under_softmax():
    t = torch.zeros(2, 3, 5, 6, 4)
    t[:, 1] = 1
    t[:, 2, :2] = 1  # overlapping channels
    with pytest.raises(ValueError, match="sum to 1.*sigmoid=True"):
        E.DiceLoss(softmax=True)(_x(), t)
    E.DiceLoss(sigmoid=True)(_x(), t)  # fine for overlapping regions


def test_logits_without_activation():
    with pytest.raises(ValueError, match="look like logits.*softmax=True"):
        E.DiceLoss(to_onehot_y=True)(_x(), _t())
    with pytest.raises(ValueError, match="look like logits"):
        E.TverskyLoss(to_onehot_y=True)(_x(), _t())
    probs = torch.softmax(_x(), 1)
    E.DiceLoss(to_onehot_y=True)(probs, _t())  # probabilities are fine


def test_index_target_without_to_onehot_y():
    with pytest.raises(ValueError, match="pass to_onehot_y=True"):
        E.DiceLoss(softmax=True)(_x(), _t())
    with pytest.raises(ValueError, match="already looks one-hot"):
        E.DiceLoss(**SM)(_x(), torch.nn.functional.one_hot(_t()[:, 0], 3).permute(0, 4, 1, 2, 3).float())


def test_missing_channel_axis():
    with pytest.raises(ValueError, match="unsqueeze\\(1\\)"):
        E.DiceLoss(**SM)(_x(), _t()[:, 0])


@pytest.mark.parametrize("cls", [E.DiceLoss, E.TverskyLoss, E.GeneralizedDiceLoss, E.DiceCELoss, E.DiceFocalLoss])
def test_conflicting_activation_flags(cls):
    with pytest.raises(ValueError, match="conflicting activation flags"):
        cls(sigmoid=True, softmax=True)
    with pytest.raises(TypeError, match="other_act must be None or a callable"):
        cls(other_act="relu")


def test_weight_length_must_match_scored_classes():
    with pytest.raises(ValueError, match="weight has 3 values but 2 classes are scored"):
        E.DiceLoss(include_background=False, weight=[1, 2, 3], **SM)(_x(), _t())
    with pytest.raises(ValueError, match="weight has 2 values but the input has 3 classes"):
        E.WeightedCELoss(weight=[1, 2])(_x(), _t())
    with pytest.raises(ValueError, match="weight has 4 values but 3 classes are scored"):
        E.FocalLoss(to_onehot_y=True, weight=[1, 2, 3, 4])(_x(), _t())
    with pytest.raises(ValueError, match=">= 0"):
        E.DiceLoss(weight=[1, -1, 2])


@pytest.mark.parametrize("cls", [E.DiceLoss, E.TverskyLoss, E.FocalLoss, E.WeightedCELoss, E.GeneralizedDiceLoss])
def test_unknown_reduction(cls):
    with pytest.raises(ValueError, match="reduction='avg' is not supported"):
        cls(reduction="avg")


def test_non_tensor_and_integer_input():
    with pytest.raises(TypeError, match="torch.Tensors"):
        E.DiceLoss(**SM)(_x().numpy(), _t())
    with pytest.raises(TypeError, match="floating point"):
        E.DiceLoss(**SM)(_t(), _t())


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown loss 'dice_loss_typo'.*focal_tversky"):
        E.get_loss("dice_loss_typo")
    with pytest.raises(TypeError, match="it takes"):
        E.get_loss("weighted_ce", softmax=True)
    with pytest.raises(TypeError, match="'fractions.Fraction' is <class 'fractions.Fraction'>, not a torch.nn.Module"):
        E.get_loss("fractions.Fraction")
    with pytest.raises(ValueError, match="cannot import loss 'monai.losses.NoSuchLoss'"):
        E.get_loss("monai.losses.NoSuchLoss")
    import monai.losses

    # a dotted path or a class goes through the same defaults filter as a registry name
    assert isinstance(
        E.get_loss("monai.losses.DiceLoss", defaults={"softmax": True, "not_an_arg": 1}), monai.losses.DiceLoss
    )
    assert E.get_loss(monai.losses.DiceLoss, defaults={"softmax": True}).softmax


def test_validate_false_skips_checks_but_not_results():
    x, t = _x(), _t()
    a = E.DiceCELoss(**SM)(x, t)
    b = E.DiceCELoss(validate=False, **SM)(x, t)
    assert torch.equal(a, b)
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    assert torch.isnan(E.DiceLoss(validate=False, **SM)(bad, t))  # unchecked: the NaN comes through


def test_ignore_index_labels_are_allowed_out_of_range():
    t = _t()
    t[0, 0, :2] = 255
    value = E.DiceCELoss(ignore_index=255, **SM)(_x(), t)
    assert torch.isfinite(value)


@pytest.mark.parametrize(
    "make, index",
    [
        (lambda v: E.DiceLoss(validate=v, **SM), True),
        (lambda v: E.DiceCELoss(validate=v, **SM), True),
        (lambda v: E.TverskyLoss(validate=v, softmax=True), False),
        (lambda v: E.FocalLoss(validate=v), False),
    ],
    ids=["dice", "dice_ce", "tversky-onehot", "focal-onehot"],
)
def test_value_checks_cost_one_host_sync(make, index):
    """All value checks of a call read one small tensor back from the device: under torch.compile the only graph
    break is at that one transfer (dynamo counts it once per enclosing frame), none with validate=False."""
    import torch._dynamo

    x, t = _x(), _t()
    if not index:
        t = torch.nn.functional.one_hot(t[:, 0], 3).movedim(-1, 1).float()
    sites = {}
    for validate in (False, True):
        torch._dynamo.reset()
        reasons = torch._dynamo.explain(make(validate))(x, t).break_reasons
        sites[validate] = {(r.user_stack[-1].name, r.user_stack[-1].lineno) for r in reasons if r.user_stack}
    assert sites[False] == set(), sites
    assert len(sites[True]) == 1 and next(iter(sites[True]))[0] == "_value_checks", sites


@pytest.mark.parametrize(
    "make",
    [
        lambda s: E.WeightedCELoss(label_smoothing=s),
        lambda s: E.TopKCELoss(label_smoothing=s),
        lambda s: E.DiceTopKLoss(label_smoothing=s, **SM),
        lambda s: E.WeightMapCELoss(label_smoothing=s),
        lambda s: E.DiceCELoss(label_smoothing=s, **SM),
    ],
    ids=["weighted_ce", "topk_ce", "dice_topk", "weight_map_ce", "dice_ce"],
)
def test_label_smoothing_checked_at_construction(make):
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"label_smoothing must lie in \[0, 1\], got {bad}"):
            make(bad)
