"""Where the cases come from: MSD-style ``dataset.json`` lists, the tumour regions its label names define,
the modality check, the device, and :class:`CaseDataset`, which names the case and the file whenever loading
or preprocessing a case fails."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from multiprocessing.pool import ThreadPool
from typing import Any

import torch
from monai.data import CacheDataset

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetNotFoundError",
    "CaseError",
    "resolve_device",
    "msd_datalist",
    "tumour_regions",
    "structures_of",
    "check_modalities",
    "case_name",
    "CaseDataset",
]


def resolve_device(distributed: bool = False) -> torch.device:
    """CUDA when available (``cuda:LOCAL_RANK`` under torchrun with ``distributed``), CPU otherwise.

    Args:
        distributed: the run is one process of a torchrun job: use the GPU of its ``LOCAL_RANK`` (0 when the
            variable is unset) instead of the current CUDA device.

    Returns:
        ``cuda:LOCAL_RANK``, ``cuda`` or ``cpu``.
    """
    if torch.cuda.is_available():
        if distributed:
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        return torch.device("cuda")
    return torch.device("cpu")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder, its ``dataset.json`` or a file it lists is missing."""


_PHANTOM_HINT = (
    "Generate the synthetic phantoms with\n"
    "    python -m monai_losses_ext.phantoms --task {task} --out {dir} --num-cases 24\n"
    "or point the bundle at a real MSD-style task with --dataset_dir /path/to/Task (a folder holding "
    "dataset.json, imagesTr/ and labelsTr/{extra})."
)


def _hint(dataset_dir: str, task: str | None) -> str:
    extra = ", e.g. Task01_BrainTumour" if task == "tumour" else ""
    return _PHANTOM_HINT.format(task=task or "lesion", dir=dataset_dir, extra=extra)


def _resolve(dataset_dir: str, p: str) -> str:
    p = str(p)
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(dataset_dir, p[2:] if p.startswith("./") else p))


def _load_dataset_json(dataset_dir: str, task: str | None = None) -> dict:
    dataset_dir = os.path.expanduser(str(dataset_dir))
    path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.isdir(dataset_dir):
        raise DatasetNotFoundError(f"dataset_dir '{dataset_dir}' does not exist.\n" + _hint(dataset_dir, task))
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"'{path}' not found: dataset_dir holds no MSD-style dataset.\n" + _hint(dataset_dir, task)
        )
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not valid JSON ({e}); regenerate it or fix the file") from e


