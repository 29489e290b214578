"""modded-nanogpt log import: every era of the format, trial splitting, truncation, --step, the evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speedrun import cli
from speedrun.errors import SpeedrunError
from speedrun.evidence import read_events, sha256_file
from speedrun.legacy import MAX_TRAIN_EVENTS, import_log, infer_track, parse_log, parse_step_line
from speedrun.tracks import load_track

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
    assert m["source_logs"] == [{"name": "dec_2024-12.txt", "sha256": sha256_file(src)}]
    assert sha256_file(run / "dec_2024-12.txt") == sha256_file(src)
    assert m["env"]["torch"] == "2.6.0.dev20241203+cu124" and m["env"]["device_count"] == 8
    assert set(m["env"]) == {"torch", "cuda", "triton", "python", "device_name", "device_count"}
    assert m["repetitions"] == [{"k": 1, "status": "ok", "exit_code": None, "wall_s": None, "notes": []}]
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


def test_verify_applies_the_track_statistics_to_imported_evidence(tmp_path, capsys):
    from speedrun import verify

    run_dir = import_log(LOGS / "optimization_3trials.txt", out=tmp_path).run_dir
    v = verify.verify_run_dir(run_dir)
    assert v["self_reported"] and v["problems"] == []
    assert v["target"]["rule"] == "margin" and v["target"]["n"] == 3
    assert v["metric"]["values"] == [3350, 3350, 3350]
    assert v["qualifies"]
    assert cli.main(["verify", str(run_dir)]) == 0
    assert "SELF-REPORTED" in capsys.readouterr().out

    truncated = import_log(LOGS / "truncated_2025-03.txt", out=tmp_path, track="gpt2-small").run_dir
    v = verify.verify_run_dir(truncated)
    assert not v["qualifies"] and any("truncated" in p for p in v["problems"])
