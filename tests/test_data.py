"""The shard format, the canonical train/val streams and `track_files`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch

from speedrun.data import streams
from speedrun import tracks
from speedrun import paths
from speedrun.errors import SpeedrunError

BOS = 50256


def shard(path: Path, tokens) -> Path:
    streams.write_shard(path, np.asarray(tokens, dtype=np.uint16))
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
    got = streams.read_shard(path)
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    np.testing.assert_array_equal(got, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2000
    assert np.frombuffer(raw[:12], "<i4").tolist() == [20240520, 1, 1000]
    info = streams.shard_info(path)
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
    for reader in (streams.read_shard, streams.shard_info, streams.shard_tokens):
        with pytest.raises(SpeedrunError, match=problem) as err:
            reader(path)
        assert str(path) in str(err.value)


def test_short_header_and_missing_file(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(SpeedrunError, match="truncated"):
        streams.read_shard(path)
    with pytest.raises(SpeedrunError, match="missing"):
        streams.read_shard(tmp_path / "nope.bin")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = shard(tmp_path / "a.bin", [1, 2, 3])
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        streams.write_shard(path, [4, 5, 6, 7])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_write_rejects_tokens_outside_uint16(tmp_path):
    with pytest.raises(SpeedrunError, match="65535"):
        streams.write_shard(tmp_path / "a.bin", np.array([1, 70000]))
    with pytest.raises(SpeedrunError, match="65535"):
        streams.write_shard(tmp_path / "a.bin", np.array([-1, 2]))
    assert not list(tmp_path.iterdir())


# --- helpers for the streams --------------------------------------------------------------------------------


def docs_stream(rng, n_docs, max_len, vocab=1000):
    """Documents of random length in [2, max_len], each starting with BOS (no BOS inside a document)."""
    out = []
    for _ in range(n_docs):
        out.append(BOS)
        out.extend(rng.integers(0, vocab, rng.integers(1, max_len)).tolist())
    return np.array(out, dtype=np.uint16)


def ref_step(t: list[int], cur: int, batch_tokens: int, seq_len: int, align: bool, cap: int | None):
    """Reference walk of one step in one shard, by plain loops: (pieces, new cursor), or None if it does not fit."""
    n, need, pieces = len(t), seq_len + 1, []
    for _ in range(batch_tokens // seq_len):
        if not align and cap is None:
            if cur + need > n:
                return None
            pieces.append(t[cur:cur + need])
            cur += seq_len
            continue
        s = cur
        while s < n and t[s] != BOS:
            s += 1
        if cap is None:
            if s + need > n:
                return None
            pieces.append(t[s:s + need])
            cur = s + seq_len
            continue
        piece, last = [], None
        while len(piece) < need:  # s is at a BOS: take this document's first `cap` tokens
            if s >= n:
                return None
            j = s
            while j < n and (j == s or t[j] != BOS) and j - s < cap and len(piece) < need:
                piece.append(t[j])
                last = j
                j += 1
            s = j
            while s < n and t[s] != BOS:  # skip the rest of the document
                s += 1
        pieces.append(piece)
        cur = last
    return pieces, cur


def ref_walk(shards: list[np.ndarray], schedule) -> list[list[list[int]]]:
    """The canonical order by reference: every step's pieces; a step that fits nowhere ends the walk."""
    lists = [s.tolist() for s in shards]
    shard, cur, out = 0, 0, []
    for batch_tokens, seq_len, align, cap in schedule:
        while shard < len(lists):
            got = ref_step(lists[shard], cur, batch_tokens, seq_len, align, cap)
            if got is not None:
                break
            shard, cur = shard + 1, 0
        else:
            return out
        pieces, cur = got
        out.append(pieces)
    return out


def ref_cu_seqlens(inputs, seq_len: int) -> list[int]:
    """Document starts by brute force: a document starts at 0, at each BOS and at each piece start."""
    inputs = list(inputs)
    return [j for j in range(len(inputs)) if j % seq_len == 0 or inputs[j] == BOS] + [len(inputs)]


def pieces_of_rows(x, y) -> list[list[int]]:
    return [xr + [yr[-1]] for xr, yr in zip(x.tolist(), y.tolist())]


def serve_all(step, world: int, accum: int, layout: str = "rows"):
    """Every micro-batch of a step in piece order (micro-major, then rank), as served."""
    return [streams.serve(step, r, world, accum, m, layout) for m in range(accum) for r in range(world)]


