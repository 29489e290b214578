"""Same-hardware comparison and replay: how "faster than the prior record" is decided.

`speedrun compare A B --track T --runs K` runs two scripts (or records) interleaved, A B A B ..., on this
machine, so drifting load or thermals hit both alike. Each side gets its own verified run directory; the
result (`compare.json`) holds the time ratio A/B, a one-sided Welch test that A's times are lower, each
side's loss verdict, and the hardware it ran on. `record add` uses it (or accepts one made earlier on the
same hardware).

`speedrun replay NNN --track T` re-runs a record's script under the current harness and hardware, verifies
it, and reports its time against the recorded one, flagging a different harness version or hardware.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from rich.console import Console

from speedrun import __version__, evidence, launcher, stats, verify
from speedrun.errors import SpeedrunError
from speedrun.tracks import Track, load_track

console = Console()
RESULT = "compare.json"


def resolve_script(ref: str, track: Track) -> Path:
    """A script path, a record directory, or a record number (`7`, `007`, `tiny/007`)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir() and (path / "train.py").is_file():
        return path / "train.py"
    from speedrun import ledger

    name, _, number = ref.rpartition("/")
    if number.isdigit():
        return ledger.find_record(name or track.name, int(number)).script
    raise SpeedrunError(f"{ref}: not a script, a record directory or a record number")


def _metric(verdict: dict) -> list[float]:
    return verdict["metric"]["values"]


