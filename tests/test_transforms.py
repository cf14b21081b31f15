"""Tests of monai_losses_ext.transforms: maps against independent computations, errors, MONAI pipelines."""

from __future__ import annotations

import math
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld
from scipy import ndimage
from scipy.spatial import cKDTree

from monai_losses_ext.transforms import (
    BackendUnavailableError,
    LesionInstances,
    LesionInstancesd,
    OneHot,
    OneHotd,
    SignedDistanceMap,
    SignedDistanceMapd,
    UNetWeightMap,
    UNetWeightMapd,
    ValidateLabel,
    ValidateLabeld,
    resolve_backend,
)
from monai_losses_ext.transforms import distance as distance_mod

HYP = settings(max_examples=25, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- helpers
@st.composite
def blob_cases(draw, ndim=3, num_classes=3, max_side=12):
    """Random ellipsoid blobs of random classes on a small grid, plus an anisotropic spacing."""
    shape = tuple(draw(st.integers(4, max_side)) for _ in range(ndim))
    lab = np.zeros(shape, dtype=np.int64)
    grid = np.indices(shape).astype(float)
    for _ in range(draw(st.integers(0, 5))):
        centre = [draw(st.integers(0, s - 1)) for s in shape]
        radii = [draw(st.floats(0.6, 4.0)) for _ in shape]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        lab[inside] = draw(st.integers(1, num_classes - 1))
    spacing = tuple(draw(st.floats(0.4, 3.0)) for _ in shape)
    return lab, spacing


def reference_boundary(fg: np.ndarray) -> np.ndarray:
    """Boundary voxels by scipy erosion (face structure, array edge counted as foreground)."""
    st_ = ndimage.generate_binary_structure(fg.ndim, 1)
    return fg & ~ndimage.binary_erosion(fg, structure=st_, border_value=1)


def brute_force_boundary_distance(fg: np.ndarray, spacing) -> np.ndarray:
    """Distance from every voxel centre to the nearest boundary-voxel centre, by nearest-neighbour search."""
    b = reference_boundary(fg)
    pts = np.argwhere(np.ones(fg.shape, bool)) * np.asarray(spacing)
    d, _ = cKDTree(np.argwhere(b) * np.asarray(spacing)).query(pts)
    return d.reshape(fg.shape)


def rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def meta_label(arr, filename="case_007_seg.nii.gz", affine=None) -> MetaTensor:
    t = torch.as_tensor(np.asarray(arr))
    return MetaTensor(t, affine=None if affine is None else torch.as_tensor(affine), meta={"filename_or_obj": filename})


# ----------------------------------------------------------------------------- signed distance maps
@HYP
@given(case=blob_cases(), via_affine=st.booleans(), angle=st.floats(0.0, 2 * math.pi))
def test_signed_distance_equals_independent_edt(case, via_affine, angle):
    lab, spacing = case
    if via_affine:  # spacing must come from the column norms of a rotated, scaled affine
        aff = np.eye(4)
        aff[:3, :3] = rotation(angle) @ np.diag(spacing)
        out = SignedDistanceMap(num_classes=3)(meta_label(lab[None], affine=aff))
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case_007_seg.nii.gz"
        torch.testing.assert_close(out.affine, torch.as_tensor(aff))
    else:
        out = SignedDistanceMap(num_classes=3, spacing=spacing)(torch.as_tensor(lab[None]))
    assert out.shape == (3, *lab.shape) and out.dtype == torch.float32
    out = np.asarray(out)
    for k in range(3):
        fg = lab == k
        phi = out[k]
        b = reference_boundary(fg)
        if not b.any():  # absent or whole-volume class: defined as all zero
            assert np.all(phi == 0)
            continue
        expected = brute_force_boundary_distance(fg, spacing)
        np.testing.assert_allclose(np.abs(phi), expected, rtol=1e-5, atol=1e-5)
        assert np.all(phi[b] == 0)  # boundary exactly zero
        assert np.all(phi[fg] <= 0) and np.all(phi[~fg] > 0)  # negative inside, positive outside
        # outside = distance to the nearest foreground voxel (scipy EDT of the complement)
        np.testing.assert_allclose(phi[~fg], ndimage.distance_transform_edt(~fg, sampling=spacing)[~fg], rtol=1e-5)
        # inside: within one voxel of Kervadec's edt(fg): edt - max(spacing) <= |phi| < edt
        e = ndimage.distance_transform_edt(fg, sampling=spacing)[fg]
        assert np.all(-phi[fg] < e + 1e-5) and np.all(-phi[fg] >= e - max(spacing) - 1e-5)


def test_signed_distance_hand_worked_1d_line():
    lab = np.zeros((1, 1, 9), dtype=np.int64)
    lab[0, 0, 2:7] = 1  # object voxels 2..6; boundary voxels 2 and 6
    out = np.asarray(SignedDistanceMap(num_classes=2, spacing=(1.0, 0.5))(lab))
    np.testing.assert_allclose(out[1, 0], 0.5 * np.array([2, 1, 0, -1, -2, -1, 0, 1, 2]))
    np.testing.assert_allclose(out[0, 0], 0.5 * np.array([-1, 0, 1, 2, 3, 2, 1, 0, -1]))
    assert isinstance(out, np.ndarray)  # ndarray in -> ndarray out


def test_signed_distance_absent_and_whole_volume_classes_are_zero():
    lab = torch.ones(1, 6, 7, 5, dtype=torch.long)  # class 1 fills the volume, classes 0 and 2 absent
    out = SignedDistanceMap(num_classes=3)(lab)
    assert out.shape == (3, 6, 7, 5) and torch.count_nonzero(out) == 0
    out_u = SignedDistanceMap(num_classes=3, mode="unsigned", normalize=True)(lab)
    assert torch.isfinite(out_u).all() and torch.count_nonzero(out_u) == 0


def test_unsigned_is_abs_of_signed_and_normalize_scales_per_class():
    rng = np.random.default_rng(0)
    lab = torch.as_tensor(ndimage.median_filter(rng.integers(0, 3, (1, 14, 12, 10)), size=(1, 3, 3, 3)))
    sp = (1.5, 1.0, 2.0)
    signed = SignedDistanceMap(num_classes=3, spacing=sp)(lab)
    unsigned = SignedDistanceMap(num_classes=3, spacing=sp, mode="unsigned")(lab)
    torch.testing.assert_close(unsigned, signed.abs())
    norm = SignedDistanceMap(num_classes=3, spacing=sp, normalize=True)(lab)
    peak = signed.abs().flatten(1).amax(1)
    assert torch.all(peak > 0)
    torch.testing.assert_close(norm, signed / peak.view(3, 1, 1, 1))
    torch.testing.assert_close(norm.abs().flatten(1).amax(1), torch.ones(3))


def test_one_hot_input_equals_index_input_and_binary_channel():
    rng = np.random.default_rng(1)
    idx = torch.as_tensor(ndimage.median_filter(rng.integers(0, 3, (1, 16, 16)), size=(1, 5, 5)))
    onehot = torch.nn.functional.one_hot(idx[0], 3).permute(2, 0, 1).float()
    a = SignedDistanceMap(num_classes=3)(idx)
    b = SignedDistanceMap()(onehot)
    torch.testing.assert_close(a, b)
    binary = SignedDistanceMap(num_classes=1)((idx == 2).long())  # sigmoid target: one channel
    torch.testing.assert_close(binary, a[2:3])


def test_spacing_argument_wins_over_affine_and_plain_tensor_uses_voxels():
    lab = np.zeros((1, 10, 10, 10), dtype=np.int64)
    lab[0, 3:7, 3:7, 3:7] = 1
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    from_affine = SignedDistanceMap(num_classes=2)(meta_label(lab, affine=aff))
    voxels = SignedDistanceMap(num_classes=2)(torch.as_tensor(lab))
    forced = SignedDistanceMap(num_classes=2, spacing=1.0)(meta_label(lab, affine=aff))
    torch.testing.assert_close(from_affine.as_tensor(), 2 * voxels)
    torch.testing.assert_close(forced.as_tensor(), voxels)


def test_distance_map_rejects_out_of_range_labels_and_missing_num_classes():
    lab = meta_label(np.array([[[0, 1], [2, 3]]]), filename="/data/brats_001_seg.nii.gz")
    with pytest.raises(ValueError, match=r"brats_001_seg\.nii\.gz.*\{0, 1, 2, 3\}.*num_classes=4"):
        SignedDistanceMap(num_classes=3)(lab)
    with pytest.raises(ValueError, match="num_classes is not set"):
        SignedDistanceMap()(lab)
    with pytest.raises(ValueError, match="mode="):
        SignedDistanceMap(num_classes=2, mode="hausdorff")


# ----------------------------------------------------------------------------- backend choice
def test_backend_choice_and_missing_cupy(monkeypatch):
    assert resolve_backend("scipy", on_cuda=True) == "scipy"
    assert resolve_backend("auto", on_cuda=False) == "scipy"
    with pytest.raises(ValueError, match="backend="):
        resolve_backend("gpu", on_cuda=False)
    monkeypatch.setattr(distance_mod, "_gpu_edt", lambda: None)  # as on this machine: no cupy / cucim
    assert resolve_backend("auto", on_cuda=True) == "scipy"
    with pytest.raises(BackendUnavailableError, match="install cupy") as err:
        SignedDistanceMap(num_classes=2, backend="cupy")
    assert isinstance(err.value, ValueError) and isinstance(err.value, ImportError)
    monkeypatch.setattr(distance_mod, "_gpu_edt", lambda: ndimage.distance_transform_edt)  # pretend installed
    assert resolve_backend("auto", on_cuda=True) == "cupy"
    assert resolve_backend("auto", on_cuda=False) == "scipy"
    assert resolve_backend("cupy", on_cuda=False) == "cupy"


# ----------------------------------------------------------------------------- U-Net weight map
def test_weight_map_equals_formula_on_hand_worked_two_object_case():
    # one row of 12 pixels, objects A = {2, 3} and B = {8, 9}
    lab = np.zeros((1, 1, 12), dtype=np.int64)
    lab[0, 0, [2, 3, 8, 9]] = 1
    d1 = {0: 2, 1: 1, 4: 1, 5: 2, 6: 2, 7: 1, 10: 1, 11: 2}
    d2 = {0: 8, 1: 7, 4: 4, 5: 3, 6: 3, 7: 4, 10: 7, 11: 8}
    w0, sigma = 10.0, 2.0
    wc_bg, wc_fg = 12 / (2 * 8), 12 / (2 * 4)  # N / (K N_k): 0.75 and 1.5
    expected = np.full(12, wc_fg)
    for x in d1:
        expected[x] = wc_bg + w0 * math.exp(-((d1[x] + d2[x]) ** 2) / (2 * sigma**2))
    out = UNetWeightMap(w0=w0, sigma=sigma)(torch.as_tensor(lab))
    assert out.shape == (1, 1, 12) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0, 0].numpy(), expected, rtol=1e-6)
    # same case with 2 mm pixels along the row: distances double, so sigma doubles for the same map
    out_mm = UNetWeightMap(w0=w0, sigma=2 * sigma, spacing=(1.0, 2.0))(torch.as_tensor(lab))
    np.testing.assert_allclose(out_mm[0, 0].numpy(), expected, rtol=1e-6)


