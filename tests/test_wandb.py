"""The wandb sink: a real offline wandb run read back from its files, and every no-op path."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import pytest

from speedrun.cli.console import notices
from speedrun.referee.wandb_log import WandbSink

MANIFEST = {"harness_version": "0.1.0", "track": {"name": "tiny", "config_sha256": "ab" * 32}, "seeds": [1]}


def read_offline_records(run_dir: Path) -> list:
    """Every protobuf `Record` of the offline run's `run-*.wandb` file, checksums verified.

    wandb 0.31 ships no Python reader for this file (the Go core writes it), so this follows the format
    wandb documents in its former `wandb/sdk/internal/datastore.py`: a 7-byte header (":W&B", magic 0xBEE1,
    version 0), then LevelDB-log chunks in 32 KiB blocks -- crc32(type byte + data) uint32, length uint16,
    type uint8 (1 full, 2 first, 3 middle, 4 last) -- whose payloads are `wandb_internal_pb2.Record`s.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1 and data[6] == 0
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at byte {pos}"
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def items(entries) -> dict:
    return {"/".join(e.nested_key) or e.key: json.loads(e.value_json) for e in entries}


def history(records) -> list[dict]:
    return [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


def summary(records) -> dict:
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            out.update(items(r.summary.update))
    return out


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return monkeypatch


def referee_events(steps: int = 30, every: int = 10, batch_tokens: int = 4096, val_at=(15, 30)) -> list[dict]:
    """A repetition as the v2 referee writes it: a `log` event per step (the script's run.log), a `train`
    event every `every` batches (tokens served so far, timed seconds), validations with the val tokens they
    scored and their paused seconds, a warning, a problem and the finish."""
    events = [{"event": "init", "rank": 0, "api_version": 2, "device": "cpu", "device_name": "cpu",
               "seed": 0, "world_size": 1},
              {"event": "loader", "from_step": 0, "batch_tokens": batch_tokens, "seq_len": 128, "accum_steps": 1,
               "layout": "rows", "align_to_bos": False, "max_doc_len": None},
              {"event": "warmup", "seconds": 1.25, "digest_before": "a" * 64, "digest_after": "a" * 64,
               "restored": True, "micro_batches": 4},
              {"event": "start", "t": 2.0, "start_loss": 6.3, "no_data_level": 6.2, "ranks": []}]
    timed = 0.0
    for step in range(1, steps + 1):
        timed += 0.25 if step <= 10 else 0.2  # a faster second phase: the per-interval rate must show it
        events.append({"event": "log", "step": step, "t": 2 + timed,
                       "scalars": {"train_loss": 6.0 - 0.05 * step, "lr": 0.01, "phase": "main", "ok": True}})
        if step % every == 0:
            events.append({"event": "train", "batches": step, "timed_s": round(timed, 4),
                           "tokens": step * batch_tokens})
        if step in val_at:
            events.append({"event": "val", "step": step, "batches": step, "timed_s": round(timed, 4),
                           "loss": 5.0 - 0.01 * step, "tokens": 65536, "seconds": 0.5, "ranks": []})
    events += [{"event": "log", "step": None, "scalars": {"train_loss": 4.4}},  # no step: the last one
               {"event": "warning", "message": "slow step"},
               {"event": "problem", "message": "rank 0: something the verdict will report"},
               {"event": "finish", "t": 2 + timed, "batches": steps, "timed_s": round(timed, 4),
                "tokens": steps * batch_tokens, "ranks": []},
               {"event": "seal", "lines": 0, "sha256": "0" * 64}]
    return events


def test_offline_run_history_read_back(tmp_path, wandb_env):
    wandb_env.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "20260101-000000_train"
    run_dir.mkdir()
    sink = WandbSink.open("speedrun-test", MANIFEST, 2, run_dir, name="muon-try", entity="my-team")
    assert sink.run is not None
    events = referee_events()
    for event in events:
        sink.log(event)
    sink.finish("ok")
    sink.finish("ok")  # a second call is harmless
    assert sink.run is None

    records = read_offline_records(run_dir)  # complete as soon as finish() returns: the exit record is there
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]
    rows = history(records)
    logs = [e for e in events if e["event"] == "log"]
    assert [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r] == \
        [(e["step"] if e["step"] is not None else 30, e["scalars"]["train_loss"]) for e in logs]
    assert [r["train/lr"] for r in rows if "train/lr" in r] == [0.01] * 30
    assert not any("train/phase" in r or "train/ok" in r for r in rows)  # not numbers: not plotted

    trains = [r for r in rows if "train/tokens" in r]
    assert [(r["step"], r["timed_s"], r["train/tokens"]) for r in trains] == [(10, 2.5, 40960), (20, 4.5, 81920),
                                                                            (30, 6.5, 122880)]
    # tokens/s over each interval (the second phase is faster), and since the clock started
    assert [r["train/tokens_per_s"] for r in trains] == pytest.approx([40960 / 2.5, 40960 / 2.0, 40960 / 2.0])
    assert [r["train/avg_tokens_per_s"] for r in trains] == pytest.approx([40960 / 2.5, 81920 / 4.5, 122880 / 6.5])

    vals = [r for r in rows if "val/loss" in r]
    assert [(r["step"], r["val/loss"], r["timed_s"], r["val/seconds"]) for r in vals] == \
        [(15, pytest.approx(4.85), 3.5, 0.5), (30, pytest.approx(4.7), 6.5, 0.5)]
    assert [r["val/tokens_per_s"] for r in vals] == [65536 / 0.5] * 2

    final = summary(records)
    assert final["status"] == "ok" and final["final/timed_s"] == 6.5 and final["final/batches"] == 30
    assert final["final/avg_tokens_per_s"] == pytest.approx(122880 / 6.5)
    assert final["val/loss"] == pytest.approx(4.7) and final["start/start_loss"] == 6.3
    assert final["warnings"] == 1 and final["problems"] == 1 and final["warmup/seconds"] == 1.25

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    config = items(run.config.update)
    assert config["track"] == MANIFEST["track"] and config["repetition"] == 2 and config["seeds"] == [1]
    assert (run.display_name, run.project, run.entity, run.run_group) == \
        ("muon-try", "speedrun-test", "my-team", run_dir.name)


