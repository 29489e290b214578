"""Adversarial tests: cheating variants of an honest submission, each launched through the real launcher.

Every cheat in tests/cheats/ is a patch spec on the tiny track's Muon record (the format is described in
tests/cheats/_common.py; each spec's docstring names its attack class and what it gains when unchecked). Each
runs on 2 gloo ranks on a small synthetic track whose tokens follow a learnable Markov chain, so that extra
training, peeking or a smaller clock show up plainly in the evidence. The referee must refuse every cheat
(non-zero exit, `qualifies` false) with a problem matching the cheat's entry in EXPECT, and the honest record
must qualify under the same conditions.

    ADVERSARIAL_ASSERT_EFFECT=1   also assert each cheat's claimed effect (measured from its evidence against
                                  the honest run): run this against a referee that lets cheats through to
                                  show that they are real
    ADVERSARIAL_REPORT=FILE       append one JSON line per launch (exit code, verdict, effect, seconds)
    ADVERSARIAL_ALL=1             also launch the EXTENDED cheats (second variants of covered classes)
    ADVERSARIAL_V3=1              also launch the V3 cheats (tests/cheats/v3_*.py: attacks on the tier-1 referee's
                                  residual risks, which the v3 sandbox must refuse) and the V3 honest variants
                                  (v3_honest_*.py: honest runs today's referee blames or crashes, which must qualify)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import synthetic

import speedrun
from speedrun.data import streams
from speedrun.cli import main

# --- what the refusal of each cheat must say: a regular expression searched (any case) in the verdict's problems
# (and in the launcher's error line, if it refuses before a verdict is written). Proposals: edit freely.
EXPECT = {
    "rank1_zero_loss": r"rank 1",
    "rank1_bad_shape": r"rank 1.*shape|shape.*rank 1",
    "warmup_dummy": r"warm-?up",
    "pretrain_from_shards": r"train (file|shard|data)|before start|start check",
    "loader_counter_reset": r"before start|outside warm-?up",
    "reuse_weights": r"start check|before start|pre-?trained|earlier repetition",
    "train_in_validation": r"during (a )?validation|inside validat",
    "train_in_thread": r"during (a )?validation|inside validat|thread",
    "patch_time": r"perf_counter|time\.time|monotonic|clock",
    "patch_referee": r"patched|monkey-?patch|replaced|tamper",
    "forge_evidence": r"modified|forged|does not match|seal|after the run",
    "probe_flag": r"causal",
    "probe_memo": r"causal",
    "peek_remembered": r"blind probe failed .* it reads its targets from its inputs",
    "peek_small": r"replica check failed .* read the tokens that follow",
    "swap_track": r"run\.track|track (object|swap|changed)|logits",
    "shadow_track": r"track( file)? .*(differs|changed|not the registered|pin|unknown)|config.*(changed|differs)",
    "edit_track": r"changed during|track file",
    "edit_harness": r"changed during|harness",
    "edit_data": r"changed during|data file|val file",
    "fixed_seed": r"seed|identical",
    "val_before_init": r"val (file|shard|data)",
    "val_unaudited": r"val (file|shard|data)",
    "inductor_config": r"inductor",
}
# launched only with ADVERSARIAL_ALL=1, to keep the module near 2.5 minutes on a 2-core machine without AVX-512:
# each is a second variant of a class that a default cheat already covers (13 cheats run by default)
EXTENDED = {"loader_counter_reset", "reuse_weights", "patch_referee", "shadow_track", "val_unaudited",
            "edit_harness", "edit_data", "rank1_bad_shape", "train_in_thread"}

# the v3 cheats: each gets through today's referee (or gains while refused for something else); the v3 referee
# (OS sandbox, referee agents outside the script's process) must refuse them with a problem matching these.
# Launched only with ADVERSARIAL_V3=1 until that referee exists.
V3_EXPECT = {
    # 1. forged results through the harness's own objects
    "v3_forge_val_end": r"forged|not (measured|computed) by the referee|below the (track's )?entropy floor|"
                        r"referee channel|only the (bootstrap|referee)",
    "v3_pause_clock": r"forged|referee channel|validation (began|ended) without|clock|paused",
    # 2. reading the evaluator's frames
    "v3_frame_peek": r"causal|frame|introspect|evaluator|sandbox",
    # 3. val rows handed out before the score is taken
    "v3_stash_val_rows": r"causal|val (rows|tokens|data) (kept|stashed|reused|remembered)|memori[sz]|"
                         r"validation .*(state|memory)|sandbox",
    "v3_oracle_rows": r"causal|probe|val (rows|tokens|data) (kept|stashed|reused|remembered)|memori[sz]|"
                      r"monitor split",
    "v3_prestart_val_rows": r"start check|start\(\) .*(twice|once)|before start",
    # 4. data outside the loader
    "v3_preloaded_train": r"train (file|shard|data|tokens)|outside the loader|memory map|pre-?trained|start check",
    "v3_batch_tokens_assign": r"batch_tokens|shape|tokens served|more (rows|tokens) than",
    "v3_start_flag": r"start check|pre-?trained|before start|untimed training",
    # 5. acting on the launcher and files
    "v3_sigstop_launcher": r"SIGSTOP|stopped|suspended|signal|launcher|clock",
    "v3_rewrite_sealed": r"run-1\.jsonl|seal|modified|forged|earlier repetition",
    "v3_tmpdir_weights": r"TMPDIR|temporary|earlier repetition|pre-?trained|outside the run directory|start check",
    # 6. work while the clock is paused
    "v3_thread_during_val": r"thread|during (a )?validation|while the clock (is|was) paused|paused",
    "v3_train_in_val_fn": r"charged|validation .*(took|seconds)|budget",
    # 7. bending the referee's arithmetic
    "v3_tensor_subclass": r"subclass|torch_function|plain tensor|logits must be a torch\.Tensor",
    "v3_val_memmap": r"val (file|shard|data|tokens)|memory map|read_shard",
    "v3_seed_spread": r"seed|spread|identical|near-?identical|variance",
}
# cheats whose means the OS sandbox (speedrun.referee.sandbox, on by default) takes away: inside it there is no
# launcher in /proc, no run directory, a read-only harness, track and data (their folders' scratch markers are
# not even visible) and a fresh /tmp per repetition, so the cheat cannot act and its run is as honest as its
# other edits leave it. Sandboxed, such a cheat must not both qualify and achieve its claimed effect (its
# keyword cannot be expected: nothing happened to name).
SANDBOX_DEFEATS = {"forge_evidence", "edit_track", "edit_harness", "edit_data", "reuse_weights",
                   "v3_sigstop_launcher", "v3_rewrite_sealed", "v3_tmpdir_weights",
                   # the data files are not in the sandbox at all (the agents serve every batch)
                   "pretrain_from_shards", "val_before_init", "val_unaudited", "v3_val_memmap"}
# cheats whose means the referee agents (speedrun.referee.agent) take away: the rank holds no evaluator frame,
# no data map, no scored row before the final validation and no loader shape of its own, so what the cheat reads
# or writes is not there; it must not both qualify and achieve its claimed effect.
AGENT_DEFEATS = {"v3_frame_peek", "v3_stash_val_rows", "v3_batch_tokens_assign", "v3_preloaded_train",
                 "v3_start_flag",
                 # on a track with a monitor split (the suite's) no scored row is handed out before finish():
                 # the recorded rows are monitor rows, and the oracle recognises none of the scored ones
                 "v3_oracle_rows",
                 # the logits reach the agent's process as bytes in shared memory: a subclass's code never runs there
                 "v3_tensor_subclass"}
# cheats whose gain the time budgets take away (the track's [budget]: validation seconds off the clock beyond
# `val_fraction` of the timed seconds count as timed): the work hidden in validations is charged back, so the
# cheat must not both qualify and come out faster than the honest run.
BUDGET_DEFEATS = {"v3_thread_during_val",
                  # the whole training run inside the first (free) validation: charged beyond what the run's own
                  # training throughput justifies, so its timed seconds come out no lower than honest
                  "v3_train_in_val_fn"}
# launched with --no-sandbox too, where the referee's own detection must still refuse them: (the cheat's own log
# line, showing it acted; what the refusal must say)
UNSANDBOXED = {"v3_sigstop_launcher": (r"cheat: launcher \d+ was stopped", r"launcher was stopped"),
               "v3_rewrite_sealed": (r"cheat: rewrote run-1\.jsonl", r"run-1\.jsonl")}
# honest variants (kind 8, false accusations): today's referee fails them, the v3 referee must let them qualify
HONEST_V3 = {"v3_honest_outside_hash", "v3_honest_adamw_state"}
ROOT = Path(__file__).resolve().parent.parent
CHEATS_DIR = Path(__file__).resolve().parent / "cheats"
CHEATS = sorted(p.stem for p in CHEATS_DIR.glob("*.py") if not p.name.startswith("_") and p.stem not in HONEST_V3)
V3_ON = bool(os.environ.get("ADVERSARIAL_V3"))
BASE = "tests/fixtures/api1_muon_baseline.py"  # the default BASE of a spec (tests/cheats/_common.py)
RECORD = "records/tiny/002_muon-baseline/train.py"  # the current record, API 2
FAST = ["--steps", "6", "--dim", "32", "--layers", "1", "--heads", "2"]
LAUNCH_OPTS = ["--timeout", "120"]  # a hung repetition is killed (and then fails its test), never waited on
VOCAB = 512
# the smoke track, as this module runs it: one run suffices (margin rule), and the tiny track's source check
TRACK_SETUP = [('test = "ttest"', 'test = "margin"\nmargin = 0.001'),
               ("[checks]\n", "[checks]\nforbidden = ['torch\\._inductor\\.config']\n")]


# --- the track ---------------------------------------------------------------------------------------------------


def markov_tokens(n: int, seed: int, perm: list[int]) -> np.ndarray:
    """The next token is perm[previous] nine times in ten, else uniform: a bigram a tiny model learns in a few
    dozen steps (the unigram level is ln 512 = 6.24 nats; the chain's entropy is about 1 nat)."""
    rng = np.random.default_rng(seed)
    jumps, draws = (rng.random(n) < 0.1).tolist(), rng.integers(0, VOCAB, n).tolist()
    out, x = [], 0
    for jump, draw in zip(jumps, draws):
        x = draw if jump else perm[x]
        out.append(x)
    return np.array(out, dtype=np.int64)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adversarial-track")
    synthetic.make_track(root, vocab=VOCAB)
    toml = root / "tracks" / "smoke.toml"
    text = toml.read_text()
    for old, new in TRACK_SETUP:
        assert text.count(old) == 1, f"synthetic.make_track's track no longer contains {old!r}"
        text = text.replace(old, new)
    toml.write_text(text)
    perm = np.random.default_rng(1).permutation(VOCAB).tolist()
    for i, path in enumerate(sorted((root / "data").rglob("*.bin"))):
        n = len(streams.read_shard(path))
        streams.write_shard(path, markov_tokens(n, 100 + i, perm))
    return root


def workspace(pristine: Path, dest: Path, monkeypatch) -> Path:
    """A private copy of the track and its data (cheats may edit them), marked as scratch for the cheats."""
    shutil.copytree(pristine, dest)
    (dest / ".adversarial-scratch").touch()
    for key in ("SPEEDRUN_TRACK", "SPEEDRUN_SEED", "SPEEDRUN_RUN_DIR", "SPEEDRUN_REPETITION"):
        monkeypatch.delenv(key, raising=False)
    for key, sub in (("SPEEDRUN_TRACKS_DIR", "tracks"), ("SPEEDRUN_DATA_DIR", "data"), ("SPEEDRUN_RUNS_DIR", "runs")):
        monkeypatch.setenv(key, str(dest / sub))
    return dest


# --- cheats --------------------------------------------------------------------------------------------------------


def load_spec(name: str):
    sys.path.insert(0, str(CHEATS_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"adversarial_cheat_{name}", CHEATS_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(CHEATS_DIR))
    return module


def apply(spec, name: str) -> str:
    """The cheat's source: its patches applied in order to its base script (each anchor found exactly once)."""
    text = (ROOT / getattr(spec, "BASE", BASE)).read_text()
    for old, new in spec.PATCHES:
        assert text.count(old) == 1, f"{name}: the base script has {text.count(old)} copies of {old!r}"
        text = text.replace(old, new)
    compile(text, f"{name}.py", "exec")  # a cheat's own syntax error must not pass for a refusal
    return text


def launch(script: Path, out: Path, track: str = "smoke", runs: int = 1,
           harness: Path | None = None, extra: tuple[str, ...] = ()) -> tuple[int, dict, float]:
    """Run through the real launcher; returns (exit code, verdict, seconds). Without a verdict.json (a launch
    refused before running) the verdict is a stub whose problems the caller fills from the launcher's output.
    `harness`: a folder holding a copy of the `speedrun` package; the launcher (and so its ranks) runs from it."""
    began = time.monotonic()
    args = ["run", str(script), "--track", track, "--nproc", "2", "--runs", str(runs), "--out", str(out),
            *LAUNCH_OPTS, *extra, "--", *FAST]
    crash = None
    if harness is not None:
        import subprocess

        env = dict(os.environ, PYTHONSAFEPATH="1",  # not the current directory's speedrun: the copy's
                   PYTHONPATH=os.pathsep.join(p for p in (str(harness), os.environ.get("PYTHONPATH")) if p))
        done = subprocess.run([sys.executable, "-m", "speedrun.cli", *args], env=env, capture_output=True, text=True)
        rc = done.returncode
        sys.stderr.write(done.stderr)
    else:
        try:
            rc = main(args)
        except Exception as exc:  # the launcher itself failed: reported, then failed by the caller
            rc, crash = None, f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - began
    path = out / "verdict.json"
    verdict = json.loads(path.read_text()) if path.exists() else {"qualifies": False, "problems": [],
                                                                   "repetitions": [], "stub": True}
    if crash:
        verdict["launcher_crash"] = crash
    return rc, verdict, seconds


def report(entry: dict) -> None:
    path = os.environ.get("ADVERSARIAL_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


# --- effects: what the evidence shows when a cheat gets through ---------------------------------------------------


def _numbers(verdict: dict, key: str) -> list[float]:
    values = [r.get(key) for r in verdict.get("repetitions") or []]
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def judge_effect(effects, verdict: dict, honest: dict, logs: str, seconds: float) -> tuple[bool, str]:
    """Each (kind, value) of a spec's EFFECT against this launch's evidence and the honest run's:
    loss_below r      every final loss <= r x the honest final loss
    timed_below r     every timed_s <= r x the honest timed_s
    identical_runs    two or more repetitions with exactly the same final loss
    later_run_better r  the last repetition's final loss <= r x the first's
    log REGEX         the runs' logs match REGEX
    finishes_within s   the launch returned within s seconds (no hang)
    run_loss_below (k, r)  repetition k's final loss <= r x the honest final loss
    near_identical_runs r  two or more repetitions, not all identical, whose final losses differ by at most
                      r x their mean (a spread too small to come from the seeds)"""
    losses, timed = _numbers(verdict, "final_loss"), _numbers(verdict, "timed_s")
    h_loss = (_numbers(honest["verdict"], "final_loss") or [None])[0]
    h_timed = (_numbers(honest["verdict"], "timed_s") or [None])[0]
    outcomes = []
    for kind, value in effects:
        if kind == "loss_below":
            ok = bool(losses and h_loss and all(x <= value * h_loss for x in losses))
            text = (f"final loss {[round(x, 3) for x in losses]} vs honest {h_loss and round(h_loss, 3)} "
                    f"(claim <= {value}x)")
        elif kind == "timed_below":
            ok = bool(timed and h_timed and all(x <= value * h_timed for x in timed))
            text = f"timed {[round(x, 3) for x in timed]} s vs honest {h_timed} s (claim <= {value}x)"
        elif kind == "identical_runs":
            ok = len(losses) >= 2 and len(set(losses)) == 1
            text = f"final losses of the repetitions {losses} (claim: identical)"
        elif kind == "later_run_better":
            ok = len(losses) >= 2 and losses[-1] <= value * losses[0]
            text = f"final losses by repetition {[round(x, 3) for x in losses]} (claim: last <= {value}x first)"
        elif kind == "run_loss_below":
            k, r = value
            mine = _numbers({"repetitions": [x for x in verdict.get("repetitions") or [] if x.get("k") == k]},
                            "final_loss")
            ok = bool(mine and h_loss and mine[0] <= r * h_loss)
            text = (f"repetition {k}'s final loss {[round(x, 3) for x in mine]} vs honest {h_loss and round(h_loss, 3)} "
                    f"(claim <= {r}x); all repetitions {[round(x, 4) for x in losses]}")
        elif kind == "near_identical_runs":
            spread = (max(losses) - min(losses)) / (sum(losses) / len(losses)) if losses else None
            ok = len(losses) >= 2 and len(set(losses)) > 1 and spread <= value
            text = f"final losses of the repetitions {losses}: relative spread {spread} (claim: > 0 and <= {value})"
        elif kind == "log":
            ok = re.search(value, logs) is not None
            text = f"log {'shows' if ok else 'does not show'} /{value}/"
        elif kind == "finishes_within":
            ok = seconds <= value
            text = f"launch returned in {seconds:.0f} s (claim <= {value} s)"
        else:
            raise ValueError(f"unknown effect kind {kind!r}")
        outcomes.append((ok, text))
    return all(ok for ok, _ in outcomes), "; ".join(text for _, text in outcomes)


# --- the tests -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def honest(pristine, tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        ws = workspace(pristine, tmp_path_factory.mktemp("honest") / "ws", mp)
        rc, verdict, seconds = launch(ROOT / BASE, ws / "out")
    report({"cheat": "(honest)", "rc": rc, "qualifies": verdict.get("qualifies"),
            "problems": verdict.get("problems"), "final_loss": _numbers(verdict, "final_loss"),
            "timed_s": _numbers(verdict, "timed_s"), "seconds": round(seconds, 1)})
    return {"rc": rc, "verdict": verdict}


def test_every_cheat_has_a_keyword_and_applies():
    assert not set(EXPECT) & set(V3_EXPECT), "a cheat is in EXPECT or in V3_EXPECT, not both"
    assert set(EXPECT) | set(V3_EXPECT) == set(CHEATS), "EXPECT, V3_EXPECT and tests/cheats/ must name the same cheats"
    assert len(CHEATS) >= 14
    for name in CHEATS + sorted(HONEST_V3):
        spec = load_spec(name)
        assert spec.__doc__ and spec.__doc__.strip(), f"{name}: the docstring names the attack class"
        assert name in HONEST_V3 or spec.EFFECT, f"{name}: a cheat claims an effect"
        apply(spec, name)


def test_honest_record_qualifies(honest):
    verdict = honest["verdict"]
    assert honest["rc"] == 0 and verdict["qualifies"], verdict.get("problems")
    assert verdict["problems"] == []


def test_current_record_qualifies_under_the_same_conditions(pristine, tmp_path, monkeypatch):
    """The cheats' base is the record's API 1 form; the record as it stands (API 2) passes the same referee."""
    ws = workspace(pristine, tmp_path / "ws", monkeypatch)
    rc, verdict, _ = launch(ROOT / RECORD, ws / "out")
    assert rc == 0 and verdict["qualifies"] and verdict["problems"] == [], verdict.get("problems")


def _skip(name: str):
    if name in V3_EXPECT or name in HONEST_V3:
        return pytest.mark.skipif(not V3_ON, reason="v3 set: ADVERSARIAL_V3=1")
    return pytest.mark.skipif(name in EXTENDED and not os.environ.get("ADVERSARIAL_ALL"),
                              reason="extended set: ADVERSARIAL_ALL=1")


def start_during_run(command: str, out: Path, timeout: float = 120.0):
    """A spec's DURING_RUN: `command` (Python source) run as a process of its own, outside the launcher and the
    ranks, as soon as repetition 1's ranks have called speedrun.init() (the data watch is armed by then).
    Returns a function that waits for it and gives (exit code or None, output)."""
    import subprocess
    import threading

    result: dict = {}

    def go() -> None:
        deadline = time.monotonic() + timeout
        events = out / "run-1.jsonl"
        while time.monotonic() < deadline:
            try:
                if b'"event":"init"' in events.read_bytes():
                    break
            except OSError:
                pass
            time.sleep(0.02)
        else:
            result["rc"], result["out"] = None, "the run never reached init()"
            return
        done = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=timeout)
        result["rc"], result["out"] = done.returncode, (done.stdout + done.stderr)[-2000:]

    thread = threading.Thread(target=go, daemon=True)
    thread.start()

    def wait() -> tuple[int | None, str]:
        thread.join(timeout)
        return result.get("rc"), result.get("out", "still running")
    return wait


def launch_spec(name: str, spec, ws: Path, tmp_path: Path,
                extra: tuple[str, ...] = ()) -> tuple[int, dict, float, str | None]:
    """Launch a spec's script as the spec says (track copy, harness copy, repetitions, a process during the run);
    returns (exit code, verdict, seconds, the DURING_RUN process's report or None)."""
    script = tmp_path / f"{name}.py"
    script.write_text(apply(spec, name))
    track = "smoke"
    if getattr(spec, "TRACK_EDITS", None):  # a same-named track file outside the tracks folder
        text = (ws / "tracks" / "smoke.toml").read_text()
        for pattern, replacement in spec.TRACK_EDITS:
            text, n = re.subn(pattern, replacement, text)
            assert n, f"{name}: the track file has no {pattern!r}"
        shadow = tmp_path / "shadow" / "smoke.toml"
        shadow.parent.mkdir()
        shadow.write_text(text)
        track = str(shadow)
    site = None
    if getattr(spec, "HARNESS_COPY", False):  # the launcher and its ranks run a scratch copy of the harness
        site = tmp_path / "site"
        shutil.copytree(Path(speedrun.__file__).resolve().parent, site / "speedrun",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (site / ".adversarial-scratch").touch()
    during = start_during_run(spec.DURING_RUN, ws / "out") if getattr(spec, "DURING_RUN", None) else None
    rc, verdict, seconds = launch(script, ws / "out", track=track, runs=getattr(spec, "RUNS", 1), harness=site,
                                  extra=(*extra, *getattr(spec, "LAUNCH_EXTRA", ())))
    side = None
    if during is not None:
        side_rc, side_out = during()
        side = f"exit {side_rc}: {side_out.strip()}"
    return rc, verdict, seconds, side


@pytest.mark.parametrize("name", [pytest.param(name, marks=_skip(name)) for name in CHEATS])
def test_cheat_is_refused(name, pristine, honest, tmp_path, monkeypatch, capsys):
    spec = load_spec(name)
    ws = workspace(pristine, tmp_path / "ws", monkeypatch)
    rc, verdict, seconds, _ = launch_spec(name, spec, ws, tmp_path)
    problems = list(verdict.get("problems") or [])
    captured = capsys.readouterr()
    problems += [line for line in captured.err.splitlines() if line.startswith("speedrun: error:")]
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((ws / "out").glob("run-*.log")))
    effect_ok, effect = judge_effect(getattr(spec, "EFFECT", []), verdict, honest, logs, seconds)
    expect = {**EXPECT, **V3_EXPECT}[name]
    matched = any(re.search(expect, p, re.IGNORECASE) for p in problems)
    report({"cheat": name, "rc": rc, "qualifies": verdict.get("qualifies"), "problems": problems,
            "warnings": verdict.get("warnings"), "keyword_matched": matched, "effect_ok": effect_ok,
            "effect": effect, "launcher_crash": verdict.get("launcher_crash"), "seconds": round(seconds, 1)})

    assert "launcher_crash" not in verdict, f"{name}: the launcher crashed: {verdict['launcher_crash']}"
    if (name in SANDBOX_DEFEATS and str(verdict.get("sandbox", "")).startswith("bwrap")) or \
            name in AGENT_DEFEATS | BUDGET_DEFEATS:
        assert not (verdict.get("qualifies") and effect_ok), f"{name} achieved its effect and QUALIFIED: {effect}"
        return
    if os.environ.get("ADVERSARIAL_ASSERT_EFFECT"):
        assert effect_ok, f"{name}: the cheat did not achieve its claim: {effect}"
    assert not verdict.get("qualifies"), f"{name} QUALIFIED; its effect: {effect}"
    assert rc != 0, f"{name}: refused in the verdict but the launch exited 0"
    assert matched, f"{name}: refused, but no problem matches /{expect}/: {problems}"


@pytest.mark.parametrize("name", [pytest.param(name, marks=_skip(name)) for name in sorted(UNSANDBOXED)])
def test_unsandboxed_cheat_is_still_refused(name, pristine, honest, tmp_path, monkeypatch, capsys):
    """Without the sandbox (--no-sandbox) the cheats it defeats can act; the referee must see them anyway."""
    spec = load_spec(name)
    ws = workspace(pristine, tmp_path / "ws", monkeypatch)
    rc, verdict, seconds, _ = launch_spec(name, spec, ws, tmp_path, extra=("--no-sandbox",))
    problems = list(verdict.get("problems") or [])
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((ws / "out").glob("run-*.log")))
    report({"cheat": name, "sandbox": "none", "rc": rc, "qualifies": verdict.get("qualifies"), "problems": problems,
            "acted": bool(re.search(UNSANDBOXED[name][0], logs)), "seconds": round(seconds, 1)})
    assert re.search(UNSANDBOXED[name][0], logs), f"{name}: the cheat did not act even without the sandbox"
    assert not verdict.get("qualifies") and rc != 0, f"{name} QUALIFIED without the sandbox"
    assert any(re.search(UNSANDBOXED[name][1], p, re.IGNORECASE) for p in problems), problems


@pytest.mark.parametrize("name", [pytest.param(name, marks=_skip(name)) for name in sorted(HONEST_V3)])
def test_v3_honest_variant_qualifies(name, pristine, tmp_path, monkeypatch, capsys):
    """Kind 8, false accusations: an honest script (or an honest run with something outside it going on) must
    qualify with no problem. Today's referee blames or crashes these."""
    spec = load_spec(name)
    ws = workspace(pristine, tmp_path / "ws", monkeypatch)
    rc, verdict, seconds, side = launch_spec(name, spec, ws, tmp_path)
    problems = list(verdict.get("problems") or [])
    captured = capsys.readouterr()
    problems += [line for line in captured.err.splitlines() if line.startswith("speedrun: error:")]
    errors = [r.get("error") for r in verdict.get("repetitions") or [] if r.get("error")]
    report({"honest": name, "rc": rc, "qualifies": verdict.get("qualifies"), "problems": problems,
            "errors": errors, "during_run": side, "final_loss": _numbers(verdict, "final_loss"),
            "timed_s": _numbers(verdict, "timed_s"), "seconds": round(seconds, 1)})
    assert "launcher_crash" not in verdict, f"{name}: the launcher crashed: {verdict['launcher_crash']}"
    if side is not None:
        assert side.startswith("exit 0"), f"{name}: the process beside the run failed: {side}"
    assert rc == 0 and verdict.get("qualifies") and problems == [], \
        f"{name}: an honest run was refused: {problems} {errors}"
