"""`speedrun ladder SPEC`: does a method keep beating a fairly tuned baseline as the model grows?

Runs every (method, size, budget, hyper-parameter, seed) point of a ladder spec (configs/ladders/*.toml, or
any path) as its own `speedrun run` under the referee, into DIR/points/<point>/. Each method is tuned on its
own at each size and budget (each point judged at the end of its own schedule, on the tuning seeds); the
chosen setting is re-run with fresh seeds, which give the reported losses. Then it prints, per size, each
method's tuned loss with a 95% interval, the gap, and the data-equivalent speed-up (tokens the baseline needs
to match the method, from the baseline's own loss-vs-tokens curve, bootstrap interval over seeds), the trend
across sizes and the crossover size, and writes DIR/ladder.json and the plots.

Resumable: a point already complete in DIR is never re-run, so after Ctrl-C the same command goes on where it
stopped (a point that was running starts again). `--executor slurm` submits each point as a submitit job.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from speedrun.errors import SpeedrunError


def register(subparsers) -> None:
    from speedrun.cli.console import DefaultsFormatter

    class Formatter(argparse.RawDescriptionHelpFormatter, DefaultsFormatter):
        pass

    p = subparsers.add_parser("ladder", help="tune methods per size under the referee; speed-up and crossover",
                              description=__doc__, formatter_class=Formatter)
    p.add_argument("spec", help="ladder spec: a .toml path, or a name in configs/ladders/")
    p.add_argument("--out", type=Path, help="ladder directory (default: <runs>/ladders/<spec name>)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: points as processes here; slurm: one submitit job per point")
    p.add_argument("--parallel", type=int, default=1,
                   help="local: points at a time; above 1 only where points read separate copies of the data "
                        "(the referee charges another point's reads of the data files to the running script)")
    p.add_argument("--slurm-partition", help="slurm: partition")
    p.add_argument("--slurm-timeout-min", type=int, default=60, help="slurm: minutes per job")
    p.add_argument("--slurm-gpus", action="store_true", help="slurm: ask for nproc GPUs per job")
    p.add_argument("--slurm-array-parallelism", type=int, help="slurm: jobs running at once")
    p.add_argument("--slurm-exclusive", action="store_true", help="slurm: a node per job (see --parallel)")
    p.add_argument("--submitit-cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help=argparse.SUPPRESS)   # submitit's local/debug executors: the tests' way to run the slurm path
    p.add_argument("--plan", action="store_true", help="list the points the next wave would run, run nothing")
    p.add_argument("--report-only", action="store_true", help="report what DIR holds, run nothing")
    p.add_argument("--no-plots", action="store_true", help="skip the plots (no matplotlib needed)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates for the speed-up intervals")
    p.set_defaults(func=cmd_ladder)


def resolve_spec(text: str) -> Path:
    path = Path(text)
    if path.is_file() or path.suffix == ".toml":
        return path
    from speedrun import paths

    root = paths.checkout()
    candidate = (root / "configs" / "ladders" / f"{text}.toml") if root else None
    if candidate is not None and candidate.is_file():
        return candidate
    raise SpeedrunError(f"{text}: no such ladder spec (a .toml path, or a name in configs/ladders/)")


def _num(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _iv(iv: dict, fmt: str, pm: bool = True) -> str:
    v, lo, hi = iv.get("value"), iv.get("lo"), iv.get("hi")
    if not isinstance(v, (int, float)):
        return "-"
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return f"{_num(v, fmt)} [{_num(lo, fmt)}, {_num(hi, fmt)}]"
    return _num(v, fmt)


def _hp(best: dict | None) -> str:
    from speedrun.ladder.points import fmt_value

    return " ".join(f"{k}={fmt_value(v)}" for k, v in (best or {}).items()) or "-"


def print_report(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"ladder {report['name']} on track {report['track']}: tuned final val loss, 95% intervals "
                        f"(baseline: {report['baseline']})", title_justify="left", header_style="bold")
    for col in ("size", "params", "method", "budget (tokens)", "chosen", "loss [95% CI]", "seeds",
                "gap vs baseline", "speed-up [95% CI]"):
        table.add_column(col, justify="right" if col in ("params", "budget (tokens)") else "left")
    for size in report["sizes"]:
        comps = {(c["method"], c["budget"]): c for c in size["comparisons"]}
        first = True
        for m in sorted(size["methods"], key=lambda m: (m["method"] == report["baseline"], m["method"], m["budget"])):
            c = comps.get((m["method"], m["budget"]))
            edge = " (edge)" if m["at_edge"] else ""
            speed = "-"
            if c:
                speed = _iv(c["speedup"], ".2f") + ("*" if c["extrapolated"] else "")
            table.add_row(size["size"] if first else "", f"{size['params']:,}" if first else "",
                          m["method"], f"{m['budget']:g} ({_num(m['tokens'], ',')})", _hp(m["best"]) + edge,
                          _iv(m["loss"], ".4f"), str(len(m["confirm_losses"])) + ("" if m["complete"] else " (incomplete)"),
                          _iv(c["gap"], "+.4f") if c else "", speed)
            first = False
    console.print(table)
    console.print("speed-up: tokens the baseline needs to reach the method's loss / the method's tokens, from the "
                  f"baseline's {'tuned loss at each budget' if report['curve'] == 'budgets' else 'validations'}; "
                  "* = read beyond the baseline's measured curve (a power-law extension: a guess, either way)",
                  markup=False)
    for t in report["trends"]:
        slope = _iv(t["slope"], "+.3f")
        cross = t["crossover_params"]
        tail = ""
        if isinstance(cross.get("value"), (int, float)):
            tail = f"; crossover {_iv(cross, ',.0f')} parameters"
        console.print(f"trend {t['method']} (budget {t['budget']:g}): slope of log speed-up on log params {slope}"
                      f"{tail}\n  {t['verdict']}", markup=False)
    for w in report["warnings"]:
        console.print(f"warning: {w}", style="yellow", markup=False)
    if not report["complete"]:
        console.print("the ladder is incomplete: these numbers cover only the points done so far", style="yellow",
                      markup=False)


def cmd_ladder(args: argparse.Namespace) -> int:
    from rich.console import Console

    from speedrun.evidence import rundir
    from speedrun import paths
    from speedrun.ladder import executors, report, runner
    from speedrun.ladder.spec import load_spec

    console = Console(highlight=False) if sys.stdout.isatty() else Console(highlight=False, width=160)
    spec_path = resolve_spec(args.spec)
    spec = load_spec(spec_path)
    from speedrun.tracks import load_track

    load_track(spec.track)   # a wrong track name fails here, not in every point
    root = args.out or paths.runs_dir() / "ladders" / spec.name
    root.mkdir(parents=True, exist_ok=True)
    rundir.write_bytes_atomic(root / "spec.toml", spec_path.read_bytes())
    began = time.monotonic()

    def on_wave(progress) -> None:
        if progress.todo:
            verb = "would run" if args.plan else "running"
            console.print(f"wave {progress.wave}: {verb} {len(progress.todo)} point(s) ({progress.done} complete "
                          f"in {root})", markup=False)
            if args.plan:
                for point in progress.todo:
                    console.print(f"  {point.label()}", markup=False)

    def on_point(label: str, code: int) -> None:
        word = "done" if code == 0 else f"exit code {code} (see its log; a failed point counts as failed)"
        console.print(f"  [{time.monotonic() - began:7.0f} s] {label}: {word}", markup=False)

    if args.report_only or args.plan:
        cells = runner.run_ladder(spec, root, executor=None, on_wave=on_wave if args.plan else None, dry_run=True)
        if args.plan:
            return 0
    else:
        if args.executor == "slurm":
            ex = executors.SubmititExecutor(root / "submitit", spec.nproc, cluster=args.submitit_cluster,
                                            timeout_min=args.slurm_timeout_min, partition=args.slurm_partition,
                                            gpus=args.slurm_gpus, parallelism=args.slurm_array_parallelism,
                                            extra={"slurm_exclusive": True}
                                            if args.slurm_exclusive else None)
        else:
            ex = executors.LocalExecutor(spec.nproc, args.parallel)
            if ex.oversubscribed():
                console.print(f"warning: {ex.parallel} points x {spec.nproc} ranks is more than this machine's "
                              f"{executors.usable_cores()} cores: they slow each other down", style="yellow",
                              markup=False)
        console.print(f"ladder {spec.name}: {len(spec.sizes)} sizes x {len(spec.methods)} methods on track "
                      f"{spec.track}, {spec.nproc} rank(s) a point, executor {args.executor}"
                      + (f" ({ex.parallel} at a time)" if args.executor == "local" else "") + f" -> {root}",
                      markup=False)
        cells = runner.run_ladder(spec, root, ex, on_wave=on_wave, on_point=on_point)
    rep = report.build_report(spec, cells, n_boot=args.bootstrap)
    data = rep.to_dict()
    path = report.write_report(rep, root)
    print_report(data, console)
    console.print(f"wrote {path}", markup=False)
    if not args.no_plots:
        from speedrun.ladder import plots

        for p in plots.plot_all(data, root):
            console.print(f"wrote {p}", markup=False)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from speedrun.cli import main

    sys.exit(main(["ladder", *sys.argv[1:]]))
