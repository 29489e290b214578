"""The n-gram-class ceiling of the tiny track: the best val loss of models that see only the last 1-4 tokens.

The tiny target must need what a transformer learns beyond n-grams (topics, copying names, the word cache):
this script trains the strongest short-context models we have on the whole tiny train stream (16.8M tokens)
and scores them on exactly the track's val targets (val tokens 1..262,144, each given the tokens before it
in the val stream; a model scored by the referee sees at most this much context, so these are upper bounds
on what such a model can reach under the referee).

Two families:

  count   interpolated modified Kneser-Ney (Chen & Goodman: three discounts per order from the count-of-counts,
          continuation counts for the lower orders, interpolation down to the uniform distribution) for
          orders 1-5, exact counts in numpy (n-gram keys packed into int64, 9 bits a token). Also the
          maximum-likelihood unigram, and the additive-smoothed bigram for reference. With `--extra-chunks`
          also trained on up to 8x more tokens from the same generator (independent draws): how far an
          n-gram gets with far more data than the track has, i.e. near its order's asymptotic limit.
  mlp     a neural n-gram: embeddings of the previous k tokens (k = 1: bigram, 2: trigram, 3: 4-gram) ->
          concatenated -> MLP (GELU) -> logits over the vocabulary, trained with AdamW on the whole train
          stream. The loss is computed on the *aggregated* train stream: one row per distinct context with
          its next-token counts, weighted by them, which is exactly the token-level cross-entropy of a pass
          over the 16.8M train tokens (the full-batch gradient is identical; a mini-batch of contexts is an
          unbiased estimate) at a fraction of the cost. Several learning rates; the best val loss over
          training (early stopping on val, which flatters the MLP) is reported.

    python scripts/ngram_tiny.py count --max-order 5
    python scripts/ngram_tiny.py count --max-order 4 --extra-chunks 7   # + 117M generated tokens: the limit
    python scripts/ngram_tiny.py mlp --context 2 --lrs 1e-3,3e-3,1e-2 --epochs 20
    python scripts/ngram_tiny.py all --out scripts/results/tiny_ngram.json

Data: the tiny corpus under $SPEEDRUN_DATA_DIR (or <repo>/data), generated on first use.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from speedrun.data import streams as sdata
from speedrun import tracks

V_BITS = 9  # 512 tokens


def load_tokens(track_name: str = "tiny") -> tuple[np.ndarray, np.ndarray, object]:
    """(train stream, val tokens 0..val_tokens inclusive) of the track, as int64."""
    track = tracks.load_track(track_name)
    train_paths, val_paths = sdata.track_files(track)
    train = np.concatenate([sdata.read_shard(p) for p in train_paths]).astype(np.int64)
    val = np.concatenate([sdata.read_shard(p) for p in val_paths]).astype(np.int64)[: track.val_tokens + 1]
    assert track.vocab_size <= 1 << V_BITS
    return train, val, track


def extra_train(track, chunks: int) -> np.ndarray:
    """`chunks` x train_tokens more tokens from the track's generator (same grammar, topics, names' statistics;
    independent draws: streams [seed, 1000 + i], never the track's own train [seed, 1] or val [seed, 2])."""
    from speedrun.data import corpus

    params = corpus._Params(track.vocab_size, track.bos_token, track.data.seed)
    parts = []
    for i in range(chunks):
        rng = np.random.Generator(np.random.PCG64([track.data.seed, 1000 + i]))
        parts.append(corpus._stream(params, track.data.train_tokens, rng)[0].astype(np.int64))
    return np.concatenate(parts)


def ngram_keys(tokens: np.ndarray, n: int) -> np.ndarray:
    """Keys of every n-gram ending at positions n-1.. of `tokens`: oldest token in the high bits."""
    m = len(tokens) - n + 1
    key = np.zeros(m, dtype=np.int64)
    for j in range(n):
        key = (key << V_BITS) | tokens[j: j + m]
    return key


def lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[i] where sorted_keys[i] == query, else 0."""
    idx = np.searchsorted(sorted_keys, queries)
    idx = np.minimum(idx, len(sorted_keys) - 1)
    hit = sorted_keys[idx] == queries
    return np.where(hit, values[idx], 0)


def discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts D1, D2, D3+ from the count-of-counts (Chen & Goodman 1998)."""
    n = [np.count_nonzero(counts == k) for k in (1, 2, 3, 4)]
    if min(n) == 0:  # too few small counts to estimate (the unigram continuation level): plain KN's 0.75
        return 0.75, 0.75, 0.75
    y = n[0] / (n[0] + 2 * n[1])
    return 1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]


