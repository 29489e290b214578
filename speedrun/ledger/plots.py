"""Pictures of runs and of the record progression (`speedrun plot`), drawn from evidence files only.

A loss curve against the referee's timed seconds is the quickest way to see whether a run is a record and
where it gains: the target as a line, every repetition, and the track's current record underneath. The
progression plot puts the ledger's own records beside the external (self-reported) history, in different marks,
so nobody mistakes one for the other. Everything is read from run directories, `record.toml` files and
`records/history/`, never from a live process, and drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.errors import SpeedrunError
from speedrun.evidence.rundir import MANIFEST, events_path, iter_repetitions, read_events, read_json
from speedrun.ledger.store import Record, load_records
from speedrun.ledger.store import current_record as ledger_current

X_CHOICES = ("seconds", "steps", "both")
LOG_SCALE_RATIO = 3.0  # the progression's y axis is logarithmic when its largest value exceeds 3x its smallest


class PlotNote(UserWarning):
    """Something left out of a plot that was still drawn (e.g. a target line for a track that is not
    installed); `speedrun plot` prints these as notes."""


@dataclass
class Curve:
    """The validation losses of one repetition."""

    run: str
    k: int
    steps: list[int] = field(default_factory=list)
    seconds: list[float | None] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    # the `train_loss` the script logged (`run.log(train_loss=...)`), seconds interpolated from the referee's
    # train events; drawn where the run validated only once, so that it still shows a curve
    train_steps: list[int] = field(default_factory=list)
    train_seconds: list[float | None] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)


def _read_train_curve(curve: Curve, events) -> None:
    """Fill `curve.train_*` from the `log` events' train_loss; timed seconds from the (batches, timed_s)
    anchors of the train, val and finish events (linear in between; none beyond the last anchor)."""
    anchors = sorted({(0, 0.0)} | {(e["batches"], float(e["timed_s"])) for e in events
                                   if e.get("event") in ("train", "val", "finish") and isinstance(e.get("batches"), int)
                                   and isinstance(e.get("timed_s"), (int, float))})
    for event in events.of("log"):
        loss, step = (event.get("scalars") or {}).get("train_loss"), event.get("step")
        if not isinstance(loss, (int, float)) or not isinstance(step, int) or not math.isfinite(loss):
            continue
        seconds = None
        for (b0, t0), (b1, t1) in zip(anchors, anchors[1:]):
            if b0 <= step <= b1:
                seconds = t0 if b1 == b0 else t0 + (t1 - t0) * (step - b0) / (b1 - b0)
                break
        curve.train_steps.append(step)
        curve.train_seconds.append(seconds)
        curve.train_losses.append(float(loss))


def read_curves(run_dir: str | os.PathLike) -> tuple[str | None, list[Curve]]:
    """(track name from the manifest, one curve per repetition) of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpeedrunError(f"{run_dir}: not a run directory")
    manifest = read_json(run_dir / MANIFEST)
    track = (manifest.get("track") or {}).get("name") if isinstance(manifest, dict) else None
    curves = []
    for k in iter_repetitions(run_dir):
        curve = Curve(run=run_dir.name, k=k)
        events = read_events(events_path(run_dir, k))
        for event in events.of("val"):
            if isinstance(event.get("loss"), (int, float)) and isinstance(event.get("step"), int):
                curve.steps.append(event["step"])
                t = event.get("timed_s")
                curve.seconds.append(float(t) if isinstance(t, (int, float)) else None)
                curve.losses.append(float(event["loss"]))
        _read_train_curve(curve, events)
        curves.append(curve)
    if not any(c.losses for c in curves):
        raise SpeedrunError(f"{run_dir}: no validation events to plot")
    return track, curves


# --- records: read through the ledger ------------------------------------------------------------------------


def ledger_records(track: str, records_dir: str | os.PathLike | None = None) -> list[Record]:
    return load_records(track, Path(records_dir) if records_dir is not None else None)


def current_record(track: str, records_dir: str | os.PathLike | None = None) -> Record | None:
    return ledger_current(track, Path(records_dir) if records_dir is not None else None)


# --- run plots ----------------------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """matplotlib is an optional extra: without it, say so in one line instead of a traceback."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SpeedrunError("plotting needs matplotlib: pip install 'speedrun[plot]'") from None


