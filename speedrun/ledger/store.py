"""The ledger: `records/<track>/<NNN>_<slug>/`, one entry per record, each re-verifiable from its own files.

An entry holds the self-contained `train.py`, its run evidence (`manifest.json`, `run-K.jsonl`, `run-K.log`,
`verdict.json`, and `compare.json` when it was compared with its prior record) and `record.toml`: number,
date, description, contributors, metric mean and spread, n runs, p-value, hardware, harness version, script
sha256, the prior record and the comparison statistics. An entry may be `verified = false` (a baseline
nobody has run on the track's hardware yet); it then says so in `note` and is never the current record.

This module is the store: reading and validating entries, writing one under a lock (aside, then renamed
into place: a crash leaves the ledger valid), and the generated tables (`records/<track>/README.md` and a
section of the top-level README, never hand-edited); `speedrun leaderboard` (`speedrun.cli.leaderboard`) shows the
same records on the terminal. Deciding whether a run *becomes* a record
(`speedrun record add`: verify, compare with the prior record, then `write_record`) is `speedrun.ledger.compare`'s.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import tomli_w

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from speedrun.version import API_VERSION, __version__
from speedrun.evidence import rundir
from speedrun.errors import SpeedrunError
from speedrun.tracks import Track, load_track, track_names

ENTRY = re.compile(r"^(\d{3})_([a-z0-9][a-z0-9-]*)$")
README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
LOCK_TIMEOUT_S = 120


def records_dir() -> Path:
    """`$SPEEDRUN_RECORDS_DIR`, else the checkout's `records/`, else `./records` (the rule is `speedrun.paths`)."""
    from speedrun import paths

    return paths.records_dir()


@dataclass
class Record:
    number: int
    slug: str
    date: str
    track: str
    description: str
    contributors: list[str]
    verified: bool
    metric: str
    script_sha256: str
    harness_version: str
    api_version: int
    hardware: str = ""
    metric_mean: float | None = None
    metric_sd: float | None = None
    val_loss_mean: float | None = None
    val_loss_sd: float | None = None
    n_runs: int = 0
    p_value: float | None = None
    prior: int = 0
    note: str = ""
    comparison: dict = field(default_factory=dict)
    judged_step: int | None = None       # optimization track: the declared step every run was judged at
    throughput: dict = field(default_factory=dict)  # tokens_per_s, flops_per_token, mfu (from the verdict)
    hardware_fingerprint: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def script(self) -> Path:
        return self.path / rundir.RECORD_SCRIPT

    def to_toml(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k != "path" and v is not None}
        for key in ("comparison", "throughput", "hardware_fingerprint"):
            if not doc[key]:
                doc.pop(key)
            else:
                doc[key] = {k: v for k, v in doc[key].items() if v is not None}
        return doc


_REQUIRED = {"number": int, "slug": str, "date": str, "track": str, "description": str, "contributors": list,
             "verified": bool, "metric": str, "script_sha256": str, "harness_version": str, "api_version": int}
_OPTIONAL = {"hardware": str, "metric_mean": (int, float), "metric_sd": (int, float), "val_loss_mean": (int, float),
             "val_loss_sd": (int, float), "n_runs": int, "p_value": (int, float), "prior": int, "note": str,
             "comparison": dict, "judged_step": int, "throughput": dict, "hardware_fingerprint": dict}


def read_record(path: Path) -> Record:
    """Read and validate one `record.toml`; errors name the file and the field."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpeedrunError(f"{path}: not a valid record file: {exc}") from None
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in doc:
            if key in _REQUIRED:
                raise SpeedrunError(f"{path}: field '{key}': missing")
            continue
        value = doc[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SpeedrunError(f"{path}: field '{key}': wrong type ({value!r})")
    unknown = sorted(set(doc) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise SpeedrunError(f"{path}: field '{unknown[0]}': unknown field")
    if doc["verified"] and doc.get("metric_mean") is None:
        raise SpeedrunError(f"{path}: field 'metric_mean': a verified record needs it")
    return Record(**doc, path=path.parent)


def load_records(track: str, root: Path | None = None) -> list[Record]:
    """Every entry of a track, by number (directories that are not `NNN_slug` are ignored)."""
    folder = (root or records_dir()) / track
    if not folder.is_dir():
        return []
    found = []
    for d in sorted(folder.iterdir()):
        m = ENTRY.match(d.name)
        if not m or not d.is_dir():
            continue
        rec = read_record(d / rundir.RECORD_ENTRY)
        if rec.number != int(m.group(1)) or rec.track != track:
            raise SpeedrunError(f"{d / 'record.toml'}: number/track disagree with the folder {d.name}")
        found.append(rec)
    return sorted(found, key=lambda r: r.number)


def current_record(track: str, root: Path | None = None) -> Record | None:
    """The highest-numbered verified record of a track: the one to beat."""
    verified = [r for r in load_records(track, root) if r.verified]
    return verified[-1] if verified else None


def recorded_verdict(record: Record) -> dict | None:
    """The verdict stored with a ledger entry (None for unverified entries)."""
    path = record.path / rundir.VERDICT if record.path else None
    return rundir.read_json(path) if path is not None and path.is_file() else None


def find_record(track: str, number: int, root: Path | None = None) -> Record:
    for rec in load_records(track, root):
        if rec.number == number:
            return rec
    raise SpeedrunError(f"no record #{number} on track {track}")


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40].rstrip("-") or "record"


# --- writing entries ------------------------------------------------------------------------------------------


@contextmanager
def locked(track: str, root: Path):
    folder = root / track
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SpeedrunError(f"{folder}: another `record add` holds the ledger lock") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_entry(root: Path, record: Record, files: dict[str, Path], manifest: dict | None) -> Path:
    """Write the entry beside the ledger and rename it into place (the caller holds the lock)."""
    folder = root / record.track
    for stale in folder.glob(".tmp-*"):  # left by a crash mid-write: never part of the ledger
        shutil.rmtree(stale, ignore_errors=True)
    final = folder / f"{record.number:03d}_{record.slug}"
    if final.exists():
        raise SpeedrunError(f"{final}: already exists")
    tmp = folder / f".tmp-{os.getpid()}-{record.number:03d}"
    tmp.mkdir(parents=True)
    try:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        if manifest is not None:
            rundir.write_json_atomic(tmp / rundir.MANIFEST, manifest)
        with open(tmp / rundir.RECORD_ENTRY, "wb") as f:
            tomli_w.dump(record.to_toml(), f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record.path = final
    return final


def evidence_files(run_dir: Path, manifest: dict) -> dict[str, Path]:
    files = {rundir.RECORD_SCRIPT: rundir.script_path(run_dir, manifest), rundir.VERDICT: run_dir / rundir.VERDICT}
    for p in rundir.repetition_files(run_dir):
        files[p.name] = p
    return files


def add_unverified(script: Path, track: Track, description: str, contributors: list[str], note: str,
                   slug: str | None = None, root: Path | None = None) -> Record:
    """Enter a baseline that has no verified run yet (e.g. no GPU to run it on); it is never the current
    record until someone runs it on the track's hardware and adds it with `record add`."""
    root = root or records_dir()
    if not script.is_file():
        raise SpeedrunError(f"{script}: no such script")
    with locked(track.name, root):
        number = max((r.number for r in load_records(track.name, root)), default=0) + 1
        record = Record(number=number, slug=slugify(slug or description), date=date.today().isoformat(),
                        track=track.name, description=description, contributors=contributors, verified=False,
                        metric=track.metric, script_sha256=rundir.sha256_file(script),
                        harness_version=__version__, api_version=API_VERSION, hardware=track.hardware,
                        note=note or "no verified run exists yet")
        write_entry(root, record, {rundir.RECORD_SCRIPT: script}, None)
    write_tables(root)
    return record


