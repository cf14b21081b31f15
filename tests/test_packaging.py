"""The package as a user installs it: the wheel and the sdist, the bundles command (list, export, archive), the docs
site, and the lint and format checks that CI runs."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib
from _bundle_data import TINY
from monai.bundle import ConfigParser
from setuptools import find_packages

from monai_losses_ext import bundle as bu
from monai_losses_ext.bundles import archive_bundle, bundle_path, bundles_root, export_bundle, list_bundles

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["lesion_segmentation", "tumour_segmentation"]


def _run(cmd, cwd=ROOT, env=None, timeout=600, ok=True) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files), (
        a,
        b,
        cmp.left_only,
        cmp.right_only,
        cmp.diff_files,
    )
    for sub in cmp.common_dirs:
        _same_tree(a / sub, b / sub)


def test_ruff_lint_and_format():
    _run([sys.executable, "-m", "ruff", "check", "."])
    _run([sys.executable, "-m", "ruff", "format", "--check", "."])


def test_docs_site_builds_without_warnings(tmp_path):
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true"}
    _run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site"], env=env)
    losses = (tmp_path / "site" / "api" / "losses" / "index.html").read_text()
    for needle in ("DiceLoss", "FocalTverskyLoss", "include_background", "Raises"):
        assert needle in losses, needle
    assert (tmp_path / "site" / "tutorials" / "04_bundles" / "index.html").is_file()
    assert "Run state" in (tmp_path / "site" / "bundles" / "lesion_segmentation" / "index.html").read_text()


def test_pyproject_lists_every_package_on_disk():
    """``[tool.setuptools] packages`` is explicit (the bundles are mapped in from bundles/), so a new subpackage
    must be added there or the wheel would lack it."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set(find_packages(str(ROOT), include=["monai_losses_ext*"]))
    assert set(cfg["packages"]) == on_disk | {"monai_losses_ext.bundles._zoo"}
    assert cfg["package-dir"] == {"monai_losses_ext.bundles._zoo": "bundles"}
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "itk>=5.3" in meta["optional-dependencies"]["bundle"]


def test_bundles_are_found_and_listed():
    assert bundles_root() == ROOT / "bundles"  # a clone runs its own bundles
    assert [b.name for b in list_bundles()] == NAMES
    assert bundle_path("lesion") == bundle_path("lesion_segmentation") == ROOT / "bundles" / "lesion_segmentation"
    with pytest.raises(ValueError, match="tumour_segmentation"):
        bundle_path("liver")
    out = _run([sys.executable, "-m", "monai_losses_ext.bundles", "list"]).stdout
    assert all(n in out for n in NAMES) and "0.2.0" in out


@pytest.mark.parametrize("name", NAMES)
def test_bundle_metadata_is_complete(name):
    meta = json.loads((bundle_path(name) / "configs" / "metadata.json").read_text())
    assert meta["schema"].endswith("/meta_schema_20240725.json")
    assert bu.check_metadata(meta) == []
    assert all(isinstance(v, (int, float)) and v > 0 for v in meta.get("eval_metrics", {}).values())
    assert set(meta["required_packages_version"]) >= {"monai-losses-ext", "nibabel", "itk", "pytorch-ignite"}
    assert (bundle_path(name) / "docs" / "data_license.txt").is_file()


def test_metadata_check_catches_what_the_schema_would():
    meta = json.loads((bundle_path("lesion") / "configs" / "metadata.json").read_text())
    bad = {**meta, "schema": meta["schema"].replace("20240725", "20220324"), "eval_metrics": {"mean_dice": "0.8"}}
    bad["network_data_format"] = {"inputs": {"image": {**meta["network_data_format"]["inputs"]["image"]}}}
    bad["network_data_format"]["inputs"]["image"]["num_channels"] = "2"
    problems = bu.check_metadata(bad)
    for needle in (
        "not the current MONAI bundle schema",
        "eval_metrics.mean_dice must be a number",
        "inputs.image.num_channels must be int",
        "network_data_format.outputs missing",
    ):
        assert any(needle in p for p in problems), (needle, problems)


