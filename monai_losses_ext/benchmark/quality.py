"""Quality: train the same 3D U-Net (the lesion or tumour bundle) with each loss x seed under one schedule,
predict the held-out test cases, score them, and report with bootstrap intervals and a paired comparison
against a baseline loss.

Splits: the labelled cases of ``dataset.json`` in their listed order; the last ``num_test`` are the **test**
cases (never seen in training or model selection); of the others, the bundle holds the last ``num_val`` out
for validation (it keeps the checkpoint with the best validation Dice) and trains on the rest. Every run
sees the same splits; seeds change the network's initialisation and the patch sampling.

Site shift: with ``sites`` (names of :data:`monai_losses_ext.phantoms.SITES`, e.g. ``scanner``, ``site_c``), every
trained model is also scored on ``num_site_cases`` fresh phantoms of each shifted site (their own seed, so no
subject shares a training case's anatomy), through the bundle's inference and the same scoring; the report puts
the in-domain test cases and the sites side by side. A site added later is scored for the stored runs without
training them again.

Resumable: each run lives in ``<out>/runs/<loss>/seed<k>/`` with its settings (``run.json``) and, once
scored, its per-case metrics (``result.json``). Running the command again skips scored runs, continues an
interrupted training from its last epoch checkpoint, and starts over a run whose settings changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import metrics as M
from ..bundle import (
    atomic_write_json,
    bundle_dir,
    case_name,
    child_env,
    msd_datalist,
    read_history,
    run_bundle,
    score_label_file,
    structures_of,
)

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["Preset", "PRESETS", "Study"]

# The schedule of the CPU preset (and of scripts/demo.py): a few minutes per run on 2 CPU cores.
CPU_SCHEDULE = {
    "patch_size": [48, 48, 48],
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "batch_size": 2,
    "num_samples": 2,
    "pos_fraction": 0.8,
    "learning_rate": 0.003,
    "val_interval": 5,
    "sw_batch_size": 4,
    "log_every": 20,
    "progress_bar": False,
}


@dataclass
class Preset:
    """A study: which losses and seeds, how long, on which data and with which bundle schedule.

    The named presets are in ``PRESETS`` (``cpu``, ``gpu``, ``demo``, ``tiny``); change one with
    ``dataclasses.replace(PRESETS["cpu"], epochs=10)``.

    Attributes:
        losses: the arms compared: the bundle's ``loss_name`` (registry names such as ``"dice_ce"``, or dotted
            paths of a loss class such as ``"monai.losses.DiceLoss"``), optionally followed by ``@`` and a variant
            name (``"dice_ce@batch"``) whose arguments ``loss_args`` gives. `Study` puts ``baseline`` first
            when it is missing.
        seeds: the training seeds; every loss is trained once per seed (the seed changes the network's
            initialisation and the patch sampling, not the splits).
        epochs: training epochs of every run.
        num_cases: lesion or tumour phantoms generated (seed 0) when the study is given no dataset.
        num_test: the last ``num_test`` labelled cases of ``dataset.json``: the test set.
        num_val: the validation cases (checkpoint choice), the ``num_val`` cases before the test cases.
        spacing: voxel size in mm of the generated phantoms.
        schedule: bundle overrides of every run's training and inference (``patch_size``, ``channels``,
            ``batch_size``, ``learning_rate``...); a ``label_remap`` there is also applied when scoring.
        phantom_options: task options of the generated phantoms, training data and shifted sites alike (e.g.
            ``{"n_lesions": (3, 8)}``, see ``monai_losses_ext.phantoms.LESION_DEFAULTS``).
        threads: CPU threads of every run, and processes generating phantoms; 0: all cores.
        baseline: the loss every other loss is paired against in the report.
        size_edges: lesion-size group edges in voxels for the sensitivity by size: ``(10, 50)`` gives the
            groups ``<10``, ``10-50`` and ``>50``.
        sites: names of shifted phantom sites (``monai_losses_ext.phantoms.SITES``, e.g. ``"scanner"``) every
            trained model is also scored on; empty: in-domain test cases only.
        num_site_cases: phantoms generated per shifted site.
        loss_args: the loss arguments of an arm (the bundle's ``loss_args``), by arm, e.g.
            ``{"dice_ce@batch": {"batch": True}}``; arms not listed use the loss's defaults.
        score_validation: also score the validation cases with each run's selected checkpoint (as the test
            cases), for decisions that may read validation scores only (docs/study/protocol.md).
    """

    losses: list[str]
    seeds: list[int]
    epochs: int
    num_cases: int  # phantoms generated when no --data is given
    num_test: int
    num_val: int
    spacing: float  # phantom voxel size (mm)
    schedule: dict = field(default_factory=dict)
    phantom_options: dict = field(default_factory=dict)
    threads: int = 2
    baseline: str = "monai.losses.DiceLoss"
    size_edges: tuple[int, ...] = (10, 50)
    sites: tuple[str, ...] = ()  # shifted phantom sites every model is also scored on
    num_site_cases: int = 12
    loss_args: dict[str, dict] = field(default_factory=dict)
    score_validation: bool = False


PRESETS: dict[str, Preset] = {
    # about 30 minutes on 2 CPU cores: 5 losses x 2 seeds, 30 epochs on 16 training phantoms, 12 test cases
    "cpu": Preset(
        losses=["monai.losses.DiceLoss", "dice_ce", "dice_focal", "focal_tversky", "blob"],
        seeds=[0, 1],
        epochs=30,
        num_cases=32,
        num_test=12,
        num_val=4,
        spacing=1.5,
        schedule=CPU_SCHEDULE,
    ),
    # a GPU study: 1 mm phantoms, 96^3 patches, a wider U-Net, 8 losses x 3 seeds, 150 epochs
    "gpu": Preset(
        losses=[
            "monai.losses.DiceLoss",
            "dice",
            "dice_ce",
            "dice_focal",
            "tversky",
            "focal_tversky",
            "unified_focal",
            "blob",
        ],
        seeds=[0, 1, 2],
        epochs=150,
        num_cases=80,
        num_test=24,
        num_val=8,
        spacing=1.0,
        threads=0,
        schedule={
            **CPU_SCHEDULE,
            "patch_size": [96, 96, 96],
            "channels": [32, 64, 128, 256],
            "num_res_units": 2,
            "num_samples": 4,
            "learning_rate": 0.002,
            "val_interval": 10,
            "num_workers": 4,
        },
    ),
    # the demo's budget (scripts/demo.py: 40 epochs on 20 training phantoms at 1.5 mm), scored in-domain and on two
    # shifted sites: the recipe comparison of README's site-shift table (about 6 min per run on 2 CPU cores)
    "demo": Preset(
        losses=["dice_ce"],
        seeds=[0, 1],
        epochs=40,
        num_cases=40,
        num_test=16,
        num_val=4,
        spacing=1.5,
        schedule=CPU_SCHEDULE,
        baseline="dice_ce",
        sites=("scanner", "site_c"),
        num_site_cases=16,
    ),
    # seconds: a smoke test of the whole pipeline (tests use it)
    "tiny": Preset(
        losses=["monai.losses.DiceLoss", "dice_ce"],
        seeds=[0],
        epochs=2,
        num_cases=5,
        num_test=2,
        num_val=1,
        spacing=4.0,
        threads=1,
        phantom_options={"n_lesions": (3, 8), "empty_fraction": 0.0},
        schedule={
            "patch_size": [16, 16, 16],
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "num_res_units": 0,
            "batch_size": 1,
            "num_samples": 1,
            "val_interval": 1,
            "sw_batch_size": 2,
            "progress_bar": False,
        },
    ),
}
"""The named studies of ``python -m monai_losses_ext.benchmark --preset``.