def test_weight_map_matches_exact_formula_with_many_objects_3d():
    rng = np.random.default_rng(3)
    lab = np.zeros((22, 20, 18), dtype=np.int64)
    for _ in range(7):
        c = rng.integers(0, 18, 3)
        lab[c[0] : c[0] + 3, c[1] : c[1] + 2, c[2] : c[2] + 3] = rng.integers(1, 3)
    sp, w0, sigma = (1.0, 0.8, 1.5), 10.0, 1.5  # small sigma: the per-object box truncation is exercised
    objects, n = ndimage.label(lab > 0, structure=np.ones((3, 3, 3)))
    assert n >= 3
    dists = np.sort(np.stack([ndimage.distance_transform_edt(objects != k, sampling=sp) for k in range(1, n + 1)]), 0)
    counts = np.bincount(lab.ravel())
    wc = (lab.size / (np.count_nonzero(counts) * counts))[lab]
    expected = wc + (lab == 0) * w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    out = UNetWeightMap(w0=w0, sigma=sigma, spacing=sp)(torch.as_tensor(lab[None]))
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6, atol=2e-6)
    assert abs(float(UNetWeightMap(w0=0.0)(torch.as_tensor(lab[None])).mean()) - 1.0) < 1e-5  # mean w_c is 1


def test_weight_map_fewer_than_two_objects_and_fixed_class_weights():
    lab = np.zeros((1, 8, 8), dtype=np.int64)
    lab[0, 2:4, 2:5] = 2
    out = UNetWeightMap(class_weights=None)(torch.as_tensor(lab))
    torch.testing.assert_close(out, torch.ones(1, 8, 8))  # one object: no border term, w_c = 1
    out = UNetWeightMap(class_weights=[0.1, 5.0, 3.0])(torch.as_tensor(lab))
    torch.testing.assert_close(out[0], torch.as_tensor(np.where(lab[0] == 2, 3.0, 0.1), dtype=torch.float32))
    empty = UNetWeightMap()(torch.zeros(1, 5, 5))
    torch.testing.assert_close(empty, torch.ones(1, 5, 5))
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        UNetWeightMap(class_weights=[1.0, 2.0])(torch.as_tensor(lab))