def step_options(align, cap):
    return {"align_to_bos": align, "max_doc_len": cap}


SCHEDULE = [  # (batch_tokens, seq_len, align_to_bos, max_doc_len): shapes and modes change between steps
    (64, 8, False, None), (128, 16, False, None), (64, 8, True, None), (128, 8, True, None),
    (64, 16, False, 5), (128, 16, True, 12), (64, 8, False, None), (256, 32, True, None),
    (128, 16, False, 3), (64, 8, True, None), (128, 16, False, None), (128, 8, False, 40),
]


@pytest.fixture
def doc_shards(tmp_path):
    rng = np.random.default_rng(7)
    tokens = [docs_stream(rng, 60, 30), docs_stream(rng, 150, 25), docs_stream(rng, 300, 20)]
    return [shard(tmp_path / f"d{i}.bin", t) for i, t in enumerate(tokens)], tokens


# --- train stream -------------------------------------------------------------------------------------------


def test_contiguous_steps_walk_the_shard_in_order(tmp_path):
    s = streams.TrainStream([shard(tmp_path / "t.bin", np.arange(100))], BOS)
    for n in range(6):
        step = s.next_step(16, 4)
        assert (step.index, step.num_pieces, step.start, step.end) == (n, 4, 16 * n, 16 * n + 16)
        assert [step.piece(i).tolist() for i in range(4)] == [list(range(16 * n + 4 * i, 16 * n + 4 * i + 5))
                                                               for i in range(4)]
        x, y = streams.serve(step)
        assert x.dtype == torch.int64 and x.shape == (4, 4) and y.shape == (4, 4)
        assert x.flatten().tolist() == list(range(16 * n, 16 * n + 16))
        assert y.flatten().tolist() == list(range(16 * n + 1, 16 * n + 17))
        assert s.steps == n + 1 and s.tokens_served == 16 * (n + 1)
    y[0, 0] = -5
    assert x[0, 1] == 16 * 5 + 1 and x.data_ptr() != y.data_ptr()  # inputs do not share memory with targets


