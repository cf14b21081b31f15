"""Synthetic lesion / tumour phantoms: determinism, label structure, files, MONAI loading.

Everything runs at 4 mm (44 x 52 x 44 voxels) to stay fast; the anatomy is read from the
installed nilearn package, so the module is skipped without nilearn.
"""

import filecmp
import json
import os

import numpy as np
import pytest
from scipy import ndimage as ndi

pytest.importorskip("nilearn")
nib = pytest.importorskip("nibabel")

from monai_losses_ext import phantoms  # noqa: E402
from monai_losses_ext.phantoms import generate_case, write_dataset  # noqa: E402
from monai_losses_ext.phantoms._fields import falloff_occupancy  # noqa: E402

SP = 4.0
S26 = np.ones((3, 3, 3), dtype=bool)


def _gen(task, seed=0, index=0, **kw):
    return generate_case(task, seed, index, spacing=SP, **kw)


@pytest.fixture(scope="module")
def tumours():
    return [_gen("tumour", 0, i) for i in range(4)]


@pytest.fixture(scope="module")
def lesion_cases():
    return [_gen("lesion", 1, i, n_lesions=(4, 12), empty_fraction=0.0) for i in range(4)]


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_same_seed_same_arrays_other_seed_differs(task):
    a, b = _gen(task, 5, 2), _gen(task, 5, 2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine) and a.info == b.info
    assert not np.array_equal(a.image, _gen(task, 6, 2).image)
    assert not np.array_equal(a.image, _gen(task, 5, 3).image)


def test_case_does_not_depend_on_other_cases():
    later = _gen("lesion", 2, 1)
    _gen("lesion", 2, 0)
    assert np.array_equal(later.image, _gen("lesion", 2, 1).image)


# ---------------------------------------------------------------- arrays
@pytest.mark.parametrize("task,channels", [("lesion", 2), ("tumour", 4)])
def test_shapes_dtypes_finite(task, channels):
    c = _gen(task, 0, 1)
    assert c.image.shape == (channels, 44, 52, 44) and c.image.dtype == np.float32
    assert c.label.shape == (44, 52, 44) and c.label.dtype == np.uint8
    assert np.isfinite(c.image).all() and c.image.min() >= 0.0
    assert np.allclose(np.diag(c.affine)[:3], SP)
    brain = c.image[0] > 0
    assert 0.1 < brain.mean() < 0.6  # skull-stripped brain inside the field of view
    assert not (c.label > 0)[~brain].any()  # labels lie inside the brain
    assert c.info["channels"] == list(phantoms.MODALITIES[task])


def test_grid_options():
    assert phantoms.output_grid(2.0).shape == (88, 104, 88)
    c = generate_case("lesion", 0, 0, spacing=5.0, shape=(30, 36, 30), n_lesions=0)
    assert c.image.shape == (2, 30, 36, 30)


# ---------------------------------------------------------------- tumour labels
def test_tumour_labels_nested(tumours):
    for c in tumours:
        lab = c.label
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        assert {2, 3} <= set(np.unique(lab))
        core, whole, nec = np.isin(lab, (1, 3)), lab > 0, lab == 1
        # necrosis never touches oedema or background: it is wrapped by enhancing tumour
        assert not (ndi.binary_dilation(nec, S26) & ~core).any()
        # every whole-tumour component holds core; the core is (mostly) wrapped in oedema
        comp, n = ndi.label(whole, S26)
        assert n >= 1 and set(np.unique(comp[core])) == set(range(1, n + 1))
        shell = ndi.binary_dilation(core, S26) & ~core
        assert (lab[shell] == 2).mean() > 0.6
        vol = c.info["volumes_mm3"]
        assert vol["tumour_core"] == pytest.approx(core.sum() * SP**3)
        assert vol["whole_tumour"] == pytest.approx(whole.sum() * SP**3)
    assert any((c.label == 1).any() for c in tumours)


def test_tumour_contrast(tumours):
    flair, t1, t1c, t2 = range(4)
    for c in tumours:
        img, lab = c.image, c.label
        wm_like = (lab == 0) & (img[t1] > np.percentile(img[t1][img[t1] > 0], 80))
        enh, oed = lab == 3, lab == 2
        # enhancing tumour is bright on T1c relative to its T1 ratio; oedema is bright on FLAIR
        assert img[t1c][enh].mean() / img[t1c][wm_like].mean() > img[t1][enh].mean() / img[t1][wm_like].mean()
        assert img[flair][oed].mean() > img[flair][wm_like].mean()


