"""Lesion-wise detection metrics and HD95 on cases whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_losses_ext import metrics as M


def ball(shape, centre, radius):
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return ((g - np.asarray(centre)) ** 2).sum(-1) <= radius * radius


SHAPE = (32, 32, 32)


def two_lesions():
    return ball(SHAPE, (8, 8, 8), 3) | ball(SHAPE, (22, 22, 22), 3)


def test_perfect_prediction():
    t = two_lesions()
    k = M.lesion_counts(t, t)
    assert k == {"tp": 2, "fp": 0, "fn": 0, "n_truth": 2, "n_pred": 2}
    s = M.lesion_wise_scores(k)
    assert s["f1"] == 1.0 and s["sensitivity"] == 1.0 and s["precision"] == 1.0
    assert M.dice_score(t, t) == 1.0
    assert M.hd95(t, t) == 0.0


def test_missed_lesion():
    t = two_lesions()
    p = ball(SHAPE, (8, 8, 8), 3)
    k = M.lesion_counts(p, t)
    assert (k["tp"], k["fp"], k["fn"]) == (1, 0, 1)
    s = M.lesion_wise_scores(k)
    assert s["sensitivity"] == 0.5
    assert s["precision"] == 1.0
    assert s["f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))


def test_spurious_lesion():
    t = ball(SHAPE, (8, 8, 8), 3)
    p = t | ball(SHAPE, (24, 8, 24), 2)
    k = M.lesion_counts(p, t)
    assert (k["tp"], k["fp"], k["fn"], k["n_pred"]) == (1, 1, 0, 2)
    s = M.lesion_wise_scores(k)
    assert s["sensitivity"] == 1.0 and s["precision"] == 0.5
    assert s["f1"] == pytest.approx(2 / 3)


def test_two_lesions_merged_by_the_prediction():
    # two truth lesions 2 voxels apart; the prediction is one blob covering both
    t = np.zeros(SHAPE, bool)
    t[10:14, 10:14, 10:14] = True
    t[16:20, 10:14, 10:14] = True
    p = np.zeros(SHAPE, bool)
    p[9:21, 9:15, 9:15] = True
    k = M.lesion_counts(p, t)
    assert k == {"tp": 2, "fp": 0, "fn": 0, "n_truth": 2, "n_pred": 1}
    assert M.lesion_wise_scores(k)["f1"] == 1.0
    assert M.dice_score(p, t) < 1.0  # voxel-wise it is not perfect


def test_partial_overlap_counts_as_detection_and_connectivity():
    t = ball(SHAPE, (16, 16, 16), 4)
    p = np.zeros(SHAPE, bool)
    p[16, 16, 16] = True  # one voxel inside the lesion
    assert M.lesion_counts(p, t)["tp"] == 1
    # two voxels touching by a corner: one lesion with 26-connectivity, two with 6-connectivity
    c = np.zeros(SHAPE, bool)
    c[5, 5, 5] = c[6, 6, 6] = True
    assert M.lesion_counts(c, c)["n_truth"] == 1
    assert M.lesion_counts(c, c, connectivity=1)["n_truth"] == 2


def test_empty_cases():
    e = np.zeros(SHAPE, bool)
    s = M.lesion_wise_scores(M.lesion_counts(e, e))
    assert s["f1"] == 1.0 and math.isnan(s["sensitivity"])
    p = ball(SHAPE, (8, 8, 8), 2)
    s = M.lesion_wise_scores(M.lesion_counts(p, e))
    assert s["f1"] == 0.0
    assert M.dice_score(e, e) == 1.0
    assert M.hd95(e, e) == 0.0 and math.isnan(M.hd95(p, e))


def test_non_binary_input_is_an_error():
    with pytest.raises(ValueError, match="binary"):
        M.lesion_counts(np.full(SHAPE, 2), np.zeros(SHAPE))
    with pytest.raises(ValueError, match="shape"):
        M.dice_score(np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.mark.parametrize("shift", [2, 3, 4])
def test_hd95_of_a_shifted_sphere(shift):
    radius = 10
    a = ball((48, 48, 48), (24, 24, 24), radius)
    b = ball((48, 48, 48), (24 + shift, 24, 24), radius)
    # the Hausdorff distance of two equal spheres shifted by d is d
    assert M.hd95(a, b, percentile=100) == pytest.approx(shift)
    # 95th percentile: a surface point at polar angle theta lies |sqrt(R^2 + d^2 - 2 R d cos theta) - R| from the
    # other sphere; cos theta is uniform over the sphere's area
    u = np.linspace(-1, 1, 100001)
    expected = np.percentile(np.abs(np.sqrt(radius**2 + shift**2 - 2 * radius * shift * u) - radius), 95)
    got = M.hd95(a, b)
    assert abs(got - expected) <= 0.5
    # physical units: 2 mm voxels double it
    assert M.hd95(a, b, spacing=2.0) == pytest.approx(2 * got)
    assert M.hd95(a, b, spacing=(2.0, 1.0, 1.0), percentile=100) == pytest.approx(2 * shift)


def test_score_case_counts_and_summary():
    t = two_lesions()
    p = ball(SHAPE, (8, 8, 8), 3)
    row = M.score_case(p.astype(np.int64), t.astype(np.int64), {"lesion": [1]}, spacing=1.0)
    assert row["sensitivity_lesion"] == 0.5 and row["n_truth_lesion"] == 2 and row["n_pred_lesion"] == 1
    assert row["precision_lesion"] == 1.0 and row["fp_lesions_lesion"] == 0
    assert row["dice_lesion"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
    pooled = M.pooled_size_sensitivity([row, row], ["lesion"], (10, 50))
    counts = M.size_group_counts(M.lesion_details(p, t), (10, 50))
    for g, c in counts.items():
        want = c["detected"] / c["n_truth"] if c["n_truth"] else float("nan")
        assert pooled[f"sensitivity_lesion_{g}"] == pytest.approx(want, nan_ok=True)
    s = M.summarize([{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}])
    assert s["a"]["mean"] == 2.0 and s["a"]["std"] == 1.0 and s["a"]["n"] == 2
    assert s["b"]["mean"] == 2.0 and s["b"]["n_nan"] == 1


def test_lesion_wise_metric_accumulates_batches_like_the_functions():
    t = two_lesions()
    cases = [(t, t), (ball(SHAPE, (8, 8, 8), 3), t), (t | ball(SHAPE, (24, 8, 24), 2), t)]
    f1 = [M.lesion_wise_scores(M.lesion_counts(p, g))["f1"] for p, g in cases]

    def batch(items):
        return torch.from_numpy(np.stack([np.stack([~m, m]) for m in items]).astype(np.float32))

    metric = M.LesionWiseF1Metric(include_background=False)
    metric(batch([c[0] for c in cases[:2]]), batch([c[1] for c in cases[:2]]))
    metric(batch([cases[2][0]]), batch([cases[2][1]]))
    assert metric.aggregate().item() == pytest.approx(np.mean(f1))
    assert metric.counts().shape == (3, 1, 5)
    pooled = M.LesionWiseF1Metric(reduction="pooled")
    pooled(batch([c[0] for c in cases]), batch([c[1] for c in cases]))
    # pooled: tp 5, fp 1, fn 1
    assert pooled.aggregate().item() == pytest.approx(10 / 12)
    sens = M.LesionWiseF1Metric(score="sensitivity")
    sens(batch([c[0] for c in cases]), batch([c[1] for c in cases]))
    assert sens.aggregate().item() == pytest.approx(np.mean([1.0, 0.5, 1.0]))


def test_lesion_f1_as_ignite_metric():
    pytest.importorskip("ignite")
    from ignite.engine import Engine

    t = two_lesions()
    p = ball(SHAPE, (8, 8, 8), 3)
    y_pred = torch.from_numpy(np.stack([~p, p])[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~t, t])[None].astype(np.float32))
    engine = Engine(lambda e, b: (y_pred, y))
    M.LesionF1(include_background=False).attach(engine, "lesion_f1")
    state = engine.run([0], max_epochs=1)
    assert state.metrics["lesion_f1"] == pytest.approx(2 / 3)