def test_weight_map_uses_given_instances_for_touching_objects():
    lab = np.zeros((1, 9, 9), dtype=np.int64)
    lab[0, 2:7, 2:4] = 1
    lab[0, 2:7, 4:6] = 1  # touches the first block: one component ...
    inst = np.zeros_like(lab)
    inst[0, 2:7, 2:4], inst[0, 2:7, 4:6] = 1, 2  # ... but two instances
    plain = UNetWeightMap(w0=10, sigma=1, class_weights=None)(torch.as_tensor(lab))
    torch.testing.assert_close(plain, torch.ones(1, 9, 9))
    d = UNetWeightMapd("label", w0=10, sigma=1, class_weights=None, instance_key="inst")
    out = d({"label": torch.as_tensor(lab), "inst": torch.as_tensor(inst)})["label_weight"]
    # background pixel (1, 3): nearest is instance 1 at distance 1, instance 2 at sqrt(1 + 1)
    assert out[0, 1, 3].item() == pytest.approx(1 + 10 * math.exp(-((1 + math.sqrt(2)) ** 2) / 2), rel=1e-6)
    assert torch.all(out[0][lab[0] == 1] == 1)  # no border term on foreground


# ----------------------------------------------------------------------------- lesion instances
def test_instances_counts_sizes_min_size_and_connectivity():
    lab = np.zeros((1, 10, 10, 10), dtype=np.int64)
    lab[0, 0:2, 0:2, 0:2] = 1  # 8 voxels
    lab[0, 5:8, 5:8, 5:8] = 1  # 27 voxels
    lab[0, 9, 0, 9] = 1  # 1 voxel
    lab[0, 2, 2, 2] = 1  # touches the first cube only at a corner
    out = LesionInstances(connectivity=1)(torch.as_tensor(lab))
    assert out.shape == (1, 10, 10, 10) and out.dtype == torch.int64
    assert sorted(np.bincount(out.numpy().ravel())[1:].tolist()) == [1, 1, 8, 27]
    full = LesionInstances()(torch.as_tensor(lab))  # default: full (26) connectivity joins the corner voxel
    assert sorted(np.bincount(full.numpy().ravel())[1:].tolist()) == [1, 9, 27]
    big = LesionInstances(connectivity=1, min_size=8)(torch.as_tensor(lab))
    sizes = np.bincount(big.numpy().ravel())
    assert sizes.size == 3 and sorted(sizes[1:].tolist()) == [8, 27]  # ids renumbered 1..2, no gaps
    removed = np.zeros(lab.shape, dtype=bool)
    removed[0, 9, 0, 9] = removed[0, 2, 2, 2] = True  # the two 1-voxel components
    assert np.array_equal(big.numpy() > 0, (lab != 0) & ~removed)
    for k in (1, 2):  # each id is exactly one of the kept components of the labelled input
        assert len(np.unique(out.numpy()[big.numpy() == k])) == 1


