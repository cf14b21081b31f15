"""Tiny MSD-style datasets for the bundle tests (written with nibabel), the small bundle settings they train
with, and a metric whose values are scripted per epoch (to test best-model keeping through the CLI)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_losses_ext import bundle as bu

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"lesion": ROOT / "bundles" / "lesion_segmentation", "tumour": ROOT / "bundles" / "tumour_segmentation"}
SHAPE = (24, 28, 20)
AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, 1.5, 0, -30.0], [0, 0, 2.0, -15.0], [0, 0, 0, 1]])  # LAS, anisotropic
# small everything: 16^3 patches, a 3-level U-Net with 4..16 channels, batch 1, one patch per case
TINY = {
    "patch_size": [16, 16, 16],
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 0,
    "batch_size": 1,
    "num_samples": 1,
    "sw_batch_size": 2,
    "progress_bar": False,
    "num_threads": 1,
}
EVAL_KEYS = ("patch_size", "channels", "strides", "num_res_units", "sw_batch_size", "num_threads")


def write_case(folder: Path, name: str, task: str, rng, label_override=None, affine=None, scalp: bool = False) -> dict:
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
    # not skull-stripped (scalp=True): a bright shell around the head and Rician-like noise in the air
    shell = (((((g - centre) / (np.array(SHAPE) * 0.49)) ** 2).sum(-1) < 1) & ~head) if scalp else np.zeros(SHAPE, bool)
    for ch in range(nch):
        image[..., ch] = head * (100 + 10 * ch) + (label > 0) * (80 - 20 * ch) + rng.normal(0, 3, SHAPE) + shell * 150
        if scalp:
            image[..., ch] = np.abs(image[..., ch] + rng.normal(0, 8, SHAPE))
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    aff = AFFINE if affine is None else np.asarray(affine, dtype=float)
    nib.save(nib.Nifti1Image(image, aff), str(folder / "imagesTr" / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, aff), str(folder / "labelsTr" / f"{name}.nii.gz"))
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def write_dataset(
    folder: Path,
    task: str,
    n: int = 4,
    seed: int = 0,
    bad: dict | None = None,
    affines: dict | None = None,
    scalp: bool = False,
) -> Path:
    """``n`` cases; ``bad`` {index: label -> label} damages labels, ``affines`` {index: 4x4} gives cases
    their own voxel grid, ``scalp`` writes images that are not skull-stripped."""
    rng = np.random.default_rng(seed)
    labels = (
        {"0": "background", "1": "lesion"}
        if task == "lesion"
        else {"0": "background", "1": "necrotic tumour core", "2": "peritumoral oedema", "3": "enhancing tumour"}
    )
    items = [
        write_case(folder, f"case_{i:03d}", task, rng, (bad or {}).get(i), (affines or {}).get(i), scalp)
        for i in range(n)
    ]
    (folder / "dataset.json").write_text(json.dumps({"name": task, "labels": labels, "training": items, "test": []}))
    return folder


TESTS = Path(__file__).resolve().parent


def command(root: Path, data_dir: Path, configs=("train.json",), task="lesion", **overrides) -> list[str]:
    """The ``python -m monai.bundle run`` command of a tiny run (3 cases: 2 train, 1 validation)."""
    args = {**TINY, "dataset_dir": str(data_dir), "bundle_root": str(root), "max_cases": 3, "num_val": 1, **overrides}
    return bu.bundle_command(BUNDLES[task], list(configs), args)


def free_port() -> int:
    """A TCP port free on localhost (for a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launcher: list[str], root: Path, data_dir: Path, task="lesion", **overrides) -> list[str]:
    """``torchrun <launcher> -m monai.bundle run`` on train.json + multi_gpu_train.json (see :func:`command`)."""
    cmd = command(root, data_dir, ("train.json", "multi_gpu_train.json"), task, **overrides)
    return [sys.executable, "-m", "torch.distributed.run", *launcher, *cmd[1:]]


def env(extra_path: Path | None = None, **kv) -> dict:
    e = bu.child_env(threads=1)
    e["PYTHONPATH"] = os.pathsep.join(
        [p for p in (str(extra_path) if extra_path else "", str(TESTS), e.get("PYTHONPATH", "")) if p]
    )
    return {**e, **{k: str(v) for k, v in kv.items()}}


def run(
    root, data_dir, configs=("train.json",), environ=None, expect_ok=True, task="lesion", **overrides
) -> subprocess.CompletedProcess:
    """Run a bundle through its CLI, as a user does; asserts a clean success, or with ``expect_ok=False`` a
    clean failure (no abort at exit)."""
    res = subprocess.run(
        command(root, data_dir, configs, task, **overrides),
        env=environ or env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        cwd=str(BUNDLES[task]),
    )
    out = res.stdout + res.stderr
    if expect_ok:
        assert res.returncode == 0, out[-4000:]
    else:
        assert res.returncode not in (0, -6, 134), out[-4000:]  # failed, but cleanly: no abort at exit
    return res


class ScriptedMetric:
    """Stands in for the key validation metric: at validation of epoch e it reports ``values[e - 1]``
    (an ignite metric in the ways MONAI's evaluator uses one), so a test knows which epoch is best."""

    def __init__(self, values, output_transform=None) -> None:
        self.values = [float(v) for v in values]

    def attach(self, engine, name: str) -> None:
        from ignite.engine import Events

        engine.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__(name, self.values[e.state.epoch - 1])
        )