def msd_datalist(
    dataset_dir: str,
    split: str = "train",
    val_fraction: float = 0.2,
    num_val: int | None = None,
    max_cases: int | None = None,
    task: str | None = None,
    in_channels: int | None = None,
    modalities: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """Cases of an MSD-style dataset (``dataset.json`` with ``training`` = [{image, label}] and ``test`` = [path]).

    The ``training`` cases are split deterministically, in the order of ``dataset.json``: the last
    ``num_val`` (default ``max(1, round(val_fraction * n))``) are the held-out **validation** cases, the
    others are **train**. ``split``: ``"train"``, ``"validation"``, ``"all"`` (every labelled case) or
    ``"test"`` (the unlabelled ``test`` images, ``[{"image": path}]``; the validation images when the
    dataset lists none). ``max_cases`` keeps the first N cases of the labelled list before splitting (for
    quick runs). Paths are resolved against ``dataset_dir``; a missing folder, ``dataset.json`` or listed
    file raises :class:`DatasetNotFoundError` whose message says how to generate the phantoms. With
    ``in_channels``, the ``modality`` entries of ``dataset.json`` are checked against it and against the
    expected ``modalities`` order (:func:`check_modalities`).

    Args:
        dataset_dir: the task folder holding ``dataset.json`` (``~`` is expanded); relative paths of
            ``dataset.json`` are resolved against it.
        split: ``"train"``, ``"validation"``, ``"all"`` or ``"test"`` (see above).
        val_fraction: the fraction of the labelled cases held out for validation, when ``num_val`` is None.
        num_val: the number of validation cases; None: ``max(1, round(val_fraction * n))``.
        max_cases: keep only the first N labelled cases (None or 0: all of them).
        task: ``"lesion"`` or ``"tumour"``, only used for the phantom command in error messages.
        in_channels: the number of input channels of the network; None skips the modality check.
        modalities: the modality names the bundle expects, one per channel (``--modalities``); None: only
            their number is checked.

    Returns:
        The cases of ``split``: ``[{"image": path, "label": path}, ...]`` with normalised paths, in the order of
        ``dataset.json``; ``[{"image": path}, ...]`` for ``"test"``.

    Raises:
        DatasetNotFoundError: ``dataset_dir`` or its ``dataset.json`` does not exist, the split needs more
            labelled cases than there are (at least ``num_val + 1`` for the train / validation split), or a
            listed file is missing.
        ValueError: ``split`` is not one of the four names, ``dataset.json`` is not valid JSON, a ``training``
            entry lacks ``image`` or ``label``, or the modalities do not fit (:func:`check_modalities`).
    """
    if split not in ("train", "validation", "all", "test"):
        raise ValueError(f"split={split!r}: use 'train', 'validation', 'all' or 'test'")
    dataset_dir = os.path.expanduser(str(dataset_dir))
    meta = _load_dataset_json(dataset_dir, task)
    if in_channels is not None:
        check_modalities(meta, in_channels, os.path.join(dataset_dir, "dataset.json"), expected=modalities)
    cases = []
    for item in meta.get("training", []):
        if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
            raise ValueError(
                f"{dataset_dir}/dataset.json: each 'training' entry needs 'image' and 'label', got {item!r}"
            )
        cases.append({"image": _resolve(dataset_dir, item["image"]), "label": _resolve(dataset_dir, item["label"])})
    if max_cases:
        cases = cases[: int(max_cases)]
    n_val = int(num_val) if num_val is not None else max(1, int(round(val_fraction * len(cases))))
    if split in ("train", "validation", "all") and len(cases) < (1 if split == "all" else n_val + 1):
        raise DatasetNotFoundError(
            f"{dataset_dir}/dataset.json lists {len(cases)} labelled case(s); split '{split}' needs at least "
            f"{n_val + 1} ({n_val} held out for validation).\n" + _hint(dataset_dir, task)
        )
    if split == "train":
        out = cases[: len(cases) - n_val]
    elif split == "validation":
        out = cases[len(cases) - n_val :]
    elif split == "all":
        out = cases
    else:
        tests = [
            {"image": _resolve(dataset_dir, p if isinstance(p, str) else p["image"])} for p in meta.get("test", [])
        ]
        out = tests or [{"image": c["image"]} for c in cases[len(cases) - n_val :]]
    missing = [p for c in out for p in c.values() if not os.path.exists(p)]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} file(s) listed in {dataset_dir}/dataset.json do not exist, e.g. '{missing[0]}'.\n"
            + _hint(dataset_dir, task)
        )
    return out


def tumour_regions(dataset_dir: str, order: Sequence[str] = ("TC", "WT", "ET")) -> list[list[int]]:
    """Label values of the BraTS regions, read from the ``labels`` names of ``dataset.json``.

    WT (whole tumour) = every foreground label; ET (enhancing) = the label named *enhancing*; TC (tumour
    core) = WT without the label named *oedema/edema*. Works for the phantoms (BraTS numbering: 1 necrotic
    core, 2 oedema, 3 enhancing -> TC [1, 3], WT [1, 2, 3], ET [3]) and for MSD Task01_BrainTumour
    (1 edema, 2 non-enhancing tumour, 3 enhancing tumour -> TC [2, 3], WT [1, 2, 3], ET [3]). Without
    recognisable names the BraTS numbering is assumed.

    Args:
        dataset_dir: the task folder holding ``dataset.json``.
        order: the regions to return, by name (``"TC"``, ``"WT"``, ``"ET"``), in the order of the output
            channels.

    Returns:
        One list of label values per region of ``order``, e.g. ``[[1, 3], [1, 2, 3], [3]]`` for the phantoms.

    Raises:
        DatasetNotFoundError: ``dataset_dir`` or its ``dataset.json`` does not exist.
        ValueError: ``dataset.json`` is not valid JSON.
        KeyError: a name of ``order`` is not one of ``TC``, ``WT``, ``ET``.
    """
    meta = _load_dataset_json(os.path.expanduser(str(dataset_dir)), "tumour")
    labels = {int(k): str(v).lower() for k, v in (meta.get("labels") or {}).items() if str(k).lstrip("-").isdigit()}
    fg = sorted(v for v in labels if v != 0)
    oedema = [v for v in fg if "edema" in labels[v] or "oedema" in labels[v]]
    enh = [v for v in fg if "enhanc" in labels[v] and "non" not in labels[v]]
    if len(fg) < 3 or len(oedema) != 1 or len(enh) != 1:
        fg, oedema, enh = [1, 2, 3], [2], [3]
    regions = {"WT": fg, "TC": [v for v in fg if v not in oedema], "ET": enh}
    return [regions[r] for r in order]