class KneserNey:
    """Interpolated modified Kneser-Ney of order `order` over a vocabulary of `vocab` tokens."""

    def __init__(self, train: np.ndarray, order: int, vocab: int):
        self.order, self.vocab = order, vocab
        self.levels = {}  # n -> dict(keys, counts, D, ctx_keys, ctx_total, ctx_n1, ctx_n2, ctx_n3)
        keys, counts = np.unique(ngram_keys(train, order), return_counts=True)
        for n in range(order, 0, -1):
            if n < order:  # continuation counts: distinct left extensions of each (n)-gram
                suffix = keys_above & ((1 << (V_BITS * n)) - 1)
                keys, counts = np.unique(suffix, return_counts=True)
            d = discounts(counts)
            ctx = keys >> V_BITS
            # keys are sorted, so contexts come in runs: per-context totals and N1/N2/N3+ by reduceat
            starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
            level = dict(keys=keys, counts=counts, D=d, ctx_keys=ctx[starts],
                         ctx_total=np.add.reduceat(counts, starts),
                         ctx_n1=np.add.reduceat((counts == 1).astype(np.int64), starts),
                         ctx_n2=np.add.reduceat((counts == 2).astype(np.int64), starts),
                         ctx_n3=np.add.reduceat((counts >= 3).astype(np.int64), starts))
            self.levels[n] = level
            keys_above = keys

    def logprob(self, tokens: np.ndarray, start: int = 1) -> np.ndarray:
        """ln p(tokens[i] | tokens[:i]) for i in start..len-1, using at most order-1 previous tokens."""
        positions = np.arange(start, len(tokens))
        p = np.full(len(positions), 1.0 / self.vocab)
        for n in range(1, self.order + 1):
            lv = self.levels[n]
            have = positions >= n - 1  # enough history for this order
            pos = positions[have]
            key = np.zeros(len(pos), dtype=np.int64)
            for j in range(n - 1, -1, -1):
                key = (key << V_BITS) | tokens[pos - j]
            ctx = key >> V_BITS
            total = lookup(lv["ctx_keys"], lv["ctx_total"], ctx).astype(np.float64)
            c = lookup(lv["keys"], lv["counts"], key).astype(np.float64)
            d1, d2, d3 = lv["D"]
            disc = np.where(c == 0, 0.0, np.where(c == 1, d1, np.where(c == 2, d2, d3)))
            gamma = (d1 * lookup(lv["ctx_keys"], lv["ctx_n1"], ctx) + d2 * lookup(lv["ctx_keys"], lv["ctx_n2"], ctx)
                     + d3 * lookup(lv["ctx_keys"], lv["ctx_n3"], ctx))
            seen = total > 0
            lower = p[have]
            new = np.where(seen, (np.maximum(c - disc, 0) + gamma * lower) / np.maximum(total, 1), lower)
            p[have] = new
        return np.log(p)


def count_models(train: np.ndarray, val: np.ndarray, vocab: int, max_order: int, note: str = "") -> list[dict]:
    results = []
    # maximum-likelihood unigram (the track's "unigram entropy" reference is this on train)
    uni = np.bincount(train, minlength=vocab).astype(np.float64)
    p_uni = (uni + 0.5) / (uni.sum() + 0.5 * vocab)
    results.append(dict(family="count", model=f"unigram (add-0.5){note}", order=1, train_tokens=len(train),
                        val_loss=float(-np.log(p_uni[val[1:]]).mean())))
    # additive-smoothed bigram, alpha swept on val (a reference point, flattering)
    big = np.zeros((vocab, vocab))
    np.add.at(big, (train[:-1], train[1:]), 1)
    best = None
    for alpha in (0.01, 0.03, 0.1, 0.3, 1.0):
        p = (big + alpha) / (big.sum(1, keepdims=True) + alpha * vocab)
        loss = float(-np.log(p[val[:-1], val[1:]]).mean())
        best = min(best or (loss, alpha), (loss, alpha))
    results.append(dict(family="count", model=f"bigram add-alpha (alpha {best[1]} best on val){note}", order=2,
                        train_tokens=len(train),
                        val_loss=best[0]))
    print(json.dumps(results[-2]), json.dumps(results[-1]), sep="\n", flush=True)
    for order in range(2, max_order + 1):
        t0 = time.time()
        kn = KneserNey(train, order, vocab)
        loss = float(-kn.logprob(val, start=1).mean())
        train_sample = train[: 1 << 20]
        results.append(dict(family="count", model=f"{order}-gram modified Kneser-Ney{note}", order=order,
                            train_tokens=len(train), val_loss=loss,
                            train_loss_first_1M=float(-kn.logprob(train_sample, start=1).mean()),
                            distinct_ngrams=int(len(kn.levels[order]["keys"])),
                            seconds=round(time.time() - t0, 1)))
        print(json.dumps(results[-1]), flush=True)
    return results


