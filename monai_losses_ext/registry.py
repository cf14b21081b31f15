"""Pick a loss by name, as bundle configs do: ``get_loss("focal_tversky", softmax=True, to_onehot_y=True)``."""

from __future__ import annotations

import torch

__all__ = ["get_loss", "list_losses", "register_loss"]

_NAMES: dict[str, type] = {}  # canonical name -> class
_LOOKUP: dict[str, type] = {}  # normalised name or class name -> class


def _key(name: str) -> str:
    """'FocalTverskyLoss', 'focal-tversky', 'focal_tversky' -> 'focaltversky'."""
    key = name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")
    return key[:-4] if key.endswith("loss") and len(key) > 4 else key


def register_loss(name: str, cls: type) -> None:
    """Make ``cls`` available to ``get_loss`` under ``name`` and under its class name."""
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise TypeError(f"a registered loss must be a torch.nn.Module subclass, got {cls!r}.")
    _NAMES[name] = cls
    _LOOKUP[_key(name)] = cls
    _LOOKUP[_key(cls.__name__)] = cls


def list_losses() -> list[str]:
    """The registry names, sorted."""
    return sorted(_NAMES)


def get_loss(name: str, **kwargs) -> torch.nn.Module:
    """Build the loss registered as ``name`` (registry name or class name; case, '-' and '_' do not matter)."""
    if not isinstance(name, str):
        raise TypeError(f"loss name must be a string, got {type(name).__name__}.")
    cls = _LOOKUP.get(_key(name))
    if cls is None:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(list_losses())}.")
    return cls(**kwargs)
