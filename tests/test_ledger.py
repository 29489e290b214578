"""The ledger: record add (with its refusals), crash safety, the lock, generated tables, compare and replay."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
import synthetic

from speedrun.ledger import compare
from speedrun.ledger import store
from speedrun.judge import verify
from speedrun.cli import main
from speedrun.errors import SpeedrunError
from speedrun.tracks import REPO_ROOT, load_track

BASELINE = REPO_ROOT / "tests" / "fixtures" / "api1_adamw_baseline.py"  # frozen: records change
FAST = ["--steps", "6", "--warmup-steps", "2", "--dim", "32", "--layers", "1", "--heads", "2"]
SLOW_SLEEP_S = 0.5  # per step: the slow variant is ~3 s slower over 6 steps


def small_script(folder: Path, name: str, sleep_s: float = 0.0) -> Path:
    """The baseline with a small model baked in (records run without arguments); optionally slowed down."""
    source = BASELINE.read_text()
    old_args, old_step = "args, _ = parser.parse_known_args()", "    train_step(step)\nresult = run.finish()"
    assert old_args in source and old_step in source
    source = source.replace(old_args, f"args, _ = parser.parse_known_args({FAST!r})")
    if sleep_s:
        source = "import time\n" + source.replace(old_step, f"    train_step(step)\n    time.sleep({sleep_s})\n"
                                                                f"result = run.finish()")
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic track, an empty ledger, and verified run directories of a slow and a fast script."""
    root = tmp_path_factory.mktemp("ledger")
    env = synthetic.make_track(root, rule="margin")  # one repetition qualifies: fewer launches
    env["SPEEDRUN_RECORDS_DIR"] = str(root / "records")
    env["SPEEDRUN_REPLICA"] = "1"  # records are re-checked runs (speedrun.referee.replica)
    with pytest.MonkeyPatch.context() as mp:  # undone even when a launch below fails (no leak to later files)
        for k, v in env.items():
            mp.setenv(k, v)
        scripts = {"slow": small_script(root, "slow", SLOW_SLEEP_S), "fast": small_script(root, "fast")}
        runs = {}
        for name, script in scripts.items():
            out = root / "runs" / name
            assert main(["run", str(script), "--track", "smoke", "--nproc", "1", "--runs", "1", "--out",
                         str(out)]) == 0
            runs[name] = out
        yield {"root": root, "records": root / "records", "runs": runs, "scripts": scripts}


def test_ledger_grows_only_with_faster_verified_runs(world, tmp_path):
    records = world["records"]
    # first record: nothing to beat
    first = compare.add_record(world["runs"]["slow"], "slow baseline", ["@a"])
    assert first.number == 1 and first.verified and first.prior == 0
    entry = records / "smoke" / "001_slow-baseline"
    assert {"train.py", "record.toml", "manifest.json", "verdict.json", "run-1.jsonl", "run-1.log"} <= \
        {p.name for p in entry.iterdir()}
    assert verify.verify_run_dir(entry, write=False)["qualifies"]  # an entry re-verifies from its own files
    table = (records / "smoke" / "README.md").read_text()
    assert "| [1](001_slow-baseline/) |" in table and "slow baseline" in table

    # the same script again is refused
    with pytest.raises(SpeedrunError, match="already recorded as #1"):
        compare.add_record(world["runs"]["slow"], "again", ["@a"])
    # a wrong track is refused
    with pytest.raises(SpeedrunError, match="not tiny"):
        compare.add_record(world["runs"]["fast"], "fast", ["@b"], track_name="tiny")

    # the fast script against #1 in an interleaved comparison run now: the decision follows the comparison
    # (which one is faster is a wallclock measurement, so the test holds the ledger to compare.json, not to
    # an expectation about this noisy machine)
    try:
        current = compare.add_record(world["runs"]["fast"], "fast variant", ["@b"], compare_runs=2)
    except SpeedrunError as exc:  # possible on a loaded machine: the refusal must then agree with compare.json
        assert "not faster than record #1 on this hardware" in str(exc)
        (compare_json,) = (world["root"] / "runs").glob("compare/*/compare.json")
        assert not json.loads(compare_json.read_text())["a_faster"]
        current = first
    else:
        assert current.number == 2 and current.prior == 1
        c = current.comparison
        assert c["passed"] and c["ratio"] < 1 and c["p_value"] < 0.01
        compare_json = records / "smoke" / "002_fast-variant" / "compare.json"
        assert json.loads(compare_json.read_text())["a_faster"]
        assert store.current_record("smoke").number == 2
        assert store.stale_tables(records) == []
        assert current.hardware_fingerprint and current.throughput["tokens_per_s"] > 0
    numbers = [r.number for r in store.load_records("smoke")]

    # a comparison made on other hardware is refused, naming the field that differs
    doctored = tmp_path / "other-hw"
    doctored.mkdir()
    result = json.loads(compare_json.read_text())
    result["hardware_fingerprint"]["isa"] = [f for f in result["hardware_fingerprint"]["isa"]
                                             if f != "avx2"] + ["amx_bf16"]
    (doctored / "compare.json").write_text(json.dumps(result))
    with pytest.raises(SpeedrunError, match="compared on other hardware.*CPU ISA flags differ"):
        compare.check_against(doctored, result["sides"]["A"]["script_sha256"], first,
                              json.loads((world["runs"]["fast"] / "manifest.json").read_text())["hardware_fingerprint"])

    # a comparison that did not show A faster is refused through the CLI: one line, exit 1
    result = json.loads(compare_json.read_text())
    result["a_faster"] = False
    slow_again, script = tmp_path / "slow_again", tmp_path / "slow_again.py"
    script.write_text(world["scripts"]["fast"].read_text() + "# another script\n")
    assert main(["run", str(script), "--track", "smoke", "--runs", "1", "--out", str(slow_again), "--replica"]) == 0
    result["sides"]["A"]["script_sha256"] = json.loads((slow_again / "manifest.json").read_text())["script"]["sha256"]
    result["sides"]["B"]["script_sha256"] = current.script_sha256
    (doctored / "compare.json").write_text(json.dumps(result))
    assert main(["record", "add", str(slow_again), "--description", "slower", "--contributors", "@c",
                 "--compare", str(doctored)]) == 1
    assert [r.number for r in store.load_records("smoke")] == numbers


