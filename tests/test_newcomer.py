"""Issue 18, "A newcomer's second hour": bad data found before launch, a regenerated corpus said out loud,
verdicts that explain themselves (the root cause first, with its script line and its log; what it caused
folded under it; nothing said twice), Ctrl-C that still leaves a verdict, a plain torchrun run that says where
its evidence went, a logits_fn checked at start() by the layout's call, and the small fixes that came with it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import synthetic

from speedrun import tracks
from speedrun.data import check, corpus, shards, streams
from speedrun.errors import SpeedrunError


def mini_track(tmp_path: Path, name: str = "mini") -> tracks.Track:
    return synthetic.generator_track(tmp_path, name=name)


def flip_keeping_mtime(path: Path, offset: int) -> None:
    """A same-size edit with the mtime put back: what a stat-keyed hash cache cannot see."""
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def mini(tmp_path):
    track = mini_track(tmp_path)
    root = tmp_path / "data"
    train, val = streams.track_files(track, root)
    return track, root, train, val


# --- 1. bad data is found before launch ---------------------------------------------------------------------


def test_sound_data_has_no_problems(mini):
    track, root, _, _ = mini
    assert check.check_track_data(track, root) == []
    check.require_track_data(track, root)


def test_flipped_val_bytes_are_found_by_content(mini):
    track, root, _, val = mini
    flip_keeping_mtime(val[0], shards.HEADER_BYTES + 101)
    streams.track_files(track, root)  # the cheap start-up check (sizes) does not see it
    problems = check.check_track_data(track, root)
    assert len(problems) == 1 and val[0].name in problems[0] and "contents changed" in problems[0]
    with pytest.raises(SpeedrunError) as exc:
        check.require_track_data(track, root)
    message = str(exc.value)
    assert "\n" not in message and str(val[0]) in message and "not launching" in message


def test_truncated_train_shard_is_found(mini):
    track, root, train, _ = mini
    train[1].write_bytes(train[1].read_bytes()[:-2])
    (problem,) = check.check_track_data(track, root)
    assert problem.startswith(f"{train[1]}: truncated")


def test_missing_file_is_a_problem(mini):
    track, root, train, _ = mini
    train[2].unlink()
    (problem,) = check.check_track_data(track, root)
    assert str(train[2]) in problem and "missing" in problem


def hub_track(tmp_path: Path, pins: str = "") -> tracks.Track:
    path = tmp_path / "hubby.toml"
    path.write_text(f"""
