"""The tiny baselines' sweeps and the optimizer ablation: Muon against a tuned AdamW on the same architecture.

Three configurations, each swept over a learning-rate grid crossed with step budgets (every budget is a run
with its own full schedule), through the real launcher (`scripts/sweep_tiny.py`):

  adamw-gpt2    record #1's script (GPT-2 architecture, AdamW): lr in 4 values
  muon          record #2's script (modern architecture, Muon on hidden matrices, AdamW on the rest):
                Muon lr x embedding lr, 6 points
  adamw-modern  record #2's script with `--optimizer adamw` (same architecture, AdamW on everything):
                AdamW lr of the hidden matrices x embedding lr, 6 points: tuned as thoroughly as Muon

Steps-to-target of a configuration = the smallest budget at which its best grid point ends at or below the
target. The ablation's figure is steps(muon) / steps(adamw-modern) (goal <= 0.75).

    python scripts/ablate_optimizer.py --out runs/ablation --parallel 12      # run the sweeps (a GPU helps)
    python scripts/ablate_optimizer.py --only muon,adamw-modern --budgets 10,15,20,30,45,60 \
        --grid muon:embed_lr=0.3 --out runs/ablation-small --parallel 2      # small budgets, on the CPU
    python scripts/ablate_optimizer.py --from runs/ablation/results.json --target 4.9,4.7,4.5

What was run for the tiny records: first the full grids at budgets 100-400 on an H100 (bf16), for adamw-gpt2
and muon (the adamw-modern sweep did not fit the GPU time); then, on this 2-core CPU in fp32, muon (embedding
lr fixed at 0.3, the best at every budget of the first sweep: 3 points) and the full adamw-modern grid (6
points) at budgets 10, 15, 20, 30, 45, 60. The tiny target 4.90 is reached by Muon within 10 steps, so the
ablation also reports lower targets.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import sweep_tiny

ROOT = Path(__file__).resolve().parent.parent
ADAMW = ROOT / "records" / "tiny" / "001_adamw-baseline" / "train.py"
MUON = ROOT / "records" / "tiny" / "002_muon-baseline" / "train.py"
BUDGETS = [100, 150, 200, 250, 300, 400]
CONFIGS = {
    "adamw-gpt2": (ADAMW, {"lr": [1e-3, 2e-3, 4e-3, 8e-3]}, {}),
    "muon": (MUON, {"muon_lr": [0.02, 0.04, 0.08], "embed_lr": [0.1, 0.3]}, {}),
    "adamw-modern": (MUON, {"adam_lr": [2e-3, 4e-3, 8e-3], "embed_lr": [0.1, 0.3]}, {"optimizer": "adamw"}),
}


def report(results: list[dict], target: float) -> None:
    sweep_tiny.summarise(results, target)
    steps = {name: sweep_tiny.steps_to_target(results, target, name) for name in CONFIGS}
    print(f"\nsteps to val loss {target}:")
    for name, hit in steps.items():
        print(f"  {name:13s} {hit['steps'] if hit else 'not reached within ' + str(max(BUDGETS))}")
    if steps["muon"] and steps["adamw-modern"]:
        ratio = steps["muon"]["steps"] / steps["adamw-modern"]["steps"]
        print(f"Muon / tuned AdamW on the same architecture: {ratio:.3f} (goal <= 0.75)")
    if steps["muon"] and steps["adamw-gpt2"]:
        print(f"record #2 / record #1 configurations: {steps['muon']['steps'] / steps['adamw-gpt2']['steps']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--target", help="comma-separated target val losses to report steps-to-target for")
    parser.add_argument("--only", help="comma-separated configurations to run")
    parser.add_argument("--budgets", help=f"comma-separated step budgets (default {BUDGETS})")
    parser.add_argument("--grid", action="append", default=[],
                        help="CONFIG:key=v1,v2 replaces that key's values in CONFIG's grid")
    parser.add_argument("--from", dest="source", type=Path, help="report on an earlier results.json")
    args = parser.parse_args()
    targets = [float(t) for t in args.target.split(",")] if args.target else []
    if args.source:
        for target in targets:
            report(json.loads(args.source.read_text()), target)
        return
    if args.out is None:
        parser.error("--out is needed to run the sweeps")
    os.environ.setdefault("SPEEDRUN_RUNS_DIR", str(args.out / "runs"))
    names = args.only.split(",") if args.only else list(CONFIGS)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else BUDGETS
    overrides: dict[str, dict] = {}
    for item in args.grid:
        name, _, spec = item.partition(":")
        overrides.setdefault(name, {}).update(sweep_tiny.parse_grid([spec]))
    results = []
    for name in names:
        script, grid, fixed = CONFIGS[name]
        grid = dict(grid, **overrides.get(name, {}))
        results += sweep_tiny.sweep(script, grid, budgets, args.out / name, fixed, args.parallel, label=name)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for target in targets:
        report(results, target)
    if not targets:
        sweep_tiny.summarise(results, None)


if __name__ == "__main__":
    main()
