"""`speedrun verify RUN_DIR`: the verdict, from the run directory alone.

Anyone can re-verify a run without re-running it: this reads the manifest, the script copy and each
repetition's events, and checks that
- every repetition exited cleanly, its events are intact (the seal matches) and it called start() and finish();
- the clock is consistent: timed seconds never exceed the process wallclock, and the only pauses are the
  validations (finish - start - validation time = timed seconds);
- warm-up left the state as it found it (digests match);
- every validation covered exactly the track's val tokens and the final one measured the final model;
- the probes passed; the script's sha256 matches the copy; the track's rule checks hold;
- the final losses meet the target by the track's statistical rule (`speedrun.stats`).
It writes `verdict.json`, prints a summary, and `qualifies` is true only when all of that holds.

Self-reported evidence (imported logs) has no referee clock, seal or probes: only the statistics apply, and
the verdict says so plainly.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from speedrun import __version__, evidence, stats
from speedrun.errors import SpeedrunError
from speedrun.tracks import Track, load_track

console = Console()
CLOCK_SLACK_S = 0.5   # absolute slack for barrier/sync time around pauses
CLOCK_SLACK_REL = 0.02


def rule_problems(track: Track, script_text: str, loader_events: list[dict]) -> list[str]:
    """The track's checks on the submission source and on how it asked for data."""
    problems = []
    for pattern in track.checks.forbidden:
        m = re.search(pattern, script_text)
        if m:
            line = script_text[: m.start()].count("\n") + 1
            problems.append(f"script line {line} matches a pattern track {track.name} forbids: {pattern}")
    for ev in loader_events:
        if track.checks.fixed_batch_tokens and ev.get("batch_tokens") != track.checks.fixed_batch_tokens:
            problems.append(f"train batch of {ev.get('batch_tokens')} tokens; the track fixes "
                            f"{track.checks.fixed_batch_tokens}")
        if track.checks.fixed_seq_len and ev.get("seq_len") != track.checks.fixed_seq_len:
            problems.append(f"seq_len {ev.get('seq_len')}; the track fixes {track.checks.fixed_seq_len}")
    return problems


def check_repetition(track: Track, events: evidence.Events, rep: dict, self_reported: bool) -> dict:
    """Check one repetition's events; returns its summary with a list of problems (empty = valid)."""
    k = rep.get("k")
    problems: list[str] = []
    out = {"k": k, "status": rep.get("status"), "exit_code": rep.get("exit_code"), "wall_s": rep.get("wall_s"),
           "final_loss": None, "timed_s": None, "batches": None, "problems": problems, "warnings": []}
    if rep.get("status") not in ("ok", "unknown", None):
        error = f": {rep['error']}" if rep.get("error") else ""
        problems.append(f"repetition {k} {rep.get('status')} (exit code {rep.get('exit_code')}){error}")

    if not self_reported:
        if not events.sealed:
            problems.append(f"run-{k}.jsonl has no seal (the process died before it ended?)")
        elif not events.seal_ok:
            problems.append(f"run-{k}.jsonl was modified after the run (its seal does not match)")

    vals = events.of("val")
    start, finish = events.last("start"), events.last("finish")
    out["warnings"] = [e.get("message") for e in events.of("warning")]
    if not self_reported:
        if start is None:
            problems.append(f"repetition {k} never called start()")
        if finish is None:
            problems.append(f"repetition {k} never called finish()")
        if start is not None and start.get("micro_batches"):
            problems.append(f"repetition {k} took {start['micro_batches']} training batch(es) before start() "
                            f"outside warmup(): untimed training")
        for w in events.of("warmup"):
            if not w.get("restored") or w.get("digest_before") != w.get("digest_after"):
                problems.append(f"repetition {k}: warm-up changed the model/optimizer state")
        for v in vals:
            if v.get("tokens") != track.val_tokens:
                problems.append(f"repetition {k}: validation at step {v.get('step')} covered {v.get('tokens')} "
                                f"tokens, the track needs {track.val_tokens}")
                break
        names = {p.get("name") for p in events.of("probe")}
        for p in events.of("probe"):
            if not p.get("passed"):
                problems.append(f"repetition {k}: probe {p.get('name')} failed: {p.get('detail')}")
        if finish is not None and "causality" not in names and "final-validation" not in names:
            problems.append(f"repetition {k}: the causality probe did not run")
    if not vals:
        problems.append(f"repetition {k} has no validation")
        return out

    final = vals[-1]
    counter = "micro_batches" if finish is not None and "micro_batches" in finish else "batches"
    if finish is not None and finish.get(counter) is not None and final.get(counter) is not None \
            and finish[counter] != final[counter]:
        problems.append(f"repetition {k}: trained after its last validation")
    out["final_loss"] = final.get("loss")
    out["timed_s"] = finish.get("timed_s") if finish and finish.get("timed_s") is not None else final.get("timed_s")
    out["batches"] = final.get("batches") if final.get("batches") is not None else final.get("step")
    if self_reported and finish is None:
        problems.append(f"trial {k} is truncated (no final validation)")

    if not self_reported and start is not None and finish is not None:
        timed = finish.get("timed_s", 0.0)
        wall = rep.get("wall_s")
        if wall is not None and timed > wall:
            problems.append(f"repetition {k}: timed {timed:.3f} s exceeds the process wallclock {wall:.3f} s")
        paused = sum(v.get("seconds", 0.0) for v in vals)
        span = finish["wall"] - start["wall"] - paused
        if abs(span - timed) > CLOCK_SLACK_S + CLOCK_SLACK_REL * timed:
            problems.append(f"repetition {k}: clock inconsistent: {span:.3f} s between start and finish outside "
                            f"validation, but {timed:.3f} s timed")
        last = -1.0
        for v in vals:
            if v.get("timed_s", 0) < last - 1e-6 or v.get("timed_s", 0) > timed + 1e-6:
                problems.append(f"repetition {k}: validation times out of order")
                break
            last = v.get("timed_s", 0)
    return out


