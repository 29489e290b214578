"""The ladder spec: one TOML file says what is compared, at which sizes and budgets, tuned over what.

Why a file and not flags: a ladder is a few hundred runs whose results only mean something together; the
spec is what makes a result directory reproducible and resumable (a point's identity is derived from it),
and it is committed beside the results. Everything is checked when the spec is loaded, and every mistake is
one `SpeedrunError` line naming the field, before any run starts.

    name = "tiny-muon-vs-adamw"
    track = "tiny"
    nproc = 2                      # ranks of each point's `speedrun run`
    baseline = "adamw"             # the method the speed-up is measured against
    search = "grid"                # or "coordinate" (coordinate descent, `rounds` passes over the axes)
    curve = "budgets"              # the baseline's loss-vs-tokens curve: its tuned losses at each budget,
                                   # or "validations": the intermediate validations of its confirmation runs
    [seeds]
    tune = [0]                     # seeds every hyper-parameter point runs with
    confirm = [1, 2]               # fresh seeds the chosen point is re-run with (the reported numbers)
    [budget]
    unit = "steps"                 # "steps", "tokens" or "tokens_per_param" (of the size's `params`)
    values = [150, 300]            # each budget is a run with its own full schedule
    batch_tokens = 4096            # tokens per optimizer step of the script (converts tokens to steps)
    steps_flag = "steps"           # the script's flag that takes the number of steps
    [[sizes]]
    name = "d32"
    params = 57344                 # as measured (the referee's `model` event); checked against each run
    overrides = { dim = 32, layers = 2, heads = 2 }
    [methods.muon]
    script = "records/tiny/002_muon-baseline/train.py"   # relative to the cwd, the spec or a folder above it
    overrides = { optimizer = "muon" }
    budgets = [150]                # optional: a subset of budget.values (default: all)
    [methods.muon.search]
    muon_lr = [0.01, 0.02, 0.04]   # each key becomes `--muon-lr VALUE` after `--`

Overrides and search keys are the script's flags with `_` for `-`; the launcher passes them after `--`.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrun.errors import SpeedrunError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

UNITS = ("steps", "tokens", "tokens_per_param")
SEARCHES = ("grid", "coordinate")
CURVES = ("budgets", "validations")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FLAG = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
Scalar = (int, float, str, bool)


@dataclass(frozen=True)
class Size:
    name: str
    params: int
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Method:
    name: str
    script: Path
    overrides: dict[str, Any]
    search: dict[str, list[Any]]      # hyper-parameter -> its values, in the spec's order
    budgets: tuple[float, ...]

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the search space (one point when there is nothing to search)."""
        keys = list(self.search)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.search[k] for k in keys))]

    def center(self) -> dict[str, Any]:
        """Where coordinate descent starts: the middle value of each axis (the lower middle of an even one)."""
        return {k: v[(len(v) - 1) // 2] for k, v in self.search.items()}


@dataclass(frozen=True)
class Budget:
    unit: str
    values: tuple[float, ...]
    batch_tokens: int
    steps_flag: str

    def steps(self, value: float, params: int) -> int:
        """The number of optimizer steps a budget value means at a size of `params` parameters."""
        if self.unit == "steps":
            return int(round(value))
        tokens = value if self.unit == "tokens" else value * params
        return max(1, int(round(tokens / self.batch_tokens)))

    def tokens(self, value: float, params: int) -> int:
        return self.steps(value, params) * self.batch_tokens


@dataclass(frozen=True)
class LadderSpec:
    name: str
    path: Path | None
    track: str
    nproc: int
    baseline: str
    search: str
    rounds: int
    curve: str
    tune_seeds: tuple[int, ...]
    confirm_seeds: tuple[int, ...]
    budget: Budget
    sizes: tuple[Size, ...]
    methods: dict[str, Method] = field(default_factory=dict)
    timeout: float | None = None

    def size(self, name: str) -> Size:
        return next(s for s in self.sizes if s.name == name)


def _where(path: Path | None) -> str:
    return str(path) if path else "ladder spec"


def _fail(path: Path | None, message: str) -> SpeedrunError:
    return SpeedrunError(f"{_where(path)}: {message}")


def _get(table: dict, key: str, kinds, path, where: str, default: Any = ..., check=None):
    if key not in table:
        if default is ...:
            raise _fail(path, f"{where}{key} is missing")
        return default
    value = table[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise _fail(path, f"{where}{key} must be {names}, not {type(value).__name__} ({value!r})")
    if check is not None and not check(value):
        raise _fail(path, f"{where}{key} = {value!r} is out of range")
    return value


def _overrides(table: Any, path, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(path, f"{where} must be a table of flag = value")
    for key, value in table.items():
        if not FLAG.match(key):
            raise _fail(path, f"{where}.{key}: not a flag name (letters, digits, _ and -)")
        if not isinstance(value, Scalar):
            raise _fail(path, f"{where}.{key} must be a number, string or boolean, not {type(value).__name__}")
    return dict(table)


def _find_script(raw: str, path: Path | None) -> Path:
    candidate = Path(raw)
    if candidate.is_absolute():
        return candidate
    bases = [Path.cwd()]
    if path is not None:
        bases += [path.parent, *path.parent.resolve().parents]
    for base in bases:
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    return candidate


def _unknown(table: dict, known: set[str], path, where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise _fail(path, f"{where}unknown field {extra[0]!r} (known: {', '.join(sorted(known))})")


def parse_spec(doc: dict, path: Path | None = None) -> LadderSpec:
    """Check a parsed TOML document and build the spec; the first mistake is a one-line `SpeedrunError`."""
    _unknown(doc, {"name", "track", "nproc", "baseline", "search", "rounds", "curve", "seeds", "budget", "sizes",
                   "methods", "timeout"}, path, "")
    name = _get(doc, "name", str, path, "", default=path.stem if path else None)
    if name is None or not NAME.match(name):
        raise _fail(path, f"name {name!r} must be letters, digits, '.', '_' or '-'")
    track = _get(doc, "track", str, path, "")
    nproc = _get(doc, "nproc", int, path, "", default=1, check=lambda v: v >= 1)
    search = _get(doc, "search", str, path, "", default="grid", check=lambda v: v in SEARCHES)
    rounds = _get(doc, "rounds", int, path, "", default=1, check=lambda v: v >= 1)
    curve = _get(doc, "curve", str, path, "", default="budgets", check=lambda v: v in CURVES)
    timeout = _get(doc, "timeout", (int, float), path, "", default=None, check=lambda v: v > 0)

    seeds = _get(doc, "seeds", dict, path, "")
    _unknown(seeds, {"tune", "confirm"}, path, "seeds.")
    tune = _get(seeds, "tune", list, path, "seeds.", check=lambda v: len(v) >= 1)
    confirm = _get(seeds, "confirm", list, path, "seeds.", check=lambda v: len(v) >= 1)
    for key, values in (("tune", tune), ("confirm", confirm)):
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
            raise _fail(path, f"seeds.{key} must be non-negative integers")
        if len(set(values)) != len(values):
            raise _fail(path, f"seeds.{key} repeats a seed: {values}")
    if set(tune) & set(confirm):
        raise _fail(path, f"seeds.confirm must be fresh: {sorted(set(tune) & set(confirm))} also in seeds.tune")

    b = _get(doc, "budget", dict, path, "")
    _unknown(b, {"unit", "values", "batch_tokens", "steps_flag"}, path, "budget.")
    unit = _get(b, "unit", str, path, "budget.", check=lambda v: v in UNITS)
    values = _get(b, "values", list, path, "budget.", check=lambda v: len(v) >= 1)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v) for v in values):
        raise _fail(path, "budget.values must be positive numbers")
    if len(set(values)) != len(values):
        raise _fail(path, f"budget.values repeats a value: {values}")
    batch_tokens = _get(b, "batch_tokens", int, path, "budget.", default=None, check=lambda v: v >= 1)
    if unit != "steps" and batch_tokens is None:
        raise _fail(path, f"budget.batch_tokens is needed to turn {unit} into steps")
    steps_flag = _get(b, "steps_flag", str, path, "budget.", default="steps", check=FLAG.match)
    budget = Budget(unit, tuple(sorted(float(v) for v in values)), batch_tokens or 0, steps_flag)

    raw_sizes = _get(doc, "sizes", list, path, "", check=lambda v: len(v) >= 1)
    sizes: list[Size] = []
    for i, s in enumerate(raw_sizes):
        where = f"sizes[{i}]."
        if not isinstance(s, dict):
            raise _fail(path, f"sizes[{i}] must be a table")
        _unknown(s, {"name", "params", "overrides"}, path, where)
        sname = _get(s, "name", str, path, where, check=NAME.match)
        params = _get(s, "params", int, path, where, check=lambda v: v >= 1)
        over = _overrides(s.get("overrides", {}), path, f"sizes[{i}].overrides")
        sizes.append(Size(sname, params, over))
    if len({s.name for s in sizes}) != len(sizes):
        raise _fail(path, "two sizes share a name")
    if len({s.params for s in sizes}) != len(sizes):
        raise _fail(path, "two sizes have the same params: a ladder needs distinct sizes")
    sizes.sort(key=lambda s: s.params)

    raw_methods = _get(doc, "methods", dict, path, "", check=lambda v: len(v) >= 2)
    methods: dict[str, Method] = {}
    for mname, m in raw_methods.items():
        where = f"methods.{mname}."
        if not NAME.match(mname):
            raise _fail(path, f"methods.{mname}: a method name must be letters, digits, '.', '_' or '-'")
        if not isinstance(m, dict):
            raise _fail(path, f"methods.{mname} must be a table")
        _unknown(m, {"script", "overrides", "search", "budgets"}, path, where)
        script = _find_script(_get(m, "script", str, path, where), path)
        if not script.is_file():
            raise _fail(path, f"{where}script {script}: no such file")
        over = _overrides(m.get("overrides", {}), path, f"{where}overrides")
        space = _get(m, "search", dict, path, where, default={})
        search_space: dict[str, list[Any]] = {}
        for key, vals in space.items():
            if not FLAG.match(key):
                raise _fail(path, f"{where}search.{key}: not a flag name")
            if not isinstance(vals, list) or not vals or not all(isinstance(v, Scalar) for v in vals):
                raise _fail(path, f"{where}search.{key} must be a non-empty list of values")
            if len(set(map(repr, vals))) != len(vals):
                raise _fail(path, f"{where}search.{key} repeats a value: {vals}")
            if key in over:
                raise _fail(path, f"{where}search.{key} is also a fixed override of the method")
            search_space[key] = list(vals)
        mbudgets = _get(m, "budgets", list, path, where, default=list(budget.values))
        if not mbudgets or any(float(v) not in budget.values for v in mbudgets if isinstance(v, (int, float))) \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mbudgets):
            raise _fail(path, f"{where}budgets must be a non-empty subset of budget.values {list(budget.values)}")
        methods[mname] = Method(mname, script, over, search_space, tuple(sorted(float(v) for v in mbudgets)))
        for s in sizes:
            clash = (set(s.overrides) & (set(over) | set(search_space))) | ({budget.steps_flag} & (
                set(s.overrides) | set(over) | set(search_space)))
            if clash:
                raise _fail(path, f"{where}: flag {sorted(clash)[0]!r} is set twice (by size {s.name}, the method "
                                  f"or the budget)")
    baseline = _get(doc, "baseline", str, path, "")
    if baseline not in methods:
        raise _fail(path, f"baseline {baseline!r} is not one of the methods ({', '.join(methods)})")
    for m in methods.values():
        if m.name != baseline and not set(m.budgets) & set(methods[baseline].budgets):
            raise _fail(path, f"methods.{m.name}: none of its budgets is one the baseline runs")
    if curve == "budgets" and len(methods[baseline].budgets) < 2:
        raise _fail(path, "curve = \"budgets\" needs the baseline at two budgets or more (or curve = \"validations\")")
    return LadderSpec(name, path, track, nproc, baseline, search, rounds, curve, tuple(tune), tuple(confirm), budget,
                      tuple(sizes), methods, timeout)


def load_spec(path: str | Path) -> LadderSpec:
    """Read and check a ladder spec file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: no such ladder spec") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{path}: cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpeedrunError(f"{path}: not valid TOML: {exc}") from None
    return parse_spec(doc, path)
