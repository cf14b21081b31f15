"""Scoring a bundle's predictions against the label files, on each case's original grid: one implementation
for ``evaluate.json`` (:class:`CaseScorer`, an evaluator handler) and the benchmark (:func:`score_label_file`),
plus the per-channel metric selector of the validation metrics."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import metrics as _metrics
from ..transforms import ValidateLabel, voxel_spacing
from .checkpoint import atomic_write, atomic_write_json
from .data import case_name

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["CaseScorer", "read_label", "score_label_file", "summarize_scores", "select_channel"]


def read_label(
    path: str, structures: Mapping[str, Sequence[int]], remap: Mapping | None = None
) -> tuple[np.ndarray, list[float]]:
    """A label file as the scoring sees it: ``(labels (*spatial) int64, voxel spacing mm)``, read with MONAI's
    readers (NIfTI, MHA, NRRD, ...) in the file's own voxel order, checked by :class:`ValidateLabel` with the
    training's ``remap`` and the values ``structures`` names (a ``ValueError`` names the file and the fix).

    Args:
        path: the label file (or DICOM folder) to read.
        structures: ``{name: label values}`` that will be scored; together with 0 (background) they are the
            values the file may hold after ``remap``.
        remap: ``{old value: new value}`` applied before the check, as in training (``--label_remap``); None
            or empty: none.

    Returns:
        ``(labels, spacing)``: the label map without its channel axis, ``(*spatial)`` ``int64``, and the voxel
        size per spatial axis in mm, read from the file's affine.

    Raises:
        ValueError: the file holds values outside ``{0} | structures`` after ``remap`` or non-integer values
            (the message names the file and the fix), ``remap`` has keys or values that are not numbers, or
            the file has more than one channel (raised by NumPy when the channel axis is dropped).
        TypeError: ``remap`` is not a mapping.
        FileNotFoundError: the file does not exist (other errors of MONAI's readers, e.g. for a corrupt file,
            are raised as they are).
    """
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    known = sorted({0, *(int(v) for values in structures.values() for v in values)})
    lab = ValidateLabel(labels=known, remap=remap or None)(img, name=str(path))
    arr = np.asarray(lab.detach().cpu().numpy() if isinstance(lab, torch.Tensor) else lab).astype(np.int64)
    return arr.reshape(arr.shape[1:]), voxel_spacing(img.affine)


def score_label_file(
    pred: Any,
    label_path: str,
    structures: Mapping[str, Sequence[int]],
    remap: Mapping | None = None,
    size_edges: Sequence[int] = (10, 50),
) -> dict[str, Any]:
    """One case's row: ``{"case": name, **score_case(...)}`` of a predicted label map on the label file's grid.

    Args:
        pred: the predicted label map (index values), ``(*spatial)`` or ``(1, *spatial)``, as a tensor or an
            array, on the grid of the label file (written back with ``Invertd``).
        label_path: the label file the prediction is scored against (read with :func:`read_label`).
        structures: ``{name: label values}`` to score, e.g. ``{"lesion": [1]}`` or the BraTS regions
            (:func:`structures_of`).
        remap: the training's ``label_remap`` (see :func:`read_label`).
        size_edges: lesion-size group edges in voxels (the groups of the size-wise sensitivity).

    Returns:
        ``{"case": case name, <metric columns>}``: per structure ``s`` the columns of
        :func:`monai_losses_ext.metrics.score_case` (``dice_s``, ``hd95_s`` in mm, ``f1_s``, ``sensitivity_s``,
        ``precision_s``, ``fp_lesions_s``, the lesion counts and the per-size-group counts).

    Raises:
        ValueError: ``pred`` is not on the label's grid (another shape), or the label file fails the checks
            of :func:`read_label`.
    """
    truth, spacing = read_label(label_path, structures, remap)
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    p = p.reshape(p.shape[1:]) if p.ndim == truth.ndim + 1 and p.shape[0] == 1 else p
    if p.shape != truth.shape:
        raise ValueError(
            f"the prediction for {label_path} has shape {p.shape} but the label has {truth.shape}: predictions "
            "must be written back on the input's grid (Invertd in the postprocessing)"
        )
    return {
        "case": case_name(label_path),
        **_metrics.score_case(p.astype(np.int64), truth, structures, spacing, size_edges),
    }


def summarize_scores(
    rows: Sequence[Mapping[str, Any]], structures: Sequence[str], size_edges: Sequence[int] = (10, 50)
) -> dict:
    """``{"cases": n, "metrics": {column: mean/std/median/n/n_nan}, "pooled": {sensitivity per size group,
    fp_lesions_per_case_<s>}}`` of :func:`score_label_file` rows.

    Args:
        rows: the per-case rows of :func:`score_label_file`.
        structures: the structure names the rows were scored for.
        size_edges: the lesion-size group edges the rows were scored with.

    Returns:
        ``{"cases": len(rows), "metrics": ..., "pooled": ...}``: ``metrics`` holds, per numeric column, the
        ``mean``, population ``std``, ``median`` over the cases where it is defined, ``n`` (those cases) and
        ``n_nan`` (the others, e.g. HD95 with an empty mask); ``pooled`` holds ``sensitivity_<s>_<group>``
        (detected / truth lesions of that size group over all cases, NaN without any) and
        ``fp_lesions_per_case_<s>`` (NaN without rows).

    Raises:
        KeyError: a row lacks the ``fp_lesions_<s>`` column of a name of ``structures``.
    """
    pooled = _metrics.pooled_size_sensitivity(rows, structures, size_edges)
    for s in structures:
        pooled[f"fp_lesions_per_case_{s}"] = (
            float(np.mean([r[f"fp_lesions_{s}"] for r in rows])) if rows else float("nan")
        )
    return {"cases": len(rows), "metrics": _metrics.summarize(rows), "pooled": pooled}


class CaseScorer:
    """Evaluator handler of ``evaluate.json``: scores every case the evaluator sees against its label **file**
    (the prediction written back on the file's grid by ``Invertd``; the label read as it is on disk, with the
    training's ``label_remap``), with :func:`score_label_file`, the benchmark's scoring. Writes
    ``<output_dir>/metrics.csv`` (one row per case), ``summary.csv`` and ``summary.json`` (means; lesion
    sensitivity per size group pooled over cases; false-positive lesions per case) and logs the summary.

    Args:
        output_dir: folder for the files.
        structures: ``{name: label values}`` to score (:func:`~monai_losses_ext.bundle.structures_of`).
        label_remap: the bundle's ``label_remap``.
        size_edges: lesion-size group edges in voxels.
        pred_key: the key of the predicted label map in the evaluator's output, already written back on the
            label file's grid.
        label_key: the key of the (preprocessed) label in the evaluator's output; its ``filename_or_obj``
            metadata names the file that is scored.
    """

    def __init__(
        self,
        output_dir: str,
        structures: Mapping[str, Sequence[int]],
        label_remap: Mapping | None = None,
        size_edges: Sequence[int] = (10, 50),
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.output_dir, self.structures = str(output_dir), {k: list(v) for k, v in structures.items()}
        self.label_remap, self.size_edges = label_remap, tuple(size_edges)
        self.pred_key, self.label_key = pred_key, label_key
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        """Register the handler on the evaluator: the rows are cleared at ``STARTED``, each case is scored at
        ``ITERATION_COMPLETED`` and the files are written at ``COMPLETED``.

        At ``ITERATION_COMPLETED`` a ``ValueError`` is raised when the label carries no file name (evaluation
        needs labels read from files) or a prediction is not on its label's grid; at ``COMPLETED`` when no case
        was scored.

        Args:
            engine: the evaluator of ``evaluate.json`` (its ``state.output`` is the decollated list of cases, or
                a batch dict that is decollated here).
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _iteration(self, engine) -> None:
        items = engine.state.output
        if isinstance(items, Mapping):  # decollate=False: split the batch
            from monai.data import decollate_batch

            items = decollate_batch(items)
        for item in items:
            meta = getattr(item.get(self.label_key), "meta", None) or {}
            path = meta.get("filename_or_obj")
            if not path:
                raise ValueError(
                    f"CaseScorer: '{self.label_key}' carries no file name; evaluate needs labels read from files"
                )
            self.rows.append(
                score_label_file(item[self.pred_key], str(path), self.structures, self.label_remap, self.size_edges)
            )

    def _completed(self, engine) -> None:
        if not self.rows:
            raise ValueError("CaseScorer: no case was evaluated; check --dataset_dir and --eval_split")
        os.makedirs(self.output_dir, exist_ok=True)
        summary = summarize_scores(self.rows, list(self.structures), self.size_edges)
        cols = list(self.rows[0])
        _write_csv(os.path.join(self.output_dir, "metrics.csv"), [cols] + [[r.get(c) for c in cols] for r in self.rows])
        stats = [["metric", "mean", "std", "median", "n", "n_nan"]]
        stats += [[k, s["mean"], s["std"], s["median"], s["n"], s["n_nan"]] for k, s in summary["metrics"].items()]
        stats += [[k, v, "", "", "", ""] for k, v in summary["pooled"].items()]
        _write_csv(os.path.join(self.output_dir, "summary.csv"), stats)
        atomic_write_json(summary, os.path.join(self.output_dir, "summary.json"), indent=2)
        m, p = summary["metrics"], summary["pooled"]
        lines = []
        for s in self.structures:
            sizes = ", ".join(
                f"{k.rsplit('_', 1)[-1]} {v:.2f}" for k, v in p.items() if k.startswith(f"sensitivity_{s}_")
            )
            lines.append(
                f"{s}: Dice {m[f'dice_{s}']['mean']:.4f} ± {m[f'dice_{s}']['std']:.4f}, lesion F1 "
                f"{m[f'f1_{s}']['mean']:.4f}, FP lesions/case {p[f'fp_lesions_per_case_{s}']:.2f}, "
                f"HD95 {m[f'hd95_{s}']['mean']:.2f} mm, sensitivity by size (voxels) {sizes}"
            )
        engine.logger.info(
            f"scored {len(self.rows)} cases on their own grids -> {self.output_dir}/metrics.csv\n" + "\n".join(lines)
        )


def _write_csv(path: str, rows: Sequence[Sequence[Any]]) -> None:
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


def select_channel(keys: Sequence[str] = ("pred", "label"), channel: int = 0) -> Callable[[Any], tuple[list[Any], ...]]:
    """Output transform for ignite metrics: ``(pred[:, c:c+1], label[:, c:c+1])`` of a decollated output, for
    per-class / per-region Dice next to the mean.

    Args:
        keys: the keys to take from each case of the engine output, in the order the metric reads them.
        channel: the channel ``c`` to keep (index along each case's first axis, the channel axis).

    Returns:
        A function of the engine output (a list of case dicts, or one case dict) that returns one list per key
        of ``keys``, each holding the ``(1, *spatial)`` channel ``c`` of every case.
    """

    def _f(output):
        items = output if isinstance(output, Sequence) and not isinstance(output, Mapping) else [output]
        res = []
        for k in keys:
            res.append([it[k][channel : channel + 1] for it in items])
        return tuple(res)

    return _f
