"""Benchmark speedrun.optim, each figure measured side by side in one run and printed as a ratio.

  [1] one Muon step over GPT-2-small's hidden matrices (per layer four 768x768, one 3072x768, one 768x3072)
      against a straightforward per-parameter implementation, plus the quality of both orthogonalisations
      (relative error against fp64 Newton-Schulz, and the singular values they produce);
  [2] distributed (torchrun, gloo ranks): per-step optimizer wallclock of the sharded Muon against every rank
      orthogonalising every matrix (same kernels, no sharding);
  [3] AdamW over GPT-2-small's embedding, head and vectors: fused against foreach and for-loop torch paths;
  [4] the optimizer's share of a GPT-2-small training step on one device (forward/backward against Muon+AdamW),
      with an estimate for 8 devices (orthogonalisation measured on 1/8 of every stack; communication excluded);
  [5] one Muon step on bf16 weights (GPT-2-small's hidden matrices, as in [1]): speedrun.optim.Muon with its
      defaults against torch.optim.Muon, same weights, gradients and hyper-parameters (both orthogonalise in
      bf16 with the same coefficients), plus how far apart the two leave the weights.

    python scripts/bench_optim.py                  # CPU: [1] fp32, [2], [3], [5] bf16
    python scripts/bench_optim.py --device cuda    # one GPU, bf16: [1], [3], [4], [5]  (~2 minutes on an H100)
    python scripts/bench_optim.py --parts 2 --banks   # [2] with every layer's matrices stored as 3-D banks

Timings alternate between the two sides of each ratio and report medians, so a busy machine hurts both alike;
the ratios of [1] and [5] are medians of the per-round ratios (each round times both sides back to back).
On CPU, bf16 speed depends on native bf16 instructions (avx512_bf16 / amx_bf16): the header says which exist.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speedrun.optim import AdamW, Muon, ns_schedule, orthogonalize, split_params  # noqa: E402

DIM, HIDDEN, VOCAB = 768, 3072, 50304


def gpt2_hidden_shapes(layers: int) -> list[tuple[int, int]]:
    """Per layer: q, k, v, o (768x768), MLP up (3072x768) and down (768x3072), as nn.Linear weights."""
    return [(DIM, DIM)] * 4 * layers + [(HIDDEN, DIM), (DIM, HIDDEN)] * layers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(fns: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run in turn `repeats` times after `warmup` untimed rounds."""
    times = rounds(fns, device, repeats, warmup)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rounds(fns: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each function in each of `repeats` rounds (the order within a round flips every round)."""
    times = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        order = list(fns.items()) if round_ % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t = timed(fn, device)
            if round_ >= warmup:
                times[name].append(t)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator/denominator: load that changes between rounds cancels within each."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def cpu_bf16_flags() -> str:
    """Native bf16 support of this CPU, from /proc/cpuinfo (Linux)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "cpu flags unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags.split()]
    return ", ".join(found) if found else "no avx512_bf16 / amx_bf16"


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# --- the straightforward implementation the figures compare against -----------------------------------------


def straightforward_newton_schulz(G: torch.Tensor, dtype: torch.dtype, steps: int = 5, eps: float = 1e-7):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype)
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if tall else X


