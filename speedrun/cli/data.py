"""`speedrun data fetch | prepare | verify`: get a track's data, make shards from text, check shards.

The work is done in `speedrun.data.fetch`, `speedrun.data.prepare` and `speedrun.data.streams`; this module only parses flags
and prints. Every failure is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speedrun.errors import SpeedrunError


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch, prepare and verify token shards")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    fetch = sub.add_parser("fetch", help="download a track's val file and first train shards (tiny: generate it)")
    fetch.add_argument("track", help="track name or path to a track .toml")
    fetch.add_argument("--train-shards", type=int, default=8, metavar="N",
                       help="how many train shards to download (default 8, i.e. 800M tokens for FineWeb)")
    fetch.add_argument("--data-dir", type=Path, help="data folder (default: see `speedrun --help`)")
    fetch.add_argument("--endpoint", help="hub URL (default $HF_ENDPOINT or https://huggingface.co)")
    fetch.set_defaults(func=cmd_fetch)

    prep = sub.add_parser("prepare", help="tokenise text/JSONL files with GPT-2's BPE into shards",
                          description="Tokenise text into FineWeb-format shards. A .jsonl file holds one "
                                      "document per line (in --text-field); any other file is one document.")
    prep.add_argument("inputs", nargs="+", metavar="INPUT", help="text or .jsonl files, or directories of them")
    prep.add_argument("--out", type=Path, required=True, help="output folder")
    prep.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                      help="tokens per train shard (default 100,000,000)")
    prep.add_argument("--val-tokens", type=int, default=10_485_760, metavar="N",
                      help="val tokens a track will score; the val shard holds N+1 (default 10,485,760)")
    prep.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    prep.add_argument("--prefix", default="corpus", help="shard name prefix (default: corpus)")
    prep.add_argument("--vocab-dir", type=Path, help="folder with GPT-2's vocab.bpe and encoder.json")
    prep.add_argument("--force", action="store_true", help="replace existing shards with the same prefix")
    prep.set_defaults(func=cmd_prepare)

    verify = sub.add_parser("verify", help="check shard files: format, token counts, sha256 (and a track's pins)")
    verify.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="shard files or folders of *.bin")
    verify.add_argument("--track", help="compare with this track's sha256 pins; with no PATH, check its files")
    verify.add_argument("--data-dir", type=Path, help="data folder for --track without PATH")
    verify.set_defaults(func=cmd_verify)


def _console():
    """A rich console; when output is not a terminal it is wide enough to keep sha256 digests on one line."""
    from speedrun.cli import console

    return console.stdout(width=200)


def cmd_fetch(args: argparse.Namespace) -> int:
    from speedrun.cli.console import RichReporter
    from speedrun.data import fetch
    from speedrun import tracks

    track = tracks.load_track(args.track)
    infos = fetch.fetch(track, args.train_shards, data_dir=args.data_dir, endpoint=args.endpoint,
                        report=RichReporter(_console()))
    total = sum(i.tokens for i in infos)
    print(f"{track.name}: {len(infos)} file(s) ready, {total:,} tokens")
    if track.data.source == "generator":
        from speedrun.data import corpus

        meta = corpus.entropy(track, args.data_dir)
        if meta:
            print(f"entropy bound (val): {meta['entropy_nats']['val']:.4f} nats/token")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from speedrun.data import prepare

    infos = prepare.prepare(args.inputs, args.out, shard_tokens=args.shard_tokens, val_tokens=args.val_tokens,
                            text_field=args.text_field, prefix=args.prefix, vocab_dir=args.vocab_dir,
                            force=args.force)
    _table(infos, {}, "prepared")
    return 0


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.bin"))
            if not found:
                raise SpeedrunError(f"{path}: no .bin shards in this folder")
            files.extend(found)
        else:
            files.append(path)
    return files


def cmd_verify(args: argparse.Namespace) -> int:
    from speedrun.data import streams
    from speedrun import tracks

    track = tracks.load_track(args.track) if args.track else None
    pins = dict(track.data.sha256) if track else {}
    if args.paths:
        files = _expand(args.paths)
    elif track:
        train, val = streams.track_files(track, data_dir=args.data_dir, generate=False)
        files = val + train
        if track.data.source == "generator" and not pins:
            from speedrun.data import corpus

            pins = (corpus.entropy(track, args.data_dir) or {}).get("sha256", {})
    else:
        raise SpeedrunError("data verify: give shard files/folders, or --track NAME")
    infos, failures = [], 0
    for path in files:
        try:
            info = streams.shard_info(path)
            pin = pins.get(path.name)
            if pin and info.sha256 != pin:
                raise SpeedrunError(f"{path}: sha256 {info.sha256} does not match the pin {pin}")
            infos.append(info)
        except SpeedrunError as exc:
            print(f"speedrun: error: {exc}", file=sys.stderr)
            failures += 1
    if infos:
        _table(infos, pins, "verified")
    if failures:
        print(f"speedrun: error: {failures} of {len(files)} file(s) failed verification", file=sys.stderr)
        return 1
    return 0


def _table(infos, pins: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=f"{len(infos)} shard(s) {title}")
    table.add_column("file")
    table.add_column("tokens", justify="right")
    table.add_column("sha256")
    table.add_column("pin")
    for info in infos:
        table.add_row(str(info.path), f"{info.tokens:,}", info.sha256, "ok" if info.path.name in pins else "-")
    table.add_row("total", f"{sum(i.tokens for i in infos):,}", "", "")
    _console().print(table)
