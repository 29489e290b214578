"""`speedrun plot`: run curves with target and current record, and the record progression."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image
import pytest

from speedrun import cli
from speedrun.errors import SpeedrunError
from speedrun.evidence.rundir import read_events
from speedrun.legacy.modded import import_log
from speedrun.ledger.store import read_record
from speedrun.ledger.plots import current_record, plot_progression, plot_runs
from speedrun.tracks import load_track

LOGS = Path(__file__).parent / "fixtures" / "modded_logs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record_toml(number: int, slug: str, verified: bool, date: str = "2026-08-01", mean: float = 70.5) -> str:
    return f"""number = {number}
slug = "{slug}"
date = "{date}"
track = "gpt2-small"
description = "test record {number}"
contributors = ["@someone"]
metric = "wallclock"
metric_mean = {mean}
metric_sd = 0.4
val_loss_mean = 3.2779
n_runs = 3
p_value = 0.001
hardware = "8xH100"
harness_version = "0.1.0"
api_version = 1
script_sha256 = "{'0' * 64}"
verified = {'true' if verified else 'false'}
"""


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    out = tmp_path / "runs"
    return {name: import_log(LOGS / f"{name}.txt", out=out).run_dir
            for name in ("late_2025-12", "dec_2024-12", "optimization_3trials", "llmc_2024-06")}


@pytest.fixture
def records(tmp_path, runs) -> Path:
    """A ledger with a verified record #1 (evidence from a log) and an unverified, later #2."""
    root = tmp_path / "records"
    first = root / "gpt2-small" / "001_late"
    shutil.copytree(runs["late_2025-12"], first)
    (first / "record.toml").write_text(record_toml(1, "late", True))
    second = root / "gpt2-small" / "002_pending"
    second.mkdir()
    (second / "record.toml").write_text(record_toml(2, "pending", False, "2026-09-01", 60.0))
    return root


def lines_by_gid(ax) -> dict[str, object]:
    return {line.get_gid(): line for line in ax.lines if line.get_gid()}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500


def test_current_record_is_highest_verified(records):
    rec = current_record("gpt2-small", records)
    assert (rec.number, rec.slug, rec.verified) == (1, "late", True)
    assert current_record("gpt2-medium", records) is None


def test_run_plot_data_target_and_record_overlay(tmp_path, runs, records):
    out = tmp_path / "plot.png"
    fig = plot_runs([runs["dec_2024-12"]], out, x="both", records_dir=records)
    assert_png(out)
    seconds_ax, steps_ax = fig.axes
    vals = read_events(runs["dec_2024-12"] / "run-1.jsonl").of("val")
    for ax, key in ((seconds_ax, "timed_s"), (steps_ax, "step")):
        lines = lines_by_gid(ax)
        run = lines["run:dec_2024-12:1"]
        assert list(run.get_xdata()) == [v[key] for v in vals]
        assert list(run.get_ydata()) == [v["loss"] for v in vals]
        assert set(lines["target:gpt2-small"].get_ydata()) == {3.28}
        assert "record:1:1" in lines  # the current record's repetition sits underneath
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "current record #1 late" in labels and "dec_2024-12 (1 repetition)" in labels
    assert seconds_ax.get_xlabel().startswith("timed seconds") and steps_ax.get_xlabel() == "step"
    low, high = seconds_ax.get_ylim()
    assert low < 3.28 < high < 10  # zoomed on the approach to the target, not on the 10.8 start


def test_record_is_not_overlaid_on_itself(tmp_path, records):
    fig = plot_runs([records / "gpt2-small" / "001_late"], tmp_path / "p.png", x="steps", records_dir=records)
    assert not [g for g in lines_by_gid(fig.axes[0]) if g.startswith("record:")]


def test_one_line_per_repetition_and_single_axis(tmp_path, runs):
    fig = plot_runs([runs["optimization_3trials"]], tmp_path / "o.png", x="seconds", records_dir=tmp_path)
    assert len(fig.axes) == 1
    gids = lines_by_gid(fig.axes[0])
    assert {g for g in gids if g.startswith("run:")} == {f"run:optimization_3trials:{k}" for k in (1, 2, 3)}
    assert list(gids["run:optimization_3trials:2"].get_xdata())[-1] == 553.42


def test_runs_without_times_need_steps(tmp_path, runs):
    with pytest.raises(SpeedrunError, match="no validation with timed seconds.*--x steps"):
        plot_runs([runs["llmc_2024-06"]], tmp_path / "x.png", x="seconds", records_dir=tmp_path)
    assert not (tmp_path / "x.png").exists()
    fig = plot_runs([runs["llmc_2024-06"]], tmp_path / "x.png", x="steps", records_dir=tmp_path)
    assert list(lines_by_gid(fig.axes[0])["run:llmc_2024-06:1"].get_xdata()) == [0, 25, 50, 75, 100]


