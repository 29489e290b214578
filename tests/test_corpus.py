"""The tiny track's built-in corpus: exact (pinned), fast, language-like, and reused once generated."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import synthetic

from speedrun import tracks
from speedrun.data import corpus, streams
from speedrun.errors import SpeedrunError


def small_track(tmp_path: Path, seed: int = 7, name: str = "mini") -> tracks.Track:
    return synthetic.generator_track(tmp_path, seed, name)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """The real tiny track's corpus, generated fresh (as CI does)."""
    track = tracks.load_track("tiny")
    folder = tmp_path_factory.mktemp("data")
    began = time.perf_counter()
    train, val = streams.track_files(track, folder)
    return track, train, val, time.perf_counter() - began


def test_regenerated_corpus_matches_the_pins(tiny_corpus):
    track, train, val, _ = tiny_corpus  # generation takes ~7-12 s on a quiet 2-core machine (not asserted:
    assert track.data.sha256, "tiny.toml must pin its shards"  # a test never judges wallclock)
    for path in train + val:
        assert streams.shard_info(path).sha256 == track.data.sha256[path.name], path.name


def test_sizes_and_entropy_sidecar(tiny_corpus):
    track, train, val, _ = tiny_corpus
    assert [streams.shard_tokens(p) for p in train] == [4_194_304] * 4
    assert track.val_tokens + 1 <= streams.shard_tokens(val[0]) <= track.val_tokens + 4096
    meta = corpus.entropy(track, val[0].parent.parent)
    assert meta is not None and meta["val_split_tokens"] == track.val_tokens
    bound = meta["entropy_nats"]["val"]
    assert 2.0 < bound < meta["unigram_entropy_nats"] < np.log(512)


def test_language_like_statistics(tiny_corpus):
    track, train, val, _ = tiny_corpus
    tokens = np.asarray(streams.read_shard(train[0]))[:2_000_000].astype(np.int64)
    assert tokens.max() < track.vocab_size
    starts = np.flatnonzero(tokens == track.bos_token)
    lengths = np.diff(starts)
    assert tokens[0] == track.bos_token
    assert 100 < lengths.mean() < 600 and lengths.min() < 40 and lengths.max() > 1500  # varied documents
    counts = np.sort(np.bincount(tokens, minlength=512))[::-1]
    assert counts[0] > 20 * counts[255] > 0  # Zipf-like: a heavy head and a long tail

    # a bigram model fitted on train cannot reach the generator's entropy bound on val
    big = np.zeros((512, 512))
    np.add.at(big, (tokens[:-1], tokens[1:]), 1)
    probs = (big + 0.1) / (big + 0.1).sum(1, keepdims=True)
    v = np.asarray(streams.read_shard(val[0]))[:track.val_tokens + 1].astype(np.int64)
    bigram = -np.log(probs[v[:-1], v[1:]]).mean()
    bound = corpus.entropy(track, val[0].parent.parent)["entropy_nats"]["val"]
    assert bigram > bound + 0.8

    # repetition inside documents: a token seen earlier in its document is far likelier than its frequency
    doc = v[starts[starts < len(v)][0]:][:5000]
    seen_before = [t in set(doc[max(0, i - 200):i]) for i, t in enumerate(doc[1:], 1)]
    assert np.mean(seen_before) > 0.5


def test_sampler_is_exactly_searchsorted():
    rng = np.random.default_rng(3)
    p = rng.random((20, 37)) ** 4
    p[:, 5] = 0.0
    rows = corpus._Rows(p)
    r = rng.integers(0, 20, 5000)
    u = rng.random(5000)
    cdf = corpus._cdf(p)
    expected = np.array([np.searchsorted(cdf[i], x, side="right") for i, x in zip(r, u, strict=True)])
    np.testing.assert_array_equal(rows.draw(r, u), expected)
    assert not (rows.draw(r, u) == 5).any()


def test_generation_is_deterministic_and_seeded(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    meta_a = corpus.generate(small_track(tmp_path, seed=7), a)
    meta_b = corpus.generate(small_track(tmp_path, seed=7), b)
    meta_c = corpus.generate(small_track(tmp_path, seed=8), c)
    assert meta_a["sha256"] == meta_b["sha256"] != meta_c["sha256"]
    for name in meta_a["sha256"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert json.loads((a / corpus.META_NAME).read_text())["entropy_nats"] == meta_a["entropy_nats"]


def test_ensure_reuses_and_checks(tmp_path):
    track = small_track(tmp_path)
    folder = tmp_path / "d" / track.name
    assert corpus.entropy(track, tmp_path / "d") is None
    with pytest.raises(SpeedrunError, match="speedrun data fetch mini"):
        streams.track_files(track, tmp_path / "d", generate=False)
    train, val = streams.track_files(track, tmp_path / "d")
    assert [p.name for p in train] == corpus.train_file_names(track.data) == [
        "tiny_train_000001.bin", "tiny_train_000002.bin", "tiny_train_000003.bin"]
    assert [streams.shard_tokens(p) for p in train] == [16384, 16384, 40000 - 2 * 16384]
    mtimes = [p.stat().st_mtime_ns for p in train + val]
    streams.track_files(track, tmp_path / "d", check_sha256=True)
    assert [p.stat().st_mtime_ns for p in train + val] == mtimes  # reused, not regenerated

    raw = bytearray(train[1].read_bytes())
    raw[2000] ^= 1
    train[1].write_bytes(bytes(raw))
    streams.track_files(track, tmp_path / "d")  # start-up checks sizes only
    with pytest.raises(SpeedrunError, match="tiny_train_000002.bin: sha256"):
        streams.track_files(track, tmp_path / "d", check_sha256=True)

    train[2].write_bytes(train[2].read_bytes()[:-2])  # a wrong size: regenerated on next use
    streams.track_files(track, tmp_path / "d")
    assert streams.shard_tokens(train[2]) == 40000 - 2 * 16384
    assert (folder / corpus.META_NAME).exists()


def _use(args):
    path, data_dir = args
    track = tracks.load_track_file(path)
    train, val = streams.track_files(track, data_dir)
    return [streams.shard_info(p).sha256 for p in train + val]


def test_concurrent_first_use_generates_once(tmp_path):
    track = small_track(tmp_path)
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_use, [(str(track.path), str(tmp_path / "d"))] * 3)
    assert results[0] == results[1] == results[2]
    leftovers = [p.name for p in (tmp_path / "d" / track.name).iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_unknown_generator_is_a_clear_error(tmp_path):
    track = small_track(tmp_path)
    track.path.write_text(track.path.read_text().replace("tiny-v1", "tiny-v9"))
    track = tracks.load_track_file(track.path)
    with pytest.raises(SpeedrunError, match="data.generator.*tiny-v9"):
        streams.track_files(track, tmp_path / "d")