class StraightforwardMuon:
    """Per parameter, one at a time: EMA momentum, Nesterov, Newton-Schulz, shape scale, decoupled decay."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0, dtype=torch.float32):
        self.params, self.lr, self.momentum, self.wd, self.dtype = list(params), lr, momentum, weight_decay, dtype
        self.bufs = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        for p, buf in zip(self.params, self.bufs):
            if p.grad is None:
                continue
            buf.lerp_(p.grad, 1 - self.momentum)
            update = p.grad.lerp(buf, self.momentum)
            O = straightforward_newton_schulz(update, self.dtype)
            p.mul_(1 - self.lr * self.wd)
            p.add_(O, alpha=-self.lr * max(1, p.size(0) / p.size(1)) ** 0.5)


def make_matrices(shapes, device: torch.device, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(s, generator=gen) * 0.02).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    return weights, grads


def with_grads(weights, grads) -> list[torch.Tensor]:
    params = [w.clone().requires_grad_() for w in weights]
    for p, g in zip(params, grads):
        p.grad = g
    return params


# --- [1] single process -------------------------------------------------------------------------------------


def bench_single(device: torch.device, layers: int, repeats: int) -> dict:
    dtype = compute_dtype(device)
    shapes = gpt2_hidden_shapes(layers)
    weights, grads = make_matrices(shapes, device)
    ours = Muon(with_grads(weights, grads), lr=0.02, dtype=dtype)
    plain = StraightforwardMuon(with_grads(weights, grads), lr=0.02, dtype=dtype)
    times = rounds({"straightforward": plain.step, "ours": ours.step}, device, repeats)
    t = {name: statistics.median(ts) for name, ts in times.items()}
    quality = orthogonalisation_quality(grads[:4] + grads[4 * layers:4 * layers + 2], dtype)
    result = {"layers": layers, "matrices": len(shapes), "values": sum(math.prod(s) for s in shapes),
              "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "straightforward_s": t["straightforward"], "ours_s": t["ours"],
              "ratio": paired_ratio(times, "ours", "straightforward"), **quality}
    print(f"[1] one Muon step, GPT-2-small hidden matrices: {layers} layers, {len(shapes)} matrices, "
          f"{result['values'] / 1e6:.1f}M values, {device.type} {result['dtype']} (median of {repeats})")
    print(f"    straightforward per-parameter Muon   {t['straightforward'] * 1e3:10.1f} ms/step")
    print(f"    speedrun.optim.Muon                   {t['ours'] * 1e3:10.1f} ms/step")
    print(f"    ratio ours / straightforward          {result['ratio']:10.3f}   (target <= 1.0)")
    print(f"    quality on layer 0's six gradients: relative error vs fp64 Newton-Schulz "
          f"ours {quality['ours_rel_err']:.2e}, straightforward {quality['straightforward_rel_err']:.2e}")
    print(f"    singular values out: ours [{quality['ours_sv_min']:.3f}, {quality['ours_sv_max']:.3f}], "
          f"straightforward [{quality['straightforward_sv_min']:.3f}, {quality['straightforward_sv_max']:.3f}]; "
          f"schedule band [0.68, 1.21] for inputs >= 2e-3 after normalisation")
    return result


def orthogonalisation_quality(grads: list[torch.Tensor], dtype: torch.dtype) -> dict:
    """Relative Frobenius error against fp64 and the singular-value range, for both implementations."""
    errs = {"ours": [], "straightforward": []}
    svs = {"ours": [], "straightforward": []}
    for G in grads:
        ref = straightforward_newton_schulz(G.double(), torch.float64)
        outs = {"ours": orthogonalize(G.unsqueeze(0), ns_schedule(), dtype=dtype)[0],
                "straightforward": straightforward_newton_schulz(G, dtype)}
        for name, O in outs.items():
            O = O.double()
            errs[name].append(((O - ref).norm() / ref.norm()).item())
            svs[name].append(torch.linalg.svdvals(O.cpu()))
    out = {}
    for name in errs:
        s = torch.cat(svs[name])
        out.update({f"{name}_rel_err": max(errs[name]), f"{name}_sv_min": s.min().item(),
                    f"{name}_sv_max": s.max().item()})
    return out


# --- [5] against torch.optim.Muon, bf16 -------------------------------------------------------------------


def bench_torch_muon(device: torch.device, layers: int, repeats: int) -> dict:
    shapes = gpt2_hidden_shapes(layers)
    weights, grads = make_matrices(shapes, device, seed=2)
    weights, grads = [w.bfloat16() for w in weights], [g.bfloat16() for g in grads]
    hyper = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, adjust_lr_fn="original")
    ours_params, torch_params = with_grads(weights, grads), with_grads(weights, grads)
    ours = Muon(ours_params, **hyper)
    theirs = torch.optim.Muon(torch_params, **hyper)
    times = rounds({"torch": theirs.step, "ours": ours.step}, device, repeats)
    t = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = paired_ratio(times, "ours", "torch")
    # both took the same steps on the same gradients: compare where they left the weights
    moved = max((p.float() - w.float()).abs().max().item() for p, w in zip(torch_params, weights))
    apart = max((a.float() - b.float()).abs().max().item() for a, b in zip(ours_params, torch_params))
    where = f"{device.type}" + (f" ({cpu_bf16_flags()})" if device.type == "cpu" else "")
    print(f"[5] one Muon step on bf16 weights, GPT-2-small hidden matrices: {layers} layers, {len(shapes)} matrices, "
          f"{where}, {torch.get_num_threads()} threads (median of {repeats})")
    print(f"    torch.optim.Muon                      {t['torch'] * 1e3:10.1f} ms/step")
    print(f"    speedrun.optim.Muon (defaults)        {t['ours'] * 1e3:10.1f} ms/step")
    print(f"    ratio ours / torch.optim.Muon         {ratio:10.3f}   (target <= 1.0; median of per-round ratios)")
    print(f"    after {1 + repeats} identical steps the weights are at most {apart:.2e} apart "
          f"(they moved up to {moved:.2e}; bf16 spacing near 0.03 is 1.2e-4)")
    return {"layers": layers, "torch_s": t["torch"], "ours_s": t["ours"], "ratio": ratio,
            "max_apart": apart, "max_moved": moved, "cpu_bf16": cpu_bf16_flags() if device.type == "cpu" else None}


# --- [2] distributed ----------------------------------------------------------------------------------------


def bench_dist(ranks: int, layers: int, repeats: int, banks: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dist.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               __file__, "--dist-worker", str(out), "--layers", str(layers), "--repeats", str(repeats)]
        cmd += ["--banks"] if banks else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"bench_optim: the torchrun benchmark failed (exit {proc.returncode})")
        result = json.loads(out.read_text())
    layout = "as 3 banks [layers*4|layers, rows, cols]" if banks else "as 2-D matrices"
    print(f"[2] distributed Muon step, {ranks} gloo ranks x {result['threads']} thread(s), {layers} layers {layout} "
          f"(slowest rank, median of {repeats})")
    print(f"    every rank orthogonalises every matrix {result['replicated_s'] * 1e3:10.1f} ms/step")
    print(f"    sharded (speedrun.optim.Muon)         {result['sharded_s'] * 1e3:10.1f} ms/step")
    print(f"    ratio sharded / replicated            {result['ratio']:10.3f}   (target <= 0.6)")
    print(f"    max |difference| of the updated weights: {result['max_abs_diff']:.2e}")
    return result


def gpt2_hidden_banks(layers: int) -> list[tuple[int, int, int]]:
    """The same matrices as `gpt2_hidden_shapes`, stored as one 3-D bank per shape."""
    return [(4 * layers, DIM, DIM), (layers, HIDDEN, DIM), (layers, DIM, HIDDEN)]


def dist_worker(out: Path, layers: int, repeats: int, banks: bool = False) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    alone = [dist.new_group([r]) for r in range(world)][rank]   # a group of one: no sharding
    device = torch.device("cpu")
    weights, grads = make_matrices(gpt2_hidden_banks(layers) if banks else gpt2_hidden_shapes(layers), device)
    sharded_params, replicated_params = with_grads(weights, grads), with_grads(weights, grads)
    sharded = Muon(sharded_params, lr=0.02)
    replicated = Muon(replicated_params, lr=0.02, process_group=alone)

    def slowest(fn):
        def run():
            dist.barrier()
            t = torch.tensor([timed(fn, device)], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return t.item()
        return run

    times = {"replicated": [], "sharded": []}
    for round_ in range(1 + repeats):
        for name, opt in (("replicated", replicated), ("sharded", sharded)):
            t = slowest(opt.step)()
            if round_:
                times[name].append(t)
    diff = max((a - b).abs().max().item() for a, b in zip(sharded_params, replicated_params))
    if rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        out.write_text(json.dumps({"ranks": world, "threads": torch.get_num_threads(), "layers": layers,
                                   "replicated_s": med["replicated"], "sharded_s": med["sharded"],
                                   "ratio": med["sharded"] / med["replicated"], "max_abs_diff": diff}))
    dist.barrier()
    dist.destroy_process_group()


# --- [3] AdamW paths ----------------------------------------------------------------------------------------


def bench_adamw(device: torch.device, layers: int, repeats: int) -> dict:
    shapes = [(VOCAB, DIM), (VOCAB, DIM)] + [(DIM,)] * (4 * layers + 2)
    weights, grads = make_matrices(shapes, device, seed=1)
    paths = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}
    opts = {name: torch.optim.AdamW(with_grads(weights, grads), lr=1e-3, **kw) for name, kw in paths.items()}
    t = alternate({name: opt.step for name, opt in opts.items()}, device, max(repeats, 5), warmup=2)
    default = AdamW(with_grads(weights, grads)).defaults
    chosen = "fused" if default["fused"] else "torch default"
    print(f"[3] AdamW step over GPT-2-small's embedding, head and {4 * layers + 2} vectors, {device.type} fp32 "
          f"(speedrun.optim.AdamW uses: {chosen})")
    for name in paths:
        print(f"    torch.optim.AdamW {name:<9}           {t[name] * 1e3:10.2f} ms/step   "
              f"ratio to fused {t[name] / t['fused']:.2f}")
    return {f"{name}_s": v for name, v in t.items()} | {"chosen": chosen}


# --- [4] share of a training step ---------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.up, self.down = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        h = self.ln1(x)
        q, k, v = (proj(h).view(B, T, self.heads, C // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.o(y)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    """GPT-2-small shaped: 12 layers, 768 wide, 12 heads, untied head over a 50304-token vocabulary."""

    def __init__(self, layers: int = 12, dim: int = DIM, heads: int = 12, vocab: int = VOCAB, context: int = 1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def bench_share(device: torch.device, layers: int, batch_seqs: int, seq_len: int, steps: int, compile_: bool) -> dict:
    torch.manual_seed(0)
    model = GPT(layers=layers).to(device)
    split = split_params(model, lr={"muon": 0.05, "embed": 0.6, "head": 0.008, "scalar": 0.04})
    muon = Muon(split.muon, momentum=0.95)
    adamw = AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
    forward = model
    if compile_:
        forward = torch.compile(model)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, VOCAB, (batch_seqs, seq_len + 1), generator=gen).to(device)
    inputs, targets = idx[:, :-1], idx[:, 1:]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def fwd_bwd():
        with autocast:
            loss = forward(inputs, targets)
        loss.backward()

    try:
        fwd_bwd()
    except Exception as exc:  # a compiler problem must not cost the other figures
        if not compile_:
            raise
        print(f"    torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); measuring eager instead")
        forward, compile_ = model, False
        model.zero_grad(set_to_none=True)
        fwd_bwd()
    times = {"fwd_bwd": [], "muon": [], "adamw": []}
    for step in range(2 + steps):
        model.zero_grad(set_to_none=True)
        for name, fn in (("fwd_bwd", fwd_bwd), ("muon", muon.step), ("adamw", adamw.step)):
            t = timed(fn, device)
            if step >= 2:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    opt = med["muon"] + med["adamw"]
    share = opt / (med["fwd_bwd"] + opt)
    ns_full, ns_eighth = orthogonalisation_time(split.muon[0]["params"], device, 8)
    muon_8 = max(med["muon"] - ns_full + ns_eighth, 0.0)
    share_8 = (muon_8 + med["adamw"]) / (med["fwd_bwd"] + muon_8 + med["adamw"])
    tokens = batch_seqs * seq_len
    print(f"[4] share of a GPT-2-small training step ({layers} layers, {tokens} tokens/step, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, {'compiled' if compile_ else 'eager'}, "
          f"median of {steps})")
    print(f"    forward+backward                      {med['fwd_bwd'] * 1e3:10.1f} ms")
    print(f"    Muon step (hidden matrices)           {med['muon'] * 1e3:10.1f} ms")
    print(f"    AdamW step (embeddings, head, vectors){med['adamw'] * 1e3:10.1f} ms")
    print(f"    optimizer share of the step, 1 device {share * 100:10.2f} %")
    print(f"    estimated share on 8 devices          {share_8 * 100:10.2f} %   (orthogonalisation timed on 1/8 of "
          f"each stack: {ns_eighth * 1e3:.1f} ms vs {ns_full * 1e3:.1f} ms; all-gather not included; "
          f"public claim < 2 %)")
    return {"tokens": tokens, "compiled": compile_, **{f"{k}_s": v for k, v in med.items()}, "share": share,
            "share_8_estimate": share_8, "ns_full_s": ns_full, "ns_eighth_s": ns_eighth}


def orthogonalisation_time(params, device: torch.device, world: int) -> tuple[float, float]:
    """Median time to orthogonalise every same-shape stack, in full and as one rank's 1/world share."""
    stacks: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        m = p.reshape(p.size(0), -1)
        stacks.setdefault(tuple(sorted(m.shape)), []).append(m.T if m.size(0) > m.size(1) else m)
    stacks_full = [torch.stack(v).detach() for v in stacks.values()]
    stacks_share = [s[: -(-len(s) // world)] for s in stacks_full]
    dtype = compute_dtype(device)
    run = lambda stacks_: [orthogonalize(s, ns_schedule(), dtype=dtype) for s in stacks_]  # noqa: E731
    t = alternate({"full": lambda: run(stacks_full), "share": lambda: run(stacks_share)}, device, 3)
    return t["full"], t["share"]


# --- command line -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layers", type=int, default=12, help="GPT-2-small layers of hidden matrices [1][2]")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per figure (medians are reported)")
    parser.add_argument("--ranks", type=int, default=2, help="gloo ranks for [2]")
    parser.add_argument("--parts", help="which figures to measure, e.g. 1,3 (default: cpu 1,2,3,5; cuda 1,3,4,5)")
    parser.add_argument("--banks", action="store_true", help="[2]: store each layer type's matrices as one 3-D bank")
    parser.add_argument("--share-layers", type=int, default=12)
    parser.add_argument("--batch-seqs", type=int, default=None, help="[4] sequences per step (cuda 32, cpu 1)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--share-steps", type=int, default=None, help="[4] timed steps (cuda 10, cpu 2)")
    parser.add_argument("--compile", action="store_true", help="[4] torch.compile the model")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for this process (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--dist-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dist_worker:
        dist_worker(args.dist_worker, args.layers, args.repeats, args.banks)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_optim: --device cuda but torch sees no CUDA device")
    parts = set((args.parts or ("1,2,3,5" if device.type == "cpu" else "1,3,4,5")).replace(" ", "").split(","))
    if not parts <= {"1", "2", "3", "4", "5"}:
        raise SystemExit(f"bench_optim: --parts takes numbers from 1 to 5, got {args.parts!r}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"bench_optim: torch {torch.__version__}, {name}, {torch.get_num_threads()} threads")
    results: dict = {"device": name, "torch": torch.__version__}
    if "1" in parts:
        results["single"] = bench_single(device, args.layers, args.repeats)
    if "2" in parts:
        results["dist"] = bench_dist(args.ranks, args.layers, args.repeats, args.banks)
    if "3" in parts:
        results["adamw"] = bench_adamw(device, args.layers, args.repeats)
    if "4" in parts:
        cuda = device.type == "cuda"
        results["share"] = bench_share(device, args.share_layers, args.batch_seqs or (32 if cuda else 1),
                                       args.seq_len, args.share_steps or (10 if cuda else 2), args.compile)
    if "5" in parts:
        results["torch_muon"] = bench_torch_muon(device, args.layers, args.repeats)
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
