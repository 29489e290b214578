"""The shard format, the canonical train/val streams and `track_files`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch

from speedrun import data, tracks
from speedrun.errors import SpeedrunError

BOS = 50256


def shard(path: Path, tokens) -> Path:
    data.write_shard(path, np.asarray(tokens, dtype=np.uint16))
    return path


def raw_shard(path: Path, header: list[int], tokens: np.ndarray) -> Path:
    h = np.zeros(256, dtype="<i4")
    h[:len(header)] = header
    path.write_bytes(h.tobytes() + tokens.astype("<u2").tobytes())
    return path


# --- format -------------------------------------------------------------------------------------------------


def test_roundtrip_is_a_memmap_with_exact_bytes(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) * 37
    path = shard(tmp_path / "a.bin", tokens)
    got = data.read_shard(path)
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    np.testing.assert_array_equal(got, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2000
    assert np.frombuffer(raw[:12], "<i4").tolist() == [20240520, 1, 1000]
    info = data.shard_info(path)
    assert info.tokens == 1000 and info.sha256 == hashlib.sha256(raw).hexdigest()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("header, tokens, problem", [
    ([123, 1, 10], 10, "magic"),
    ([20240520, 2, 10], 10, "version"),
    ([20240520, 1, 10], 9, "truncated"),
    ([20240520, 1, 10], 11, "trailing"),
    ([20240520, 1, -1], 0, "negative"),
])
def test_bad_shards_name_the_file(tmp_path, header, tokens, problem):
    path = raw_shard(tmp_path / "bad.bin", header, np.zeros(tokens, dtype=np.uint16))
    for reader in (data.read_shard, data.shard_info, data.shard_tokens):
        with pytest.raises(SpeedrunError, match=problem) as err:
            reader(path)
        assert str(path) in str(err.value)


def test_short_header_and_missing_file(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(SpeedrunError, match="truncated"):
        data.read_shard(path)
    with pytest.raises(SpeedrunError, match="missing"):
        data.read_shard(tmp_path / "nope.bin")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = shard(tmp_path / "a.bin", [1, 2, 3])
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        data.write_shard(path, [4, 5, 6, 7])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_write_rejects_tokens_outside_uint16(tmp_path):
    with pytest.raises(SpeedrunError, match="65535"):
        data.write_shard(tmp_path / "a.bin", np.array([1, 70000]))
    with pytest.raises(SpeedrunError, match="65535"):
        data.write_shard(tmp_path / "a.bin", np.array([-1, 2]))
    assert not list(tmp_path.iterdir())


# --- train stream -------------------------------------------------------------------------------------------


def test_single_rank_walks_the_shard_in_order(tmp_path):
    tokens = np.arange(100, dtype=np.uint16)
    s = data.TrainStream([shard(tmp_path / "t.bin", tokens)], batch_tokens=16, seq_len=4)
    for step in range(6):
        x, y = next(s)
        assert x.dtype == torch.int64 and x.shape == (4, 4)
        assert x.flatten().tolist() == list(range(16 * step, 16 * step + 16))
        assert y.flatten().tolist() == list(range(16 * step + 1, 16 * step + 17))
        assert s.step == step + 1 and s.tokens_served == 16 * (step + 1)
    assert x.data_ptr() != y.data_ptr()
    y[0, 0] = -5
    assert x.flatten()[1] == 16 * 5 + 1  # inputs do not share memory with targets


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_take_contiguous_slices_of_the_global_window(tmp_path, world):
    tokens = np.arange(5000, dtype=np.uint16)
    path = shard(tmp_path / "t.bin", tokens)
    streams = [data.TrainStream([path], 64, 8, rank=r, world_size=world) for r in range(world)]
    for step in range(5):
        batches = [next(s) for s in streams]
        joined = torch.cat([x.flatten() for x, _ in batches]).tolist()
        assert joined == list(range(64 * step, 64 * step + 64))
        local = 64 // world
        for r, (x, y) in enumerate(batches):
            assert x.shape == (local // 8, 8)
            assert y.flatten().tolist() == list(range(64 * step + r * local + 1, 64 * step + (r + 1) * local + 1))


def test_moves_to_next_shard_then_fails_clearly(tmp_path):
    a = shard(tmp_path / "a.bin", np.arange(40))          # room for 2 steps of 16 (+1), remainder too short
    b = shard(tmp_path / "b.bin", np.arange(1000, 1020))  # one step
    s = data.TrainStream([a, b], 16, 4)
    firsts = [int(next(s)[0][0, 0]) for _ in range(3)]
    assert firsts == [0, 16, 1000]
    with pytest.raises(SpeedrunError, match="exhausted after 3 steps"):
        next(s)


def test_state_dict_resumes_and_reset_rewinds(tmp_path):
    path = shard(tmp_path / "a.bin", np.arange(3000) % 500)
    s = data.TrainStream([path], 32, 8)
    first = [next(s)[0].clone() for _ in range(3)]
    state = s.state_dict()
    expected = [next(s)[0].clone() for _ in range(4)]
    other = data.TrainStream([path], 32, 8)
    other.load_state_dict(state)
    assert other.step == 3 and other.tokens_served == 96
    assert all(torch.equal(next(other)[0], e) for e in expected)
    s.reset()
    assert s.step == 0 and torch.equal(next(s)[0], first[0])
    with pytest.raises(SpeedrunError, match="different configuration"):
        data.TrainStream([path], 64, 8).load_state_dict(state)


def docs_stream(rng, n_docs, max_len):
    out = []
    for _ in range(n_docs):
        out.append(BOS)
        out.extend(rng.integers(0, 1000, rng.integers(1, max_len)).tolist())
    return np.array(out, dtype=np.uint16)


@pytest.mark.parametrize("world", [1, 3])
def test_align_to_bos_starts_every_slice_at_a_document(tmp_path, world):
    tokens = docs_stream(np.random.default_rng(0), 400, 60)
    path = shard(tmp_path / "d.bin", tokens)
    streams = [data.TrainStream([path], 24 * world, 8, rank=r, world_size=world, align_to_bos=True)
               for r in range(world)]
    starts = []
    for _ in range(10):
        for s in streams:
            x, y = next(s)
            assert x[0, 0] == BOS
            flat = np.concatenate([x.flatten().numpy(), y.flatten().numpy()[-1:]])
            # the slice is a contiguous run of the shard starting at a BOS
            hits = [i for i in np.flatnonzero(tokens == BOS) if np.array_equal(tokens[i:i + 25], flat)]
            assert hits
            starts.append(hits[0])
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # in order, no slice reused


def test_max_doc_len_caps_each_document(tmp_path):
    tokens = docs_stream(np.random.default_rng(1), 300, 80)
    path = shard(tmp_path / "d.bin", tokens)
    s = data.TrainStream([path], 64, 16, max_doc_len=10)
    assert s.align_to_bos
    for _ in range(8):
        x, _ = next(s)
        flat = x.flatten().numpy()
        assert flat[0] == BOS
        bounds = np.append(np.flatnonzero(flat == BOS), len(flat))
        assert (np.diff(bounds) <= 10).all()
        for b in np.flatnonzero(flat == BOS):  # every piece is the beginning of a real document
            piece = flat[b:b + 3]
            assert any(np.array_equal(tokens[i:i + len(piece)], piece) for i in np.flatnonzero(tokens == BOS))


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_tokens=10, seq_len=4), "multiple of seq_len"),
    (dict(batch_tokens=16, seq_len=4, world_size=3), "divisible by world_size"),
    (dict(batch_tokens=16, seq_len=4, rank=2, world_size=2), "rank 2"),
    (dict(batch_tokens=0, seq_len=4), "positive"),
])
def test_train_stream_rejects_bad_shapes(tmp_path, kwargs, match):
    path = shard(tmp_path / "a.bin", np.arange(100))
    with pytest.raises(SpeedrunError, match=match):
        data.TrainStream([path], **kwargs)


# --- val stream ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 4])
def test_val_stream_covers_exactly_val_tokens(tmp_path, world):
    tokens = np.arange(700, dtype=np.uint16)
    path = shard(tmp_path / "v.bin", tokens)
    streams = [data.ValStream([path], 512, 64 * world, 16, rank=r, world_size=world) for r in range(world)]
    assert all(len(v) == 512 // (64 * world) and v.tokens_per_rank == 512 // world for v in streams)
    inputs, targets = [], []
    for v in streams:
        for x, y in v:
            assert x.shape == (4, 16) and x.dtype == torch.int64
            inputs += x.flatten().tolist()
            targets += y.flatten().tolist()
    assert sorted(inputs) == list(range(512))
    assert sorted(targets) == list(range(1, 513))
    assert [x.tolist() for x, _ in streams[0]] == [x.tolist() for x, _ in streams[0]]  # re-iterable


def test_val_stream_spans_several_files(tmp_path):
    a = shard(tmp_path / "a.bin", np.arange(100))
    b = shard(tmp_path / "b.bin", np.arange(100, 300))
    v = data.ValStream([a, b], 256, 32, 8)
    got = torch.cat([x.flatten() for x, _ in v]).tolist()
    assert got == list(range(256))
    assert torch.cat([y.flatten() for _, y in v]).tolist() == list(range(1, 257))


def test_val_stream_refuses_shapes_that_do_not_tile(tmp_path):
    path = shard(tmp_path / "v.bin", np.arange(1000))
    with pytest.raises(SpeedrunError, match="does not tile val_tokens 512"):
        data.ValStream([path], 512, 3 * 16, 16, world_size=3)
    with pytest.raises(SpeedrunError, match="need 1001"):
        data.ValStream([path], 1000, 100, 10)


# --- track files --------------------------------------------------------------------------------------------


def hub_track(tmp_path: Path, pins: dict[str, str] | None = None) -> tracks.Track:
    return synthetic.hub_track(tmp_path, pins, val_tokens=64)


def test_hub_track_files_missing_then_present(tmp_path):
    track = hub_track(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(SpeedrunError, match=r"missing val file .*speedrun data fetch hubby"):
        data.track_files(track, root)
    folder = root / "fw"
    shard(folder / "fw_val_000000.bin", np.arange(100))
    with pytest.raises(SpeedrunError, match="missing train shards"):
        data.track_files(track, root)
    shard(folder / "fw_train_000001.bin", np.arange(100))
    shard(folder / "fw_train_000002.bin", np.arange(100))
    shard(folder / "fw_train_000003.bin", np.arange(10))
    (folder / "fw_train_000003.bin").write_bytes(b"junk")
    with pytest.raises(SpeedrunError, match="fw_train_000003.bin"):
        data.track_files(track, root)
    (folder / "fw_train_000003.bin").unlink()
    train, val = data.track_files(track, root)
    assert [p.name for p in train] == ["fw_train_000001.bin", "fw_train_000002.bin"]
    assert [p.name for p in val] == ["fw_val_000000.bin"]


def test_hub_track_files_checks_pins_only_when_asked(tmp_path):
    root = tmp_path / "data"
    shard(root / "fw" / "fw_val_000000.bin", np.arange(100))
    shard(root / "fw" / "fw_train_000001.bin", np.arange(100))
    track = hub_track(tmp_path, {"fw_val_000000.bin": "0" * 64})
    data.track_files(track, root)
    with pytest.raises(SpeedrunError, match="does not match the track's pin"):
        data.track_files(track, root, check_sha256=True)


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEEDRUN_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    monkeypatch.delenv("SPEEDRUN_DATA_DIR")
    assert data.data_dir() == Path(data.__file__).resolve().parent.parent / "data"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streams_on_cuda(tmp_path):
    path = shard(tmp_path / "t.bin", np.arange(5000))
    s = data.TrainStream([path], 64, 8, device="cuda")
    x, y = next(s)
    assert x.is_cuda and y.is_cuda and x.dtype == torch.int64
    assert x.flatten().tolist() == list(range(64)) and y.flatten().tolist() == list(range(1, 65))
    v = data.ValStream([path], 512, 64, 8, device="cuda")
    assert torch.cat([x.flatten() for x, _ in v]).cpu().tolist() == list(range(512))