def test_instances_per_class_and_one_hot_input_and_meta():
    lab = np.zeros((1, 6, 6), dtype=np.int64)
    lab[0, 1:3, 1:3] = 1
    lab[0, 1:3, 3:5] = 2  # touches class 1
    lab[0, 4:6, 0:2] = 2
    union = LesionInstances()(meta_label(lab))
    assert union.max().item() == 2 and isinstance(union, MetaTensor) and union.meta["filename_or_obj"]
    per = LesionInstancesd("label", per_class=True)({"label": meta_label(lab)})["label_instances"]
    ids = per.numpy()[0]
    assert per.max().item() == 3
    assert set(np.unique(ids[lab[0] == 1])) == {1}  # class 1's lesion first
    assert set(np.unique(ids[lab[0] == 2])) == {2, 3}
    only2 = LesionInstances(classes=[2])(torch.as_tensor(lab))
    assert only2.max().item() == 2 and np.all(only2.numpy()[0][lab[0] == 1] == 0)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(lab[0]), 3).permute(2, 0, 1)
    torch.testing.assert_close(LesionInstances()(onehot), union.as_tensor())
    with pytest.raises(ValueError, match="connectivity=3 for 2D"):
        LesionInstances(connectivity=3)(torch.as_tensor(lab))


# ----------------------------------------------------------------------------- one-hot
def test_one_hot_and_brats_regions():
    lab = torch.tensor([[[0, 1, 2, 3], [3, 2, 1, 0]]])
    oh = OneHot(num_classes=4)(lab)
    assert oh.dtype == torch.float32 and oh.shape == (4, 2, 4)
    torch.testing.assert_close(oh, torch.nn.functional.one_hot(lab[0], 4).permute(2, 0, 1).float())
    reg = OneHot(regions=[[1, 2, 3], [1, 3], [3]], dtype="float16")(meta_label(lab))
    assert isinstance(reg, MetaTensor) and reg.dtype == torch.float16 and reg.meta["filename_or_obj"]
    wt, tc, et = (reg[i].as_tensor().bool() for i in range(3))
    assert (
        torch.equal(wt, lab[0] > 0) and torch.equal(tc, (lab[0] == 1) | (lab[0] == 3)) and torch.equal(et, lab[0] == 3)
    )
    d = OneHotd("label", num_classes=4, output_keys="label_oh")({"label": lab})
    assert torch.equal(d["label"], lab) and d["label_oh"].shape == (4, 2, 4)


