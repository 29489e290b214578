"""Distributed Muon (2 gloo ranks under torchrun) equals single-device Muon; its state is complete and portable."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("optim_dist_worker", ROOT / "tests" / "optim_dist_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

CLOSE = dict(rtol=1e-5, atol=1e-6)   # ranks run MKL on one thread, this process on two: last-bit differences


def single_device(steps: int, *, averaged_over: int | None = None, optimizer=None, params=None, start: int = 0):
    """Replay the worker's problem on one device; `averaged_over`: use the mean of that many ranks' gradients."""
    params = params if params is not None else worker.make_params()
    opt = optimizer if optimizer is not None else worker.make_optimizer(params)
    for step in range(start, steps):
        if averaged_over is None:
            grads = worker.grads_at(step)
        else:
            per_rank = [worker.grads_at(step, r) for r in range(averaged_over)]
            grads = [None if gs[0] is None else sum(gs) / averaged_over for gs in zip(*per_rank)]
        worker.set_grads(params, grads)
        opt.step()
    return params, opt


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    if shutil.which("torchrun") is None and importlib.util.find_spec("torch.distributed.run") is None:
        pytest.skip("torchrun not available")
    out = tmp_path_factory.mktemp("muon_dist")
    params, opt = single_device(worker.RESUME_AT)
    torch.save({"params": [p.detach() for p in params], "state": opt.state_dict()}, out / "single-resume.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "optim_dist_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {name: torch.load(out / f"{name}.pt") for name in
            ("replicated-0", "replicated-1", "averaging-0", "averaging-1", "resumed-0", "resumed-1")}


def test_sharded_muon_equals_single_device(dist_run):
    params, _ = single_device(worker.STEPS)
    for rank in (0, 1):
        for got, want in zip(dist_run[f"replicated-{rank}"]["params"], params):
            torch.testing.assert_close(got, want.detach(), **CLOSE)


def test_state_dict_is_complete_on_every_rank(dist_run):
    _, opt = single_device(worker.STEPS)
    want = opt.state_dict()
    for rank in (0, 1):
        got = dist_run[f"replicated-{rank}"]["state"]
        assert set(got["state"]) == set(want["state"]) == set(range(len(worker.SHAPES)))
        for index, entry in want["state"].items():
            assert set(got["state"][index]) == set(entry)
            for key, value in entry.items():   # momentum, and NorMuon's statistics for groups 2 and 3
                torch.testing.assert_close(got["state"][index][key], value, **CLOSE)
        assert sum("normuon_buffer" in entry for entry in want["state"].values()) == 6
        assert got["param_groups"] == want["param_groups"]


def test_two_rank_state_loads_on_one_device(dist_run):
    # rank 1's state after all steps, loaded into a fresh single-device optimizer, continues like the original
    params = [p.clone().requires_grad_() for p in dist_run["replicated-1"]["params"]]
    opt = worker.make_optimizer(params)
    opt.load_state_dict(copy.deepcopy(dist_run["replicated-1"]["state"]))
    ref_params, ref_opt = single_device(worker.STEPS)
    extra = worker.STEPS + 2
    single_device(extra, optimizer=opt, params=params, start=worker.STEPS)
    single_device(extra, optimizer=ref_opt, params=ref_params, start=worker.STEPS)
    for got, want in zip(params, ref_params):
        torch.testing.assert_close(got.detach(), want.detach(), **CLOSE)


def test_single_device_state_loads_on_two_ranks(dist_run):
    params, _ = single_device(worker.STEPS)
    for rank in (0, 1):
        for got, want in zip(dist_run[f"resumed-{rank}"]["params"], params):
            torch.testing.assert_close(got, want.detach(), **CLOSE)


def test_average_grads_flag_averages_without_touching_grads(dist_run):
    params, _ = single_device(worker.STEPS, averaged_over=2)
    for rank in (0, 1):
        assert dist_run[f"averaging-{rank}"]["grad_intact"]
        for got, want in zip(dist_run[f"averaging-{rank}"]["params"], params):
            torch.testing.assert_close(got, want.detach(), **CLOSE)
    # and the averaging mattered: rank 0's own gradients alone lead elsewhere
    alone, _ = single_device(worker.STEPS)
    assert not torch.allclose(dist_run["averaging-0"]["params"][1], alone[1].detach(), atol=1e-4)