# --- neural n-gram -----------------------------------------------------------------------------------------------


def aggregate(tokens: np.ndarray, k: int, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (context of k tokens, next token) pairs of `tokens` with counts, sorted by context.

    Returns (ctx_tokens [C, k], indptr [C+1], next [E], counts [E]): context c's targets are next[indptr[c]:indptr[c+1]].
    Positions before `start` (or with fewer than k previous tokens) are not targets."""
    first = max(k, start)
    key = np.zeros(len(tokens) - first, dtype=np.int64)
    for j in range(k, -1, -1):
        key = (key << V_BITS) | tokens[first - j: len(tokens) - j]
    keys, counts = np.unique(key, return_counts=True)
    ctx = keys >> V_BITS
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
    indptr = np.r_[starts, len(keys)]
    ctx_keys = ctx[starts]
    ctx_tokens = np.stack([(ctx_keys >> (V_BITS * (k - 1 - j))) & ((1 << V_BITS) - 1) for j in range(k)], axis=1)
    return ctx_tokens, indptr, keys & ((1 << V_BITS) - 1), counts


def train_mlp(train: np.ndarray, val: np.ndarray, vocab: int, k: int, lr: float, epochs: int, dim: int = 128,
              hidden: int = 1024, layers: int = 2, batch_ctx: int = 2048, weight_decay: float = 0.0,
              seed: int = 0, threads: int | None = None, min_steps: int = 2000, evals: int = 10, patience: int = 2,
              log=print) -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ctx_tr, ptr_tr, nxt_tr, cnt_tr = aggregate(train, k)
    ctx_va, ptr_va, nxt_va, cnt_va = aggregate(val, k, start=1)
    n_val = int(cnt_va.sum())
    # val positions with fewer than k previous tokens (only the first k-1 targets) are left out of the mean

    class NGramMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, dim)
            mods, width = [], k * dim
            for _ in range(layers):
                mods += [nn.Linear(width, hidden), nn.GELU()]
                width = hidden
            self.mlp = nn.Sequential(*mods, nn.LayerNorm(width), nn.Linear(width, vocab))

        def forward(self, ctx):
            return self.mlp(self.emb(ctx).flatten(1))

    model = NGramMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)

    def rows_of(indptr, sel):
        """Flat edge indices of contexts `sel` and each edge's row in the batch."""
        lens = indptr[sel + 1] - indptr[sel]
        rows = np.repeat(np.arange(len(sel)), lens)
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return rows, indptr[sel][rows] + offs

    def batch_loss(ctx_tokens, indptr, nxt, cnt, sel):
        logp = F.log_softmax(model(torch.from_numpy(ctx_tokens[sel])), dim=-1)
        rows, edges = rows_of(indptr, sel)
        picked = logp[torch.from_numpy(rows), torch.from_numpy(nxt[edges])]
        return -(picked * torch.from_numpy(cnt[edges]).float()).sum()

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total = 0.0
        for s in range(0, len(ctx_va), 8192):
            total += float(batch_loss(ctx_va, ptr_va, nxt_va, cnt_va, np.arange(s, min(s + 8192, len(ctx_va)))))
        model.train()
        return total / n_val

    n_ctx, n_tok = len(ctx_tr), float(cnt_tr.sum())
    batch_ctx = min(batch_ctx, n_ctx)
    total_steps = epochs * -(-n_ctx // batch_ctx)  # an epoch = every distinct context once = one pass of the stream
    total_steps = max(total_steps, min_steps)
    eval_every = max(1, total_steps // evals)
    warmup = min(200, total_steps // 10)
    curve, best, since_best, t0, order, pos = [], math.inf, 0, time.time(), rng.permutation(n_ctx), 0
    for step in range(total_steps):
        if pos + batch_ctx > n_ctx:
            order, pos = rng.permutation(n_ctx), 0
        sel = order[pos: pos + batch_ctx]
        pos += batch_ctx
        # scaled so that its expectation is the per-token mean over the whole train stream
        loss = batch_loss(ctx_tr, ptr_tr, nxt_tr, cnt_tr, sel) * (n_ctx / len(sel)) / n_tok
        scale = (step + 1) / warmup if step < warmup else \
            0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0 or step + 1 == total_steps:
            v = evaluate()
            since_best = 0 if v < best else since_best + 1
            best = min(best, v)
            curve.append(dict(step=step + 1, epochs=round((step + 1) * batch_ctx / n_ctx, 2), val_loss=round(v, 5),
                              seconds=round(time.time() - t0, 1)))
            log(f"  mlp k={k} lr={lr:g} step {step + 1}/{total_steps} ({curve[-1]['epochs']} epochs): val {v:.4f} "
                f"(best {best:.4f}) {time.time() - t0:.0f}s")
            if patience and since_best >= patience:
                log(f"  stopped: val loss above its best for {patience} evaluations (overfitting)")
                break
    return dict(family="mlp", model=f"{k + 1}-gram MLP", order=k + 1, context=k, lr=lr, epochs=epochs,
                steps=total_steps, dim=dim,
                hidden=hidden, layers=layers, batch_contexts=batch_ctx, weight_decay=weight_decay,
                distinct_contexts=int(n_ctx), distinct_pairs=int(len(nxt_tr)), val_loss=best,
                final_val_loss=curve[-1]["val_loss"], curve=curve, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("count", "mlp", "all"))
    parser.add_argument("--track", default="tiny")
    parser.add_argument("--max-order", type=int, default=5)
    parser.add_argument("--context", default="1,2", help="mlp: comma-separated context lengths (1 = bigram)")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the distinct contexts (= over the stream)")
    parser.add_argument("--min-steps", type=int, default=2000, help="at least this many optimizer steps")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-contexts", type=int, default=2048)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--evals", type=int, default=10, help="val evaluations over the schedule")
    parser.add_argument("--patience", type=int, default=2, help="stop after this many evaluations above the best")
    parser.add_argument("--extra-chunks", type=int, default=0,
                        help="count: also train on this many x 16.8M more generated tokens (the asymptotic ceiling)")
    parser.add_argument("--out", type=Path, help="append results to this JSON list")
    args = parser.parse_args()
    train, val, track = load_tokens(args.track)
    print(f"train {len(train):,} tokens, val targets {len(val) - 1:,}; entropy floor (val) and unigram entropy "
          f"from the sidecar: see data/tiny/tiny_meta.json", flush=True)
    results = []
    old = json.loads(args.out.read_text()) if args.out and args.out.exists() else []

    def save():  # after every model, so that an interrupted run keeps what it finished
        if args.out:
            args.out.write_text(json.dumps(old + results, indent=1))

    if args.what in ("count", "all"):
        results += count_models(train, val, track.vocab_size, args.max_order)
        save()
        if args.extra_chunks:
            big = np.concatenate([train, extra_train(track, args.extra_chunks)])
            print(f"with {args.extra_chunks} extra generated chunks: {len(big):,} train tokens", flush=True)
            results += count_models(big, val, track.vocab_size, args.max_order,
                                    note=f" ({len(big) / 1e6:.0f}M tokens: train + generated)")
            del big
            save()
    if args.what in ("mlp", "all"):
        for k in (int(c) for c in args.context.split(",")):
            for lr in (float(x) for x in args.lrs.split(",")):
                r = train_mlp(train, val, track.vocab_size, k, lr, args.epochs, args.dim, args.hidden, args.layers,
                              args.batch_contexts, args.weight_decay, threads=args.threads or None,
                              min_steps=args.min_steps, evals=args.evals, patience=args.patience)
                print(json.dumps({key: v for key, v in r.items() if key != "curve"}), flush=True)
                results.append(r)
                save()
    print("\nbest val loss per model:")
    for r in sorted(results, key=lambda r: r["val_loss"]):
        print(f"  {r['val_loss']:.4f}  {r['model']}" + (f" lr {r['lr']:g}" if "lr" in r else ""))


if __name__ == "__main__":
    main()
