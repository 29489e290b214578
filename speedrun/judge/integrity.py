"""Referee v3's checks of a run directory, for the verdict: the sandbox, the evidence's own hashes, and figures
no honest run can show.

Why a module of its own: `speedrun.judge.verify` assembles the verdict; these are three self-contained
questions it asks of the manifest and the events, each answered with readable phrases.

- Sandbox: did the ranks run in the OS sandbox (`speedrun.referee.sandbox`)? A run without it still gets a
  verdict, but never becomes a record (`speedrun.ledger.compare.refuse_unsandboxed`); old evidence that does
  not say is "not recorded".
- Evidence: the launcher keeps each repetition's sha256 of `run-K.jsonl` in the manifest as it seals it, and
  at the end of the run re-checks them and re-reads every pinned file (`end_check`); any difference then, or
  between those hashes and the files now, is a problem.
- Plausibility: a final val loss below the track's entropy floor (nothing can beat the generator's entropy
  rate: the figure is not a model's loss), and a timed run of zero steps.
- The replica check (`speedrun.referee.replica`): the scored logits against the sealed model loaded afresh in
  a process that never saw what follows each checked position. A mean difference over its bar, or logits that
  are not the sealed model's, is a problem; a repetition the replica did not check is no problem here, but it
  never becomes a record (`speedrun.ledger.compare.refuse_unchecked`).
- Blind positions, all repetitions pooled: the referee judges each repetition's blind gap on its own
  (`speedrun.referee.repetition`); a peek kept under that bar in every repetition still lowers all of them, and
  pooling n repetitions lowers the bar by sqrt(n).
"""

from __future__ import annotations

import math
from pathlib import Path

from speedrun.evidence import rundir, schema
from speedrun.judge import stats


def sandbox_status(manifest: dict) -> tuple[bool, str]:
    """(the ranks ran in the OS sandbox, how the verdict says it)."""
    label = manifest.get("sandbox")
    if manifest.get("self_reported"):
        return False, "not applicable (self-reported evidence)"
    if not isinstance(label, str):
        return False, f"not recorded (harness {manifest.get('harness_version', '?')})"
    if label == "none":
        return False, f"none ({manifest.get('sandbox_reason') or 'no reason recorded'})"
    return True, label


def evidence_problems(run_dir: Path, manifest: dict) -> list[str]:
    """The launcher's end-of-run check, and each repetition's events against the hash it kept."""
    problems = [f"at the end of the run: {p}" for p in (manifest.get("end_check") or {}).get("problems") or []]
    for rep in manifest.get("repetitions") or []:
        digest = rep.get("events_sha256") if isinstance(rep, dict) else None
        if not isinstance(digest, str):
            continue
        path = rundir.events_path(run_dir, rep.get("k"))
        if not path.exists():
            problems.append(f"{path.name} is gone (the manifest keeps its sha256)")
        elif rundir.sha256_file(path) != digest:
            problems.append(f"{path.name} differs from the sha256 the launcher kept when it sealed it")
    return problems


def plausibility(track, results: list[dict], events_by_k: dict) -> list[str]:
    """Figures no honest run shows: a final loss below the track's entropy floor, zero timed steps."""
    problems = []
    floor = getattr(track, "entropy_floor", None)
    for r in results:
        loss = r.get("final_loss")
        if floor is not None and isinstance(loss, (int, float)) and math.isfinite(loss) and loss < floor:
            problems.append(f"repetition {r['k']}: final val loss {loss:.4f} is below the track's entropy floor "
                            f"{floor} (the entropy rate of its data: no model can get there): it is not a model's loss")
    for k, events in events_by_k.items():
        finish = events.last("finish")
        if finish is not None and finish.get("batches") == 0:
            problems.append(f"repetition {k}: the timed run took no training step")
    return problems


def blind_words(test: "stats.BlindGap") -> str:
    """What a failed blind test says (after where it was measured)."""
    return (f"the model's loss where it could not see the next token is {test.gap:.3f} nats above its loss on the "
            f"canonical rows at the same positions ({test.positions} positions, bar {test.bar:.3f}): it reads its "
            f"targets from its inputs")


