"""Collect tiny-track run directories into one JSON list: parameters, val curve, final loss, time per step.

Reads what the referee wrote (manifest.json and run-K.jsonl of every run directory found under the given
folders) and nothing else. For each repetition: the script (record folder name), its command-line flags, the
seed, every validation (step, val loss, timed seconds), the final val loss and timed seconds, and the time per
training step from the referee's `train` events (one every 10 batches): the minimum, 10th percentile and median
over those 10-step windows. On a shared machine the median moves with the load; the minimum and the 10th
percentile are what a quiet machine gives (the figure to convert steps into seconds with).

    python scripts/collect_tiny_runs.py /tmp/tiny-runs --out scripts/results/tiny_runs.json --label-from-dir
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def parse_flags(argv: list[str]) -> dict:
    flags, key = {}, None
    for a in argv:
        if a.startswith("--"):
            key = a[2:].replace("-", "_")
            flags[key] = True
        elif key is not None:
            try:
                flags[key] = int(a)
            except ValueError:
                try:
                    flags[key] = float(a)
                except ValueError:
                    flags[key] = a
            key = None
    return flags


def step_times(events: list[dict]) -> dict:
    train = [e for e in events if e["event"] == "train"]
    d = []
    for a, b in zip(train, train[1:]):
        if b["batches"] > a["batches"] and b["timed_s"] > a["timed_s"]:
            d.append((b["timed_s"] - a["timed_s"]) / (b["batches"] - a["batches"]))
    if not d:
        return {}
    d = np.array(d)
    return dict(step_s_min=round(float(d.min()), 4), step_s_p10=round(float(np.percentile(d, 10)), 4),
                step_s_median=round(float(np.median(d)), 4))


def collect(root: Path) -> list[dict]:
    rows = []
    for manifest in sorted(root.rglob("manifest.json")):
        run_dir = manifest.parent
        m = json.loads(manifest.read_text())
        cmd = m.get("command", [])
        script_i = next((i for i, a in enumerate(cmd) if a.endswith(".py")), None)
        flags = parse_flags(cmd[script_i + 1:]) if script_i is not None else {}
        script = (run_dir / "train.py").read_text() if (run_dir / "train.py").exists() else ""
        kind = "muon" if "Muon baseline" in script[:200] else "adamw" if "AdamW baseline" in script[:200] else "?"
        if kind == "muon" and flags.get("optimizer") == "adamw":
            kind = "adamw-modern"
        for k in range(1, 100):
            path = run_dir / f"run-{k}.jsonl"
            if not path.exists():
                break
            events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            init = next((e for e in events if e["event"] == "init"), {})
            vals = [dict(step=e.get("step"), val_loss=round(e["loss"], 5), timed_s=e["timed_s"])
                    for e in events if e["event"] == "val"]
            finish = next((e for e in events if e["event"] == "finish"), None)
            row = dict(run_dir=str(run_dir), rep=k, script=kind, flags=flags, seed=init.get("seed"),
                       world_size=init.get("world_size"), curve=vals)
            if finish and vals:
                row.update(final_loss=vals[-1]["val_loss"], timed_s=finish["timed_s"], batches=finish["batches"])
            row.update(step_times(events))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [r for root in args.roots for r in collect(root)]
    for r in rows:
        print(f"{r['script']:12s} {json.dumps(r['flags']):70s} seed {r['seed']} final {r.get('final_loss', '-')} "
              f"step_s p10 {r.get('step_s_p10', '-')}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
