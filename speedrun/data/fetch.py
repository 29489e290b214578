"""Download a track's shards from the Hugging Face hub, and prove they are the right bytes.

A run is only comparable with a record if it saw the same tokens, so every fetched file is checked: its
shard format, and its sha256 against the track's pin or, unpinned, against the sha256 the hub itself reports
(for LFS files the hub's `X-Linked-Etag` is the sha256 of the content; `get_hf_file_metadata` returns it as
`etag`). Files already present and valid are not downloaded again. A failure of any kind (missing on the hub,
network, corrupt bytes) is one line and leaves no file behind in the data folder.

The tiny track has nothing to download: "fetching" it generates its corpus.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from speedrun import paths
from speedrun.data import folders, streams
from speedrun.errors import SpeedrunError
from speedrun.report import SILENT, Reporter

DEFAULT_ENDPOINT = "https://huggingface.co"
SHA256 = re.compile(r"[0-9a-f]{64}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hub_error(exc: Exception, repo: str, name: str, endpoint: str) -> SpeedrunError:
    """Translate huggingface_hub / network exceptions into one line naming the file."""
    from huggingface_hub import errors

    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return SpeedrunError(f"{name}: not found in {repo} on {endpoint}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return SpeedrunError(f"{repo}: repository not found on {endpoint} (or it is private)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return SpeedrunError(f"{repo}: revision not found on {endpoint}")
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return SpeedrunError(f"{name}: download from {endpoint} failed: HTTP {status}")
    return SpeedrunError(f"{name}: download from {endpoint} failed: {_one_line(exc)}")


def hub_sha256(repo: str, name: str, repo_type: str, endpoint: str) -> tuple[str | None, int | None]:
    """The sha256 and size the hub reports for a file (sha256 None for non-LFS files)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, name, repo_type=repo_type, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    etag = (meta.etag or "").lower()
    return (etag if SHA256.fullmatch(etag) else None), meta.size


def _check(path: Path, pin: str | None, hub: str | None) -> streams.ShardInfo:
    info = streams.shard_info(path)
    for want, source in ((pin, "the track's pin"), (hub, "the hub's sha256")):
        if want and info.sha256 != want:
            raise SpeedrunError(f"{path}: sha256 {info.sha256} does not match {source} {want}")
    return info


def fetch_file(repo: str, name: str, folder: Path, *, repo_type: str = "dataset", endpoint: str = DEFAULT_ENDPOINT,
               pin: str | None = None, report: Reporter = SILENT) -> streams.ShardInfo:
    """Make `folder/name` a valid copy of the hub file: keep a valid local copy, else download and verify;
    `report` hears which it did."""
    from huggingface_hub import hf_hub_download

    path = folder / name
    if path.exists():
        try:
            info = _check(path, pin, None)
            report.line(f"present  {name}  {info.tokens:,} tokens")
            return info
        except SpeedrunError as exc:
            report.line(f"invalid  {name}: {exc}; downloading again")
            path.unlink()
    try:
        hub, _size = hub_sha256(repo, name, repo_type, endpoint)
        report.line(f"download {name}")
        hf_hub_download(repo, name, repo_type=repo_type, local_dir=folder, endpoint=endpoint, force_download=True)
    except Exception as exc:  # any hub, HTTP or file-system failure becomes one line
        path.unlink(missing_ok=True)
        raise _hub_error(exc, repo, name, endpoint) from None
    try:
        info = _check(path, pin, hub)
    except SpeedrunError as exc:
        path.unlink(missing_ok=True)
        raise SpeedrunError(f"{name}: corrupt download, removed: {exc}") from None
    report.line(f"verified {name}  {info.tokens:,} tokens  sha256 {info.sha256[:16]}…"
                  + ("" if (pin or hub) else " (no pin or hub sha256 to compare)"))
    return info


def fetch(track, train_shards: int, data_dir: str | os.PathLike | None = None, endpoint: str | None = None,
          report: Reporter = SILENT) -> list[streams.ShardInfo]:
    """Fetch the track's val file(s) and its first `train_shards` train shards; return their infos. `report`
    hears a line per file."""
    root = Path(data_dir) if data_dir is not None else streams.data_dir()
    if track.data.source == "generator":
        report.line(f"{track.name}: built-in corpus in {paths.track_data_dir(track, root)} (generated on first use, then checked)")
        train, val = streams.track_files(track, data_dir=root, generate=True, check_sha256=True)
        return [streams.shard_info(p) for p in val + train]
    available = track.data.train_files
    if not 0 <= train_shards <= len(available):
        raise SpeedrunError(f"--train-shards must be between 0 and {len(available)} for track {track.name}, "
                            f"got {train_shards}")
    folder = paths.track_data_dir(track, root)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    names = track.data.all_val_files + available[:train_shards]
    with folders.made_for(folder):  # a failure leaves no empty data folder behind
        report.line(f"{track.name}: {len(names)} file(s) from {track.data.repo} into {folder}")
        return [fetch_file(track.data.repo, name, folder, repo_type=track.data.repo_type, endpoint=endpoint,
                           pin=track.data.sha256.get(name), report=report) for name in names]
