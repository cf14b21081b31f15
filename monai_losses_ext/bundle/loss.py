"""The loss of a bundle: built by name through the registry, the label maps its ``forward`` reads (distance
maps, weight maps, lesion instances), the transforms that compute them once per case, and the wrapper that
hands them from the batch to the loss inside MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import Transform

from ..registry import get_loss
from ..transforms import LesionInstancesd, OneHotd, SignedDistanceMapd, UNetWeightMapd

__all__ = ["build_loss", "loss_map_keys", "label_map_transforms", "LabelMaps", "LossWithMaps"]


def build_loss(
    name: Any, defaults: Mapping[str, Any] | None = None, kwargs: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """The bundle's ``loss``: :func:`~monai_losses_ext.get_loss` of a registry name (``"dice_ce"``), a dotted
    class path (``"monai.losses.DiceLoss"``) or a class, with ``defaults`` (the input format) passed only where
    the constructor takes them and ``kwargs`` always; a ready ``torch.nn.Module`` is returned as it is. Anything
    that does not build into a ``torch.nn.Module`` is refused here, before training, with a ``TypeError``."""
    if isinstance(name, torch.nn.Module):
        return name
    return get_loss(name, defaults=dict(defaults or {}), **dict(kwargs or {}))


# forward keyword -> kind of map (its transform); ``distance_map`` is signed or unsigned after the loss's
# ``map_mode`` (BoundaryLoss: signed, HausdorffDTLoss: unsigned)
_MAPS: dict[str, str] = {
    "distance_map": "distance",
    "weight_map": "weight",
    "instances": "instances",
}


def _parts(loss: Any) -> list[Any]:
    """The loss, the terms of a :class:`~monai_losses_ext.CompoundLoss` and their ``boundary`` terms."""
    terms = getattr(loss, "terms", None)
    out = [loss, *(terms.values() if isinstance(terms, (Mapping, torch.nn.ModuleDict)) else [])]
    return out + [b for o in out if (b := getattr(o, "boundary", None)) is not None]


def _map_mode(loss: Any) -> str:
    """``"signed"`` / ``"unsigned"``: the distance map a loss (or its boundary term / terms) reads."""
    modes = {
        o.map_mode
        for o in _parts(loss)
        if getattr(o, "map_mode", None) in ("signed", "unsigned") and "distance_map" in _forward_kwargs(o)
    }
    if len(modes) > 1:
        raise ValueError(
            f"{type(loss).__name__} combines losses that read a signed distance map (boundary) and an unsigned one "
            "(Hausdorff-DT) through the same 'distance_map' keyword; compute both maps in the pipeline "
            "(SignedDistanceMapd with mode='signed' and mode='unsigned') and call the two losses yourself"
        )
    return modes.pop() if modes else "signed"


def _forward_kwargs(loss: Any) -> list[str]:
    fwd = getattr(loss, "forward", None)
    if fwd is None:
        return []
    try:
        params = inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return []
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [n for n in names[2:] if n in _MAPS]  # the first two are (input, target)


def loss_map_keys(loss: Any, label_key: str = "label") -> dict[str, str]:
    """``{forward keyword: data key}`` for the label maps ``loss.forward`` takes (``distance_map``,
    ``weight_map``, ``instances``); ``{}`` for losses that take ``(input, target)``
    only, which is every overlap / pixel loss. A :class:`~monai_losses_ext.CompoundLoss` asks for the union
    of its terms' maps."""
    names = {n for part in _parts(loss) for n in _forward_kwargs(part)}
    return {n: f"{label_key}_{n}" for n in sorted(names)}


def label_map_transforms(
    loss: Any,
    label_key: str = "label",
    num_classes: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> LabelMaps:
    """One deterministic transform computing the maps ``loss`` needs (see :func:`loss_map_keys`) on the whole
    label, before cropping; the identity when it needs none, so plain losses pay nothing. (A plain
    ``MapTransform``, not a nested ``Compose``: ``CacheDataset`` caches everything up to the first
    ``Randomizable``, and ``Compose`` is one.)

    With ``regions`` (sigmoid region training) the distance maps are computed per region channel.
    """
    keys = loss_map_keys(loss, label_key)
    if not keys:
        return LabelMaps([])
    out: list = []
    src, n = label_key, num_classes
    if regions is not None and any(_MAPS[k] == "distance" for k in keys):
        src = f"{label_key}_regions_for_maps"
        out.append(OneHotd(label_key, regions=regions, output_keys=src))
        n = None
    for kw, key in keys.items():
        kind = _MAPS[kw]
        if kind == "distance":
            out.append(SignedDistanceMapd(src, num_classes=n, mode=_map_mode(loss), output_keys=key))
        elif kind == "weight":
            out.append(UNetWeightMapd(label_key, output_keys=key))
        else:
            out.append(LesionInstancesd(label_key, output_keys=key))
    return LabelMaps(out, drop=[src] if src != label_key else [])


class LabelMaps(Transform):
    """Applies ``transforms`` in order (deterministic), then drops the ``drop`` keys."""

    def __init__(self, transforms: Sequence[Any], drop: Sequence[str] = ()) -> None:
        self.transforms = list(transforms)
        self.drop = list(drop)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for t in self.transforms:
            d = t(d)
        for k in self.drop:
            d.pop(k, None)
        return d


class LossWithMaps(torch.nn.Module):
    """Wraps a loss so ``SupervisedTrainer`` can give it the label maps of the batch.

    ``SupervisedTrainer`` calls ``loss_function(pred, label)``; maps are extra batch keys. Pass
    ``prepare_batch=wrapper.prepare_batch`` to the trainer: it returns ``(image, label)`` as MONAI's default
    does and keeps this iteration's maps (``{forward keyword: data key}``, by default
    :func:`loss_map_keys`) for the next ``forward``. With no maps it is a transparent pass-through.
    """

    def __init__(self, loss: torch.nn.Module, label_key: str = "label", map_keys: Mapping[str, str] | None = None):
        super().__init__()
        self.loss = loss
        self.map_keys = dict(loss_map_keys(loss, label_key) if map_keys is None else map_keys)
        self._maps: dict[str, torch.Tensor] = {}

    def prepare_batch(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        from monai.engines.utils import default_prepare_batch

        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        missing = [k for k in self.map_keys.values() if k not in batchdata]
        if missing:
            raise KeyError(
                f"the loss {type(self.loss).__name__} needs the maps {missing} but the batch has only "
                f"{sorted(map(str, batchdata))}; add label_map_transforms(loss) to the preprocessing and list the "
                "map keys in the crop transform's keys"
            )
        self._maps = {
            kw: batchdata[key].to(device=device, non_blocking=non_blocking) for kw, key in self.map_keys.items()
        }
        return image, label

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.map_keys and not self._maps:
            raise RuntimeError("LossWithMaps: no maps prepared; give the trainer prepare_batch=<this>.prepare_batch")
        return self.loss(input, target, **self._maps)
