"""The bundles read what scanners and other tools write, through MONAI's ITKReader (the ``itk`` package of the
``bundle`` extra): MHA, NRRD and DICOM series written with SimpleITK, on an oblique, anisotropic grid. One tiny
training run through the bundle CLI, then inference on an MHA file and a DICOM series: each prediction lies on its
input's voxel grid (shape and RAS affine as ITK reads the input), and case names carry no format suffix."""

from __future__ import annotations

import csv
import json
import locale
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from _bundle_data import EVAL_KEYS, TINY, run, write_dataset

LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (ITK's physical frame)
_C, _S = np.cos(np.radians(12)), np.sin(np.radians(12))
OBLIQUE = np.array([[-1.2 * _C, -1.5 * _S, 0, 20.0], [-1.2 * _S, 1.5 * _C, 0, -30.0], [0, 0, 2.5, -15.0], [0, 0, 0, 1]])


def _to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A nibabel-style (i, j, k) array and RAS affine as a SimpleITK image on the same physical grid."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    lin = LPS @ affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lin / spacing).flatten().tolist())
    img.SetOrigin((LPS @ affine[:3, 3]).tolist())
    return img


def _ras_affine(img: sitk.Image) -> np.ndarray:
    """The RAS affine of a SimpleITK image (what MONAI's ITKReader gives with ``affine_lps_to_ras=True``)."""
    lin = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = LPS @ lin, LPS @ np.asarray(img.GetOrigin())
    return out


def _write_dicom_series(img: sitk.Image, folder: Path) -> None:
    """One 16-bit MR slice file per z index, with the position and orientation tags a series reader sorts by.

    SimpleITK's DICOM writer (GDCM) sets the process's C locale and leaves it set: Python's default text encoding
    becomes ASCII for every later test of this process, so the locale is put back afterwards."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(img, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(img: sitk.Image, folder: Path) -> None:
    folder.mkdir(parents=True)
    img = sitk.Cast(img, sitk.sitkInt16)
    d = img.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.1." + str(zlib.crc32(str(folder).encode()))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(img.GetDepth()):
        s = img[:, :, z]
        tags = {
            "0008|0060": "MR",
            "0008|0008": "DERIVED\\SECONDARY",
            "0020|000d": uid + ".0",  # study
            "0020|000e": uid + ".1",  # series
            "0020|0037": "\\".join(f"{v:.8f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0013": str(z + 1),
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
        }
        for k, v in tags.items():
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(s)


@pytest.fixture(scope="module")
def itk_dataset(tmp_path_factory) -> Path:
    """5 one-channel cases: MHA (0, 1) and NRRD (2) for training and validation, a DICOM series (3) and an MHA
    file (4) as the unlabelled test images."""
    src = write_dataset(tmp_path_factory.mktemp("nifti"), "lesion", n=5, affines={i: OBLIQUE for i in range(5)})
    out = tmp_path_factory.mktemp("itk")
    training, test = [], []
    for i, ext in enumerate([".mha", ".mha", ".nrrd", "dicom", ".mha"]):
        name = f"case_{i:03d}"
        image = nib.load(src / "imagesTr" / f"{name}.nii.gz")
        label = nib.load(src / "labelsTr" / f"{name}.nii.gz")
        flair = _to_sitk(np.asarray(image.dataobj)[..., 0], image.affine)
        if ext == "dicom":
            _write_dicom_series(flair, out / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
            continue
        folder = "imagesTs" if i == 4 else "imagesTr"
        (out / folder).mkdir(exist_ok=True)
        sitk.WriteImage(flair, str(out / folder / f"{name}{ext}"))
        if i == 4:
            test.append(f"./imagesTs/{name}{ext}")
            continue
        (out / "labelsTr").mkdir(exist_ok=True)
        sitk.WriteImage(_to_sitk(np.asarray(label.dataobj), label.affine), str(out / "labelsTr" / f"{name}{ext}"))
        training.append({"image": f"./imagesTr/{name}{ext}", "label": f"./labelsTr/{name}{ext}"})
    meta = {"name": "itk formats", "modality": {"0": "FLAIR"}, "labels": {"0": "background", "1": "lesion"}}
    (out / "dataset.json").write_text(json.dumps({**meta, "training": training, "test": test}))
    return out


@pytest.mark.slow
def test_mha_nrrd_dicom_train_evaluate_and_infer_on_the_input_grid(itk_dataset, tmp_path):
    one_channel = {"in_channels": 1, "modalities": ["FLAIR"], "max_cases": None}
    run(tmp_path, itk_dataset, epochs=1, **one_channel)
    assert (tmp_path / "models" / "model.pt").is_file()

    small = {k: TINY[k] for k in EVAL_KEYS}
    run(tmp_path, itk_dataset, ("train.json", "evaluate.json"), **small, **one_channel)
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case_000", "case_001", "case_002"]  # no ".mha" / ".nrrd"
    assert all(0.0 <= float(r["dice_lesion"]) <= 1.0 for r in rows)

    run(tmp_path, itk_dataset, ("train.json", "inference.json"), **small, **one_channel)
    preds = {p.name: p for p in (tmp_path / "pred").glob("*.nii.gz")}
    assert sorted(preds) == ["case_003_seg.nii.gz", "case_004_seg.nii.gz"], sorted(preds)
    series = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(itk_dataset / "imagesTs" / "case_003"))
    inputs = {
        "case_003_seg.nii.gz": sitk.ReadImage(series),
        "case_004_seg.nii.gz": sitk.ReadImage(str(itk_dataset / "imagesTs" / "case_004.mha")),
    }
    for name, image in inputs.items():
        pred = nib.load(preds[name])
        assert pred.shape == image.GetSize(), name
        np.testing.assert_allclose(pred.affine, _ras_affine(image), atol=1e-4, err_msg=name)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}


def test_writing_the_dicom_series_leaves_the_locale_as_it_was(tmp_path):
    before = locale.getpreferredencoding(False)
    _write_dicom_series(_to_sitk(np.zeros((4, 4, 3), np.float32), OBLIQUE), tmp_path / "s")
    assert len(list((tmp_path / "s").glob("*.dcm"))) == 3
    assert locale.getpreferredencoding(False) == before
