"""The wandb sink: a real offline wandb run read back from its files, and every no-op path."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from speedrun.wandb_log import WandbSink

MANIFEST = {"harness_version": "0.1.0", "track": {"name": "tiny", "config_sha256": "ab" * 32}, "seeds": [1]}


def read_offline_records(run_dir: Path) -> list:
    """Decode wandb's offline `run-*.wandb` file (LevelDB-style log of protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def items(entries) -> dict:
    return {"/".join(e.nested_key) or e.key: json.loads(e.value_json) for e in entries}


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return monkeypatch


def test_offline_run_logs_events_and_manifest(tmp_path, wandb_env):
    wandb_env.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sink = WandbSink.open("speedrun-test", MANIFEST, 2, run_dir, name=None)
    assert sink.run is not None
    events = [
        {"event": "init", "track": "tiny"},
        {"event": "val", "step": 0, "timed_s": 0.0, "loss": 6.2, "tokens": 0, "seconds": 0.5},
        {"event": "train", "step": 1, "timed_s": 0.4, "tokens": 4096, "loss": 6.1},
        {"event": "train", "step": 2, "timed_s": 0.8, "tokens": 8192},
        {"event": "warning", "message": "slow step"},
        {"event": "val", "step": 2, "timed_s": 0.8, "loss": 5.5, "tokens": 8192, "seconds": 0.5},
        {"event": "probe", "name": "causality", "passed": True, "detail": ""},
        {"event": "finish", "step": 2, "timed_s": 0.8, "tokens": 8192},
    ]
    for event in events:
        sink.log(event)
    sink.finish("ok")
    sink.finish("ok")  # a second call is harmless
    assert sink.run is None

    records = read_offline_records(run_dir)
    rows = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [(r["step"], r["val/loss"], r["timed_s"], r["tokens"]) for r in rows if "val/loss" in r] == \
        [(0, 6.2, 0.0, 0), (2, 5.5, 0.8, 8192)]
    assert [(r["step"], r.get("train/loss"), r["timed_s"]) for r in rows if "val/loss" not in r] == \
        [(1, 6.1, 0.4), (2, None, 0.8)]

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(items(r.summary.update))
    assert summary["status"] == "ok" and summary["final/timed_s"] == 0.8 and summary["final/step"] == 2
    assert summary["probe/causality"] is True and summary["warnings"] == 1

    run_records = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = items(run_records[0].config.update)
    assert config["track"] == MANIFEST["track"] and config["repetition"] == 2 and config["seeds"] == [1]
    assert run_records[0].display_name == "run-2" and run_records[0].project == "speedrun-test"


def test_disabled_mode_is_a_noop_with_one_notice(tmp_path, wandb_env, capsys):
    wandb_env.setenv("WANDB_MODE", "disabled")
    sink = WandbSink.open("p", MANIFEST, 1, tmp_path, None)
    sink.log({"event": "val", "step": 0, "loss": 1.0})
    sink.finish("ok")
    out = capsys.readouterr().out
    assert sink.run is None and out.count("\n") == 1 and "WANDB_MODE=disabled" in out
    assert not (tmp_path / "wandb").exists()


def test_missing_wandb_is_a_noop_with_one_notice(tmp_path, wandb_env, capsys):
    wandb_env.delenv("WANDB_MODE", raising=False)
    wandb_env.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    sink = WandbSink.open("p", MANIFEST, 1, tmp_path, None)
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
    sink = WandbSink.open("p", MANIFEST, 1, tmp_path, None)
    sink.log({"event": "val", "step": 0, "loss": 1.0})
    sink.finish("ok")
    out = capsys.readouterr().out
    assert sink.run is None and "could not start (UsageError: No API key configured" in out
