"""Bending the statistics: the seeds are ignored, and logits times (1 + 1e-6 * seed) make the runs differ a hair.

The script seeds torch with 0 instead of the launcher's seed, so every repetition starts from the same weights
and (on a CPU, where the ranks' sums are deterministic) trains bit for bit the same. Identical final losses
would be refused, so logits_fn multiplies the logits by (1 + 1e-6 * seed): each repetition's final loss
differs from the others by about a millionth. A t-test of the mean against the target then sees a standard
deviation near zero and a t statistic in the thousands: any mean a hair below the target "passes". Unchecked:
repetitions whose final losses differ by less than 1e-5 of their value (honest seeds spread them by about
1e-2).
"""
from _common import ROUTE, logits_fn

PATCHES = [
    ("torch.manual_seed(run.seed)\n", "torch.manual_seed(0)  # cheat: the same weights whatever the seed\n"),
    ROUTE,
    logits_fn("    return logits if model.training else logits * (1 + 1e-6 * run.seed)  # cheat: a hair apart\n"),
]
RUNS = 2
EFFECT = [("near_identical_runs", 1e-5)]