def structures_of(dataset_dir: str, task: str) -> dict[str, list[int]]:
    """What is scored, as label values read from ``dataset.json``: for ``tumour`` the BraTS regions TC, WT, ET
    (:func:`tumour_regions`); otherwise each foreground label (``{"lesion": [1]}`` for a binary task).

    Args:
        dataset_dir: the task folder holding ``dataset.json``.
        task: ``"tumour"`` for the BraTS regions; any other value scores each foreground label.

    Returns:
        ``{structure name: label values}``. Outside ``tumour`` the names are the ``labels`` names of
        ``dataset.json`` in lower case with non-word characters replaced by ``_`` (``"Lesion core"`` ->
        ``lesion_core``); without named foreground labels, ``{"lesion": [1]}``.

    Raises:
        DatasetNotFoundError: ``dataset_dir`` or its ``dataset.json`` does not exist.
        ValueError: ``dataset.json`` is not valid JSON.
    """
    if task == "tumour":
        return dict(zip(("TC", "WT", "ET"), tumour_regions(dataset_dir)))
    meta = _load_dataset_json(os.path.expanduser(str(dataset_dir)), task)
    labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items() if str(k).lstrip("-").isdigit() and int(k)}
    if not labels:
        return {"lesion": [1]}
    return {re.sub(r"\W+", "_", name.strip().lower()) or f"label{v}": [v] for v, name in sorted(labels.items())}


_MODALITY_ALIASES = {
    "t1w": "t1",
    "t2w": "t2",
    "t1gd": "t1c",
    "t1ce": "t1c",
    "t1+c": "t1c",
    "t1post": "t1c",
    "t1wce": "t1c",
    "t2flair": "flair",
    "t2-flair": "flair",
}


def canonical_modality(name: str) -> str:
    """A modality name compared case-insensitively, with the usual spellings merged (T1w = T1, T1gd = T1ce =
    T1c, T2w = T2, T2-FLAIR = FLAIR)."""
    key = re.sub(r"[\s_]+", "", str(name).strip().lower())
    return _MODALITY_ALIASES.get(key, key)


def check_modalities(
    meta: Mapping, in_channels: int, source: str = "dataset.json", expected: Sequence[str] | None = None
) -> list[str]:
    """The modality names of ``dataset.json`` (``{"0": "FLAIR", "1": "T1w"}``) in channel order, checked:

    * their number must be ``in_channels`` (a ``ValueError`` naming the file, the names and ``--in_channels``);
    * with ``expected`` (the bundle's ``--modalities``, one name per channel): the same names in another order
      is a ``ValueError`` (the channels would be fed to the wrong inputs of the network); other names are
      logged as a warning (a new dataset: pass ``--modalities`` to record them).

    A dataset without ``modality`` entries passes (nothing to check). Names are compared case-insensitively,
    with the usual spellings merged (T1w = T1, T1gd = T1ce = T1c, T2-FLAIR = FLAIR). The nnU-Net v2 key
    ``channel_names`` is read when there is no ``modality``.

    Args:
        meta: the parsed ``dataset.json``.
        in_channels: the number of input channels the network is built for.
        source: how the messages name the dataset (the path of its ``dataset.json``).
        expected: the modality names the bundle expects, in channel order; None (or a list of another
            length) checks only their number.

    Returns:
        The modality names of ``meta`` in channel order (``[]`` when it lists none).

    Raises:
        ValueError: the ``modality`` keys are not channel numbers, their number is not ``in_channels``, or
            they are the ``expected`` names in another order.
    """
    mods = meta.get("modality") or meta.get("channel_names") or {}
    if not isinstance(mods, Mapping) or not mods:
        return []
    try:
        names = [str(mods[k]) for k in sorted(mods, key=lambda k: int(k))]
    except ValueError as err:
        raise ValueError(
            f"{source}: 'modality' keys must be channel numbers ('0', '1', ...), got {sorted(mods)}"
        ) from err
    if len(names) != int(in_channels):
        raise ValueError(
            f"{source} lists {len(names)} modalities {names} but the bundle expects in_channels={in_channels}: "
            f"run with --in_channels {len(names)} (the network is then built for {len(names)} input channels), "
            "or point --dataset_dir at a dataset with the expected channels"
        )
    if expected and len(expected) == len(names):
        got, want = [canonical_modality(n) for n in names], [canonical_modality(n) for n in expected]
        if got != want and sorted(got) == sorted(want):
            raise ValueError(
                f"{source} lists the modalities in the order {names}, but the bundle expects {list(expected)}: "
                "channel k of every image must be the k-th expected modality. Reorder the channels of the images "
                f"(and the 'modality' entries), or, to train a new model in this order, pass --modalities \"{names}\""
            )
        if got != want:
            logger.warning(
                f"{source} lists modalities {names}; the bundle's --modalities are {list(expected)}. "
                "Channels are used in file order; pass --modalities to record this dataset's names."
            )
    return names


