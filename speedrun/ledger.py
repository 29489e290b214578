"""The ledger: `records/<track>/<NNN>_<slug>/`, one entry per record, each re-verifiable from its own files.

An entry holds the self-contained `train.py`, its run evidence (`manifest.json`, `run-K.jsonl`, `run-K.log`,
`verdict.json`, and `compare.json` when it was compared with its prior record) and `record.toml`: number,
date, description, contributors, metric mean and spread, n runs, p-value, hardware, harness version, script
sha256, the prior record and the comparison statistics. An entry may be `verified = false` (a baseline
nobody has run on the track's hardware yet); it then says so in `note` and is never the current record.

`speedrun record add RUN_DIR` re-verifies the run, checks that it beats the current record on the same
hardware (`speedrun compare`, run now or given with `--compare`), takes the next number under a lock, writes
the entry aside and renames it into place (a crash leaves the ledger valid), and regenerates the tables.
Tables (`records/<track>/README.md` and a section of the top-level README) are generated, never hand-edited.
"""

from __future__ import annotations

import argparse
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

from speedrun import API_VERSION, __version__, evidence
from speedrun.errors import SpeedrunError
from speedrun.tracks import REPO_ROOT, Track, load_track, track_names

ENTRY = re.compile(r"^(\d{3})_([a-z0-9][a-z0-9-]*)$")
README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
LOCK_TIMEOUT_S = 120


def records_dir() -> Path:
    return Path(os.environ.get("SPEEDRUN_RECORDS_DIR", REPO_ROOT / "records"))


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
    path: Path | None = None

    @property
    def script(self) -> Path:
        return self.path / "train.py"

    def to_toml(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k != "path" and v is not None}
        if not doc["comparison"]:
            doc.pop("comparison")
        return doc


_REQUIRED = {"number": int, "slug": str, "date": str, "track": str, "description": str, "contributors": list,
             "verified": bool, "metric": str, "script_sha256": str, "harness_version": str, "api_version": int}
_OPTIONAL = {"hardware": str, "metric_mean": (int, float), "metric_sd": (int, float), "val_loss_mean": (int, float),
             "val_loss_sd": (int, float), "n_runs": int, "p_value": (int, float), "prior": int, "note": str,
             "comparison": dict}


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
        rec = read_record(d / "record.toml")
        if rec.number != int(m.group(1)) or rec.track != track:
            raise SpeedrunError(f"{d / 'record.toml'}: number/track disagree with the folder {d.name}")
        found.append(rec)
    return sorted(found, key=lambda r: r.number)


def current_record(track: str, root: Path | None = None) -> Record | None:
    """The highest-numbered verified record of a track: the one to beat."""
    verified = [r for r in load_records(track, root) if r.verified]
    return verified[-1] if verified else None


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
def _locked(track: str, root: Path):
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


