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
    assert not filecmp.cmp(
        a / "imagesTr/synth_lesion_000.nii.gz", other / "imagesTr/synth_lesion_000.nii.gz", shallow=False
    )

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

    assert (
        main(
            [
                "--task",
                "tumour",
                "--out",
                str(tmp_path),
                "--num-cases",
                "1",
                "--spacing",
                "4",
                "--seed",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
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


# ---------------------------------------------------------------- acquisition sites (domain shift)
from monai_losses_ext.phantoms import SITE_DEFAULTS, SITES, resolve_site  # noqa: E402
from monai_losses_ext.phantoms.__main__ import main as cli_main  # noqa: E402


def _inner_brain(img, iterations=0):
    brain = img > 0
    return ndi.binary_erosion(brain, iterations=iterations) if iterations else brain


def _wm_like(t1_clean, label):
    """Bright T1 voxels (WM) of a noise-free skull-stripped T1, outside lesions."""
    return (label == 0) & (t1_clean > np.percentile(t1_clean[t1_clean > 0], 80))


def test_site_defaults_are_the_training_distribution():
    assert set(SITES) >= {"in_domain", "scanner", "site_c"} and SITES["in_domain"] == {}
    base = _gen("lesion", 4, 1, n_lesions=(3, 6))
    for kw in ({"site": "in_domain"}, {"site": None, **SITE_DEFAULTS}, {"site": {}}):
        c = _gen("lesion", 4, 1, n_lesions=(3, 6), **kw)
        assert np.array_equal(c.image, base.image) and np.array_equal(c.label, base.label)
    assert all(les["shape"] == "ovoid" and les["components"] == 1 for les in base.info["lesions"])
    assert base.info["site"] == "in_domain" and "head" not in base.info
    # every preset changes the image (the site really is a shift) but not the anatomy
    for name in ("scanner", "site_c"):
        c = _gen("lesion", 4, 1, n_lesions=(3, 6), site=name)
        assert c.info["site"] == name and c.info["anatomy"] == base.info["anatomy"]
        assert not np.array_equal(c.image, base.image)
    # at the same spacing and shapes a site changes the intensities, not the lesions
    assert np.array_equal(_gen("lesion", 4, 1, n_lesions=(3, 6), site="scanner").label, base.label)
    sc = resolve_site("lesion", "scanner")
    assert sc.spacing == (1.0, 1.0, 3.0) and sc.options["noise"] == (0.05, 0.10)
    assert resolve_site("lesion", "scanner", bias=0.5).options["bias"] == 0.5  # keyword overrides preset


def test_scanner_site_lowers_snr():
    """SNR = WM mean / std(noisy - noise-free) in WM, on T1 (whose brightest tissue is WM)."""
    snr = {}
    for site in (None, "scanner"):
        snr[site] = []
        for i in range(3):
            kw = dict(site=site, n_lesions=0)
            clean, noisy = _gen("lesion", 0, i, noise=(0.0, 0.0), **kw), _gen("lesion", 0, i, **kw)
            t1 = clean.image[1]
            wm = _wm_like(t1, clean.label)
            snr[site].append(t1[wm].mean() / (noisy.image[1] - t1)[wm].std())
    assert min(snr[None]) > 23.0 and max(snr["scanner"]) < 22.0, snr  # SNR 25-100 vs 10-20
    assert max(snr["scanner"]) < 0.6 * min(snr[None])
    clean, noisy = (_gen("lesion", 0, 0, n_lesions=0, noise=(n, n)) for n in (0.0, 0.1))  # SNR 10 is allowed
    wm = _wm_like(clean.image[1], clean.label)
    assert 8.0 < clean.image[1][wm].mean() / (noisy.image[1] - clean.image[1])[wm].std() < 12.0


def test_lesion_contrast_scales_the_lesion_to_wm_ratio():
    kw = dict(n_lesions=(6, 10), empty_fraction=0.0, volume_median_mm3=400.0, noise=(0.0, 0.0))
    full, half = _gen("lesion", 2, 0, **kw), _gen("lesion", 2, 0, lesion_contrast=0.5, **kw)
    assert np.array_equal(full.label, half.label)  # same lesions, other intensities
    r_full = np.array([les["intensity_vs_wm"]["FLAIR"] for les in full.info["lesions"]])
    r_half = np.array([les["intensity_vs_wm"]["FLAIR"] for les in half.info["lesions"]])
    assert r_full.min() >= 1.7 and r_full.max() <= 2.3 and r_half.min() >= 1.35 and r_half.max() <= 1.65
    assert np.allclose(r_half - 1, 0.5 * (r_full - 1), atol=1e-3)
    wm = _wm_like(full.image[1], full.label)
    lab = full.label == 1
    measured = [c.image[0][lab].mean() / c.image[0][wm].mean() for c in (full, half)]
    assert measured[0] > 1.2 and 1.0 < measured[1] and measured[1] - 1 < 0.65 * (measured[0] - 1), measured


def test_lesion_contrast_for_tumours():
    a, b = _gen("tumour", 0, 1, noise=(0.0, 0.0)), _gen("tumour", 0, 1, noise=(0.0, 0.0), lesion_contrast=0.5)
    assert np.array_equal(a.label, b.label)
    wm = _wm_like(a.image[1], a.label)
    oed, enh = a.label == 2, a.label == 3
    ratio = [
        (c.image[0][oed].mean() / c.image[0][wm].mean(), c.image[2][enh].mean() / c.image[2][wm].mean()) for c in (a, b)
    ]
    assert ratio[1][0] < ratio[0][0] and ratio[1][1] < ratio[0][1]  # FLAIR oedema, T1c enhancement
    assert ratio[1][1] - 1 < 0.7 * (ratio[0][1] - 1)


def test_tissue_contrast_flattens_the_tissues():
    kw = dict(n_lesions=0, noise=(0.0, 0.0), bias=0.0)
    a, b = _gen("lesion", 0, 2, **kw), _gen("lesion", 0, 2, tissue_contrast=0.5, **kw)
    inner = _inner_brain(a.image[1], 2)
    rel = [c.image[1][inner].std() / c.image[1][inner].mean() for c in (a, b)]
    assert 0.35 < rel[1] / rel[0] < 0.65, rel


def test_contrast_jitter_and_tissue_contrast_in_the_recorded_means():
    table = np.asarray(phantoms.TISSUE_MEANS["T1"])
    base = [_gen("lesion", 0, i, n_lesions=0).info["tissue_means"]["T1"] for i in range(3)]
    wide = [_gen("lesion", 0, i, n_lesions=0, contrast_jitter=0.2).info["tissue_means"]["T1"] for i in range(3)]
    assert np.allclose(np.log(np.array(wide) / table), 4 * np.log(np.array(base) / table), atol=1e-3)
    assert np.std(np.log(np.array(wide) / table)) > 0.05
    flat = _gen("lesion", 0, 0, n_lesions=0, tissue_contrast=0.7, contrast_jitter=0.0).info["tissue_means"]["T1"]
    assert np.allclose(flat, table.mean() + 0.7 * (table - table.mean()), atol=1e-4)


def test_no_skull_strip_adds_a_head():
    stripped = _gen("lesion", 0, 1, n_lesions=(2, 4))
    head = _gen("lesion", 0, 1, n_lesions=(2, 4), skull_strip=False)
    assert np.array_equal(stripped.label, head.label)
    assert (stripped.image == 0).any() and not (head.image == 0).any()  # Rician noise in the air too
    outside = stripped.image[0] == 0  # the brain mask's complement
    t1, flair = head.image[1], head.image[0]
    brain_p90 = np.percentile(t1[~outside], 90)
    assert (t1[outside] > brain_p90).mean() > 0.03  # bright scalp fat on T1 ...
    assert np.percentile(flair[outside], 99) > np.median(flair[~outside])  # ... and on FLAIR
    ring = ndi.binary_dilation(~outside) & outside  # first voxels outside the brain: skull, dark
    assert np.median(t1[ring]) < 0.6 * np.median(t1[~outside])
    assert 4.0 <= head.info["head"]["skull_mm"][0] and head.info["head"]["scalp_mm"][1] <= 8.0
    deep = _inner_brain(stripped.image[1], 2)
    assert np.abs(t1 - stripped.image[1])[deep].max() < 0.05 * np.median(t1[deep])  # the brain is unchanged


def test_anisotropic_spacing_and_slice_thickness():
    c = generate_case("lesion", 0, 0, spacing=(3.0, 3.0, 6.0), n_lesions=(2, 3))
    assert np.allclose(np.diag(c.affine)[:3], (3.0, 3.0, 6.0)) and c.image.shape[1:] == (59, 69, 29)
    assert c.info["spacing_mm"] == [3.0, 3.0, 6.0]
    kw = dict(n_lesions=(3, 5), noise=(0.0, 0.0))
    thin, thick = _gen("lesion", 0, 0, **kw), _gen("lesion", 0, 0, slice_thickness_mm=12.0, **kw)
    assert np.array_equal(thin.label, thick.label) and thick.info["artefacts"]["slice_fwhm_mm"] == 12.0
    inner = _inner_brain(thin.image[1], 3)
    ratio = []
    for ax in range(3):
        m = inner & np.roll(inner, -1, ax)
        diff = [np.abs(np.roll(c.image[1], -1, ax) - c.image[1])[m].mean() for c in (thin, thick)]
        ratio.append(diff[1] / diff[0])
    assert ratio[2] < 0.7 and ratio[2] < 0.8 * min(ratio[:2]), ratio  # blurred along axis 2 only
    # thinner than the spacing: no gaps modelled, the profile is the spacing
    assert np.array_equal(_gen("lesion", 0, 0, slice_thickness_mm=2.0, **kw).image, thin.image)


def _lesion_shape_stats(case):
    """Per lesion (26-component of the label): volume / volume of its inertia ellipsoid
    (1 for an ellipsoid, lower for lobulated or merged shapes) and the long/short axis ratio."""
    sp = np.asarray(case.info["spacing_mm"])
    comp, n = ndi.label(case.label, S26)
    out = []
    for k in range(1, n + 1):
        pts = np.argwhere(comp == k) * sp
        if len(pts) < 8:
            continue
        lam = np.sort(np.linalg.eigvalsh(np.cov(pts.T) + np.diag(sp**2 / 12)))[::-1]
        out.append((len(pts) * np.prod(sp) / (4 / 3 * np.pi * np.sqrt(125 * np.prod(lam))), np.sqrt(lam[0] / lam[2])))
    return np.array(out)


@pytest.fixture(scope="module")
def shaped_cases():
    kw = dict(n_lesions=(6, 8), empty_fraction=0.0, volume_median_mm3=1500.0, volume_sigma=0.3)
    return {
        shape: [generate_case("lesion", 0, i, spacing=3.0, lesion_shapes=(shape,), **kw) for i in range(2)]
        for shape in ("ovoid", "irregular", "confluent", "elongated")
    }


def test_lesion_shapes(shaped_cases):
    ncomp = {"ovoid": (1, 1), "irregular": (2, 4), "confluent": (3, 7), "elongated": (1, 1)}
    stats, volume = {}, {}
    for shape, cases in shaped_cases.items():
        for c in cases:
            les = c.info["lesions"]
            assert c.info["n_lesions"] == c.info["n_requested"] == ndi.label(c.label, S26)[1]
            assert all(x["shape"] == shape and ncomp[shape][0] <= x["components"] <= ncomp[shape][1] for x in les)
            if shape == "elongated":
                assert all(2.5 <= x["elongation"] <= 4.0 for x in les)
        stats[shape] = np.concatenate([_lesion_shape_stats(c) for c in cases])
        volume[shape] = np.mean([x["label_volume_mm3"] for c in cases for x in c.info["lesions"]])
    fill = {k: np.median(v[:, 0]) for k, v in stats.items()}
    axis_ratio = {k: np.median(v[:, 1]) for k, v in stats.items()}
    assert fill["irregular"] < fill["ovoid"] - 0.025 and fill["confluent"] < fill["ovoid"] - 0.025, fill
    assert axis_ratio["elongated"] > 1.5 * axis_ratio["ovoid"], axis_ratio
    assert volume["confluent"] > 1.5 * volume["ovoid"] and volume["irregular"] < 1.5 * volume["ovoid"], volume
    # the union is scaled to the drawn volume: the occupancy integrates to it
    for x in (x for c in shaped_cases["irregular"] for x in c.info["lesions"]):
        assert x["partial_volume_mm3"] == pytest.approx(x["volume_mm3"], rel=0.15)
    mixed = generate_case(
        "lesion",
        0,
        0,
        spacing=3.0,
        n_lesions=(12, 12),
        empty_fraction=0.0,
        lesion_shapes=("ovoid", "elongated", "confluent"),
    )
    assert {x["shape"] for x in mixed.info["lesions"]} == {"ovoid", "elongated", "confluent"}


def test_elongated_lesions_point_away_from_the_ventricles(shaped_cases):
    from monai_losses_ext.phantoms._subject import make_subject

    def alignment(case):
        grid = phantoms.output_grid(case.info["spacing_mm"])
        seq = np.random.SeedSequence([case.info["seed"], case.info["index"]]).spawn(5)[0]
        vent = make_subject(np.random.default_rng(seq), grid).ventricles >= 0.5
        grad = np.stack(np.gradient(ndi.distance_transform_edt(~vent, sampling=grid.spacing), *grid.spacing))
        comp, n = ndi.label(case.label, S26)
        cos = []
        for k in range(1, n + 1):
            pts = np.argwhere(comp == k)
            axis = np.linalg.eigh(np.cov((pts * grid.spacing).T))[1][:, -1]
            g = grad[(slice(None), *np.round(pts.mean(0)).astype(int))]
            cos.append(abs(axis @ g) / np.linalg.norm(g))
        return cos

    elongated = [x for c in shaped_cases["elongated"] for x in alignment(c)]
    ovoid = [x for c in shaped_cases["ovoid"] for x in alignment(c)]
    assert np.median(elongated) > 0.9 and np.median(elongated) > np.median(ovoid) + 0.1, (elongated, ovoid)


def test_site_presets_work_for_tumours():
    for name in ("scanner", "site_c"):
        c = generate_case("tumour", 0, 0, site=name, spacing=4.0)
        assert {2, 3} <= set(np.unique(c.label)) and c.info["site"] == name
    assert "lesion_shapes" not in resolve_site("tumour", "site_c").options
    assert not (generate_case("tumour", 0, 0, site="site_c", spacing=4.0).image == 0).any()


def test_cli_site_same_bytes(tmp_path):
    args = [
        "--task",
        "lesion",
        "--site",
        "site_c",
        "--num-cases",
        "2",
        "--seed",
        "7",
        "--spacing",
        "4",
        "--lesion-shapes",
        "irregular",
        "elongated",
        "--noise",
        "0.05",
        "0.08",
        "--no-progress",
    ]
    for d in ("a", "b"):
        assert cli_main(args + ["--out", str(tmp_path / d)]) == 0
    assert (
        cli_main(
            [
                "--task",
                "lesion",
                "--num-cases",
                "1",
                "--seed",
                "7",
                "--spacing",
                "4",
                "--no-progress",
                "--out",
                str(tmp_path / "plain"),
            ]
        )
        == 0
    )
    names = ["dataset.json", "phantoms.json"] + [
        f"{d}/synth_lesion_{i:03d}.nii.gz" for d in ("imagesTr", "labelsTr") for i in range(2)
    ]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert sorted(match) == sorted(names) and not mismatch and not errors
    assert not filecmp.cmp(
        tmp_path / "a/imagesTr/synth_lesion_000.nii.gz",
        tmp_path / "plain/imagesTr/synth_lesion_000.nii.gz",
        shallow=False,
    )
    meta = json.loads((tmp_path / "a/phantoms.json").read_text())
    assert meta["site"] == "site_c" and meta["spacing_mm"] == [4.0, 4.0, 4.0]
    so = meta["site_options"]
    assert so["noise"] == [0.05, 0.08] and so["lesion_shapes"] == ["irregular", "elongated"]
    assert so["skull_strip"] is False and so["tissue_contrast"] == 0.85  # from the preset
    assert {x["shape"] for c in meta["cases"] for x in c["lesions"]} <= {"irregular", "elongated"}
    assert json.loads((tmp_path / "a/dataset.json").read_text())["site"] == "site_c"
    assert json.loads((tmp_path / "plain/phantoms.json").read_text())["site"] == "in_domain"
    img = nib.load(str(tmp_path / "a/imagesTr/synth_lesion_000.nii.gz"))
    assert np.asarray(img.dataobj).min() > 0  # not skull-stripped


def test_cli_scanner_anisotropic(tmp_path):
    assert (
        cli_main(
            [
                "--task",
                "lesion",
                "--site",
                "scanner",
                "--num-cases",
                "1",
                "--spacing",
                "4",
                "4",
                "8",
                "--bias",
                "0.5",
                "--no-skull-strip",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    img = nib.load(str(tmp_path / "imagesTr/synth_lesion_000.nii.gz"))
    assert img.header.get_zooms()[:3] == (4.0, 4.0, 8.0) and img.shape == (44, 52, 22, 2)
    meta = json.loads((tmp_path / "phantoms.json").read_text())
    assert meta["site"] == "scanner" and meta["site_options"]["bias"] == 0.5
    assert meta["site_options"]["skull_strip"] is False and meta["site_options"]["lesion_contrast"] == 0.6


def test_site_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown site 'site_z'.*scanner"):
        generate_case("lesion", 0, 0, site="site_z")
    bad = [
        dict(noise=(-0.01, 0.02)),
        dict(noise=(0.05, 0.01)),
        dict(lesion_contrast=0.0),
        dict(lesion_contrast=-1.0),
        dict(tissue_contrast=0.0),
        dict(tissue_contrast=2.0),
        dict(bias=-0.1),
        dict(slice_thickness_mm=0.0),
        dict(lesion_shapes=("ovoid", "star")),
        dict(lesion_shapes=()),
        dict(skull_strip="no"),
        dict(noise=(float("nan"), 0.1)),
    ]
    for kw in bad:
        with pytest.raises(ValueError, match=list(kw)[0]):
            generate_case("lesion", 0, 0, spacing=SP, **kw)
    with pytest.raises(ValueError, match="lesion task only"):
        generate_case("tumour", 0, 0, spacing=SP, lesion_shapes=("irregular",))
    with pytest.raises(TypeError, match="unknown site option"):
        generate_case("lesion", 0, 0, site={"noise_level": 0.1})
    with pytest.raises(TypeError, match="unknown option"):
        generate_case("lesion", 0, 0, nosie=(0.0, 0.1))
    out = str(tmp_path / "x")
    for argv, msg in (
        [["--site", "site_z"], "invalid choice"],
        [["--noise", "-0.1", "0.1"], "noise"],
        [["--lesion-contrast", "0"], "lesion_contrast"],
        [["--spacing", "2", "2"], "1 or 3 values"],
        [["--lesion-shapes", "star"], "invalid choice"],
    ):
        with pytest.raises(SystemExit):
            cli_main(["--task", "lesion", "--out", out, "--num-cases", "1"] + argv)
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--task", "tumour", "--out", out, "--num-cases", "1", "--lesion-shapes", "irregular"])
    assert "lesion only" in capsys.readouterr().err
    assert not os.path.exists(out)  # nothing written on a usage error
