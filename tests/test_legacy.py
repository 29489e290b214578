"""modded-nanogpt log import: every era of the format, trial splitting, truncation, --step, the evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speedrun import cli
from speedrun.errors import SpeedrunError
from speedrun.evidence.hardware import matches as hardware_matches
from speedrun.evidence.rundir import read_events, sha256_file
from speedrun.judge.verify import check_imported
from speedrun.legacy.modded import (MAX_TRAIN_EVENTS, import_log, import_logs, import_record_dir, infer_track,
                                    parse_log, parse_step_line)
from speedrun.tracks import load_track
from test_stats import TRACK3, TRACK3_FIGURES

LOGS = Path(__file__).parent / "fixtures" / "modded_logs"
SEP = "=" * 100


def events(run_dir: Path, k: int = 1):
    return read_events(run_dir / f"run-{k}.jsonl")


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


# --- single lines -------------------------------------------------------------------------------------------


def test_step_line_shapes_of_every_era():
    train = parse_step_line("step:12/3000 train_loss:5.8096 train_time:380ms step_avg:nanms")
    assert (train.kind, train.step, train.total, train.loss, train.seconds) == ("train", 12, 3000, 5.8096, 0.38)
    plain = parse_step_line("step:27/40 train_time:4050ms step_avg:150.00ms")
    assert (plain.kind, plain.loss, plain.seconds) == ("train", None, 4.05)
    val6 = parse_step_line("step:50/50 val_loss:2.922493 train_time:50993ms step_avg:1019.87ms")
    assert (val6.kind, val6.loss, val6.seconds) == ("val", 2.922493, 50.993)
    opt = parse_step_line("step:3325/3350 val_loss:3.27810 val_ema_loss:3.28242 train_time:549.290s "
                          "step_avg:165.20ms grad_norm:0.3248")
    assert (opt.kind, opt.step, opt.loss, opt.seconds, opt.unit) == ("val", 3325, 3.2781, 549.29, "s")
    llmc_val = parse_step_line("s:250 tel:4.5012")
    assert (llmc_val.kind, llmc_val.step, llmc_val.total, llmc_val.loss, llmc_val.seconds) == \
        ("val", 250, None, 4.5012, None)
    llmc_train = parse_step_line("s:3 trl:9.6382 lr:2.4000e-04 norm:0.6291")
    assert (llmc_train.kind, llmc_train.loss) == ("train", 9.6382)


@pytest.mark.parametrize("line", [
    'print0(f"step:{step}/{args.num_iterations} val_loss:{val_loss:.4f} train_time:{t:.0f}ms")',
    "step:5/10 something:else",
    "1234",
    "peak memory consumption: 37654 MiB",
    "s:12 foo:1.0",
])
def test_non_step_lines_are_not_steps(line):
    assert parse_step_line(line) is None


def test_nan_loss_is_flagged_not_crashed():
    line = parse_step_line("step:100/200 val_loss:nan train_time:1000ms step_avg:10.00ms")
    assert line.kind == "val" and line.loss is None and line.bad_loss


# --- whole files, one per era -------------------------------------------------------------------------------


def test_llmc_era_has_losses_but_no_times():
    log = parse_log(LOGS / "llmc_2024-06.txt")
    assert log.era == "llm.c" and len(log.trials) == 1
    trial = log.trials[0]
    assert [v.step for v in trial.vals] == [0, 25, 50, 75, 100]
    assert trial.complete and trial.vals[-1].loss == 3.2811 and trial.vals[-1].seconds is None
    assert len(trial.trains) == 100 and not trial.unknown
    assert log.env["torch"] is None and log.world_size is None


def test_muon_era_result_is_last_validation_not_the_largest_time():
    log = parse_log(LOGS / "muon_2024-10.txt")
    trial = log.trials[0]
    final = trial.vals[-1]
    assert (final.step, final.total, final.loss, final.seconds) == (60, 60, 3.2827, 18.62)
    largest = max(s.seconds for s in trial.trains)
    assert largest == 28.6 and final.seconds < largest  # the compile-inflated grace steps
    assert trial.clock_restart.step == 11
    assert trial.trains[0].loss == 10.8322  # train_loss of the 2024 eras is read
    assert not trial.unknown  # the script's print0 f-string above the separator is not output


def test_late_2024_file_opening_with_separator_reads_lowercase_env_and_gpu_rows():
    log = parse_log(LOGS / "dec_2024-12.txt")
    assert log.env["torch"] == "2.6.0.dev20241203+cu124" and log.env["cuda"] == "12.4"
    assert log.env["device_name"] == "NVIDIA H100 80GB HBM3" and log.env["device_count"] == 8
    assert log.world_size == 8
    assert log.script[0].startswith("import os")  # the script sits between the first two separators
    assert log.trials[0].vals[-1].loss == 3.2818 and log.trials[0].vals[-1].seconds == 6.09


def test_mid_2025_medium_file_with_dataloader_lines_and_h200():
    log = parse_log(LOGS / "track_2_medium" / "medium_2025-07.txt")
    env = log.env
    assert (env["python"], env["torch"], env["cuda"], env["triton"]) == \
        ("3.12.7", "2.9.0.dev20250713+cu126", "12.6", "3.4.0")
    assert env["device_name"] == "NVIDIA H200" and env["device_count"] == 8
    final = log.trials[0].vals[-1]
    assert (final.loss, final.seconds) == (2.922493, 50.993)
    assert not log.trials[0].unknown  # dataloader lines are between separators, peak memory is known


def test_late_2025_warmup_lines_are_known_and_junk_is_counted():
    log = parse_log(LOGS / "late_2025-12.txt")
    trial = log.trials[0]
    assert len(log.trials) == 1 and trial.complete
    assert [text for _, text in trial.unknown] == [
        "transformer.h.0.attn.qkv_w torch.Size([3, 768, 768])",
        "transformer.h.0.mlp.fc_w torch.Size([3072, 768])",
        "1234",
        "debug: grad norm 0.8812",
    ]
    assert log.env["triton"] == "3.5.1" and log.env["python"] == "3.12.11"


def test_optimization_file_splits_into_trials_at_step_zero():
    log = parse_log(LOGS / "optimization_3trials.txt")
    assert len(log.trials) == 3
    assert [t.vals[-1].loss for t in log.trials] == [3.27661, 3.27592, 3.2777]
    assert all(t.complete and [v.step for v in t.vals] == [0, 1000, 2000, 3000, 3325, 3350] for t in log.trials)
    assert [t.val_at(3325).loss for t in log.trials] == [3.27701, 3.27632, 3.2781]
    assert all(t.clock_restart is None for t in log.trials)  # each trial's clock starts afresh, no warning
    assert log.world_size == 8 and log.world_size_printed
    assert log.env["device_name"] == "NVIDIA H100 80GB HBM3"


def test_truncated_file_is_parsed_and_marked():
    log = parse_log(LOGS / "truncated_2025-03.txt")
    trial = log.trials[0]
    assert not trial.complete and trial.last.kind == "train" and trial.last.step == 27
    assert log.env["device_count"] == 1  # a single H100 row in its nvidia-smi table


def test_file_without_steps_is_an_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(SpeedrunError, match="notes.txt: no step or validation lines"):
        parse_log(path)


# --- track inference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, track, how", [
    ("track_2_medium/medium_2025-07.txt", "gpt2-medium", "path"),
    ("optimization_3trials.txt", "optimization", "world_size"),
    ("muon_2024-10.txt", "gpt2-small", "model_dim=768"),
    ("llmc_2024-06.txt", "gpt2-small", "final val loss"),
])
def test_track_inference(name, track, how):
    guessed, reason = infer_track(parse_log(LOGS / name))
    assert guessed == track and how in reason


def test_modded_folder_names_map_to_our_tracks(tmp_path):
    for folder, ours in [("track_1_short", "gpt2-small"), ("track_3_optimization", "optimization")]:
        path = tmp_path / "records" / folder / "2025-01-01_x" / "log.txt"
        path.parent.mkdir(parents=True)
        path.write_text("s:0 tel:10.9\ns:0 trl:10.9\n")
        assert infer_track(parse_log(path))[0] == ours


def test_unknown_track_asks_for_flag_and_flag_overrides(tmp_path):
    path = tmp_path / "mystery.txt"
    path.write_text("step:0/10 val_loss:10.8 train_time:0ms step_avg:nanms\n"
                    "step:10/10 val_loss:4.1 train_time:900ms step_avg:90.00ms\n")
    with pytest.raises(SpeedrunError, match="mystery.txt: cannot tell which track.*--track"):
        import_log(path, out=tmp_path / "out")
    imp = import_log(path, track="gpt2-medium", out=tmp_path / "out")
    assert imp.track == "gpt2-medium" and imp.track_from == "--track"
    assert manifest(imp.run_dir)["track"]["name"] == "gpt2-medium"


# --- evidence written ---------------------------------------------------------------------------------------


def test_imported_evidence_has_the_promised_shape(tmp_path):
    src = LOGS / "dec_2024-12.txt"
    imp = import_log(src, out=tmp_path)
    run = imp.run_dir
    assert run == tmp_path / "dec_2024-12"
    m = manifest(run)
    track = load_track("gpt2-small")
    assert m["self_reported"] is True and m["source"] == "modded-nanogpt log"
    assert m["track"] == {"name": "gpt2-small", "config_sha256": track.config_sha256}
    assert m["source_logs"] == [{"name": "dec_2024-12.txt", "sha256": sha256_file(src), "trials": 1,
                                 "era": "modded-nanogpt", "hardware": "8xNVIDIA H100 80GB HBM3"}]
    assert sha256_file(run / "dec_2024-12.txt") == sha256_file(src)
    assert m["env"]["torch"] == "2.6.0.dev20241203+cu124" and m["env"]["device_count"] == 8
    assert set(m["env"]) == {"torch", "cuda", "triton", "python", "device_name", "device_count"}
    assert m["hardware"] == "8xNVIDIA H100 80GB HBM3"
    assert m["hardware_fingerprint"] == {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 8}
    assert m["repetitions"] == [{"k": 1, "status": "ok", "exit_code": None, "wall_s": None, "notes": [],
                                 "source": "dec_2024-12.txt", "trial": 1, "hardware": "8xNVIDIA H100 80GB HBM3"}]
    assert (m["requested_step"], m["loss_field"], m["skipped_files"]) == (None, "val_loss", [])
    assert {"harness_version", "api_version"} <= set(m)

    ev = events(run)
    assert not ev.sealed  # self-reported evidence is never sealed
    assert ev[0]["event"] == "init" and ev[0]["track"] == "gpt2-small" and ev[0]["world_size"] == 8
    vals = ev.of("val")
    assert [(v["step"], v["timed_s"], v["loss"], v["tokens"]) for v in vals] == \
        [(0, 0.0, 10.8332, None), (20, 1.89, 3.6457, None), (40, 6.09, 3.2818, None)]
    assert ev.last("finish")["step"] == 40 and ev.last("finish")["timed_s"] == 6.09
    assert ev[-1]["event"] == "finish"
    assert len(ev.of("train")) == 40 and "loss" not in ev.of("train")[0]
    restart = [w for w in ev.of("warning") if "restarts" in w["message"]]
    assert len(restart) == 1 and "step 11" in restart[0]["message"]
    assert not list(tmp_path.glob(".*"))  # nothing left aside


def test_multi_trial_file_gives_one_events_file_per_trial(tmp_path):
    run = import_log(LOGS / "optimization_3trials.txt", out=tmp_path).run_dir
    finals = [events(run, k).last("finish") for k in (1, 2, 3)]
    assert [(f["step"], f["timed_s"]) for f in finals] == [(3350, 553.42)] * 3
    assert [events(run, k).of("val")[-1]["loss"] for k in (1, 2, 3)] == [3.27661, 3.27592, 3.2777]
    assert [r["status"] for r in manifest(run)["repetitions"]] == ["ok"] * 3


def test_requested_step_judges_there_and_stops(tmp_path):
    imp = import_log(LOGS / "optimization_3trials.txt", out=tmp_path, step=3325)
    m = manifest(imp.run_dir)
    assert m["requested_step"] == 3325
    for k, loss in zip((1, 2, 3), (3.27701, 3.27632, 3.2781)):
        ev = events(imp.run_dir, k)
        assert ev.last("finish")["step"] == 3325 and ev.last("finish")["timed_s"] == 549.29
        assert ev.of("val")[-1] == {**ev.of("val")[-1], "step": 3325, "loss": loss}
        assert max(e["step"] for e in ev if "step" in e) == 3325
        assert "step 3325" in m["repetitions"][k - 1]["notes"][0]


def test_requested_step_that_no_trial_has_is_an_error(tmp_path):
    with pytest.raises(SpeedrunError, match="no trial has a validation at step 3333"):
        import_log(LOGS / "optimization_3trials.txt", out=tmp_path, step=3333)
    assert not list(tmp_path.iterdir())


def test_truncated_trial_gets_no_finish_and_a_warning(tmp_path):
    run = import_log(LOGS / "truncated_2025-03.txt", out=tmp_path).run_dir
    ev = events(run)
    assert ev.last("finish") is None
    assert any("without a final validation" in w["message"] for w in ev.of("warning"))
    rep = manifest(run)["repetitions"][0]
    assert rep["status"] == "truncated" and "step 27 of 40" in rep["notes"][0]


def test_unknown_lines_are_one_counted_warning(tmp_path):
    ev = events(import_log(LOGS / "late_2025-12.txt", out=tmp_path).run_dir)
    junk = [w for w in ev.of("warning") if "unrecognised" in w["message"]]
    assert len(junk) == 1 and junk[0]["count"] == 4 and "line 79" in junk[0]["message"]


def test_train_events_are_sampled_and_keep_the_last(tmp_path):
    lines = ["step:0/1000 val_loss:10.8 train_time:0ms step_avg:nanms"]
    lines += [f"step:{s}/1000 train_time:{s * 10}ms step_avg:10.00ms" for s in range(1, 1001)]
    lines += ["step:1000/1000 val_loss:3.27 train_time:10000ms step_avg:10.00ms"]
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines) + "\n")
    trains = events(import_log(path, track="gpt2-small", out=tmp_path / "o").run_dir).of("train")
    assert len(trains) <= MAX_TRAIN_EVENTS + 1 and trains[-1]["step"] == 1000 and trains[0]["step"] == 1
    steps = [t["step"] for t in trains]
    assert steps == sorted(steps)


def test_default_out_dir_and_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = import_log(LOGS / "muon_2024-10.txt").run_dir
    assert run == Path("runs/imported/muon_2024-10") and (tmp_path / run / "manifest.json").exists()
    (run / "marker").write_text("old")
    with pytest.raises(SpeedrunError, match="already exists.*--force"):
        import_log(LOGS / "muon_2024-10.txt")
    import_log(LOGS / "muon_2024-10.txt", force=True)
    assert not (run / "marker").exists() and (run / "run-1.jsonl").exists()
    assert [p.name for p in (tmp_path / "runs/imported").iterdir()] == ["muon_2024-10"]


# --- command line -------------------------------------------------------------------------------------------


def test_cli_imports_several_files_and_prints_a_summary(tmp_path, capsys):
    rc = cli.main(["import-log", str(LOGS / "optimization_3trials.txt"), str(LOGS / "truncated_2025-03.txt"),
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "3.2766" in out and "553.420" in out and "truncated" in out and "self-reported" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimization_3trials", "truncated_2025-03"]


def test_cli_bad_file_is_one_line_and_nonzero_while_others_import(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("not a log\n")
    rc = cli.main(["import-log", str(bad), str(LOGS / "muon_2024-10.txt"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.strip().count("\n") == 0 and "bad.txt: no step or validation lines" in captured.err
    assert (tmp_path / "o" / "muon_2024-10" / "manifest.json").exists()


def test_cli_step_flag_and_unknown_track(tmp_path, capsys):
    rc = cli.main(["import-log", str(LOGS / "optimization_3trials.txt"), "--out", str(tmp_path), "--step",
                   "3325"])
    assert rc == 0 and "judged at step 3325" in capsys.readouterr().out
    rc = cli.main(["import-log", str(LOGS / "muon_2024-10.txt"), "--out", str(tmp_path), "--track", "nope"])
    assert rc == 1 and "unknown track 'nope'" in capsys.readouterr().err


# --- trials inside one file ---------------------------------------------------------------------------------


def test_concatenated_seeds_without_step_zero_are_split_and_echoes_skipped():
    log = parse_log(LOGS / "concatenated_seeds.txt")
    assert len(log.trials) == 3  # the step count starts again at each seed; no step:0 validation anywhere
    assert [t.vals[-1].loss for t in log.trials] == [3.27702, 3.27755, 3.27688]
    assert all([v.step for v in t.vals] == [40, 80, 90, 95, 100] for t in log.trials)
    assert [t.echoes for t in log.trials] == [3, 3, 3]  # the echoed tail is not a run of its own
    assert log.hardware() == ("4xNVIDIA H200", {"gpu_name": "NVIDIA H200", "gpu_count": 4})
    assert log.era == "modded-nanogpt" and infer_track(log)[0] == "optimization"


def test_concatenated_logs_are_split_where_the_header_repeats(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text((LOGS / "dec_2024-12.txt").read_text() + (LOGS / "late_2025-12.txt").read_text())
    log = parse_log(path)
    alone = parse_log(LOGS / "late_2025-12.txt")
    assert len(log.trials) == 2 and len(log.headers) == 2
    assert log.trials[0].vals[-1].loss == 3.2818 and log.trials[1].vals[-1].loss == alone.trials[0].vals[-1].loss
    assert log.headers[1].env == alone.env and log.trials[1].header == 1
    # the second log's script is not output: only the second log's own junk lines are unknown
    assert [text for _, text in log.trials[1].unknown] == [text for _, text in alone.trials[0].unknown]
    assert not log.trials[0].unknown


def test_same_run_pasted_twice_is_one_run_with_a_warning(tmp_path):
    path = tmp_path / "twice.txt"
    text = (LOGS / "muon_2024-10.txt").read_text()
    output = text.split("=" * 100)[-1]
    path.write_text(text + output.lstrip("\n"))
    log = parse_log(path)
    assert len(log.trials) == 1 and log.trials[0].echoes > 0


def test_split_repetitions_of_a_file_with_different_runs(tmp_path):
    """Two runs with the same seed but their own times are two runs, even where losses coincide."""
    path = tmp_path / "same_seed.txt"
    lines = []
    for run, t0 in ((1, 0.0), (2, 0.5)):
        lines += [f"step:0/20 val_loss:10.80000 train_time:{t0:.3f}s step_avg:nanms"]
        lines += [f"step:{s}/20 train_time:{t0 + s:.3f}s step_avg:1000.00ms" for s in range(1, 21)]
        lines += [f"step:20/20 val_loss:3.27500 train_time:{t0 + 20:.3f}s step_avg:1000.00ms"]
    path.write_text("\n".join(lines) + "\n")
    log = parse_log(path)
    assert len(log.trials) == 2 and [t.echoes for t in log.trials] == [0, 0]


# --- record groups ------------------------------------------------------------------------------------------

RECORD = LOGS / "track_3_optimization" / "2026-01-01_three_seeds"


def check(run_dir: Path, track: str | None = None):
    m = manifest(run_dir)
    return check_imported(run_dir, m, load_track(track or m["track"]["name"]))


def test_record_folder_becomes_one_run_dir_judged_at_the_declared_step(tmp_path):
    imp = import_record_dir(RECORD, out=tmp_path, step=110)
    run = imp.run_dir
    assert run == tmp_path / "2026-01-01_three_seeds" and imp.track == "optimization"
    m = manifest(run)
    assert [s["name"] for s in m["source_logs"]] == ["run_a.txt", "run_b.txt", "run_c.txt"]
    assert all((run / s["name"]).read_bytes() == (RECORD / s["name"]).read_bytes() for s in m["source_logs"])
    assert m["skipped_files"] == [{"name": "notes.txt", "reason": "no step or validation lines"}]
    assert [(r["k"], r["source"], r["trial"], r["status"]) for r in m["repetitions"]] == \
        [(1, "run_a.txt", 1, "ok"), (2, "run_b.txt", 1, "ok"), (3, "run_c.txt", 1, "ok")]
    assert m["hardware"] == "8xNVIDIA H100 80GB HBM3" and m["requested_step"] == 110
    assert sorted(p.name for p in run.glob("run-*.jsonl")) == ["run-1.jsonl", "run-2.jsonl", "run-3.jsonl"]

    c = check(run)
    assert c.judged_step == 110 and c.problems == [] and c.qualifies
    assert [r["final_loss"] for r in c.repetitions] == [3.27701, 3.27683, 3.27776]
    assert [r["batches"] for r in c.repetitions] == [110] * 3
    t = c.target
    assert (t.n, t.rule, t.passed) == (3, "margin", True)
    assert t.mean == pytest.approx(3.2772) and t.statistic == pytest.approx(0.0028 * 3 ** 0.5)
    assert c.earliest.step == 110 and c.earliest.checked == [0, 40, 80, 100, 105, 110]
    assert any("notes.txt was not imported" in w for w in c.warnings)
    assert c.to_dict()["target"]["n"] == 3 and c.to_dict()["qualifies"]

    early = check(import_record_dir(RECORD, out=tmp_path, step=105, force=True).run_dir)
    assert not early.qualifies and early.target.statistic == pytest.approx(0.001 * 3 ** 0.5)


def test_record_folder_without_a_step_warns_that_runs_end_at_different_steps(tmp_path):
    c = check(import_record_dir(RECORD, out=tmp_path).run_dir)
    assert [r["batches"] for r in c.repetitions] == [120, 115, 120]
    assert any("judged at different steps (115, 120)" in w for w in c.warnings)
    assert any("stopped at step 115 of the 120 scheduled" in w for w in c.warnings)
    assert c.earliest.step == 110  # what the submitter would declare


def test_files_as_record_match_the_folder_and_missing_step_is_a_problem(tmp_path):
    files = sorted(RECORD.glob("run_*.txt"))
    imp = import_logs(files, out=tmp_path, step=120, name="three")
    c = check(imp.run_dir)
    assert [r["status"] for r in c.repetitions] == ["ok", "missing-step", "ok"]
    assert not c.qualifies and c.target.n == 2
    assert "repetition 2 (run_b.txt, trial 1) has no result at the declared step: no validation at the " \
           "declared step 120 (log ends at step 115 of 120)" in c.problems


def test_loss_field_judges_another_validation_field(tmp_path):
    imp = import_log(LOGS / "optimization_3trials.txt", out=tmp_path, step=3325, loss_field="val_ema_loss")
    m = manifest(imp.run_dir)
    assert m["loss_field"] == "val_ema_loss"
    val = events(imp.run_dir, 2).of("val")[-1]
    assert (val["step"], val["loss"], val["val_loss"]) == (3325, 3.28313, 3.27632)
    c = check(imp.run_dir)
    assert [r["final_loss"] for r in c.repetitions] == [3.28056, 3.28313, 3.28242]
    assert not c.target.passed  # the EMA weights are worse here: the mean is above the target
    with pytest.raises(SpeedrunError, match="no validation line has a val_ema_loss field"):
        import_log(LOGS / "dec_2024-12.txt", out=tmp_path, loss_field="val_ema_loss")
    with pytest.raises(SpeedrunError, match="--loss-field 'val loss'"):
        import_log(LOGS / "dec_2024-12.txt", out=tmp_path, loss_field="val loss")


def test_group_errors_are_one_line_and_leave_nothing(tmp_path):
    bad = tmp_path / "in" / "bad.txt"
    bad.parent.mkdir()
    bad.write_text("nothing here\n")
    with pytest.raises(SpeedrunError, match="bad.txt: no step or validation lines"):
        import_logs([RECORD / "run_a.txt", bad], out=tmp_path / "out")
    with pytest.raises(SpeedrunError, match=r"in: no log files with step lines"):
        import_record_dir(bad.parent, out=tmp_path / "out")
    with pytest.raises(SpeedrunError, match="the logs disagree about their track"):
        import_logs([LOGS / "track_2_medium" / "medium_2025-07.txt", LOGS / "optimization_3trials.txt"],
                    out=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --- hardware -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, count, wanted, expected", [
    ("NVIDIA H100 80GB HBM3", 8, "8xH100", True),
    ("NVIDIA H100 80GB HBM3", 1, "8xH100", False),
    ("NVIDIA H200", 8, "8xH100", False),
    ("NVIDIA GH200 120GB", 8, "8xH200", False),
    ("NVIDIA H100 80GB HBM3", None, "8xH100", None),
    ("NVIDIA H100 80GB HBM3", 8, "cpu-2core", None),
])
def test_hardware_matching(name, count, wanted, expected):
    assert hardware_matches({"gpu_name": name, "gpu_count": count}, wanted) is expected


def one_gpu_log(tmp_path) -> Path:
    """The Dec 2024 fixture as if run on one H100: its nvidia-smi table keeps only GPU 0."""
    text = (LOGS / "dec_2024-12.txt").read_text().splitlines()
    keep = [line for line in text if not any(line.startswith(f"|   {i}  NVIDIA") for i in range(1, 8))]
    path = tmp_path / "one_gpu.txt"
    path.write_text("\n".join(keep) + "\n")
    return path


def test_one_gpu_log_is_a_problem_for_a_wallclock_track(tmp_path):
    run = import_log(one_gpu_log(tmp_path), track="gpt2-small", out=tmp_path / "o").run_dir
    m = manifest(run)
    assert m["hardware"] == "1xNVIDIA H100 80GB HBM3"
    assert m["hardware_fingerprint"] == {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 1}
    c = check(run)
    assert c.problems == ["repetition 1 ran on 1xNVIDIA H100 80GB HBM3; track gpt2-small expects 8xH100"]
    assert not c.qualifies


def test_hardware_mismatch_on_the_steps_track_is_a_warning(tmp_path):
    c = check(import_log(LOGS / "concatenated_seeds.txt", out=tmp_path).run_dir)
    assert c.problems == [] and c.target.passed and c.qualifies
    assert any("repetitions 1-3 ran on 4xNVIDIA H200; track optimization expects 8xH100 (steps do not depend"
               in w for w in c.warnings)


def test_unknown_hardware_and_wrong_track_are_reported(tmp_path):
    c = check(import_log(LOGS / "llmc_2024-06.txt", out=tmp_path).run_dir)
    assert any("does not say which hardware" in w for w in c.warnings)
    c = check(import_log(LOGS / "dec_2024-12.txt", out=tmp_path).run_dir, track="gpt2-medium")
    assert "the evidence was imported for track gpt2-small, not gpt2-medium" in c.problems


def test_check_imported_refuses_refereed_evidence_and_reports_damage(tmp_path):
    run = import_log(LOGS / "optimization_3trials.txt", out=tmp_path).run_dir
    with pytest.raises(SpeedrunError, match="not imported evidence"):
        check_imported(run, {**manifest(run), "self_reported": False}, load_track("optimization"))
    (run / "run-2.jsonl").unlink()
    (run / "run-3.jsonl").write_text("{broken\n")
    c = check(run)
    assert any("repetition 2 (optimization_3trials.txt, trial 2) left no events" in p for p in c.problems)
    assert any("repetition 3" in p and "not a JSON event" in p for p in c.problems)
    assert c.target.n == 1 and not c.qualifies


def test_truncated_imported_trial_is_a_problem(tmp_path):
    c = check(import_log(LOGS / "truncated_2025-03.txt", out=tmp_path, track="gpt2-small").run_dir)
    assert not c.qualifies and any("is truncated" in p for p in c.problems)
    assert c.target.n == 0 and c.target.reason == "no runs to judge"


# --- modded-nanogpt's own verdicts, from the figures of real records ---------------------------------------


def write_record(folder: Path, losses: list[float], step: int, total: int, device: str, world_size: int,
                 field: str = "val_loss", one_file: bool = False) -> None:
    """Logs in the track-3 shape whose runs have `losses` at the judged `step` (the rest made up)."""
    folder.mkdir(parents=True)
    header = ["train_steps = %d" % total, "=" * 100, "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8",
              f"Running on device_name={device} with world_size={world_size}", "=" * 100]
    runs = []
    for loss in losses:
        lines = []
        for s, value in ((0, 10.83), (step - 25, loss + 0.0025), (step, loss), (total, loss - 0.0006)):
            if s == step and s == total and lines and lines[-1].startswith(f"step:{s}/"):
                continue
            shown = f"val_loss:{value + 0.002:.5f} {field}:{value:.5f}" if field != "val_loss" \
                else f"val_loss:{value:.5f}"
            lines.append(f"step:{s}/{total} {shown} train_time:{s * 0.15:.3f}s step_avg:150.00ms")
        runs.append(lines)
    if one_file:
        (folder / "all_trials.txt").write_text("\n".join(header + sum(runs, [])) + "\n")
    else:
        for i, lines in enumerate(runs):
            (folder / f"seed{i:02d}.txt").write_text("\n".join(header + lines) + "\n")


# record -> (schedule's last step, hardware, world size, judged field, all trials in one file)
RECORD_SHAPES = {
    1: (3600, "NVIDIA H100 80GB HBM3", 8, "val_loss", False),
    5: (3325, "NVIDIA H100 80GB HBM3", 8, "val_loss", False),
    8: (3275, "NVIDIA H100 80GB HBM3", 8, "val_loss", False),  # "end 25 steps early"
    11: (3225, "NVIDIA H100 80GB HBM3", 8, "val_loss", False),
    12: (3350, "NVIDIA H100 80GB HBM3", 8, "val_loss", True),  # 20 trials in one file, judged at 3325
    13: (3210, "NVIDIA L40S", 4, "val_loss", False),
    14: (3175, "NVIDIA H100 80GB HBM3", 8, "val_loss", False),
    46: (2900, "NVIDIA A40", 2, "val_ema_loss", False),
}


@pytest.mark.parametrize("record", sorted(RECORD_SHAPES))
def test_check_imported_gives_modded_nanogpts_verdict_on_real_records(tmp_path, record):
    step, losses = TRACK3[record]
    total, device, world_size, field, one_file = RECORD_SHAPES[record]
    folder = tmp_path / "track_3_optimization" / f"record_{record}"
    write_record(folder, losses, step, total, device, world_size, field, one_file)
    imp = import_record_dir(folder, out=tmp_path / "runs", step=step, loss_field=field)
    c = check(imp.run_dir)
    n, mean, score = TRACK3_FIGURES[record]
    assert (c.target.n, c.judged_step) == (n, step)
    assert c.target.mean == pytest.approx(mean, abs=5e-7) and c.target.statistic == pytest.approx(score, abs=5e-7)
    assert c.qualifies == c.target.passed == (record not in (1,)) and c.problems == []
    assert [r["final_loss"] for r in c.repetitions] == losses
    assert manifest(imp.run_dir)["hardware"] == f"{world_size}x{device}"
    off = any("expects 8xH100" in w for w in c.warnings)
    assert off == (world_size != 8)


def test_check_imported_applies_the_ttest_to_a_track1_record(tmp_path):
    from test_stats import BOS_ALIGN_2025_07_12

    folder = tmp_path / "track_1_short" / "2025-07-12_fixture"
    folder.mkdir(parents=True)
    table = "\n".join(f"|   {i}  NVIDIA H100 80GB HBM3          On  |   00000000:{i}9:00.0 Off |       0 |"
                      for i in range(8))
    for i, loss in enumerate(BOS_ALIGN_2025_07_12):
        (folder / f"{i:02d}.txt").write_text(
            f"import torch\n{'=' * 100}\nRunning PyTorch 2.7.0 compiled for CUDA 12.6\n{table}\n{'=' * 100}\n"
            f"step:0/1750 val_loss:10.8258 train_time:0ms step_avg:nanms\n"
            f"step:1750/1750 val_loss:{loss:.4f} train_time:{173300 + i}ms step_avg:99.03ms\n")
    c = check(import_record_dir(folder, out=tmp_path / "runs").run_dir)
    assert c.target.rule == "ttest" and c.target.n == 21 and c.qualifies
    assert c.target.p_value == pytest.approx(0.002358, rel=1e-3) and c.earliest is None
    assert c.repetitions[0]["timed_s"] == 173.3


# --- command line for records -------------------------------------------------------------------------------


def test_cli_imports_a_record_folder_and_prints_the_rule(tmp_path, capsys):
    rc = cli.main(["import-log", str(RECORD), "--step", "110", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "(target - mean) * sqrt(n) = 0.00485 >= 0.004 (n = 3)" in out and "at step 110" in out
    assert "warning: notes.txt was not imported: no step or validation lines" in out and "run_b.txt" in out
    assert [p.name for p in tmp_path.iterdir()] == ["2026-01-01_three_seeds"]


def test_cli_as_record_and_its_errors(tmp_path, capsys):
    files = [str(p) for p in sorted(RECORD.glob("run_*.txt"))]
    rc = cli.main(["import-log", *files, "--as-record", "--out", str(tmp_path), "--step", "105"])
    out = capsys.readouterr().out
    assert rc == 0 and "0.00173 < 0.004" in out and "the rule already holds at step 110" not in out
    assert (tmp_path / "2026-01-01_three_seeds" / "run-3.jsonl").exists()
    assert cli.main(["import-log", str(RECORD), "--as-record", "--out", str(tmp_path)]) == 1
    assert "a folder is already one record" in capsys.readouterr().err
    assert cli.main(["import-log", *files, "--name", "x", "--out", str(tmp_path)]) == 1
    assert "--name names one run directory" in capsys.readouterr().err
