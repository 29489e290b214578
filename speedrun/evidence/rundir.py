"""The run directory: every file name in it, and the one writer and the one reader of its evidence.

A run directory holds everything `speedrun verify` needs, so anyone can re-verify without re-running:

    <run_dir>/
      <script>.py          exact bytes of the submission (its name and sha256 are in the manifest)
      manifest.json        what was run, on what, with which pins, and how each repetition ended
      run-K.jsonl          the events of repetition K (K = 1..n), one JSON object per line, sealed last
      run-K.log            the repetition's captured stdout/stderr
      verdict.json         written by `speedrun verify`

A ledger entry is a run directory whose script copy is `train.py`. A comparison directory (`speedrun compare`) holds one run directory per side (`A/`, `B/`) and `compare.json`.
What the files contain (manifest fields, event kinds and their fields, the seal, the verdict) is stated once, in
`speedrun.evidence.schema`. Names are made only here, so a reader, a writer and a copier cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from speedrun.errors import SpeedrunError

MANIFEST = "manifest.json"
VERDICT = "verdict.json"
COMPARE = "compare.json"
COMPARE_SIDES = ("A", "B")
RECORD_SCRIPT = "train.py"  # a ledger entry keeps its run's script copy under this name
RECORD_ENTRY = "record.toml"  # what makes a directory a ledger entry (records/<track>/<NNN>_<slug>/)
_EVIDENCE_NAME = re.compile(r"run-(\d+)\.(jsonl|log)")


def events_name(k: int) -> str:
    return f"run-{k}.jsonl"


def log_name(k: int) -> str:
    return f"run-{k}.log"


def events_path(run_dir: str | os.PathLike, k: int) -> Path:
    return Path(run_dir) / events_name(k)


def log_path(run_dir: str | os.PathLike, k: int) -> Path:
    return Path(run_dir) / log_name(k)


def script_copy_path(run_dir: str | os.PathLike, script: str | os.PathLike) -> Path:
    """Where the launcher keeps the exact bytes of `script`: under its own name."""
    return Path(run_dir) / Path(script).name


def script_path(run_dir: str | os.PathLike, manifest: dict) -> Path:
    """The script copy a manifest names."""
    return Path(run_dir) / str((manifest.get("script") or {}).get("name", ""))


def compare_side(compare_dir: str | os.PathLike, side: str) -> Path:
    """The run directory of one side ("A" or "B") of a comparison."""
    return Path(compare_dir) / side


def is_reserved(name: str) -> bool:
    """Does a file of this name mean something in a run directory (so a copied-in file must not take it)?"""
    return name in (MANIFEST, VERDICT, COMPARE) or _EVIDENCE_NAME.fullmatch(name) is not None


def repetition_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every repetition's events, then every repetition's log, each sorted by name (what a record keeps)."""
    run_dir = Path(run_dir)
    return sorted(run_dir.glob("run-*.jsonl")) + sorted(run_dir.glob("run-*.log"))


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
    """One repetition's `run-K.jsonl`, as the referee and the log importer both write it.

    Events are streamed as they happen (flushed line by line: a crash keeps everything before it) and kept in
    memory. At the end the file is rewritten whole from memory, atomically: `seal()` appends the seal (lines and
    sha256 of every byte before it), `close()` leaves it unsealed (self-reported evidence, which nobody
    measured). Either way bytes someone else put into the file meanwhile are gone; `tampered()` says whether
    there were any. `wall=True` stamps each event with the writer's `time.time()`.
    """

    def __init__(self, path: str | os.PathLike, wall: bool = False):
        self.path = Path(path)
        self.wall = wall
        self.lines: list[bytes] = []
        self._f = open(self.path, "wb")

    def write(self, kind: str, **fields: Any) -> dict:
        record = {"event": kind, "wall": round(time.time(), 6), **fields} if self.wall else {"event": kind, **fields}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self.lines.append(line)
        if self._f is not None:
            try:
                self._f.write(line)
                self._f.flush()
            except (OSError, ValueError):
                pass  # the copy in memory is what the final rewrite keeps
        return record

    def tampered(self) -> bool:
        """Does the file on disk hold anything but what this writer wrote? (ask before `seal` / `close`)"""
        try:
            return self.path.read_bytes() != b"".join(self.lines)
        except OSError:
            return True

    def _finish(self, tail: bytes) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
        write_bytes_atomic(self.path, b"".join(self.lines) + tail)

    def seal(self) -> None:
        body = b"".join(self.lines)
        seal = {"event": "seal", "lines": len(self.lines), "sha256": hashlib.sha256(body).hexdigest()}
        self._finish((json.dumps(seal) + "\n").encode())

    def close(self) -> None:
        """End without a seal."""
        if self._f is not None:
            self._finish(b"")


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
        m = _EVIDENCE_NAME.fullmatch(p.name)
        if m:
            ks.append(int(m.group(1)))
    return sorted(ks)
