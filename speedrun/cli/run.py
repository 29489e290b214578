"""`speedrun run SCRIPT --track T`: parse the flags, launch under the referee, show progress, then the verdict.

The launching is `speedrun.referee.launcher`'s; this module gives it the reporters that draw on the terminal
(the per-repetition lines and the spinner on stderr, wandb's notices on stdout) and prints the verdict, also
after Ctrl-C (the repetitions that ran are kept, and the verdict says the run was interrupted).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speedrun.errors import SpeedrunError


def register(sub: argparse._SubParsersAction) -> None:
    from speedrun.cli.console import add_sandbox_flag

    from speedrun.referee import launcher

    p = sub.add_parser("run", help="launch a submission with torchrun under the referee, keep the evidence, verify",
                       usage="speedrun run SCRIPT --track T [options] [-- SCRIPT_ARGS...]",
                       description=launcher.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Everything after `--` goes to the script untouched, e.g. `-- --steps 200 --muon-lr "
                              "0.03` (a record must run without arguments: bake them into the script).")
    p.add_argument("script", type=Path)
    p.add_argument("--track", required=True, help="track name or path to a track .toml")
    p.add_argument("--nproc", type=int, default=1, help="processes per node: GPUs, or CPU ranks (default: 1)")
    p.add_argument("--runs", type=int, help="repetitions (default: the track's minimum for a verdict)")
    p.add_argument("--out", help="run directory (default: <runs>/<track>/<stamp>_<script>, see `speedrun --help`)")
    p.add_argument("--seed", type=int, default=0, help="seed of repetition 1; repetition k gets seed+k-1 (default: 0)")
    p.add_argument("--data-dir", help="data directory (default: see `speedrun --help`)")
    p.add_argument("--timeout", type=float, help="stop a repetition after this many seconds (default: none)")
    p.add_argument("--no-verify", action="store_true", help="skip the verdict at the end")
    add_sandbox_flag(p)
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (WANDB_MODE=offline works)")
    p.add_argument("--wandb-project", default="speedrun", help="(default: speedrun)")
    p.add_argument("--wandb-name", help="run name (default: <run dir>-<k>)")
    p.add_argument("--wandb-entity", help="team or user (default: wandb's)")
    for flag in ("nnodes", "node-rank", "rdzv-backend", "rdzv-endpoint", "rdzv-id"):
        p.add_argument(f"--{flag}", help="passed through to torchrun")
    p.set_defaults(func=_cmd_run)


def wandb_options(args) -> dict | None:
    """The launcher's `wandb` options from the flags (None without --wandb); its notices go to stdout."""
    from speedrun.cli import console

    if not getattr(args, "wandb", False):
        return None
    return {"project": args.wandb_project, "name": args.wandb_name, "entity": args.wandb_entity,
            "report": console.notices()}


def _cmd_run(args: argparse.Namespace) -> int:
    from speedrun.cli import console
    from speedrun.cli.verify import print_verdict
    from speedrun.evidence import rundir
    from speedrun.judge import verify
    from speedrun.referee import launcher
    from speedrun.tracks import load_track

    if args.nnodes not in (None, "1", "1:1"):
        raise SpeedrunError(f"--nnodes {args.nnodes}: multi-node runs cannot be refereed yet (each node's "
                            f"launcher would see only its own ranks); run on one node, or unrefereed with torchrun")
    track = load_track(args.track)
    rdzv = {"nnodes": args.nnodes, "node-rank": args.node_rank, "rdzv-backend": args.rdzv_backend,
            "rdzv-endpoint": args.rdzv_endpoint, "rdzv-id": args.rdzv_id}
    script_args = list(getattr(args, "passthrough", []))
    runs = args.runs or track.rule.min_runs
    try:
        run_dir = launcher.launch(args.script, track, args.nproc, runs, args.out, args.seed, script_args, rdzv,
                                  data_dir=args.data_dir, timeout=args.timeout, wandb=wandb_options(args),
                                  report=console.progress(), sandbox=args.sandbox, replica=args.replica)
    except launcher.Interrupted as stop:  # what ran is kept: its verdict says "interrupted"
        if not args.no_verify:
            with launcher.shielded():
                print_verdict(verify.verify_run_dir(stop.run_dir))
        raise
    failed = [r["k"] for r in rundir.read_json(run_dir / rundir.MANIFEST)["repetitions"] if r["status"] != "ok"]
    if args.no_verify:
        return 1 if failed else 0
    verdict = verify.verify_run_dir(run_dir)
    print_verdict(verdict)
    return 0 if verdict["qualifies"] and not failed else 1
