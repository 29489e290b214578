"""The rank bootstrap's pieces on their own: what it refuses to start without, the functions it notices a
script replacing, the audit hook on the data files, the seeds, and the inductor config it reports. Launched
paths are in tests/test_referee.py; an exit without C++ teardown in tests/test_referee_parts.py."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import numpy as np
import torch

from speedrun.rank import bootstrap


def run_bootstrap(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SPEEDRUN_REFEREE_SOCKET"}
    return subprocess.run([sys.executable, "-m", "speedrun.rank.bootstrap", *argv], capture_output=True, text=True,
                          env=env, timeout=120)


def test_without_a_script_or_a_referee_nothing_runs(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("open('ran', 'w').write('yes')\n")
    proc = run_bootstrap()
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = run_bootstrap(str(script))
    assert proc.returncode == 2 and "no referee" in proc.stderr and "speedrun run" in proc.stderr
    assert not (tmp_path / "ran").exists()


def test_integrity_names_every_function_a_script_replaces():
    integrity = bootstrap.Integrity()
    assert integrity.replaced() == []
    perf_counter, all_reduce = time.perf_counter, torch.distributed.all_reduce
    try:
        time.perf_counter = lambda: 0.0
        torch.distributed.all_reduce = lambda *a, **k: None
        assert {"time.perf_counter", "torch.distributed.all_reduce"} <= set(integrity.replaced())
    finally:
        time.perf_counter, torch.distributed.all_reduce = perf_counter, all_reduce
    assert integrity.replaced() == []


def test_seeds_reach_every_generator():
    bootstrap._seed_everything(1234)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    bootstrap._seed_everything(1234)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    bootstrap._seed_everything(1235)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != first


def test_inductor_changes_are_only_read_when_the_script_loaded_inductor():
    code = ("import sys\nfrom speedrun.rank import bootstrap\nassert bootstrap.inductor_changes() == []\n"
            "assert 'torch._inductor.config' not in sys.modules\n"
            "import torch._inductor.config as c\nc.max_autotune = not c.max_autotune\n"
            "print(bootstrap.inductor_changes())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "max_autotune" in proc.stdout