def test_api1_events_and_default_name(tmp_path, wandb_env):
    """Evidence written before API 2 (and imported logs): train events carry `step` and maybe `loss`."""
    wandb_env.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sink = WandbSink.open("speedrun-test", MANIFEST, 3, run_dir)
    for event in ({"event": "val", "step": 0, "timed_s": 0.0, "loss": 6.2, "tokens": 8192, "seconds": 0.5},
                  {"event": "train", "step": 1, "timed_s": 0.4, "tokens": 4096, "loss": 6.1},
                  {"event": "train", "step": 2, "timed_s": None, "tokens": None},
                  {"event": "probe", "name": "causality", "passed": True, "detail": ""},
                  {"event": "finish", "step": 2, "timed_s": 0.8, "tokens": 8192}):
        sink.log(event)
    sink.finish("failed")
    records = read_offline_records(run_dir)
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]
    rows = history(records)
    assert [(r["step"], r["val/loss"], r["timed_s"]) for r in rows if "val/loss" in r] == [(0, 6.2, 0.0)]
    assert [(r["step"], r["train/loss"], r["train/tokens_per_s"]) for r in rows if "train/loss" in r] == \
        [(1, 6.1, 4096 / 0.4)]
    assert not [r for r in rows if r.get("step") == 2]  # nothing to plot in the second train event
    final = summary(records)
    assert final["status"] == "failed" and final["probe/causality"] is True and final["final/step"] == 2
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    assert run.display_name == "run-3"


def test_disabled_mode_is_a_noop_with_one_notice(tmp_path, wandb_env, capsys):
    wandb_env.setenv("WANDB_MODE", "disabled")
    sink = WandbSink.open("p", MANIFEST, 1, tmp_path, None, report=notices())  # the notices `speedrun run` shows
    sink.log({"event": "val", "step": 0, "loss": 1.0})
    sink.finish("ok")
    out = capsys.readouterr().out
    assert sink.run is None and out.count("\n") == 1 and "WANDB_MODE=disabled" in out
    assert not (tmp_path / "wandb").exists()


def test_missing_wandb_is_a_noop_with_one_notice(tmp_path, wandb_env, capsys):
    wandb_env.delenv("WANDB_MODE", raising=False)
    wandb_env.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    sink = WandbSink.open("p", MANIFEST, 1, tmp_path, None, report=notices())  # the notices `speedrun run` shows
    sink.log({"event": "train", "step": 1, "loss": 1.0})
    sink.finish("failed")
    out = capsys.readouterr().out
    assert sink.run is None and "not installed" in out and out.count("\n") == 1


def test_wandb_that_cannot_start_never_stops_the_run(tmp_path, wandb_env, capsys):
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    wandb_env.delenv("WANDB_MODE", raising=False)
    wandb_env.setattr(wandb, "init", refuse)
    sink = WandbSink.open("p", MANIFEST, 1, tmp_path, None, report=notices())  # the notices `speedrun run` shows
    sink.log({"event": "val", "step": 0, "loss": 1.0})
    sink.finish("ok")
    out = capsys.readouterr().out
    assert sink.run is None and "could not start (UsageError: No API key configured" in out
