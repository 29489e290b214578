"""The GPT-2-scale baselines run through the real launcher on a CPU: their gpt2-small configuration at
reduced width on synthetic GPT-2-vocabulary shards (the medium configuration differs only in sizes, which the
reduced-width flags override). One optimizer step sees the same tokens
whatever the number of ranks (gradient accumulation), so 1 and 2 ranks end at the same loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import synthetic

from speedrun.evidence import rundir
from speedrun.cli import main
from speedrun.tracks import REPO_ROOT

SMALL = ["--dim", "64", "--layers", "2", "--heads", "2", "--seq-len", "128", "--batch-tokens", "1024",
         "--micro-rows", "2", "--steps", "3"]
ENTRIES = [p for track in ("gpt2-small", "gpt2-medium", "optimization")
           for p in sorted((REPO_ROOT / "records" / track).glob("00[12]_*/train.py"))]
SCRIPTS = {rundir.sha256_file(p): p for p in ENTRIES}  # the tracks share the same two scripts


def test_every_gpt2_track_has_both_baselines():
    assert len(ENTRIES) == 6 and len(SCRIPTS) == 2
    for track in ("gpt2-small", "gpt2-medium", "optimization"):
        names = sorted(p.parent.name for p in ENTRIES if p.parent.parent.name == track)
        assert names == ["001_adamw-baseline", "002_muon-baseline"]


@pytest.fixture(scope="module")
def gpt2_env(tmp_path_factory):
    return synthetic.make_track(tmp_path_factory.mktemp("gpt2"), name="gpt2-synthetic", vocab=50257,
                                val_tokens=4096, train_tokens=60_000)


def launch(script: Path, out: Path, nproc: int, config: str) -> float:
    assert main(["run", str(script), "--track", "gpt2-synthetic", "--nproc", str(nproc), "--out", str(out),
                 "--no-verify", "--", "--config", config, *SMALL]) == 0
    log = (out / "run-1.log").read_text()
    accum = 4 // nproc  # 1024 tokens per step = ranks x accum x 2 rows x 128
    assert f"config {config}" in log and f"{nproc} rank(s) x {accum} micro-batch(es) of 2 x 128" in log
    events = rundir.read_events(out / "run-1.jsonl")
    val = events.last("val")
    assert [r["probe"]["passed"] for r in val["ranks"]] == [True] * nproc and not events.of("problem")
    return events.last("val")["loss"]


@pytest.mark.parametrize("script", sorted(SCRIPTS.values()), ids=lambda p: p.parent.name)
def test_gpt2_baseline_runs_through_the_launcher(script, gpt2_env, tmp_path, monkeypatch):
    """Both scripts on 2 ranks; the AdamW one also on 1 rank, which must give the same loss (gradient
    accumulation). Sharded Muon against one device is checked directly in test_optim_dist."""
    for k, v in gpt2_env.items():
        monkeypatch.setenv(k, v)
    two = launch(script, tmp_path / "n2", 2, "gpt2-small")
    assert 10.0 < two < 11.5  # ~ln(50257) = 10.8 after three steps on random tokens
    if "adamw" in script.parent.name:
        assert launch(script, tmp_path / "n1", 1, "gpt2-small") == pytest.approx(two, abs=2e-3)