@pytest.mark.parametrize("world, accum", [(1, 1), (2, 1), (4, 1), (1, 4), (2, 2), (4, 2)])
def test_contiguous_rows_reproduce_the_api1_order(tmp_path, world, accum):
    # API 1: a TrainStream of batch_tokens // accum per next(), rank r taking [r*local, (r+1)*local + 1) of
    # each micro-step's window; micro-batch m of step s was API 1's micro-step s*accum + m
    batch, seq_len = 256, 8
    s = streams.TrainStream([shard(tmp_path / "t.bin", np.arange(5000))], BOS)
    micro_tokens, local = batch // accum, batch // accum // world
    for n in range(8):
        step = s.next_step(batch, seq_len)
        for m in range(accum):
            for r in range(world):
                x, y = streams.serve(step, r, world, accum, m)
                start = (n * accum + m) * micro_tokens + r * local
                assert x.shape == (local // seq_len, seq_len)
                assert x.flatten().tolist() == list(range(start, start + local))
                assert y.flatten().tolist() == list(range(start + 1, start + local + 1))


def test_schedules_follow_the_reference_walk(doc_shards):
    paths, tokens = doc_shards
    want = ref_walk(tokens, SCHEDULE * 3)
    assert len(want) < len(SCHEDULE) * 3  # the walk crosses both shard boundaries and runs out
    s = streams.TrainStream(paths, BOS)
    shards_seen = set()
    for n, (batch, seq_len, align, cap) in enumerate(SCHEDULE * 3):
        if n == len(want):
            with pytest.raises(SpeedrunError, match=f"exhausted after {n} steps"):
                s.next_step(batch, seq_len, **step_options(align, cap))
            break
        step = s.next_step(batch, seq_len, **step_options(align, cap))
        shards_seen.add(step.shard)
        assert [step.piece(i).tolist() for i in range(step.num_pieces)] == want[n], f"step {n}"
        assert pieces_of_rows(*streams.serve(step)) == want[n]
        assert step.align_to_bos == (align or cap is not None)
    assert shards_seen == {0, 1, 2}
    assert s.tokens_served == sum(b for b, *_ in (SCHEDULE * 3)[:len(want)])


def test_aligned_pieces_start_at_documents_and_skip_between(doc_shards):
    paths, tokens = doc_shards
    s = streams.TrainStream(paths[2:], BOS)
    bos_at = set(np.flatnonzero(tokens[2] == BOS).tolist())
    previous_end = 0
    for _ in range(6):
        step = s.next_step(96, 16, align_to_bos=True)
        for i in range(step.num_pieces):
            piece = step.piece(i)
            assert piece[0] == BOS and len(piece) == 17
            start = step._starts[i]
            assert start in bos_at and start >= previous_end
            assert not bos_at & set(range(previous_end, start))  # the first BOS at or after the cursor
            np.testing.assert_array_equal(tokens[2][start:start + 17], piece)
            previous_end = start + 16
        assert step.end == previous_end


def test_max_doc_len_cuts_every_document(doc_shards):
    paths, tokens = doc_shards
    doc_starts = np.flatnonzero(tokens[2] == BOS)
    s = streams.TrainStream(paths[2:], BOS)
    for _ in range(5):
        step = s.next_step(64, 16, max_doc_len=6)
        assert step.align_to_bos
        for i in range(step.num_pieces):
            piece = step.piece(i)
            assert len(piece) == 17 and piece[0] == BOS
            bounds = np.append(np.flatnonzero(piece == BOS), len(piece))
            assert (np.diff(bounds) <= 6).all()
            for a, b in zip(bounds[:-1], bounds[1:]):  # each part is the beginning of a real document
                assert any(np.array_equal(tokens[2][d:d + b - a], piece[a:b]) for d in doc_starts)


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_token_order_does_not_depend_on_world_size_or_accumulation(doc_shards, layout):
    paths, _ = doc_shards
    configs = [(1, 8), (2, 4), (4, 2), (8, 1)]
    by_config = {c: streams.TrainStream(paths, BOS) for c in configs}
    # SCHEDULE's shapes with a multiple of 8 pieces per step; the flat layout needs aligned pieces
    schedule = [(L * 8 * max(1, b // L // 8), L, a or layout == "flat", c) for b, L, a, c in SCHEDULE]
    for batch, seq_len, align, cap in schedule:
        served, whole = {}, []
        for (world, accum), s in by_config.items():
            step = s.next_step(batch, seq_len, **step_options(align, cap))
            batches = serve_all(step, world, accum, layout)
            assert len(batches) == world * accum
            if layout == "rows":
                served[world, accum] = [p for x, y in batches for p in pieces_of_rows(x, y)]
            else:
                inputs = torch.cat([b[0] for b in batches]).tolist()
                targets = torch.cat([b[1] for b in batches]).tolist()
                n = len(batches[0][0])  # cu_seqlens of the step, re-based to the concatenation of micro-batches
                cu = sorted({int(c) + j * n for j, b in enumerate(batches) for c in b[2].tolist()})
                served[world, accum] = (inputs, targets, cu)
                assert cu == ref_cu_seqlens(inputs, seq_len)
                assert all(inputs[j] == BOS for j in range(0, len(inputs), seq_len))
            whole.append([step.piece(i).tolist() for i in range(step.num_pieces)])
        assert all(w == whole[0] for w in whole)
        assert all(v == served[1, 8] for v in served.values()), (batch, seq_len, align, cap)
        if layout == "rows":
            assert served[1, 8] == whole[0]


def test_flat_layout_cu_seqlens(doc_shards):
    paths, _ = doc_shards
    s = streams.TrainStream(paths, BOS)
    for batch, seq_len, _, cap in SCHEDULE:
        step = s.next_step(batch, seq_len, align_to_bos=True, max_doc_len=cap)
        for world, accum in [(1, 1), (2, 2)]:
            for x, y, cu in serve_all(step, world, accum, "flat"):
                k = step.num_pieces // (world * accum)
                assert x.shape == y.shape == (k * seq_len,) and x.dtype == y.dtype == torch.int64
                assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == len(x)
                assert cu.tolist() == ref_cu_seqlens(x.tolist(), seq_len)
                rows = x.view(k, seq_len)
                assert (rows[:, 0] == BOS).all()  # every piece starts a document
                assert torch.equal(y.view(k, seq_len)[:, :-1], rows[:, 1:])
    with pytest.raises(SpeedrunError, match="flat layout needs pieces aligned to BOS"):
        streams.serve(s.next_step(64, 8), layout="flat")


def test_step_shard_crossing_and_exhaustion(tmp_path):
    a = shard(tmp_path / "a.bin", np.arange(40))          # room for 2 steps of 16 (+1), remainder too short
    b = shard(tmp_path / "b.bin", np.arange(1000, 1030))  # one step, then room for a smaller one
    s = streams.TrainStream([a, b], BOS)
    firsts = [int(streams.serve(s.next_step(16, 4))[0][0, 0]) for _ in range(3)]
    assert firsts == [0, 16, 1000] and s.position == (1, 16)
    state = s.state_dict()
    with pytest.raises(SpeedrunError, match="exhausted after 3 steps") as err:
        s.next_step(16, 4)
    assert "\n" not in str(err.value)
    assert s.state_dict() == state  # a failed step does not move the cursor
    assert int(s.next_step(8, 4).piece(0)[0]) == 1016  # a smaller step still fits


def test_state_dict_resumes_and_reset_rewinds(doc_shards):
    paths, _ = doc_shards
    plan = SCHEDULE[:8]
    s = streams.TrainStream(paths, BOS)
    first = [s.next_step(b, L, **step_options(a, c)).piece(0).tolist() for b, L, a, c in plan[:3]]
    state = s.state_dict()
    expected = [pieces_of_rows(*streams.serve(s.next_step(b, L, **step_options(a, c)))) for b, L, a, c in plan[3:]]
    other = streams.TrainStream(paths, BOS)
    other.load_state_dict(state)
    assert other.steps == 3 and other.tokens_served == sum(b for b, *_ in plan[:3])
    assert [pieces_of_rows(*streams.serve(other.next_step(b, L, **step_options(a, c))))
            for b, L, a, c in plan[3:]] == expected
    s.reset()
    assert s.steps == 0 and s.tokens_served == 0 and s.position == (0, 0)
    assert s.next_step(*plan[0][:2]).piece(0).tolist() == first[0]
    with pytest.raises(SpeedrunError, match="other files or another bos_token"):
        streams.TrainStream(paths, 7).load_state_dict(state)
    with pytest.raises(SpeedrunError, match="outside the shards"):
        streams.TrainStream(paths, BOS).load_state_dict({**state, "pos": 10**9})


def test_streams_read_preloaded_shards_without_opening_them(tmp_path):
    train = shard(tmp_path / "t.bin", np.arange(3000))
    val = shard(tmp_path / "v.bin", np.arange(5000, 5600))
    streams.preload([train, val])
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for p in (train, val):
        p.rename(moved / p.name)  # any open of the paths would now fail with "missing"
    s = streams.TrainStream([train], BOS)
    x, _ = streams.serve(s.next_step(64, 8, align_to_bos=False))
    assert x.flatten().tolist() == list(range(64))
    v = streams.ValStream([val], 512, 64, 8)
    assert torch.cat([x.flatten() for x, _ in v]).tolist() == list(range(5000, 5512))


@pytest.mark.parametrize("call, match", [
    (lambda p: streams.TrainStream([p], BOS).next_step(10, 4), "multiple of 4"),
    (lambda p: streams.check_shape(64, 8, world_size=3), r"3 rank\(s\) x 1 micro-batch\(es\) x seq_len 8"),
    (lambda p: streams.check_shape(64, 8, world_size=2, accum_steps=8), "multiple of 128"),
    (lambda p: streams.serve(streams.TrainStream([p], BOS).next_step(32, 8), 0, 2, 4, 0), "multiple of 64"),
    (lambda p: streams.serve(streams.TrainStream([p], BOS).next_step(32, 8), 2, 2, 1, 0), "rank 2"),
    (lambda p: streams.serve(streams.TrainStream([p], BOS).next_step(32, 8), 0, 2, 2, 2), "micro-batch 2"),
    (lambda p: streams.serve(streams.TrainStream([p], BOS).next_step(32, 8), layout="cols"), "layout must be"),
    (lambda p: streams.TrainStream([p], BOS, max_seq_len=16).next_step(64, 32), "seq_len 32 is above"),
    (lambda p: streams.check_shape(64, 32, max_seq_len=16), "max_seq_len 16"),
    (lambda p: streams.TrainStream([p], BOS).next_step(0, 4), "batch_tokens must be a positive integer"),
    (lambda p: streams.TrainStream([p], BOS).next_step(16, 4, max_doc_len=0), "max_doc_len must be"),
    (lambda p: streams.TrainStream([p], BOS).next_step(200, 200), "piece of seq_len \\+ 1 = 201 tokens is longer"),
    (lambda p: streams.TrainStream([p], BOS).next_step(200, 8), "step of batch_tokens \\+ 1 = 201 tokens is longer"),
    (lambda p: streams.TrainStream([], BOS), "no train shards"),
    (lambda p: streams.TrainStream([p], -1), "bos_token"),
    (lambda p: streams.TrainStream([p], BOS).next_step(32, 8).piece(4), "piece 4 is outside"),
    (lambda p: streams.make_batch([np.arange(5), np.arange(4)]), "one length"),
    (lambda p: streams.make_batch([np.arange(5)], "flat"), "needs bos_token"),
    (lambda p: streams.make_batch([]), "no pieces"),
])
def test_bad_requests_are_one_line_errors(tmp_path, call, match):
    path = shard(tmp_path / "a.bin", np.arange(100))
    with pytest.raises(SpeedrunError, match=match) as err:
        call(path)
    assert "\n" not in str(err.value)


# --- batches from arbitrary pieces, random batches ----------------------------------------------------------


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_make_batch_from_arbitrary_pieces(layout):
    pieces = [np.array([BOS, 1, 2, BOS, 3, 4]), np.array([5, 6, BOS, 7, 8, 9]), np.array([BOS] * 6)]
    got = streams.make_batch(pieces, layout, bos_token=BOS)
    if layout == "rows":
        x, y = got
        assert x.tolist() == [p[:-1].tolist() for p in pieces] and y.tolist() == [p[1:].tolist() for p in pieces]
    else:
        x, y, cu = got
        assert x.tolist() == [t for p in pieces for t in p[:-1].tolist()]
        assert y.tolist() == [t for p in pieces for t in p[1:].tolist()]
        assert cu.tolist() == [0, 3, 5, 7, 10, 11, 12, 13, 14, 15] == ref_cu_seqlens(x.tolist(), 5)
    same = streams.make_batch(np.stack(pieces), layout, bos_token=BOS)  # one [k, seq_len + 1] array works too
    assert all(torch.equal(a, b) for a, b in zip(got, same))


@pytest.mark.parametrize("make_gen", [lambda: np.random.default_rng(3), lambda: torch.Generator().manual_seed(3)])
def test_random_batches_have_the_served_shapes(make_gen):
    x, y = streams.random_batch((4, 32), 512, 511, make_gen())
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64 and 0 <= int(x.min()) and int(x.max()) < 512
    assert torch.equal(x[:, 1:], y[:, :-1])
    again = streams.random_batch((4, 32), 512, 511, make_gen())
    assert torch.equal(again[0], x)  # the generator decides
    docs = set()
    gen = make_gen()
    for _ in range(5):
        x, y, cu = streams.random_batch((4, 32), 512, 511, gen, "flat")
        assert x.shape == y.shape == (128,) and cu.dtype == torch.int32
        assert (x.view(4, 32)[:, 0] == 511).all()
        assert cu.tolist() == [j for j in range(128) if j % 32 == 0 or x[j] == 511] + [128]
        docs.add(len(cu) - 1)
    assert len(docs) > 1 and min(docs) > 4  # random documents: their number varies
    with pytest.raises(SpeedrunError, match="not a token of a 512-token vocabulary"):
        streams.random_batch((4, 32), 512, 600, make_gen())
    with pytest.raises(SpeedrunError, match="shape_spec must be"):
        streams.random_batch(128, 512, 511, make_gen())


# --- val stream ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 4])
def test_val_stream_covers_exactly_val_tokens(tmp_path, world):
    path = shard(tmp_path / "v.bin", np.arange(700))
    vals = [streams.ValStream([path], 512, 64 * world, 16, rank=r, world_size=world) for r in range(world)]
    assert all(len(v) == 512 // (64 * world) and v.tokens_per_rank == 512 // world for v in vals)
    inputs, targets = [], []
    for v in vals:
        for x, y in v:
            assert x.shape == (4, 16) and x.dtype == torch.int64
            inputs += x.flatten().tolist()
            targets += y.flatten().tolist()
    assert sorted(inputs) == list(range(512))
    assert sorted(targets) == list(range(1, 513))
    assert [x.tolist() for x, _ in vals[0]] == [x.tolist() for x, _ in vals[0]]  # re-iterable
    v = vals[-1]  # rank r's pieces at val step s: s*P + [r*k, (r+1)*k), P pieces per val step
    assert list(v.pieces_of(1)) == [4 * world + (world - 1) * 4 + i for i in range(4)]
    first = next(iter(v))[0]
    assert first[0].tolist() == v.val_piece(v.pieces_of(0)[0])[:-1].tolist()


def test_val_stream_spans_several_files_and_gives_pieces(tmp_path):
    a = shard(tmp_path / "a.bin", np.arange(100))
    b = shard(tmp_path / "b.bin", np.arange(100, 300))
    v = streams.ValStream([a, b], 256, 32, 8)
    assert torch.cat([x.flatten() for x, _ in v]).tolist() == list(range(256))
    assert torch.cat([y.flatten() for _, y in v]).tolist() == list(range(1, 257))
    assert v.num_pieces == 32
    assert v.val_piece(12).tolist() == list(range(96, 105))  # across the file boundary
    assert v.val_piece(31).tolist() == list(range(248, 257))
    with pytest.raises(SpeedrunError, match="piece 32 is outside"):
        v.val_piece(32)


@pytest.mark.parametrize("world", [1, 2])
def test_val_stream_flat_is_contiguous_with_documents(tmp_path, world):
    tokens = docs_stream(np.random.default_rng(5), 200, 30)
    tokens[0] = 3  # validation never re-aligns: the first piece starts wherever the val tokens start
    path = shard(tmp_path / "v.bin", tokens)
    got = []
    for r in range(world):
        v = streams.ValStream([path], 1024, 256, 32, rank=r, world_size=world, layout="flat", bos_token=BOS)
        for x, y, cu in v:
            assert x.shape == (256 // world,) and cu.tolist() == ref_cu_seqlens(x.tolist(), 32)
            got.append((x.tolist(), y.tolist()))
    order = [got[s + r * 4] for s in range(4) for r in range(world)]  # rank-major lists back to step order
    assert [t for x, _ in order for t in x] == tokens[:1024].tolist()
    assert [t for _, y in order for t in y] == tokens[1:1025].tolist()
    with pytest.raises(SpeedrunError, match="needs bos_token"):
        streams.ValStream([path], 1024, 256, 32, layout="flat")


def test_val_stream_refuses_shapes_that_do_not_tile(tmp_path):
    path = shard(tmp_path / "v.bin", np.arange(1000))
    with pytest.raises(SpeedrunError, match="does not tile val_tokens 512"):
        streams.ValStream([path], 512, 3 * 16, 16, world_size=3)
    with pytest.raises(SpeedrunError, match="does not divide over 3 rank"):
        streams.ValStream([path], 576, 96, 64, world_size=3)
    with pytest.raises(SpeedrunError, match="need 1001"):
        streams.ValStream([path], 1000, 100, 10)
    with pytest.raises(SpeedrunError, match="above the track's max_seq_len 8"):
        streams.ValStream([path], 512, 64, 16, max_seq_len=8)


# --- real processes -----------------------------------------------------------------------------------------

DIST_SCHEDULE = [(512, 16, {}, "rows"), (256, 32, {"align_to_bos": True}, "flat"),
                 (1024, 16, {"max_doc_len": 10}, "rows"), (512, 8, {"align_to_bos": True}, "rows"),
                 (256, 8, {"max_doc_len": 6}, "flat")]


def _dist_worker(rank: int, world: int, paths: list[str], store: str, out: str) -> None:
    """One gloo rank: walk DIST_SCHEDULE with accum 8 // world; rank 0 saves what every rank was served."""
    import pickle

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        stream, accum, record = streams.TrainStream(paths, BOS), 8 // world, []
        for batch, seq_len, options, layout in DIST_SCHEDULE:
            step = stream.next_step(batch, seq_len, **options)
            mine = [[t.tolist() for t in streams.serve(step, rank, world, accum, m, layout)] for m in range(accum)]
            everyone = [None] * world
            dist.all_gather_object(everyone, mine)
            record.append([everyone[r][m] for m in range(accum) for r in range(world)])  # piece order
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(record))
    finally:
        dist.destroy_process_group()


def test_gloo_ranks_are_served_the_same_tokens_per_step(tmp_path):
    import pickle

    import torch.multiprocessing as mp

    tokens = docs_stream(np.random.default_rng(11), 2000, 40)
    paths = [str(shard(tmp_path / "t.bin", tokens))]
    # a fork server imports torch and this module once; the 7 ranks fork from it (spawn would import both 7 times)
    mp.get_context("forkserver").set_forkserver_preload(["torch", "torch.distributed", _dist_worker.__module__])
    contexts = {w: mp.start_processes(_dist_worker, args=(w, paths, str(tmp_path / f"store-{w}"),
                                                          str(tmp_path / f"out-{w}.pkl")),
                                      nprocs=w, join=False, start_method="forkserver") for w in (1, 2, 4)}
    deadline = time.monotonic() + 120
    for ctx in contexts.values():
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for c in contexts.values():
                    for proc in c.processes:
                        proc.kill()
                pytest.fail("gloo workers did not finish in 120 s")
    records = {w: pickle.loads((tmp_path / f"out-{w}.pkl").read_bytes()) for w in contexts}
    stream = streams.TrainStream(paths, BOS)
    for n, (batch, seq_len, options, layout) in enumerate(DIST_SCHEDULE):
        step = stream.next_step(batch, seq_len, **options)
        want = [step.piece(i).tolist() for i in range(step.num_pieces)]
        for world, record in records.items():
            micro = record[n]
            assert len(micro) == 8
            if layout == "rows":
                got = [x + [y[-1]] for batch_ in micro for x, y in zip(*batch_[:2])]
            else:
                got = [x[i:i + seq_len] + [y[i + seq_len - 1]] for x, y, _ in micro for i in range(0, len(x), seq_len)]
                assert all(cu == ref_cu_seqlens(x, seq_len) for x, _, cu in micro)
            assert got == want, (world, n)


# --- track files --------------------------------------------------------------------------------------------


def hub_track(tmp_path: Path, pins: dict[str, str] | None = None) -> tracks.Track:
    return synthetic.hub_track(tmp_path, pins, val_tokens=64)


def test_hub_track_files_missing_then_present(tmp_path):
    track = hub_track(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(SpeedrunError, match=r"missing val file .*speedrun data fetch hubby"):
        streams.track_files(track, root)
    folder = root / "fw"
    shard(folder / "fw_val_000000.bin", np.arange(100))
    with pytest.raises(SpeedrunError, match="missing train shards"):
        streams.track_files(track, root)
    shard(folder / "fw_train_000001.bin", np.arange(100))
    shard(folder / "fw_train_000002.bin", np.arange(100))
    shard(folder / "fw_train_000003.bin", np.arange(10))
    (folder / "fw_train_000003.bin").write_bytes(b"junk")
    with pytest.raises(SpeedrunError, match="fw_train_000003.bin"):
        streams.track_files(track, root)
    (folder / "fw_train_000003.bin").unlink()
    train, val = streams.track_files(track, root)
    assert [p.name for p in train] == ["fw_train_000001.bin", "fw_train_000002.bin"]
    assert [p.name for p in val] == ["fw_val_000000.bin"]


def test_hub_track_files_checks_pins_only_when_asked(tmp_path):
    root = tmp_path / "data"
    shard(root / "fw" / "fw_val_000000.bin", np.arange(100))
    shard(root / "fw" / "fw_train_000001.bin", np.arange(100))
    track = hub_track(tmp_path, {"fw_val_000000.bin": "0" * 64})
    streams.track_files(track, root)
    with pytest.raises(SpeedrunError, match="does not match the track's pin"):
        streams.track_files(track, root, check_sha256=True)


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEEDRUN_DATA_DIR", str(tmp_path))
    assert streams.data_dir() == tmp_path
    monkeypatch.delenv("SPEEDRUN_DATA_DIR")
    assert streams.data_dir() == paths.SOURCE_ROOT / "data"


def test_importing_the_data_module_does_not_import_torch():
    code = "import sys, speedrun.data.streams; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streams_on_cuda(tmp_path):
    path = shard(tmp_path / "t.bin", np.arange(5000))
    step = streams.TrainStream([path], BOS).next_step(64, 8)
    x, y = streams.serve(step, device="cuda")
    assert x.is_cuda and y.is_cuda and x.dtype == torch.int64
    assert x.flatten().tolist() == list(range(64)) and y.flatten().tolist() == list(range(1, 65))
    v = streams.ValStream([path], 512, 64, 8, device="cuda")
    assert torch.cat([x.flatten() for x, _ in v]).cpu().tolist() == list(range(512))
    x, y, cu = streams.make_batch([np.array([BOS, 1, 2, BOS, 4])], "flat", "cuda", bos_token=BOS)
    assert cu.is_cuda and cu.dtype == torch.int32 and cu.tolist() == [0, 3, 4]
