"""Run state of the bundles under faults, caused for real through the bundle CLI (``python -m monai.bundle run``)
on tiny data: kill -9 at seeded moments and inside a checkpoint save, resume; the best model across a resume;
corrupt and incompatible checkpoints; two runs into one folder; a fresh run into a used folder; bad data;
unwritable output; divergence; a loss that is no loss; overrides on resume; torchrun kill and resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _bundle_data import BUNDLES, command, env, free_port, run, torchrun, write_dataset

from monai_losses_ext import bundle as bu

pytestmark = pytest.mark.slow
# a torch.save that dies half-way: the Nth checkpoint save writes half its bytes, then the process is killed
KILL_IN_SAVE = """
import io, os, signal, torch
_save, _n = torch.save, [0]
def _dying_save(obj, f, *a, **k):
    if isinstance(obj, dict) and "format" in obj and hasattr(f, "write"):
        _n[0] += 1
        if _n[0] == int(os.environ["KILL_IN_SAVE"]):
            buf = io.BytesIO(); _save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *a, **k)
torch.save = _dying_save
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "lesion", "lesion", n=4)


def history(root: Path) -> tuple[list[int], list[int]]:
    train, val = bu.read_history(str(root / "logs" / "history.jsonl"))
    return [r["epoch"] for r in train], [r["epoch"] for r in val]


def start(root, data_dir, environ=None, **overrides) -> subprocess.Popen:
    return subprocess.Popen(
        command(root, data_dir, **overrides),
        env=environ or env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(BUNDLES["lesion"]),
    )