* ``cpu``: 5 losses x 2 seeds, 30 epochs on 16 training phantoms at 1.5 mm, 12 test cases (about 30 minutes on
  2 CPU cores);
* ``gpu``: 8 losses x 3 seeds, 150 epochs on 1 mm phantoms, 96³ patches and a wider U-Net;
* ``demo``: ``dice_ce`` x 2 seeds with the demo's budget, scored in-domain and on the ``scanner`` and
  ``site_c`` sites;
* ``tiny``: seconds, a smoke test of the whole pipeline.
"""


def loss_name(arm: str) -> str:
    """The bundle's ``loss_name`` of an arm: the arm without its ``@variant`` (``"dice_ce@batch"`` ->
    ``"dice_ce"``).

    Args:
        arm: an entry of ``Preset.losses``.

    Returns:
        The loss name or dotted path.
    """
    return arm.split("@", 1)[0]


def slug(loss: str) -> str:
    """A folder name for a loss name or dotted path."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", loss).strip("_")


def site_seed(site: str) -> int:
    """The generator seed of a shifted site's test phantoms: distinct from the training data's (0)."""
    from ..phantoms import SITES

    if site not in SITES:
        raise ValueError(f"unknown site {site!r}: use one of {sorted(SITES)}")
    return 1000 + sorted(SITES).index(site)


