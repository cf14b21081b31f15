"""The loss benchmark (python -m monai_losses_ext.benchmark): the study metrics on cases whose answer is known
by construction, the bootstrap and paired comparison on known answers, resume, and a tiny end-to-end study
(2 losses x 1 seed, 2 epochs on 5 small phantoms) that writes the table, the CSVs and the figures."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from monai_losses_ext import metrics as M
from monai_losses_ext.benchmark import (
    PRESETS,
    Study,
    bootstrap_ci,
    bootstrap_ratio_ci,
    decide_default,
    paired_comparison,
    paired_ratio_difference,
    plateau_check,
    tumour_validation_summary,
    validation_curves,
    validation_summary,
)
from monai_losses_ext.benchmark import quality as Q
from monai_losses_ext.benchmark import regime as R
from monai_losses_ext.benchmark import speed as S
from monai_losses_ext.benchmark.__main__ import main as cli
from monai_losses_ext.metrics import score_case
from monai_losses_ext.registry import list_losses

LESION = {"lesion": [1]}


def ball(shape, centre, radius):
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return ((g - np.asarray(centre, dtype=float)) ** 2).sum(-1) <= radius * radius


def blob(shape, start, n_voxels):
    """A lesion of exactly ``n_voxels`` voxels: a run along the last axis from ``start``."""
    m = np.zeros(shape, bool)
    x, y, z = start
    m[x, y, z : z + n_voxels] = True
    return m


# -- metrics on analytic cases -----------------------------------------------------------------------------
def test_perfect_prediction_scores_perfectly():
    shape = (40, 40, 40)
    t = (ball(shape, (10, 10, 10), 4) | ball(shape, (28, 28, 28), 1)).astype(np.int64)
    row = score_case(t, t, LESION, spacing=[1.0, 1.0, 1.0])
    assert row["dice_lesion"] == 1.0 and row["f1_lesion"] == 1.0 and row["sensitivity_lesion"] == 1.0
    assert row["hd95_lesion"] == 0.0 and row["fp_lesions_lesion"] == 0 and row["n_truth_lesion"] == 2
    for g in M.size_group_labels((10, 50)):
        assert row[f"detected_lesion_{g}"] == row[f"truth_lesion_{g}"]
        assert row[f"fp_lesion_{g}"] == 0
    assert row["truth_lesion_<10"] == 1 and row["truth_lesion_>50"] == 1  # 7 and 257 voxels


@pytest.mark.parametrize("shift", [2, 5, 9])
def test_shifted_box_has_its_exact_dice(shift):
    shape = (40, 40, 40)
    t = np.zeros(shape, np.int64)
    t[10:30, 10:30, 10:30] = 1
    p = np.roll(t, shift, axis=0)
    row = score_case(p, t, LESION, spacing=[1.0, 1.0, 1.0])
    assert row["dice_lesion"] == pytest.approx((20 - shift) / 20, abs=1e-12)
    assert row["f1_lesion"] == 1.0 and row["fp_lesions_lesion"] == 0


@pytest.mark.parametrize("d", [4.0, 10.0, 16.0])
def test_shifted_sphere_matches_the_lens_volume(d):
    """Two spheres of radius r whose centres are d apart overlap in a lens of volume pi (4r + d)(2r - d)^2 / 12,
    so their Dice is that volume over the sphere volume; voxelised at r = 15 it agrees to 2%."""
    r, shape = 15.0, (64, 48, 48)
    t = ball(shape, (24, 24, 24), r).astype(np.int64)
    p = ball(shape, (24 + d, 24, 24), r).astype(np.int64)
    expected = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12 / (4 / 3 * math.pi * r**3)
    assert score_case(p, t, LESION, spacing=1.0)["dice_lesion"] == pytest.approx(expected, rel=0.02)


def test_missed_and_spurious_lesions_counted_by_size_group():
    shape = (20, 20, 120)
    t = np.zeros(shape, bool)
    sizes = {"a": 5, "b": 3, "c": 10, "d": 50, "e": 51, "f": 100}  # groups <10, <10, 10-50, 10-50, >50, >50
    starts = {k: (2 + 3 * i, 2, 2) for i, k in enumerate(sizes)}
    for k, n in sizes.items():
        t |= blob(shape, starts[k], n)
    p = np.zeros(shape, bool)
    for k in ("c", "e", "f"):  # detected by one predicted voxel each; a, b, d missed
        p[starts[k]] = True
    p |= blob(shape, (18, 10, 2), 4) | blob(shape, (18, 14, 2), 60) | blob(shape, (18, 17, 2), 30)  # spurious
    row = score_case(p.astype(np.int64), t.astype(np.int64), LESION, spacing=1.0)
    got = {
        g: (row[f"truth_lesion_{g}"], row[f"detected_lesion_{g}"], row[f"fp_lesion_{g}"])
        for g in ("<10", "10-50", ">50")
    }
    assert got == {"<10": (2, 0, 1), "10-50": (2, 1, 1), ">50": (2, 2, 1)}
    assert row["fp_lesions_lesion"] == 3 and row["n_truth_lesion"] == 6
    assert row["sensitivity_lesion"] == pytest.approx(3 / 6)
    assert row["f1_lesion"] == pytest.approx(2 * 3 / (2 * 3 + 3 + 3))


def test_size_groups_edges_and_names():
    assert M.size_group_labels((10, 50)) == ["<10", "10-50", ">50"]
    assert M.size_group_labels((5, 20, 100)) == ["<5", "5-20", "21-100", ">100"]
    np.testing.assert_array_equal(M.size_group_index([1, 9, 10, 50, 51, 1000], (10, 50)), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(M.size_group_index([20, 21, 100, 101], (5, 20, 100)), [1, 2, 2, 3])
    for bad in [(), (50, 10), (0, 10), (10, 10)]:
        with pytest.raises(ValueError, match="increasing positive"):
            M.size_group_labels(bad)


def test_tumour_regions_are_scored_from_label_maps():
    shape = (30, 30, 30)
    t = np.zeros(shape, np.int64)
    t[ball(shape, (15, 15, 15), 9)] = 2  # oedema
    t[ball(shape, (15, 15, 15), 5)] = 1  # necrotic core
    t[ball(shape, (15, 15, 15), 5) & ~ball(shape, (15, 15, 15), 3)] = 3  # enhancing rim
    p = t.copy()
    p[p == 1] = 3  # core called enhancing: TC and WT unchanged, ET wrong inside
    regions = {"TC": [1, 3], "WT": [1, 2, 3], "ET": [3]}
    row = score_case(p, t, regions, spacing=1.0)
    assert row["dice_TC"] == 1.0 and row["dice_WT"] == 1.0
    n3, n1 = (t == 3).sum(), (t == 1).sum()
    assert row["dice_ET"] == pytest.approx(2 * n3 / (2 * n3 + n1))


def test_score_case_rejects_different_grids():
    with pytest.raises(ValueError, match="same grid"):
        score_case(np.zeros((4, 4, 4), np.int64), np.zeros((4, 4, 5), np.int64), LESION, 1.0)


# -- bootstrap and paired comparison -----------------------------------------------------------------------
def test_bootstrap_of_two_values_has_the_known_distribution():
    # resampled means of {0, 1}: 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], level=0.4) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([0.7] * 9) == (pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_interval_matches_normal_theory_and_covers():
    rng = np.random.default_rng(3)
    x = rng.normal(0.6, 0.1, 900)
    mean, lo, hi = bootstrap_ci(x)
    half = 1.96 * x.std() / math.sqrt(x.size)
    assert mean == pytest.approx(x.mean())
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    covered = sum(lo <= 0.0 <= hi for lo, hi in (bootstrap_ci(rng.normal(0, 1, 40), seed=i)[1:] for i in range(150)))
    assert 0.85 * 150 <= covered <= 150  # nominal 95%, the percentile bootstrap runs a little narrow at n = 40


def test_bootstrap_skips_undefined_values_and_resamples_seeds():
    assert bootstrap_ci([1.0, np.nan, 3.0])[0] == pytest.approx(2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan, np.nan]))
    # two seeds that disagree: the interval reflects the seed spread even with identical cases
    seeds = np.array([[0.2] * 30, [0.8] * 30])
    mean, lo, hi = bootstrap_ci(seeds)
    assert mean == pytest.approx(0.5) and lo == pytest.approx(0.2) and hi == pytest.approx(0.8)


def test_ratio_bootstrap_pools_counts():
    det, tru = np.array([[1, 2, 0]]), np.array([[2, 2, 0]])  # a case without lesions contributes nothing
    r, lo, hi = bootstrap_ratio_ci(det, tru)
    assert r == pytest.approx(0.75) and 0.5 <= lo <= r <= hi <= 1.0
    assert all(math.isnan(v) for v in bootstrap_ratio_ci([[0, 0]], [[0, 0]]))
    with pytest.raises(ValueError, match="same shape"):
        bootstrap_ratio_ci([[1, 2]], [[1, 2, 3]])


def test_paired_comparison_on_known_differences():
    rng = np.random.default_rng(0)
    base = np.tile(rng.uniform(0.3, 0.8, 25), (2, 1))  # two seeds that agree: no seed spread
    pc = paired_comparison(base + 0.05, base)
    assert pc.diff == pytest.approx(0.05) and pc.low == pytest.approx(0.05) and pc.high == pytest.approx(0.05)
    assert (pc.higher, pc.equal, pc.lower, pc.n_cases) == (25, 0, 0, 25) and pc.p_value < 1e-4
    same = paired_comparison(base, base)
    assert same.diff == 0 and same.equal == 25 and math.isnan(same.p_value)
    noisy = paired_comparison(base + rng.normal(0, 0.05, base.shape), base)
    assert noisy.low < 0 < noisy.high or noisy.p_value < 0.05  # the interval and the test tell the same story
    # seeds that disagree widen the interval (each side's seeds are resampled), the difference stays
    spread = paired_comparison(base + 0.05 + np.array([[-0.1], [0.1]]), base)
    assert spread.diff == pytest.approx(0.05) and spread.low < 0.0 < 0.1 < spread.high
    with pytest.raises(ValueError, match="same cases"):
        paired_comparison(base[:, :5], base)


def test_paired_ratio_difference_pools_counts_on_the_same_cases():
    """The difference of pooled ratios (counts summed before the ratio), its interval from resampling the same
    cases for both arms; identical arms give exactly 0; a shift on one many-lesion case moves the pooled ratio by
    its share of the lesions."""
    rng = np.random.default_rng(1)
    tru = np.tile(rng.integers(0, 6, 30), (2, 1))  # two seeds that agree: no seed spread
    det = np.minimum(tru, np.tile(rng.integers(0, 6, 30), (2, 1)))
    same = paired_ratio_difference(det, tru, det, tru)
    assert same.diff == 0 and same.low == 0 and same.high == 0 and same.n_den == int(tru[0].sum())
    spread = det.copy()
    spread[1] = tru[1]  # seeds that disagree: each side's seeds are resampled, the interval opens
    assert (lambda r: r.low < r.diff < r.high)(paired_ratio_difference(spread, tru, spread, tru))
    better = det.copy()
    better[:, 0] = tru[:, 0]  # one case with every lesion found
    pr = paired_ratio_difference(better, tru, det, tru)
    expected = better.sum() / tru.sum() - det.sum() / tru.sum()
    assert pr.diff == pytest.approx(expected) and 0 <= pr.low <= pr.diff <= pr.high
    worse = paired_ratio_difference(np.zeros_like(det), tru, det, tru)
    assert worse.high < 0
    assert all(
        math.isnan(v) for v in (lambda r: (r.diff, r.low, r.high))(paired_ratio_difference([[0]], [[0]], [[0]], [[0]]))
    )
    with pytest.raises(ValueError, match="same cases"):
        paired_ratio_difference(det[:, :5], tru[:, :5], det, tru)
    with pytest.raises(ValueError, match="shape"):
        paired_ratio_difference(det, tru[:, :5], det, tru)


def test_bad_bootstrap_settings_are_refused():
    with pytest.raises(ValueError, match="confidence level"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([1.0, 2.0], n_boot=10)
    with pytest.raises(ValueError, match="n_cases"):
        bootstrap_ci(np.zeros((2, 2, 2)))


# -- speed part ------------------------------------------------------------------------------------------
def test_speed_cases_cover_every_registered_loss():
    assert {c.registry for c in S.cases(peers=False)} == set(list_losses())


def test_speed_runs_and_writes_its_table(tmp_path):
    cli(["speed", "--preset", "tiny", "--out", str(tmp_path), "--only", "dice", "boundary", "--no-peers"])
    table = (tmp_path / "speed.md").read_text()
    assert (
        "| DiceLoss | monai DiceLoss |" in table and "| BoundaryLoss (precomputed map) | monai BoundaryLoss |" in table
    )
    rows = list(csv.DictReader(open(tmp_path / "speed.csv")))
    assert {r["registry"] for r in rows} == {"dice", "boundary"}
    assert all(float(r["time_ratio"]) > 0 and float(r["ours_mem_x_logits"]) > 0 for r in rows if r["time_ratio"])


def test_speed_times_installed_peers_against_the_matching_case(tmp_path):
    """kornia (a test dependency) is timed as a peer; its focal loss is a softmax one, so it sits in the softmax
    row; values of peers are not compared (their reductions differ), only that they ran on the same tensors."""
    cli(["speed", "--preset", "tiny", "--out", str(tmp_path), "--only", "dice", "tversky", "focal"])
    rows = list(csv.DictReader(open(tmp_path / "speed.csv")))
    refs = {(r["loss"], r["reference"]) for r in rows}
    assert {
        ("DiceLoss", "kornia DiceLoss"),
        ("TverskyLoss", "kornia TverskyLoss"),
        ("FocalLoss (softmax)", "kornia FocalLoss"),
    } <= refs
    assert ("FocalLoss (sigmoid)", "kornia FocalLoss") not in refs
    assert all(float(r["time_ratio"]) > 0 for r in rows if r["reference"].startswith("kornia"))


# -- study: errors, end to end, resume --------------------------------------------------------------------
def test_study_refuses_bad_settings(tmp_path):
    tiny = PRESETS["tiny"]
    with pytest.raises(ValueError, match="must not repeat"):
        Study(replace(tiny, losses=["dice", "dice"]), tmp_path)
    with pytest.raises(ValueError, match="increasing positive"):
        Study(replace(tiny, size_edges=(50, 10)), tmp_path)
    with pytest.raises(FileNotFoundError, match="--bundles"):
        Q.bundle_dir("lesion", tmp_path)
    assert Study(replace(tiny, losses=["dice_ce"]), tmp_path).preset.losses == ["monai.losses.DiceLoss", "dice_ce"]


@pytest.mark.parametrize("text, message", [("{'in_channels': 1", "not a Python literal"), ("[1]", "expected a dict")])
def test_bundle_args_must_be_a_dict(text, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["quality", "--bundle-args", text])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert cli(["quality", "--preset", "tiny", "--out", str(out), "--no-progress", "--n-boot", "200"]) == 0
    return out


@pytest.mark.slow
def test_tiny_study_writes_table_csvs_and_plots(tiny_study):
    import matplotlib.image as mpimg

    report = (tiny_study / "report.md").read_text()
    assert "| `monai.losses.DiceLoss` (baseline) |" in report and "| `dice_ce` |" in report
    assert "sensitivity <10 vox" in report and "Paired against `monai.losses.DiceLoss`" in report
    cases = list(csv.DictReader(open(tiny_study / "cases.csv")))
    assert [(r["loss"], r["seed"]) for r in cases] == [("monai.losses.DiceLoss", "0")] * 2 + [("dice_ce", "0")] * 2
    for r in cases:
        assert 0.0 <= float(r["dice_lesion"]) <= 1.0 and 0.0 <= float(r["f1_lesion"]) <= 1.0
        assert int(r["n_truth_lesion"]) == sum(int(r[f"truth_lesion_{g}"]) for g in ("<10", "10-50", ">50")) > 0
    summary = list(csv.DictReader(open(tiny_study / "summary.csv")))
    metrics = {(r["loss"], r["metric"]) for r in summary}
    for loss in ("monai.losses.DiceLoss", "dice_ce"):
        for m in ("dice", "f1", "sensitivity", "fp_lesions", "hd95", "sensitivity_<10", "sensitivity_>50"):
            assert (loss, m) in metrics
    paired = [r for r in summary if r["loss"] == "dice_ce" and r["metric"] == "dice"][0]
    assert paired["diff"] != "" and int(paired["higher"]) + int(paired["equal"]) + int(paired["lower"]) == 2
    for name in ("sensitivity_by_size.png", "dice_by_loss.png"):
        img = mpimg.imread(tiny_study / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.std() > 0.01  # a drawn figure, not a blank canvas
    # the validation curves of both runs (tiny preset: 2 epochs, validation every epoch) and the plateau rule
    curves = list(csv.DictReader(open(tiny_study / "curves.csv")))
    assert [(r["loss"], r["epoch"]) for r in curves] == [
        (loss, e) for loss in ("monai.losses.DiceLoss", "dice_ce") for e in "12"
    ]
    assert all(0.0 <= float(r["val_mean_dice"]) <= 1.0 for r in curves)
    plateau = list(csv.DictReader(open(tiny_study / "plateau.csv")))
    assert {(r["loss"], r["metric"]) for r in plateau} == {
        (loss, m) for loss in ("monai.losses.DiceLoss", "dice_ce") for m in ("val_mean_dice", "val_lesion_f1")
    }
    assert all(r["plateaued"] == "" for r in plateau)  # 2 validations: too few to decide, and said so
    assert "## Validation curves: the plateau rule" in report and "too few validations" in report


def test_plateau_rule_on_known_curves():
    epochs = list(range(10, 170, 10))  # E = 160, validation every 10 epochs; 0.75 E = 120
    flat = [0.5 + 0.3 * (1 - 0.5 ** (e / 10)) for e in epochs]  # converged long before epoch 120
    res = plateau_check(epochs, flat, 160)
    assert res["plateaued"] is True and 0 < res["gain"] < 0.01
    assert res["m_mid"] == pytest.approx(sum(flat[9:12]) / 3) and res["m_end"] == pytest.approx(sum(flat[-3:]) / 3)
    rising = [e / 200 for e in epochs]  # +0.05 per 10 epochs to the end
    assert plateau_check(epochs, rising, 160) == pytest.approx(
        {"m_end": 0.75, "m_mid": 0.55, "gain": 0.2, "plateaued": False}
    )
    assert plateau_check(epochs[:8], flat[:8], 160)["plateaued"] is None  # stopped at epoch 80: cannot tell
    with_nan = [math.nan if e == 150 else v for e, v in zip(epochs, flat)]  # an undefined validation is skipped
    assert plateau_check(epochs, with_nan, 160)["m_end"] == pytest.approx((flat[-4] + flat[-3] + flat[-1]) / 3)
    for bad in ({"window": 0}, {"fraction": 1.0}, {"fraction": 0.0}):
        with pytest.raises(ValueError):
            plateau_check(epochs, flat, 160, **bad)
    with pytest.raises(ValueError, match="16 epochs but 15 values"):
        plateau_check(epochs, flat[:-1], 160)


def test_curves_keep_the_last_record_of_a_validation_repeated_after_a_resume(tmp_path):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    recs = [
        {"kind": "train", "epoch": 1, "loss": 1.0},
        {"kind": "val", "epoch": 10, "val_mean_dice": 0.2},
        {"kind": "val", "epoch": 10, "val_mean_dice": 0.3},
        {"kind": "val", "epoch": 20, "val_mean_dice": 0.4},
    ]
    (logs / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"kind": "val", "epo')
    rows = validation_curves({("dice", 0): tmp_path / "run"})
    assert rows == [
        {"loss": "dice", "seed": 0, "epoch": 10, "val_mean_dice": 0.3},
        {"loss": "dice", "seed": 0, "epoch": 20, "val_mean_dice": 0.4},
    ]


@pytest.fixture
def bundle_calls(monkeypatch):
    """The config files of every bundle run the study starts (spied on, then run as usual)."""
    calls = []
    real = Q.run_bundle

    def spy(bundle, configs, overrides, *args, **kwargs):
        calls.append(configs[0])
        return real(bundle, configs, overrides, *args, **kwargs)

    monkeypatch.setattr(Q, "run_bundle", spy)
    return calls


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_redoes_changed_ones(tiny_study, bundle_calls, monkeypatch):
    calls = bundle_calls
    tiny = PRESETS["tiny"]
    study = Study(tiny, tiny_study, log=lambda msg: None)
    before = {k: v["cases"] for k, v in study.run(progress=False).items()}
    assert calls == []  # every run read back, nothing trained or predicted

    # a run whose result was lost (e.g. killed while scoring) is predicted and scored again, not retrained
    (study.run_dir("dice_ce", 0) / "result.json").unlink()
    again = study.run(progress=False)
    assert calls == ["inference.json"]
    assert again[("dice_ce", 0)]["cases"] == before[("dice_ce", 0)]

    # a run that fails does not stop the others; the study then says which failed
    (study.run_dir("dice_ce", 0) / "result.json").unlink()
    monkeypatch.setattr(Q, "run_bundle", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bundle run failed")))
    with pytest.raises(RuntimeError, match=r"1 of 2 runs failed(.|\n)*dice_ce seed 0: bundle run failed"):
        study.run(progress=False)

    # a changed setting (3 epochs instead of 2) starts the runs over
    longer = Study(replace(tiny, epochs=3, losses=["monai.losses.DiceLoss"]), tiny_study, log=lambda msg: None)
    assert longer.load_result("monai.losses.DiceLoss", 0) is None
    monkeypatch.setattr(Q, "run_bundle", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        longer.run(progress=False)
    assert not (longer.run_dir("monai.losses.DiceLoss", 0) / "result.json").exists()  # the old result is gone


@pytest.mark.slow
def test_a_site_added_to_a_finished_study_is_scored_without_training(tiny_study, bundle_calls):
    calls = bundle_calls
    Study(PRESETS["tiny"], tiny_study, log=lambda msg: None).run(progress=False)  # every run finished and stored
    calls.clear()
    study = Study(replace(PRESETS["tiny"], sites=("scanner",), num_site_cases=1), tiny_study, log=lambda msg: None)
    results = study.run(progress=False)
    assert calls == ["inference.json", "inference.json"]  # one inference per stored run, no training
    site_data = study.site_dir("scanner")
    assert json.loads((site_data / "dataset.json").read_text())["site"] == "scanner"
    assert not site_data.with_name(site_data.name + ".partial").exists()
    for res in results.values():
        assert [r["case"] for r in res["sites"]["scanner"]] == ["synth_lesion_000"]
    calls.clear()
    study.run(progress=False)
    assert calls == []  # the site's scores are stored with the runs
    with pytest.raises(ValueError, match="unknown site 'hospital'"):
        Study(replace(PRESETS["tiny"], sites=("hospital",)), tiny_study)


@pytest.mark.slow
def test_a_loss_variant_and_validation_scores_added_to_a_finished_study(tiny_study, bundle_calls):
    """An arm with arguments (``dice_ce@batch``) trains with them in its own folder; scoring the validation
    cases is inference only for the stored runs; the decision rule reads those scores and names a default."""
    Study(PRESETS["tiny"], tiny_study, log=lambda msg: None).run(progress=False)  # every run finished and stored
    bundle_calls.clear()
    arms = ["monai.losses.DiceLoss", "dice_ce", "dice_ce@batch"]
    preset = replace(PRESETS["tiny"], losses=arms, loss_args={"dice_ce@batch": {"batch": True}}, score_validation=True)
    study = Study(preset, tiny_study, log=lambda msg: None)
    results = study.run(progress=False)
    # the new arm: training and test inference; then one validation inference for each of the three runs (4 in all)
    assert sorted(bundle_calls) == ["inference.json"] * 4 + ["train.json"]
    rd = study.run_dir("dice_ce@batch", 0)
    assert rd.name == "seed0" and rd.parent.name == "dice_ce_batch"
    args = json.loads((rd / "models" / "model.json").read_text())["args"]
    assert args["loss_name"] == "dice_ce" and args["loss_args"] == {"batch": True}
    val_name = study.splits()[0][-1]["image"]
    for res in results.values():
        assert [r["case"] for r in res["validation"]] == [Q.case_name(val_name)]
    # the arms without arguments kept their stored runs: same fingerprints as before the variant was added
    assert "loss_args" not in study.settings("dice_ce", 0) and study.settings("dice_ce@batch", 0)["loss_args"]

    from monai_losses_ext.benchmark.report import write_report

    report = write_report(study, results, "test", n_boot=100).read_text()
    decision = json.loads((tiny_study / "decision.json").read_text())
    assert decision["rule"]["incumbent"] == "dice_ce" and decision["default"] in ("dice", "dice_ce")
    assert set(decision["summary"]) == set(arms) and "## Decision on validation scores" in report


def test_variants_need_their_arguments_and_distinct_folders(tmp_path):
    tiny = PRESETS["tiny"]
    with pytest.raises(ValueError, match="not among the losses"):
        Study(replace(tiny, loss_args={"focal": {"gamma": 1.0}}), tmp_path)
    with pytest.raises(ValueError, match="gives it no arguments"):
        Study(replace(tiny, losses=["dice_ce", "dice_ce@batch"]), tmp_path)
    with pytest.raises(ValueError, match="share run folder names"):
        Study(
            replace(tiny, losses=["dice_ce_batch", "dice_ce@batch"], loss_args={"dice_ce@batch": {"batch": True}}),
            tmp_path,
        )
    assert Q.loss_name("dice_ce@batch") == "dice_ce" and Q.loss_name("monai.losses.DiceLoss") == "monai.losses.DiceLoss"


def _validation(small_found, small_truth, fp, f1):
    """Validation rows of one run: one case per entry."""
    return [
        {"truth_lesion_<10": t, "detected_lesion_<10": d, "fp_lesions_lesion": x, "f1_lesion": f, "dice_lesion": 0.5}
        for d, t, x, f in zip(small_found, small_truth, fp, f1)
    ]


def test_validation_summary_pools_small_lesions_and_averages_seeds():
    results = {
        ("a", 0): {"validation": _validation([1, 0], [2, 2], [0, 2], [0.5, math.nan])},  # 1/4, FP 1.0, F1 0.5
        ("a", 1): {"validation": _validation([2, 1], [2, 2], [1, 1], [0.7, 0.9])},  # 3/4, FP 1.0, F1 0.8
        ("b", 0): {"validation": _validation([0, 0], [0, 0], [0, 0], [1.0, 1.0])},  # no small lesion: NaN
        ("b", 1): {"validation": _validation([0, 1], [0, 2], [0, 0], [1.0, 1.0])},  # 1/2
    }
    s = validation_summary(results, ["a", "b"], [0, 1])
    assert s["a"] == pytest.approx(
        {"small_sensitivity": 0.5, "fp_per_case": 1.0, "lesion_f1": 0.65, "dice": 0.5, "n_small": 4}
    )
    assert s["b"]["small_sensitivity"] == 0.5 and s["b"]["n_small"] == 1.0  # the seed without small lesions skipped
    with pytest.raises(KeyError, match="--score-validation"):
        validation_summary({("a", 0): {"cases": []}}, ["a"], [0])


def _summary(arms: dict) -> dict:
    """Validation endpoints of arms given as (small-lesion sensitivity, FP per case, lesion F1)."""
    return {
        a: {"small_sensitivity": s, "fp_per_case": fp, "lesion_f1": f1, "dice": 0.7, "n_small": 10}
        for a, (s, fp, f1) in arms.items()
    }


BASE = "monai.losses.DiceLoss"


@pytest.mark.parametrize(
    "arms, default, winner",
    [
        # the best eligible sensitivity wins
        ({BASE: (0.30, 1.0, 0.6), "dice_ce": (0.20, 0.5, 0.7), "blob": (0.45, 1.4, 0.7)}, "blob", "blob"),
        # blob adds 0.6 FP per case to the baseline's (more than 0.5): not eligible; MONAI's class -> our drop-in
        ({BASE: (0.30, 1.0, 0.6), "dice_ce": (0.20, 0.5, 0.7), "blob": (0.45, 1.6, 0.7)}, "dice", BASE),
        # a lead under 0.02 over the incumbent keeps the incumbent
        ({BASE: (0.30, 1.0, 0.6), "dice_ce": (0.40, 0.5, 0.5), "blob": (0.415, 1.0, 0.9)}, "dice_ce", "dice_ce"),
        # arms within 0.02 of the best are tied: the higher lesion F1 wins
        (
            {BASE: (0.30, 1.0, 0.6), "dice_ce": (0.10, 0.5, 0.9), "blob": (0.45, 1.0, 0.6), "tv": (0.44, 1.0, 0.8)},
            "tv",
            "tv",
        ),
        # the incumbent adds too many false positives: it cannot stay
        ({BASE: (0.30, 1.0, 0.6), "dice_ce": (0.50, 2.0, 0.9), "blob": (0.31, 1.0, 0.6)}, "blob", "blob"),
    ],
)
def test_decision_rule_on_known_summaries(arms, default, winner):
    d = decide_default(_summary(arms), BASE, "dice_ce")
    assert (d["default"], d["winner"]) == (default, winner)
    assert set(d["eligible"]) == {a for a, (_, fp, _) in arms.items() if fp <= 1.5}
    with pytest.raises(ValueError, match="incumbent 'focal'"):
        decide_default(_summary({"dice_ce": (0.1, 0.0, 0.5)}), "dice_ce", "focal")


def test_tumour_rule_ranks_mean_dice_with_wt_false_positives_as_safety():
    """The tumour task: mean Dice over TC/WT/ET decides, WT's FP components bound eligibility (same margins)."""

    def rows(dice, fp_wt, f1=0.5):
        regions = {"TC": dice - 0.1, "WT": dice, "ET": dice + 0.1}
        return [
            {**{f"dice_{g}": d for g, d in regions.items()}, **{f"f1_{g}": f1 for g in regions}, "fp_lesions_WT": fp_wt}
            for _ in range(3)
        ]

    results = {
        (BASE, 0): {"validation": rows(0.70, 1.0)},
        ("dice_ce", 0): {"validation": rows(0.72, 1.0)},
        ("blob", 0): {"validation": rows(0.80, 1.6)},  # the best Dice, but 0.6 more FP components than MONAI's
        ("tversky", 0): {"validation": rows(0.75, 1.2)},
    }
    s = tumour_validation_summary(results, list({a for a, _ in results}), [0])
    assert s["tversky"]["mean_dice"] == pytest.approx(0.75) and s["blob"]["fp_per_case"] == pytest.approx(1.6)
    d = decide_default(s, BASE, "dice_ce", primary="mean_dice")
    assert (d["winner"], d["default"]) == ("tversky", "tversky") and "blob" not in d["eligible"]
    assert "mean Dice over the regions" in d["reason"] and d["rule"]["primary"] == "mean_dice"
    with pytest.raises(ValueError, match="primary='dice'"):
        decide_default(s, BASE, "dice_ce", primary="dice")
    with pytest.raises(KeyError, match="--score-validation"):
        tumour_validation_summary({("a", 0): {"cases": []}}, ["a"], [0])


