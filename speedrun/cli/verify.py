"""`speedrun verify RUN_DIR`: judge a run directory (`speedrun.judge.verify`) and print the verdict.

The verdict goes into the run directory as `verdict.json`, except into a ledger entry (a committed record):
a record is evidence of what its own harness judged, so re-verifying it under another harness writes
nothing there unless `--write` asks (the checkout stays clean).

`print_verdict` is the one rendering of a verdict on the terminal: `run`, `verify` and `replay` all show it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-check a run directory and write verdict.json")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                   help="write verdict.json into the directory (default: yes for a run, no for a ledger entry)")
    p.add_argument("--step", type=int, help="judge every repetition at this declared step (optimization track; "
                                            "default: each repetition's final validation)")
    p.set_defaults(func=_cmd_verify)


def _num(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def print_verdict(verdict: dict) -> None:
    from rich.table import Table

    from speedrun.cli import console as consoles
    from speedrun.judge.verify import detail_lines

    console = consoles.stdout(highlight=False)
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
    details = verdict.get("problem_details") or {}  # verdicts before harness 0.3 have none
    for p in verdict["problems"]:
        console.print("problem: " + p, style="red", markup=False)
        for line in detail_lines(details.get(p) or {}):
            console.print("    " + line, markup=False, soft_wrap=True)
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
    blind = verdict.get("blind")
    if blind:
        console.print(f"blind positions: where the next token was never shown the loss is {blind['gap']:+.3f} "
                      f"nats from the canonical rows' ({blind['positions']:,} positions, all repetitions pooled; "
                      f"refused above +{blind['bar']:.3f})", markup=False, soft_wrap=True)
    replica = verdict.get("replica")
    if replica and replica.get("test"):
        test = replica["test"]
        console.print(f"replica check: the scored losses sit {test['gap']:+.4f} nats below the same model's, loaded "
                      f"afresh and shown nothing after each position ({test['positions']:,} positions, all "
                      f"repetitions; root mean square of the differences {test['rms']:.2g}; refused above "
                      f"{test['bar']:+.4f})", markup=False, soft_wrap=True)
    if replica and not replica.get("checked") and not verdict["self_reported"]:
        unchecked = replica.get("unchecked") or {}
        why = "; ".join(f"repetition {k}: {w}" for k, w in unchecked.items())
        if len(set(unchecked.values())) == 1 and len(unchecked) > 1:  # one reason for all: said once
            why = f"repetitions {', '.join(unchecked)}: {next(iter(unchecked.values()))}"
        console.print(f"replica check: not every repetition checked ({why or replica.get('status')}): this run can "
                      f"never be a record", style="yellow", markup=False, soft_wrap=True)
    if verdict.get("sandbox") and not verdict.get("sandboxed") and not verdict["self_reported"]:
        console.print(f"sandbox: {verdict['sandbox']}: this run can never be a record", style="yellow",
                      markup=False, soft_wrap=True)
    harness = verdict.get("harness") or {}
    if harness.get("differs"):
        first = "; ".join(harness["differs"][:2]) + (f"; and {len(harness['differs']) - 2} more"
                                                       if len(harness["differs"]) > 2 else "")
        console.print(f"note: judged under harness {harness.get('run')}, verified under {harness.get('now')}: "
                      f"{len(harness['differs'])} harness file(s) differ ({first}). Information, not a problem: "
                      f"`speedrun replay` re-establishes a record under this harness.", markup=False)
    word = "[green]QUALIFIES[/green]" if verdict["qualifies"] else "[red]DOES NOT QUALIFY[/red]"
    if verdict.get("status") == "interrupted":
        word = "[red]INTERRUPTED[/red] (the repetitions that ran are kept): " + word
    suffix = " (on self-reported numbers only)" if verdict["self_reported"] else ""
    console.print(f"verdict: {word}{suffix}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from speedrun.judge import verify

    from speedrun.evidence import rundir

    write = args.write if args.write is not None else not (args.run_dir / rundir.RECORD_ENTRY).is_file()
    verdict = verify.verify_run_dir(args.run_dir, write=write, step=args.step)
    print_verdict(verdict)
    return 0 if verdict["qualifies"] else 1
