"""The bundles' training recipe (monai_losses_ext.bundle.recipe and the preprocessing in train.json): the target
spacing (training median, stored with the model, read back by evaluate/inference), the resampling round trip,
augmentations that keep image, label and the loss's maps aligned, image-derived foreground for images that are
not skull-stripped, and the clear errors (spacing out of range, modality order, unknown augmentation)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from _bundle_data import AFFINE, BUNDLES, EVAL_KEYS, SHAPE, TINY, run, write_dataset
from monai.bundle import ConfigParser
from monai.transforms import Compose, Invertd, LoadImage, Orientation
from scipy import ndimage

from monai_losses_ext import bundle as bu
from monai_losses_ext.transforms import ForegroundMask, LesionInstances, RegionsToLabelsd, SignedDistanceMap


def parsed(task: str, data_dir, **overrides) -> ConfigParser:
    """train.json of a bundle with tiny overrides, parsed (nothing run)."""
    p = ConfigParser()
    p.read_config(str(BUNDLES[task] / "configs" / "train.json"))
    for k, v in {
        **TINY,
        "dataset_dir": str(data_dir),
        "bundle_root": "/nonexistent",
        "num_val": 1,
        **overrides,
    }.items():
        p[k] = v
    return p


def boundary_band(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Voxels within ``width`` voxels of the mask's boundary (inside or outside)."""
    grow = ndimage.binary_dilation(mask, iterations=width)
    shrink = ndimage.binary_erosion(mask, iterations=width)
    return grow & ~shrink


# ----------------------------------------------------------------------------------------------- spacing
def test_target_spacing_is_the_training_median_in_ras_axis_order(tmp_path):
    permuted = np.array([[0, 0, 2.5, 0.0], [1.5, 0, 0, 0.0], [0, 1.5, 0, 0.0], [0, 0, 0, 1]])  # file axes: A, S, R
    d = write_dataset(tmp_path / "d", "lesion", n=3, affines={0: np.diag([1.0, 1.0, 3.0, 1.0]), 1: permuted})
    files = bu.msd_datalist(str(d), "all")
    reorient = Compose([LoadImage(image_only=True, ensure_channel_first=True), Orientation("RAS")])
    for c in files:  # the spacing the bundle's Orientationd("RAS") gives
        assert bu.file_spacing(c["image"]) == pytest.approx([float(v) for v in reorient(c["image"]).pixdim])
    assert bu.file_spacing(files[1]["image"]) == [2.5, 1.5, 1.5]
    assert bu.target_spacing(files) == [1.5, 1.5, 2.0]  # per-axis median of (1, 1, 3), (2.5, 1.5, 1.5), (1.5, 1.5, 2)
    assert bu.target_spacing(files, 1.2) == [1.2, 1.2, 1.2]
    assert bu.target_spacing(files, "native") is None
    with pytest.raises(ValueError, match="one value or three values"):
        bu.target_spacing(files, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"outside the sane range 0.1-10 mm"):
        bu.target_spacing(files, 20.0)