def _write_json(path: Path, obj: Any) -> None:
    """Written whole or not at all (an interrupted write never leaves a half file that looks finished)."""
    atomic_write_json(obj, str(path), indent=1)


@dataclass
class Study:
    """One study: a preset (possibly changed by the command line), the data, and the output folder.

    ``Study(PRESETS["tiny"], "runs/tiny").run()`` trains and scores every loss x seed (each run in a child
    process of the bundle) and returns the results that `monai_losses_ext.benchmark.report.write_report`
    turns into ``report.md``; running it again reuses the stored runs.

    Args:
        preset: what to run. When ``preset.baseline`` is not among ``preset.losses`` it is put first, in a copy.
        out: the output folder (made absolute): ``runs/<loss>/seed<k>/``, ``study.json``, generated data
            under ``data/``.
        task: ``"lesion"`` or ``"tumour"``: which bundle is trained and how its labels are scored (binary
            lesions, or the tumour regions TC, WT and ET).
        data: an MSD-layout dataset folder (``dataset.json``, labelled ``training`` cases); None: phantoms
            of ``task`` are generated under ``out/data``.
        bundles: the folder that holds the bundles; None: the shipped ones (see
            ``monai_losses_ext.bundle.bundle_dir``).
        log: called with each progress message (when no progress bar shows it).

    Raises:
        ValueError: ``preset.losses`` or ``preset.seeds`` repeat a value, ``preset.size_edges`` is not an
            increasing sequence of positive voxel counts, or ``preset.sites`` names an unknown site.
    """

    preset: Preset
    out: Path
    task: str = "lesion"
    data: Path | None = None  # an MSD-layout dataset; None: generate phantoms under out/data
    bundles: Path | None = None
    log: Callable[[str], Any] = print

    def __post_init__(self) -> None:
        self.out = Path(self.out).resolve()
        if self.data is not None:
            self.data = Path(self.data).resolve()
        if self.preset.baseline not in self.preset.losses:
            self.preset = replace(self.preset, losses=[self.preset.baseline, *self.preset.losses])
        if len(set(self.preset.losses)) != len(self.preset.losses) or len(set(self.preset.seeds)) != len(
            self.preset.seeds
        ):
            raise ValueError(f"losses {self.preset.losses} and seeds {self.preset.seeds} must not repeat")
        p = self.preset
        unknown = sorted(set(p.loss_args) - set(p.losses))
        if unknown:
            raise ValueError(f"loss_args names arms {unknown} that are not among the losses {p.losses}")
        bare = [a for a in p.losses if "@" in a and a not in p.loss_args]
        if bare:
            raise ValueError(f"arms {bare} name a variant but loss_args gives it no arguments")
        folders = [slug(a) for a in p.losses]
        if len(set(folders)) != len(folders):
            raise ValueError(f"losses {p.losses} share run folder names {folders}: rename a variant")
        M.size_group_labels(self.preset.size_edges)  # validates the edges early
        for site in self.preset.sites:
            site_seed(site)  # validates the names early

    # -- data ------------------------------------------------------------------------------------------
    def dataset_dir(self) -> Path:
        """The dataset of the study.

        Returns:
            ``data`` when given, else the phantom folder ``out/data/<task>_<num_cases>cases_<spacing>mm_seed0``
                (which may not exist yet, see `ensure_data`).
        """
        if self.data is not None:
            return self.data
        p = self.preset
        return self.out / "data" / f"{self.task}_{p.num_cases}cases_{p.spacing:g}mm_seed0"

    def _generate(self, d: Path, num_cases: int, what: str, **kwargs) -> None:
        """Phantoms into ``d`` through a ``.partial`` folder renamed when complete (an interrupted generation
        is started again, never taken for data)."""
        from ..phantoms import write_dataset

        p = self.preset
        self.log(f"generating {num_cases} {self.task} phantoms {what} into {d}")
        tmp = d.with_name(d.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        write_dataset(
            str(tmp),
            self.task,
            num_cases,
            workers=p.threads or os.cpu_count() or 1,
            progress=False,
            **kwargs,
            **p.phantom_options,
        )
        os.replace(tmp, d)

    def ensure_data(self) -> Path:
        """The dataset of the study, its phantoms generated first when they are needed and not there yet.

        Returns:
            The folder of `dataset_dir`.
        """
        d = self.dataset_dir()
        if self.data is None and not (d / "dataset.json").exists():
            p = self.preset
            self._generate(d, p.num_cases, f"at {p.spacing:g} mm", seed=0, spacing=p.spacing)
        return d

    def site_dir(self, site: str) -> Path:
        """The folder of a shifted site's test phantoms (which may not exist yet, see `ensure_site_data`).

        Args:
            site: a site name of ``monai_losses_ext.phantoms.SITES``.

        Returns:
            ``out/data/<task>_<site>_<num_site_cases>cases_seed<seed>``, the seed that of `site_seed`.

        Raises:
            ValueError: ``site`` is not a known site.
        """
        p = self.preset
        return self.out / "data" / f"{self.task}_{site}_{p.num_site_cases}cases_seed{site_seed(site)}"

    def ensure_site_data(self, site: str) -> Path:
        """The shifted site's test phantoms (generated once; the site's own resolution).

        Args:
            site: a site name of ``monai_losses_ext.phantoms.SITES``.

        Returns:
            The folder of `site_dir`, holding ``num_site_cases`` phantoms of the site.

        Raises:
            ValueError: ``site`` is not a known site.
        """
        d = self.site_dir(site)
        if not (d / "dataset.json").exists():
            self._generate(d, self.preset.num_site_cases, f"of site '{site}'", seed=site_seed(site), site=site)
        return d

    def splits(self) -> tuple[list[dict], list[dict]]:
        """(training + validation cases, test cases).

        Returns:
            ``(train_val, test)``: the labelled cases of ``dataset.json`` in their listed order as
                ``{"image": path, "label": path}`` dicts, the last ``num_test`` of them in ``test``.

        Raises:
            ValueError: the dataset has fewer than ``num_test + num_val + 1`` labelled cases.
            FileNotFoundError: the dataset folder, its ``dataset.json`` or a listed file is missing.
        """
        cases = msd_datalist(str(self.ensure_data()), "all", task=self.task)
        p = self.preset
        if len(cases) < p.num_test + p.num_val + 1:
            raise ValueError(
                f"{self.dataset_dir()} has {len(cases)} labelled cases; the study needs at least "
                f"{p.num_test + p.num_val + 1} ({p.num_test} test, {p.num_val} validation, 1 training): "
                "lower --num-test / --num-val or add cases"
            )
        return cases[: len(cases) - p.num_test], cases[len(cases) - p.num_test :]

    # -- runs ------------------------------------------------------------------------------------------
    def run_dir(self, loss: str, seed: int) -> Path:
        """The folder of one run.

        Args:
            loss: a loss of the preset.
            seed: a seed of the preset.

        Returns:
            ``out/runs/<loss as a folder name>/seed<seed>``.
        """
        return self.out / "runs" / slug(loss) / f"seed{seed}"

    def settings(self, loss: str, seed: int) -> dict:
        """Everything that decides a run's result; a stored run with other settings is started over.

        Args:
            loss: a loss of the preset.
            seed: a seed of the preset.

        Returns:
            A JSON-serialisable dict: the loss, seed, task, epochs, schedule, dataset folder, the names of the
                training + validation and test cases, ``num_val`` and ``size_edges``.
        """
        trainval, test = self.splits()
        p = self.preset
        return {
            "loss": loss,
            "seed": seed,
            "task": self.task,
            "epochs": p.epochs,
            "schedule": p.schedule,
            "dataset_dir": str(self.dataset_dir()),
            "train_val_cases": [case_name(c["image"]) for c in trainval],
            "num_val": p.num_val,
            "test_cases": [case_name(c["image"]) for c in test],
            "size_edges": list(p.size_edges),
            # only when given, so the runs of arms without arguments keep the fingerprints they were stored with
            **({"loss_args": p.loss_args[loss]} if p.loss_args.get(loss) else {}),
        }

    @staticmethod
    def fingerprint(settings: dict) -> str:
        """A short hash of a run's `settings`, stored with the run to tell whether it is still valid.

        Args:
            settings: a dict of `settings`.

        Returns:
            16 hexadecimal characters of the SHA-256 of ``settings`` as JSON with sorted keys.
        """
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def load_result(self, loss: str, seed: int) -> dict | None:
        """The stored result of a run when it exists and matches the current settings.

        Args:
            loss: a loss of the preset.
            seed: a seed of the preset.

        Returns:
            The run's ``result.json`` as a dict, or None when there is none or it was made with other settings.
        """
        path = self.run_dir(loss, seed) / "result.json"
        if not path.exists():
            return None
        res = json.loads(path.read_text(encoding="utf-8"))
        return res if res.get("fingerprint") == self.fingerprint(self.settings(loss, seed)) else None

    def run_one(self, loss: str, seed: int, epoch_bar: tqdm | None = None) -> tuple[dict, bool]:
        """Train, predict and score one run; returns ``(result, was_stored)``.

        A stored result with the current settings is reused (only the sites it lacks are scored); a run
        folder with other settings is deleted and started over; an interrupted training resumes from its
        last checkpoint.

        Args:
            loss: a loss of the preset.
            seed: a seed of the preset.
            epoch_bar: a progress bar that is reset for this run and follows its finished epochs; None: none.

        Returns:
            ``(result, was_stored)``: the run's result (``loss``, ``seed``, ``epochs``, ``train_seconds``,
                ``infer_seconds``, one metrics row per test case in ``cases`` and, with shifted sites, the
                rows of each site in ``sites``), and whether it was read back rather than trained now.

        Raises:
            RuntimeError: the training or an inference run of the bundle failed (the end of its log is in
                the message).
            ValueError: the dataset is too small for the splits, ``task`` is not ``"lesion"`` or ``"tumour"``,
                or a prediction and its label do not match (label values outside the task's labels without a
                ``label_remap``, or another grid).
            FileNotFoundError: the bundle or the dataset is missing, or the inference wrote no prediction for
                a test case.
        """
        stored = self.load_result(loss, seed)
        if stored is not None:
            return self.score_sites(loss, seed, stored), True
        settings = self.settings(loss, seed)
        fp = self.fingerprint(settings)
        rd = self.run_dir(loss, seed)
        run_json = rd / "run.json"
        if run_json.exists() and json.loads(run_json.read_text(encoding="utf-8")).get("fingerprint") != fp:
            self.log(f"{rd.relative_to(self.out)}: settings changed since it was stored; starting it over")
            shutil.rmtree(rd)
        rd.mkdir(parents=True, exist_ok=True)
        _write_json(run_json, {"fingerprint": fp, "settings": settings})

        p, bundle, data = self.preset, bundle_dir(self.task, self.bundles), self.dataset_dir()
        env = child_env(p.threads)
        trainval, test = self.splits()
        history = rd / "logs" / "history.jsonl"

        def epochs_done() -> int:
            train, _ = read_history(str(history))
            return int(train[-1]["epoch"]) if train else 0

        def poll() -> None:
            if epoch_bar is not None:
                epoch_bar.n = epochs_done()
                epoch_bar.refresh()

        if epoch_bar is not None:
            epoch_bar.reset(total=p.epochs)
            epoch_bar.set_description(f"{loss} seed {seed}")
        train_s = 0.0
        if not ((rd / "models" / "model.pt").exists() and epochs_done() >= p.epochs):
            overrides = {
                **p.schedule,
                "bundle_root": str(rd),
                "dataset_dir": str(data),
                "max_cases": len(trainval),
                "num_val": p.num_val,
                "epochs": p.epochs,
                "loss_name": loss_name(loss),
                **(
                    {"loss_args": {**p.schedule.get("loss_args", {}), **p.loss_args[loss]}}
                    if p.loss_args.get(loss)
                    else {}
                ),
                "seed": seed,
                "num_threads": p.threads,
                "resume": True,
                "progress_bar": False,
            }
            train_s = run_bundle(bundle, ["train.json"], overrides, rd / "train.log", env, poll)
        infer_s = self._infer(rd, test, data, rd / "test_pred", rd / "inference.log")
        result = {
            "fingerprint": fp,
            "loss": loss,
            "seed": seed,
            "epochs": p.epochs,
            "train_seconds": round(train_s, 1),
            "infer_seconds": round(infer_s, 1),
            "cases": self.score_predictions(rd / "test_pred", test),
        }
        _write_json(rd / "result.json", result)
        return self.score_sites(loss, seed, result), False

    def score_sites(self, loss: str, seed: int, result: dict) -> dict:
        """Adds to ``result`` (and its file) the scores it lacks of each shifted site and, with
        ``score_validation``, of the validation cases: the bundle's inference with the run's selected checkpoint
        on every case of the set, scored like the test cases.

        Args:
            loss: the run's loss.
            seed: the run's seed.
            result: the run's result; changed in place.

        Returns:
            ``result``, with ``result["sites"][site]`` (one metrics row per case) for every site of the preset
                and, with ``score_validation``, ``result["validation"]`` (one row per validation case).

        Raises:
            RuntimeError: an inference run of the bundle failed.
            FileNotFoundError: the inference wrote no prediction for a case.
        """
        p, rd = self.preset, self.run_dir(loss, seed)
        for site in [s for s in p.sites if s not in result.get("sites", {})]:
            data = self.ensure_site_data(site)
            cases = msd_datalist(str(data), "all", task=self.task)
            result.setdefault("sites", {})[site] = self._infer_and_score(rd, site, cases, data, result)
            _write_json(rd / "result.json", result)
        if p.score_validation and "validation" not in result:
            trainval, _ = self.splits()
            val = trainval[len(trainval) - p.num_val :]
            result["validation"] = self._infer_and_score(rd, "validation", val, self.dataset_dir(), result)
            _write_json(rd / "result.json", result)
        return result

    def _infer(self, rd: Path, cases: list[dict], data: Path, out: Path, log: Path) -> float:
        """The run's inference (its selected checkpoint) on ``cases`` into ``out``; returns the seconds taken."""
        p = self.preset
        infer = {  # inference.json is an overlay on train.json: every schedule key is one of its ids
            **p.schedule,
            "bundle_root": str(rd),
            "dataset_dir": str(data),
            "datalist": [{"image": c["image"]} for c in cases],
            "output_dir": str(out),
            "num_threads": p.threads,
        }
        return run_bundle(bundle_dir(self.task, self.bundles), ["inference.json"], infer, log, child_env(p.threads))

    def _infer_and_score(self, rd: Path, name: str, cases: list[dict], data: Path, result: dict) -> list[dict]:
        """The run's inference on ``cases`` into ``pred_<name>/``, scored; the inference time is added to
        ``result``."""
        secs = self._infer(rd, cases, data, rd / f"pred_{name}", rd / f"inference_{name}.log")
        result["infer_seconds"] = round(result["infer_seconds"] + secs, 1)
        return self.score_predictions(rd / f"pred_{name}", cases, data)

    def score_predictions(self, pred_dir: Path, test: list[dict], dataset_dir: Path | None = None) -> list[dict]:
        """Each test case's prediction file scored against its label file with the bundles' own scoring
        (:func:`~monai_losses_ext.bundle.score_label_file`: the training's label remap, the file's grid).

        Args:
            pred_dir: the folder of the inference's ``<case>_seg.nii.gz`` predictions.
            test: the cases scored, ``{"image": path, "label": path}`` dicts.
            dataset_dir: the dataset whose ``dataset.json`` gives the scored structures; None: `dataset_dir`.

        Returns:
            One row per case, in the order of ``test``: ``{"case": name, ...}`` with the per-structure
                metrics (Dice, lesion F1 and sensitivity, false-positive lesions, HD95, lesion counts by size).

        Raises:
            FileNotFoundError: a case has no prediction file.
            ValueError: a prediction does not match its label (another grid, or label values outside the
                task's labels; the message says how to give a ``label_remap``).
        """
        import nibabel as nib

        structures = structures_of(str(dataset_dir or self.dataset_dir()), self.task)
        remap = self.preset.schedule.get("label_remap") or None
        rows = []
        for c in test:
            name = case_name(c["image"])
            pred_path = pred_dir / f"{name}_seg.nii.gz"
            if not pred_path.exists():
                raise FileNotFoundError(f"inference wrote no prediction for test case {name} ({pred_path})")
            pred = np.asarray(nib.load(str(pred_path)).dataobj)
            try:
                rows.append(score_label_file(pred, c["label"], structures, remap, self.preset.size_edges))
            except ValueError as err:
                raise ValueError(
                    f"{str(err).rstrip('.')}. In the benchmark a remap is given with --bundle-args "
                    "\"{'label_remap': {255: 1}}\" (the training and the scoring both apply it)."
                ) from None
        return rows

    def run(self, progress: bool = True) -> dict[tuple[str, int], dict]:
        """Every loss x seed (stored runs skipped); returns the results keyed by (loss, seed).

        Writes ``study.json`` (the task, the preset and the dataset) into ``out``. A run that fails with a
        RuntimeError (e.g. a diverging loss) does not stop the others.

        Args:
            progress: show progress bars of the runs and of the current run's epochs (tqdm); else each run's
                outcome goes to ``log``.

        Returns:
            ``{(loss, seed): result}`` of every run, the results of `run_one`.

        Raises:
            RuntimeError: one or more runs failed; the others are stored, and running again retries the failed
                ones.
        """
        from tqdm.auto import tqdm

        self.ensure_data()
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(
            self.out / "study.json",
            {"task": self.task, "preset": asdict(self.preset), "dataset_dir": str(self.dataset_dir())},
        )
        jobs = [(loss, seed) for loss in self.preset.losses for seed in self.preset.seeds]
        results: dict[tuple[str, int], dict] = {}
        runs_bar = tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress, position=0)
        epoch_bar = tqdm(
            total=self.preset.epochs, desc="epochs", unit="epoch", disable=not progress, position=1, leave=False
        )
        say = runs_bar.write if progress else self.log
        failed: list[str] = []
        t0 = time.perf_counter()
        try:
            for loss, seed in jobs:
                try:
                    res, stored = self.run_one(loss, seed, epoch_bar if progress else None)
                except RuntimeError as err:  # a run that fails (e.g. a diverging loss) does not stop the others
                    failed.append(f"{loss} seed {seed}: {str(err).splitlines()[0]}")
                    say(f"{loss} seed {seed}: FAILED, {err}")
                    continue
                finally:
                    runs_bar.update()
                results[(loss, seed)] = res
                say(
                    f"{loss} seed {seed}: "
                    + ("stored, skipped" if stored else f"trained in {res['train_seconds']:.0f} s")
                )
        finally:
            epoch_bar.close()
            runs_bar.close()
        self.log(f"{len(jobs)} runs in {(time.perf_counter() - t0) / 60:.1f} min")
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(jobs)} runs failed (the others are stored; run the command again to retry "
                "them once the cause is fixed):\n  " + "\n  ".join(failed)
            )
        return results