def test_export_writes_a_complete_bundle_and_never_overwrites_a_run(tmp_path):
    src = bundle_path("lesion")
    cli = [sys.executable, "-m", "monai_losses_ext.bundles", "export", "lesion", tmp_path / "b"]
    _run(cli)
    for part in ("configs", "docs"):
        _same_tree(src / part, tmp_path / "b" / part)
    assert (tmp_path / "b" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()

    res = _run(cli, ok=False)  # a second export into the same folder is refused, and says how to proceed
    assert res.returncode == 2 and "not empty" in res.stderr and "--overwrite" in res.stderr
    (tmp_path / "b" / "models").mkdir()
    (tmp_path / "b" / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "b" / "configs" / "train.json").write_text("{}")  # a stale config is replaced ...
    _run([*cli, "--overwrite"])
    assert (tmp_path / "b" / "models" / "model.pt").read_bytes() == b"weights"  # ... the run's files are kept
    _same_tree(src / "configs", tmp_path / "b" / "configs")

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no exported bundle"):
        export_bundle("lesion", tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", NAMES)
def test_archive_is_a_model_zoo_zip_that_monai_unpacks(name, tmp_path):
    from monai.bundle import download

    path = archive_bundle(name, tmp_path / "dist")
    version = json.loads((bundle_path(name) / "configs" / "metadata.json").read_text())["version"]
    assert path.name == f"{name}_v{version}.zip"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert {f"{name}/LICENSE", f"{name}/configs/train.json", f"{name}/docs/data_license.txt"} <= set(names)
    assert all(n.startswith(f"{name}/") for n in names)

    download(name=name, bundle_dir=str(tmp_path / "zoo"), url=path.resolve().as_uri(), progress=False)
    unpacked = tmp_path / "zoo" / name
    _same_tree(bundle_path(name) / "configs", unpacked / "configs")
    parser = ConfigParser()
    parser.read_config(str(unpacked / "configs" / "train.json"))
    parser.read_meta(str(unpacked / "configs" / "metadata.json"))
    assert parser.get("_meta_#version") == version and parser.get_parsed_content("loss_name") in (
        "dice_ce",
        "dice_focal",
    )
    assert parser.get("network_def#_target_") == "UNet"  # the run itself: test_wheel_in_a_fresh_venv_...


def test_sdist_ships_what_its_tests_need(tmp_path):
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", tmp_path, "."])
    (sdist,) = tmp_path.glob("monai_losses_ext-*.tar.gz")
    with tarfile.open(sdist) as t:
        t.extractall(tmp_path, filter="data")
    top = tmp_path / sdist.name.removesuffix(".tar.gz")
    for rel in ("LICENSE", "CHANGELOG.md", "CITATION.cff", "mkdocs.yml", "tests/reference.py", "tests/_bundle_data.py"):
        assert (top / rel).is_file(), rel
    _same_tree(ROOT / "bundles" / "lesion_segmentation", top / "bundles" / "lesion_segmentation")
    res = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"], cwd=top)
    assert "error" not in res.stdout.lower().splitlines()[-1], res.stdout[-2000:]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_exports_trains_and_infers(tmp_path):
    """The pip path of README, outside any clone: build the wheel, install it into a new virtual environment,
    export the lesion bundle, generate phantoms, train one tiny epoch and infer, all from a folder outside the
    repository. The venv sees the system's site-packages for the heavy dependencies (torch, MONAI, itk are not
    re-installed); the wheel itself is installed into the venv, and the test checks that the package, its
    bundles and its version come from there and not from this clone."""
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, "."])
    (wheel,) = tmp_path.glob("monai_losses_ext-*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
    assert "monai_losses_ext/py.typed" in files
    assert "monai_losses_ext/bundles/_zoo/lesion_segmentation/configs/train.json" in files
    assert "monai_losses_ext/bundles/_zoo/tumour_segmentation/docs/data_license.txt" in files

    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    py = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", wheel])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    where = _run(
        [
            py,
            "-c",
            "import monai_losses_ext as m, monai_losses_ext.bundles as b; print(m.__file__); print(b.bundles_root())",
        ],
        cwd=work,
        env=env,
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where

    _run([py, "-m", "monai_losses_ext.bundles", "export", "lesion_segmentation", "bundle"], cwd=work, env=env)
    phantoms = [
        "--task",
        "lesion",
        "--num-cases",
        "4",
        "--spacing",
        "3",
        "--seed",
        "0",
        "--out",
        "data",
        "--no-progress",
    ]
    _run([py, "-m", "monai_losses_ext.phantoms", *phantoms], cwd=work, env=env)
    tiny = {
        **TINY,
        "epochs": 1,
        "num_iterations": 2,
        "val_interval": 1,
        "dataset_dir": str(work / "data"),
        "num_val": 1,
    }
    bundle = work / "bundle"
    train = bu.bundle_command(bundle, ["train.json"], tiny)
    _run([py, *train[1:]], cwd=bundle, env=env)
    assert (bundle / "models" / "model.pt").is_file()
    infer = bu.bundle_command(bundle, ["train.json", "inference.json"], tiny)
    _run([py, *infer[1:]], cwd=bundle, env=env)
    preds = sorted((bundle / "pred").rglob("*.nii.gz"))
    assert preds, sorted(p.name for p in bundle.rglob("*"))
