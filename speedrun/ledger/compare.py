"""How a run becomes a record: same-hardware comparison, replay, and `speedrun record add`.

`speedrun compare A B --track T --runs K` runs two scripts (or records) interleaved, A B A B ..., on this
machine, so drifting load or thermals hit both alike. Each side gets its own verified run directory; the
result (`compare.json`) holds the time ratio A/B, a one-sided Welch test that A's times are lower, each
side's loss verdict, and the hardware it ran on. `record add` uses it (or accepts one made earlier on the
same hardware).

`speedrun replay NNN --track T` re-runs a record's script with its recorded seeds under the current harness,
verifies it, and reports its time and val losses against the recorded ones (identical on the same machine
class), naming the hardware fingerprint fields that differ.

`speedrun record add RUN_DIR` re-verifies the run, checks that it beats the current record -- wallclock
tracks: faster in a `compare` on the same hardware (run now, or given with `--compare`); the optimization
track: fewer steps, with modded-nanogpt's pairwise statistic recorded -- and writes the entry through
`speedrun.ledger.store` (which only stores). The ledger never imports this module.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Callable

from speedrun.version import API_VERSION, __version__
from speedrun.evidence import rundir
from speedrun.evidence import hardware
from speedrun.referee import launcher
from speedrun.ledger import store
from speedrun.errors import SpeedrunError, signal_name, stop_signal
from speedrun.report import SILENT, Reporter
from speedrun.tracks import Track, load_track

RESULT = rundir.COMPARE


def resolve_script(ref: str, track: Track) -> Path:
    """A script path, a record directory, or a record number (`7`, `007`, `tiny/007`)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir() and (path / rundir.RECORD_SCRIPT).is_file():
        return path / rundir.RECORD_SCRIPT
    name, _, number = ref.rpartition("/")
    if number.isdigit():
        return store.find_record(name or track.name, int(number)).script
    raise SpeedrunError(f"{ref}: not a script, a record directory or a record number")


def _metric(verdict: dict) -> list[float]:
    return verdict["metric"]["values"]