def test_trained_spacing_comes_from_model_json(tmp_path):
    ckpt = tmp_path / "model.pt"
    with pytest.raises(ValueError, match="give --spacing"):
        bu.trained_spacing(str(ckpt))
    (tmp_path / "model.json").write_text(json.dumps({"metric": "m", "value": 0.5, "epoch": 3}))
    with pytest.raises(ValueError, match="does not record the training spacing"):
        bu.trained_spacing(str(ckpt))
    (tmp_path / "model.json").write_text(json.dumps({"epoch": 3, "args": {"target_spacing": [1.5, 1.5, 2.0]}}))
    assert bu.trained_spacing(str(ckpt)) == [1.5, 1.5, 2.0]
    assert bu.trained_spacing(str(ckpt), [1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]  # an explicit --spacing wins
    (tmp_path / "model.json").write_text(json.dumps({"args": {"target_spacing": None}}))
    assert bu.trained_spacing(str(ckpt)) is None  # trained with 'native'


@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_resampling_round_trip_puts_the_prediction_back_on_the_input_grid(task, tmp_path):
    d = write_dataset(tmp_path / "d", task, n=3)
    p = parsed(task, d, spacing=[1.0, 1.0, 1.0])
    pre = p.get_parsed_content("validate#preprocessing")
    case = bu.msd_datalist(str(d), "all")[0]
    item = pre(dict(case))
    assert [round(float(v), 4) for v in item["image"].pixdim] == [1.0, 1.0, 1.0]
    assert item["image"].shape[1:] != SHAPE  # really resampled (1.5 x 1.5 x 2 mm -> 1 mm)
    lab = item["label"]
    # a "prediction": the resampled label as an index map (tumour: labels, lesion: the 0/1 label)
    pred = lab
    if task == "tumour":  # the tumour label is region channels here: back to label values, as predictions are
        pred = RegionsToLabelsd("pred", regions=p.get_parsed_content("regions"))({"pred": lab})["pred"]
    item["pred"] = pred
    back = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(item)["pred"]
    src = nib.load(case["label"])
    truth = np.asarray(src.dataobj)
    got = back.numpy()[0]
    assert got.shape == truth.shape == SHAPE
    np.testing.assert_allclose(np.asarray(back.affine), src.affine, atol=1e-4)
    wrong = got != truth
    assert wrong.mean() < 0.05
    band = np.zeros(SHAPE, bool)
    for v in np.unique(truth):
        band |= boundary_band(truth == v)
    assert not (wrong & ~band).any(), "voxels more than one voxel from a boundary changed in the round trip"


def test_resampled_training_predicts_on_the_input_grid_and_evaluate_scores_every_case(tmp_path):
    d = write_dataset(tmp_path / "d", "lesion", n=4)
    run(tmp_path / "run", d, epochs=1, spacing=[3.0, 3.0, 3.0])
    meta = json.loads((tmp_path / "run" / "models" / "model.json").read_text())
    assert meta["args"]["target_spacing"] == [3.0, 3.0, 3.0] and meta["args"]["augmentation"] == "strong"
    # evaluate reads the spacing from model.json and scores every case of the dataset it is given
    other = write_dataset(tmp_path / "other", "lesion", n=5, seed=3)
    ev = {k: TINY[k] for k in EVAL_KEYS}
    run(tmp_path / "run", other, ("train.json", "evaluate.json"), max_cases=None, **ev)
    with open(tmp_path / "run" / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == [f"case_{i:03d}" for i in range(5)]
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert summary["cases"] == 5 and "fp_lesions_per_case_lesion" in summary["pooled"]
    assert {"sensitivity_lesion_<10", "sensitivity_lesion_10-50", "sensitivity_lesion_>50"} <= set(summary["pooled"])
    run(tmp_path / "run", other, ("train.json", "inference.json"), infer_split="validation", max_cases=None, **ev)
    pred = nib.load(str(tmp_path / "run" / "pred" / "case_004_seg.nii.gz"))
    assert pred.shape == SHAPE
    np.testing.assert_allclose(pred.affine, AFFINE, atol=1e-4)


def test_spacing_outside_the_sane_range_is_named(tmp_path):
    metres = AFFINE.copy()
    metres[:3, :3] /= 1000.0  # a header written in metres
    d = write_dataset(tmp_path / "d", "lesion", n=4, affines={1: metres})
    err = run(tmp_path / "run", d, expect_ok=False).stderr
    assert "case_001.nii.gz has voxel spacing [0.0015, 0.0015, 0.002] mm, outside the sane range 0.1-10 mm" in err
    assert "--spacing_range" in err


# ------------------------------------------------------------------------------------------ modalities
def test_modality_order_is_checked_against_the_bundle(tmp_path):
    d = write_dataset(tmp_path / "d", "lesion", n=3)
    meta = json.loads((d / "dataset.json").read_text())
    meta["modality"] = {"0": "T1w", "1": "FLAIR"}
    (d / "dataset.json").write_text(json.dumps(meta))
    err = run(tmp_path / "run", d, expect_ok=False).stderr
    assert "lists the modalities in the order ['T1w', 'FLAIR'], but the bundle expects ['FLAIR', 'T1']" in err
    assert "--modalities" in err
    meta["modality"] = {"0": "t2_flair", "1": "T1w"}  # other spellings of the expected order pass
    assert bu.check_modalities(meta, 2, "x", expected=["FLAIR", "T1"]) == ["t2_flair", "T1w"]


# ---------------------------------------------------------------------------------------- augmentation
def _sample(size: int = 56, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    g = np.indices((size,) * 3).astype(float)
    lab = np.zeros((size,) * 3, np.float32)
    for _ in range(4):
        c, r = rng.uniform(size / 2 - 8, size / 2 + 8, 3), rng.uniform(3, 6, 3)
        lab[(((g - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) <= 1] = 1
    label = torch.from_numpy(lab)[None]
    return {
        "image": torch.cat([label, 1 - label]) * 2.0 - 1.0,  # +1 inside, -1 outside (channel 0)
        "label": label,
        "label_distance_map": SignedDistanceMap(num_classes=2)(label)[1:],
        "label_instances": LesionInstances()(label).float(),
    }


MAPS = {"distance_map": "label_distance_map", "instances": "label_instances"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"p_affine": 1.0},
        {"p_elastic": 1.0},
        {"p_flip": 1.0},
        {"p_affine": 1.0, "p_elastic": 1.0, "p_flip": 1.0},
    ],
    ids=["affine", "elastic", "mirror", "all"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_spatial_augmentation_keeps_image_label_and_maps_aligned(overrides, seed):
    patch = [24, 24, 24]
    aug = Compose(bu.augmentations("none", overrides, patch, MAPS))
    aug.set_random_state(seed)
    crop = bu.crop_size(patch, "none", overrides)
    start = [(56 - c) // 2 for c in crop]
    sample = {
        k: v[(slice(None), *(slice(s, s + c) for s, c in zip(start, crop)))] for k, v in _sample(seed=seed).items()
    }
    out = aug(sample)
    lab = out["label"].numpy()[0] > 0.5
    assert all(tuple(v.shape[1:]) == tuple(patch) for v in out.values())
    assert lab.any() and set(np.unique(out["label"].numpy())) <= {0.0, 1.0}
    # instances: nearest like the label, so exactly the same voxels
    np.testing.assert_array_equal(out["label_instances"].numpy()[0] > 0, lab)
    band = boundary_band(lab)
    # image (bilinear) agrees with the label (nearest) away from boundaries
    img = out["image"].numpy()[0] > 0
    assert not ((img != lab) & ~band).any()
    # the signed distance map (inside <= 0) keeps its sign away from boundaries
    dist = out["label_distance_map"].numpy()[0]
    assert (dist[lab & ~band] <= 0.5).all() and (dist[~lab & ~band] > 0).all()


def test_intensity_augmentations_change_the_image_only():
    s = _sample()
    patch = [56, 56, 56]
    strong_intensity = {
        k: 1.0 for k in ("p_noise", "p_blur", "p_brightness", "p_contrast", "p_lowres", "p_gamma", "p_bias", "p_shift")
    }
    aug = Compose(bu.augmentations("none", strong_intensity, patch, MAPS))
    aug.set_random_state(0)
    out = aug({k: v.clone() for k, v in s.items()})
    for k in ("label", "label_distance_map", "label_instances"):
        torch.testing.assert_close(out[k].as_tensor() if hasattr(out[k], "as_tensor") else out[k], s[k])
    assert not torch.allclose(torch.as_tensor(out["image"]), s["image"])
    assert torch.isfinite(torch.as_tensor(out["image"])).all()


def test_presets_and_settings():
    assert bu.augmentations("none", None, [16] * 3) == []
    legacy = [type(t).__name__ for t in bu.augmentations("legacy", None, [16] * 3)]
    assert legacy == ["RandFlipd", "RandScaleIntensityd", "RandShiftIntensityd"]  # the bundles' old recipe
    strong = [type(t).__name__ for t in bu.augmentations("strong", None, [16] * 3)]
    assert strong[:2] == ["RandAffined", "Rand3DElasticd"] and strong.count("RandFlipd") == 3
    assert bu.crop_size([48] * 3, "strong") == [92] * 3 and bu.crop_size([48] * 3, "legacy") == [48] * 3
    with pytest.raises(ValueError, match="use one of"):
        bu.augmentation_settings("heavy")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['p_rotation'\]"):
        bu.augmentation_settings("strong", {"p_rotation": 0.5})
    with pytest.raises(ValueError, match="probabilities must lie in"):
        bu.augmentation_settings("strong", {"p_noise": 1.5})


# ------------------------------------------------------------------------------------- skull stripping
def test_not_skull_stripped_input_trains_and_infers(tmp_path):
    d = write_dataset(tmp_path / "d", "lesion", n=4, scalp=True)
    img = np.moveaxis(np.asarray(nib.load(str(d / "imagesTr" / "case_000.nii.gz")).dataobj), -1, 0)
    assert (img != 0).all()  # no exact zeros anywhere: "nonzero" would be every voxel
    g = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    head = (
        ((g - (np.array(SHAPE) / 2)[:, None, None, None]) / (np.array(SHAPE) * 0.49)[:, None, None, None]) ** 2
    ).sum(0) < 1
    fg = ForegroundMask()(img)[0]
    assert (fg & head).sum() >= 0.97 * head.sum() and (fg & ~head).sum() <= 0.03 * (~head).sum()
    run(tmp_path / "run", d, epochs=1)
    ev = {k: TINY[k] for k in EVAL_KEYS}
    run(tmp_path / "run", d, ("train.json", "inference.json"), infer_split="validation", **ev)
    assert nib.load(str(tmp_path / "run" / "pred" / "case_002_seg.nii.gz")).shape == SHAPE