def _figure(ncols: int):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * ncols, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig, out: Path) -> None:
    """Render beside the target and rename, so a failed draw never leaves half a PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _draw_curve(ax, curve: Curve, axis: str, label: str | None, gid: str, **style) -> bool:
    if axis == "steps":
        xs, ys = curve.steps, curve.losses
    else:
        pairs = [(t, y) for t, y in zip(curve.seconds, curve.losses) if t is not None]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    if not xs:
        return False
    if len(xs) == 1:  # a lone validation: a visible marker (its value is written beside it later)
        style = {**style, "linestyle": "none"}
        (line,) = ax.plot(xs, ys, label=label or "_nolegend_", marker="o", markersize=7, **style)
    else:
        (line,) = ax.plot(xs, ys, label=label or "_nolegend_", marker=".", markersize=4, **style)
    line.set_gid(gid)
    return True


def _draw_train_curve(ax, curve: Curve, axis: str, label: str | None, gid: str, **style) -> list[float]:
    """The logged train loss of a repetition that validated once (else nothing); returns the losses drawn."""
    if len(curve.losses) != 1 or len(curve.train_losses) < 2:
        return []
    xs = curve.train_steps if axis == "steps" else curve.train_seconds
    pairs = [(x, y) for x, y in zip(xs, curve.train_losses) if x is not None]
    if len(pairs) < 2:
        return []
    (line,) = ax.plot([p[0] for p in pairs], [p[1] for p in pairs], label=label or "_nolegend_", linewidth=0.8,
                      alpha=0.45, **style)
    line.set_gid(gid)
    return [p[1] for p in pairs]


def _label_lone_points(ax, low: float, high: float) -> None:
    """Write each run's lone validation loss beside its marker; labels are spread apart vertically (at least
    1/25 of the axis) so that repetitions with close losses stay readable."""
    points = sorted((line.get_ydata()[0], line.get_xdata()[0], line) for line in ax.lines
                    if str(line.get_gid()).startswith("run:") and len(line.get_xdata()) == 1)
    gap, last = (high - low) / 25, -math.inf
    for y, x, line in points:
        text_y = max(y, last + gap)
        last = text_y
        ax.annotate(f"{y:.4f}", (x, y), xytext=(8, text_y), textcoords=("offset points", "data"), fontsize=8,
                    va="center", color=line.get_color(), gid=f"{line.get_gid()}:value")


def _loss_limits(losses: list[float], targets: list[float]) -> tuple[float, float]:
    """Zoom on the approach to the target (the first losses, ~10.8 nats, would flatten everything else), but
    always keep every target line and the lowest loss inside the range."""
    low = min(losses + targets)
    high = max(max(targets, default=low) + 1.0, min(losses) + 0.5)
    high = max(min(high, max(losses)), max(targets, default=low))
    pad = max(0.06 * (high - low), 0.02)
    return low - pad, high + pad


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike, x: str = "both",
              records_dir: str | os.PathLike | None = None):
    """Val loss of every repetition of each run, with each track's target and current record; returns the Figure.
    What had to be left out is a `PlotNote` warning."""
    require_matplotlib()
    from matplotlib import colormaps

    from speedrun.tracks import load_track

    if x not in X_CHOICES:
        raise SpeedrunError(f"--x: expected one of {', '.join(X_CHOICES)}, got {x!r}")
    runs = [(Path(d), *read_curves(d)) for d in run_dirs]
    axes_kinds = ["seconds", "steps"] if x == "both" else [x]
    fig, axes = _figure(len(axes_kinds))
    colors = colormaps["tab10"].colors
    targets: dict[float, str] = {}
    records: list[tuple[Record, list[Curve]]] = []
    for track in sorted({t for _, t, _ in runs if t}):
        try:
            targets[load_track(track).target_val_loss] = track
        except SpeedrunError as exc:
            warnings.warn(f"no target line for track {track!r}: {exc}", PlotNote, stacklevel=2)
        record = current_record(track, records_dir)
        if record is not None and record.path.resolve() not in {d.resolve() for d, _, _ in runs}:
            records.append((record, read_curves(record.path)[1]))

    all_losses = []
    for ax, axis in zip(axes, axes_kinds):
        drawn = 0
        for record, curves in records:
            for i, c in enumerate(curves):
                label = f"current record #{record.number} {record.slug}" if i == 0 else None
                _draw_curve(ax, c, axis, label, f"record:{record.number}:{c.k}", color="0.45", linestyle="--",
                            linewidth=1.2)
                all_losses += _draw_train_curve(ax, c, axis, f"record #{record.number} train loss (logged)"
                                                if i == 0 else None, f"train:record:{record.number}:{c.k}",
                                                color="0.45")
        for n, (path, _, curves) in enumerate(runs):
            color = colors[n % len(colors)]
            for i, c in enumerate(curves):
                label = f"{path.name} ({len(curves)} repetition{'s' * (len(curves) != 1)})" if i == 0 else None
                drawn += _draw_curve(ax, c, axis, label, f"run:{path.name}:{c.k}", color=color, linewidth=1.4,
                                     alpha=0.85)
                all_losses += c.losses
                all_losses += _draw_train_curve(ax, c, axis, f"{path.name} train loss (logged)" if i == 0 else None,
                                                f"train:{path.name}:{c.k}", color=color)
        if not drawn:
            raise SpeedrunError(f"no validation with timed seconds in {', '.join(str(d) for d, _, _ in runs)} "
                                f"(self-reported logs of early eras have none); use --x steps")
        for target, track in targets.items():
            line = ax.axhline(target, color="tab:red", linestyle=":", linewidth=1.5,
                              label=f"target {target:g} ({track})")
            line.set_gid(f"target:{track}")
        ax.set_xlabel("timed seconds (validation excluded)" if axis == "seconds" else "step")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"val loss vs {'time' if axis == 'seconds' else 'step'}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    lo, hi = _loss_limits(all_losses, list(targets))
    for ax in axes:
        ax.set_ylim(lo, hi)
        _label_lone_points(ax, lo, hi)
        # the clock and the step count start at 0; room on the right for the last markers and their values
        xmax = max((max(line.get_xdata(), default=0) for line in ax.lines
                    if str(line.get_gid()).startswith(("run:", "record:"))), default=0)
        ax.set_xlim(0, 1.1 * xmax if xmax > 0 else 1)
    _save(fig, Path(out))
    return fig


# --- progression --------------------------------------------------------------------------------------------


def plot_progression(track: str, out: str | os.PathLike, history_path: str | os.PathLike | None = None,
                     records_dir: str | os.PathLike | None = None):
    """Record time (or steps) against date: external history vs this ledger's records.

    The y axis is logarithmic where the values span more than `LOG_SCALE_RATIO` (the history falls 2700 s ->
    ~90 s), linear otherwise; the date axis is held to the records' own dates, and when they all fall on one
    day the x axis is the record number instead (a date axis would have nothing to show)."""
    import datetime as dt

    require_matplotlib()
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from speedrun.ledger.history import load_history
    from speedrun.tracks import load_track

    timed = load_track(track).timed
    history = [r for r in load_history(history_path) if r.track == track]
    dated = [r for r in history if r.day]
    ours = [r for r in ledger_records(track, records_dir) if r.verified]
    if not dated and not ours:
        raise SpeedrunError(f"no dated records for track {track!r} in the history or in the ledger")

    fig, (ax,) = _figure(1)
    fig.set_size_inches(9, 5.2)
    days = [r.day for r in dated] + [dt.date.fromisoformat(r.date) for r in ours]
    one_day = len(set(days)) == 1
    if one_day:  # x = record number: the history's rows in order, the ledger's own numbers
        hist_x, ours_x = list(range(1, len(dated) + 1)), [r.number for r in ours]
    else:
        hist_x, ours_x = [r.day for r in dated], [dt.date.fromisoformat(r.date) for r in ours]
    if dated:
        (line,) = ax.plot(hist_x, [r.value for r in dated], drawstyle="steps-post",
                          marker="o", markersize=4, linewidth=1, color="tab:blue",
                          label=f"modded-nanogpt history (external, self-reported; {len(dated)} records)")
        line.set_gid("history")
    if ours:
        (line,) = ax.plot(ours_x, [r.metric_mean for r in ours],
                          linestyle="none", marker="*", markersize=13, color="tab:red",
                          markeredgecolor="black", label=f"speedrun ledger (refereed; {len(ours)} record{'s' * (len(ours) != 1)})")
        line.set_gid("ledger")
    values = [r.value for r in dated] + [r.metric_mean for r in ours if r.metric_mean is not None]
    log_scale = bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO
    if log_scale:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
    if one_day:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(hist_x + ours_x) - 0.5, max(hist_x + ours_x) + 0.5)
        ax.set_xlabel(f"record number (all on {days[0].isoformat()})")
    else:
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        pad = max(dt.timedelta(days=1), (max(days) - min(days)) * 0.04)
        ax.set_xlim(min(days) - pad, max(days) + pad)
        ax.set_xlabel("date")
    if timed:
        ax.set_ylabel("record time (seconds, log scale)" if log_scale else "record time (seconds)")
    else:
        ax.set_ylabel("record steps (log scale)" if log_scale else "record steps")
    undated = len(history) - len(dated)
    note = f" ({undated} undated history row{'s' * (undated != 1)} not shown)" if undated else ""
    ax.set_title(f"{track}: record progression{note}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, Path(out))
    return fig


def _minor_log_label(value: float, _pos) -> str:
    """Label the 2s, 3s and 5s between decades in plain digits (not 2e+04); leave the rest unlabelled."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if mantissa in (2, 3, 5) else ""


# --- default paths -------------------------------------------------------------------------------------------


def run_plot_path(run_dirs: list[str | os.PathLike]) -> Path:
    """Where a run plot goes by default: into the (first) run directory, never the current directory."""
    return Path(run_dirs[0]) / ("val_loss.png" if len(run_dirs) == 1 else "val_loss-compare.png")


def progression_path(track: str) -> Path:
    """Where a progression plot goes by default: beside the runs (`speedrun.paths.runs_dir()`)."""
    from speedrun import paths

    return paths.runs_dir() / f"progression-{track}.png"