def write_single_channel_task(root, n=5, shape=(24, 28, 20)):
    """An MSD-layout task as users often have it: one image channel and masks saved as 0/255."""
    import json

    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    items = []
    for i in range(n):
        mask = ball(shape, rng.uniform(8, 14, 3), 3.0) | ball(shape, rng.uniform(6, 16, 3), 1.5)
        image = (100 + 80 * mask + rng.normal(0, 3, shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image((255 * mask).astype(np.uint8), np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
        items.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "lesion"}, "training": items}))
    return root


@pytest.mark.slow
def test_bundle_args_reach_training_inference_and_scoring(tmp_path):
    """--bundle-args: a single-channel task with 0/255 masks trains, predicts (the inference net gets
    in_channels too) and is scored with the same remap; without the remap the runs fail with the fix named."""
    data = write_single_channel_task(tmp_path / "Task99")
    base = [
        "quality",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--losses",
        "dice_ce",
        "--baseline",
        "dice_ce",
        "--no-progress",
        "--n-boot",
        "100",
    ]
    with pytest.raises(RuntimeError, match=r"1 of 1 runs failed(.|\n)*ValueError: .*holds values \{0, 255\}.*remap"):
        cli(base + ["--out", str(tmp_path / "no_remap"), "--bundle-args", "{'in_channels': 1}"])

    out = tmp_path / "remap"
    assert cli(base + ["--out", str(out), "--bundle-args", "{'in_channels': 1, 'label_remap': {255: 1}}"]) == 0
    cases = list(csv.DictReader(open(out / "cases.csv")))
    assert len(cases) == 2 and all(int(r["n_truth_lesion"]) >= 1 for r in cases)
    assert "in_channels=1" in (out / "report.md").read_text() and "100 resamples" in (out / "report.md").read_text()

    # scoring checks the label values itself: without the remap, 255 is named with the fix
    study = Study(replace(PRESETS["tiny"], losses=["dice_ce"], baseline="dice_ce"), out, data=data, log=lambda m: None)
    with pytest.raises(ValueError, match=r"unexpected \{255\}.*--bundle-args .*label_remap"):
        study.score_predictions(study.run_dir("dice_ce", 0) / "test_pred", study.splits()[1])