# ---------------------------------------------------------------- lesion labels
def test_lesion_count_and_components(lesion_cases):
    for c in lesion_cases:
        assert set(np.unique(c.label)) <= {0, 1}
        n = c.info["n_lesions"]
        assert n == c.info["n_requested"] and 4 <= n <= 12
        comp, k = ndi.label(c.label, S26)
        assert k == n
        sizes = sorted(np.bincount(comp.ravel())[1:] * SP**3)
        assert sizes == pytest.approx(sorted(les["label_volume_mm3"] for les in c.info["lesions"]))


def test_lesion_partial_volume_matches_geometry(lesion_cases):
    les = [x for c in lesion_cases for x in c.info["lesions"]]
    for x in les:
        assert 5.0 <= x["volume_mm3"] <= 3000.0
        # the supersampled occupancy integrates to the ellipsoid's volume
        assert x["partial_volume_mm3"] == pytest.approx(x["volume_mm3"], rel=0.15, abs=SP**3 / 4)
    lesion_flair = np.concatenate([c.image[0][c.label == 1] for c in lesion_cases])
    brain_flair = np.concatenate([c.image[0][(c.label == 0) & (c.image[0] > 0)] for c in lesion_cases])
    assert np.median(lesion_flair) > np.percentile(brain_flair, 90)  # FLAIR-bright lesions


def test_empty_cases():
    for c in (_gen("lesion", 0, 0, empty_fraction=1.0), _gen("lesion", 0, 1, n_lesions=0)):
        assert not c.label.any() and c.info["n_lesions"] == 0 and np.isfinite(c.image).all()
    counts = [_gen("lesion", 0, i, n_lesions=(1, 2), empty_fraction=0.5).info["n_lesions"] for i in range(8)]
    assert 0 in counts and any(k > 0 for k in counts)


def test_falloff_rule_exact():
    phi = np.linspace(-3, 3, 61, dtype=np.float32)[:, None, None] * np.ones((1, 3, 3), np.float32)
    f = falloff_occupancy(phi, (0.5, 1.0, 1.0))
    assert np.array_equal(f >= 0.5, phi <= 0) and f.min() >= 0 and f.max() <= 1


# ---------------------------------------------------------------- files
def test_write_dataset_bytes_json_and_monai(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    kw = dict(spacing=SP, progress=False, n_lesions=(2, 4))
    path = write_dataset(str(a), "lesion", 2, seed=3, **kw)
    write_dataset(str(b), "lesion", 2, seed=3, workers=2, **kw)
    write_dataset(str(other), "lesion", 2, seed=4, **kw)
    names = ["dataset.json", "phantoms.json"] + [
        f"{d}/synth_lesion_{i:03d}.nii.gz" for d in ("imagesTr", "labelsTr") for i in range(2)
    ]
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert sorted(match) == sorted(names) and not mismatch and not errors
    assert not filecmp.cmp(a / "imagesTr/synth_lesion_000.nii.gz", other / "imagesTr/synth_lesion_000.nii.gz",
                           shallow=False)

    meta = json.loads((a / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1"} and meta["labels"]["1"] == "lesion"
    assert meta["numTraining"] == 2 and meta["test"] == [] and "synthetic" in meta["description"]
    assert "exact" in meta["description"]
    items = load_decathlon_datalist(path, True, "training")
    assert len(items) == 2 and all(os.path.isfile(it["image"]) for it in items)

    d = LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True)(items[1])
    case = _gen("lesion", 3, 1, n_lesions=(2, 4))
    assert tuple(d["image"].shape) == case.image.shape and tuple(d["label"].shape) == (1, *case.label.shape)
    assert np.array_equal(d["image"].numpy(), case.image)
    assert np.array_equal(d["label"][0].numpy(), case.label)
    assert np.allclose(d["image"].affine.numpy(), case.affine)
    assert nib.load(str(a / "labelsTr/synth_lesion_001.nii.gz")).get_data_dtype() == np.uint8


def test_cli_tumour(tmp_path):
    from monai_losses_ext.phantoms.__main__ import main

    assert main(["--task", "tumour", "--out", str(tmp_path), "--num-cases", "1", "--spacing", "4",
                 "--seed", "1", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1", "2": "T1c", "3": "T2"}
    assert set(meta["labels"]) == {"0", "1", "2", "3"}
    img = nib.load(str(tmp_path / "imagesTr/synth_tumour_000.nii.gz"))
    assert img.shape == (44, 52, 44, 4)
    with pytest.raises(SystemExit):
        main(["--task", "tumour", "--out", str(tmp_path), "--num-cases", "1", "--n-lesions", "1", "2"])


# ---------------------------------------------------------------- errors
def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown task"):
        generate_case("liver", 0, 0)
    with pytest.raises(TypeError, match="unknown option"):
        generate_case("tumour", 0, 0, n_lesions=3)
    with pytest.raises(ValueError, match="n_lesions"):
        generate_case("lesion", 0, 0, spacing=SP, n_lesions=(5, 2))
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install nilearn"):
        phantoms.atlas_paths()
