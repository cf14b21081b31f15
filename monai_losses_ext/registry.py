"""Pick a loss by name, as bundle configs do: ``get_loss("focal_tversky", softmax=True, to_onehot_y=True)``."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch

__all__ = ["get_loss", "list_losses", "register_loss"]

_NAMES: dict[str, type] = {}  # canonical name -> class
_LOOKUP: dict[str, type] = {}  # normalised name or class name -> class


def _key(name: str) -> str:
    """'FocalTverskyLoss', 'focal-tversky', 'focal_tversky' -> 'focaltversky'."""
    key = name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")
    return key[:-4] if key.endswith("loss") and len(key) > 4 else key


def register_loss(name: str, cls: type) -> None:
    """Make ``cls`` available to ``get_loss`` under ``name`` and under its class name.

    ``cls`` is the loss class (a ``torch.nn.Module`` subclass, not an instance); ``get_loss`` builds it with
    the keyword arguments it is given. Registering a name again replaces the earlier class.

    Args:
        name: the registry name, e.g. ``"focal_tversky"``; it is listed by ``list_losses`` as given, and
            looked up without regard to case, ``-``, ``_``, spaces or a trailing ``loss``.

    Raises:
        TypeError: ``cls`` is not a ``torch.nn.Module`` subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise TypeError(f"a registered loss must be a torch.nn.Module subclass, got {cls!r}.")
    _NAMES[name] = cls
    _LOOKUP[_key(name)] = cls
    _LOOKUP[_key(cls.__name__)] = cls


def list_losses() -> list[str]:
    """The registry names, sorted.

    Returns:
        The names under which losses were registered (``register_loss``), in alphabetical order.
    """
    return sorted(_NAMES)


def _import_dotted(path: str) -> Any:
    mod, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"cannot import loss {path!r}: {err}; give a registry name ({', '.join(list_losses())}) "
            "or the dotted path of a loss class such as 'monai.losses.DiceLoss'."
        ) from err


def get_loss(name: str | type, defaults: dict[str, Any] | None = None, **kwargs: Any) -> torch.nn.Module:
    """Build a loss from a registry name or class name (``"focal_tversky"``, ``"FocalTverskyLoss"``; case, '-'
    and '_' do not matter), a dotted class path (``"monai.losses.DiceLoss"``) or a class.

    ``kwargs`` go to the constructor as they are (an argument the loss does not take is an error).
    ``defaults`` are applied only where the constructor takes them: a config that lets the user pick any
    loss by name can pass the input format once, e.g.
    ``get_loss(name, defaults={"softmax": True, "to_onehot_y": True, "distributed": True})``; cross-entropy,
    which always reads logits and index labels, simply does not take ``softmax``.

    Args:
        name: a registry name or class name (see ``list_losses``), a dotted path ``"package.module.Class"``,
            or a ``torch.nn.Module`` subclass.
        defaults: keyword arguments passed only where the constructor takes them (all of them to a
            constructor that takes ``**kwargs``); ``kwargs`` win over them. None: none.
        **kwargs: keyword arguments of the constructor, passed as they are.

    Returns:
        The loss module, ``cls(**defaults_it_takes, **kwargs)``.

    Raises:
        ValueError: an unknown name, or a dotted path that cannot be imported; also any ``ValueError`` of
            the constructor (an invalid argument value).
        TypeError: ``name`` is neither a string nor a class; the result is not a ``torch.nn.Module``
            class (``"fractions.Fraction"`` imports, but is no loss); the constructor raised ``TypeError``
            (e.g. an argument it does not take), re-raised with the list of the arguments it takes.
    """
    if isinstance(name, str) and "." in name.strip():
        cls = _import_dotted(name.strip())
    elif isinstance(name, str):
        cls = _LOOKUP.get(_key(name))
        if cls is None:
            raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(list_losses())}.")
    elif isinstance(name, type):
        cls = name
    else:
        raise TypeError(f"loss name must be a string or a class, got {type(name).__name__}.")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise TypeError(
            f"loss {name!r} is {cls!r}, not a torch.nn.Module class: give a registry name "
            f"({', '.join(list_losses())}) or the dotted path of a loss class such as "
            "'monai.losses.DiceLoss'."
        )
    params = inspect.signature(cls.__init__).parameters
    if defaults:
        takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
        kwargs = {**{k: v for k, v in defaults.items() if takes_all or k in params}, **kwargs}
    try:
        return cls(**kwargs)
    except TypeError as err:
        accepted = [p for p in params if p != "self"]
        raise TypeError(f"{cls.__name__} ({name!r}): {err}; it takes {accepted}.") from err