def test_one_hot_errors_name_file_and_values():
    lab = meta_label(np.array([[[0, 1, 2, 4]]]), filename="/data/BraTS_0042_seg.nii.gz")
    with pytest.raises(ValueError, match=r"BraTS_0042_seg\.nii\.gz holds values \{0, 1, 2, 4\}.*unexpected \{4\}"):
        OneHot(regions=[[1, 2, 3], [1, 3], [3]])(lab)
    with pytest.raises(ValueError, match=r"<in-memory label> holds values \{0, 1, 2, 4\}.*num_classes=5"):
        OneHot(num_classes=3)(torch.tensor([[[0, 1, 2, 4]]]))
    with pytest.raises(ValueError, match="already one-hot"):
        OneHot(num_classes=2)(torch.zeros(2, 3, 3))


# ----------------------------------------------------------------------------- validation
def test_validate_label_errors_and_remap():
    mask = np.zeros((1, 4, 4, 4), dtype=np.uint8)
    mask[0, 1:3, 1:3, 1:3] = 255
    lab = meta_label(mask, filename="/data/ms/patient12_mask.nii.gz")
    with pytest.raises(ValueError) as err:
        ValidateLabel(num_classes=2)(lab)
    msg = str(err.value)
    assert "patient12_mask.nii.gz" in msg and "{0, 255}" in msg and "{0, 1}" in msg
    assert "ValidateLabeld(keys, num_classes=2, remap={255: 1})" in msg
    fixed = ValidateLabel(num_classes=2, remap={255: 1})(lab)
    assert (
        isinstance(fixed, MetaTensor)
        and fixed.dtype == torch.uint8
        and fixed.meta["filename_or_obj"] == lab.meta["filename_or_obj"]
    )
    assert set(fixed.unique().tolist()) == {0, 1} and int(fixed.sum()) == 8
    assert torch.equal(fixed.affine, lab.affine)
    with pytest.raises(ValueError, match=r"<in-memory label> holds values \{0, 1, 2, 5\}.*unexpected \{5\}"):
        ValidateLabel(num_classes=3)(torch.tensor([[[0, 1, 2, 5]]]))
    with pytest.raises(ValueError, match=r"non-integer values \{0.5\}.*mode='nearest'"):
        ValidateLabel(num_classes=2)(torch.tensor([[[0.0, 0.5, 1.0]]]))
    ok = torch.tensor([[[0.0, 2.0, 4.0]]])
    assert ValidateLabel(labels=[0, 1, 2, 4])(ok) is ok  # nothing to change: returned as is
    assert ValidateLabel(labels=[0, 1, 2, 4], dtype="int64")(ok).dtype == torch.int64
    with pytest.raises(ValueError, match="not both"):
        ValidateLabel(num_classes=2, labels=[0, 1])


