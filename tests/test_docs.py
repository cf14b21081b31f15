"""The API reference is complete: every public class and function (the ``__all__`` of each public module) has a
Google-style docstring whose ``Args`` name exactly its parameters, a ``Returns`` section where it returns a value,
type hints on every parameter and return, and every loss and transform documents what its call returns and what
it raises. The docs site is built from these docstrings (``mkdocs build --strict`` in ``test_packaging.py``)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import griffe
import pytest
import torch
from monai.transforms import Transform

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "monai_losses_ext",
    "monai_losses_ext.transforms",
    "monai_losses_ext.metrics",
    "monai_losses_ext.registry",
    "monai_losses_ext.bundle",
    "monai_losses_ext.bundles",
    "monai_losses_ext.phantoms",
    "monai_losses_ext.benchmark",
]
PACKAGE = griffe.load("monai_losses_ext", search_paths=[str(ROOT)], docstring_parser="google")


def _public():
    seen = {}
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr in mod.__all__:
            obj = getattr(mod, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith("monai_losses_ext"):
                seen.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return seen


PUBLIC = _public()


def _sections(path: str) -> dict[str, object]:
    doc = PACKAGE[path.removeprefix("monai_losses_ext.")].docstring
    assert doc is not None and doc.value.strip(), f"{path} has no docstring"
    return {s.kind.value: s for s in doc.parse("google")}


def _params(fn) -> list[str]:
    sig = inspect.signature(fn)
    return [
        ("**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else "") + p.name
        for p in sig.parameters.values()
        if p.name not in ("self", "cls")
    ]


def _check_args(path: str, fn) -> dict[str, object]:
    sections, params = _sections(path), _params(fn)
    documented = [p.name for p in sections["parameters"].value] if "parameters" in sections else []
    assert sorted(documented) == sorted(params), f"{path}: Args documents {documented}, the signature has {params}"
    return sections


def _check_hints(path: str, fn) -> None:
    sig = inspect.signature(fn)
    missing = [p.name for p in sig.parameters.values() if p.name not in ("self", "cls") and p.annotation is p.empty]
    assert not missing, f"{path}: parameters without a type hint: {missing}"
    if fn.__name__ != "__init__":
        assert sig.return_annotation is not sig.empty, f"{path}: no return type hint"


def _defined_here(cls, name):
    """The class of ``cls``'s MRO (inside this package) that defines ``name``."""
    for k in cls.__mro__:
        if name in vars(k):
            return k if k.__module__.startswith("monai_losses_ext") else None
    return None


FUNCTIONS = {p: f for p, f in PUBLIC.items() if inspect.isfunction(f)}
CLASSES = {p: c for p, c in PUBLIC.items() if inspect.isclass(c)}
CALLABLES = {  # the call of every loss (forward) and transform (__call__)
    p: (c, m)
    for p, c in CLASSES.items()
    for m in ("forward", "__call__")
    if (issubclass(c, torch.nn.Module) and m == "forward") or (issubclass(c, Transform) and m == "__call__")
}


@pytest.mark.parametrize("path", sorted(FUNCTIONS))
def test_function_documented_and_typed(path):
    fn = FUNCTIONS[path]
    sections = _check_args(path, fn)
    _check_hints(path, fn)
    returns = inspect.signature(fn).return_annotation
    if returns not in ("None", None, "NoReturn"):
        assert "returns" in sections or "yields" in sections, f"{path}: no Returns section"


@pytest.mark.parametrize("path", sorted(CLASSES))
def test_class_documented_and_typed(path):
    cls = CLASSES[path]
    init = cls.__init__
    if _defined_here(cls, "__init__") is None and not hasattr(cls, "__dataclass_fields__"):
        return  # torch's or MONAI's constructor: documented there
    params = _params(cls)
    sections = _sections(path)
    documented = [p.name for p in sections["parameters"].value] if "parameters" in sections else []
    if hasattr(cls, "__dataclass_fields__") and "attributes" in sections:  # a record documents its fields
        documented = [a.name for a in sections["attributes"].value]
    assert sorted(documented) == sorted(params), f"{path}: Args documents {documented}, the signature has {params}"
    if _defined_here(cls, "__init__") is not None:
        _check_hints(f"{path}.__init__", init)
    for name, member in vars(cls).items():
        if not name.startswith("_") and inspect.isfunction(member):
            assert member.__doc__ and member.__doc__.strip(), f"{path}.{name} has no docstring"
            _check_hints(f"{path}.{name}", member)


@pytest.mark.parametrize("path", sorted(CALLABLES))
def test_loss_and_transform_calls_documented(path):
    cls, method = CALLABLES[path]
    assert "raises" in _sections(path), f"{path}: the class docstring has no Raises section"
    owner = _defined_here(cls, method)
    if owner is None:
        return
    where = f"{owner.__module__}.{owner.__qualname__}.{method}"
    sections = _check_args(where, getattr(owner, method))
    assert "returns" in sections, f"{where}: no Returns section"


def test_every_public_object_is_checked():
    """The lists above are not empty by accident (an import change would make every test vanish)."""
    assert len(FUNCTIONS) > 40 and len(CLASSES) > 60 and len(CALLABLES) > 35
