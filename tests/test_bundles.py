"""The MONAI bundles in bundles/: train (two iterations), evaluate, inference, resume, 2-process DDP on CPU,
bad-data errors and the loss switch, on tiny synthetic MSD-style datasets written here with nibabel."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
from pathlib import Path

import ignite  # noqa: E402,F401  (a declared dependency: missing means a broken install, not a skip)
import nibabel as nib  # noqa: E402
import numpy as np
import pytest
import torch
from _bundle_data import BUNDLES, EVAL_KEYS, SHAPE, TINY, env, free_port, torchrun, write_dataset  # noqa: E402
from monai.bundle import ConfigWorkflow  # noqa: E402

from monai_losses_ext import bundle as bu  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {t: write_dataset(base / t, t) for t in ("lesion", "tumour")}


def workflow(task: str, config: str | list, wtype: str = "train", **override) -> ConfigWorkflow:
    files = bu.config_files(BUNDLES[task], [config] if isinstance(config, str) else config)
    w = ConfigWorkflow(
        config_file=files,
        meta_file=str(BUNDLES[task] / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=wtype,
        **override,
    )
    w.initialize()
    return w


def error_text(exc: BaseException) -> str:
    """The messages of an exception and of everything it was raised from (bundle runs wrap errors)."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def train(task, data_dir, root, check=True, **kw):
    # 3 cases: the last one is held out for validation, 2 train cases x batch 1 = 2 iterations per epoch
    args = {
        **TINY,
        "dataset_dir": str(data_dir),
        "bundle_root": str(root),
        "max_cases": 3,
        "num_val": 1,
        "epochs": 1,
        **kw,
    }
    w = workflow(task, "train.json", **args)
    if check:  # instantiates the datasets
        assert not w.check_properties(), w.check_properties()
    return w


@pytest.mark.slow
@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_train_evaluate_inference(task, data, tmp_path, capsys):
    w = train(task, data[task], tmp_path)
    w.run()
    assert re.search(
        r"^\[epoch 1/1\] loss \d\.\d{4} \| val_mean_dice \d\.\d{4} \| \d+\.\d s$", capsys.readouterr().out, re.M
    )
    trainer = w.parser.get_parsed_content("train#trainer")
    assert (trainer.state.epoch, trainer.state.iteration) == (1, 2)
    assert (tmp_path / "models" / "model.pt").exists() and (tmp_path / "models" / "checkpoint_epoch=1.pt").exists()
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    hist_train, hist_val = bu.read_history(str(tmp_path / "logs" / "history.jsonl"))
    assert [r["epoch"] for r in hist_train] == [1] and "val_mean_dice" in hist_val[0] and "val_lesion_f1" in hist_val[0]
    if task == "tumour":
        assert {"val_dice_TC", "val_dice_WT", "val_dice_ET"} <= set(hist_val[0])
    w.finalize()

    small = {k: TINY[k] for k in EVAL_KEYS}
    common = {"dataset_dir": str(data[task]), "bundle_root": str(tmp_path), "max_cases": 3, "num_val": 1, **small}
    ev = workflow(task, "evaluate.json", "infer", **common)
    assert not ev.check_properties()
    ev.run()
    names = ["lesion"] if task == "lesion" else ["TC", "WT", "ET"]
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case_000", "case_001", "case_002"]  # every case it is given
    for n in names:
        for col in ("dice", "hd95", "sensitivity", "f1", "fp_lesions"):
            assert f"{col}_{n}" in rows[0]
        assert 0.0 <= float(rows[0][f"dice_{n}"]) <= 1.0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["cases"] == 3 and set(summary["metrics"][f"dice_{names[0]}"]) >= {"mean", "std"}

    inf = workflow(task, "inference.json", "infer", infer_split="validation", **common)  # labelled cases: images only
    inf.run()
    out = tmp_path / "pred" / "case_002_seg.nii.gz"
    assert out.exists()
    pred, src = nib.load(str(out)), nib.load(str(data[task] / "imagesTr" / "case_002.nii.gz"))
    assert pred.shape == SHAPE
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
    values = set(np.unique(np.asarray(pred.dataobj)).tolist())
    assert values <= ({0, 1} if task == "lesion" else {0, 1, 2, 3})


