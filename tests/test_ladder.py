"""`speedrun ladder`: the spec's checks, the tuning logic, the estimators on synthetic curves with a known
crossover, and one micro ladder through the real referee (resumed, then finished by submitit's local
executor, the `--executor slurm` path)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import synthetic

from speedrun.cli import main
from speedrun.errors import SpeedrunError
from speedrun.ladder import estimate, points, report, runner
from speedrun.ladder.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "records" / "tiny" / "002_muon-baseline" / "train.py"


def base_doc(**changes) -> dict:
    doc = {
        "name": "t", "track": "tiny", "nproc": 2, "baseline": "adamw",
        "seeds": {"tune": [0], "confirm": [1, 2]},
        "budget": {"unit": "steps", "values": [100, 200]},
        "sizes": [{"name": "a", "params": 1000, "overrides": {"dim": 32}},
                  {"name": "b", "params": 4000, "overrides": {"dim": 64}}],
        "methods": {
            "muon": {"script": str(SCRIPT), "overrides": {"optimizer": "muon"}, "budgets": [100],
                     "search": {"muon_lr": [0.01, 0.02, 0.04]}},
            "adamw": {"script": str(SCRIPT), "overrides": {"optimizer": "adamw"},
                      "search": {"adam_lr": [0.001, 0.002, 0.004]}},
        },
    }
    for key, value in changes.items():
        doc[key] = value
    return doc


def test_shipped_spec_loads_and_sizes_span_four_times():
    spec = load_spec(ROOT / "configs" / "ladders" / "tiny-muon-vs-adamw.toml")
    assert spec.track == "tiny" and spec.baseline == "adamw" and len(spec.sizes) >= 3
    assert spec.sizes[-1].params >= 4 * spec.sizes[0].params
    assert all(len(m.search) and all(len(v) >= 3 for v in m.search.values()) for m in spec.methods.values())
    assert spec.methods["muon"].script.is_file()
    point = points.make_point("muon", spec.sizes[0].name, 100, {"muon_lr": 0.04}, 1)
    args = points.script_args(spec, point)
    assert args[-2:] == ["--steps", "100"] and "--muon-lr" in args and "0.04" in args


@pytest.mark.parametrize("change, message", [
    ({"track": 3}, "track must be str"),
    ({"baseline": "sgd"}, "baseline 'sgd' is not one of the methods"),
    ({"seeds": {"tune": [0], "confirm": [0, 1]}}, "seeds.confirm must be fresh"),
    ({"budget": {"unit": "tokens", "values": [1e6]}}, "budget.batch_tokens is needed"),
    ({"budget": {"unit": "parsecs", "values": [1]}}, "budget.unit = 'parsecs' is out of range"),
    ({"curve": "budgets", "budget": {"unit": "steps", "values": [100]}}, "needs the baseline at two budgets"),
    ({"sizes": [{"name": "a", "params": 10}, {"name": "b", "params": 10}]}, "same params"),
    ({"colour": "red"}, "unknown field 'colour'"),
])
def test_spec_mistakes_are_one_line_errors(change, message):
    with pytest.raises(SpeedrunError) as info:
        parse_spec(base_doc(**change))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_spec_checks_methods(tmp_path):
    doc = base_doc()
    doc["methods"]["muon"]["script"] = "nope.py"
    with pytest.raises(SpeedrunError, match="no such file"):
        parse_spec(doc)
    doc = base_doc()
    doc["methods"]["muon"]["search"]["optimizer"] = ["x"]
    with pytest.raises(SpeedrunError, match="also a fixed override"):
        parse_spec(doc)
    doc = base_doc()
    doc["methods"]["muon"]["overrides"]["steps"] = 5
    with pytest.raises(SpeedrunError, match="'steps' is set twice"):
        parse_spec(doc)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(SpeedrunError, match="not valid TOML"):
        load_spec(bad)


def test_budget_units_turn_into_steps():
    doc = base_doc(budget={"unit": "tokens_per_param", "values": [8, 16], "batch_tokens": 1000})
    doc["methods"]["muon"]["budgets"] = [8]
    spec = parse_spec(doc)
    assert spec.budget.steps(8, 4000) == 32 and spec.budget.tokens(16, 1000) == 16000


# --- tuning logic, without runs ------------------------------------------------------------------------------


def fake_result(point, loss, ok=True, tokens=4096):
    return points.PointResult(point, ok, loss if ok else None, 1000, tokens, 1.0)


def test_grid_tunes_then_confirms_the_best_with_fresh_seeds():
    spec = parse_spec(base_doc())
    cell = runner.Cell("adamw", "a", 100.0)
    loss = {0.001: 4.0, 0.002: 3.9, 0.004: math.nan}   # the largest lr diverges

    def done(p):
        if p.seed in spec.tune_seeds:
            lr = p.hp["adam_lr"]
            return fake_result(p, loss[lr], ok=math.isfinite(loss[lr]))
        return None

    todo = runner.propose(spec, cell, done)
    assert cell.best == {"adam_lr": 0.002}
    assert sorted(p.seed for p in todo) == [1, 2] and all(p.hp == {"adam_lr": 0.002} for p in todo)


def test_coordinate_descent_walks_one_axis_at_a_time():
    doc = base_doc(search="coordinate")
    doc["methods"]["adamw"]["search"] = {"adam_lr": [0.001, 0.002, 0.004], "embed_lr": [0.1, 0.3]}
    spec = parse_spec(doc)
    asked: list[list] = []

    def truth(hp):  # best at adam_lr 0.004, embed_lr 0.3
        return 4.0 - 100 * hp["adam_lr"] + hp["embed_lr"] * -0.1

    def done(p):
        return fake_result(p, truth(p.hp)) if p.seed in spec.tune_seeds and p in known else None

    known: set = set()
    while True:
        cell = runner.Cell("adamw", "a", 100.0)
        todo = runner.propose(spec, cell, done)
        if not todo or todo[0].seed not in spec.tune_seeds:
            break
        asked.append(todo)
        known.update(todo)
    # first the adam_lr axis at the centre embed_lr (0.1), then the embed_lr axis at the best adam_lr
    assert {p.hp["embed_lr"] for p in asked[0]} == {0.1} and len(asked[0]) == 3
    assert {p.hp["adam_lr"] for p in asked[1]} == {0.004}
    assert cell.best == {"adam_lr": 0.004, "embed_lr": 0.3}
    assert estimate.at_edge(cell.best, spec.methods["adamw"].search) == [
        "adam_lr=0.004 is the highest value searched", "embed_lr=0.3 is the highest value searched"]


# --- estimators on synthetic curves ---------------------------------------------------------------------------


def test_tokens_to_reach_inverts_a_power_law_and_flags_extrapolation():
    law = lambda t: 10 * t ** -0.1  # noqa: E731
    curve = [(1e5, law(1e5)), (4e5, law(4e5))]
    t, extra = estimate.tokens_to_reach(curve, law(2e5))
    assert t == pytest.approx(2e5, rel=1e-9) and not extra
    t, extra = estimate.tokens_to_reach(curve, law(1e6))
    assert t == pytest.approx(1e6, rel=1e-9) and extra
    assert estimate.tokens_to_reach([(1e5, 4.0), (2e5, 4.1)], 3.0) == (None, False)


N_STAR = 3.0e5  # the true crossover size of the synthetic ladder


def true_speedup(n: float) -> float:
    return (n / N_STAR) ** -0.3      # 1.39x at 1e5 parameters, 1 at N_STAR, 0.72x at 9e5


def synthetic_cells(spec, speedup_of, noise=0.002, seeds=4, rng_seed=0):
    """Cells whose baseline follows L = A(N) * T^-0.15 and whose method reaches at T0 the baseline's loss at
    speedup_of(N) * T0, with seed noise."""
    rng = np.random.default_rng(rng_seed)
    cells = []
    for size in spec.sizes:
        a = 12.0 * (size.params / 1e5) ** -0.05
        law = lambda t: a * t ** -0.15  # noqa: E731
        for method in spec.methods.values():
            for budget in method.budgets:
                tokens = spec.budget.tokens(budget, size.params)
                truth = law(tokens if method.name == spec.baseline else speedup_of(size.params) * tokens)
                cell = runner.Cell(method.name, size.name, budget, best={})
                for seed in range(1, seeds + 1):
                    p = points.make_point(method.name, size.name, budget, {}, seed)
                    cell.confirmed[p] = fake_result(p, truth + rng.normal(0, noise), tokens=tokens)
                cells.append(cell)
    return cells


def synthetic_spec(params):
    doc = base_doc(seeds={"tune": [0], "confirm": [1, 2, 3, 4]},
                   budget={"unit": "tokens", "values": [1e6, 2e6, 4e6], "batch_tokens": 1000})
    doc["sizes"] = [{"name": f"n{i}", "params": int(p)} for i, p in enumerate(params)]
    doc["methods"]["muon"]["budgets"] = [1e6]
    return parse_spec(doc)


def test_speedup_and_crossover_recover_a_known_crossover():
    spec = synthetic_spec([1e5, 2e5, 4.5e5, 9e5])
    rep = report.build_report(spec, synthetic_cells(spec, true_speedup), n_boot=300)
    speedups = {s.size: s.comparisons[0].speedup for s in rep.sizes}
    for size in rep.sizes:
        s = speedups[size.size]
        assert s.value == pytest.approx(true_speedup(size.params), rel=0.12)
        assert s.lo <= s.value <= s.hi
    (trend,) = rep.trends
    assert trend.within_ladder and "within the ladder" in trend.verdict
    cross = trend.crossover_params
    assert cross.value == pytest.approx(N_STAR, rel=0.25)
    assert cross.lo <= N_STAR <= cross.hi
    assert trend.slope.value == pytest.approx(-0.3, abs=0.15)
    json.dumps(rep.to_dict())   # the report is plain JSON


def test_no_crossover_within_the_ladder_is_said_plainly():
    spec = synthetic_spec([1e4, 3e4, 9e4])
    rep = report.build_report(spec, synthetic_cells(spec, true_speedup), n_boot=200)
    (trend,) = rep.trends
    assert not trend.within_ladder and trend.verdict.startswith("no crossover within the ladder")
    assert trend.crossover_params.value > 9e4   # the trend's extrapolation, labelled as such
    assert all(s.comparisons[0].speedup.value > 1 for s in rep.sizes)


def test_gap_and_loss_intervals():
    ci = estimate.mean_ci([3.0, 3.02, 3.01])
    assert ci.lo < 3.01 < ci.hi
    gap = estimate.diff_ci([3.0, 3.01], [3.1, 3.12])
    assert gap.value == pytest.approx(-0.105) and gap.lo < gap.value < gap.hi


# --- one micro ladder through the real referee -----------------------------------------------------------------

MICRO = """
name = "micro"
track = "smoke"
nproc = 1
baseline = "adamw"
curve = "validations"
[seeds]
tune = [0]
confirm = [1]
[budget]
unit = "steps"
values = [4]
[[sizes]]
name = "d16"
params = {params}
overrides = {{ dim = 16, layers = 1, heads = 2, val_every = 2 }}
[methods.muon]
script = "{script}"
overrides = {{ optimizer = "muon" }}
[methods.adamw]
script = "{script}"
overrides = {{ optimizer = "adamw" }}
"""


@pytest.fixture
def smoke_env(tmp_path, monkeypatch):
    env = synthetic.make_track(tmp_path / "track")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


@pytest.mark.slow
def test_micro_ladder_runs_resumes_and_finishes_under_submitit(smoke_env, capsys):
    params = 2 * 512 * 16 + 12 * 16 * 16
    spec_path = smoke_env / "micro.toml"
    spec_path.write_text(MICRO.format(script=SCRIPT, params=params))
    out = smoke_env / "ladder"
    assert main(["ladder", str(spec_path), "--out", str(out), "--no-plots"]) == 0
    data = json.loads((out / "ladder.json").read_text())
    assert data["complete"] and data["schema_version"] == report.SCHEMA_VERSION
    (size,) = data["sizes"]
    assert size["params_measured"] == params and not data["warnings"]
    assert all(len(m["confirm_losses"]) == 1 and m["loss"]["value"] > 0 for m in size["methods"])
    assert size["comparisons"][0]["speedup"]["value"] is not None or size["comparisons"][0]["undefined_share"] > 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "micro" in printed
    dirs = sorted((out / "points").iterdir())
    assert len(dirs) == 4 and all((d / "verdict.json").is_file() for d in dirs)

    # an interrupted point: its directory holds a manifest without the repetition; the rest are complete
    victim = next(d for d in dirs if d.name.startswith("muon") and d.name.endswith("__s1"))
    manifest = json.loads((victim / "manifest.json").read_text())
    manifest["repetitions"] = []
    (victim / "manifest.json").write_text(json.dumps(manifest))
    (victim / points.RESULT).unlink()
    kept = {d.name: (d / "manifest.json").stat().st_mtime_ns for d in dirs if d != victim}
    assert main(["ladder", str(spec_path), "--out", str(out), "--plan"]) == 0
    plan = capsys.readouterr().out
    assert "would run 1 point(s)" in plan and "muon d16" in plan

    # resumed through the Slurm path, on submitit's local executor: only the interrupted point runs again
    assert main(["ladder", str(spec_path), "--out", str(out), "--executor", "slurm", "--submitit-cluster", "local",
                 "--slurm-timeout-min", "5"]) == 0
    assert {d.name: (d / "manifest.json").stat().st_mtime_ns for d in dirs if d != victim} == kept
    assert json.loads((victim / "manifest.json").read_text())["repetitions"][0]["status"] == "ok"
    assert list((out / "submitit").glob("*_result.pkl")) or list((out / "submitit").iterdir())
    again = json.loads((out / "ladder.json").read_text())
    assert again["complete"]
    for name in ("loss_vs_size.png", "speedup_vs_size.png", "lr_sensitivity.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


FAKE_RUN = """
import json, sys
from pathlib import Path
out, loss = Path(sys.argv[1]), float(sys.argv[2])
out.mkdir(parents=True)
(out / "manifest.json").write_text(json.dumps({"repetitions": [{"k": 1, "status": "ok"}]}))
(out / "point.json").write_text(json.dumps({"ok": True, "loss": loss, "params": 1000, "tokens": int(sys.argv[3]),
                                            "timed_s": 1.0, "curve": []}))
