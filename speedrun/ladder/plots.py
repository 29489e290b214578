"""The ladder's three figures, drawn from `ladder.json` alone (so a committed report can be re-plotted).

- `loss_vs_size.png`: each method's tuned final loss (confirmation seeds, with interval) against parameters,
  one line per method and budget;
- `speedup_vs_size.png`: the data-equivalent speed-up over the baseline with its bootstrap interval, the line
  at 1, the log-log trend and the crossover (with its interval) where there is one;
- `lr_sensitivity.png`: tuning loss against each searched hyper-parameter, a panel per method, a line per size
  (the chosen value circled), which shows whether the optimum sat at an edge.

matplotlib is an optional extra (`pip install 'speedrun[plot]'`): without it, a one-line `SpeedrunError`.
"""

from __future__ import annotations

import math
from pathlib import Path

from speedrun.errors import SpeedrunError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpeedrunError("plots need matplotlib: pip install 'speedrun[plot]' (or pass --no-plots)") from None
    return plt


def _legend(ax, fontsize: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _err(iv: dict) -> tuple[float, float] | None:
    v, lo, hi = iv.get("value"), iv.get("lo"), iv.get("hi")
    if not (_ok(v) and _ok(lo) and _ok(hi)):
        return None
    return max(0.0, v - lo), max(0.0, hi - v)


def plot_loss(report: dict, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series: dict[tuple[str, float], list] = {}
    for size in report["sizes"]:
        for m in size["methods"]:
            if _ok(m["loss"]["value"]):
                series.setdefault((m["method"], m["budget"]), []).append((size["params"], m["loss"]))
    for (method, budget), rows in sorted(series.items()):
        xs = [r[0] for r in rows]
        ys = [r[1]["value"] for r in rows]
        errs = [_err(r[1]) or (0.0, 0.0) for r in rows]
        style = "-" if method != report["baseline"] else "--"
        ax.errorbar(xs, ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], fmt="o" + style, capsize=3,
                    label=f"{method}, budget {budget:g}" + (" (baseline)" if method == report["baseline"] else ""))
    ax.set_xscale("log")
    ax.set_xlabel("parameters (measured)")
    ax.set_ylabel("tuned final val loss (nats/token)")
    ax.set_title(f"{report['name']}: tuned loss vs size (95% t-intervals over fresh seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax, 8)
    return _save(plt, fig, out / "loss_vs_size.png")


def plot_speedup(report: dict, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series: dict[tuple[str, float], list] = {}
    for size in report["sizes"]:
        for c in size["comparisons"]:
            if _ok(c["speedup"]["value"]):
                series.setdefault((c["method"], c["budget"]), []).append((size["params"], c))
    all_x = [s["params"] for s in report["sizes"]]
    for (method, budget), rows in sorted(series.items()):
        xs = [r[0] for r in rows]
        ys = [r[1]["speedup"]["value"] for r in rows]
        errs = [_err(r[1]["speedup"]) or (0.0, 0.0) for r in rows]
        line = ax.errorbar(xs, ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], fmt="o", capsize=3,
                           label=f"{method} vs {report['baseline']}, budget {budget:g}")
        for x, r in zip(xs, rows):
            if r[1]["extrapolated"]:
                ax.annotate("extrap.", (x, r[1]["speedup"]["value"]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        trend = next((t for t in report["trends"] if t["method"] == method and t["budget"] == budget), None)
        if trend and _ok(trend["slope"]["value"]) and len(xs) >= 2:
            import numpy as np

            slope = trend["slope"]["value"]
            intercept = float(np.mean(np.log(ys)) - slope * np.mean(np.log(xs)))
            grid = np.geomspace(min(all_x) / 1.5, max(all_x) * 1.5, 50)
            ax.plot(grid, np.exp(intercept + slope * np.log(grid)), ":", color=line[0].get_color(),
                    label=f"trend, slope {slope:+.2f}")
            cross = trend["crossover_params"]
            if _ok(cross["value"]) and min(all_x) / 1.5 <= cross["value"] <= max(all_x) * 1.5:
                ax.axvline(cross["value"], color=line[0].get_color(), alpha=0.5)
                if _ok(cross["lo"]) and _ok(cross["hi"]):
                    ax.axvspan(cross["lo"], cross["hi"], color=line[0].get_color(), alpha=0.1,
                               label="crossover interval")
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    # speed-ups sit near 1: ticks as "1.1x", not as powers of ten ("1.1 x 10^0")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:.3g}x"))
    ax.set_xlabel("parameters (measured)")
    ax.set_ylabel("data-equivalent speed-up")
    ax.set_title(f"{report['name']}: speed-up vs size (95% bootstrap over seeds)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, 7)
    return _save(plt, fig, out / "speedup_vs_size.png")


def plot_sensitivity(report: dict, out: Path) -> Path:
    plt = _pyplot()
    panels: dict[tuple[str, float, str], list] = {}
    for size in report["sizes"]:
        for m in size["methods"]:
            keys = sorted({k for t in m["tuning"] for k in t["hparams"]})
            for key in keys:
                pts = sorted(((t["hparams"][key], t["loss"]) for t in m["tuning"] if key in t["hparams"]
                              and isinstance(t["hparams"][key], (int, float))), key=lambda p: p[0])
                panels.setdefault((m["method"], m["budget"], key), []).append((size, m, pts))
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, ((method, budget, key), rows) in zip(axes[0], sorted(panels.items())):
        for size, m, pts in rows:
            xs = [p[0] for p in pts]
            ys = [p[1] if _ok(p[1]) else float("nan") for p in pts]
            line = ax.plot(xs, ys, "o-", label=f"{size['size']}")
            best = (m.get("best") or {}).get(key)
            failed = [p[0] for p in pts if not _ok(p[1])]
            for x in failed:
                ax.annotate("x", (x, min(y for y in ys if _ok(y)) if any(_ok(y) for y in ys) else 0),
                            color=line[0].get_color(), ha="center")
            if best is not None:
                by = dict(pts).get(best)
                if _ok(by):
                    ax.plot([best], [by], "o", ms=11, mfc="none", color=line[0].get_color())
        ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("final val loss (tuning seeds)")
        ax.set_title(f"{method}, budget {budget:g}", fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, 7)
    return _save(plt, fig, out / "lr_sensitivity.png")


def plot_all(report: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _pyplot()
    return [plot_loss(report, out), plot_speedup(report, out), plot_sensitivity(report, out)]