name = "hubby"
metric = "wallclock"
target_val_loss = 4.0
val_tokens = 100
vocab_size = 50
bos_token = 49
hardware = "cpu"
[rule]
test = "ttest"
[data]
source = "hub"
repo = "someone/hubby-data"
val_files = ["v.bin"]
train_pattern = "t_{{:02d}}.bin"
train_range = [1, 3]
sha256 = {{{pins}}}
""")
    return tracks.load_track_file(path)


def test_hub_data_checks_vocab_and_pins_only(tmp_path):
    folder = tmp_path / "data" / "hubby-data"
    shards.write_shard(folder / "v.bin", np.arange(101) % 50)
    shards.write_shard(folder / "t_01.bin", np.arange(200) % 50)
    shards.write_shard(folder / "t_02.bin", np.arange(200) % 50)
    pin = shards.sha256_file(folder / "t_01.bin")
    track = hub_track(tmp_path, f'"t_01.bin" = "{pin}"')
    assert check.check_track_data(track, tmp_path / "data") == []  # t_03 absent: a shorter prefix is fine
    flip_keeping_mtime(folder / "t_02.bin", shards.HEADER_BYTES + 3)  # unpinned: not hashed (large data)
    assert check.check_track_data(track, tmp_path / "data") == []
    flip_keeping_mtime(folder / "t_01.bin", shards.HEADER_BYTES + 3)
    flip_keeping_mtime(folder / "v.bin", shards.HEADER_BYTES + 3)  # token 0xff00 + ...: outside the vocabulary
    problems = check.check_track_data(track, tmp_path / "data")
    assert len(problems) == 2
    assert "v.bin: holds token" in problems[0] and "vocabulary [0, 50)" in problems[0]
    assert "t_01.bin: contents changed" in problems[1]


def test_launcher_refuses_bad_data_before_making_a_run_dir(mini, tmp_path):
    from speedrun.referee import launcher

    track, root, _, val = mini
    flip_keeping_mtime(val[0], shards.HEADER_BYTES + 7)
    script = tmp_path / "s.py"
    script.write_text("print('hi')\n")
    out = tmp_path / "runs"
    with pytest.raises(SpeedrunError, match="bad data, not launching: .*tiny_val_000000.bin"):
        launcher.Launch(script, track, 1, 1, out, 0, [], {}, data_dir=str(root))
    assert not out.exists()


def test_regenerating_the_corpus_is_said(mini, caplog, capsys):
    from speedrun import cli

    track, root, train, _ = mini
    train[1].write_bytes(train[1].read_bytes()[:-2])
    with caplog.at_level(logging.INFO, logger="speedrun"):
        streams.track_files(track, root)
    assert any("regenerating the mini corpus" in r.getMessage() and train[1].name in r.getMessage()
               for r in caplog.records)
    assert check.check_track_data(track, root) == []

    cli.show_notes()  # what `speedrun ...` installs: the note reaches the user's stderr
    train[2].unlink()
    streams.track_files(track, root)
    err = capsys.readouterr().err
    assert f"speedrun: note: regenerating the mini corpus in {root / 'mini'}: {train[2]} is missing" in err


def test_first_use_generation_is_only_info(tmp_path, caplog):
    track = mini_track(tmp_path)
    with caplog.at_level(logging.INFO, logger="speedrun"):
        streams.track_files(track, tmp_path / "d")
    (record,) = [r for r in caplog.records if r.name == corpus.__name__]
    assert record.levelno == logging.INFO and "first use" in record.getMessage()


# --- 2. small things ----------------------------------------------------------------------------------------


def test_tracks_show_names_each_entropy_once(monkeypatch):
    from speedrun.cli import tracks as show

    track = tracks.load_track("tiny")
    meta = {"entropy_nats": {"train": 3.1203, "val": track.entropy_floor}, "unigram_entropy_nats": 5.3907,
            "mean_doc_tokens": 250.0}
    monkeypatch.setattr(corpus, "entropy", lambda track, data_dir=None: meta)
    rows = show._merge(show._rows(track), show._entropy_rows(track, None))
    fields = [field for field, _ in rows]
    assert len(fields) == len(set(fields))
    text = "\n".join(value for _, value in rows)
    assert text.count(f"{track.entropy_floor:.4f}") == 1 and text.count("5.3907") == 1
    values = dict(rows)
    assert values["unigram entropy"].startswith(f"{track.unigram_entropy:.4f} nats/token on the val tokens")
    assert values["unigram entropy"].endswith("5.3907 nats/token on the train tokens")
    assert "entropy bound (val)" not in fields


def test_failed_fetch_and_prepare_leave_no_empty_folder(tmp_path, monkeypatch):
    from speedrun.data import fetch, folders, prepare

    track = hub_track(tmp_path)

    def refuse(*args, **kwargs):
        (tmp_path / "data" / "hubby-data" / ".cache" / "huggingface").mkdir(parents=True)  # as hf_hub_download does
        raise SpeedrunError("v.bin: download failed")

    monkeypatch.setattr(fetch, "fetch_file", refuse)
    with pytest.raises(SpeedrunError, match="download failed"):
        fetch.fetch(track, 0, data_dir=tmp_path / "data")
    assert not (tmp_path / "data").exists()

    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(SpeedrunError, match="download failed"):
        fetch.fetch(track, 0, data_dir=kept)  # a folder that was there stays
    assert kept.is_dir() and not (kept / "hubby-data").exists()

    with pytest.raises(RuntimeError):  # a folder holding a file is kept, and so are its parents
        with folders.made_for(tmp_path / "a" / "b"):
            (tmp_path / "a" / "b" / "shard.bin").write_bytes(b"x")
            raise RuntimeError
    assert (tmp_path / "a" / "b" / "shard.bin").exists()

    monkeypatch.setattr(prepare, "gpt2_encoding", lambda vocab_dir=None: None)
    monkeypatch.setattr(prepare, "token_stream", lambda docs, encoding: iter([np.arange(5, dtype=np.uint16)]))
    text = tmp_path / "small.txt"
    text.write_text("just a few words")
    with pytest.raises(SpeedrunError, match="lower --val-tokens"):
        prepare.prepare([text], tmp_path / "out" / "deep", val_tokens=1000)
    assert not (tmp_path / "out").exists()


def test_missing_data_hint_quotes_the_whole_command(tmp_path):
    track = hub_track(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(SpeedrunError) as exc:
        streams.track_files(track, root)
    assert str(exc.value).endswith(f"run `speedrun data fetch hubby --data-dir {root}`")
    (problem,) = check.check_track_data(track, root)
    assert problem.endswith(f"`speedrun data fetch hubby --data-dir {root}`")


def test_import_log_caption_is_short_phrases(tmp_path):
    from rich.console import Console

    from speedrun.cli import import_log
    from speedrun.legacy import modded

    log = Path(__file__).parent / "fixtures" / "modded_logs" / "muon_2024-10.txt"
    imp = modded.import_log(log, out=tmp_path / "out")
    console = Console(width=100, record=True, file=open(os.devnull, "w"))
    console.print(import_log._summary_table(imp))
    lines = [line.strip() for line in console.export_text().splitlines()]
    assert "track gpt2-small, told by its script's model_dim=768" in lines
    assert not any("content (" in line for line in lines)


# --- plots --------------------------------------------------------------------------------------------------


def ledger_record(root: Path, track: str, number: int, date: str, mean: float, run: Path | None = None) -> None:
    import shutil

    folder = root / track / f"{number:03d}_r{number}"
    if run is not None:
        shutil.copytree(run, folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.toml").write_text(f"""number = {number}