def compare(a: Path, b: Path, track: Track, runs: int = 3, nproc: int = 1, out: Path | None = None,
            seed: int = 0, script_args: list[str] | None = None, timeout: float | None = None) -> Path:
    """Run A and B interleaved `runs` times each; write and return the comparison directory."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out = launcher.runs_root() / "compare" / f"{stamp}_{a.stem}-vs-{b.stem}"
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SpeedrunError(f"{out}: output directory exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    sides = {"A": launcher.Launch(a, track, nproc, runs, out / "A", seed, script_args or [], {}, timeout=timeout),
             "B": launcher.Launch(b, track, nproc, runs, out / "B", seed, script_args or [], {}, timeout=timeout)}
    console.print(f"[bold]speedrun compare[/bold] A={a} B={b} on track {track.name}: {runs} runs each, "
                  f"interleaved -> {out}", highlight=False)
    for k in range(1, runs + 1):
        for name in ("A", "B") if k % 2 else ("B", "A"):
            sides[name].repetition(k)
    verdicts = {name: verify.verify_run_dir(job.run_dir) for name, job in sides.items()}
    faster = stats.faster_test(_metric(verdicts["A"]), _metric(verdicts["B"]))
    result = {
        "track": track.name,
        "metric": track.metric,
        "hardware": sides["A"].manifest["hardware"],
        "hostname": sides["A"].manifest["env"]["hostname"],
        "harness_version": __version__,
        "runs": runs,
        "nproc_per_node": nproc,
        "sides": {name: {"script": str(job.cmd[-1]), "script_sha256": job.manifest["script"]["sha256"],
                         "run_dir": job.run_dir.name, "qualifies": verdicts[name]["qualifies"],
                         "problems": verdicts[name]["problems"], "values": _metric(verdicts[name]),
                         "mean": verdicts[name]["metric"]["mean"], "sd": verdicts[name]["metric"]["sd"],
                         "val_loss_mean": verdicts[name]["target"]["mean"],
                         "loss_verdict": verdicts[name]["target"]["reason"]}
                  for name, job in sides.items()},
        "ratio": faster.ratio,
        "p_value": faster.p_value,
        "threshold": faster.threshold,
        "a_faster": faster.passed,
    }
    evidence.write_json_atomic(out / RESULT, result)
    print_compare(result)
    return out


def check_against(compare_dir: Path, new_sha: str, prior, hardware: str) -> dict:
    """Does this comparison show the new script (A) beating the prior record (B) on `hardware`?"""
    result = evidence.read_json(Path(compare_dir) / RESULT)
    a, b = result["sides"]["A"], result["sides"]["B"]
    if a["script_sha256"] != new_sha:
        raise SpeedrunError(f"{compare_dir}: side A is not this run's script")
    if b["script_sha256"] != prior.script_sha256:
        raise SpeedrunError(f"{compare_dir}: side B is not record #{prior.number}'s script")
    if hardware and result["hardware"] != hardware:
        raise SpeedrunError(f"{compare_dir}: compared on {result['hardware']}, but the run is from {hardware}")
    passed = bool(result["a_faster"] and a["qualifies"] and result["ratio"] < 1)
    return {"against": prior.number, "ratio": result["ratio"], "p_value": result["p_value"],
            "threshold": result["threshold"], "runs": result["runs"], "hardware": result["hardware"],
            "mean_new": a["mean"], "mean_prior": b["mean"], "passed": passed}


def print_compare(result: dict) -> None:
    a, b = result["sides"]["A"], result["sides"]["B"]
    unit = "s" if result["metric"] == "wallclock" else "steps"
    for name, side in (("A", a), ("B", b)):
        console.print(f"{name}: {side['mean']:.3f} ± {side['sd']:.3f} {unit}  val loss {side['val_loss_mean']:.4f}  "
                      f"{'qualifies' if side['qualifies'] else 'does not qualify'} ({side['loss_verdict']})",
                      highlight=False)
    console.print(f"ratio A/B = {result['ratio']:.4f}; one-sided Welch p = {result['p_value']:.3g}: "
                  f"{'A is faster' if result['a_faster'] else 'A is not shown faster'} on {result['hardware']}",
                  highlight=False)


def replay(track: Track, number: int, runs: int = 3, nproc: int | None = None, out: Path | None = None,
           timeout: float | None = None) -> dict:
    """Re-run record `number`, verify it, and compare its time with the recorded one."""
    from speedrun import ledger

    rec = ledger.find_record(track.name, number)
    recorded = evidence.read_json(rec.path / evidence.MANIFEST) if (rec.path / evidence.MANIFEST).exists() else {}
    nproc = nproc or recorded.get("nproc_per_node", 1)
    run_dir = launcher.launch(rec.script, track, nproc, runs, str(out) if out else None, 0, [], {},
                              timeout=timeout)
    verdict = verify.verify_run_dir(run_dir)
    verify.print_verdict(verdict)
    manifest = evidence.read_json(run_dir / evidence.MANIFEST)
    flags = []
    if rec.harness_version != __version__:
        flags.append(f"recorded under harness {rec.harness_version}, replayed under {__version__}")
    if rec.hardware and rec.hardware != manifest["hardware"]:
        flags.append(f"recorded on {rec.hardware}, replayed on {manifest['hardware']}: times are not comparable")
    ratio = verdict["metric"]["mean"] / rec.metric_mean if rec.verified and rec.metric_mean else None
    report = {"record": number, "run_dir": str(run_dir), "qualifies": verdict["qualifies"],
              "recorded": rec.metric_mean, "replayed": verdict["metric"]["mean"], "ratio": ratio, "flags": flags}
    unit = "s" if track.metric == "wallclock" else "steps"
    if ratio is not None:
        console.print(f"record #{number}: recorded {rec.metric_mean:.3f} {unit}, replayed "
                      f"{verdict['metric']['mean']:.3f} {unit} (ratio {ratio:.3f})", highlight=False)
    elif not rec.verified:
        console.print(f"record #{number} has no verified run to compare with ({rec.note})", highlight=False)
    for f in flags:
        console.print(f"[yellow]note:[/yellow] {f}", highlight=False)
    return report


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="run two scripts or records interleaved on this machine")
    c.add_argument("a", help="script, record directory or record number (the challenger)")
    c.add_argument("b", help="script, record directory or record number (the incumbent)")
    c.add_argument("--track", required=True)
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--nproc", type=int, default=1)
    c.add_argument("--out", type=Path)
    c.add_argument("--timeout", type=float)
    c.set_defaults(func=_cmd_compare)
    r = sub.add_parser("replay", help="re-run a record under this harness and hardware")
    r.add_argument("number", type=int)
    r.add_argument("--track", required=True)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--nproc", type=int, help="default: as recorded")
    r.add_argument("--out", type=Path)
    r.add_argument("--timeout", type=float)
    r.set_defaults(func=_cmd_replay)


def _cmd_compare(args) -> int:
    track = load_track(args.track)
    out = compare(resolve_script(args.a, track), resolve_script(args.b, track), track, args.runs, args.nproc,
                  args.out, script_args=list(getattr(args, "passthrough", [])), timeout=args.timeout)
    result = evidence.read_json(out / RESULT)
    return 0 if result["a_faster"] else 1


def _cmd_replay(args) -> int:
    report = replay(load_track(args.track), args.number, args.runs, args.nproc, args.out, args.timeout)
    return 0 if report["qualifies"] else 1
