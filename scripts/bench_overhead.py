"""What the referee costs a submission, measured side by side in one process.

1. Timed step time of a tiny-track-sized GPT fed by the referee's train loader (inside `run.start()` ...) against
   the same loop fed by the bare canonical stream with no referee. Steps alternate A B B A A B ... (so drifting
   load on the machine hits both sides alike) and the ratio of the sides' total times is printed (target <= 1.01).
2. The final probes' cost against one plain validation pass (the same val tokens summed with no referee):
   target <= 5% extra.

    python scripts/bench_overhead.py [--track tiny] [--steps 20] [--blocks 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyGPT(nn.Module):
    """The tiny baseline's shape (dim 128, 4 layers, 4 heads, seq 128) from torch's own encoder layer."""

    def __init__(self, vocab: int, seq_len: int, dim: int = 128, layers: int = 4, heads: int = 4):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(seq_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(dim)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        return self.ln(self.body(x, mask=self.mask[:T, :T], is_causal=True)) @ self.wte.weight.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", default="tiny")
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per side (alternating)")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("SPEEDRUN_RUNS_DIR", tempfile.mkdtemp(prefix="speedrun-bench-"))

    import speedrun
    from speedrun import data

    run = speedrun.init(track=args.track)
    torch.manual_seed(0)
    model = TinyGPT(run.track.vocab_size, args.seq_len).to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    refereed = run.train_loader(args.batch_tokens, args.seq_len)
    bare = data.TrainStream(run._train_files, args.batch_tokens, args.seq_len, device=run.device)

    def step(batches) -> float:
        began = time.perf_counter()
        inputs, targets = next(batches)
        F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    for _ in range(3):
        step(bare)  # warm caches and the allocator
    run.start()
    times = {"referee": [], "bare": []}
    for i in range(args.blocks * args.steps):
        order = ("referee", "bare") if i % 2 == 0 else ("bare", "referee")
        for side in order:
            times[side].append(step(refereed if side == "referee" else bare))
    a, b = sum(times["referee"]) / len(times["referee"]), sum(times["bare"]) / len(times["bare"])
    print(f"step time with referee   : {a * 1e3:8.2f} ms (mean of {len(times['referee'])} alternating steps)")
    print(f"step time without referee: {b * 1e3:8.2f} ms")
    print(f"ratio referee / bare     : {a / b:.4f}   (target <= 1.01)")

    def loss_fn(inputs, targets):
        return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    model.eval()
    val_batch = args.batch_tokens  # the tiny submission validates with its train batch shape

    @torch.no_grad()
    def plain_validation() -> float:
        total = 0.0
        for inputs, targets in data.ValStream(run._val_files, run.track.val_tokens, val_batch, args.seq_len,
                                              device=run.device):
            total += loss_fn(inputs, targets).double().sum().item()
        return total / run.track.val_tokens

    plain, probes, refereed_val = [], [], []
    for _ in range(3):
        began = time.perf_counter()
        loss_plain = plain_validation()
        plain.append(time.perf_counter() - began)
        began = time.perf_counter()
        loss_ref = run.validate(loss_fn, step=0, batch_tokens=val_batch, logits_fn=model)
        refereed_val.append(time.perf_counter() - began)
        began = time.perf_counter()
        run._run_probes()
        probes.append(time.perf_counter() - began)
    assert abs(loss_plain - loss_ref) < 1e-9, (loss_plain, loss_ref)
    p, v, r = statistics.median(probes), statistics.median(plain), statistics.median(refereed_val)
    print(f"plain validation         : {v:8.3f} s ({run.track.val_tokens} tokens)")
    print(f"referee validation       : {r:8.3f} s  ratio {r / v:.4f}")
    print(f"final probes             : {p:8.3f} s  = {100 * p / v:.2f}% of one validation   (target <= 5%)")


if __name__ == "__main__":
    main()