def test_validate_from_nifti_files_names_the_file(tmp_path):
    aff = np.diag([0.9, 0.9, 3.0, 1.0])
    img = np.random.default_rng(0).random((8, 9, 6)).astype(np.float32)
    seg = np.zeros((8, 9, 6), dtype=np.uint8)
    seg[2:5, 2:5, 1:3] = 255
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "sub-01_T1w.nii.gz")
    nib.save(nib.Nifti1Image(seg, aff), tmp_path / "sub-01_mask.nii.gz")
    nib.save(nib.Nifti1Image(seg[:, :7] // 255, aff), tmp_path / "sub-02_mask.nii.gz")
    load = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])
    case1 = load({"image": str(tmp_path / "sub-01_T1w.nii.gz"), "label": str(tmp_path / "sub-01_mask.nii.gz")})
    check = ValidateLabeld("label", num_classes=2, image_key="image")
    with pytest.raises(ValueError, match=r"label 'label' from .*sub-01_mask\.nii\.gz holds values \{0, 255\}"):
        check(case1)
    out = ValidateLabeld("label", num_classes=2, remap={255: 1}, image_key="image")(case1)
    assert set(out["label"].unique().tolist()) == {0, 1}
    case2 = load({"image": str(tmp_path / "sub-01_T1w.nii.gz"), "label": str(tmp_path / "sub-02_mask.nii.gz")})
    with pytest.raises(
        ValueError, match=r"sub-02_mask\.nii\.gz has spatial shape \(8, 7, 6\) but image 'image' has \(8, 9, 6\)"
    ):
        check(case2)
    no_channel = {"image": case2["image"], "label": case2["label"][0]}
    with pytest.raises(ValueError, match="EnsureChannelFirstd"):
        check(no_channel)
    with pytest.raises(ValueError, match="image_key 'img'"):
        ValidateLabeld("label", num_classes=2, image_key="img")(case2)


# ----------------------------------------------------------------------------- MONAI pipelines
def test_compose_crop_cache_dataset_dataloader_keeps_meta_and_true_distances(tmp_path):
    aff = np.diag([1.2, 0.8, 2.0, 1.0])
    shape = (24, 28, 12)
    grid = np.indices(shape)
    files = []
    for i, (cx, r) in enumerate([(8, 4.0), (15, 5.0)]):
        seg = np.zeros(shape, dtype=np.uint8)
        seg[((grid[0] - cx) ** 2 + (grid[1] - 14) ** 2 + (grid[2] * 2 - 12) ** 2) <= r**2] = 1
        seg[18:21, 3:6, 2:5] = 2
        nib.save(nib.Nifti1Image(seg.astype(np.float32), aff), tmp_path / f"c{i}_seg.nii.gz")
        nib.save(nib.Nifti1Image(seg.astype(np.float32) * 100, aff), tmp_path / f"c{i}_img.nii.gz")
        coord = torch.arange(seg.size, dtype=torch.float64).reshape(1, *shape)  # where each voxel came from
        files.append(
            {"image": str(tmp_path / f"c{i}_img.nii.gz"), "label": str(tmp_path / f"c{i}_seg.nii.gz"), "coord": coord}
        )
    extra = ["label_sdf", "label_dt", "label_weight", "label_instances"]
    transform = Compose(
        [
            LoadImaged(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            ValidateLabeld("label", num_classes=3, image_key="image", dtype=torch.int64),
            SignedDistanceMapd("label", num_classes=3),
            SignedDistanceMapd("label", num_classes=3, mode="unsigned"),
            LesionInstancesd("label"),
            UNetWeightMapd("label", instance_key="label_instances"),
            RandCropByPosNegLabeld(
                ["image", "label", "coord", *extra], label_key="label", spatial_size=(10, 10, 6), num_samples=2
            ),
            OneHotd("label", num_classes=3, output_keys="label_onehot"),
        ]
    )
    transform.set_random_state(0)
    ds = CacheDataset(files, transform, cache_rate=1.0, num_workers=0, progress=False)
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (4, 1, 10, 10, 6)
    assert batch["label_sdf"].shape == batch["label_dt"].shape == batch["label_onehot"].shape == (4, 3, 10, 10, 6)
    assert batch["label_weight"].shape == batch["label_instances"].shape == (4, 1, 10, 10, 6)
    for key in ["label", *extra, "label_onehot"]:
        assert isinstance(batch[key], MetaTensor)
        assert all(str(f).endswith("_seg.nii.gz") for f in batch[key].meta["filename_or_obj"])
        torch.testing.assert_close(batch[key].affine[0, :3, :3].float(), torch.diag(torch.tensor([1.2, 0.8, 2.0])))
    # the cropped maps are crops of whole-volume maps with the NIfTI spacing: distances stay true
    for b in range(4):
        case = 0 if "c0_" in batch["label"].meta["filename_or_obj"][b] else 1
        seg = np.asarray(nib.load(files[case]["label"]).dataobj).astype(np.int64)
        full = SignedDistanceMap(num_classes=3, spacing=(1.2, 0.8, 2.0))(torch.as_tensor(seg[None]))
        idx = batch["coord"][b, 0].long().flatten()
        torch.testing.assert_close(batch["label_sdf"][b].as_tensor().flatten(1), full.flatten(1)[:, idx])
        torch.testing.assert_close(batch["label_dt"][b].as_tensor(), batch["label_sdf"][b].as_tensor().abs())
        torch.testing.assert_close(batch["label"][b, 0].as_tensor().flatten(), torch.as_tensor(seg).flatten()[idx])
    # a loss takes the one-hot target directly
    from monai.losses import DiceLoss

    loss = DiceLoss(to_onehot_y=False)(batch["label_onehot"].as_tensor(), batch["label_onehot"].as_tensor())
    assert float(loss) < 1e-4


def test_transforms_pickle_and_instantiate_from_bundle_config():
    from monai.bundle import ConfigParser

    config = {
        "t": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "monai_losses_ext.transforms.ValidateLabeld",
                    "keys": "label",
                    "num_classes": 2,
                    "remap": {"255": 1},
                },
                {
                    "_target_": "monai_losses_ext.transforms.SignedDistanceMapd",
                    "keys": "label",
                    "num_classes": 2,
                    "spacing": [1, 1, 2],
                },
                {"_target_": "monai_losses_ext.transforms.UNetWeightMapd", "keys": "label", "sigma": 3},
                {"_target_": "monai_losses_ext.transforms.LesionInstancesd", "keys": "label", "min_size": 2},
                {
                    "_target_": "monai_losses_ext.transforms.OneHotd",
                    "keys": "label",
                    "num_classes": 2,
                    "dtype": "float32",
                },
            ],
        }
    }
    t = ConfigParser(config).get_parsed_content("t")
    t = pickle.loads(pickle.dumps(t))  # DataLoader workers pickle transforms
    lab = np.zeros((1, 6, 6, 6), dtype=np.int64)
    lab[0, 1:3, 1:3, 1:3] = 255
    out = t({"label": torch.as_tensor(lab)})  # JSON writes the remap key as the string "255"
    assert torch.equal(out["label"][1], torch.as_tensor(lab[0] == 255).float())
    assert out["label"].shape == (2, 6, 6, 6) and out["label_sdf"].shape == (2, 6, 6, 6)
    assert out["label_weight"].shape == out["label_instances"].shape == (1, 6, 6, 6)