def compare(a: Path, b: Path, track: Track, runs: int = 3, nproc: int = 2, out: Path | None = None,
            seed: int = 0, script_args: list[str] | None = None, timeout: float | None = None,
            report: Reporter = SILENT, progress: Reporter | None = None, sandbox: bool = True,
            replica: bool | None = None) -> Path:
    """Run A and B interleaved `runs` times each; write and return the comparison directory. `report` hears
    what is compared and the result (`compare_lines`), `progress` (default: `report`) each repetition. `sandbox`: run
    the ranks in the OS sandbox. Ctrl-C (or SIGTERM) keeps both sides' runs so far, each with a verdict that says
    interrupted, writes no result and raises `launcher.Interrupted` naming the comparison directory."""
    from speedrun.judge import stats
    from speedrun.judge import verify

    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out = launcher.runs_root() / "compare" / f"{stamp}_{a.stem}-vs-{b.stem}"
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SpeedrunError(f"{out}: output directory exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or report
    sides = {name: launcher.Launch(script, track, nproc, runs, rundir.compare_side(out, name), seed, script_args or [],
                                   {}, timeout=timeout, report=progress, sandbox=sandbox, replica=replica)
             for name, script in zip(rundir.COMPARE_SIDES, (a, b))}
    report.line(f"speedrun compare A={a} B={b} on track {track.name}: {runs} runs each, interleaved -> {out}")
    k, name = 1, "A"
    try:
        for k in range(1, runs + 1):
            for name in ("A", "B") if k % 2 else ("B", "A"):
                sides[name].repetition(k)
    except KeyboardInterrupt as exc:  # each side keeps what ran and a verdict that says interrupted; no result
        with launcher.shielded():
            for job in sides.values():
                job.interrupted(k, exc)
                verify.verify_run_dir(job.run_dir)
        report.line(f"comparison interrupted ({stop_signal(exc)} in repetition {k} of side {name}): no result; "
                    f"the runs so far are kept in {out}, each side's verdict says interrupted")
        raise launcher.Interrupted(out, signal_name(exc)) from None
    for job in sides.values():
        job.replica_check()
        job.close()
    verdicts = {name: verify.verify_run_dir(job.run_dir) for name, job in sides.items()}
    result = {
        "track": track.name,
        "metric": track.metric,
        "hardware": sides["A"].manifest["hardware"],
        "hardware_fingerprint": sides["A"].manifest["hardware_fingerprint"],
        "hostname": sides["A"].manifest["env"]["hostname"],
        "harness_version": __version__,
        "runs": runs,
        "nproc_per_node": nproc,
        "sides": {name: {"script": str(rundir.script_path(job.run_dir, job.manifest)),
                         "script_sha256": job.manifest["script"]["sha256"],
                         "run_dir": job.run_dir.name, "qualifies": verdicts[name]["qualifies"],
                         "problems": verdicts[name]["problems"], "values": _metric(verdicts[name]),
                         "losses": [r["final_loss"] for r in verdicts[name]["repetitions"]
                                    if r.get("final_loss") is not None and not r.get("problems")],
                         "mean": verdicts[name]["metric"]["mean"], "sd": verdicts[name]["metric"]["sd"],
                         "val_loss_mean": verdicts[name]["target"]["mean"],
                         "loss_verdict": verdicts[name]["target"]["reason"]}
                  for name, job in sides.items()},
    }
    a_side, b_side = result["sides"]["A"], result["sides"]["B"]
    if track.timed:
        faster = stats.faster_test(a_side["values"], b_side["values"])
        result.update(test="welch", ratio=faster.ratio, p_value=faster.p_value, threshold=faster.threshold,
                      a_faster=faster.passed, reason=faster.reason)
    else:  # steps do not depend on the machine; the pairwise rule says whether the gain is significant
        pair = stats.pairwise_test(a_side["losses"], a_side["values"], b_side["losses"], b_side["values"])
        ratio = a_side["mean"] / b_side["mean"] if a_side["mean"] and b_side["mean"] else float("nan")
        result.update(test="pairwise", ratio=ratio, p_value=None, statistic=pair.statistic, threshold=pair.margin,
                      a_faster=bool(ratio < 1), pairwise_significant=bool(pair.passed), reason=pair.reason)
    rundir.write_json_atomic(out / RESULT, result)
    for text in compare_lines(result):
        report.line(text)
    return out


def check_against(compare_dir: Path, new_sha: str, prior, fingerprint: dict | None) -> dict:
    """Does this comparison show the new script (A) beating the prior record (B) on the run's hardware?"""
    result = rundir.read_json(Path(compare_dir) / RESULT)
    a, b = result["sides"]["A"], result["sides"]["B"]
    if a["script_sha256"] != new_sha:
        raise SpeedrunError(f"{compare_dir}: side A is not this run's script")
    if b["script_sha256"] != prior.script_sha256:
        raise SpeedrunError(f"{compare_dir}: side B is not record #{prior.number}'s script")
    diff = hardware.differences(result.get("hardware_fingerprint"), fingerprint)
    if diff:
        raise SpeedrunError(f"{compare_dir}: compared on other hardware than the run's ({'; '.join(diff)})")
    passed = bool(result["a_faster"] and a["qualifies"] and result["ratio"] < 1)
    return {"against": prior.number, "test": result.get("test", "welch"), "ratio": result["ratio"],
            "p_value": result.get("p_value"), "statistic": result.get("statistic"),
            "threshold": result["threshold"], "runs": result["runs"], "hardware": result["hardware"],
            "mean_new": a["mean"], "mean_prior": b["mean"], "passed": passed, "reason": result.get("reason", "")}


def compare_lines(result: dict) -> list[str]:
    """A comparison's result (`compare.json`) in three lines: each side, then the ratio and the test."""
    a, b = result["sides"]["A"], result["sides"]["B"]
    unit = "s" if result["metric"] == "wallclock" else "steps"
    lines = [f"{name}: {side['mean']:.3f} ± {side['sd']:.3f} {unit}  val loss {side['val_loss_mean']:.4f}  "
             f"{'qualifies' if side['qualifies'] else 'does not qualify'} ({side['loss_verdict']})"
             for name, side in (("A", a), ("B", b))]
    if result.get("test") == "pairwise":
        verdict = f"pairwise statistic {result['statistic']:.5f} ({result.get('reason', '')})"
    else:
        verdict = f"one-sided Welch p = {result['p_value']:.3g}"
    lines.append(f"ratio A/B = {result['ratio']:.4f}; {verdict}: "
                 f"{'A is better' if result['a_faster'] else 'A is not shown better'} on {result['hardware']}")
    return lines


def prefix_replay(track: Track, number: int, steps: int, nproc: int | None = None, out: Path | None = None,
                  timeout: float | None = None, report: Reporter = SILENT, sandbox: bool = True) -> dict:
    """Re-run the first `steps` logged steps of record `number`'s first repetition (its recorded seed) and
    compare the logged train losses with the recorded ones: cheap, and exact on the same machine class.
    `report` hears the repetition's progress; the returned report says whether the steps match."""
    rec = store.find_record(track.name, number)
    if not rundir.events_path(rec.path, 1).is_file():
        raise SpeedrunError(f"record #{number} has no recorded run to replay against")
    recorded = rundir.read_json(rec.path / rundir.MANIFEST)
    logged = [e["scalars"] for e in rundir.read_events(rundir.events_path(rec.path, 1)).of("log")][:steps]
    if len(logged) < steps:
        raise SpeedrunError(f"record #{number} logged {len(logged)} steps (run.log); a prefix replay of {steps} "
                            f"needs that many")
    job = launcher.Launch(rec.script, track, nproc or recorded.get("nproc_per_node", 1), 1,
                          str(out) if out else None, (recorded.get("seeds") or [0])[0], [], {}, timeout=timeout,
                          stop_after_logs=steps, report=report, sandbox=sandbox, replica=False)
    job.repetition(1)
    job.close()
    replayed = [e["scalars"] for e in rundir.read_events(rundir.events_path(job.run_dir, 1)).of("log")][:steps]
    diff = hardware.differences(recorded.get("hardware_fingerprint"), job.manifest.get("hardware_fingerprint"))
    return {"record": number, "run_dir": str(job.run_dir), "steps": steps, "recorded": logged,
            "replayed": replayed, "identical": replayed == logged, "same_hardware": not diff,
            "flags": [f"recorded on other hardware ({'; '.join(diff)})"] if diff else []}


def replay(track: Track, number: int, runs: int = 3, nproc: int | None = None, out: Path | None = None,
           timeout: float | None = None, report: Reporter = SILENT, sandbox: bool = True,
           replica: bool | None = None) -> dict:
    """Re-run record `number` with its recorded seeds, verify it, and compare with the recorded run.

    On the same machine class (equal hardware fingerprints) and harness, a replay reproduces the recorded
    val losses exactly; elsewhere it says which fingerprint fields differ and times are not comparable.
    `report` hears the run's progress; the returned report holds the replay's verdict (`verdict`) and what
    the command shows of the comparison (`unit`, `recorded_verified`, `note`)."""
    from speedrun.judge import verify

    rec = store.find_record(track.name, number)
    recorded = rundir.read_json(rec.path / rundir.MANIFEST) if (rec.path / rundir.MANIFEST).exists() else {}
    nproc = nproc or recorded.get("nproc_per_node", 1)
    seed = (recorded.get("seeds") or [0])[0]
    run_dir = launcher.launch(rec.script, track, nproc, runs, str(out) if out else None, seed, [], {},
                              timeout=timeout, report=report, sandbox=sandbox, replica=replica)
    judgement = verify.judge(run_dir)
    verdict = judgement.write()
    manifest = judgement.manifest
    flags = []
    if rec.harness_version != __version__:
        flags.append(f"recorded under harness {rec.harness_version}, replayed under {__version__}")
    diff = hardware.differences(recorded.get("hardware_fingerprint"), manifest.get("hardware_fingerprint"))
    if diff:
        flags.append(f"recorded on {rec.hardware or 'unknown hardware'}, replayed on {manifest['hardware']} "
                     f"({'; '.join(diff)}): times are not comparable")
    recorded_losses = [r.get("final_loss") for r in (store.recorded_verdict(rec) or {}).get("repetitions", [])]
    replayed_losses = [r.get("final_loss") for r in verdict["repetitions"]]
    same = [a == b for a, b in zip(recorded_losses, replayed_losses) if a is not None and b is not None]
    ratio = verdict["metric"]["mean"] / rec.metric_mean if rec.verified and rec.metric_mean else None
    result = {"record": number, "run_dir": str(run_dir), "qualifies": verdict["qualifies"],
              "recorded": rec.metric_mean, "replayed": verdict["metric"]["mean"], "ratio": ratio, "flags": flags,
              "losses_recorded": recorded_losses, "losses_replayed": replayed_losses,
              "losses_identical": bool(same) and all(same), "same_hardware": not diff,
              "unit": track.metric_unit, "recorded_verified": rec.verified, "note": rec.note, "verdict": verdict}
    return result


def _mean_wall(manifest: dict | None) -> float | None:
    walls = [r.get("wall_s") for r in (manifest or {}).get("repetitions") or [] if r.get("wall_s")]
    return sum(walls) / len(walls) if walls else None


def comparison_plan(manifest: dict, prior: store.Record, runs: int) -> str:
    """What `record add` is about to run to time a run against the current record, and roughly how long it
    takes, from the process wallclock both sides' own evidence recorded."""
    try:
        prior_manifest = rundir.read_json(prior.path / rundir.MANIFEST)
    except SpeedrunError:
        prior_manifest = None
    new, old = _mean_wall(manifest), _mean_wall(prior_manifest)
    nproc = manifest.get("nproc_per_node", 1)
    what = (f"{2 * runs} runs ({runs} of this script and {runs} of record #{prior.number}, interleaved, "
            f"{nproc} process(es) each)")
    if new and old:
        return f"timing it side by side with record #{prior.number}: {what}, about {runs * (new + old) / 60:.0f} min"
    return f"timing it side by side with record #{prior.number}: {what}"


def refuse_unsandboxed(run_dir: Path, verdict: dict) -> None:
    """A record's ranks ran in the OS sandbox (`speedrun.referee.sandbox`): a run without it, or evidence that
    does not say, is refused with one line."""
    if not verdict.get("sandboxed"):
        raise SpeedrunError(f"{run_dir} ran without the OS sandbox (sandbox: {verdict.get('sandbox', 'not recorded')}): "
                            f"only sandboxed runs can be records; re-run it without --no-sandbox where bwrap works")


def refuse_unchecked(run_dir: Path, verdict: dict) -> None:
    """A record's every repetition was re-checked by the replica (`speedrun.referee.replica`): a run without the
    check, or with repetitions it could not check, is refused with one line saying why."""
    replica = verdict.get("replica") or {}
    if not replica.get("checked"):
        why = "; ".join(f"repetition {k}: {w}" for k, w in (replica.get("unchecked") or {}).items())
        raise SpeedrunError(f"{run_dir} was not re-checked by the replica ({why or replica.get('status') or 'not recorded'}): "
                            f"only runs whose every repetition the replica checked can be records")


def add_record(run_dir: Path, description: str, contributors: list[str], *, track_name: str | None = None,
               slug: str | None = None, compare_dir: Path | None = None, compare_runs: int = 3,
               systems_speedup: bool = False, step: int | None = None, root: Path | None = None,
               report: Reporter = SILENT, progress: Reporter | None = None,
               confirm: Callable[[str], bool] | None = None) -> store.Record:
    """Verify `run_dir`, check it beats the current record (wallclock: timed side by side on the same
    hardware; steps: fewer steps, with the pairwise statistic recorded), and add it to the ledger. A
    comparison run now tells `report` and `progress` how it goes (see `compare`); before it starts, `confirm`
    is handed the plan (what runs, about how long) and may refuse it (None: go ahead)."""
    root = root or store.records_dir()
    run_dir = Path(run_dir)
    from speedrun.judge import stats
    from speedrun.judge import verify

    manifest = rundir.read_json(run_dir / rundir.MANIFEST)
    command = manifest.get("command") or []
    script_name = (manifest.get("script") or {}).get("name", "")
    tail = command[next((i for i, c in enumerate(command) if script_name and c.endswith(script_name)),
                        len(command)) + 1:]
    if tail:
        raise SpeedrunError(f"{run_dir} was launched with script arguments {tail}: a record must run without "
                            f"arguments (bake them into the script) so that replay and compare reproduce it")
    judgement = verify.judge(run_dir, step=step, manifest=manifest)
    verdict = judgement.write()
    track = judgement.track
    if track_name and track_name != track.name:
        raise SpeedrunError(f"{run_dir} is a run of track {track.name}, not {track_name}")
    if verdict["self_reported"]:
        raise SpeedrunError(f"{run_dir} holds self-reported (imported) evidence; only refereed runs can be records")
    if verdict["problems"]:
        raise SpeedrunError(f"{run_dir} is not verified: {verdict['problems'][0]}")
    refuse_unsandboxed(run_dir, verdict)
    refuse_unchecked(run_dir, verdict)
    if systems_speedup and not track.checks.systems_speedup_without_loss_test:
        raise SpeedrunError(f"track {track.name} does not accept systems speedups without the loss test")
    if not verdict["target"]["passed"] and not systems_speedup:
        raise SpeedrunError(f"{run_dir} does not meet the target: {verdict['target']['reason']}")
    sha = manifest["script"]["sha256"]
    for rec in store.load_records(track.name, root):
        if rec.script_sha256 == sha:
            raise SpeedrunError(f"this script is already recorded as #{rec.number} ({rec.path.name})")

    prior = store.current_record(track.name, root)
    metric = verdict["metric"]
    target = verdict["target"]
    comparison: dict = {}
    compare_file = None
    if prior is not None and track.metric == "steps":
        # steps do not depend on the machine: no re-run; fewer steps makes a record, and the pairwise rule
        # (loss difference plus steps saved, at the track's slope) says whether the gain is significant
        pair = stats.pairwise_from_summary(target["mean"], target["n"], metric["mean"], prior.val_loss_mean,
                                           prior.n_runs, prior.metric_mean)
        comparison = {"against": prior.number, "test": "pairwise", "statistic": pair.statistic,
                      "threshold": pair.margin, "significant": pair.passed, "reason": pair.reason,
                      "mean_new": metric["mean"], "mean_prior": prior.metric_mean,
                      "passed": metric["mean"] < prior.metric_mean}
        if not comparison["passed"]:
            raise SpeedrunError(f"not fewer steps than record #{prior.number}: {metric['mean']:g} vs "
                                f"{prior.metric_mean:g}")
    elif prior is not None:
        if compare_dir is None:
            plan = comparison_plan(manifest, prior, compare_runs)
            if confirm is not None and not confirm(plan):
                raise SpeedrunError(f"record add stopped before the comparison ({plan}); nothing was added")
            report.line(plan)
            compare_dir = compare(rundir.script_path(run_dir, manifest), prior.script, track,
                                  runs=compare_runs, nproc=manifest.get("nproc_per_node", 1), report=report,
                                  progress=progress)
        comparison = check_against(Path(compare_dir), sha, prior, manifest.get("hardware_fingerprint"))
        compare_file = Path(compare_dir) / RESULT
        if not comparison["passed"]:
            raise SpeedrunError(f"not faster than record #{prior.number} on this hardware: time ratio "
                                f"{comparison['ratio']:.4f}, one-sided Welch p = {comparison['p_value']:.3g} "
                                f"(needs p < {comparison['threshold']})")
        if prior.hardware_fingerprint:
            diff = hardware.differences(prior.hardware_fingerprint, manifest.get("hardware_fingerprint"))
            if diff:
                comparison["note"] = (f"record #{prior.number} was recorded on other hardware ({'; '.join(diff)}); "
                                      f"it was re-timed here for this comparison")

    with store.locked(track.name, root):
        existing = store.load_records(track.name, root)
        number = max((r.number for r in existing), default=0) + 1
        tp = verdict.get("throughput") or {}
        record = store.Record(
            number=number, slug=store.slugify(slug or description), date=date.today().isoformat(), track=track.name,
            description=description, contributors=contributors, verified=True, metric=track.metric,
            script_sha256=sha, harness_version=manifest.get("harness_version", __version__),
            api_version=manifest.get("api_version", API_VERSION), hardware=manifest.get("hardware", ""),
            metric_mean=metric["mean"], metric_sd=metric["sd"], val_loss_mean=target["mean"],
            val_loss_sd=target["sd"], n_runs=target["n"], p_value=target["p_value"],
            prior=prior.number if prior else 0, comparison=comparison, judged_step=verdict.get("judged_step"),
            throughput={k: tp.get(k) for k in ("tokens_per_s", "flops_per_token", "mfu")},
            hardware_fingerprint=manifest.get("hardware_fingerprint") or {},
            note="systems speedup: accepted on time alone" if systems_speedup and not target["passed"] else "")
        files = store.evidence_files(run_dir, manifest)
        if compare_file is not None:
            files[rundir.COMPARE] = compare_file
        entry_manifest = dict(manifest, script=dict(manifest["script"], name=rundir.RECORD_SCRIPT,
                                                    original_name=manifest["script"]["name"]))
        store.write_entry(root, record, files, entry_manifest)
    store.write_tables(root)
    return record


def _recorded_nproc(script: Path) -> int | None:
    manifest = script.parent / rundir.MANIFEST
    if manifest.is_file():
        try:
            return int(rundir.read_json(manifest).get("nproc_per_node") or 0) or None
        except (SpeedrunError, TypeError, ValueError):
            return None
    return None


def default_nproc(track: Track, incumbent: Path | None = None, records_dir: Path | None = None) -> tuple[int, str]:
    """The process count a comparison runs each side with when not told, and where it comes from (for the
    CLI to say): the incumbent's own record evidence, else the track's current record's, else the process
    count the track's hardware names ("8xH100" -> 8, "cpu-2core" -> 2), else 1. A comparison at one rank of
    an 8-rank record measures something else than the record did."""
    import re

    if incumbent is not None:
        recorded = _recorded_nproc(incumbent)
        if recorded:
            return recorded, f"the incumbent's evidence ({incumbent.parent / rundir.MANIFEST})"
    try:
        current = store.current_record(track.name, records_dir)
    except SpeedrunError:  # an unreadable ledger does not decide a default
        current = None
    if current is not None and current.path is not None:
        recorded = _recorded_nproc(current.path / rundir.RECORD_SCRIPT)
        if recorded:
            return recorded, f"record #{current.number} of track {track.name}"
    m = re.fullmatch(r"(\d+)x\S+|cpu-(\d+)core", track.hardware or "")
    if m and int(m.group(1) or m.group(2)) > 0:
        return int(m.group(1) or m.group(2)), f"track {track.name}'s hardware {track.hardware}"
    return 1, "no record or hardware count to go by"