def test_steps_track_records_need_fewer_steps_and_carry_the_pairwise_statistic(tmp_path, monkeypatch):
    env = synthetic.make_track(tmp_path, name="steppy", metric="steps", rule="margin")
    env["SPEEDRUN_REPLICA"] = "1"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "records"
    runs = {}
    for name, steps in (("six", 6), ("four", 4), ("eight", 8)):
        script = small_script(tmp_path, name)
        text = script.read_text()
        assert "'--steps', '6'" in text
        script.write_text(text.replace("'--steps', '6'", f"'--steps', '{steps}'"))
        runs[name] = tmp_path / "runs" / name
        assert main(["run", str(script), "--track", "steppy", "--nproc", "1", "--runs", "1",
                     "--out", str(runs[name])]) == 0
    first = compare.add_record(runs["six"], "six steps", ["@a"], root=root)
    assert first.metric_mean == 6 and first.n_runs == 1
    second = compare.add_record(runs["four"], "four steps", ["@b"], root=root)
    c = second.comparison
    assert c["test"] == "pairwise" and c["passed"] and c["mean_prior"] == 6 and c["mean_new"] == 4
    expected = (first.val_loss_mean - second.val_loss_mean + (6 - 4) / 100 * 0.0045) / (1 / 1 + 1 / 1) ** 0.5
    assert c["statistic"] == pytest.approx(expected)
    with pytest.raises(SpeedrunError, match="not fewer steps than record #2"):
        compare.add_record(runs["eight"], "eight steps", ["@c"], root=root)


def test_run_with_script_arguments_is_refused(world, tmp_path):
    out = tmp_path / "with_args"
    assert main(["run", str(world["scripts"]["fast"]), "--track", "smoke", "--runs", "1", "--out", str(out),
                 "--no-verify", "--", "--lr", "0.004"]) == 0
    with pytest.raises(SpeedrunError, match="without arguments"):
        compare.add_record(out, "with args", ["@x"], root=tmp_path / "ledger")


def test_unverified_run_is_refused(world, tmp_path):
    doctored = tmp_path / "doctored"
    shutil.copytree(world["runs"]["fast"], doctored)
    with open(doctored / "run-1.jsonl", "a") as f:
        f.write('{"event":"val","loss":0.1}\n')
    with pytest.raises(SpeedrunError, match="not verified: run-1.jsonl was modified"):
        compare.add_record(doctored, "doctored", ["@x"], root=tmp_path / "ledger")


