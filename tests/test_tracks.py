"""`speedrun tracks`, `speedrun tracks show NAME` and `speedrun data verify` through the CLI."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout

import numpy as np

from speedrun import cli
from speedrun.data import streams
from speedrun import tracks


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_list_shows_every_track():
    rc, out, err = run_cli("tracks")
    assert rc == 0, err
    for track in tracks.all_tracks():
        line = next(l for l in out.splitlines() if f" {track.name} " in l)
        assert track.metric in line and f"{track.val_tokens:,}" in line and track.hardware in line
    assert "kjj0/fineweb10B-gpt2" in out and "generator tiny-v1" in out and "3.28" in out
    assert max(len(line) for line in out.splitlines()) <= 100 and str(tracks.tracks_dir()) in out


def test_show_hub_track_in_full():
    track = tracks.load_track("gpt2-small")
    rc, out, err = run_cli("tracks", "show", "gpt2-small")
    assert rc == 0, err
    for text in (track.config_sha256, "10,485,760", "50256", "ttest", "0.01", "fineweb_val_000000.bin",
                 "fineweb_train_000103.bin (103 shards)", "8xH100"):
        assert text in out, text


def test_show_tiny_reports_entropy_or_how_to_get_it(tmp_path):
    track = tracks.load_track("tiny")
    rc, out, err = run_cli("tracks", "show", "tiny", "--data-dir", str(tmp_path))
    assert rc == 0, err
    assert track.config_sha256 in out and "tiny_train_000004.bin" in out
    assert "speedrun data fetch tiny" in out and "entropy bound (val)" not in out
    # the track's own figures (the start check's no-data level and the floor) need no corpus
    assert f"{track.unigram_entropy:.4f} nats/token" in out and f"{track.entropy_floor:.4f} nats/token" in out
    assert 3.0 < track.entropy_floor < track.target_val_loss < track.unigram_entropy
    # a sidecar as the generator writes it (generating the full corpus here would be slow)
    folder = tmp_path / "tiny"
    folder.mkdir()
    meta = {"generator": "tiny-v1", "seed": track.data.seed, "vocab_size": 512, "bos_token": 511,
            "train_tokens": track.data.train_tokens, "shard_tokens": track.data.shard_tokens,
            "val_split_tokens": track.data.val_split_tokens, "entropy_nats": {"train": 3.25, "val": 3.125},
            "unigram_entropy_nats": 5.5, "mean_doc_tokens": 250.0, "sha256": {}}
    from speedrun.evidence.rundir import write_json_atomic
    from speedrun.data.corpus import META_NAME

    write_json_atomic(folder / META_NAME, meta)
    rc, out, err = run_cli("tracks", "show", "tiny", "--data-dir", str(tmp_path))
    assert rc == 0 and "3.1250 nats/token" in out and "5.5000" in out


def test_unknown_and_malformed_tracks_fail_in_one_line(tmp_path, monkeypatch):
    rc, out, err = run_cli("tracks", "show", "no-such-track")
    assert rc == 1 and err.count("\n") == 1 and "unknown track 'no-such-track'" in err
    shutil.copy(tracks.tracks_dir() / "tiny.toml", tmp_path / "tiny.toml")
    (tmp_path / "broken.toml").write_text('name = "broken"\nmetric = "fastest"\n')
    monkeypatch.setenv("SPEEDRUN_TRACKS_DIR", str(tmp_path))
    for args in (("tracks",), ("tracks", "show", "broken")):
        rc, out, err = run_cli(*args)
        assert rc == 1 and err.count("\n") == 1
        assert "broken.toml" in err and "metric" in err
    rc, out, err = run_cli("tracks", "show", "tiny")
    assert rc == 0


def test_data_verify_checks_every_file_then_fails(tmp_path):
    good = tmp_path / "shards"
    good.mkdir()
    streams.write_shard(good / "a.bin", np.arange(100))
    streams.write_shard(good / "b.bin", np.arange(50))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 2048)
    rc, out, err = run_cli("data", "verify", str(good))
    assert rc == 0, err
    assert streams.shard_info(good / "a.bin").sha256 in out and "150" in out
    rc, out, err = run_cli("data", "verify", str(bad), str(good / "a.bin"))
    assert rc == 1
    assert f"{bad}: not a token shard" in err
    assert streams.shard_info(good / "a.bin").sha256 in out  # the good file was still checked and listed
    rc, out, err = run_cli("data", "verify", str(tmp_path / "empty"))
    assert rc == 1
    (tmp_path / "empty").mkdir()
    rc, out, err = run_cli("data", "verify", str(tmp_path / "empty"))
    assert rc == 1 and "no .bin shards" in err