def _write_entry(root: Path, record: Record, files: dict[str, Path], manifest: dict | None) -> Path:
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
            evidence.write_json_atomic(tmp / evidence.MANIFEST, manifest)
        with open(tmp / "record.toml", "wb") as f:
            tomli_w.dump(record.to_toml(), f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record.path = final
    return final


def _evidence_files(run_dir: Path, manifest: dict) -> dict[str, Path]:
    files = {"train.py": run_dir / manifest["script"]["name"], evidence.VERDICT: run_dir / evidence.VERDICT}
    for p in sorted(run_dir.glob("run-*.jsonl")) + sorted(run_dir.glob("run-*.log")):
        files[p.name] = p
    return files


def add_record(run_dir: Path, description: str, contributors: list[str], *, track_name: str | None = None,
               slug: str | None = None, compare_dir: Path | None = None, compare_runs: int = 3,
               systems_speedup: bool = False, root: Path | None = None) -> Record:
    """Verify `run_dir`, check it beats the current record on the same hardware, and add it to the ledger."""
    root = root or records_dir()
    run_dir = Path(run_dir)
    from speedrun import verify

    verdict = verify.verify_run_dir(run_dir)
    manifest = evidence.read_json(run_dir / evidence.MANIFEST)
    track = load_track(verdict["track"])
    if track_name and track_name != track.name:
        raise SpeedrunError(f"{run_dir} is a run of track {track.name}, not {track_name}")
    if verdict["self_reported"]:
        raise SpeedrunError(f"{run_dir} holds self-reported (imported) evidence; only refereed runs can be records")
    if verdict["problems"]:
        raise SpeedrunError(f"{run_dir} is not verified: {verdict['problems'][0]}")
    if systems_speedup and not track.checks.systems_speedup_without_loss_test:
        raise SpeedrunError(f"track {track.name} does not accept systems speedups without the loss test")
    if not verdict["target"]["passed"] and not systems_speedup:
        raise SpeedrunError(f"{run_dir} does not meet the target: {verdict['target']['reason']}")
    command = manifest.get("command") or []
    script_name = manifest["script"]["name"]
    tail = command[next((i for i, c in enumerate(command) if c.endswith(script_name)), len(command)) + 1:]
    if tail:
        raise SpeedrunError(f"{run_dir} was launched with script arguments {tail}: a record must run without "
                            f"arguments (bake them into the script) so that replay and compare reproduce it")
    sha = manifest["script"]["sha256"]
    for rec in load_records(track.name, root):
        if rec.script_sha256 == sha:
            raise SpeedrunError(f"this script is already recorded as #{rec.number} ({rec.path.name})")

    prior = current_record(track.name, root)
    comparison: dict = {}
    compare_file = None
    if prior is not None:
        from speedrun import compare

        if compare_dir is None:
            compare_dir = compare.compare(run_dir / manifest["script"]["name"], prior.script, track,
                                          runs=compare_runs, nproc=manifest.get("nproc_per_node", 1))
        comparison = compare.check_against(Path(compare_dir), sha, prior, manifest.get("hardware", ""))
        compare_file = Path(compare_dir) / compare.RESULT
        if not comparison["passed"]:
            raise SpeedrunError(f"not faster than record #{prior.number} on this hardware: time ratio "
                                f"{comparison['ratio']:.4f}, one-sided Welch p = {comparison['p_value']:.3g} "
                                f"(needs p < {comparison['threshold']})")

    metric = verdict["metric"]
    target = verdict["target"]
    with _locked(track.name, root):
        existing = load_records(track.name, root)
        number = max((r.number for r in existing), default=0) + 1
        record = Record(
            number=number, slug=slugify(slug or description), date=date.today().isoformat(), track=track.name,
            description=description, contributors=contributors, verified=True, metric=track.metric,
            script_sha256=sha, harness_version=manifest.get("harness_version", __version__),
            api_version=manifest.get("api_version", API_VERSION), hardware=manifest.get("hardware", ""),
            metric_mean=metric["mean"], metric_sd=metric["sd"], val_loss_mean=target["mean"],
            val_loss_sd=target["sd"], n_runs=target["n"], p_value=target["p_value"],
            prior=prior.number if prior else 0, comparison=comparison,
            note="systems speedup: accepted on time alone" if systems_speedup and not target["passed"] else "")
        files = _evidence_files(run_dir, manifest)
        if compare_file is not None:
            files["compare.json"] = compare_file
        entry_manifest = dict(manifest, script=dict(manifest["script"], name="train.py",
                                                    original_name=manifest["script"]["name"]))
        _write_entry(root, record, files, entry_manifest)
    write_tables(root)
    return record


def add_unverified(script: Path, track: Track, description: str, contributors: list[str], note: str,
                   slug: str | None = None, root: Path | None = None) -> Record:
    """Enter a baseline that has no verified run yet (e.g. no GPU to run it on); it is never the current
    record until someone runs it on the track's hardware and adds it with `record add`."""
    root = root or records_dir()
    if not script.is_file():
        raise SpeedrunError(f"{script}: no such script")
    with _locked(track.name, root):
        number = max((r.number for r in load_records(track.name, root)), default=0) + 1
        record = Record(number=number, slug=slugify(slug or description), date=date.today().isoformat(),
                        track=track.name, description=description, contributors=contributors, verified=False,
                        metric=track.metric, script_sha256=evidence.sha256_file(script),
                        harness_version=__version__, api_version=API_VERSION, hardware=track.hardware,
                        note=note or "no verified run exists yet")
        _write_entry(root, record, {"train.py": script}, None)
    write_tables(root)
    return record


# --- tables ---------------------------------------------------------------------------------------------------


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def track_table(track: Track, records: list[Record]) -> str:
    unit = "s" if track.metric == "wallclock" else "steps"
    lines = [
        f"| # | date | {track.metric} ({unit}) | val loss | runs | p | description | contributors | hardware | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        metric = f"{_fmt(r.metric_mean, 2)} ± {_fmt(r.metric_sd, 2)}" if r.verified else "-"
        status = "verified" if r.verified else f"not verified: {r.note}"
        p = "-" if r.p_value is None else f"{r.p_value:.2g}"
        lines.append(f"| [{r.number}]({r.path.name}/) | {r.date} | {metric} | {_fmt(r.val_loss_mean, 4)} | "
                     f"{r.n_runs or '-'} | {p} | {r.description} | {', '.join(r.contributors)} | {r.hardware} | "
                     f"{status} |")
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
            unit = "s" if track.metric == "wallclock" else "steps"
            lines.append(f"| [{name}]({rel}) | #{cur.number} {cur.description} | {cur.metric_mean:.2f} {unit} | "
                         f"{_fmt(cur.val_loss_mean, 4)} | {cur.hardware} | {len(records)} |")
        else:
            lines.append(f"| [{name}]({rel}) | no verified record yet | - | - | {track.hardware} | {len(records)} |")
    lines += ["", README_END]
    return "\n".join(lines)


def rendered_tables(root: Path | None = None) -> dict[Path, str]:
    """Every generated file's expected content, keyed by path."""
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
        else:
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


# --- commands -------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="add a verified run to the ledger")
    rsub = p.add_subparsers(dest="record_command", metavar="ACTION", required=True)
    a = rsub.add_parser("add", help="verify RUN_DIR, check it beats the current record, append it")
    a.add_argument("run_dir", type=Path)
    a.add_argument("--description", required=True)
    a.add_argument("--contributors", required=True, help="comma-separated")
    a.add_argument("--track", help="refuse unless the run is of this track")
    a.add_argument("--slug")
    a.add_argument("--compare", type=Path, help="a `speedrun compare` directory made on this hardware")
    a.add_argument("--compare-runs", type=int, default=3, help="runs per side when comparing now")
    a.add_argument("--systems-speedup", action="store_true",
                   help="a pure systems speedup: accepted on time alone where the track allows it")
    a.set_defaults(func=_cmd_add)
    u = rsub.add_parser("add-unverified", help="enter a baseline that has no verified run yet")
    u.add_argument("script", type=Path)
    u.add_argument("--track", required=True)
    u.add_argument("--description", required=True)
    u.add_argument("--contributors", required=True)
    u.add_argument("--note", default="no verified run exists yet")
    u.add_argument("--slug")
    u.set_defaults(func=_cmd_add_unverified)

    lb = sub.add_parser("leaderboard", help="print the records; --write regenerates the tables")
    lb.add_argument("--track")
    lb.add_argument("--write", action="store_true", help="regenerate records/*/README.md and the README section")
    lb.add_argument("--check", action="store_true", help="exit 1 when a generated table is stale")
    lb.add_argument("--history", action="store_true", help="show the external (self-reported) history instead")
    lb.set_defaults(func=_cmd_leaderboard)


def _contributors(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _cmd_add(args) -> int:
    rec = add_record(args.run_dir, args.description, _contributors(args.contributors), track_name=args.track,
                     slug=args.slug, compare_dir=args.compare, compare_runs=args.compare_runs,
                     systems_speedup=args.systems_speedup)
    print(f"added record #{rec.number} to track {rec.track}: {rec.path}")
    return 0


def _cmd_add_unverified(args) -> int:
    rec = add_unverified(args.script, load_track(args.track), args.description, _contributors(args.contributors),
                         args.note, args.slug)
    print(f"entered #{rec.number} on track {rec.track} (not verified): {rec.path}")
    return 0


def _cmd_leaderboard(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if args.history:
        from speedrun import history

        console.print(history.history_table(history.load_history(), args.track))
        return 0
    if args.write:
        for path in write_tables():
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = stale_tables()
        for path in stale:
            print(f"stale: {path} (run `speedrun leaderboard --write`)")
        return 1 if stale else 0
    for name in [args.track] if args.track else track_names():
        track = load_track(name)
        table = Table(title=f"{name}: target {track.target_val_loss}, {track.metric}, {track.hardware}")
        for col in ("#", "date", track.metric, "val loss", "runs", "description", "hardware", "status"):
            table.add_column(col)
        for r in load_records(name):
            table.add_row(str(r.number), r.date, f"{_fmt(r.metric_mean, 2)} ± {_fmt(r.metric_sd, 2)}",
                          _fmt(r.val_loss_mean, 4), str(r.n_runs or "-"), r.description, r.hardware,
                          "verified" if r.verified else f"not verified: {r.note}")
        console.print(table)
    return 0