slug = "r{number}"
date = "{date}"
track = "{track}"
description = "test record {number}"
contributors = ["@someone"]
metric = "wallclock"
metric_mean = {mean}
metric_sd = 0.4
val_loss_mean = 3.86
n_runs = 3
p_value = 0.001
hardware = "cpu-2core"
harness_version = "0.1.0"
api_version = 1
script_sha256 = "{'0' * 64}"
verified = true
""")


def test_progression_of_two_records_on_one_day_is_linear_by_number(tmp_path):
    pytest.importorskip("matplotlib")
    from speedrun.ledger import plots

    ledger_record(tmp_path, "tiny", 1, "2026-11-30", 171.2)
    ledger_record(tmp_path, "tiny", 2, "2026-11-30", 152.9)
    fig = plots.plot_progression("tiny", tmp_path / "p.png", records_dir=tmp_path)
    (ax,) = fig.axes
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "record time (seconds)"
    assert list(ax.lines[0].get_xdata()) == [1, 2] and ax.get_xlim() == (0.5, 2.5)
    assert "2026-11-30" in ax.get_xlabel()


def test_progression_dates_are_held_to_the_records(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.dates as mdates

    from speedrun.ledger import plots

    ledger_record(tmp_path, "tiny", 1, "2026-11-01", 171.2)
    ledger_record(tmp_path, "tiny", 2, "2026-11-30", 152.9)
    fig = plots.plot_progression("tiny", tmp_path / "p.png", records_dir=tmp_path)
    (ax,) = fig.axes
    low, high = (mdates.num2date(v).date().isoformat() for v in ax.get_xlim())
    assert "2026-10-29" <= low < "2026-11-01" and "2026-11-30" < high <= "2026-12-03"
    assert ax.get_yscale() == "linear"


def test_run_validated_once_shows_its_logged_train_loss(tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from speedrun.ledger import plots

    run = tmp_path / "runs" / "once"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"track": {"name": "tiny"}}))
    events = [{"event": "log", "step": s, "scalars": {"train_loss": 6.2 - 0.002 * s}} for s in range(1, 1001)]
    events += [{"event": "train", "batches": 500, "timed_s": 80.0, "tokens": 1},
               {"event": "val", "step": 1000, "batches": 1000, "timed_s": 170.0, "loss": 3.86, "tokens": 262144,
                "seconds": 3.0}]
    (run / "run-1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    fig = plots.plot_runs([run], tmp_path / "once.png", x="both", records_dir=tmp_path / "none")
    seconds, steps = fig.axes
    train = {line.get_gid(): line for line in seconds.lines}["train:once:1"]
    assert len(train.get_xdata()) == 1000 and train.get_xdata()[499] == pytest.approx(80.0)
    assert train.get_xdata()[-1] == pytest.approx(170.0)
    assert list({line.get_gid(): line for line in steps.lines}["train:once:1"].get_xdata())[:2] == [1, 2]
    assert seconds.get_ylim()[1] > 4.5  # the curve's approach is in view, not only the lone validation


def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    import sys

    from speedrun.ledger import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SpeedrunError) as exc:
        plots.plot_progression("tiny", tmp_path / "p.png", records_dir=tmp_path)
    assert str(exc.value) == "plotting needs matplotlib: pip install 'speedrun[plot]'"
    with pytest.raises(SpeedrunError, match="plotting needs matplotlib"):
        plots.plot_runs([tmp_path], tmp_path / "r.png")


# --- wandb --------------------------------------------------------------------------------------------------


class FakeRun:
    def __init__(self):
        self.rows, self.summary = [], {}

    def log(self, row):
        self.rows.append(dict(row))


def test_wandb_rows_in_step_order_with_late_logs():
    from speedrun.referee.wandb_log import WandbSink

    run = FakeRun()
    sink = WandbSink(run)
    events = []  # as the referee forwards them: train events live, the script's logs in batches of 64 calls
    for step in range(1, 201):
        if step % 10 == 0:
            events.append({"event": "train", "batches": step, "timed_s": step / 10, "tokens": step * 64})
        if step % 64 == 0:
            events += [{"event": "log", "step": s, "scalars": {"train_loss": 6 - s / 100}}
                       for s in range(step - 63, step + 1)]
    events.append({"event": "val", "step": 200, "batches": 200, "timed_s": 20.0, "loss": 4.0, "tokens": 4096,
                   "seconds": 1.0})
    # the last logs come with finish(), after the final validation (as in records/tiny)
    events += [{"event": "log", "step": s, "scalars": {"train_loss": 6 - s / 100}} for s in range(193, 201)]
    for event in events:
        sink.log(event)
    sink.log({"event": "finish", "batches": 200, "timed_s": 20.0, "tokens": 200 * 64})
    # in order, one row per step; at 200 the train and val rows both have `timed_s`, so two rows
    steps = [r["step"] for r in run.rows]
    assert steps == sorted(steps) == list(range(1, 201)) + [200]
    by_step = {r["step"]: r for r in run.rows[:-1]}
    assert by_step[70]["train/loss"] == pytest.approx(5.3) and by_step[70]["train/tokens"] == 70 * 64
    assert by_step[200]["train/loss"] == pytest.approx(4.0) and run.rows[-1]["val/loss"] == 4.0


def test_wandb_rows_of_a_script_that_never_logs_wait_a_bounded_time():
    from speedrun.referee.wandb_log import HOLD_STEPS, WandbSink

    run = FakeRun()
    sink = WandbSink(run)
    for step in range(10, 1001, 10):
        sink.log({"event": "train", "batches": step, "timed_s": step / 10, "tokens": step * 64})
    steps = [r["step"] for r in run.rows]
    assert steps == list(range(10, 1000 - HOLD_STEPS + 1, 10))
    sink.log({"event": "finish", "batches": 1000, "timed_s": 100.0, "tokens": 64000})
    assert [r["step"] for r in run.rows] == list(range(10, 1001, 10))


# --- 4. compare's default process count ---------------------------------------------------------------------


def test_compare_default_nproc(tmp_path):
    import json

    from speedrun.ledger.compare import default_nproc

    track = tracks.load_track("tiny")
    records = tmp_path / "records"
    script = tmp_path / "mine.py"
    script.write_text("pass\n")
    # no record: the track's hardware (cpu-2core)
    assert default_nproc(track, script, records) == (2, "track tiny's hardware cpu-2core")
    # the track's current record's evidence
    ledger_record(records, "tiny", 1, "2026-11-30", 170.0)
    (records / "tiny" / "001_r1" / "manifest.json").write_text(json.dumps({"nproc_per_node": 3}))
    assert default_nproc(track, script, records) == (3, "record #1 of track tiny")
    # the incumbent's own evidence comes first
    incumbent = tmp_path / "old"
    incumbent.mkdir()
    (incumbent / "train.py").write_text("pass\n")
    (incumbent / "manifest.json").write_text(json.dumps({"nproc_per_node": 4}))
    assert default_nproc(track, incumbent / "train.py", records)[0] == 4
    gpt2 = tracks.load_track("gpt2-small")
    assert default_nproc(gpt2, script, records)[0] == 8


# --- 5. verdicts that explain themselves, interrupted runs, plain torchrun, the logits_fn's check -------------
# each launch is one repetition of a two-layer model on the synthetic smoke track (tests/synthetic.py)

MINI = """\
import sys
import time
import torch
import torch.nn.functional as F
import speedrun

