"""The tutorials in tutorials/: every notebook runs top to bottom in fast mode (a failing cell fails the test),
its stored outputs are there and hold no error, and README.md links it.

Fast mode: ``MLE_TUTORIAL_FAST=1`` (smaller data, fewer epochs); the notebooks write what they produce under
``MLE_TUTORIAL_WORKDIR`` (here a temporary folder), so the repository is left untouched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in TUTORIALS]


def test_the_four_tutorials_exist():
    numbers = sorted(p.name[:2] for p in TUTORIALS)
    assert numbers == ["01", "02", "03", "04"], [p.name for p in TUTORIALS]


@pytest.mark.parametrize("path", TUTORIALS, ids=IDS)
def test_stored_outputs_read_without_running(path):
    """On a code host the notebook is read, not run: every code cell that prints or plots has its output
    stored, none of them an error, and at least one figure is stored."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code, f"{path.name} has no code"
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were never executed; run it and save the outputs"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} stores an error output: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} stores no figure"
    fast = [c for c in code if "MLE_TUTORIAL_FAST" in c.source]
    assert fast, f"{path.name} does not read MLE_TUTORIAL_FAST, so the test cannot run it in fast mode"


def test_readme_links_every_tutorial():
    readme = (ROOT / "README.md").read_text()
    for path in TUTORIALS:
        link = f"tutorials/{path.name}"
        assert re.search(r"\]\(" + re.escape(link) + r"\)", readme), f"README.md does not link {link}"


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=IDS)
def test_tutorial_runs_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MLE_TUTORIAL_FAST", "1")
    monkeypatch.setenv("MLE_TUTORIAL_WORKDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    # the kernel imports the package from this checkout, as a user running it from a clone would
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell and the traceback when a cell fails
    ran = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.get("execution_count") for c in ran)