"""


def test_slurm_path_on_submitit_local_executor(tmp_path, monkeypatch):
    """The submitit executor end to end (jobs are real processes), each point's run stood in for by a script
    that writes a complete point: two waves (tuning, confirmation), then nothing left to run."""
    import sys

    from speedrun.ladder.executors import SubmititExecutor

    doc = base_doc(seeds={"tune": [0], "confirm": [1]})
    doc["sizes"] = doc["sizes"][:1]
    doc["methods"]["muon"]["search"] = {"muon_lr": [0.01, 0.02]}
    doc["methods"]["adamw"]["search"] = {}
    spec = parse_spec(doc)

    def fake_command(spec, root, point, python=None):
        loss = 4.0 - 0.1 * point.budget / 100 - (0.2 if point.method == "muon" else 0) + 0.01 * point.seed
        return [sys.executable, "-c", FAKE_RUN, str(points.point_dir(root, point)), str(loss),
                str(int(point.budget) * 1000)]

    monkeypatch.setattr(points, "command", fake_command)
    waves = []
    ex = SubmititExecutor(tmp_path / "submitit", nproc=1, cluster="local", timeout_min=2)
    cells = runner.run_ladder(spec, tmp_path, ex, on_wave=lambda p: waves.append(len(p.todo)))
    assert waves == [4, 3, 0]
    assert list((tmp_path / "submitit").glob("*_result.pkl"))
    rep = report.build_report(spec, cells, n_boot=50)
    (size,) = rep.sizes
    muon = next(m for m in size.methods if m.method == "muon")
    assert muon.complete and muon.confirm_losses == [pytest.approx(3.71)] and muon.tokens == 100000
    assert size.comparisons[0].speedup.value > 1


def test_interrupted_wave_keeps_what_finished(tmp_path):
    spec = parse_spec(base_doc())
    ran = []

    class Interrupting:
        def run(self, jobs, on_done=None):
            label, cmd, log = jobs[0]
            folder = Path(cmd[cmd.index("--out") + 1])
            folder.mkdir(parents=True)
            (folder / "manifest.json").write_text(json.dumps({"repetitions": [{"k": 1, "status": "ok"}]}))
            (folder / points.RESULT).write_text(json.dumps({"ok": True, "loss": 4.0, "params": 1000, "tokens": 1,
                                                            "timed_s": 1.0, "curve": []}))
            ran.append(folder.name)
            Path(cmd[cmd.index("--out") + 1].replace(folder.name, "half")).mkdir()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_ladder(spec, tmp_path, Interrupting())
    first = runner.propose(spec, runner.Cell("muon", "a", 100.0), lambda p: None)[0]
    assert ran == [first.name] and points.is_complete(tmp_path, first)
    plan = []
    runner.run_ladder(spec, tmp_path, None, on_wave=lambda pr: plan.extend(pr.todo), dry_run=True)
    assert first not in plan and len(plan) == 18 - 1


def test_matplotlib_missing_is_one_line(monkeypatch):
    import builtins

    from speedrun.ladder import plots

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(SpeedrunError, match="plots need matplotlib"):
        plots.plot_all({"sizes": [], "trends": []}, Path("/nonexistent"))