def test_validate_labeld_refuses_an_image_label_affine_mismatch():
    from monai.data import MetaTensor

    from monai_losses_ext.transforms import ValidateLabeld

    aff = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.zeros(1, 4, 4, 4), affine=aff, meta={"filename_or_obj": "/d/img.nii.gz"})
    off = aff.clone()
    off[1, 3] = 10.0
    label = MetaTensor(torch.zeros(1, 4, 4, 4), affine=off, meta={"filename_or_obj": "/d/lab.nii.gz"})
    with pytest.raises(ValueError, match=r"lab.nii.gz.*affines differ by up to 10 \(tolerance 0.001\).*label affine"):
        ValidateLabeld("label", num_classes=2, image_key="image")({"image": image, "label": label})
    for allow in (None, False):  # the check is switched off on request
        ValidateLabeld("label", num_classes=2, image_key="image", affine_tolerance=allow)(
            {"image": image, "label": label}
        )
    near = aff.clone()
    near[0, 3] = 1e-4  # header rounding
    ValidateLabeld("label", num_classes=2, image_key="image")(
        {"image": image, "label": MetaTensor(torch.zeros(1, 4, 4, 4), affine=near)}
    )


# -- intensity: image-derived foreground, percentile clipping + z-score; spacing check ---------------------------
def test_otsu_threshold_separates_two_modes():
    from monai_losses_ext.transforms import otsu_threshold

    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(1.0, 0.1, 3000)])
    t = otsu_threshold(v)
    assert ((v > t) != (np.arange(v.size) >= 5000)).mean() < 0.01  # separates the two modes
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


