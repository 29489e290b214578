"""`speedrun new`: the starter submission is a real API-2 script the referee accepts on 2 gloo ranks.

Whether it *qualifies* as written on tiny (300 steps, 3 runs: ~5 minutes on 2 cores) is measured outside the
suite and reported in scripts/results/tiny_retune.md; here the same text runs a short prefix of its schedule
through the real launcher, and everything the verdict checks except the target must pass."""

from __future__ import annotations

import re

import pytest

from speedrun.referee import launcher
from speedrun.cli import new as starter
from speedrun.judge import verify
from speedrun.cli import main
from speedrun.errors import SpeedrunError
from speedrun.tracks import load_track


def test_new_writes_a_starter_that_runs_clean_under_the_referee(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPEEDRUN_RUNS_DIR", str(tmp_path / "runs"))
    assert main(["new", "first", "--track", "tiny"]) == 0
    assert "speedrun run first.py --track tiny --nproc 2 --runs 3" in capsys.readouterr().out
    src = (tmp_path / "first.py").read_text()
    for needed in ("speedrun.init()", "run.seed", "run.train_loader(", "run.warmup(", "run.start(logits_fn)",
                   "run.validate(", "run.finish()", "DDP(", "run.log("):
        assert needed in src, needed
    steps_line = re.search(r"^STEPS, MUON_LR, EMBED_LR, HEAD_LR, COOLDOWN = (\d+),", src, re.M)
    assert steps_line and int(steps_line.group(1)) == starter.SIZES["tiny"][6]
    short = tmp_path / "short.py"  # the same script, 12 steps of its schedule instead of all of them
    short.write_text(src.replace(steps_line.group(0), steps_line.group(0).replace(steps_line.group(1), "12")))

    run_dir = launcher.launch(short, load_track("tiny"), 2, 1, str(tmp_path / "runs" / "short"), 0, [], {})
    verdict = verify.verify_run_dir(run_dir)
    rep = verdict["repetitions"][0]
    assert rep["status"] == "ok" and verdict["refereed"], verdict["problems"]
    assert rep["batches"] == 12 and not rep["problems"] and not verdict["problems"]
    assert 3.9 < rep["final_loss"] < 5.5  # it learns (ln 512 = 6.24 at the start) and is far from the target yet


def test_new_refuses_bad_names_unknown_tracks_and_overwriting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpeedrunError, match="name"):
        starter.write("no spaces", "tiny")
    with pytest.raises(SpeedrunError):
        starter.write("ok", "no-such-track")
    starter.write("ok", "tiny")
    with pytest.raises(SpeedrunError, match="exists"):
        starter.write("ok", "tiny")
    assert starter.write("ok", "tiny", force=True).exists()
    compile(starter.render("big", "gpt2-small"), "big.py", "exec")  # every track's sizes give valid Python
