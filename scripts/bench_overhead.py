"""What the referee costs a submission, measured side by side in one process under the real launcher.

`python scripts/bench_overhead.py` launches this file as a submission with `speedrun run` (the referee in its
own process, as for any run) and prints what the submission measured:

1. Timed step time of a tiny-track-sized GPT fed by the referee's train loader (batches served by the
   referee agent outside the sandbox through shared memory, each one counted) against the same loop fed by
   batches of the same shape already in the process's memory (no referee). Steps alternate A B B A A B ... so
   drifting load hits both sides alike; the ratio of the sides' mean step times is printed (target <= 1.01).
   Inside the sandbox the script sees no data file, so the bare side's tokens are random ones of the track's
   vocabulary: the arithmetic is the same, the token values are not.
2. One refereed validation (logits handed to the referee, which computes the cross-entropy and its probes)
   against a plain validation pass over as many real tokens (batches of the train loader held in memory) with
   `F.cross_entropy` on the same model, in alternating pairs; the median of the pairs' ratios is printed
   (target <= 1.10), and how much of each side was the model's forward.
3. Start-up: seconds from the launch to the rank's `init()` and to `start()` (the launcher's own clock), and
   the launch's whole wallclock; the seconds between `finish()` and the scored validation (the model's state
   sealed for the replica check, charged as timed) and the replica check's own launch after the run.

    python scripts/bench_overhead.py [--track tiny] [--steps 120] [--val-pairs 5] [--batch-tokens 4096] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", default="tiny")
    parser.add_argument("--steps", type=int, default=120, help="steps per side (alternating)")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--val-pairs", type=int, default=5, help="validations per side (alternating)")
    parser.add_argument("--device", default="", help="cpu to force the CPU on a GPU machine")
    parser.add_argument("--no-sandbox", action="store_true", help="run the ranks without bubblewrap")
    return parser.parse_args()


def drive(args: argparse.Namespace) -> int:
    """Launch this file under the referee and print its measurements."""
    from speedrun.cli import console
    from speedrun.referee import launcher
    from speedrun.tracks import load_track

    if args.device:
        os.environ["SPEEDRUN_DEVICE"] = args.device
    out = Path(tempfile.mkdtemp(prefix="speedrun-bench-")) / "run"
    flags = ["--steps", str(args.steps), "--batch-tokens", str(args.batch_tokens), "--seq-len", str(args.seq_len),
             "--val-pairs", str(args.val_pairs)]
    began = time.perf_counter()
    run_dir = launcher.launch(Path(__file__), load_track(args.track), 1, 1, str(out), 0, flags, {},
                              report=console.progress(), sandbox=not args.no_sandbox)
    wall = time.perf_counter() - began
    measured = [line[len("bench:"):].strip() for line in (run_dir / "run-1.log").read_text().splitlines()
                if line.startswith("bench:")]
    print("\n".join(measured))
    events, scored = {}, []
    for line in (run_dir / "run-1.jsonl").read_text().splitlines():
        event = json.loads(line)
        events.setdefault(event.get("event"), event)
        if event.get("event") == "val" and event.get("split") == "scored":
            scored.append(event)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if "init" in events and "start" in events:
        print(f"start-up: launch to init() {events['init']['t']:.2f} s, to start() {events['start']['t']:.2f} s; "
              f"whole launch {wall:.2f} s (the replica check included); sandbox {manifest.get('sandbox')}")
    if scored:  # finish() seals the model's state before the scored rows: that gap is on the clock
        print(f"finish() to the scored validation (the state sealed), charged as timed: {scored[-1]['charged_s']:.3f} s")
    replica = manifest.get("replica") or {}
    print(f"replica check: {replica.get('status')}, its launch {replica.get('seconds')} s after the repetition "
          f"(untimed)" + (f": {replica['why']}" if replica.get("why") else ""))
    if len(measured) < 5:
        print(f"bench_overhead: the submission did not finish its measurements; see {run_dir / 'run-1.log'}",
              file=sys.stderr)
        return 1
    return 0


def submission(args: argparse.Namespace) -> None:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import speedrun

    class TinyGPT(nn.Module):
        """The tiny baseline's shape (dim 128, 4 layers, 4 heads) from torch's own encoder layer."""

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

    run = speedrun.init()
    torch.manual_seed(0)
    model = TinyGPT(run.track.vocab_size, args.seq_len).to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    refereed = run.train_loader(args.batch_tokens, args.seq_len)
    rows = args.batch_tokens // args.seq_len
    generator = torch.Generator().manual_seed(0)
    pool = [torch.randint(run.track.vocab_size, (rows, args.seq_len + 1), generator=generator) for _ in range(8)]
    served = [0]

    def bare():  # a batch of the same shape from the process's memory, moved to the device as the loader does
        piece = pool[served[0] % len(pool)]
        served[0] += 1
        return piece[:, :-1].to(run.device), piece[:, 1:].to(run.device)

    def step(get) -> float:
        began = time.perf_counter()
        inputs, targets = get()
        F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    with run.warmup(model, [opt]):
        for _ in range(3):
            step(lambda: next(refereed))
    for _ in range(3):
        step(bare)  # warm caches and the allocator

    def logits_fn(inputs):
        return model(inputs)

    run.start(logits_fn)
    times = {"referee": [], "bare": []}
    for i in range(args.steps):
        for side in (("referee", "bare") if i % 2 == 0 else ("bare", "referee")):
            times[side].append(step((lambda: next(refereed)) if side == "referee" else bare))
    a, b = statistics.mean(times["referee"]), statistics.mean(times["bare"])
    print(f"bench: step time with referee   : {a * 1e3:8.2f} ms (mean of {args.steps} alternating steps, "
          f"{run.device})", flush=True)
    print(f"bench: step time without referee: {b * 1e3:8.2f} ms", flush=True)
    print(f"bench: ratio referee / bare     : {a / b:.4f}   (target <= 1.01)", flush=True)

    model.eval()
    # the plain side's batches: as many real tokens as the track's val set, from the referee's train loader (the
    # script sees no data file), held in memory before the first validation
    val = [next(refereed) for _ in range(run.track.val_tokens // args.batch_tokens)]

    forward = {"plain": 0.0, "referee": 0.0}  # seconds in the model's forward alone, per side

    def timed_forward(side: str, inputs):
        began = time.perf_counter()
        logits = model(inputs)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        forward[side] += time.perf_counter() - began
        return logits

    @torch.no_grad()
    def plain_validation() -> float:
        total = 0.0
        for inputs, targets in val:
            inputs, targets = inputs.to(run.device), targets.to(run.device)
            total += F.cross_entropy(timed_forward("plain", inputs).flatten(0, 1).float(), targets.flatten(),
                                     reduction="sum").item()
        return total / (len(val) * args.batch_tokens)

    def refereed_validation() -> float:
        return run.validate(logits_fn=lambda inputs: timed_forward("referee", inputs), step=0,
                            batch_tokens=args.batch_tokens)

    # pairs in alternating order (A B, B A, ...) so drift hits both sides alike; the ratio is the median of the
    # pairs' ratios, which a one-off stall on the machine moves less than a ratio of means
    times, ratios, losses = {"plain": [], "referee": []}, [], {}
    for i in range(args.val_pairs):
        pair = {}
        for side in (("plain", "referee") if i % 2 == 0 else ("referee", "plain")):
            began = time.perf_counter()
            losses[side] = (plain_validation if side == "plain" else refereed_validation)()
            pair[side] = time.perf_counter() - began
            times[side].append(pair[side])
        ratios.append(pair["referee"] / pair["plain"])
    spent = dict(forward)  # finish() has the last logits_fn measure the scored split once more: not counted
    run.finish()
    v, r = statistics.median(times["plain"]), statistics.median(times["referee"])
    print(f"bench: plain validation         : {v:8.3f} s ({len(val) * args.batch_tokens} tokens, loss {losses['plain']:.6f}; "
          f"median of {args.val_pairs})", flush=True)
    print(f"bench: referee validation       : {r:8.3f} s ({len(val)} batches + 1 probe batch, loss "
          f"{losses['referee']:.6f}) ratio {statistics.median(ratios):.4f}   (median of {args.val_pairs} "
          f"pairs' ratios, {min(ratios):.4f} .. {max(ratios):.4f}; target <= 1.10)", flush=True)
    n = args.val_pairs
    print(f"bench: of which the model forward: {spent['plain'] / n:8.3f} s plain, {spent['referee'] / n:.3f} s "
          f"refereed (mean per validation; the refereed side runs one probe batch more)", flush=True)
    outside = {side: statistics.mean(times[side]) - spent[side] / n for side in times}
    print(f"bench: outside the forward      : {outside['plain']:8.3f} s plain, {outside['referee']:.3f} s refereed "
          f"(mean per validation: the loss, the hand-over, the referee's probes; the forward's own noise left out, "
          f"the referee adds {(outside['referee'] - outside['plain']) / v:.1%} of a plain validation)", flush=True)


if __name__ == "__main__":
    arguments = parse()
    if os.environ.get("SPEEDRUN_REFEREE_SOCKET"):
        submission(arguments)
    else:
        sys.exit(drive(arguments))
