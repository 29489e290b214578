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
"""

from __future__ import annotations

import math
from pathlib import Path

from speedrun.evidence import rundir


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