# -- the bundles' regime (speed part; wall times are never asserted) ----------------------------------------
def test_sparse_labels_hold_the_requested_foreground():
    from monai_losses_ext.benchmark.regime import sparse_labels

    two = sparse_labels(2, 2, 64)
    assert set(two.unique().tolist()) == {0, 1}
    assert 0.003 < float((two > 0).float().mean()) < 0.006  # ~0.5 %, less where balls overlap
    four = sparse_labels(2, 4, 64)
    assert set(four.unique().tolist()) == {0, 1, 2, 3}
    assert torch.equal(four > 0, two > 0)  # the same balls, classes nested inside them
    assert (four == 3).sum() < (four == 2).sum() < (four == 1).sum()


def test_regime_cli_writes_both_tables(tmp_path):
    cli(["regime", "--sizes", "8", "--step-patch", "16", "--repeats", "1", "--out", str(tmp_path), "--no-progress"])
    table = (tmp_path / "regime.md").read_text()
    assert "| 2, 8^3 |" in table and "| 4, 8^3 |" in table and "loss share of the step" in table
    with open(tmp_path / "regime.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["classes"], r["loss"]) for r in rows} == {(c, n) for c in ("2", "4") for n in R.LOSSES}
    assert all(float(r["ours_ms"]) > 0 and float(r["monai_ms"]) > 0 for r in rows)
    share = json.loads((tmp_path / "step_share.json").read_text())
    assert share["loss"] == "DiceCELoss" and share["patch"] == [16, 16, 16] and share["patches"] == 4
    assert 0 < share["ours_share"] < 1 and 0 < share["monai_share"] < 1
