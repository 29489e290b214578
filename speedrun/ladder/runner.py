"""Running a ladder: tuning waves for every (method, size, budget) cell, then the confirmation runs.

Why waves: each method is tuned on its own at each size and budget, every point judged at the end of its own
full schedule, and the setting is chosen on the val loss of the tuning seeds. Coordinate descent needs the
results of one axis before it proposes the next, so the runner asks each cell what it still needs, runs all
of that (in parallel, or as one Slurm batch), and asks again until every cell has its chosen setting re-run
with the fresh `confirm` seeds. The state is the ladder directory alone: a second run proposes the same
points, finds them complete and runs only what is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from speedrun.ladder import points as P
from speedrun.ladder.spec import LadderSpec, Method


@dataclass
class Cell:
    """One method at one size and one budget: its tuning points, its choice and its confirmation points."""
    method: str
    size: str
    budget: float
    tuned: dict[P.Point, P.PointResult] = field(default_factory=dict)
    best: dict[str, Any] | None = None          # the chosen setting, once tuning is over
    confirmed: dict[P.Point, P.PointResult] = field(default_factory=dict)

    def scores(self) -> dict[tuple, float]:
        """Mean tuning loss of each setting over the tuning seeds (+inf if any seed failed)."""
        by: dict[tuple, list[float]] = {}
        for point, result in self.tuned.items():
            by.setdefault(point.hparams, []).append(result.score())
        return {hp: (math.fsum(v) / len(v) if all(math.isfinite(x) for x in v) else math.inf) for hp, v in by.items()}


def cells(spec: LadderSpec) -> list[Cell]:
    return [Cell(m.name, s.name, b) for s in spec.sizes for m in spec.methods.values() for b in m.budgets]


def _argmin(scores: dict[tuple, float], among: Iterable[tuple]) -> tuple | None:
    among = [hp for hp in among if hp in scores]
    if not among:
        return None
    return min(among, key=lambda hp: (scores[hp], repr(hp)))


def propose(spec: LadderSpec, cell: Cell, done: Callable[[P.Point], P.PointResult | None]) -> list[P.Point]:
    """The points `cell` still needs, given what is done; fills `cell.tuned`, `best`, `confirmed` as it goes."""
    method: Method = spec.methods[cell.method]

    def want(settings: list[dict[str, Any]], seeds, into: dict | None = None) -> list[P.Point]:
        """The points of `settings` x `seeds` not done yet; the done ones' results go `into` (default: tuned)."""
        into = cell.tuned if into is None else into
        missing = []
        for hp in settings:
            for seed in seeds:
                point = P.make_point(cell.method, cell.size, cell.budget, hp, seed)
                result = done(point)
                if result is None:
                    missing.append(point)
                else:
                    into[point] = result
        return missing

    if spec.search == "grid" or not method.search:
        missing = want(method.grid(), spec.tune_seeds)
        if missing:
            return missing
        best = _argmin(cell.scores(), [P.make_point(cell.method, cell.size, cell.budget, hp, 0).hparams
                                        for hp in method.grid()])
    else:  # coordinate descent from the centre: each axis in turn, the others at the best so far
        current = method.center()
        for _ in range(spec.rounds):
            for axis, values in method.search.items():
                line = [dict(current, **{axis: v}) for v in values]
                missing = want(line, spec.tune_seeds)
                if missing:
                    return missing
                scores = cell.scores()
                pick = _argmin(scores, [tuple(sorted(hp.items())) for hp in line])
                if pick is not None:
                    current = dict(pick)
        best = tuple(sorted(current.items()))
    cell.best = dict(best) if best is not None else None
    if cell.best is None:
        return []
    return want([cell.best], spec.confirm_seeds, cell.confirmed)


@dataclass
class Progress:
    """What a wave is about to do, for the command to show."""
    wave: int
    todo: list[P.Point]
    done: int


def run_ladder(spec: LadderSpec, root: Path, executor, on_wave: Callable[[Progress], None] | None = None,
               on_point: Callable[[str, int], None] | None = None, dry_run: bool = False,
               max_waves: int = 1000) -> list[Cell]:
    """Run every missing point of the spec in waves; returns the cells with their results (complete or not).
    `dry_run`: only plan the first wave (what would run now)."""
    root = Path(root)
    results: dict[P.Point, P.PointResult] = {}

    def done(point: P.Point) -> P.PointResult | None:
        if point in results:
            return results[point]
        if P.is_complete(root, point):
            results[point] = P.read_result(root, point)
            return results[point]
        return None

    for wave in range(1, max_waves + 1):
        all_cells = cells(spec)
        todo: list[P.Point] = []
        for cell in all_cells:
            todo += propose(spec, cell, done)
        if on_wave:
            on_wave(Progress(wave, todo, len(results)))
        if not todo or dry_run:
            return all_cells
        jobs, by_label = [], {}
        for point in todo:
            P.clear_incomplete(root, point)
            log = root / "logs" / f"{point.name}.log"
            jobs.append((point.label(), P.command(spec, root, point), log))
            by_label[point.label()] = point

        def finished(label: str, code: int) -> None:
            # verified at once: the verdict checks the harness files against those installed now, which is
            # only meaningful right after the run (the digest is then kept, whatever changes later)
            point = by_label.get(label)
            if point is not None and P.is_complete(root, point):
                done(point)
            if on_point:
                on_point(label, code)

        executor.run(jobs, finished)
        missing = [p for p in todo if not P.is_complete(root, p)]
        if missing:
            # a point whose run never recorded its repetition (the launcher failed outright): do not loop on it
            from speedrun.errors import SpeedrunError

            raise SpeedrunError(f"{len(missing)} point(s) did not complete, e.g. {missing[0].label()}: see "
                                f"{root / 'logs' / (missing[0].name + '.log')}")
    raise RuntimeError("ladder did not converge")  # pragma: no cover


def collect(spec: LadderSpec, root: Path) -> list[Cell]:
    """The cells as far as the directory has them, without running anything."""
    return run_ladder(spec, root, executor=None, dry_run=True)
