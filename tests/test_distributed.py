"""distributed=True on 2 gloo processes equals 1 process on the concatenated batch: loss and DDP gradients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def _single_process():
    x, y = ddp_worker.make_data()
    return {name: ddp_worker.run_case(name, ddp_worker.make_model(), x, y, False) for name in ddp_worker.CASES}


@pytest.fixture(scope="module")
def reference():
    return _single_process()


@pytest.mark.slow
@pytest.mark.parametrize("split", ["2,2", "3,1"])
def test_two_ranks_equal_one_process(tmp_path, reference, split):
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path), split],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    failures = []
    for name, (loss_ref, grads_ref) in reference.items():
        for r, res in enumerate(ranks):
            loss, grads = res[name]
            if abs(loss - loss_ref) > 1e-5 * max(1.0, abs(loss_ref)):
                failures.append(f"{name} rank {r}: loss {loss} != single-process {loss_ref}")
            for g, g_ref in zip(grads, grads_ref):
                if not torch.allclose(g, g_ref, rtol=1e-4, atol=1e-6):
                    failures.append(f"{name} rank {r}: grad max diff {float((g - g_ref).abs().max()):.3g}")
    assert not failures, "\n".join(failures)


def test_reference_cases_are_not_trivial(reference):
    # every case must give a finite, non-zero loss and gradient, or the comparison above proves nothing
    for name, (loss, grads) in reference.items():
        assert torch.isfinite(torch.tensor(loss)) and loss != 0, name
        assert any(float(g.abs().sum()) > 0 for g in grads), name


def test_distributed_flag_is_inert_without_process_group():
    import monai_losses_ext as E

    x, y = ddp_worker.make_data()
    out = ddp_worker.make_model()(x)
    a = E.DiceLoss(batch=True, distributed=True, softmax=True, to_onehot_y=True)(out, y)
    b = E.DiceLoss(batch=True, softmax=True, to_onehot_y=True)(out, y)
    assert torch.equal(a, b)
