"""Data outside the loader: `train.batch_tokens` assigned directly, so each step trains 8x the rows counted.

`train.set()` tells the referee about a new shape (a `loader` message); assigning the attribute does not, yet
the loader builds each step from `self.batch_tokens`. After start() the script sets `train.batch_tokens` to 8
times the declared 4096: every step serves 8x as many rows, the referee counts 4096 tokens a step, and the
evidence's tokens, throughput and shape rules all describe a batch that was never used. Unchecked: the loader
serves 196,608 tokens where the evidence counts 24,576, and (at 6 steps, where the step count limits the
model more than the batch) a final loss 1% below the honest run's.
"""
from _common import FINISH, START, VALIDATE

PATCHES = [
    (VALIDATE, VALIDATE[:-1] + ", batch_tokens=args.batch_tokens // accum)  # the declared shape"),
    (START, START + "train.batch_tokens *= 8  # cheat: no loader message, the referee still counts the old batch\n"),
    (FINISH, FINISH + 'run.print0(f"cheat: the loader served {train.tokens_served} tokens; the referee '
                      'counted {train.batches * args.batch_tokens}")\n'),
]
EFFECT = [("loss_below", 0.995), ("log", r"served (\d+) tokens; the referee counted (?!\1)\d+")]
