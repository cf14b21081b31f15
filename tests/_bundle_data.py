"""Tiny MSD-style datasets for the bundle tests (written with nibabel), the small bundle settings they train
with, and a metric whose values are scripted per epoch (to test best-model keeping through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import nibabel as nib

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"lesion": ROOT / "bundles" / "lesion_segmentation", "tumour": ROOT / "bundles" / "tumour_segmentation"}
SHAPE = (24, 28, 20)
AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, 1.5, 0, -30.0], [0, 0, 2.0, -15.0], [0, 0, 0, 1]])  # LAS, anisotropic
# small everything: 16^3 patches, a 3-level U-Net with 4..16 channels, batch 1, one patch per case
TINY = {
    "patch_size": [16, 16, 16], "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0,
    "batch_size": 1, "num_samples": 1, "sw_batch_size": 2, "progress_bar": False, "num_threads": 1,
}  # fmt: skip
EVAL_KEYS = ("patch_size", "channels", "strides", "num_res_units", "sw_batch_size", "num_threads")


def write_case(folder: Path, name: str, task: str, rng, label_override=None) -> dict:
    nch = 2 if task == "lesion" else 4
    g = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).astype(float)
    centre = np.array(SHAPE) / 2
    head = (((g - centre) / (np.array(SHAPE) * 0.45)) ** 2).sum(-1) < 1
    label = np.zeros(SHAPE, np.uint8)
    for _ in range(rng.integers(1, 4)):
        c = centre + rng.uniform(-0.2, 0.2, 3) * np.array(SHAPE)
        r = rng.uniform(2.0, 3.5)
        ball = (((g - c) / r) ** 2).sum(-1) < 1
        if task == "lesion":
            label[ball] = 1
        else:
            label[((((g - c) / (1.6 * r)) ** 2).sum(-1) < 1) & (label == 0)] = 2  # oedema shell
            label[ball] = 1  # necrotic core
            label[ball & ((((g - c) / (0.6 * r)) ** 2).sum(-1) >= 1)] = 3  # enhancing rim
    if label_override is not None:
        label = label_override(label)
    image = np.zeros(SHAPE + (nch,), np.float32)
    for ch in range(nch):
        image[..., ch] = head * (100 + 10 * ch) + (label > 0) * (80 - 20 * ch) + rng.normal(0, 3, SHAPE)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, AFFINE), str(folder / "imagesTr" / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, AFFINE), str(folder / "labelsTr" / f"{name}.nii.gz"))
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def write_dataset(folder: Path, task: str, n: int = 4, seed: int = 0, bad: dict | None = None) -> Path:
    rng = np.random.default_rng(seed)
    labels = (
        {"0": "background", "1": "lesion"}
        if task == "lesion"
        else {"0": "background", "1": "necrotic tumour core", "2": "peritumoral oedema", "3": "enhancing tumour"}
    )
    items = [write_case(folder, f"case_{i:03d}", task, rng, (bad or {}).get(i)) for i in range(n)]
    (folder / "dataset.json").write_text(json.dumps({"name": task, "labels": labels, "training": items, "test": []}))
    return folder




class ScriptedMetric:
    """Stands in for the key validation metric: at validation of epoch e it reports ``values[e - 1]``
    (an ignite metric in the ways MONAI's evaluator uses one), so a test knows which epoch is best."""

    def __init__(self, values, output_transform=None) -> None:
        self.values = [float(v) for v in values]

    def attach(self, engine, name: str) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__(name, self.values[e.state.epoch - 1]))
