"""The MONAI bundles that ship with the package: find them, list them, export one as a bundle folder or archive.

The bundles live in the repository's top-level ``bundles/`` folder; the wheel carries the same files as
``monai_losses_ext/bundles/_zoo/`` (``[tool.setuptools.package-dir]`` in ``pyproject.toml``). From a clone
(editable install or ``PYTHONPATH``) the clone's ``bundles/`` is used, so an edit there is what runs.

Command line::

    python -m monai_losses_ext.bundles list
    python -m monai_losses_ext.bundles export lesion_segmentation ./lesion_bundle
    python -m monai_losses_ext.bundles archive lesion_segmentation dist/

An exported folder is a complete MONAI bundle (``configs/``, ``docs/``, ``LICENSE``) that runs with
``python -m monai.bundle run --config_file configs/train.json --dataset_dir <data>`` from inside it. An
archive is the same folder zipped under its bundle name, the layout of MONAI's model-zoo releases, which
``monai.bundle.download(..., url="file://...")`` and :func:`zipfile.ZipFile.extractall` unpack.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BundleInfo", "archive_bundle", "bundle_path", "bundles_root", "export_bundle", "list_bundles"]

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parents[1]
_SHORT = "_segmentation"  # "lesion" names "lesion_segmentation"
_FILES = ("configs", "docs")  # what a bundle folder holds besides LICENSE (and the models/ a run writes)


@dataclass(frozen=True)
class BundleInfo:
    """One shipped bundle.

    Attributes:
        name: the bundle's folder name (``lesion_segmentation``).
        version: ``version`` in its ``configs/metadata.json``.
        title: ``name`` in its metadata (a human title).
        task: ``task`` in its metadata.
        path: the bundle's folder.
    """

    name: str
    version: str
    title: str
    task: str
    path: Path


def bundles_root() -> Path:
    """The folder holding the shipped bundles: a clone's ``bundles/`` when this package runs from one, else
    the copy inside the installed wheel.

    Returns:
        The folder, one sub-folder per bundle.

    Raises:
        FileNotFoundError: neither exists (a broken installation).
    """
    for root in (_CHECKOUT / "bundles", _PACKAGE / "_zoo"):
        if root.is_dir() and any((p / "configs" / "metadata.json").is_file() for p in root.iterdir()):
            return root
    raise FileNotFoundError(
        f"no bundles found in {_CHECKOUT / 'bundles'} or {_PACKAGE / '_zoo'}: reinstall monai-losses-ext "
        "(pip install --force-reinstall monai-losses-ext) or run from a clone of the repository"
    )


def _metadata(path: Path) -> dict:
    with open(path / "configs" / "metadata.json", encoding="utf-8") as f:
        return json.load(f)


def list_bundles() -> list[BundleInfo]:
    """Every shipped bundle, by name.

    Returns:
        One :class:`BundleInfo` per folder of :func:`bundles_root` that holds ``configs/metadata.json``.
    """
    out = []
    for path in sorted(p for p in bundles_root().iterdir() if (p / "configs" / "metadata.json").is_file()):
        meta = _metadata(path)
        out.append(BundleInfo(path.name, str(meta["version"]), meta.get("name", path.name), meta["task"], path))
    return out


def bundle_path(name: str) -> Path:
    """The folder of a shipped bundle.

    Args:
        name: the bundle's name (``lesion_segmentation``) or its short name (``lesion``).

    Returns:
        The bundle's folder.

    Raises:
        ValueError: no shipped bundle has that name; the message lists the names.
    """
    names = {b.name: b.path for b in list_bundles()}
    for candidate in (name, f"{name}{_SHORT}"):
        if candidate in names:
            return names[candidate]
    raise ValueError(f"no bundle named {name!r}; the shipped bundles are {sorted(names)}")


def _license_text() -> str:
    """The package's licence: from the installed distribution's metadata, else the clone's LICENSE."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # not installed: a clone on the path
        dist = importlib.metadata.distribution("monai-losses-ext")
        for rel in ("licenses/LICENSE", "LICENSE"):
            text = dist.read_text(rel)
            if text:
                return text
    path = _CHECKOUT / "LICENSE"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise FileNotFoundError("the licence of monai-losses-ext was not found; reinstall the package")


def _write_bundle(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for part in _FILES:
        shutil.copytree(src / part, dest / part)
    (dest / "LICENSE").write_text(_license_text())


def export_bundle(name: str, dest: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a complete bundle folder (``configs/``, ``docs/``, ``LICENSE``) that ``python -m monai.bundle run``
    runs; a run then writes ``models/``, ``logs/`` and its outputs inside it.

    Args:
        name: the bundle (see :func:`bundle_path`).
        dest: the folder to create. It must not exist, or be empty.
        overwrite: replace the bundle files (``configs/``, ``docs/``, ``LICENSE``) of an existing export
            at ``dest``; what a run wrote there (models, logs, predictions) is kept.

    Returns:
        ``dest`` as an absolute path.

    Raises:
        ValueError: unknown ``name``.
        FileExistsError: ``dest`` is a file, or a non-empty folder without ``overwrite=True``.
    """
    src, dest = bundle_path(name), Path(dest).absolute()
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} is a file; give a folder to export the bundle into")
    if dest.is_dir() and any(dest.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{dest} is not empty ({', '.join(sorted(p.name for p in dest.iterdir())[:5])}); choose a new "
                "folder, or pass --overwrite to replace its configs/, docs/ and LICENSE (run outputs are kept)"
            )
        if not (dest / "configs" / "metadata.json").is_file():
            raise FileExistsError(f"{dest} holds no exported bundle (no configs/metadata.json); not writing there")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # written beside dest and moved into place part by part, so a failed export leaves no half-written configs
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        _write_bundle(src, Path(tmp) / "b")
        dest.mkdir(exist_ok=True)
        for part in (*_FILES, "LICENSE"):
            old = dest / part
            if old.is_dir():
                shutil.rmtree(old)
            os.replace(Path(tmp) / "b" / part, old)
    return dest


def archive_bundle(name: str, dest_dir: str | os.PathLike = ".") -> Path:
    """Zip a bundle in the layout of MONAI's model-zoo releases: ``<name>/configs/...``, ``<name>/docs/...``,
    ``<name>/LICENSE``, in a file ``<name>_v<version>.zip``.

    Args:
        name: the bundle (see :func:`bundle_path`).
        dest_dir: the folder the archive is written to (created if missing).

    Returns:
        The archive's path.
    """
    src = bundle_path(name)
    version = str(_metadata(src)["version"])
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{src.name}_v{version}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / src.name
        _write_bundle(src, folder)
        part = out.with_suffix(".zip.part")
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.rglob("*")):
                z.write(f, f.relative_to(tmp).as_posix())
        os.replace(part, out)
    return out
