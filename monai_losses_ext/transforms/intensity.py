"""Intensity preparation that holds with and without skull stripping: the head / brain foreground found from
the image itself, and a per-channel z-score over it with percentile-winsorised statistics.

Why not MONAI's ``NormalizeIntensityd(nonzero=True)`` and ``CropForegroundd(image > 0)``: both assume a
skull-stripped image with exact zeros outside the brain (BraTS, MSD). On an image that is not skull-stripped,
or whose background holds noise, "nonzero" is every voxel: the mean and standard deviation then mix air and
tissue, and nothing is cropped. Here the foreground is

* ``method="otsu"`` (default): per channel, voxels above Otsu's threshold of that channel's histogram (values
  clipped to the 0.5-99.5th percentiles first, so a few hot voxels do not move it); the union over channels;
  connected components smaller than ``min_fraction`` of the largest removed (noise specks in the air); holes
  filled (dark ventricles, the skull between brain and scalp). On a skull-stripped image this is the brain, on
  a full head image the head.
* ``method="nonzero"``: ``image != 0`` per channel, exactly MONAI's ``nonzero=True`` (for data known to be
  skull-stripped).

:class:`ForegroundNormalize` then z-scores each channel of the whole image with the mean and standard deviation
of its foreground values **winsorised** at the ``lower``-``upper`` percentiles (so bright fat, hot voxels and
noise spikes do not set the scale) and clips the result to +-``clip_sd`` standard deviations. The image itself
is not cut at the upper percentile: lesions are the bright tail of a FLAIR image (clipping there, as nnU-Net does
for CT, flattened them into grey matter and the bundle stopped learning). The background gets a finite value
and no voxel keeps an exact zero by accident. ``method="nonzero"`` reproduces ``NormalizeIntensity(nonzero=True,
channel_wise=True)`` value for value (no winsorising; zeros stay zero).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from ._common import to_numpy, wrap_like

__all__ = ["METHODS", "otsu_threshold", "ForegroundMask", "ForegroundNormalize", "ForegroundNormalized"]

METHODS = ("otsu", "nonzero")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (1-D): the bin edge that maximises the between-class variance
    ``w0 w1 (mu0 - mu1)^2`` of a ``bins``-bin histogram. A constant input returns its value.

    Args:
        values: the intensities, any shape (flattened), e.g. one channel of an image.
        bins: number of histogram bins between the minimum and the maximum of ``values``.

    Returns:
        The threshold: voxels ``> threshold`` are the bright class. NaN when ``values`` holds a NaN.

    Raises:
        ValueError: ``values`` is empty.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = v.size - w0
    s0 = np.cumsum(hist * centres)[:-1]
    mu0 = s0 / np.maximum(w0, 1)
    mu1 = (s0[-1] + hist[-1] * centres[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1 + int(np.argmax(between))])


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"foreground method {method!r}: use one of {METHODS}")
    return method


class ForegroundMask(Transform):
    """The foreground of one channel-first image ``(C, *spatial)`` as a boolean ``(1, *spatial)`` mask (see the
    module doc); also usable as ``CropForegroundd(select_fn=ForegroundMask())``.

    Args:
        method: ``"otsu"`` (image-derived, with or without skull stripping) or ``"nonzero"``.
        min_fraction: components below this fraction of the largest one are dropped (``"otsu"`` only).
        clip_percentiles: the range a channel is clipped to before its histogram (``"otsu"`` only).

    Raises:
        ValueError: at construction, a ``method`` other than ``"otsu"`` / ``"nonzero"``; at call time
            (``"otsu"``), ``clip_percentiles`` that are not two percentiles within ``[0, 100]``.
        TypeError: the image is not a ``torch.Tensor``, MetaTensor or ``numpy.ndarray``.
    """

    def __init__(
        self, method: str = "otsu", min_fraction: float = 0.01, clip_percentiles: Sequence[float] = (0.5, 99.5)
    ) -> None:
        self.method = _check_method(method)
        self.min_fraction = float(min_fraction)
        self.clip_percentiles = tuple(float(p) for p in clip_percentiles)

    def channel_masks(self, img: np.ndarray) -> np.ndarray:
        """Per-channel masks ``(C, *spatial)``: ``!= 0`` for ``"nonzero"``; the shared head mask otherwise.

        Args:
            img: the image ``(C, *spatial)``.

        Returns:
            Boolean masks ``(C, *spatial)``; for ``"otsu"`` a read-only broadcast view of one mask.
        """
        if self.method == "nonzero":
            return img != 0
        return np.broadcast_to(self._otsu(img), img.shape)

    def _otsu(self, img: np.ndarray) -> np.ndarray:
        fg = np.zeros(img.shape[1:], dtype=bool)
        for ch in img:
            lo, hi = np.percentile(ch, self.clip_percentiles)
            if hi > lo:
                fg |= ch > otsu_threshold(np.clip(ch, lo, hi))
        if not fg.any():
            return fg
        lab, n = ndimage.label(fg)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            fg = np.isin(lab, 1 + np.flatnonzero(sizes >= self.min_fraction * sizes.max()))
        return ndimage.binary_fill_holes(fg)

    def __call__(self, img: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """The foreground of one image.

        Args:
            img: one channel-first image ``(C, *spatial)`` (all channels of a case, e.g. the MR sequences).

        Returns:
            A boolean mask ``(1, *spatial)``, the union over channels, in the container type of ``img`` (a
            MetaTensor keeps its meta and affine, a tensor its device).
        """
        arr = to_numpy(img).astype(np.float32, copy=False)
        return wrap_like(self.channel_masks(arr).any(0, keepdims=True), img)


class ForegroundNormalize(Transform):
    """Per-channel z-score with the statistics of the image-derived foreground, winsorised at percentiles (see
    the module doc).

    Args:
        method: ``"otsu"`` or ``"nonzero"`` (then exactly ``NormalizeIntensity(nonzero=True, channel_wise=True)``).
        lower: lower percentile at which each channel's foreground values are winsorised for the mean and
            standard deviation (``"otsu"``); also the lower end of the histogram range of the foreground search.
        upper: upper percentile of the same winsorising (and histogram range); the image itself is not cut
            there (lesions are the bright tail).
        clip_sd: the normalised image is clipped to +- this many standard deviations (``"otsu"``).
        outside: ``"zero"`` (default) sets voxels more than 2 voxels outside the foreground to 0, the foreground
            mean, as nnU-Net does outside its normalisation mask (so air, or the zeros of a skull-stripped image,
            look the same whatever their raw value); ``"keep"`` z-scores them like the rest (``"otsu"``).

    Raises:
        ValueError: an image with no foreground, or with NaN/Inf values (naming its file). At construction: an
            unknown ``method`` or ``outside``, percentiles not satisfying ``0 <= lower < upper <= 100``, or
            ``clip_sd <= 0``. An empty ``"otsu"`` foreground (e.g. a constant image) is an error; with
            ``"nonzero"`` an all-zero channel is left as it is.
        TypeError: the image is not a ``torch.Tensor``, MetaTensor or ``numpy.ndarray``.
    """

    def __init__(
        self,
        method: str = "otsu",
        lower: float = 0.5,
        upper: float = 99.5,
        clip_sd: float = 10.0,
        outside: str = "zero",
    ) -> None:
        if outside not in ("zero", "keep"):
            raise ValueError(f"outside={outside!r}: use 'zero' (the foreground mean) or 'keep'")
        self.outside = outside
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        if not clip_sd > 0:
            raise ValueError(f"clip_sd must be positive, got {clip_sd!r}")
        self.mask = ForegroundMask(method, clip_percentiles=(lower, upper))
        self.method, self.lower, self.upper, self.clip_sd = method, float(lower), float(upper), float(clip_sd)

    def __call__(self, img: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Normalise one image.

        Args:
            img: one channel-first image ``(C, *spatial)``; all channels share one ``"otsu"`` foreground.

        Returns:
            The normalised float32 image, same shape ``(C, *spatial)`` and container type as ``img`` (a
            MetaTensor keeps its meta and affine, a tensor its device); the input is not modified.
        """
        arr = to_numpy(img).astype(np.float32, copy=True)
        name = getattr(img, "meta", {}).get("filename_or_obj", "<in-memory image>")
        if not np.isfinite(arr).all():
            raise ValueError(
                f"image {name} holds {int((~np.isfinite(arr)).sum())} NaN/Inf voxels; fix or mask the file"
            )
        masks = self.mask.channel_masks(arr)
        if self.method == "otsu" and self.outside == "zero":  # beyond 2 voxels of the foreground: 0, its mean
            near = ndimage.binary_dilation(masks[0], iterations=2)
        for c, (ch, m) in enumerate(zip(arr, masks)):
            vals = ch[m]
            if vals.size == 0:
                if self.method == "nonzero":
                    continue  # MONAI leaves an all-zero channel as it is
                raise ValueError(f"image {name}: channel {c} has no foreground (constant image?); check the file")
            if self.method == "otsu":  # statistics of the foreground winsorised at the percentiles
                lo, hi = np.percentile(vals, (self.lower, self.upper))
                vals = np.clip(vals, lo, hi)
            mean, std = float(vals.mean(dtype=np.float64)), float(vals.std(dtype=np.float64))
            std = std if std > 0 else 1.0
            if self.method == "nonzero":
                ch[m] = (ch[m] - mean) / std
            else:
                ch -= mean
                ch /= std
                np.clip(ch, -self.clip_sd, self.clip_sd, out=ch)
                if self.outside == "zero":
                    ch[~near] = 0.0
        return wrap_like(arr, img)


