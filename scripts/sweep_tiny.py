"""Hyper-parameter sweeps for tiny-track scripts, through the real launcher.

Every point is one refereed `speedrun run SCRIPT --track tiny --runs 1 --no-verify -- --key value ...`; the
sweep reads the final val loss and timed seconds back from its evidence. A grid is the cartesian product of
`--grid key=v1,v2` options, crossed with `--budgets` (values of `--steps`: each budget is a run with its own
full learning-rate schedule, never a point read off a longer run). Points run `--parallel` at a time.

From such a table, steps-to-target for a target T is the smallest budget whose best grid point ends at or
below T; `summarise` prints it for any target afterwards (`--from results.json --target T`).

    python scripts/sweep_tiny.py records/tiny/001_adamw-baseline/train.py --grid lr=2e-3,4e-3 \\
        --budgets 150,200,300 --out runs/sweeps/adamw --parallel 8
    python scripts/sweep_tiny.py --from runs/sweeps/adamw/results.json --target 4.3

What was swept for the tiny records is in `scripts/ablate_optimizer.py`, which drives this module.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speedrun.evidence import rundir


def run_point(script: Path, params: dict, out: Path, track: str = "tiny", nproc: int = 1, seed: int = 0) -> dict:
    """One refereed run of `script` with `params` as script flags; returns what its evidence says."""
    cmd = [sys.executable, "-m", "speedrun.cli", "run", str(script), "--track", track, "--nproc", str(nproc),
           "--runs", "1", "--seed", str(seed), "--out", str(out), "--no-verify", "--no-replica", "--"]
    for key, value in params.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    point = dict(params, seed=seed, ok=proc.returncode == 0)
    path = rundir.events_path(out, 1)
    vals = rundir.read_events(path).of("val") if path.exists() else []
    if vals:
        point.update(final_loss=vals[-1]["loss"], timed_s=vals[-1]["timed_s"])
    else:
        point["error"] = (proc.stderr.strip().splitlines() or ["no events"])[-1]
    return point


def sweep(script: Path, grid: dict[str, list], budgets: list[int], out: Path, fixed: dict | None = None,
          parallel: int = 1, nproc: int = 1, seed: int = 0, label: str = "") -> list[dict]:
    """Run every (grid point, budget); returns one dict per run."""
    jobs = []
    for values in itertools.product(*grid.values()) if grid else [()]:
        params = dict(fixed or {}, **dict(zip(grid.keys(), values)))
        for budget in budgets:
            name = "_".join(f"{k}{v}" for k, v in params.items()) + f"_steps{budget}"
            jobs.append((dict(params, steps=budget), out / name))
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda job: run_point(script, job[0], job[1], nproc=nproc, seed=seed), jobs))
    for r in results:
        r["config"] = label or script.parent.name
        print(json.dumps(r), flush=True)
    return results


def steps_to_target(results: list[dict], target: float, config: str) -> dict | None:
    """Smallest budget at which some grid point of `config` ends at or below `target` (and that point)."""
    hits = [r for r in results if r.get("config") == config and r.get("final_loss", 99) <= target]
    return min(hits, key=lambda r: (r["steps"], r["final_loss"])) if hits else None


def summarise(results: list[dict], target: float | None) -> None:
    configs = sorted({r["config"] for r in results})
    budgets = sorted({r["steps"] for r in results})
    for config in configs:
        rows = [r for r in results if r["config"] == config]
        print(f"\n{config}: best final val loss per budget (and its hyper-parameters)")
        for b in budgets:
            at = [r for r in rows if r["steps"] == b and "final_loss" in r]
            if at:
                best = min(at, key=lambda r: r["final_loss"])
                params = {k: v for k, v in best.items() if k not in ("steps", "final_loss", "timed_s", "ok",
                                                                     "seed", "config", "error")}
                print(f"  {b:5d} steps: {best['final_loss']:.4f}   {params}")
        if target is not None:
            hit = steps_to_target(results, target, config)
            print(f"  steps to {target}: {hit['steps'] if hit else 'not reached'}")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"expected key=v1,v2,...; got {item!r}")
        grid[key] = values.split(",")
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", type=Path, nargs="?")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (cartesian product)")
    parser.add_argument("--set", action="append", default=[], help="key=value for every point")
    parser.add_argument("--budgets", default="300", help="comma-separated values of --steps")
    parser.add_argument("--target", type=float, help="also report steps-to-target")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--from", dest="source", type=Path, help="summarise an earlier results.json")
    args = parser.parse_args()
    if args.source:
        summarise(json.loads(args.source.read_text()), args.target)
        return
    if not args.script or not args.out:
        parser.error("a script and --out are needed (or --from)")
    os.environ.setdefault("SPEEDRUN_RUNS_DIR", str(args.out / "runs"))
    fixed = {k: v[0] for k, v in parse_grid(args.set).items()}
    results = sweep(args.script, parse_grid(args.grid), [int(b) for b in args.budgets.split(",")], args.out,
                    fixed, args.parallel, args.nproc, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    summarise(results, args.target)


if __name__ == "__main__":
    main()
