"""`speedrun tracks` (one row per track) and `speedrun tracks show NAME` (one track in full).

Showing the tiny track also reports its corpus' entropy per token, the floor under any achievable val loss,
read from the generated corpus' sidecar (no regeneration: `speedrun data fetch tiny` makes it).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from speedrun import paths
    from speedrun.cli.console import DefaultsFormatter

    parser = subparsers.add_parser("tracks", help="list tracks, or show one in full",
                                   description="List the tracks (`speedrun tracks`) or show one in full. Track "
                                               f"files are read from {paths.tracks_dir()} ($SPEEDRUN_TRACKS_DIR, "
                                               "else the checkout's configs/tracks/, else the package's own).",
                                   formatter_class=DefaultsFormatter)
    sub = parser.add_subparsers(dest="tracks_command", metavar="ACTION")
    show = sub.add_parser("show", help="print one track's every field, its config sha256 and data status",
                          formatter_class=DefaultsFormatter)
    show.add_argument("name", help="track name or path to a track .toml")
    show.add_argument("--data-dir", type=Path,
                      help=f"data folder holding the tiny track's generated corpus (default: $SPEEDRUN_DATA_DIR, "
                           f"else the checkout's data/, else ~/.cache/speedrun/data; here: {paths.data_dir()})")
    show.set_defaults(func=cmd_show)
    parser.set_defaults(func=cmd_list)


def _data_summary(track) -> str:
    ds = track.data
    if ds.source == "generator":
        return f"generator {ds.generator}, seed {ds.seed}"
    lo, hi = ds.train_range
    return f"{ds.repo} ({hi - lo + 1} shards)"


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from speedrun import tracks
    from speedrun.cli import console

    table = Table(caption=f"from {tracks.tracks_dir()}; `speedrun tracks show NAME` for every field",
                  caption_justify="left", box=None, header_style="bold underline")
    for column in ("name", "metric", "target", "val tokens", "vocab", "hardware", "data"):
        table.add_column(column, justify="right" if column in ("target", "val tokens", "vocab") else "left",
                         no_wrap=column != "data")
    for track in tracks.all_tracks():
        table.add_row(track.name, track.metric, f"{track.target_val_loss:g}", f"{track.val_tokens:,}",
                      f"{track.vocab_size:,}", track.hardware, _data_summary(track))
    console.stdout(width=100).print(table)
    return 0


def _rows(track) -> list[tuple[str, str]]:
    ds, rule, checks = track.data, track.rule, track.checks
    rows = [("name", track.name), ("description", track.description), ("file", str(track.path)),
            ("config sha256", track.config_sha256), ("metric", track.metric),
            ("target val loss", f"{track.target_val_loss:g}"), ("val tokens", f"{track.val_tokens:,}"),
            ("vocab size", f"{track.vocab_size:,}"), ("bos token", str(track.bos_token)),
            ("hardware", track.hardware)]
    if track.unigram_entropy is not None:
        rows.append(("unigram entropy", f"{track.unigram_entropy:.4f} nats/token on the val tokens: the start "
                                        "check's no-data level"))
    if track.entropy_floor is not None:
        rows.append(("entropy floor", f"{track.entropy_floor:.4f} nats/token on the val tokens: no model's "
                                      "expected val loss is lower"))
    rows += [("rule.test", rule.test), ("rule.min_runs", str(rule.min_runs))]
    if rule.test == "ttest":
        rows.append(("rule.p_value", f"{rule.p_value:g}"))
    else:
        rows.append(("rule.margin", f"{rule.margin:g}"))
    rows += [("checks.forbidden", ", ".join(checks.forbidden) or "-"),
             ("checks.fixed_batch_tokens", str(checks.fixed_batch_tokens or "free")),
             ("checks.fixed_seq_len", str(checks.fixed_seq_len or "free")),
             ("checks.systems_speedup_without_loss_test", str(checks.systems_speedup_without_loss_test).lower()),
             ("data.source", ds.source)]
    if ds.source == "hub":
        train = ds.train_files
        rows += [("data.repo", f"{ds.repo} ({ds.repo_type})"), ("data.val_files", ", ".join(ds.val_files)),
                 ("data.train_files", f"{train[0]} .. {train[-1]} ({len(train)} shards)")]
    else:
        rows += [("data.generator", ds.generator), ("data.seed", str(ds.seed)),
                 ("data.train_tokens", f"{ds.train_tokens:,}"), ("data.shard_tokens", f"{ds.shard_tokens:,}"),
                 ("data.val_split_tokens", f"{ds.val_split_tokens:,}"),
                 ("data.files", ", ".join(ds.all_val_files + ds.train_files))]
    if ds.sha256:
        rows += [(f"data.sha256 {name}", digest) for name, digest in sorted(ds.sha256.items())]
    else:
        rows.append(("data.sha256", "no pins" + (" (checked against the hub's sha256)" if ds.source == "hub" else "")))
    return rows


def _entropy_rows(track, data_dir) -> list[tuple[str, str]]:
    from speedrun.data import corpus

    meta = corpus.entropy(track, data_dir)
    if meta is None:
        return [("entropy bound", f"corpus not generated yet: run `speedrun data fetch {track.name}` "
                                  "(its sidecar then holds the entropy per token)")]
    # one row per quantity: a figure the track already states is not repeated under another name
    ent, rows = meta["entropy_nats"], []
    if track.entropy_floor is None or f"{ent['val']:.4f}" != f"{track.entropy_floor:.4f}":
        rows.append(("entropy floor", f"this corpus: {ent['val']:.4f} nats/token on the val tokens"))
    rows += [("unigram entropy", f"{meta['unigram_entropy_nats']:.4f} nats/token on the train tokens"),
             ("entropy rate (train)", f"{ent['train']:.4f} nats/token on the train tokens"),
             ("mean document length", f"{meta['mean_doc_tokens']:.1f} tokens")]
    return rows


def _merge(rows: list[tuple[str, str]], more: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`rows` then `more`, a field already present getting the new value appended to its row (not a second row)."""
    merged = dict(rows)
    for field, value in more:
        merged[field] = f"{merged[field]}; {value}" if field in merged else value
    return list(merged.items())


def cmd_show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from speedrun import tracks
    from speedrun.cli import console

    track = tracks.load_track(args.name)
    rows = _rows(track)
    if track.data.source == "generator":
        rows = _merge(rows, _entropy_rows(track, args.data_dir))
    table = Table(title=f"track {track.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in rows:
        table.add_row(field, value)
    console.stdout(width=200).print(table)
    return 0