class ForegroundNormalized(MapTransform):
    """Dictionary version of :class:`ForegroundNormalize`.

    Args:
        keys: image keys, each normalised in place of the original.
        method: ``"otsu"`` (image-derived foreground) or ``"nonzero"`` (exactly
            ``NormalizeIntensity(nonzero=True, channel_wise=True)``).
        lower: lower winsorising percentile of the foreground statistics (``"otsu"``).
        upper: upper winsorising percentile of the foreground statistics (``"otsu"``).
        clip_sd: the normalised image is clipped to +- this many standard deviations (``"otsu"``).
        outside: ``"zero"`` or ``"keep"``, what happens beyond 2 voxels of the foreground (as in
            ``ForegroundNormalize``, ``"otsu"``).
        allow_missing_keys: skip missing keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys`` or the invalid arguments of ``ForegroundNormalize``; at call
            time, an image with NaN/Inf values or a channel without foreground (naming its file).
        TypeError: an image is not a ``torch.Tensor``, MetaTensor or ``numpy.ndarray``.
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "otsu",
        lower: float = 0.5,
        upper: float = 99.5,
        clip_sd: float = 10.0,
        outside: str = "zero",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.norm = ForegroundNormalize(method, lower, upper, clip_sd, outside)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Normalise the images of one case.

        Args:
            data: one case, each key an image ``(C, *spatial)``.

        Returns:
            A shallow copy of ``data`` with each image replaced by its normalised float32 version; the other
            entries are the same objects.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.norm(d[key])
        return d
