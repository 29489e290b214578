"""How long the light `speedrun` commands take to answer, wall-clock, from a fresh interpreter each time.

A measurement, not a test (this machine's timings are noisy). Each command runs `--repeat` times as
`python -m speedrun.cli ...` (no shell shims in the way); the table shows the median and the fastest run, and
beside them the bare interpreter (`python -c pass`) so the harness's own share can be read off. `verify` runs
on a copy of a record entry (it writes verdict.json), so the checkout is left untouched.

    python scripts/bench_cli.py            # 5 repetitions of each command
    python scripts/bench_cli.py --repeat 9
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def entry(root: Path) -> Path | None:
    """The first record entry with run evidence (something `speedrun verify` can read)."""
    for manifest in sorted((root / "records").glob("*/[0-9][0-9][0-9]_*/manifest.json")):
        return manifest.parent
    return None


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")

    env = dict(os.environ, COLUMNS="100")
    py = [sys.executable]
    cli = py + ["-m", "speedrun.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"python -c pass": py + ["-c", "pass"],
                    "speedrun --help": cli + ["--help"],
                    "speedrun tracks": cli + ["tracks"],
                    "speedrun leaderboard": cli + ["leaderboard"]}
        source = entry(REPO)
        if source is not None:
            copy = Path(tmp) / source.name
            shutil.copytree(source, copy)
            commands[f"speedrun verify {source.relative_to(REPO)} (a copy)"] = cli + ["verify", str(copy)]
        else:
            print("note: no record entry with evidence under records/; verify not measured")
        width = max(map(len, commands))
        print(f"{'command':<{width}}  {'median s':>8}  {'min s':>6}  exit")
        for label, argv in commands.items():
            times, codes = [], set()
            for _ in range(args.repeat):
                seconds, code = timed(argv, env)
                times.append(seconds)
                codes.add(code)
            print(f"{label:<{width}}  {statistics.median(times):8.3f}  {min(times):6.3f}  "
                  f"{','.join(map(str, sorted(codes)))}")
    print(f"({args.repeat} runs each, {os.cpu_count()} CPUs, python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