@pytest.mark.slow
def test_interrupted_run_resumes(data, tmp_path):
    from ignite.engine import Events

    w = train("lesion", data["lesion"], tmp_path, epochs=3)
    trainer = w.parser.get_parsed_content("train#trainer")

    def crash(engine):
        raise RuntimeError("simulated crash after epoch 1")

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), crash)
    with pytest.raises(Exception) as err:
        w.run()
    assert "simulated crash" in error_text(err.value)
    assert bu.list_checkpoints(str(tmp_path / "models"))[0].endswith("checkpoint_epoch=1.pt")

    w2 = train("lesion", data["lesion"], tmp_path, epochs=3)
    seen = []
    trainer2 = w2.parser.get_parsed_content("train#trainer")
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.epoch))
    w2.run()
    assert seen == [2, 3]  # epoch counter continues after the restored epoch 1
    assert (trainer2.state.epoch, trainer2.state.iteration) == (3, 6)
    assert w2.parser.get_parsed_content("lr_scheduler").last_epoch == 3  # the LR schedule was restored too
    assert [p.name for p in (tmp_path / "models").glob("checkpoint_epoch=*.pt")] == ["checkpoint_epoch=3.pt"]
    hist, _ = bu.read_history(str(tmp_path / "logs" / "history.jsonl"))
    assert [r["epoch"] for r in hist] == [1, 2, 3]

    # training longer (--epochs 5) anneals to the new end: T_max follows the run, not the checkpoint, so the
    # learning rate ends at eta_min instead of climbing back up the old cosine
    w4 = train("lesion", data["lesion"], tmp_path, epochs=5)
    seen4 = []
    trainer4 = w4.parser.get_parsed_content("train#trainer")
    trainer4.add_event_handler(Events.EPOCH_STARTED, lambda e: seen4.append(e.state.epoch))
    w4.run()
    sched = w4.parser.get_parsed_content("lr_scheduler")
    assert seen4 == [4, 5] and (sched.T_max, sched.last_epoch) == (5, 5)
    base = w4.parser.get_parsed_content("learning_rate")
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * base, rel=1e-6)  # eta_min, the end
    ckpt = torch.load(str(tmp_path / "models" / "checkpoint_epoch=5.pt"), map_location="cpu", weights_only=False)
    assert ckpt["lr_scheduler"]["T_max"] == 5

    # resume=False starts again from epoch 1
    w3 = train("lesion", data["lesion"], tmp_path, epochs=1, resume=False)
    w3.run()
    assert w3.parser.get_parsed_content("train#trainer").state.iteration == 2


def _check_two_rank_run(root: Path) -> None:
    """A 1-epoch run of 3 training cases over 2 ranks: one checkpoint, rank 0's history, no DDP prefix."""
    assert (root / "models" / "checkpoint_epoch=1.pt").exists()
    hist, val = bu.read_history(str(root / "logs" / "history.jsonl"))
    # 3 training cases over 2 ranks (padded to 4 by the DistributedSampler), batch 1: 2 iterations per rank
    assert [(r["epoch"], r["iteration"]) for r in hist] == [(1, 2)]
    assert len(val) == 1  # only rank 0 writes
    ckpt = torch.load(str(root / "models" / "model.pt"), map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt)  # DDP wrapper stripped


TWO_RANKS = {"max_cases": 4, "num_val": 1, "epochs": 1}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_multi_gpu_train_two_cpu_processes(task, data, tmp_path):
    launcher = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd = torchrun(launcher, tmp_path, data[task], task, **TWO_RANKS)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env(), cwd=str(BUNDLES[task]))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _check_two_rank_run(tmp_path)