def verify_run_dir(run_dir: str | Path, write: bool = True) -> dict:
    """Verify a run directory; returns the verdict (and writes verdict.json unless `write` is false)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpeedrunError(f"{run_dir}: not a run directory")
    manifest = evidence.read_json(run_dir / evidence.MANIFEST)
    try:
        track_name = manifest["track"]["name"]
    except (KeyError, TypeError):
        raise SpeedrunError(f"{run_dir / evidence.MANIFEST}: field 'track.name' missing") from None
    track = load_track(track_name)
    self_reported = bool(manifest.get("self_reported"))
    problems: list[str] = []
    warnings: list[str] = []
    if manifest.get("track", {}).get("config_sha256") not in (None, track.config_sha256):
        warnings.append(f"track {track.name}'s config changed since the run; verified against the current one")

    script_text = ""
    if not self_reported:
        script = manifest.get("script") or {}
        path = run_dir / str(script.get("name", ""))
        if not script.get("name") or not path.is_file():
            problems.append("the script copy is missing from the run directory")
        else:
            if evidence.sha256_file(path) != script.get("sha256"):
                problems.append(f"{path.name} changed after the run (sha256 does not match the manifest)")
            script_text = path.read_text(errors="replace")

    reps = manifest.get("repetitions") or [{"k": k, "status": None} for k in evidence.iter_repetitions(run_dir)]
    if not reps:
        problems.append("no repetitions recorded")
    results, loader_events = [], []
    for rep in reps:
        path = evidence.events_path(run_dir, rep["k"])
        if not path.exists():
            results.append({"k": rep["k"], "status": rep.get("status"), "exit_code": rep.get("exit_code"),
                            "final_loss": None, "timed_s": None, "batches": None, "warnings": [],
                            "problems": [f"repetition {rep['k']} left no events (run-{rep['k']}.jsonl)"]})
            continue
        events = evidence.read_events(path)
        loader_events += events.of("loader")
        results.append(check_repetition(track, events, rep, self_reported))
    if not self_reported:
        problems += rule_problems(track, script_text, loader_events)
    for r in results:
        problems += r["problems"]
        warnings += [f"repetition {r['k']}: {w}" for w in r["warnings"]]

    finished = [r for r in results if r["final_loss"] is not None and not r["problems"]]
    losses = [r["final_loss"] for r in finished]
    target = stats.target_test(losses, track.target_val_loss, track.rule)
    metric_key = "timed_s" if track.metric == "wallclock" else "batches"
    values = [r[metric_key] for r in finished if r[metric_key] is not None]
    mean, sd = stats.mean_sd(values)
    qualifies = not problems and target.passed
    verdict = {
        "run_dir": str(run_dir),
        "track": track.name,
        "self_reported": self_reported,
        "qualifies": qualifies,
        "problems": problems,
        "warnings": warnings,
        "target": target.to_dict(),
        "metric": {"name": track.metric, "unit": "s" if track.metric == "wallclock" else "steps",
                   "values": values, "mean": mean, "sd": sd},
        "repetitions": results,
        "script_sha256": (manifest.get("script") or {}).get("sha256"),
        "hardware": manifest.get("hardware"),
        "harness_version": manifest.get("harness_version"),
        "verified_by": __version__,
        "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if write:
        evidence.write_json_atomic(run_dir / evidence.VERDICT, verdict)
    return verdict


def print_verdict(verdict: dict) -> None:
    table = Table(title=f"{verdict['run_dir']}  ({verdict['track']})")
    for col in ("run", "status", "final val loss", "timed s", "batches", "problems"):
        table.add_column(col)
    for r in verdict["repetitions"]:
        loss = f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-"
        timed = f"{r['timed_s']:.2f}" if r["timed_s"] is not None else "-"
        table.add_row(str(r["k"]), str(r["status"]), loss, timed, str(r["batches"] if r["batches"] is not None else "-"),
                      str(len(r["problems"])) if r["problems"] else "")
    console.print(table)
    if verdict["self_reported"]:
        console.print("[yellow]SELF-REPORTED evidence (imported log): no referee clock, no probes, no seal; "
                      "only the statistics below were checked.[/yellow]")
    for p in verdict["problems"]:
        console.print(f"[red]problem:[/red] {p}", highlight=False)
    for w in verdict["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    t, m = verdict["target"], verdict["metric"]
    console.print(f"target {t['target']}: mean final loss {t['mean']:.4f} ± {t['sd']:.4f} over {t['n']} run(s); "
                  f"{t['reason']}", highlight=False)
    if m["values"]:
        console.print(f"{m['name']}: {m['mean']:.3f} ± {m['sd']:.3f} {m['unit']}", highlight=False)
    word = "[green]QUALIFIES[/green]" if verdict["qualifies"] else "[red]DOES NOT QUALIFY[/red]"
    suffix = " (on self-reported numbers only)" if verdict["self_reported"] else ""
    console.print(f"verdict: {word}{suffix}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-check a run directory and write verdict.json")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    verdict = verify_run_dir(args.run_dir)
    print_verdict(verdict)
    return 0 if verdict["qualifies"] else 1
