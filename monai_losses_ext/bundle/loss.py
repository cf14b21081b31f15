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
    name: str | type | torch.nn.Module,
    defaults: Mapping[str, Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """The bundle's ``loss``: :func:`~monai_losses_ext.get_loss` of a registry name (``"dice_ce"``), a dotted
    class path (``"monai.losses.DiceLoss"``) or a class, with ``defaults`` (the input format) passed only where
    the constructor takes them and ``kwargs`` always; a ready ``torch.nn.Module`` is returned as it is. Anything
    that does not build into a ``torch.nn.Module`` is refused here, before training, with a ``TypeError``.

    Args:
        name: a registry name or class name (``"dice_ce"``, ``"FocalTverskyLoss"``), a dotted class path, a
            ``torch.nn.Module`` class, or a built loss (then ``defaults`` and ``kwargs`` are ignored).
        defaults: keyword arguments given only to a constructor that takes them (the bundles pass the input
            format: ``softmax`` / ``sigmoid``, ``to_onehot_y``, ...); None: none.
        kwargs: keyword arguments always given to the constructor (``--loss_args``); None: none.

    Returns:
        The loss module.

    Raises:
        ValueError: ``name`` is an unknown registry name or a dotted path that cannot be imported.
        TypeError: ``name`` is neither a string nor a class, names something that is not a ``torch.nn.Module``
            class, or the constructor refuses ``kwargs`` (the message lists what it takes).
    """
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
    of its terms' maps.

    The maps are found from the keyword parameters of ``forward`` after ``(input, target)``, of the loss, of
    each of its ``terms`` and of their ``boundary`` terms.

    Args:
        loss: the built loss (a ``torch.nn.Module``; anything without a ``forward`` needs no maps).
        label_key: the label's data key; each map's key is ``f"{label_key}_{keyword}"``.

    Returns:
        ``{forward keyword: data key}``, sorted by keyword, e.g. ``{"distance_map": "label_distance_map"}``.
    """
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

    Distance maps are signed or unsigned as the loss's ``map_mode`` says (signed when none says); weight
    maps are ``UNetWeightMapd`` maps and lesion instances ``LesionInstancesd`` maps of the label.

    Args:
        loss: the built loss (see :func:`loss_map_keys`).
        label_key: the data key of the label, ``(1, *spatial)`` index labels of one case.
        num_classes: the number of classes including background, for the per-class distance maps of index
            labels; unused with ``regions``.
        regions: the label values of each region channel (``[[1, 3], [1, 2, 3], [3]]`` for TC, WT, ET); the
            distance maps then have one channel per region. None: per class.

    Returns:
        A :class:`LabelMaps` transform that adds one data key per map (:func:`loss_map_keys`); with no maps it
        returns its input unchanged (as a new dict).

    Raises:
        ValueError: the loss combines terms that read a signed and an unsigned distance map through the same
            ``distance_map`` keyword, or (when a distance map is needed) ``regions`` is not a list of non-empty
            lists of label values.
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
    """Applies ``transforms`` in order (deterministic), then drops the ``drop`` keys.

    Built by :func:`label_map_transforms`; a plain ``Transform`` rather than a ``Compose`` so that
    ``CacheDataset`` caches its result. It does no check of its own.

    Args:
        transforms: dictionary transforms (callables taking and returning a data dict), applied in order.
        drop: data keys removed after the last transform (intermediate results); keys that are absent are
            ignored.

    Raises:
        KeyError: a key a transform reads is missing from the data (the map transforms do not allow missing
            keys).
        ValueError: raised by the map transforms for a label that is not channel-first ``(C, *spatial)``,
            holds values outside its classes or regions, or has one channel while no ``num_classes`` is set.
        TypeError: raised by the map transforms for a label that is not a tensor, MetaTensor or array.
    """

    def __init__(self, transforms: Sequence[Any], drop: Sequence[str] = ()) -> None:
        self.transforms = list(transforms)
        self.drop = list(drop)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply the transforms to one case.

        Args:
            data: one case's data dict (the label ``(1, *spatial)``, before cropping).

        Returns:
            A new dict (``data`` is copied first): the entries of ``data`` plus the keys the transforms add
            (the maps, one ``(C, *spatial)`` entry each), without the ``drop`` keys.
        """
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

    It computes ``loss(input, target, **maps)``, the wrapped loss's own formula evaluated with the maps of
    the last prepared batch.

    Args:
        loss: the loss to wrap.
        label_key: the label's data key, used to name the map keys when ``map_keys`` is None.
        map_keys: ``{forward keyword: batch key}`` of the maps to pass; None: :func:`loss_map_keys` of
            ``loss``; ``{}``: none.

    Raises:
        KeyError: :meth:`prepare_batch` gets a batch that lacks a map key (the map transforms are not in the
            preprocessing, or the crop does not list their keys).
        RuntimeError: ``forward`` runs before any :meth:`prepare_batch` although the loss needs maps.
    """

    def __init__(
        self, loss: torch.nn.Module, label_key: str = "label", map_keys: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        self.loss = loss
        self.map_keys = dict(loss_map_keys(loss, label_key) if map_keys is None else map_keys)
        self._maps: dict[str, torch.Tensor] = {}

    def prepare_batch(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``prepare_batch`` of ``SupervisedTrainer``: the image and label as MONAI's
        ``default_prepare_batch`` returns them, and this batch's maps kept for the next ``forward``.

        Args:
            batchdata: the collated batch, with the ``"image"`` and ``"label"`` keys and one key per map.
            device: the device the image, the label and the maps are moved to; None: where they are.
            non_blocking: passed to ``Tensor.to``.
            **kwargs: further arguments of ``Tensor.to`` for the image and the label.

        Returns:
            ``(image, label)``, ``(B, C_in, *spatial)`` and ``(B, 1, *spatial)`` (or as the batch holds them);
            the label is None when the batch has none.

        Raises:
            KeyError: a map key of ``map_keys`` is not in the batch.
        """
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
        """The wrapped loss of ``input`` and ``target`` with the maps of the last prepared batch.

        Args:
            input: the network output ``(B, C, *spatial)``, as the wrapped loss reads it (logits, unless it was
                built for probabilities).
            target: the label ``(B, 1, *spatial)`` index labels or ``(B, C, *spatial)`` one-hot / region
                channels, as the wrapped loss reads it.

        Returns:
            What the wrapped loss returns: a scalar for its ``reduction="mean"`` or ``"sum"``, the unreduced
            shape it documents (e.g. ``(B, C)``) for ``"none"``.

        Raises:
            RuntimeError: the loss needs maps and none were prepared.
        """
        if self.map_keys and not self._maps:
            raise RuntimeError("LossWithMaps: no maps prepared; give the trainer prepare_batch=<this>.prepare_batch")
        return self.loss(input, target, **self._maps)
