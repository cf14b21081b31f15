"""Per-case evaluation of a bundle: the metrics CSV / summary writer and the per-channel metric selector."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .. import metrics as _metrics
from .data import case_name

__all__ = ["CaseMetricsWriter", "select_channel"]


def _item_case_name(item: Mapping, keys: Sequence[str] = ("label", "pred", "image")) -> str:
    for k in keys:
        meta = getattr(item.get(k), "meta", None)
        if meta and meta.get("filename_or_obj"):
            return case_name(meta["filename_or_obj"])
    return "case"


def _spacing(item: Mapping, key: str) -> list[float] | None:
    v = item.get(key)
    aff = getattr(v, "affine", None)
    if aff is None:
        return None
    a = np.asarray(aff.detach().cpu() if isinstance(aff, torch.Tensor) else aff, dtype=float)
    nd = a.shape[0] - 1
    return [float(s) for s in np.sqrt((a[:nd, :nd] ** 2).sum(0))]


class CaseMetricsWriter:
    """Evaluator handler: per-case metrics (see :func:`monai_losses_ext.metrics.case_metrics`) into
    ``<output_dir>/metrics.csv`` (one row per case) and the mean / std / median / n / n_nan per column into
    ``summary.csv`` and ``summary.json``; the summary is also logged.

    Args:
        output_dir: folder for the files.
        names: one name per scored channel (``["lesion"]``, ``["TC", "WT", "ET"]``).
        skip_first: channel 0 is background (one-hot classes) and is not scored.
        pred_key, label_key: binarised ``(C, *spatial)`` items of the decollated evaluator output.
        connectivity: lesion connectivity (None: all neighbours).
    """

    def __init__(
        self,
        output_dir: str,
        names: Sequence[str],
        skip_first: bool = True,
        pred_key: str = "pred",
        label_key: str = "label",
        connectivity: int | None = None,
    ) -> None:
        self.output_dir = str(output_dir)
        self.names = list(names)
        self.skip_first = skip_first
        self.pred_key, self.label_key = pred_key, label_key
        self.connectivity = connectivity
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
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
            row = {"case": _item_case_name(item)}
            row.update(
                _metrics.case_metrics(
                    item[self.pred_key], item[self.label_key], self.names, spacing=_spacing(item, self.label_key),
                    connectivity=self.connectivity, skip_first=self.skip_first,
                )
            )  # fmt: skip
            self.rows.append(row)

    def _completed(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        if not self.rows:
            engine.logger.warning("CaseMetricsWriter: no case evaluated")
            return
        cols = list(self.rows[0])
        with open(os.path.join(self.output_dir, "metrics.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(self.rows)
        summary = _metrics.summarize(self.rows)
        with open(os.path.join(self.output_dir, "summary.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["metric", "mean", "std", "median", "n", "n_nan"])
            for k, s in summary.items():
                w.writerow([k, s["mean"], s["std"], s["median"], s["n"], s["n_nan"]])
        with open(os.path.join(self.output_dir, "summary.json"), "w") as f:
            json.dump({"cases": len(self.rows), "metrics": summary}, f, indent=2)
        lines = [f"{k:32s} {s['mean']:.4f} ± {s['std']:.4f} (n={s['n']})" for k, s in summary.items()]
        engine.logger.info(f"per-case metrics of {len(self.rows)} cases -> {self.output_dir}/metrics.csv\n" + "\n".join(lines))


def select_channel(keys: Sequence[str] = ("pred", "label"), channel: int = 0):
    """Output transform for ignite metrics: ``(pred[:, c:c+1], label[:, c:c+1])`` of a decollated output, for
    per-class / per-region Dice next to the mean."""

    def _f(output):
        items = output if isinstance(output, Sequence) and not isinstance(output, Mapping) else [output]
        res = []
        for k in keys:
            res.append([it[k][channel : channel + 1] for it in items])
        return tuple(res)

    return _f
