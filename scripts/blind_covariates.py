"""How much of the blind probe's spread the referee's covariates take out, on a model trained here.

The blind probe (`speedrun.referee.evaluation`) judges the mean gap between a model's loss where it never saw
the next token and its canonical loss at the same position; its bar is a few standard errors of that gap, so
it shrinks with the gaps' spread. This trains a small GPT on the tiny track's train tokens (plain AdamW, no
harness), scores every position of the first val tokens, and prints the spread of the per-position gaps
(loss less the mean loss at that position in the row) raw and after regressing on the covariates of
`speedrun.referee.surprisal`: the unigram surprisal, the bigram surprisal, both. It prints the figures at
several points of training (a weak model is mostly a unigram model; a better one, mostly a bigram one).

At the end it checks the bar's calibration with the trained model's own losses: the referee's plan for two
ranks (each row of a rank copied `--copies` times at distinct random cuts) is drawn `--trials` times; a causal
model's blind loss is its canonical loss at that position, so each draw's adjusted gap over its standard error
(`speedrun.judge.stats.blind_gap`) should be a standard normal: the bar of 4 is then passed by an honest run
about once in 30,000.

    python scripts/blind_covariates.py --steps 1500 --every 500 [--copies 2] [--trials 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from speedrun import paths
from speedrun.data.shards import read_shard
from speedrun.judge import stats
from speedrun.referee.surprisal import COUNT_TOKENS, Surprisal


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(self.norm1(x)).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class SmallGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, idx):
        x = self.embed(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T


def spreads(nll: np.ndarray, inputs: np.ndarray, targets: np.ndarray, surprisal: Surprisal) -> dict:
    """The per-position gaps' spread: raw, and the residual after each covariate set (least squares)."""
    gaps = (nll - nll.mean(0)).ravel()
    cov = surprisal.of(inputs.ravel(), targets.ravel())
    out = {"raw": float(gaps.std())}
    for name, cols in (("unigram", [0]), ("bigram", [1]), ("both", [0, 1])):
        design = np.column_stack([np.ones(len(gaps)), cov[:, cols]])
        coef, *_ = np.linalg.lstsq(design, gaps, rcond=None)
        out[name] = float((gaps - design @ coef).std())
    return out


def calibration(nll: np.ndarray, cov: np.ndarray, copies: int, trials: int, rng) -> np.ndarray:
    """The z of `trials` honest probe plans (two ranks, each row copied `copies` times at distinct cuts)."""
    rows, t = nll.shape
    zs = []
    for _ in range(trials):
        probes = []
        for own in np.array_split(rng.permutation(rows), 2):
            canonical = nll[own].mean(0)
            q = np.repeat(own, copies)
            j = np.concatenate([np.sort(rng.choice(np.arange(1, t + 1), copies, replace=False)) for _ in own])
            g, x = nll[q, j - 1] - canonical[j - 1], cov[q, j - 1]
            probes.append(stats.blind_sums(g, x))
        test = stats.blind_gap(probes)
        zs.append(test.gap / (test.sd / np.sqrt(test.positions)))
    return np.array(zs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(paths.data_dir() / "tiny"), help="the tiny track's data folder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500, help="measure every this many steps")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--val-tokens", type=int, default=262144)
    parser.add_argument("--copies", type=int, default=2, help="copies of a row in the calibration's plans")
    parser.add_argument("--trials", type=int, default=2000, help="probe plans drawn for the calibration")
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab, t = 512, args.seq_len
    train = np.concatenate([np.asarray(read_shard(f"{args.data}/tiny_train_00000{i}.bin")) for i in (1, 2)])
    train = train.astype(np.int64)
    val = np.asarray(read_shard(f"{args.data}/tiny_val_000000.bin")).astype(np.int64)[:args.val_tokens + 1]
    surprisal = Surprisal(train[:COUNT_TOKENS], vocab).centre(val)
    rows = args.val_tokens // t
    inputs = np.stack([val[i * t:(i + 1) * t] for i in range(rows)])
    targets = np.stack([val[i * t + 1:(i + 1) * t + 1] for i in range(rows)])
    model = SmallGPT(vocab, t)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    start = time.time()
    print(f"{'step':>6} {'val loss':>9} {'raw sd':>7} {'unigram':>8} {'bigram':>7} {'both':>6}   (residual sd, nats)")
    for step in range(1, args.steps + 1):
        at = rng.integers(0, len(train) - t - 1, 32)
        x = torch.from_numpy(np.stack([train[i:i + t] for i in at]))
        y = torch.from_numpy(np.stack([train[i + 1:i + t + 1] for i in at]))
        for group in opt.param_groups:
            group["lr"] = 6e-3 * min(1.0, step / 100) * (1 - step / (args.steps + 1))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                nll = torch.cat([F.cross_entropy(model(torch.from_numpy(inputs[a:a + 256])).flatten(0, 1),
                                                 torch.from_numpy(targets[a:a + 256]).flatten(), reduction="none")
                                 .view(-1, t) for a in range(0, rows, 256)]).numpy()
            s = spreads(nll, inputs, targets, surprisal)
            print(f"{step:>6} {nll.mean():>9.4f} {s['raw']:>7.3f} {s['unigram']:>8.3f} {s['bigram']:>7.3f} "
                  f"{s['both']:>6.3f}   ({time.time() - start:.0f} s)", flush=True)
    cov = surprisal.of(inputs.ravel(), targets.ravel()).reshape(inputs.shape + (2,))
    zs = calibration(nll, cov, args.copies, args.trials, rng)
    print(f"calibration, {args.trials} honest plans ({args.copies} copies a row): z mean {zs.mean():+.3f}, sd "
          f"{zs.std():.3f}, P(z > 3) {np.mean(zs > 3):.4f} (normal: 0.0013), P(z > 4) {np.mean(zs > 4):.4f}, "
          f"largest {zs.max():.2f}")


if __name__ == "__main__":
    main()