# --- tables ---------------------------------------------------------------------------------------------------


def fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def throughput_text(r: Record) -> str:
    tp = r.throughput or {}
    if not tp.get("tokens_per_s"):
        return "-"
    text = f"{tp['tokens_per_s']:,.0f} tok/s"
    if tp.get("mfu"):
        text += f", MFU {tp['mfu']:.1%}"
    return text


def track_table(track: Track, records: list[Record]) -> str:
    unit = track.metric_unit
    lines = [
        f"| # | date | {track.metric} ({unit}) | val loss | runs | p | description | contributors | hardware | "
        f"throughput | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        metric = f"{fmt(r.metric_mean, 2)} ± {fmt(r.metric_sd, 2)}" if r.verified else "-"
        status = "verified" if r.verified else f"not verified: {r.note}"
        p = "-" if r.p_value is None else f"{r.p_value:.2g}"
        lines.append(f"| [{r.number}]({r.path.name}/) | {r.date} | {metric} | {fmt(r.val_loss_mean, 4)} | "
                     f"{r.n_runs or '-'} | {p} | {r.description} | {', '.join(r.contributors)} | {r.hardware} | "
                     f"{throughput_text(r)} | {status} |")
    return "\n".join(lines)


def track_readme(track: Track, records: list[Record]) -> str:
    return (f"# Records: {track.name}\n\n"
            f"<!-- generated by `speedrun leaderboard --write` from the record.toml files; do not edit -->\n\n"
            f"{track.description}. Target: mean val loss below {track.target_val_loss} on {track.val_tokens:,} "
            f"val tokens ({track.rule.test} rule); metric: {track.metric}; hardware: {track.hardware}.\n\n"
            f"{track_table(track, records)}\n")


def readme_section(root: Path) -> str:
    lines = [README_START, "",
             "| track | current record | metric | val loss | hardware | entries |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in track_names():
        track = load_track(name)
        records = load_records(name, root)
        cur = current_record(name, root)
        rel = f"records/{name}/README.md"
        if cur:
            unit = track.metric_unit
            lines.append(f"| [{name}]({rel}) | #{cur.number} {cur.description} | {cur.metric_mean:.2f} {unit} | "
                         f"{fmt(cur.val_loss_mean, 4)} | {cur.hardware} | {len(records)} |")
        else:
            lines.append(f"| [{name}]({rel}) | no verified record yet | - | - | {track.hardware} | {len(records)} |")
    lines += ["", README_END]
    return "\n".join(lines)


def rendered_tables(root: Path | None = None) -> dict[Path, str]:
    """Every generated file's expected content, keyed by path. The README beside the records folder gets the
    leaderboard section between its markers; a README without markers only when it is the checkout's."""
    from speedrun import paths

    root = root or records_dir()
    out = {}
    for name in track_names():
        out[root / name / "README.md"] = track_readme(load_track(name), load_records(name, root))
    readme = root.parent / "README.md"
    if readme.exists():
        text = readme.read_text()
        section = readme_section(root)
        if README_START in text and README_END in text:
            head, rest = text.split(README_START, 1)
            tail = rest.split(README_END, 1)[1]
            out[readme] = head + section + tail
        elif readme.parent == paths.checkout():  # never append to some other project's README
            out[readme] = text.rstrip("\n") + "\n\n## Leaderboard\n\n" + section + "\n"
    return out


def stale_tables(root: Path | None = None) -> list[Path]:
    return [p for p, text in rendered_tables(root).items() if not p.exists() or p.read_text() != text]


def write_tables(root: Path | None = None) -> list[Path]:
    written = []
    for path, text in rendered_tables(root).items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            written.append(path)
    return written
