"""The `speedrun` front: quick commands load nothing heavy, the lazy command table matches the modules, help
shows defaults and the paths rule."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from speedrun import cli
from speedrun import paths

REPO = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "scipy", "numpy", "matplotlib", "wandb", "huggingface_hub", "tiktoken"}


def loaded_after(code: str) -> tuple[set[str], set[str], str]:
    """Run `code` in a fresh interpreter; return (heavy top-level packages, speedrun modules) loaded by the
    end, and what it printed."""
    probe = (f"{code}\nimport json as _j, sys as _s\n_s.stdout.flush()\n"
             f"print('\\nMODULES ' + _j.dumps(sorted(_s.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "MODULES " in proc.stdout, proc.stderr[-3000:]
    out, _, tail = proc.stdout.rpartition("MODULES ")
    modules = json.loads(tail)
    return ({m.split(".")[0] for m in modules} & HEAVY, {m for m in modules if m.split(".")[0] == "speedrun"},
            out + proc.stderr)


def cli_code(*argv: str) -> str:
    return (f"from speedrun import cli\ntry:\n    cli.main({list(argv)!r})\n"
            f"except SystemExit:\n    pass")


def test_building_the_parser_imports_no_command_module():
    heavy, ours, _ = loaded_after("import speedrun.cli\nspeedrun.cli.build_parser()")
    assert heavy == set()
    assert ours <= {"speedrun", "speedrun.version", "speedrun.cli", "speedrun.paths", "speedrun.errors"}


@pytest.mark.parametrize("argv", [("--help",), ("tracks",), ("leaderboard",), ("leaderboard", "--long"),
                                  ("tracks", "show", "gpt2-small")])
def test_quick_commands_import_nothing_heavy(argv):
    heavy, _, out = loaded_after(cli_code(*argv))
    assert heavy == set(), f"speedrun {' '.join(argv)} imported {sorted(heavy)}"
    assert "Traceback" not in out and out.strip()


def test_verify_imports_nothing_heavy(tmp_path):
    entry = next(iter(sorted((REPO / "records").glob("*/[0-9][0-9][0-9]_*/manifest.json")))).parent
    copy = shutil.copytree(entry, tmp_path / entry.name)  # verify writes verdict.json
    heavy, _, out = loaded_after(cli_code("verify", str(copy)))
    assert "Traceback" not in out and "verdict" in out.lower()
    # judging evidence needs no tensor, array or plot: the data files are compared by their sha256, the t-test's
    # Student t is speedrun.judge.tdist (no scipy)
    assert heavy == set(), f"speedrun verify imported {sorted(heavy)}"


def test_command_table_matches_what_each_module_registers():
    """Each module adds exactly the commands the table maps to it (the table's help lines are what `speedrun
    --help` shows; the module's own may be worded differently)."""
    for module_name in dict.fromkeys(m for m, _ in cli.COMMANDS.values()):
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module_name).register(sub)
        expected = [name for name, (m, _) in cli.COMMANDS.items() if m == module_name]
        assert list(sub.choices) == expected, module_name
    for name in cli.COMMANDS:  # and building the parser for any command registers it for real
        action = next(a for a in cli.build_parser(name)._actions if isinstance(a, argparse._SubParsersAction))
        assert action.choices[name].add_help, name


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = cli.main(list(argv))
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def test_top_level_help_lists_commands_and_where_things_live(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEEDRUN_RUNS_DIR", str(tmp_path / "my-runs"))
    monkeypatch.setenv("SPEEDRUN_DATA_DIR", "")  # empty counts as unset
    rc, out, _ = run("--help")
    assert rc == 0
    for name, (_, help_line) in cli.COMMANDS.items():
        assert name in out and help_line[:30] in out
    for var in ("SPEEDRUN_TRACKS_DIR", "SPEEDRUN_DATA_DIR", "SPEEDRUN_RECORDS_DIR", "SPEEDRUN_RUNS_DIR"):
        assert var in out
    assert f"runs {tmp_path / 'my-runs'}" in out and f"data {REPO / 'data'}" in out
    rc, out, _ = run()  # no command: the same help, and a usage exit status
    assert rc == 2 and "SPEEDRUN_RUNS_DIR" in out


def test_command_help_shows_defaults():
    rc, out, _ = run("plot", "--help")
    assert rc == 0 and "(default: both)" in out and "val_loss.png" in out
    rc, out, _ = run("tracks", "show", "--help")
    assert rc == 0 and "SPEEDRUN_DATA_DIR" in out and "~/.cache/speedrun/data" in out
    rc, out, _ = run("leaderboard", "--help")
    assert rc == 0 and "--long" in out and "(default: None)" not in out and "(default: False)" not in out


def test_unknown_command_and_command_of():
    rc, _, err = run("no-such-command")
    assert rc == 2 and "invalid choice: 'no-such-command'" in err
    assert cli.command_of(["--version"]) is None
    assert cli.command_of(["-h", "plot", "x"]) == "plot"


def test_script_arguments_after_double_dash_are_kept_apart(monkeypatch):
    seen = {}

    def fake_register(sub):
        p = sub.add_parser("tracks", help=cli.COMMANDS["tracks"][1])
        p.add_argument("--flag", action="store_true")
        p.set_defaults(func=lambda args: seen.update(flag=args.flag, rest=args.passthrough) or 0)

    monkeypatch.setattr(importlib.import_module("speedrun.cli.tracks"), "register", fake_register)
    assert run("tracks", "--flag", "--", "--lr", "0.1", "--", "x")[0] == 0
    assert seen == {"flag": True, "rest": ["--lr", "0.1", "--", "x"]}


def test_paths_help_text_matches_the_rule():
    assert paths.RULE.splitlines()[0].startswith("where things live")
    assert len(max(paths.RULE.splitlines(), key=len)) <= 110


def test_multi_node_runs_are_refused_with_the_reason(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('never launched')\n")
    rc, _, err = run("run", str(script), "--track", "tiny", "--nnodes", "2", "--out", str(tmp_path / "out"))
    assert rc != 0 and "multi-node runs cannot be refereed yet" in err
    assert not (tmp_path / "out").exists()