@pytest.mark.slow
def test_two_nodes_through_the_rendezvous(data, tmp_path):
    """``torchrun --nnodes 2`` as on a cluster: two launchers (one per "node", one process each) meet through the
    c10d rendezvous on localhost and train as one 2-rank job; node ranks are assigned by the rendezvous."""
    launcher = [
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv_backend",
        "c10d",
        "--max_restarts",
        "0",
        "--rdzv_endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv_id",
        f"mle-{os.getpid()}",
    ]
    cmd = torchrun(launcher, tmp_path, data["lesion"], "lesion", **TWO_RANKS)
    nodes = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=str(BUNDLES["lesion"])
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n----\n".join(o[-3000:] for o in outs)
    _check_two_rank_run(tmp_path)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda lab: (lab * 255).astype(np.uint8), r"\{0, 255\}|remap"),  # a 0/255 mask
        (lambda lab: np.where(lab > 0, 2, 0).astype(np.uint8), "2"),  # label >= num_classes
    ],
)
def test_bad_label_file_is_named(bad, match, tmp_path):
    d = write_dataset(tmp_path / "bad", "lesion", n=3, bad={1: bad})
    w = train("lesion", d, tmp_path / "run", check=False)
    with pytest.raises(Exception) as err:
        w.run()
    text = error_text(err.value)
    assert "case_001.nii.gz" in text, text[-2000:]
    assert re.search(match, text)


def test_corrupt_image_file_is_named(tmp_path):
    d = write_dataset(tmp_path / "bad", "lesion", n=3)
    (d / "imagesTr" / "case_000.nii.gz").write_bytes(gzip.compress(b"not a nifti file"))
    w = train("lesion", d, tmp_path / "run", check=False)
    with pytest.raises(Exception) as err:
        w.run()
    assert "case_000.nii.gz" in error_text(err.value)


def test_missing_dataset_says_how_to_generate_phantoms(tmp_path):
    with pytest.raises(bu.DatasetNotFoundError, match="python -m monai_losses_ext.phantoms --task tumour"):
        bu.msd_datalist(str(tmp_path / "nowhere"), "train", task="tumour")
    w = train("lesion", tmp_path / "nowhere", tmp_path / "run", check=False)
    with pytest.raises(Exception) as err:
        w.run()
    assert "monai_losses_ext.phantoms --task lesion" in error_text(err.value)


def test_datalist_split_and_regions(data, tmp_path):
    train_l = bu.msd_datalist(str(data["lesion"]), "train", val_fraction=0.25)
    val_l = bu.msd_datalist(str(data["lesion"]), "validation", val_fraction=0.25)
    assert len(train_l) == 3 and len(val_l) == 1 and val_l[0]["image"].endswith("case_003.nii.gz")
    assert bu.msd_datalist(str(data["lesion"]), "test", val_fraction=0.25) == [{"image": val_l[0]["image"]}]
    assert bu.tumour_regions(str(data["tumour"])) == [[1, 3], [1, 2, 3], [3]]  # BraTS numbering: TC, WT, ET
    msd = tmp_path / "Task01_BrainTumour"
    msd.mkdir()
    (msd / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}})
    )
    assert bu.tumour_regions(str(msd)) == [[2, 3], [1, 2, 3], [3]]
    # regions back to labels keeps the nesting
    regions = [[1, 3], [1, 2, 3], [3]]
    lab = torch.tensor([0, 1, 2, 3]).reshape(1, 4, 1, 1)
    from monai_losses_ext.transforms import OneHot, RegionsToLabelsd

    back = RegionsToLabelsd("pred", regions)({"pred": OneHot(regions=regions)(lab)})["pred"]
    assert back.flatten().tolist() == [0, 1, 2, 3]


LOSSES = {
    "lesion": {
        "dice_ce": "DiceCELoss",
        "focal_tversky": "FocalTverskyLoss",
        "tversky": "TverskyLoss",
        "generalized_dice": "GeneralizedDiceLoss",
        "dice_focal": "DiceFocalLoss",
        "unified_focal": "UnifiedFocalLoss",
        "monai.losses.DiceLoss": "DiceLoss",
    },
    # sigmoid region channels: no mutually-exclusive-class losses; dice_ce's CE term is a softmax CE across the
    # channels when there are several (MONAI's behaviour), so it is not offered for overlapping regions
    "tumour": {
        "dice_focal": "DiceFocalLoss",
        "focal_tversky": "FocalTverskyLoss",
        "tversky": "TverskyLoss",
        "generalized_dice": "GeneralizedDiceLoss",
        "combo": "ComboLoss",
        "weighted_bce": "WeightedBCELoss",
        "monai.losses.DiceLoss": "DiceLoss",
    },
}


