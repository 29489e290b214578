"""Packaging: a plain (non-editable) install has its tracks and answers `speedrun tracks`; the package list and
the README's set-up agree with pyproject.toml and .ci/run.

The install test builds a wheel from a copy of the sources (pyproject.toml, README.md, speedrun/, configs/) so
the shared checkout gets no build/ or egg-info, and installs it with `pip install --no-deps --target` into a
folder that goes first on PYTHONPATH; the dependencies (rich, torch...) are the running environment's own.
The build uses this environment's setuptools when it has one that can build wheels, else pip's usual isolated
build (which fetches setuptools from the package index): a fresh `python3 -m venv` has no setuptools of its
own, and a base interpreter's old setuptools without `wheel` cannot build one ("invalid command
'bdist_wheel'"), so the test must not lean on either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent


def _can_build_here() -> bool:
    """Whether this environment's setuptools builds wheels without help (>= 70.1 has bdist_wheel built in)."""
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return major >= 68


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding a non-editable install of this checkout (put it first on PYTHONPATH)."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("speedrun", "configs", "records/history"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    site = root / "site"
    isolation = ["--no-build-isolation"] if _can_build_here() else []
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                           "--disable-pip-version-check", "--target", str(site), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return site


def installed_env(site: Path, cwd: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_") and k != "PYTHONPATH"}
    clean.update(env, PYTHONPATH=str(site), HOME=str(cwd / "home"), XDG_CACHE_HOME=str(cwd / "cache"))
    return clean


def run_installed(site: Path, cwd: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speedrun.cli", *argv], cwd=cwd, env=installed_env(site, cwd, **env),
                          capture_output=True, text=True, timeout=120)


def test_installed_package_ships_its_tracks(installed, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import speedrun, speedrun.paths as p; "
                            "print(speedrun.__file__); print(p.checkout())"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           env=installed_env(installed, tmp_path))
    where, checkout = probe.stdout.split()
    assert where.startswith(str(installed)) and checkout == "None"  # the installed copy, not this checkout

    proc = run_installed(installed, tmp_path, "tracks")
    assert proc.returncode == 0, proc.stderr
    shipped = sorted(p.stem for p in (REPO / "configs" / "tracks").glob("*.toml"))
    for name in shipped:
        assert re.search(rf"^ {re.escape(name)} ", proc.stdout, re.M), name
    assert f"{installed}/speedrun/_tracks" in proc.stdout
    proc = run_installed(installed, tmp_path, "tracks", "show", "gpt2-small")
    assert proc.returncode == 0 and "kjj0/fineweb10B-gpt2" in proc.stdout, proc.stderr


def test_installed_paths_rule_and_overrides(installed, tmp_path):
    proc = run_installed(installed, tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"data {tmp_path / 'cache' / 'speedrun' / 'data'}" in proc.stdout
    assert f"records {tmp_path / 'records'}" in proc.stdout and f"runs {tmp_path / 'runs'}" in proc.stdout

    own = tmp_path / "my-tracks"
    own.mkdir()
    (own / "mine.toml").write_text((REPO / "configs" / "tracks" / "tiny.toml").read_text()
                                   .replace('name = "tiny"', 'name = "mine"'))
    proc = run_installed(installed, tmp_path, "tracks", SPEEDRUN_TRACKS_DIR=str(own))
    assert proc.returncode == 0, proc.stderr
    assert " mine " in proc.stdout and " gpt2-small " not in proc.stdout

    proc = run_installed(installed, tmp_path, "leaderboard")  # no ledger here: said so, not a traceback
    assert proc.returncode == 0 and f"no records folder at {tmp_path / 'records'}" in proc.stdout
    proc = run_installed(installed, tmp_path, "leaderboard", "--history", "--track", "gpt2-small")
    assert proc.returncode == 0 and "llm.c baseline" in proc.stdout, proc.stderr  # the history ships in the wheel


def test_every_package_is_listed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "speedrun").rglob("__init__.py")
                   if "__pycache__" not in p.parts)
    assert sorted(p for p in config["packages"] if p not in ("speedrun._tracks", "speedrun._history")) == found
    assert config["package-dir"]["speedrun._tracks"] == "configs/tracks"
    assert config["package-dir"]["speedrun._history"] == "records/history"


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", setup, re.S)
            for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_setup_and_test_command():
    commands = readme_blocks()
    assert commands[:2] == ["pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
                            'pip install -e ".[dev]"']
    assert "python -m pytest -q" in commands
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    for command in commands:
        if command.startswith("speedrun "):
            continue  # the README's demo run, not part of CI
        assert any(line == command or line.startswith(command + " ||") for line in ci), command
    assert ci[-1] == "python -m pytest -q"
