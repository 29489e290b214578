"""`speedrun verify RUN_DIR`: the verdict, from the run directory alone.

Anyone can re-verify a run without re-running it. This reads the manifest, the script copy and each
repetition's events as the launcher wrote them, and checks that
- the run was refereed (a plain `torchrun` run never qualifies), and the harness, the track file and the data
  files it pinned are the ones installed here now (each difference names the file);
- every repetition exited cleanly, its events are intact (the seal matches) and hold no problem the referee
  found while it ran (rule breaks, phase violations, failed probes, a failed start check, files opened);
- every rank reported: its init carries the repetition's seed; each validation has all ranks, covers exactly
  the track's val tokens, and its loss is the sum of the ranks' sums; every rank's probe passed;
- the clock is consistent: the timed seconds equal finish - start - pauses from the launcher's timestamps and
  never exceed the process wallclock; the last validation directly precedes finish();
- no two repetitions are identical (that would mean the seed had no effect);
- the script's sha256 matches its copy; the track's source rules hold (comments do not count);
- the final losses (or the losses at a declared judging step, `--step`) meet the target by the track's rule.
It writes `verdict.json`, prints a summary, and `qualifies` is true only when all of that holds.

Self-reported evidence (imported logs) is judged by `speedrun.legacy.modded.check_imported`: only the statistics and
the hardware apply, and the verdict says so plainly.
"""

from __future__ import annotations

import argparse
import io
import math
import re
import tokenize
from datetime import datetime, timezone
from pathlib import Path

from speedrun.version import __version__
from speedrun.evidence import rundir
from speedrun.evidence import schema
from speedrun.errors import SpeedrunError

TIMING_SLACK_S = 2e-3
LOSS_REL_TOL = 1e-9
# dense bf16 peak FLOP/s per device, for MFU (datasheet figures)
PEAK_FLOPS = {"H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
              "H200": 989e12, "GH200": 989e12, "A100": 312e12, "B200": 2250e12, "L40S": 362e12}


def strip_comments(source: str) -> str:
    """The source with its comments removed (strings kept: `importlib.import_module("...")` still counts)."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.COMMENT]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(line.split("#", 1)[0] for line in source.splitlines())


def rule_problems(track, script_text: str, loader_events: list[dict]) -> list[str]:
    """The track's checks on the submission source (comments excluded) and on the train shapes it asked for."""
    problems = []
    code = strip_comments(script_text)
    for pattern in track.checks.forbidden:
        m = re.search(pattern, code)
        if m:
            line = code[: m.start()].count("\n") + 1
            problems.append(f"script line {line} matches a pattern track {track.name} forbids: {pattern}")
    for ev in loader_events:
        problems += track.checks.shape_problems(track.name, ev.get("batch_tokens"), ev.get("seq_len"))
    return problems


def _blank(k, rep: dict, problems: list[str]) -> dict:
    return {"k": k, "status": rep.get("status"), "exit_code": rep.get("exit_code"), "wall_s": rep.get("wall_s"),
            "seed": rep.get("seed"), "final_loss": None, "timed_s": None, "batches": None, "tokens": None,
            "problems": problems, "warnings": []}