@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_loss_switch_by_name(task, data, tmp_path):
    g = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    g[:, :, 2:5, 2:5, 2:5] = 1
    if task == "lesion":  # logits (B, 2, ...) with softmax, index target
        target, onehot = g, torch.cat([1 - g, g], 1).float()
    else:  # region channels (TC, WT, ET) with sigmoid, region one-hot target
        g[:, :, 3, 3, 3] = 3
        g[:, :, 2, 2, 2] = 2
        target = onehot = torch.cat([(g == 1) | (g == 3), g > 0, g == 3], 1).float()
    for name, cls in LOSSES[task].items():
        w = workflow(task, "train.json", dataset_dir=str(data[task]), bundle_root=str(tmp_path), loss_name=name)
        loss = w.parser.get_parsed_content("loss")
        assert type(loss).__name__ == cls
        assert type(loss).__module__.startswith("monai.losses" if name.startswith("monai.") else "monai_losses_ext")
        assert w.parser.get_parsed_content("loss_map_keys") == {}
        # the input format defaults reached the loss: confident correct logits score ~0, wrong ones do not
        assert loss(20 * (2 * onehot - 1), target).item() < 0.05, name
        assert loss(-20 * (2 * onehot - 1), target).item() > 0.3, name
    # replacing the whole loss by _target_ also works
    w = workflow(
        task,
        "train.json",
        dataset_dir=str(data[task]),
        bundle_root=str(tmp_path),
        loss={"_target_": "monai.losses.TverskyLoss", "sigmoid": True, "alpha": 0.3, "beta": 0.7},
    )
    assert type(w.parser.get_parsed_content("loss")).__name__ == "TverskyLoss"
    # a map-reading loss gets its map from the pipeline
    w = workflow(task, "train.json", dataset_dir=str(data[task]), bundle_root=str(tmp_path), loss_name="boundary")
    assert w.parser.get_parsed_content("loss_map_keys") == {"distance_map": "label_distance_map"}


def test_compound_loss_gets_the_maps_of_its_terms():
    import monai_losses_ext as E

    both = E.CompoundLoss(
        {"region": E.DiceBoundaryLoss(softmax=True, to_onehot_y=True), "blob": E.BlobLoss(softmax=True)}
    )
    assert bu.loss_map_keys(both) == {"distance_map": "label_distance_map", "instances": "label_instances"}
    tf = bu.label_map_transforms(both, "label", num_classes=2)
    label = torch.zeros(1, 12, 12, 12, dtype=torch.long)
    label[0, 3:6, 3:6, 3:6] = 1
    out = tf({"label": label})
    assert set(out) == {"label", "label_distance_map", "label_instances"}
    assert out["label_distance_map"][1, 4, 4, 4] < 0 < out["label_distance_map"][1, 10, 10, 10]  # signed: inside < 0
    hd = E.CompoundLoss({"hd": E.HausdorffDTLoss(softmax=True), "dice": E.DiceLoss(softmax=True)})
    unsigned = bu.label_map_transforms(hd, "label", num_classes=2)({"label": label})["label_distance_map"]
    assert (unsigned >= 0).all()
    mixed = E.CompoundLoss({"b": E.BoundaryLoss(softmax=True), "hd": E.HausdorffDTLoss(softmax=True)})
    with pytest.raises(ValueError, match="signed distance map .* and an unsigned one"):
        bu.label_map_transforms(mixed, "label", num_classes=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, key",
    [
        ("focal_tversky", None),
        ("dice_boundary", "label_distance_map"),
        ("hausdorff_dt", "label_distance_map"),
        ("weight_map_ce", "label_weight_map"),
        ("blob", "label_instances"),
    ],
)
def test_training_runs_with_other_losses(name, key, data, tmp_path):
    w = train("lesion", data["lesion"], tmp_path, loss_name=name)
    w.run()
    assert w.parser.get_parsed_content("train#trainer").state.iteration == 2
    if key:
        item = w.parser.get_parsed_content("train#dataset")[0][0]
        assert key in item and item[key].shape[1:] == item["label"].shape[1:]


def test_nan_loss_stops_with_a_clear_message():
    from ignite.engine import Engine

    engine = Engine(lambda e, b: {"loss": torch.tensor(float("nan") if e.state.iteration == 3 else 1.0)})
    bu.StopOnNaNLoss().attach(engine)
    with pytest.raises(
        RuntimeError, match=r"loss is nan at iteration 3 \(epoch 1\).*learning rate is too high.*bad data"
    ):
        engine.run(range(5), max_epochs=1)