run = speedrun.init()
torch.manual_seed(run.seed)
model = torch.nn.Sequential(torch.nn.Embedding(run.track.vocab_size, 16),
                            torch.nn.Linear(16, run.track.vocab_size)).to(run.device)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
train = run.train_loader(batch_tokens=2048, seq_len=128, layout=LAYOUT)


def logits_fn(inputs, *cu_seqlens):
    return model(inputs)


BEFORE_START
run.start(logits_fn)
for step in range(STEPS):
    inputs, targets = next(train)[:2]
    loss = F.cross_entropy(model(inputs).view(-1, run.track.vocab_size), targets.view(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    run.log(train_loss=loss.detach())
    IN_LOOP
VALIDATE
run.finish()
"""


def mini_script(tmp_path: Path, name: str, layout: str = "rows", steps: int = 4, before_start: str = "pass",
                in_loop: str = "pass", validate: str = "run.validate(logits_fn, step=STEPS)") -> Path:
    path = tmp_path / f"{name}.py"
    text = MINI.replace("VALIDATE", validate).replace("BEFORE_START", before_start).replace("IN_LOOP", in_loop)
    path.write_text(text.replace("LAYOUT", repr(layout)).replace("STEPS", str(steps)))
    return path


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    return synthetic.make_track(tmp_path_factory.mktemp("smoke"))


@pytest.fixture
def smoke(smoke_env, monkeypatch):
    for k, v in smoke_env.items():
        monkeypatch.setenv(k, v)
    return smoke_env


def speedrun_run(script: Path, out: Path, *extra: str) -> int:
    from speedrun.cli import main

    return main(["run", str(script), "--track", "smoke", "--nproc", "1", "--runs", "1", "--out", str(out), *extra])


def verdict_of(out: Path) -> dict:
    import json

    return json.loads((out / "verdict.json").read_text())


def test_a_crash_leads_with_its_cause_its_line_and_its_log(smoke, tmp_path, capsys):
    crash = "if step == 2:\n        raise RuntimeError(f'boom at step {step}')"
    script = mini_script(tmp_path, "crashy", in_loop=crash)
    out = tmp_path / "run"
    assert speedrun_run(script, out) == 1
    printed, progress = capsys.readouterr()
    verdict = verdict_of(out)
    (problem,) = verdict["problems"]  # the crash; "rank 0 never called finish()" is its consequence, not a problem
    assert problem == "repetition 1 failed (exit code 1): rank 0: RuntimeError: boom at step 2"
    line = script.read_text().splitlines().index("        raise RuntimeError(f'boom at step {step}')") + 1
    assert verdict["problem_details"][problem] == {
        "where": f"crashy.py:{line}: raise RuntimeError(f'boom at step {{step}}')",
        "log": str(out / "run-1.log"), "consequences": ["rank 0 never called finish()"]}
    assert verdict["repetitions"][0]["status"] == "failed" and verdict["status"] == "does not qualify"
    for text in (progress, printed):  # said once as it happened, once in the verdict, each with its line and log
        assert text.count("boom at step 2") == 1, text
        assert f"at crashy.py:{line}: raise" in text and f"full log: {out / 'run-1.log'}" in text
        assert "and so: rank 0 never called finish()" in text
        assert not any("never called" in row and "and so:" not in row for row in text.splitlines()), text


def test_a_timeout_is_said_once(smoke, tmp_path, capsys):
    """Said once, and nothing else blamed on the script: the processes still going down after the launcher's own
    stop are not "left running by the script"."""
    script = mini_script(tmp_path, "sleepy", before_start="time.sleep(60)")
    out = tmp_path / "run"
    assert speedrun_run(script, out, "--timeout", "4", "--nproc", "2") == 1
    printed, progress = capsys.readouterr()
    problems = verdict_of(out)["problems"]
    assert len(problems) == 1, problems
    assert problems[0].startswith("repetition 1 failed") and problems[0].endswith(": stopped after the 4 s timeout")
    assert not verdict_of(out)["warnings"]
    for text in (progress, printed):
        assert text.count("stopped after the 4 s timeout") == 1, text
        assert "running after it ended" not in text, text


def test_a_finished_repetition_with_a_problem_is_not_ok(smoke, tmp_path, capsys):
    peek = "try:\n    next(train)\nexcept Exception:\n    pass"  # a batch before start(): refused, and a problem
    out = tmp_path / "run"
    assert speedrun_run(mini_script(tmp_path, "early", before_start=peek), out) == 1
    progress = capsys.readouterr().err
    import json

    (rep,) = json.loads((out / "manifest.json").read_text())["repetitions"]
    assert rep["exit_code"] == 0 and rep["status"] == "invalid"
    verdict = verdict_of(out)
    assert verdict["repetitions"][0]["status"] == "invalid" and len(verdict["problems"]) == 1
    assert "asked for a training batch before start()" in verdict["problems"][0]
    assert progress.count("asked for a training batch before start()") == 1, progress


def test_an_old_manifest_of_a_finished_run_with_problems_is_judged_invalid(tmp_path):
    """A record's copy with a problem event added (sealed again, as its launcher would have): `ok` in its
    manifest, but the verdict's repetition is not."""
    import json
    import shutil

    from speedrun.evidence import rundir
    from speedrun.judge import verify

    record = Path(__file__).resolve().parent.parent / "records" / "tiny" / "002_muon-baseline"
    run = tmp_path / "run"
    shutil.copytree(record, run)
    (run / "record.toml").unlink()
    events = rundir.read_events(run / "run-2.jsonl")
    writer = rundir.EventWriter(run / "run-2.jsonl")
    for e in events:
        writer.write(e.pop("event"), **e)
    writer.write("problem", message="rank 1 took a training batch during a validation")
    writer.seal()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["repetitions"][1]["events_sha256"] = rundir.sha256_file(run / "run-2.jsonl")
    (run / "manifest.json").write_text(json.dumps(manifest))
    verdict = verify.verify_run_dir(run, write=False)
    assert [r["status"] for r in verdict["repetitions"]] == ["ok", "invalid", "ok"]
    assert verdict["problems"] == ["repetition 2: rank 1 took a training batch during a validation"]


def test_an_old_verdict_still_prints(capsys):
    import json

    from speedrun.cli.verify import print_verdict
    from speedrun.evidence import schema

    old = json.loads((Path(__file__).resolve().parent.parent / "records" / "tiny" / "002_muon-baseline" /
                      "verdict.json").read_text())
    assert "problem_details" not in old and "status" not in old
    assert schema.check(old, {k: v for k, v in schema.VERDICT_FIELDS.items() if k != "harness"}, "verdict",
                        schema.VERDICT_OPTIONAL) is None
    print_verdict(old)
    assert "QUALIFIES" in capsys.readouterr().out


def test_a_planned_stop_is_no_problem(smoke, tmp_path):
    """`replay --steps N` stops the run after N logged steps on purpose: nothing is missing then."""
    from speedrun.evidence import rundir
    from speedrun.referee import launcher
    from speedrun.report import Collect
    from speedrun.tracks import load_track

    more_logs = "for more in range(15):\n        run.log(step=step, lr=0.1)"  # 64 logged after 4 steps
    script = mini_script(tmp_path, "long", steps=200, in_loop=more_logs, validate="time.sleep(60)")
    report = Collect()
    job = launcher.Launch(script, load_track("smoke"), 1, 1, tmp_path / "run", 0, [], {}, stop_after_logs=64,
                          report=report)
    rep = job.repetition(1)
    job.close()
    assert rep["status"] == "stopped" and rep["error"] == "prefix replay: stopped after 64 logged steps"
    events = rundir.read_events(job.run_dir / "run-1.jsonl")
    assert len(events.of("log")) >= 64 and events.of("problem") == [] and events.of("warning") == []
    lines = [text for text, _ in report.lines]
    assert not any("problem" in text or "never called" in text for text in lines), lines
    from speedrun.judge import verify

    (problem,) = verify.verify_run_dir(job.run_dir, write=False)["problems"]  # it ran: stopped, not "not run"
    assert problem.startswith("repetition 1 stopped") and problem.endswith(rep["error"])


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_leaves_the_repetitions_that_ran_and_a_verdict_that_says_interrupted(smoke, tmp_path, stop):
    """Ctrl-C, and SIGTERM (`kill`; Slurm at a job's time limit) likewise."""
    import json
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    script = mini_script(tmp_path, "sleepy", before_start="time.sleep(60)")
    out = tmp_path / "run"
    env = {**os.environ, **smoke, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "speedrun.cli", "run", str(script), "--track", "smoke", "--nproc", "1", "--runs",
           "2", "--out", str(out)]
    # a shell's background job ignores SIGINT, and so would a child started from it: restore Ctrl-C's default
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"init"' not in (
                (out / "run-1.jsonl").read_text() if (out / "run-1.jsonl").exists() else ""):
            time.sleep(0.1)
        proc.send_signal(getattr(signal, stop))
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, stop), output
    said = "SIGINT (Ctrl-C)" if stop == "SIGINT" else stop
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["interrupted"] == f"{said} during repetition 1 of 2"
    (rep,) = manifest["repetitions"]
    assert rep["status"] == "interrupted" and rep["events_sha256"] and "end_check" in manifest
    assert rep["error"] == f"the launcher was interrupted ({said}) before the repetition ended"
    verdict = verdict_of(out)
    assert verdict["status"] == "interrupted" and not verdict["qualifies"]
    first = verdict["problems"][0]
    assert first == f"the run was interrupted: {said} during repetition 1 of 2; 1 repetition(s) not run"
    assert verdict["problem_details"][first]["consequences"] == ["repetition 1: rank 0 never called start()"]
    assert "INTERRUPTED" in output and "speedrun: interrupted" in output
    assert not list(tmp_path.glob("run/**/*.tmp"))  # nothing half-written
    again = subprocess.run([sys.executable, "-m", "speedrun.cli", "verify", str(out)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 1 and "INTERRUPTED" in again.stdout and "Traceback" not in again.stderr


def test_an_interrupted_compare_keeps_both_sides_with_verdicts_and_writes_no_result(smoke, tmp_path, monkeypatch):
    """SIGTERM (or Ctrl-C) as side B's repetition 1 begins, A's having ended: each side's manifest and verdict
    say interrupted (A after its repetition, B before its first), there is no compare.json to take a result from,
    and the comparison directory is named."""
    from speedrun.errors import Stopped
    from speedrun.evidence import rundir
    from speedrun.ledger import compare
    from speedrun.referee import launcher
    from speedrun.tracks import load_track

    def repetition(job, k, report=None):
        if job.run_dir.name == "A":  # as if it ran (no processes needed for what is tested here)
            return job._record({"k": k, "status": "ok", "exit_code": 0, "wall_s": 1.0, "seed": job.seeds[k - 1],
                                "error": None})
        raise Stopped("SIGTERM")

    monkeypatch.setattr(launcher.Launch, "repetition", repetition)
    script = mini_script(tmp_path, "mini")
    out = tmp_path / "cmp"
    with pytest.raises(launcher.Interrupted) as stop:
        compare.compare(script, script, load_track("smoke"), runs=2, nproc=1, out=out)
    assert stop.value.run_dir == out and stop.value.signal_name == "SIGTERM"
    assert not (out / compare.RESULT).exists()
    said = {side: rundir.read_json(out / side / rundir.MANIFEST)["interrupted"] for side in "AB"}
    assert said == {"A": "SIGTERM after repetition 1 of 2", "B": "SIGTERM before repetition 1 of 2"}
    for side in "AB":
        assert rundir.read_json(out / side / "verdict.json")["status"] == "interrupted"


def test_a_second_stop_while_the_evidence_is_written_is_let_go():
    """Ctrl-C again (or SIGTERM) while the launcher seals and records what the first stop left does not cut that
    short; afterwards Ctrl-C raises again."""
    import signal
    import threading
    import time

    from speedrun.referee import launcher

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can be set only from the main thread")
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with launcher.shielded():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # both delivered and handled here
            done.append(True)
        assert done and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, saved)


def test_a_ladder_point_whose_run_was_interrupted_runs_again(tmp_path):
    """An interrupted run now keeps its repetition (marked): a ladder must still see the point as unfinished."""
    import json
    from types import SimpleNamespace

    from speedrun.ladder import points

    point = SimpleNamespace(name="muon_d16__s1")
    folder = points.point_dir(tmp_path, point)
    folder.mkdir(parents=True)
    manifest = {"repetitions": [{"k": 1, "status": "interrupted"}],
                "interrupted": "SIGINT (Ctrl-C) during repetition 1 of 1"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not points.is_complete(tmp_path, point) and points.clear_incomplete(tmp_path, point)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"repetitions": [{"k": 1, "status": "failed"}]}))
    assert points.is_complete(tmp_path, point)


