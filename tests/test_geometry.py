"""Losses that read precomputed maps: boundary, Hausdorff-DT, weight-map CE, blob, Dice+boundary schedule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.networks import one_hot

import monai_losses_ext as E
from monai_losses_ext.transforms import LesionInstances, SignedDistanceMap, UNetWeightMap


def _case():
    torch.manual_seed(0)
    t = torch.zeros(2, 1, 14, 13, 10, dtype=torch.long)
    t[:, :, 2:7, 2:6, 2:6] = 1
    t[:, :, 8:12, 7:11, 5:9] = 2
    t[1, :, 1:3, 10:12, 1:3] = 1
    x = torch.randn(2, 3, 14, 13, 10, dtype=torch.float64)
    return x, t


def _maps(t, mode="signed"):
    return torch.stack([torch.as_tensor(SignedDistanceMap(num_classes=3, mode=mode)(t[b])) for b in range(t.shape[0])])


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@pytest.mark.parametrize("kw", [dict(), dict(include_background=False), dict(batch=True), dict(reduction="none")])
def test_boundary_equals_monai_given_the_same_map(kw):
    from monai.losses import BoundaryLoss as MonaiBoundary

    x, t = _case()
    ref = MonaiBoundary(softmax=True, to_onehot_y=True, **kw)
    dmap = ref.compute_distance_map(one_hot(t, 3))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = E.BoundaryLoss(softmax=True, to_onehot_y=True, **kw)(xa, t, distance_map=dmap)
    theirs = ref(xb, t)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-6, atol=1e-7)
    ours.sum().backward(), theirs.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-7)


def test_reference_convention_maps():
    """convention="reference": the signed map equals MONAI's BoundaryLoss map (Kervadec et al.: edt(~F) outside,
    -(edt(F) - 1) inside); the unsigned one is edt(F) + edt(~F) (Karimi & Salcudean). Inside, the default is
    deeper by less than one voxel."""
    from monai.losses import BoundaryLoss as MonaiBoundary
    from scipy import ndimage

    _, t = _case()
    ref = MonaiBoundary(softmax=True, to_onehot_y=True).compute_distance_map(one_hot(t, 3))
    for b in range(t.shape[0]):
        ours = torch.as_tensor(SignedDistanceMap(num_classes=3, convention="reference")(t[b]))
        torch.testing.assert_close(ours, ref[b].to(ours.dtype), rtol=0, atol=1e-5)
        unsigned = torch.as_tensor(SignedDistanceMap(num_classes=3, mode="unsigned", convention="reference")(t[b]))
        for k in range(3):
            fg = (t[b, 0] == k).numpy()
            expected = ndimage.distance_transform_edt(fg) + ndimage.distance_transform_edt(~fg)
            np.testing.assert_allclose(unsigned[k].numpy(), expected, rtol=0, atol=1e-5)
        default = torch.as_tensor(SignedDistanceMap(num_classes=3)(t[b]))
        inside = one_hot(t[b : b + 1], 3)[0].bool()
        gap = (ours - default)[inside]  # d(x, B) - (edt(F) - 1), in [0, 1): the default is as deep or deeper
        assert float(gap.min()) > -1e-6 and float(gap.max()) < 1 and float(gap.max()) > 0.1


@pytest.mark.parametrize(
    "loss, key, make",
    [
        (lambda: E.BoundaryLoss(softmax=True, to_onehot_y=True), "distance_map", lambda t: _maps(t)),
        (lambda: E.HausdorffDTLoss(softmax=True, to_onehot_y=True), "distance_map", lambda t: _maps(t, "unsigned")),
        (
            lambda: E.WeightMapCELoss(),
            "weight_map",
            lambda t: torch.stack([torch.as_tensor(UNetWeightMap()(t[b])) for b in range(t.shape[0])]),
        ),
        (
            lambda: E.BlobLoss(softmax=True, to_onehot_y=True),
            "instances",
            lambda t: torch.stack(
                [torch.as_tensor(LesionInstances()((t[b] > 0).to(torch.uint8))) for b in range(t.shape[0])]
            ),
        ),
    ],
)
def test_precomputed_map_equals_on_the_fly(loss, key, make):
    x, t = _case()
    fly = _quiet(loss(), x, t)
    pre = loss()(x, t, **{key: make(t)})
    assert float(fly) != 0
    torch.testing.assert_close(pre, fly)


def test_on_the_fly_warns_once_about_the_cost():
    import monai_losses_ext.losses.geometry as G

    G._warned.discard("BoundaryLoss")
    x, t = _case()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        E.BoundaryLoss(softmax=True, to_onehot_y=True)(x, t)
        E.BoundaryLoss(softmax=True, to_onehot_y=True)(x, t)
    msgs = [str(w.message) for w in rec if "distance_map" in str(w.message)]
    assert len(msgs) == 1 and "SignedDistanceMapd" in msgs[0]


def _probs_from_mask(mask: torch.Tensor, n: int = 3) -> torch.Tensor:
    return one_hot(mask, n).to(torch.float64)


def test_boundary_minimal_at_ground_truth_and_gradient_sign():
    _, t = _case()
    dmap = _maps(t)
    loss = E.BoundaryLoss(include_background=False, to_onehot_y=True)
    at_gt = loss(_probs_from_mask(t), t, distance_map=dmap)
    # any change of the prediction away from the truth raises the loss: dilate, erode, shift class 1
    variants = []
    for shift in ((1, 0, 0), (0, -1, 0), (0, 0, 1)):
        variants.append(torch.roll(t, shifts=shift, dims=(2, 3, 4)))
    dil = t.clone()
    dil[:, :, 1:8, 1:7, 1:7][dil[:, :, 1:8, 1:7, 1:7] == 0] = 1
    ero = t.clone()
    ero[:, :, 2:7, 2:6, 2:6] = 0
    ero[:, :, 3:6, 3:5, 3:5] = 1
    variants.append(dil)
    for v in variants:
        assert float(loss(_probs_from_mask(v), t, distance_map=dmap)) > float(at_gt) + 1e-6
    # boundary voxels have phi = 0: dropping the outermost layer ties with the truth (never beats it)
    assert float(loss(_probs_from_mask(ero), t, distance_map=dmap)) >= float(at_gt) - 1e-12
    # gradient w.r.t. the probabilities: positive outside the object (less is better), negative inside
    p = torch.full((2, 3, 14, 13, 10), 1 / 3, dtype=torch.float64, requires_grad=True)
    loss(p, t, distance_map=dmap).backward()
    g1 = p.grad[:, 1]
    inside = (t[:, 0] == 1) & (dmap[:, 1] < 0)
    outside = dmap[:, 1] > 0
    assert (g1[inside] < 0).all() and (g1[outside] > 0).all()


def test_boundary_descent_improves_overlap():
    _, t = _case()
    dmap = _maps(t).float()
    torch.manual_seed(0)
    logits = torch.zeros(2, 3, 14, 13, 10, requires_grad=True)
    loss = E.DiceBoundaryLoss(softmax=True, to_onehot_y=True, alpha=0.5)
    opt = torch.optim.SGD([logits], lr=50.0)
    first = None
    for _ in range(30):
        opt.zero_grad()
        value = loss(logits, t, distance_map=dmap)
        first = value.item() if first is None else first
        value.backward()
        opt.step()
    pred = logits.argmax(1, keepdim=True)
    dice = E.DiceLoss(include_background=False)(one_hot(pred, 3), one_hot(t, 3))
    assert value.item() < first and float(dice) < 0.05


def test_hausdorff_dt_zero_at_perfect_prediction_and_two_sided_larger():
    _, t = _case()
    p = _probs_from_mask(t)
    assert float(E.HausdorffDTLoss(to_onehot_y=True)(p, t, distance_map=_maps(t, "unsigned"))) == 0
    shifted = _probs_from_mask(torch.roll(t, 2, dims=2))
    one = E.HausdorffDTLoss(to_onehot_y=True)(shifted, t, distance_map=_maps(t, "unsigned"))
    two = E.HausdorffDTLoss(to_onehot_y=True, include_pred_dt=True)(shifted, t, distance_map=_maps(t, "unsigned"))
    assert float(two) > float(one) > 0


def test_weight_map_ce_formula():
    x, t = _case()
    w = torch.rand(2, 1, 14, 13, 10, dtype=torch.float64) * 5
    ours = E.WeightMapCELoss()(x, t, weight_map=w)
    xs = x.numpy()
    logp = xs - np.log(np.exp(xs).sum(1, keepdims=True))
    ce = -np.take_along_axis(logp, t.numpy(), 1)
    assert np.isclose(float(ours), float((w.numpy() * ce).mean()), rtol=1e-10)


def test_blob_weighs_small_lesion_like_large():
    t = torch.zeros(1, 1, 20, 20, 20, dtype=torch.long)
    t[:, :, 2:12, 2:12, 2:12] = 1  # 1000 voxels
    t[:, :, 15:17, 15:17, 15:18] = 1  # 12 voxels
    inst = torch.as_tensor(LesionInstances()(t[0].to(torch.uint8)))[None]
    big = (inst == 1).long()
    small = (inst == 2).long()
    miss_small = _probs_from_mask(big, 2)
    miss_big = _probs_from_mask(small, 2)
    blob = E.BlobLoss(alpha=0.0, beta=1.0, to_onehot_y=True)  # blob term alone
    a = blob(miss_small, t, instances=inst)
    b = blob(miss_big, t, instances=inst)
    assert abs(float(a) - float(b)) < 1e-4 and abs(float(a) - 0.5) < 1e-4
    dice = E.DiceLoss(include_background=False, to_onehot_y=True)
    # plain Dice barely notices the missed small lesion, and is crushed by the missed big one
    assert float(dice(miss_small, t)) < 0.01 and float(dice(miss_big, t)) > 0.95
    assert float(blob(_probs_from_mask(t, 2), t, instances=inst)) < 1e-5


@pytest.mark.parametrize("lesion_mean", ["batch", "image"])
def test_blob_lesion_mean_conventions(lesion_mean):
    """Per-lesion Dice re-derived in numpy (TP over the lesion, FP over instance 0, FN = size - TP). "batch": the
    mean over the batch's 4 lesions; "image" (the authors'): per image, then over the images that hold a lesion
    (image 2 has none and is left out)."""
    t = torch.zeros(3, 1, 12, 12, 12, dtype=torch.long)
    t[0, :, 1:4, 1:4, 1:4] = 1
    for k, sl in enumerate([slice(1, 3), slice(5, 8), slice(9, 11)]):
        t[1, :, sl, 2 + k : 5 + k, 3:6] = 1
    inst = torch.stack([torch.as_tensor(LesionInstances()(t[b].to(torch.uint8))) for b in range(3)])
    x = torch.randn(3, 2, 12, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = E.BlobLoss(alpha=0.0, softmax=True, to_onehot_y=True, lesion_mean=lesion_mean)(x, t, instances=inst)
    pf = 1 - torch.softmax(x, 1)[:, 0].numpy()
    ids = inst[:, 0].numpy()
    per_image = []
    for b in range(3):
        fp = pf[b][ids[b] == 0].sum()
        losses = []
        for n in range(1, ids[b].max() + 1):
            tp, g = pf[b][ids[b] == n].sum(), (ids[b] == n).sum()
            losses.append(1 - (2 * tp + 1e-5) / (2 * tp + fp + (g - tp) + 1e-5))
        per_image.append(losses)
    assert [len(v) for v in per_image] == [1, 3, 0]
    if lesion_mean == "batch":
        expected = np.mean(per_image[0] + per_image[1])
    else:
        expected = np.mean([np.mean(per_image[0]), np.mean(per_image[1])])
    assert abs(float(out) - expected) < 1e-10
    other = E.BlobLoss(
        alpha=0.0, softmax=True, to_onehot_y=True, lesion_mean={"batch": "image", "image": "batch"}[lesion_mean]
    )
    assert abs(float(other(x, t, instances=inst)) - float(out)) > 1e-4  # the conventions differ on this batch


def test_blob_empty_patch_gives_global_term_only():
    t = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    x = torch.randn(1, 2, 8, 8, 8)
    inst = torch.zeros_like(t)
    full = E.BlobLoss(softmax=True, to_onehot_y=True)(x, t, instances=inst)
    glob = E.DiceLoss(include_background=False, softmax=True, to_onehot_y=True)(x, t)
    torch.testing.assert_close(full, 2 * glob)


def test_alpha_scheduler_with_ignite_engine():
    from ignite.engine import Engine

    loss = E.DiceBoundaryLoss(softmax=True, to_onehot_y=True, alpha=1.0, step=0.25, min_alpha=0.3)
    engine = Engine(lambda e, b: None)
    E.BoundaryAlphaScheduler(loss).attach(engine)
    engine.run([0], max_epochs=4)
    assert abs(loss.alpha - 0.3) < 1e-12
    with pytest.raises(TypeError, match="DiceBoundaryLoss"):
        E.BoundaryAlphaScheduler(E.DiceLoss())
    E.BoundaryAlphaScheduler(E.DiceLoss(), required=False).attach(engine)  # a config can always list it


def test_alpha_scheduler_state_resumes_the_schedule_of_compound_terms():
    from ignite.engine import Engine

    def make():
        inner = E.DiceBoundaryLoss(softmax=True, to_onehot_y=True, alpha=1.0, step=0.1, min_alpha=0.05)
        return inner, E.BoundaryAlphaScheduler(E.CompoundLoss({"db": inner, "dice": E.DiceLoss(softmax=True)}))

    inner, sched = make()
    engine = Engine(lambda e, b: None)
    sched.attach(engine)
    engine.run([0], max_epochs=3)
    state = sched.state_dict()
    assert state["alpha"] == [pytest.approx(0.7)]
    inner2, sched2 = make()
    sched2.load_state_dict(state)
    assert inner2.alpha == pytest.approx(0.7)
    with pytest.raises(ValueError, match="another loss"):
        sched2.load_state_dict({"alpha": []})


def test_map_shape_errors_name_both_shapes():
    x, t = _case()
    with pytest.raises(ValueError, match=r"distance_map has shape \(2, 2, 14, 13, 10\).*\(2, 3, 14, 13, 10\)"):
        E.BoundaryLoss(softmax=True, to_onehot_y=True)(x, t, distance_map=torch.zeros(2, 2, 14, 13, 10))
    with pytest.raises(ValueError, match="crop"):
        E.WeightMapCELoss()(x, t, weight_map=torch.ones(2, 1, 7, 13, 10))
    with pytest.raises(ValueError, match="integer lesion ids"):
        E.BlobLoss(softmax=True, to_onehot_y=True)(x, t, instances=torch.full((2, 1, 14, 13, 10), 0.5))


def test_hausdorff_rejects_signed_maps():
    x, t = _case()
    with pytest.raises(ValueError, match="unsigned"):
        E.HausdorffDTLoss(softmax=True, to_onehot_y=True)(x, t, distance_map=_maps(t, "signed"))