@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_bundle_files_and_metadata(task):
    b = BUNDLES[task]
    for f in ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json", "logging.conf"):
        assert (b / "configs" / f).exists(), f
    assert (b / "docs" / "README.md").exists()
    assert bu.check_metadata(str(b / "configs" / "metadata.json")) == []
    meta = json.loads((b / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == (2 if task == "lesion" else 4)
    assert bu.check_metadata({"version": "1"}) != []


@pytest.mark.parametrize("task", ["lesion", "tumour"])
@pytest.mark.parametrize(
    "configs, wtype",
    [
        (["train.json"], "train"),
        (["train.json", "evaluate.json"], "infer"),
        (["train.json", "inference.json"], "infer"),
    ],
)
def test_every_config_combination_resolves(task, configs, wtype, data, tmp_path):
    # without a trained model there is no model.json to take the training spacing from: give it
    spacing = {"spacing": [1.5, 1.5, 2.0]} if wtype == "infer" else {}
    w = workflow(
        task, configs, wtype, dataset_dir=str(data[task]), bundle_root=str(tmp_path), max_cases=3, num_val=1, **spacing
    )
    assert not w.check_properties(), w.check_properties()
    w.parser.get_parsed_content("train#trainer" if wtype == "train" else "evaluator")


@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_multi_gpu_overlay_resolves_in_a_one_process_group(task, data, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(k, v)
    w = workflow(
        task,
        ["train.json", "multi_gpu_train.json"],
        "train",
        dataset_dir=str(data[task]),
        bundle_root=str(tmp_path),
        max_cases=3,
        num_val=1,
    )
    try:
        assert not w.check_properties(), w.check_properties()
        assert isinstance(w.parser.get_parsed_content("network"), torch.nn.parallel.DistributedDataParallel)
        assert w.parser.get_parsed_content("loss_defaults")["distributed"] is True
    finally:
        w.finalize()
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("task", ["lesion", "tumour"])
def test_overlays_stay_thin_and_define_no_network(task):
    for name in ("evaluate.json", "inference.json", "multi_gpu_train.json"):
        path = BUNDLES[task] / "configs" / name
        assert len(path.read_text().splitlines()) < 100, name
        cfg = json.loads(path.read_text())
        assert "network_def" not in cfg and not any(k.startswith("load_transforms") for k in cfg), name


def test_runner_echoes_epoch_lines_and_run_state_messages(tmp_path):
    from monai_losses_ext.bundle.runner import _Tail

    log, seen = tmp_path / "train.log", []
    log.write_text(
        "2026-12-01 10:00:00,000 - ignite.engine - INFO - Epoch[1] Complete\n[epoch 1/4] loss 0.5 | 1.0 s\n"
        "2026-12-01 10:00:01,000 - monai_losses_ext.bundle.rundir - WARNING - previous run moved to x\n[epoch 2/4] lo"
    )
    tail = _Tail(log, seen.append)
    tail()
    assert seen == ["[epoch 1/4] loss 0.5 | 1.0 s", "WARNING - previous run moved to x"]  # the cut line waits
    with open(log, "a") as f:
        f.write("ss 0.4 | 1.0 s\n")
    tail()
    assert seen[-1] == "[epoch 2/4] loss 0.4 | 1.0 s" and len(seen) == 3


def test_overrides_reach_the_bundle_cli_as_the_python_values_given():
    """fire (``python -m monai.bundle run``) parses each override as a Python literal: a bool inside a dict must
    arrive as a bool (JSON's ``true`` arrived as the string ``'true'``, and ``'false'`` is truthy)."""
    from fire import parser

    values = {
        "loss_args": {"batch": True, "include_background": False, "weight": None, "smooth_nr": 1e-5},
        "modalities": ["FLAIR", "T1"],
        "resume": False,
        "epochs": 3,
        "learning_rate": 0.003,
        "loss_name": "dice_ce",
        "label_remap": None,
    }
    cmd = bu.bundle_command(BUNDLES["lesion"], ["train.json"], values)
    for key, value in values.items():
        parsed = parser.DefaultParseValue(cmd[cmd.index(f"--{key}") + 1])
        assert parsed == value and type(parsed) is type(value), (key, parsed)