def wait_for(cond, proc=None, timeout=120.0) -> None:
    t0 = time.time()
    while not cond():
        assert proc is None or proc.poll() is None, "the run ended before the moment to kill it"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_kill_at_seeded_moments_and_inside_a_save_then_resume(data, tmp_path):
    epochs, rng = 30, random.Random(0)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(KILL_IN_SAVE)
    for _ in range(3):  # kill -9 somewhere in the epoch after the k-th, k and the delay drawn from a seeded RNG
        target = len(history(tmp_path)[0]) + 1 + rng.randrange(3)
        proc = start(tmp_path, data, epochs=epochs)
        wait_for(lambda target=target: len(history(tmp_path)[0]) >= target, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
    # the next checkpoint save dies half-way: a partial temporary file, the previous checkpoint untouched
    ckpts = bu.list_checkpoints(str(tmp_path / "models"))
    res = subprocess.run(
        command(tmp_path, data, epochs=epochs),
        env=env(tmp_path / "site", KILL_IN_SAVE=1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert list((tmp_path / "models").glob(".tmp-*")), "the killed save left no partial file"
    assert set(bu.list_checkpoints(str(tmp_path / "models"))) >= set(ckpts[:1])
    bu.load_checkpoint(bu.list_checkpoints(str(tmp_path / "models"))[0])  # still loads
    res = run(tmp_path, data, epochs=epochs)
    out = res.stdout + res.stderr
    assert "interrupted" in out and ".tmp-" in out  # the partial file is named and removed
    assert not list((tmp_path / "models").glob(".tmp-*"))
    train, val = history(tmp_path)
    assert train == list(range(1, epochs + 1)) and val == list(range(1, epochs + 1))
    assert [Path(p).name for p in bu.list_checkpoints(str(tmp_path / "models"))] == [f"checkpoint_epoch={epochs}.pt"]
    assert not (tmp_path / ".lock").exists()


SCRIPTED = [
    0.3,
    0.9,
    0.5,
    0.6,
    0.95,
    0.1,
]  # key metric per epoch: best at 2, a lower first value after resume, best at 5


def test_best_model_kept_across_resume(data, tmp_path):
    metric = json.dumps({"val_mean_dice": {"_target_": "_bundle_data.ScriptedMetric", "values": SCRIPTED}})
    run(tmp_path, data, epochs=3, **{"validate#key_metric": metric})
    best = json.loads((tmp_path / "models" / "model.json").read_text())
    assert (best["epoch"], best["value"]) == (2, 0.9)
    weights = (tmp_path / "models" / "model.pt").read_bytes()
    run(tmp_path, data, epochs=4, **{"validate#key_metric": metric})  # epoch 4 scores 0.6 < 0.9: model.pt stays
    assert json.loads((tmp_path / "models" / "model.json").read_text())["epoch"] == 2
    assert (tmp_path / "models" / "model.pt").read_bytes() == weights
    ckpt = bu.load_checkpoint(str(tmp_path / "models" / "checkpoint_epoch=4.pt"))
    assert ckpt["best"] == {"metric": "val_mean_dice", "value": 0.9, "epoch": 2}
    run(tmp_path, data, epochs=6, **{"validate#key_metric": metric})
    assert json.loads((tmp_path / "models" / "model.json").read_text())["epoch"] == 5
    assert history(tmp_path)[1] == [1, 2, 3, 4, 5, 6]


def test_a_nan_first_validation_is_replaced_by_the_first_number(data, tmp_path):
    """Epoch 1 has nothing to score (NaN): a model is kept so that evaluation has one, and the first real
    number replaces it; a later NaN never replaces a model (a NaN best used to block every later model)."""
    metric = json.dumps(
        {"val_mean_dice": {"_target_": "_bundle_data.ScriptedMetric", "values": ["nan", 0.4, "nan", 0.7]}}
    )
    run(tmp_path, data, epochs=4, **{"validate#key_metric": metric})
    best = json.loads((tmp_path / "models" / "model.json").read_text())
    assert (best["epoch"], best["value"]) == (4, 0.7)


@pytest.mark.parametrize("damage", ["empty", "half"])
def test_corrupt_newest_checkpoint_is_skipped_and_named(damage, data, tmp_path):
    run(tmp_path, data, epochs=2)
    good = tmp_path / "models" / "checkpoint_epoch=2.pt"
    bad = tmp_path / "models" / "checkpoint_epoch=3.pt"
    bad.write_bytes(b"" if damage == "empty" else good.read_bytes()[: good.stat().st_size // 2])
    res = run(tmp_path, data, epochs=4)
    out = res.stdout + res.stderr
    assert "skipping a checkpoint that does not load" in out and str(bad) in out
    assert "resumed from" in out and str(good) in out
    assert history(tmp_path)[0] == [1, 2, 3, 4]


def test_changed_network_names_the_checkpoint_and_the_way_out(data, tmp_path):
    run(tmp_path, data, epochs=1)
    res = run(tmp_path, data, epochs=2, channels=[8, 16, 32], expect_ok=False)
    err = res.stdout + res.stderr
    assert "checkpoint_epoch=1.pt does not fit this network" in err and "--resume False" in err
    assert "channels" in err and "[4, 8, 16]" in err  # the argument that changed, old and new
    assert history(tmp_path)[0] == [1]


def test_fresh_run_into_used_folder_moves_the_previous_run(data, tmp_path):
    run(tmp_path, data, epochs=2)
    res = run(tmp_path, data, epochs=1, resume=False)
    assert "moved to" in res.stdout + res.stderr
    (prev,) = (tmp_path / "previous").iterdir()
    assert (prev / "models" / "checkpoint_epoch=2.pt").exists() and (prev / "logs" / "history.jsonl").exists()
    assert history(tmp_path)[0] == [1]
    assert [Path(p).name for p in bu.list_checkpoints(str(tmp_path / "models"))] == ["checkpoint_epoch=1.pt"]


def test_second_run_into_the_same_folder_refuses_and_stale_lock_is_replaced(data, tmp_path):
    first = start(tmp_path, data, epochs=500)
    try:
        wait_for(lambda: len(history(tmp_path)[0]) >= 1, first)
        res = run(tmp_path, data, epochs=500, expect_ok=False)
        assert f"in use by another training run (pid {first.pid}" in res.stdout + res.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / ".lock").exists()  # killed: the lock stays behind
    done = history(tmp_path)[0]
    res = run(tmp_path, data, epochs=len(done) + 1)
    assert "stale lock" in res.stdout + res.stderr
    assert history(tmp_path)[0] == list(range(1, len(done) + 2))


def test_truncated_image_and_affine_mismatch_are_named(tmp_path):
    d = write_dataset(tmp_path / "bad", "lesion", n=4)
    img = d / "imagesTr" / "case_001.nii.gz"
    whole = img.read_bytes()
    img.write_bytes(whole[: len(whole) // 2])
    err = run(tmp_path / "run1", d, expect_ok=False).stderr
    assert "case 'case_001': cannot read the image file" in err and str(img) in err
    img.write_bytes(whole)
    lab = d / "labelsTr" / "case_000.nii.gz"
    nii = nib.load(str(lab))
    shifted = nii.affine.copy()
    shifted[0, 3] += 10.0  # 10 mm off
    nib.save(nib.Nifti1Image(np.asarray(nii.dataobj), shifted), str(lab))
    err = run(tmp_path / "run2", d, expect_ok=False).stderr
    assert "case_000.nii.gz" in err and "affines differ by up to 10" in err and "affine_tolerance" in err
    run(tmp_path / "run3", d, label_affine_tolerance=False)  # allowed on request (fire drops a None override)


def test_modality_count_is_checked_against_in_channels(tmp_path):
    d = write_dataset(tmp_path / "mods", "lesion", n=3)
    meta = json.loads((d / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    (d / "dataset.json").write_text(json.dumps(meta))
    err = run(tmp_path / "run", d, expect_ok=False).stderr
    assert "lists 3 modalities ['FLAIR', 'T1w', 'T2w'] but the bundle expects in_channels=2" in err
    assert "--in_channels 3" in err


def test_unwritable_output_stops_before_epoch_1(data, tmp_path):
    (tmp_path / "models").write_text("a file where the checkpoint folder should be")
    res = run(tmp_path, data, expect_ok=False)
    err = res.stdout + res.stderr
    assert f"cannot write to {tmp_path / 'models'}" in err and "--bundle_root" in err
    assert "[epoch 1/" not in err and not (tmp_path / "logs" / "history.jsonl").exists()


def test_divergence_stops_naming_iteration_epoch_and_cause(data, tmp_path):
    err = run(tmp_path, data, epochs=3, learning_rate=1e12, expect_ok=False).stderr
    assert "TrainingDivergedError: training diverged" in err
    assert "at iteration" in err and "(epoch" in err and "learning rate is too high" in err


def test_a_loss_that_is_no_loss_is_refused_before_training(data, tmp_path):
    err = run(tmp_path, data, loss_name="fractions.Fraction", expect_ok=False).stderr
    assert "loss 'fractions.Fraction' is <class 'fractions.Fraction'>, not a torch.nn.Module" in err
    assert not (tmp_path / "logs" / "history.jsonl").exists()


def test_learning_rate_and_epochs_changed_on_resume_are_applied(data, tmp_path):
    run(tmp_path, data, epochs=2, learning_rate=0.002)
    res = run(tmp_path, data, epochs=4, learning_rate=0.01)
    out = res.stdout + res.stderr
    assert "--learning_rate changed from 0.002 (checkpoint) to 0.01" in out and "LR schedule changed" in out
    ckpt = bu.load_checkpoint(str(tmp_path / "models" / "checkpoint_epoch=4.pt"))
    sched = ckpt["lr_scheduler"]
    assert (sched["T_max"], sched["base_lrs"], sched["last_epoch"]) == (4, [0.01], 4)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.01)  # eta_min at the new end
    err = run(tmp_path, data, epochs=3, expect_ok=False).stderr  # fewer epochs than the checkpoint has
    assert "reached epoch 4, more than --epochs 3" in err and "--resume False" in err


def test_torchrun_two_processes_kill_and_resume(data, tmp_path):
    def two_ranks(epochs):
        launcher = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        return torchrun(launcher, tmp_path, data, epochs=epochs, max_cases=4)

    proc = subprocess.Popen(
        two_ranks(6), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: len(history(tmp_path)[0]) >= 2, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.wait()
    res = subprocess.run(two_ranks(6), env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    train, val = history(tmp_path)
    assert train == [1, 2, 3, 4, 5, 6] and val == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes, no epoch twice
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) <= 2  # one writer per run, rank 0 only
    ckpt = torch.load(str(tmp_path / "models" / "model.pt"), map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt)


def test_a_failing_close_neither_hides_the_run_error_nor_keeps_the_lock(tmp_path, caplog):
    class Engine:
        def run(self):
            raise ValueError("the run's own error")

    class BadWriter:
        def close(self):
            raise OSError("disk full while flushing")

    class Writer:
        closed = False

        def close(self):
            Writer.closed = True

    rd = bu.RunDir(str(tmp_path), str(tmp_path / "models"), str(tmp_path / "logs")).open()
    assert (tmp_path / ".lock").exists()
    with caplog.at_level("WARNING", logger="monai_losses_ext.bundle.rundir"):
        with pytest.raises(ValueError, match="the run's own error"):
            rd.run(Engine(), close=[BadWriter(), Writer()])
    assert Writer.closed and not (tmp_path / ".lock").exists()  # the next writer is closed, the lock released
    assert "disk full while flushing" in caplog.text