def test_plain_torchrun_says_once_where_its_evidence_goes(smoke, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    script = mini_script(tmp_path, "plain")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--track", "smoke"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, **smoke, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "unrefereed" in line]
    (run_dir,) = (Path(smoke["SPEEDRUN_RUNS_DIR"]) / "smoke").glob("*_plain_torchrun")
    assert said == [f"speedrun: unrefereed run (started without `speedrun run`, so it can never qualify for a "
                    f"record); its evidence goes to {run_dir}"], done.stderr[-3000:]
    assert (run_dir / "manifest.json").is_file()


def test_the_flat_layouts_logits_fn_is_taken_positionally(smoke, tmp_path):
    out = tmp_path / "run"
    script = mini_script(tmp_path, "flat", layout="flat").read_text()
    script = script.replace("def logits_fn(inputs, *cu_seqlens):", "def logits_fn(inputs, cu_seqlens):")
    (tmp_path / "flat.py").write_text(script)
    speedrun_run(tmp_path / "flat.py", out, "--no-verify")
    import json

    (rep,) = json.loads((out / "manifest.json").read_text())["repetitions"]
    assert rep["status"] == "ok", (out / "run-1.log").read_text()[-2000:]


def test_a_logits_fn_the_layout_cannot_call_is_refused_at_start():
    """Checked by the call each layout makes, at start(): before the timed work, not at its end."""
    from types import SimpleNamespace

    from speedrun.rank.run import Run

    def loss_fn(inputs, targets):
        pass

    def rows_logits(inputs):
        pass

    def fresh(layout: str) -> Run:
        run = Run.__new__(Run)  # the checks come before anything is asked of a referee
        run._phase, run._model = "init", None
        run._loader = SimpleNamespace(layout=layout, seq_len=128, batch_tokens=1024, accum_steps=1)
        return run

    with pytest.raises(SpeedrunError) as exc:
        fresh("rows").start(loss_fn)
    message = str(exc.value)
    assert message.startswith("start(): loss_fn(inputs, targets) cannot be called as logits_fn(inputs) (the rows "
                              "layout's call): hand it logits_fn(inputs)") and "\n" not in message
    with pytest.raises(SpeedrunError, match=r"start\(\): rows_logits\(inputs\) cannot be called as "
                                            r"logits_fn\(inputs, cu_seqlens\) \(the flat layout's call\)"):
        fresh("flat").start(rows_logits)
    timed = fresh("rows")
    timed._phase = "timed"
    with pytest.raises(SpeedrunError, match=r"validate\(\): loss_fn\(inputs, targets\) cannot be called"):
        timed.validate(loss_fn, step=3)  # API 1 without its logits_fn= (refused, as before)