def test_a_crash_mid_write_leaves_the_ledger_as_it_was(world, tmp_path, monkeypatch):
    root = tmp_path / "ledger"
    copies, real_copy = [], shutil.copyfile

    def failing_copy(src, dst, **kwargs):
        copies.append(dst)
        if len(copies) == 3:
            raise OSError("disk full (simulated)")
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(store.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="simulated"):
        compare.add_record(world["runs"]["fast"], "fast", ["@b"], root=root)
    assert store.load_records("smoke", root) == []
    assert not list((root / "smoke").glob(".tmp-*"))
    monkeypatch.undo()
    (root / "smoke" / ".tmp-999-001").mkdir()  # as if killed before cleaning up
    assert store.load_records("smoke", root) == []
    rec = compare.add_record(world["runs"]["fast"], "fast", ["@b"], root=root)
    assert rec.number == 1 and not list((root / "smoke").glob(".tmp-*"))


def test_concurrent_add_waits_for_the_lock(world, tmp_path, monkeypatch):
    root = tmp_path / "ledger"
    (root / "smoke").mkdir(parents=True)
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.5)
    with open(root / "smoke" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SpeedrunError, match="holds the ledger lock"):
            compare.add_record(world["runs"]["fast"], "fast", ["@b"], root=root)
    assert store.load_records("smoke", root) == []


def test_malformed_record_names_file_and_field(tmp_path):
    entry = tmp_path / "smoke" / "001_x"
    entry.mkdir(parents=True)
    (entry / "record.toml").write_text('number = 1\nslug = "x"\n')
    with pytest.raises(SpeedrunError, match="001_x/record.toml: field 'date': missing"):
        store.load_records("smoke", tmp_path)


def test_unverified_entry_is_never_the_current_record(world, tmp_path):
    root = tmp_path / "ledger"
    rec = store.add_unverified(BASELINE, load_track("smoke"), "gpu baseline", ["@d"],
                                "no verified run exists yet", root=root)
    assert not rec.verified and store.current_record("smoke", root) is None
    assert "not verified: no verified run exists yet" in (root / "smoke" / "README.md").read_text()


def test_replay_reruns_a_record_exactly(world, tmp_path):
    """Same machine, same harness, the recorded seeds: the replay's val losses equal the recorded ones."""
    root = tmp_path / "ledger"
    compare.add_record(world["runs"]["fast"], "fast", ["@b"], root=root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEEDRUN_RECORDS_DIR", str(root))
        report = compare.replay(load_track("smoke"), 1, runs=1, out=tmp_path / "replay")
    assert report["recorded"] is not None and report["same_hardware"] and report["flags"] == []
    assert report["losses_identical"] and len(report["losses_replayed"]) == 1


def test_committed_tables_are_fresh(monkeypatch):
    for var in ("SPEEDRUN_TRACKS_DIR", "SPEEDRUN_RECORDS_DIR"):
        monkeypatch.delenv(var, raising=False)
    stale = store.stale_tables()
    assert stale == [], f"generated tables are stale: {stale}; run `speedrun leaderboard --write`"


def test_a_run_without_the_sandbox_verifies_but_is_never_a_record(world, tmp_path, capsys):
    unboxed = tmp_path / "unboxed"
    shutil.copytree(world["runs"]["fast"], unboxed)
    manifest = json.loads((unboxed / "manifest.json").read_text())
    assert manifest["sandbox"].startswith("bwrap ")  # the launcher's default
    manifest.update(sandbox="none", sandbox_reason="--no-sandbox was given")
    (unboxed / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(unboxed)]) == 0
    assert "sandbox: none (--no-sandbox was given): this run can never be a record" in capsys.readouterr().out
    with pytest.raises(SpeedrunError, match=r"ran without the OS sandbox \(sandbox: none \(--no-sandbox was given\)\)"):
        compare.add_record(unboxed, "unboxed", ["@x"], root=tmp_path / "ledger")


def test_a_run_without_the_replica_check_verifies_but_is_never_a_record(world, tmp_path, capsys):
    unchecked = tmp_path / "unchecked"
    shutil.copytree(world["runs"]["fast"], unchecked)
    manifest = json.loads((unchecked / "manifest.json").read_text())
    assert manifest["replica"]["status"] == "checked"  # the launcher's default (the suite turns it on here)
    why = "the replica check was off (--no-replica, or SPEEDRUN_REPLICA=0)"
    manifest["replica"] = {"status": "off", "why": why, "seconds": None,
                           "repetitions": [{**e, "checked": False, "why": why} for e in manifest["replica"]["repetitions"]]}
    (unchecked / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(unchecked)]) == 0
    assert f"replica check: not every repetition checked (repetition 1: {why}): this run can never be a record" \
        in capsys.readouterr().out.replace("\n", " ")
    with pytest.raises(SpeedrunError, match=r"not re-checked by the replica \(repetition 1: the replica check was off"):
        compare.add_record(unchecked, "unchecked", ["@x"], root=tmp_path / "ledger")