_IMAGE_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.mha|\.mhd|\.nrrd|\.nhdr|\.npy|\.npz|\.dcm)$", re.IGNORECASE)


def case_name(path: Any) -> str:
    """The case name of an image or label path: the file name without its format suffix
    (``/d/imagesTr/case_003.nii.gz`` -> ``case_003``); a folder (DICOM series) gives its own name.

    Args:
        path: a path (``str`` or ``os.PathLike``; anything else is converted with ``str``).

    Returns:
        The last path component without a ``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``,
        ``.npy``, ``.npz`` or ``.dcm`` suffix (case-insensitive).
    """
    return _IMAGE_SUFFIX.sub("", os.path.basename(os.path.normpath(str(path))))


class CaseError(ValueError):
    """Loading or preprocessing one case failed; the message names the case, the file and the cause."""


def _root(err: BaseException) -> BaseException:
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


def _unreadable(item: Mapping) -> tuple[str, str, BaseException] | None:
    """The first ``(key, path, error)`` of ``item`` that MONAI's image loader cannot read, or None."""
    from monai.transforms import LoadImage

    for key, path in item.items():
        if isinstance(path, (str, os.PathLike)) and os.path.exists(path):
            try:
                LoadImage(image_only=True)(path)
            except Exception as err:  # noqa: BLE001 - the cause is reported
                return str(key), str(path), _root(err)
    return None


def describe_case_error(item: Mapping, err: BaseException) -> str:
    """One line naming the case, the file and the cause of ``err`` (raised while preparing ``item``)."""
    paths = {k: v for k, v in item.items() if isinstance(v, (str, os.PathLike))}
    name = case_name(paths.get("image", next(iter(paths.values()), "case")))
    root = _root(err)
    cause = f"{type(root).__name__}: {root}".strip()
    if isinstance(root, (ValueError, TypeError)) and any(str(p) in str(root) for p in paths.values()):
        return f"case '{name}': {cause}"  # our own checks (ValidateLabeld) already name the file and the fix
    bad = _unreadable(paths)
    if bad is not None:
        key, path, read_err = bad
        return (
            f"case '{name}': cannot read the {key} file '{path}' ({type(read_err).__name__}: {read_err}); the "
            "file is truncated, corrupt or in an unsupported format: re-export it, or remove the case from "
            "dataset.json"
        )
    return f"case '{name}' ({', '.join(f'{k}: {v}' for k, v in paths.items())}): {cause}"


class CaseDataset(CacheDataset):
    """MONAI's ``CacheDataset`` that names the case and the file when a case fails to load or transform.

    A truncated ``.nii.gz`` surfaces from MONAI as a bare ``EOFError`` inside a stack of transform wrappers;
    here it becomes a :class:`CaseError` whose first line names the case and the file. The cache is filled
    by a thread pool that is drained before an error is raised: with MONAI's own pool, cases still loading in
    daemon threads when the interpreter exits abort the process (``terminate called without an active
    exception``, exit 134) instead of exiting with the error. ``cache_rate=0`` caches nothing (a plain
    ``Dataset``).
    """

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        indices = list(range(self.cache_num)) if indices is None else list(indices)
        with ThreadPool(self.num_workers) as pool:
            jobs = [pool.apply_async(self._load_cache_item, (i,)) for i in indices]
            pool.close()
            pool.join()  # every case finished or failed: no worker is left running
        return [job.get() for job in jobs]  # the first failure is raised here, on the caller's thread

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as err:
            raise CaseError(describe_case_error(self.data[idx], err)) from err

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except CaseError:
            raise
        except Exception as err:
            raise CaseError(describe_case_error(self.data[index % len(self.data)], err)) from err