def check_repetition(track, events: rundir.Events, rep: dict, seed: int | None, step: int | None) -> dict:
    """Check one refereed repetition's events; returns its summary with a list of problems (empty = valid)."""
    k = rep.get("k")
    problems: list[str] = []
    out = _blank(k, rep, problems)
    if rep.get("status") != "ok":
        error = f": {rep['error']}" if rep.get("error") else ""
        problems.append(f"repetition {k} {rep.get('status')} (exit code {rep.get('exit_code')}){error}")
    if not events.sealed:
        problems.append(f"run-{k}.jsonl has no seal (the launcher died before the repetition ended?)")
    elif not events.seal_ok:
        problems.append(f"run-{k}.jsonl was modified after the run (its seal does not match)")
    problems += [f"repetition {k}: {e.get('message')}" for e in events.of("problem")]
    out["warnings"] = [e.get("message") for e in events.of("warning")]

    referee_saw = bool(problems)  # a failed or stopped repetition: do not list every missing phase again
    inits = events.of("init")
    world = inits[0].get("world_size") if inits else None
    if not inits:
        if not referee_saw:
            problems.append(f"repetition {k}: no rank called speedrun.init()")
    else:
        ranks = sorted(e.get("rank") for e in inits)
        if ranks != list(range(world or 0)):
            problems.append(f"repetition {k}: ranks {ranks} reported, the run has {world}")
        for e in inits:
            if seed is not None and e.get("seed") != seed:
                problems.append(f"repetition {k}: rank {e.get('rank')} ran with seed {e.get('seed')}, the launcher "
                                f"chose {seed}")
    for w in events.of("warmup"):
        if not w.get("restored") or w.get("digest_before") != w.get("digest_after"):
            problems.append(f"repetition {k}: warm-up changed the model/optimizer state on rank {w.get('rank')}")

    vals, start, finish = events.of("val"), events.last("start"), events.last("finish")
    if not referee_saw:
        if start is None:
            problems.append(f"repetition {k}: the run never started (no start event)")
        if finish is None:
            problems.append(f"repetition {k}: the run never finished (no finish event)")
        if not vals:
            problems.append(f"repetition {k} has no validation")
    if not vals:
        return out
    for v in vals:
        label = f"repetition {k}: validation at step {v.get('step')}"
        # a monitor validation (referee v3) measures val tokens after the scored ones; only scored ones count
        monitor = v.get("split") == "monitor"
        divisor = v.get("tokens") if monitor and isinstance(v.get("tokens"), int) else track.val_tokens
        if not monitor and v.get("tokens") != track.val_tokens:
            problems.append(f"{label} covered {v.get('tokens')} tokens, the track needs {track.val_tokens}")
        ranks = v.get("ranks") or []
        if world is not None and len(ranks) != world:
            problems.append(f"{label} has {len(ranks)} rank report(s), the run has {world} ranks")
        total = math.fsum(r.get("loss_sum") or 0.0 for r in ranks)
        loss = v.get("loss")
        if not isinstance(loss, (int, float)) or not divisor or not math.isclose(total / divisor, loss,
                                                                   rel_tol=LOSS_REL_TOL, abs_tol=1e-12):
            problems.append(f"{label}: its loss {loss} is not the ranks' sums / val tokens")
        for r in ranks:
            probe = r.get("probe") or {}
            if not probe.get("passed"):
                problems.append(f"{label}: rank {r.get('rank')}'s probe did not pass")

    timeline = vals
    vals = [v for v in vals if v.get("split", "scored") == "scored"]
    if not vals:
        problems.append(f"repetition {k} has no validation of the scored val tokens")
        return out
    if step is not None:
        at = [v for v in vals if v.get("step") == step]
        if not at:
            problems.append(f"repetition {k} has no validation at the judging step {step}")
            return out
        judged = at[-1]
    else:
        judged = vals[-1]
    out["final_loss"] = judged.get("loss")
    out["batches"] = judged.get("batches")
    out["timed_s"] = judged.get("timed_s") if step is not None else (finish or {}).get("timed_s")

    if start is not None and finish is not None:
        out["tokens"] = finish.get("tokens")
        if timeline[-1].get("batches") != finish.get("batches"):
            problems.append(f"repetition {k} trained after its last validation")
        # time outside the clock beyond its budgets counts as timed (the `budget` event, each val's untimed_s)
        paused = -float((events.last("budget") or {}).get("charged_s", 0.0))
        for v in timeline:
            if v.get("t", 0.0) > finish.get("t", 0.0):  # the scored validation after finish(): clock stopped
                continue
            expect = v.get("t", 0.0) - start.get("t", 0.0) - paused
            if abs(expect - v.get("timed_s", 0.0)) > TIMING_SLACK_S:
                problems.append(f"repetition {k}: clock inconsistent at validation step {v.get('step')}")
                break
            paused += v.get("untimed_s", v.get("seconds", 0.0))
        timed = finish.get("timed_s", 0.0)
        span = finish.get("t", 0.0) - start.get("t", 0.0) - paused
        if abs(span - timed) > TIMING_SLACK_S:
            problems.append(f"repetition {k}: clock inconsistent: {span:.4f} s between start and finish outside "
                            f"validation, but {timed:.4f} s timed")
        wall = rep.get("wall_s")
        if wall is not None and timed > wall:
            problems.append(f"repetition {k}: timed {timed:.3f} s exceeds the process wallclock {wall:.3f} s")
    return out


def _pin_problems(manifest: dict, track) -> tuple[list[str], list[str]]:
    """Harness, track and data of the run against what is installed here now."""
    from speedrun.data import streams
    from speedrun.evidence import pins

    problems, warnings = [], []
    recorded = manifest.get("pins")
    if not recorded:
        return [f"the run has no pins (made by harness {manifest.get('harness_version')}, before pins existed): "
                f"re-run it under this harness"], []
    hasher = pins.Hasher()
    problems += [f"{p}: the run was made with a different harness" for p in pins.diff_harness(recorded["harness"], hasher)]
    tpin = recorded.get("track") or {}
    if tpin.get("sha256") != track.config_sha256:
        problems.append(f"track file {track.path} differs from the one the run used ({tpin.get('path')})")
    try:
        train, val = streams.track_files(track, generate=False)
        present = {p.name: p for p in train + val}
    except SpeedrunError:
        present = {}
    missing = []
    for name, pin in (recorded.get("data") or {}).items():
        path = present.get(name)
        if path is None:
            missing.append(name)
        elif hasher.sha256(path) != pin.get("sha256"):
            problems.append(f"data file {name} differs from the one the run used (sha256 {pin.get('sha256', '')[:12]}...)")
    if missing:
        warnings.append(f"{len(missing)} data file(s) of the run are not present here, so not re-checked "
                        f"(e.g. {missing[0]})")
    hasher.flush()
    return problems, warnings