def blind_pooled(events_by_k: dict) -> tuple["stats.BlindGap | None", list[str]]:
    """The blind positions of every repetition's scored validations pooled (the probes the referee judged), and
    the problem when the pooled gap clears its bar. None with a single repetition: the referee judged it. A
    probe counts once the referee checked it (it holds a tolerance): a malformed one is a problem already."""
    probes = []
    judged = set()
    for k, events in events_by_k.items():
        for v in events.of("val"):
            if v.get("split", "scored") != "scored":
                continue
            for r in v.get("ranks") or []:
                p = r.get("probe") if isinstance(r, dict) else None
                if isinstance(p, dict) and "tolerance" in p and isinstance(p.get("blind_rows"), int):
                    probes.append(p)
                    judged.add(k)
    if len(judged) < 2:
        return None, []
    test = stats.blind_gap(probes)
    if test is None or not test.reads:
        return test, []
    return test, [f"blind probe failed over repetitions {', '.join(map(str, sorted(judged)))} pooled: "
                  f"{blind_words(test)}"]


def replica_status(manifest: dict, good: list[int]) -> tuple[dict, list[str]]:
    """The replica check: (the verdict's `replica`, problems). Every repetition the replica checked is judged;
    `checked` is true when each of the good repetitions `good` was, and `unchecked` maps the others to why."""
    record = manifest.get("replica")
    if manifest.get("self_reported"):
        return {"checked": False, "status": "not applicable (self-reported evidence)", "unchecked": {}}, []
    if not isinstance(record, dict):
        why = f"not recorded (harness {manifest.get('harness_version', '?')})"
        return {"checked": False, "status": why, "unchecked": {str(k): why for k in good}}, []
    unchecked, problems, entries = {}, [], []
    by_k = {}
    for e in record.get("repetitions") or []:
        malformed = schema.check(e, schema.REPLICA, f"{rundir.MANIFEST} replica repetition", schema.REPLICA_OPTIONAL)
        if malformed:
            problems.append(malformed)
        else:
            by_k[e["k"]] = e
    # every good repetition, and any other the replica checked (a bad one's finding counts too)
    for k in sorted(set(good) | {k for k, e in by_k.items() if e["checked"]},
                    key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, str(k))):
        e = by_k.get(k)
        test = stats.replica_gap([e]) if e is not None and e["checked"] else None
        if test is not None and e.get("bare") and (test.reads or test.differs):
            # an API 1 script's start() has no logits_fn: the replica called the bare model, which may honestly
            # differ from the scored logits_fn (autocast, say): no finding, but no check either
            why = (f"start() was given no logits_fn, and the model given to warmup(), called bare, scores "
                   f"{test.gap:+.4f} nats from the scored logits (rms {test.rms:.4f} over {test.positions} positions): "
                   f"give start() the logits_fn that validates")
            test, e = None, {**e, "why": why}
        if test is None:
            if k in good:
                unchecked[str(k)] = (e or {}).get("why") or record.get("why") or "not checked"
            continue
        entries.append(e)
        problems += [f"replica check failed in repetition {k}: {w}" for w in replica_words(test)]
    pooled = stats.replica_gap(entries) if entries else None
    if len(entries) > 1 and pooled is not None and not problems:
        problems += [f"replica check failed over repetitions {', '.join(str(e['k']) for e in entries)} pooled: {w}"
                     for w in replica_words(pooled)]
    return {"checked": bool(good) and not unchecked, "status": record.get("status"), "unchecked": unchecked,
            "test": pooled.to_dict() if pooled is not None else None, "seconds": record.get("seconds")}, problems


def replica_words(test: "stats.ReplicaGap") -> list[str]:
    """What a failed replica check says (after where it was measured)."""
    out = []
    if test.reads:
        out.append(f"the scored losses are {test.gap:.4f} nats below the same model's, loaded afresh and shown "
                   f"nothing after each position ({test.positions} positions, bar {test.bar:.4f}): the scored "
                   f"logits read the tokens that follow")
    if test.differs:
        out.append(f"the scored logits are not the model finish() sealed, loaded afresh: their losses differ by "
                   f"{test.rms:.4f} nats (root mean square over {test.positions} positions; rounding stays under "
                   f"{stats.REPLICA_MAX_RMS}): logits_fn must depend on the model given to warmup() and the "
                   f"inputs alone")
    return out