def test_foreground_normalize_nonzero_is_monais_nonzero_channel_wise():
    from monai.transforms import NormalizeIntensity

    from monai_losses_ext.transforms import ForegroundNormalize

    rng = np.random.default_rng(1)
    x = np.zeros((2, 16, 16, 16), np.float32)
    x[:, 3:12, 4:13, 2:14] = rng.uniform(1, 5, (2, 9, 9, 12))
    x[1, :, :, :3] = 0  # a channel with its own zeros
    ours = ForegroundNormalize("nonzero")(torch.from_numpy(x))
    ref = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(x))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_foreground_normalize_holds_with_and_without_skull_stripping():
    """The same phantom skull-stripped (zeros outside the brain) and not (skull, scalp, noisy air): with the
    image-derived foreground the brain intensities after normalisation nearly agree and the lesions keep most of their
    contrast; MONAI's nonzero rule, whose foreground is every voxel of the unstripped image, moves the brain by about
    one standard deviation and leaves the lesions less than half their contrast."""
    from monai_losses_ext.phantoms import generate_case
    from monai_losses_ext.transforms import ForegroundMask, ForegroundNormalize

    stripped = generate_case("lesion", 0, 1, spacing=3.0)
    head = generate_case("lesion", 0, 1, spacing=3.0, skull_strip=False)
    assert (head.image != 0).all() and np.array_equal(stripped.label, head.label)
    brain, lesion = stripped.image[0] > 0, stripped.label > 0
    fg = ForegroundMask()(head.image)[0]
    assert fg[brain].mean() > 0.95 and fg.sum() > 1.1 * brain.sum()  # the head: brain (less dark sulcal CSF) and scalp
    shift, kept = {}, {}
    for method in ("otsu", "nonzero"):
        a, b = ForegroundNormalize(method)(stripped.image), ForegroundNormalize(method)(head.image)
        shift[method] = max(abs(float(a[c][brain].mean() - b[c][brain].mean())) for c in range(2))
        # FLAIR lesion-to-brain contrast in normalised units, not skull-stripped / skull-stripped
        kept[method] = float(b[0][lesion].mean() - b[0][brain].mean()) / float(a[0][lesion].mean() - a[0][brain].mean())
    assert shift["otsu"] < 0.4 and kept["otsu"] > 0.7
    assert shift["nonzero"] > 0.8 and kept["nonzero"] < 0.5  # what the bundles did before, on a full-head image


def test_foreground_normalize_refuses_non_finite_and_empty_images():
    from monai_losses_ext.transforms import ForegroundNormalize

    x = MetaTensor(torch.ones(1, 8, 8, 8), meta={"filename_or_obj": "/data/flat.nii.gz"})
    with pytest.raises(ValueError, match="flat.nii.gz: channel 0 has no foreground"):
        ForegroundNormalize()(x)
    y = torch.rand(1, 8, 8, 8)
    y[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/Inf voxels"):
        ForegroundNormalize()(y)
    with pytest.raises(ValueError, match="foreground method 'otsu2'"):
        ForegroundNormalize("otsu2")


def test_validate_spacing_names_the_file_and_the_range():
    from monai_losses_ext.transforms import ValidateSpacingd

    img = MetaTensor(
        torch.zeros(1, 4, 4, 4),
        affine=torch.diag(torch.tensor([0.001, 0.001, 0.002, 1.0])),
        meta={"filename_or_obj": "/data/case_7.nii.gz"},
    )
    with pytest.raises(
        ValueError,
        match=r"case_7.nii.gz has voxel spacing \[0.001, 0.001, 0.002\] mm, outside the sane range 0.1-10 mm",
    ):
        ValidateSpacingd("image")({"image": img})
    ok = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0])))
    assert ValidateSpacingd("image")({"image": ok})["image"] is ok
    with pytest.raises(ValueError, match="0 < lowest < highest"):
        ValidateSpacingd("image", spacing_range=(2.0, 1.0))


def test_foreground_normalize_sets_the_outside_to_the_foreground_mean():
    from monai_losses_ext.phantoms import generate_case
    from monai_losses_ext.transforms import ForegroundMask, ForegroundNormalize

    case = generate_case("lesion", 0, 2, spacing=4.0)
    far = ~ndimage.binary_dilation(ForegroundMask()(case.image)[0], iterations=2)
    assert far.any()
    zeroed, kept = ForegroundNormalize()(case.image), ForegroundNormalize(outside="keep")(case.image)
    assert (zeroed[:, far] == 0).all() and (kept[:, far] < -1).all()  # raw zeros lie below the foreground mean
    np.testing.assert_array_equal(zeroed[:, ~far], kept[:, ~far])
    with pytest.raises(ValueError, match="outside='none'"):
        ForegroundNormalize(outside="none")