def throughput(manifest: dict, results: list[dict], events_by_k: dict) -> dict:
    """Tokens per second, model FLOPs per token (6N plus attention when the script declares it, else 6N) and
    MFU against the device's peak when the device is known."""
    rates = [r["tokens"] / r["timed_s"] for r in results if r.get("tokens") and r.get("timed_s")]
    tokens_per_s = math.fsum(rates) / len(rates) if rates else None
    model = None
    for events in events_by_k.values():
        model = events.last("model") or model
    flops = model.get("flops_per_token") if model else None
    fp = manifest.get("hardware_fingerprint") or {}
    peak = None
    if fp.get("kind") == "cuda":
        name = fp.get("gpu_name") or ""
        per = next((v for key, v in PEAK_FLOPS.items() if key in name), None)
        if per:
            peak = per * manifest.get("nproc_per_node", 1) * manifest.get("nnodes", 1)
    mfu = tokens_per_s * flops / peak if tokens_per_s and flops and peak else None
    return {"tokens_per_s": tokens_per_s, "flops_per_token": flops,
            "flops_source": model.get("flops_source") if model else None, "peak_flops": peak, "mfu": mfu}


def identical_repetitions(results: list[dict]) -> list[str]:
    seen: dict[float, int] = {}
    problems = []
    for r in results:
        loss = r.get("final_loss")
        if loss is None:
            continue
        if loss in seen:
            problems.append(f"repetitions {seen[loss]} and {r['k']} have identical final losses ({loss!r}): the "
                            f"seed has no effect, so they are not independent runs")
        else:
            seen[loss] = r["k"]
    return problems