def test_progression_marks_history_and_ledger_apart(tmp_path, records):
    out = tmp_path / "prog.png"
    fig = plot_progression("gpt2-small", out, records_dir=records)
    assert_png(out)
    (ax,) = fig.axes
    lines = lines_by_gid(ax)
    history, ledger = lines["history"], lines["ledger"]
    assert len(history.get_ydata()) == 91 and history.get_ydata()[0] == 2700.0
    assert list(ledger.get_ydata()) == [70.5]  # the verified record only; #2 is unverified
    assert history.get_marker() != ledger.get_marker()
    assert ax.get_yscale() == "log" and "seconds" in ax.get_ylabel()
    labels = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "self-reported" in labels and "ledger" in labels


def test_progression_counts_undated_rows_and_needs_data(tmp_path):
    fig = plot_progression("gpt2-medium", tmp_path / "m.png", records_dir=tmp_path)
    assert len(lines_by_gid(fig.axes[0])["history"].get_xdata()) == 17
    assert "1 undated" in fig.axes[0].get_title()
    with pytest.raises(SpeedrunError, match="no dated records for track 'tiny'"):
        plot_progression("tiny", tmp_path / "n.png", records_dir=tmp_path)


def test_bad_record_toml_names_the_field(tmp_path):
    path = tmp_path / "record.toml"
    path.write_text(record_toml(1, "x", True).replace("verified = true", 'verified = "yes"'))
    with pytest.raises(SpeedrunError, match="record.toml: field 'verified': wrong type"):
        read_record(path)


def single_validation_run(folder: Path, losses: list[float]) -> Path:
    """A run directory of the tiny track whose repetitions each validated once (e.g. only at the end)."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"track": {"name": "tiny"}}))
    for k, loss in enumerate(losses, start=1):
        event = {"event": "val", "step": 40, "batches": 40, "timed_s": 3.5 + 0.4 * k, "loss": loss,
                 "tokens": 262144, "seconds": 0.6}
        (folder / f"run-{k}.jsonl").write_text(json.dumps(event) + "\n")
    return folder


def test_single_validations_are_labelled_markers_and_the_target_is_in_range(tmp_path):
    target = load_track("tiny").target_val_loss
    losses = [round(target - 0.28, 4), round(target - 0.32, 4)]  # both well under the target
    run = single_validation_run(tmp_path / "runs" / "final-only", losses)
    out = tmp_path / "one.png"
    fig = plot_runs([run], out, x="both", records_dir=tmp_path)
    assert_png(out)
    for ax in fig.axes:
        lines = lines_by_gid(ax)
        for k, loss in enumerate(losses, start=1):
            line = lines[f"run:final-only:{k}"]
            assert line.get_marker() == "o" and line.get_markersize() >= 6 and line.get_linestyle() == "None"
            labels = [t for t in ax.texts if t.get_gid() == f"run:final-only:{k}:value"]
            assert [t.get_text() for t in labels] == [f"{loss:.4f}"]
        low, high = ax.get_ylim()
        assert low < min(losses) and target < high  # the target sits above every loss and is still drawn inside
        assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] > max(lines["run:final-only:2"].get_xdata())
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "final-only (2 repetitions)" in legend and f"target {target:g} (tiny)" in legend


def test_cli_plot_commands(tmp_path, runs, records, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPEEDRUN_RUNS_DIR", raising=False)
    assert cli.main(["plot", str(runs["late_2025-12"]), "--records", str(records)]) == 0
    assert_png(runs["late_2025-12"] / "val_loss.png")
    # several runs: into the first run's directory; the progression: beside the runs; never the current dir
    assert cli.main(["plot", str(runs["dec_2024-12"]), str(runs["late_2025-12"]), "--x", "steps"]) == 0
    assert_png(runs["dec_2024-12"] / "val_loss-compare.png")
    assert cli.main(["plot", "progression", "--track", "gpt2-small", "--records", str(records)]) == 0
    assert_png(tmp_path / "runs" / "progression-gpt2-small.png")
    assert not list(tmp_path.glob("*.png"))
    monkeypatch.setenv("SPEEDRUN_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert cli.main(["plot", "progression", "--track", "gpt2-small", "--records", str(records)]) == 0
    assert "elsewhere/progression-gpt2-small.png" in capsys.readouterr().out
    assert cli.main(["plot", "progression"]) == 1
    assert "needs --track" in capsys.readouterr().err
    assert cli.main(["plot", str(runs["late_2025-12"]), "--track", "gpt2-small"]) == 1
    assert "--track is only for `plot progression`" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "missing")]) == 1
    assert "missing: not a run directory" in capsys.readouterr().err
