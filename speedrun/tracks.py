"""Tracks are data: one TOML file per track under `configs/tracks/`, loaded and validated into a `Track`.

A track fixes everything that makes two runs comparable: the metric (wallclock or steps), the target
validation loss and how many val tokens it is measured on, the vocabulary, the hardware label, where the data
comes from (hub files with sha256 pins, or the built-in generator), the statistical rule a set of runs must
pass, and rule checks on the submission's source. Nothing here knows about models or optimizers.

Every validation error is one line naming the file and the field, raised as `SpeedrunError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from speedrun import paths
from speedrun.errors import SpeedrunError

REPO_ROOT = Path(__file__).resolve().parent.parent
METRICS = ("wallclock", "steps")
TESTS = ("ttest", "margin")


def tracks_dir() -> Path:
    """Where track files live: `$SPEEDRUN_TRACKS_DIR`, else the checkout's `configs/tracks`, else the tracks
    shipped in the package (the rule is `speedrun.paths`)."""
    return paths.tracks_dir()


@dataclass(frozen=True)
class DataSource:
    """Where a track's tokens come from.

    `hub`: files in a Hugging Face dataset repo; train shards are `train_pattern.format(i)` for i in
    `train_range` (inclusive). `generator`: the built-in corpus (`speedrun.data.corpus`), regenerated from `seed`.
    `sha256` pins file contents by file name where known.
    """

    source: str
    repo: str = ""
    repo_type: str = "dataset"
    val_files: tuple[str, ...] = ()
    train_pattern: str = ""
    train_range: tuple[int, int] = (1, 0)
    generator: str = ""
    seed: int = 0
    train_tokens: int = 0
    val_split_tokens: int = 0
    shard_tokens: int = 0
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def train_files(self) -> list[str]:
        if self.source == "hub":
            lo, hi = self.train_range
            return [self.train_pattern.format(i) for i in range(lo, hi + 1)]
        from speedrun.data import corpus

        return corpus.train_file_names(self)

    @property
    def all_val_files(self) -> list[str]:
        if self.source == "hub":
            return list(self.val_files)
        from speedrun.data import corpus

        return corpus.val_file_names(self)


@dataclass(frozen=True)
class Rule:
    """How a set of runs' final val losses must relate to the target.

    `ttest`: one-sided one-sample t-test of mean < target with p < `p_value`.
    `margin`: `(target - mean) * sqrt(n) >= margin` (the optimization track's rule).
    """

    test: str
    p_value: float = 0.01
    margin: float = 0.004
    min_runs: int = 1


@dataclass(frozen=True)
class Checks:
    """Rules on the submission itself, checked by the referee and by `speedrun verify`.

    `forbidden`: regular expressions that must not match the script's source (e.g. `torch._inductor.config`).
    `fixed_batch_tokens` / `fixed_seq_len`: the train loader must be asked for exactly these (0 = free).
    `systems_speedup_without_loss_test`: a record that only speeds up the previous record's computation may be
    accepted on time alone.
    `require_logits`: kept for old track files; under API 2 the referee always computes the loss from logits.
    `max_seq_len`: the longest sequence (or flat piece) the loaders serve (0 = free).
    """

    forbidden: tuple[str, ...] = ()
    fixed_batch_tokens: int = 0
    fixed_seq_len: int = 0
    systems_speedup_without_loss_test: bool = False
    require_logits: bool = False
    max_seq_len: int = 0

    def shape_problems(self, track_name: str, batch_tokens, seq_len) -> list[str]:
        """The train shape rules, one phrase per rule broken: the one statement of them, which the rank (to fail
        fast), the referee (the authority) and `speedrun verify` (from the evidence) all apply."""
        out = []
        if self.fixed_batch_tokens and batch_tokens != self.fixed_batch_tokens:
            out.append(f"train batch of {batch_tokens} tokens; track {track_name} fixes {self.fixed_batch_tokens}")
        if self.fixed_seq_len and seq_len != self.fixed_seq_len:
            out.append(f"seq_len {seq_len}; track {track_name} fixes {self.fixed_seq_len}")
        if self.max_seq_len and (seq_len or 0) > self.max_seq_len:
            out.append(f"seq_len {seq_len} is above track {track_name}'s limit {self.max_seq_len}")
        return out


@dataclass(frozen=True)
class Track:
    name: str
    description: str
    metric: str
    target_val_loss: float
    val_tokens: int
    vocab_size: int
    bos_token: int
    hardware: str
    data: DataSource
    rule: Rule
    checks: Checks
    path: Path
    config_sha256: str
    # reference levels of the val tokens, in nats/token: the unigram entropy (what a model that has seen no
    # data cannot beat: the referee's start check) and the entropy floor (no model can go below it); None =
    # not stored (the launcher then computes the unigram level from the val tokens themselves)
    unigram_entropy: float | None = None
    entropy_floor: float | None = None
    sd_floor: float | None = None  # the t-test never assumes a smaller sd (speedrun.judge.stats.sd_floor)
    val_split: "ValSplit" = None  # set in __post_init__ when not given (every existing track file omits it)
    budget: "Budget" = None

    def __post_init__(self):
        if self.val_split is None:
            object.__setattr__(self, "val_split", ValSplit())
        if self.budget is None:
            object.__setattr__(self, "budget", Budget())


    # what the metric means, stated once: the rest of the package asks these instead of testing the name
    @property
    def timed(self) -> bool:
        """Is the metric a time? Then it depends on the hardware (records are compared on the same machine);
        a step count does not (the global batch is fixed)."""
        return self.metric == "wallclock"

    @property
    def metric_unit(self) -> str:
        """"s" for wallclock tracks, "steps" for step-count tracks."""
        return "s" if self.timed else "steps"

    @property
    def metric_field(self) -> str:
        """The field of a judged repetition (and of its `val`/`finish` events) that holds the metric."""
        return "timed_s" if self.timed else "batches"


@dataclass(frozen=True)
class ValSplit:
    """`[val]`: which val tokens intermediate validations measure (the *monitor split*).

    The scored tokens are always the first `val_tokens` of the val shard(s), as before. `monitor_tokens`: how
    many val tokens right after the scored ones the intermediate validations measure instead, so the scored
    rows are first handed to the script at the final validation (`finish()`). None (the default, and what every
    committed track file says by saying nothing): as many as the val shard holds after the scored ones, at most
    `val_tokens`, and none if fewer than val_tokens // 16 are there; decided by the referee from the shard
    (`speedrun.referee.agent.monitor_tokens`). 0, or a shard with (almost) nothing after the scored ones (the
    tiny track's: 2,048 tokens after 262,144): no monitor split, every validation measures the scored tokens
    as in v2, and each `val` event says which split it measured."""

    monitor_tokens: int | None = None


@dataclass(frozen=True)
class Budget:
    """`[budget]`: how much time outside the clock a run may take; beyond it, the time counts as timed.

    `val_fraction`: validations pause the clock while all the untimed validation seconds stay within this
    fraction of the timed seconds so far; `val_free`: the first this many validations are untimed up to what the run's
    own training throughput says a validation of their size can cost (the referee's `VAL_COST` rule,
    `speedrun.referee.repetition`); `pre_start_s`: seconds from a rank's first line to `start()`, outside
    `warmup()`; `warmup_s`: seconds inside `warmup()`. Defaults apply to every track file that does not say
    otherwise."""

    val_fraction: float = 0.5
    val_free: int = 4
    pre_start_s: float = 300.0
    warmup_s: float = 1800.0


# --- loading and validation -------------------------------------------------------------------------------


class _Fields:
    """Reads typed fields from one TOML table, failing with 'FILE: field X: problem'."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = ""):
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: str, problem: str) -> SpeedrunError:
        return SpeedrunError(f"{self.path}: field '{self.prefix}{key}': {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"expected {kinds[0].__name__}, got a boolean")
        if not isinstance(value, kinds):
            raise self.fail(key, f"expected {kinds[0].__name__}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, key: str, kind: type = int, default: Any = ...) -> Any:
        value = self.get(key, (kind, int) if kind is float else kind, default)
        if value is not None and value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return float(value) if kind is float and value is not None else value

    def table_of(self, key: str) -> "_Fields":
        value = self.get(key, dict, {})
        return _Fields(self.path, value, f"{self.prefix}{key}.")

    def unknown(self, known: set[str]) -> None:
        extra = sorted(set(self.table) - known)
        if extra:
            raise self.fail(extra[0], "unknown field")


def _parse_data(f: _Fields) -> DataSource:
    source = f.get("source", str)
    sha = f.get("sha256", dict, {})
    for name, digest in sha.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise f.fail(f"sha256.{name}", "expected 64 lowercase hex digits")
    if source == "hub":
        f.unknown({"source", "repo", "repo_type", "val_files", "train_pattern", "train_range", "sha256"})
        val_files = f.get("val_files", list)
        train_range = f.get("train_range", list)
        if len(train_range) != 2 or not all(isinstance(i, int) for i in train_range) or train_range[0] > train_range[1]:
            raise f.fail("train_range", f"expected [first, last] shard indices, got {train_range!r}")
        pattern = f.get("train_pattern", str)
        try:
            pattern.format(1)
        except (IndexError, KeyError, ValueError) as exc:
            raise f.fail("train_pattern", f"not a format pattern with one index: {exc}") from None
        return DataSource(
            source="hub",
            repo=f.get("repo", str),
            repo_type=f.get("repo_type", str, "dataset"),
            val_files=tuple(str(v) for v in val_files),
            train_pattern=pattern,
            train_range=(train_range[0], train_range[1]),
            sha256=dict(sha),
        )
    if source == "generator":
        f.unknown({"source", "generator", "seed", "train_tokens", "val_split_tokens", "shard_tokens", "sha256"})
        return DataSource(
            source="generator",
            generator=f.get("generator", str),
            seed=f.get("seed", int),
            train_tokens=f.positive("train_tokens"),
            val_split_tokens=f.positive("val_split_tokens"),
            shard_tokens=f.positive("shard_tokens"),
            sha256=dict(sha),
        )
    raise f.fail("source", f"expected 'hub' or 'generator', got {source!r}")


def load_track_file(path: str | os.PathLike) -> Track:
    """Load and validate one track file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot read track file: {exc.strerror}") from None
    return parse_track(raw, path)


def parse_track(raw: bytes | str, path: str | os.PathLike) -> Track:
    """Validate a track file's contents (`path` names it in errors and must end in `<name>.toml`)."""
    path = Path(path)
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpeedrunError(f"{path}: not valid TOML: {exc}") from None

    f = _Fields(path, doc)
    f.unknown({"name", "description", "metric", "target_val_loss", "val_tokens", "vocab_size", "bos_token",
               "hardware", "data", "rule", "checks", "unigram_entropy", "entropy_floor", "sd_floor", "val", "budget"})
    name = f.get("name", str)
    if name != path.stem:
        raise f.fail("name", f"{name!r} does not match the file name {path.stem!r}")
    metric = f.get("metric", str)
    if metric not in METRICS:
        raise f.fail("metric", f"expected one of {', '.join(METRICS)}, got {metric!r}")
    vocab_size = f.positive("vocab_size")
    bos = f.get("bos_token", int)
    if not 0 <= bos < vocab_size:
        raise f.fail("bos_token", f"{bos} is outside the vocabulary [0, {vocab_size})")
    if vocab_size > 65536:
        raise f.fail("vocab_size", f"{vocab_size} does not fit the uint16 shard format")

    rf = f.table_of("rule")
    rf.unknown({"test", "p_value", "margin", "min_runs"})
    test = rf.get("test", str)
    if test not in TESTS:
        raise rf.fail("test", f"expected one of {', '.join(TESTS)}, got {test!r}")
    p_value = rf.positive("p_value", float, 0.01)
    if not p_value < 1:
        raise rf.fail("p_value", f"must be below 1, got {p_value}")
    rule = Rule(test=test, p_value=p_value, margin=rf.positive("margin", float, 0.004),
                min_runs=rf.positive("min_runs", int, 1))

    cf = f.table_of("checks")
    cf.unknown({"forbidden", "fixed_batch_tokens", "fixed_seq_len", "systems_speedup_without_loss_test",
                "require_logits", "max_seq_len"})
    forbidden = cf.get("forbidden", list, [])
    for i, pattern in enumerate(forbidden):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise cf.fail(f"forbidden[{i}]", f"not a regular expression: {exc}") from None
    checks = Checks(
        forbidden=tuple(forbidden),
        fixed_batch_tokens=cf.get("fixed_batch_tokens", int, 0),
        fixed_seq_len=cf.get("fixed_seq_len", int, 0),
        systems_speedup_without_loss_test=cf.get("systems_speedup_without_loss_test", bool, False),
        require_logits=cf.get("require_logits", bool, False),
        max_seq_len=cf.get("max_seq_len", int, 0),
    )

    vf = f.table_of("val")
    vf.unknown({"monitor_tokens"})
    monitor = vf.get("monitor_tokens", int, None)
    if monitor is not None and monitor < 0:
        raise vf.fail("monitor_tokens", f"must be 0 or more, got {monitor}")
    bf = f.table_of("budget")
    bf.unknown({"val_fraction", "val_free", "pre_start_s", "warmup_s"})
    free = bf.get("val_free", int, Budget.val_free)
    if free < 0:
        raise bf.fail("val_free", f"must be 0 or more, got {free}")
    budget = Budget(val_fraction=bf.positive("val_fraction", float, Budget.val_fraction), val_free=free,
                    pre_start_s=bf.positive("pre_start_s", float, Budget.pre_start_s),
                    warmup_s=bf.positive("warmup_s", float, Budget.warmup_s))

    return Track(
        name=name,
        description=f.get("description", str, ""),
        metric=metric,
        target_val_loss=f.positive("target_val_loss", float),
        val_tokens=f.positive("val_tokens"),
        vocab_size=vocab_size,
        bos_token=bos,
        hardware=f.get("hardware", str),
        data=_parse_data(f.table_of("data")),
        rule=rule,
        checks=checks,
        path=path,
        config_sha256=hashlib.sha256(raw).hexdigest(),
        unigram_entropy=f.positive("unigram_entropy", float, None),
        entropy_floor=f.positive("entropy_floor", float, None),
        sd_floor=f.positive("sd_floor", float, None),
        val_split=ValSplit(monitor_tokens=monitor),
        budget=budget,
    )


def track_names() -> list[str]:
    folder = tracks_dir()
    if not folder.is_dir():
        origin = " (from $SPEEDRUN_TRACKS_DIR)" if paths.from_env("SPEEDRUN_TRACKS_DIR") is not None else ""
        raise SpeedrunError(f"{folder}: no such tracks folder{origin}")
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_track(name_or_path: str) -> Track:
    """Load a track by name (from `tracks_dir()`) or by path to a `.toml` file."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return load_track_file(name_or_path)
    path = tracks_dir() / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(track_names()) or "none"
        raise SpeedrunError(f"unknown track {name_or_path!r} (known: {known}; looked in {tracks_dir()})")
    return load_track_file(path)


def all_tracks() -> list[Track]:
    return [load_track(n) for n in track_names()]
