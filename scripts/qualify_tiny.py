"""How likely a fresh n-run replay of a record qualifies against a target, from the final losses of m seeds.

The track's rule (speedrun/judge/stats.py): n runs qualify when the one-sided t-test of "mean loss < T" gives
p < alpha, i.e. t = (T - mean) / (sd / sqrt(n)) > t_{1-alpha, n-1} (6.965 for n = 3, alpha = 0.01: the mean
must sit about 4 *sample* sds of one run below T, and a 2-degree-of-freedom sd is very noisy).

If the final losses of fresh runs are normal with mean mu and sd sigma, t is noncentral-t with n-1 degrees of
freedom and noncentrality (T - mu) sqrt(n) / sigma, so P(qualify) has a closed form. Three estimates:

  plug-in      mu, sigma = the sample mean and sd of the m measured seeds (exact noncentral t; a Monte Carlo
               draw of n normals checks it)
  predictive   averaged over the posterior of (mu, sigma) given the m seeds (Jeffreys prior: sigma^2 ~
               (m-1) s^2 / chi2_{m-1}, mu ~ N(mean, sigma^2 / m)): accounts for having measured sigma from
               only m seeds, the honest figure
  sd-upper     sigma at the upper end of its one-sided 90% confidence interval: a pessimistic bound

    python scripts/qualify_tiny.py --target 4.0 --losses 3.91,3.93,3.92,3.94,3.90
    python scripts/qualify_tiny.py --target 4.0 --from scripts/results/tiny_seeds.json --config adamw
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats as sps


def p_qualify(mu: float, sigma: float, target: float, n: int = 3, alpha: float = 0.01) -> float:
    """P(one-sided t-test of n normal(mu, sigma) losses against `target` gives p < alpha), exactly."""
    crit = sps.t.ppf(1 - alpha, n - 1)
    if sigma <= 0:
        return float(mu < target)
    return float(sps.nct.sf(crit, n - 1, (target - mu) * math.sqrt(n) / sigma))


def p_qualify_mc(mu: float, sigma: float, target: float, n: int = 3, alpha: float = 0.01, draws: int = 200_000,
                 seed: int = 0) -> float:
    """The same by simulation, with scipy's ttest_1samp as the referee applies it."""
    x = np.random.default_rng(seed).normal(mu, sigma, size=(draws, n))
    p = sps.ttest_1samp(x, target, axis=1, alternative="less").pvalue
    return float((p < alpha).mean())


def p_qualify_predictive(losses, target: float, n: int = 3, alpha: float = 0.01, draws: int = 20_000,
                         seed: int = 0) -> float:
    """P(qualify) averaged over the Jeffreys posterior of (mu, sigma) given the measured losses."""
    x = np.asarray(losses, dtype=np.float64)
    m, mean, s = len(x), x.mean(), x.std(ddof=1)
    rng = np.random.default_rng(seed)
    sigma = np.sqrt((m - 1) * s ** 2 / rng.chisquare(m - 1, draws))
    mu = rng.normal(mean, sigma / math.sqrt(m))
    crit = sps.t.ppf(1 - alpha, n - 1)
    return float(sps.nct.sf(crit, n - 1, (target - mu) * math.sqrt(n) / sigma).mean())


def sd_upper(losses, confidence: float = 0.9) -> float:
    x = np.asarray(losses, dtype=np.float64)
    m = len(x)
    return float(math.sqrt((m - 1) * x.var(ddof=1) / sps.chi2.ppf(1 - confidence, m - 1)))


def report(losses, target: float, n: int = 3, alpha: float = 0.01) -> dict:
    x = np.asarray(losses, dtype=np.float64)
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    up = sd_upper(x)
    return dict(m=len(x), mean=mean, sd=sd, sd_upper90=up, target=target, margin_sds=(target - mean) / sd,
                n_replay=n, alpha=alpha,
                p_plugin=p_qualify(mean, sd, target, n, alpha),
                p_plugin_mc=p_qualify_mc(mean, sd, target, n, alpha),
                p_predictive=p_qualify_predictive(x, target, n, alpha),
                p_sd_upper90=p_qualify(mean, up, target, n, alpha))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, required=True, action="append", help="repeatable")
    parser.add_argument("--losses", help="comma-separated final val losses of m seeds")
    parser.add_argument("--from", dest="source", type=Path, help="a results JSON list (final_loss per entry)")
    parser.add_argument("--config", help="with --from: only entries whose config is this")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    if args.source:
        rows = json.loads(args.source.read_text())
        losses = [r["final_loss"] for r in rows if "final_loss" in r and (not args.config or r.get("config") == args.config)]
    else:
        losses = [float(v) for v in args.losses.split(",")]
    for target in args.target:
        r = report(losses, target, args.n, args.alpha)
        print(f"T {target}: m {r['m']} mean {r['mean']:.4f} sd {r['sd']:.4f} (90% upper {r['sd_upper90']:.4f}), "
              f"margin {r['margin_sds']:.1f} sd; P(qualify, {args.n} runs, p < {args.alpha}): plug-in "
              f"{r['p_plugin']:.3f} (MC {r['p_plugin_mc']:.3f}), predictive {r['p_predictive']:.3f}, "
              f"sd at its 90% upper bound {r['p_sd_upper90']:.3f}")


if __name__ == "__main__":
    main()