def verify_run_dir(run_dir: str | Path, write: bool = True, step: int | None = None) -> dict:
    """Verify a run directory; returns the verdict (and writes verdict.json unless `write` is false)."""
    from speedrun.judge import stats
    from speedrun.tracks import load_track

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpeedrunError(f"{run_dir}: not a run directory")
    manifest = rundir.read_json(run_dir / rundir.MANIFEST)
    try:
        track_name = manifest["track"]["name"]
    except (KeyError, TypeError):
        raise SpeedrunError(f"{run_dir / rundir.MANIFEST}: field 'track.name' missing") from None
    track = load_track(track_name)
    self_reported = bool(manifest.get("self_reported"))
    refereed = bool(manifest.get("refereed", False)) and not self_reported
    problems: list[str] = []
    warnings: list[str] = []
    events_by_k: dict = {}
    judged_step = step

    if self_reported:
        from speedrun.legacy import modded

        if step is not None:
            manifest = dict(manifest, requested_step=step)
        imported = modded.check_imported(run_dir, manifest, track)
        results, problems, warnings, target = imported.repetitions, list(imported.problems), \
            list(imported.warnings), imported.target
        judged_step = imported.judged_step
    else:
        if not refereed:
            problems.append("unrefereed run (started without `speedrun run`): it can never qualify for a record")
        malformed = schema.check(manifest, schema.MANIFEST_FIELDS, rundir.MANIFEST)
        if malformed:
            problems.append(malformed)
        else:
            for rep in manifest["repetitions"]:
                malformed = schema.check(rep, schema.REPETITION_FIELDS, f"{rundir.MANIFEST} repetition")
                if malformed:
                    problems.append(malformed)
                    break
        pin_problems, pin_warnings = _pin_problems(manifest, track)
        problems += pin_problems
        warnings += pin_warnings
        script = manifest.get("script") or {}
        path = run_dir / str(script.get("name", ""))
        script_text = ""
        if not script.get("name") or not path.is_file():
            problems.append("the script copy is missing from the run directory")
        else:
            if rundir.sha256_file(path) != script.get("sha256"):
                problems.append(f"{path.name} changed after the run (sha256 does not match the manifest)")
            script_text = path.read_text(errors="replace")
        reps = manifest.get("repetitions") or []
        if not reps:
            problems.append("no repetitions recorded")
        seeds = manifest.get("seeds") or []
        if len(set(seeds)) != len(seeds):
            problems.append(f"the repetitions' seeds are not distinct: {seeds}")
        results, loader_events = [], []
        for rep in reps:
            k = rep.get("k")
            path = rundir.events_path(run_dir, k)
            if rep.get("status") == "stopped":
                results.append(_blank(k, rep, [f"repetition {k} was not run: {rep.get('error')}"]))
                continue
            if not path.exists():
                results.append(_blank(k, rep, [f"repetition {k} left no events (run-{k}.jsonl)"]))
                continue
            try:
                events = rundir.read_events(path)
            except SpeedrunError as exc:
                results.append(_blank(k, rep, [str(exc)]))
                continue
            events_by_k[k] = events
            loader_events += events.of("loader")
            seed = rep.get("seed", seeds[k - 1] if isinstance(k, int) and 0 < k <= len(seeds) else None)
            results.append(check_repetition(track, events, rep, seed, step))
        problems += rule_problems(track, script_text, loader_events)
        for r in results:
            problems += r["problems"]
            warnings += [f"repetition {r['k']}: {w}" for w in r["warnings"]]
        problems += identical_repetitions(results)
        finished = [r for r in results if r["final_loss"] is not None and not r["problems"]]
        target = stats.target_test([r["final_loss"] for r in finished], track.target_val_loss, track.rule)

    metric_key = "timed_s" if track.metric == "wallclock" else "batches"
    good = [r for r in results if r.get("final_loss") is not None and not r.get("problems")]
    values = [r[metric_key] for r in good if r.get(metric_key) is not None]
    mean, sd = stats.mean_sd(values)
    verdict = {
        "run_dir": str(run_dir),
        "track": track.name,
        "self_reported": self_reported,
        "refereed": refereed,
        "qualifies": not problems and bool(target.passed),
        "problems": problems,
        "warnings": warnings,
        "target": target.to_dict(),
        "judged_step": judged_step,
        "metric": {"name": track.metric, "unit": "s" if track.metric == "wallclock" else "steps",
                   "values": values, "mean": mean, "sd": sd},
        "throughput": throughput(manifest, good, events_by_k) if not self_reported else {},
        "repetitions": results,
        "script_sha256": (manifest.get("script") or {}).get("sha256"),
        "hardware": manifest.get("hardware"),
        "hardware_fingerprint": manifest.get("hardware_fingerprint"),
        "harness_version": manifest.get("harness_version"),
        "verified_by": __version__,
        "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if write:
        rundir.write_json_atomic(run_dir / rundir.VERDICT, verdict)
    return verdict


def _num(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def print_verdict(verdict: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"{verdict['run_dir']}  ({verdict['track']})")
    for col in ("run", "status", "final val loss", "timed s", "steps", "problems"):
        table.add_column(col)
    for r in verdict["repetitions"]:
        table.add_row(str(r["k"]), str(r.get("status")), _num(r.get("final_loss"), ".4f"), _num(r.get("timed_s"), ".2f"),
                      str(r["batches"] if r.get("batches") is not None else "-"),
                      str(len(r["problems"])) if r.get("problems") else "")
    console.print(table)
    if verdict["self_reported"]:
        console.print("SELF-REPORTED evidence (imported log): no referee clock, no probes, no seal; only the "
                      "statistics and the hardware were checked.", style="yellow", markup=False)
    for p in verdict["problems"]:
        console.print("problem: " + p, style="red", markup=False)
    for w in verdict["warnings"]:
        console.print("warning: " + w, style="yellow", markup=False)
    t, m = verdict["target"], verdict["metric"]
    if t["n"]:
        console.print(f"target {t['target']}: mean loss {_num(t['mean'], '.4f')} ± {_num(t['sd'], '.4f')} over "
                      f"{t['n']} run(s)" + (f" at step {verdict['judged_step']}" if verdict.get("judged_step") else "")
                      + f"; {t['reason']}", markup=False)
    else:
        console.print(f"target {t['target']}: no run to judge ({t['reason']})", markup=False)
    if m["values"]:
        console.print(f"{m['name']}: {_num(m['mean'], '.3f')} ± {_num(m['sd'], '.3f')} {m['unit']}", markup=False)
    tp = verdict.get("throughput") or {}
    if tp.get("tokens_per_s"):
        extra = f", {tp['flops_per_token']:.3g} FLOPs/token" if tp.get("flops_per_token") else ""
        extra += f", MFU {tp['mfu']:.1%}" if tp.get("mfu") else ""
        console.print(f"throughput: {tp['tokens_per_s']:,.0f} tokens/s{extra}", markup=False)
    word = "[green]QUALIFIES[/green]" if verdict["qualifies"] else "[red]DOES NOT QUALIFY[/red]"
    suffix = " (on self-reported numbers only)" if verdict["self_reported"] else ""
    console.print(f"verdict: {word}{suffix}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-check a run directory and write verdict.json")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--step", type=int, help="judge every repetition at this declared step (optimization track; "
                                            "default: each repetition's final validation)")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    verdict = verify_run_dir(args.run_dir, step=args.step)
    print_verdict(verdict)
    return 0 if verdict["qualifies"] else 1
