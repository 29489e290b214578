"""What a run leaves behind, and how it is written and read back.

A run directory holds everything `speedrun verify` needs, so anyone can re-verify without re-running:

    <run_dir>/
      <script>.py          exact bytes of the submission (name and sha256 in the manifest)
      manifest.json        harness/api version, track + config hash, data hashes, software and device versions,
                           command, seeds, and per repetition: exit code, process wallclock, status, output tail
      run-K.jsonl          rank 0's events for repetition K (K = 1..n), one JSON object per line
      run-K.log            the repetition's captured stdout/stderr
      verdict.json         written by `speedrun verify`

Events (`"event"` names the kind; every event also has `"wall"`, seconds since the epoch):

    init      api_version, harness_version, track, world_size, device, seed
    warmup    seconds, digest_before, digest_after, restored (true when the referee put the state back)
    start     -
    train     step, timed_s, tokens (global tokens served so far), loss (optional)
    val       step, timed_s, loss, tokens, seconds (untimed wallclock spent validating)
    probe     name, passed, detail
    warning   message
    finish    step, timed_s, tokens
    seal      lines, sha256 (of every byte before this line; written last)

The seal catches accidental edits after the run, not a determined forger (replay is the real check).
Evidence imported from self-reported logs (see `speedrun.legacy.modded`) has `"self_reported": true` in its
manifest and no seal.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from speedrun.errors import SpeedrunError

MANIFEST = "manifest.json"
VERDICT = "verdict.json"


def events_path(run_dir: str | os.PathLike, k: int) -> Path:
    return Path(run_dir) / f"run-{k}.jsonl"


def log_path(run_dir: str | os.PathLike, k: int) -> Path:
    return Path(run_dir) / f"run-{k}.log"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes beside the target, fsync, then rename over it: readers see the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; evidence is meant to be read by anyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf: a p-value of one run, an undefined mean) as None, so the
    files are strict JSON that any parser reads, not Python's `NaN` extension."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented strict JSON (non-finite floats as null), written atomically (see `write_bytes_atomic`)."""
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{path}: not valid JSON: {exc}") from None


class EventWriter:
    """Appends events to `run-K.jsonl`, flushing each line so a crash keeps everything before it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = open(self.path, "wb")
        self._hash = hashlib.sha256()
        self.lines = 0

    def write(self, event: str, **fields: Any) -> dict:
        record = {"event": event, "wall": round(time.time(), 6), **fields}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self._f.write(line)
        self._f.flush()
        self._hash.update(line)
        self.lines += 1
        return record

    def seal(self) -> None:
        if self._f.closed:
            return
        line = json.dumps({"event": "seal", "lines": self.lines, "sha256": self._hash.hexdigest()}) + "\n"
        self._f.write(line.encode())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class Events(list):
    """The events of one repetition; `sealed` / `seal_ok` say whether the seal is there and still matches."""

    sealed: bool = False
    seal_ok: bool = False
    path: Path | None = None

    def of(self, kind: str) -> list[dict]:
        return [e for e in self if e.get("event") == kind]

    def last(self, kind: str) -> dict | None:
        found = self.of(kind)
        return found[-1] if found else None


def read_events(path: str | os.PathLike) -> Events:
    """Parse a `run-K.jsonl`; a malformed line is an error naming the file and line number."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: missing") from None
    events = Events()
    events.path = path
    h = hashlib.sha256()
    offset = 0
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpeedrunError(f"{path}:{number}: not a JSON event: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            raise SpeedrunError(f"{path}:{number}: not an event object (needs an 'event' name)")
        if record["event"] == "seal":
            events.sealed = True
            events.seal_ok = record.get("sha256") == h.hexdigest() and record.get("lines") == len(events)
            if offset + len(line) != len(data):
                events.seal_ok = False  # something was appended after the seal
            break
        h.update(line)
        offset += len(line)
        events.append(record)
    return events


def iter_repetitions(run_dir: str | os.PathLike) -> Iterable[int]:
    """Repetition numbers present in a run directory, in order."""
    ks = []
    for p in Path(run_dir).glob("run-*.jsonl"):
        try:
            ks.append(int(p.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(ks)
