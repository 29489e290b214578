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
- Blind positions, all repetitions pooled: the referee judges each repetition's blind gap on its own
  (`speedrun.referee.repetition`); a peek kept under that bar in every repetition still lowers all of them, and
  pooling n repetitions lowers the bar by sqrt(n).
"""

from __future__ import annotations

import math
from pathlib import Path

from speedrun.evidence import rundir
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
