"""`speedrun new NAME --track T`: write a commented starter submission to begin from.

The starter is a complete API-2 script: a small modern GPT (rotary attention, RMSNorm, ReLU² MLP, a
soft-capped untied head), Muon on the hidden matrices and AdamW on the rest, data parallel with DDP, an
untimed warm-up, validation at the end. Its sizes are chosen per track; on `tiny` it qualifies as written
(a test runs it). Everything a first submission needs from the contract is shown once, with a comment.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from speedrun.errors import SpeedrunError

# per-track sizes: (dim, layers, heads, seq_len, batch_tokens, rows per micro-batch, steps, muon lr, embed lr)
SIZES = {
    "tiny": (128, 4, 4, 128, 4096, 16, 300, 0.02, 0.3),  # record #2's tuning; qualifies as written
    "gpt2-small": (768, 12, 6, 1024, 524288, 32, 3200, 0.05, 0.6),
    "gpt2-medium": (1024, 24, 8, 1024, 524288, 16, 6000, 0.025, 0.3),
    "optimization": (768, 12, 6, 1024, 524288, 32, 3200, 0.05, 0.6),
}

TEMPLATE = '''\
"""{name}: a speedrun submission for track {track}, written from `speedrun new`.

Run it:   speedrun run {filename} --track {track} --nproc {nproc} --runs 3
The referee owns the data, the clock, the seeds and the val loss; this script owns the model and the loop.
"""

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import speedrun
from speedrun.optim import AdamW, Muon, split_params

DIM, LAYERS, HEADS, SEQ_LEN = {dim}, {layers}, {heads}, {seq_len}
BATCH_TOKENS = {batch_tokens}  # tokens per optimizer step, over all ranks (the referee checks it divides)
MICRO_ROWS = {rows}  # sequences per rank per micro-batch (memory); accumulation makes up the rest
STEPS, MUON_LR, EMBED_LR, HEAD_LR, COOLDOWN = {steps}, {muon_lr}, {embed_lr}, 0.008, 0.5

run = speedrun.init()                # the track, this repetition's seed, the device and the ranks
torch.manual_seed(run.seed)          # use the referee's seed: repetitions must differ to count as independent
on_cuda = run.device.type == "cuda"


def rms_norm(x):
    return F.rms_norm(x, (x.shape[-1],))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM, bias=False), nn.Linear(DIM, DIM, bias=False)
        self.fc, self.out = nn.Linear(DIM, 4 * DIM, bias=False), nn.Linear(4 * DIM, DIM, bias=False)
        nn.init.zeros_(self.proj.weight)  # each block starts as the identity
        nn.init.zeros_(self.out.weight)
        head_dim = DIM // HEADS
        freqs = 10000.0 ** (-torch.arange(0, head_dim, 2) / head_dim)
        angles = torch.outer(torch.arange(SEQ_LEN).float(), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotary(self, x):  # x: [B, heads, T, head_dim]
        T = x.shape[-2]
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        a, b = x.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in self.qkv(rms_norm(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(self.rotary(rms_norm(q)), self.rotary(rms_norm(k)), v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.relu(self.fc(rms_norm(x))).square())


class GPT(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.head = nn.Linear(DIM, vocab, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, idx):  # [B, T] token ids -> [B, T, vocab] logits
        x = rms_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        logits = self.head(rms_norm(x)).float()
        return 15.0 * torch.tanh(logits / 15.0)  # soft-capped logits


model = GPT(run.track.vocab_size).to(run.device)
fwd = torch.compile(model) if on_cuda else model
# gradient sync across ranks is the script's job: DDP averages gradients in backward()
ddp = DDP(fwd, device_ids=[run.local_rank] if on_cuda else None) if run.world_size > 1 else fwd
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
split = split_params(model, lr={{"muon": MUON_LR, "embed": EMBED_LR, "head": HEAD_LR}})
optimizers = [Muon(split.muon, momentum=0.95), AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

rows = min(MICRO_ROWS, BATCH_TOKENS // (run.world_size * SEQ_LEN))
accum = BATCH_TOKENS // (run.world_size * rows * SEQ_LEN)
# this rank's share of the canonical train stream: next(train) -> (inputs, targets), int64 [rows, SEQ_LEN]
train = run.train_loader(batch_tokens=BATCH_TOKENS, seq_len=SEQ_LEN, accum_steps=accum)


def train_step(step: int):
    for micro in range(accum):
        inputs, targets = next(train)
        sync = ddp.no_sync() if run.world_size > 1 and micro < accum - 1 else nullcontext()
        with sync, autocast:
            loss = F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten())
        (loss / accum).backward()
    scale = min(1.0, (STEPS - step) / (COOLDOWN * STEPS))  # constant, then a linear cool-down to zero
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * scale
        opt.step()
    model.zero_grad(set_to_none=True)
    return loss.detach()


def logits_fn(inputs):  # the referee computes the val loss from these logits itself
    with autocast:
        return fwd(inputs)


with run.warmup(model, optimizers):  # untimed (compilation); random tokens; the state is restored after
    for step in range(3):
        train_step(step)

run.start(logits_fn)                 # the clock starts
for step in range(STEPS):
    run.log(train_loss=train_step(step))   # kept as tensors; no device sync per step
model.eval()
val_loss = run.validate(logits_fn=logits_fn, step=STEPS)   # the clock is paused while validating
result = run.finish()                # right after the last validation: this val loss is the result
run.print0(f"val loss {{val_loss:.4f}} after {{STEPS}} steps")
'''


def render(name: str, track: str) -> str:
    from speedrun.tracks import load_track

    load_track(track)  # the track must exist
    dim, layers, heads, seq_len, batch_tokens, rows, steps, muon_lr, embed_lr = SIZES.get(track, SIZES["tiny"])
    return TEMPLATE.format(name=name, track=track, filename=f"{name}.py", nproc=2 if track == "tiny" else 8,
                           dim=dim, layers=layers, heads=heads, seq_len=seq_len, batch_tokens=batch_tokens,
                           rows=rows, steps=steps, muon_lr=muon_lr, embed_lr=embed_lr)


def write(name: str, track: str, out: Path | None = None, force: bool = False) -> Path:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise SpeedrunError(f"{name!r}: a name is letters, digits, '_' and '-' (it becomes NAME.py)")
    path = Path(out) if out else Path(f"{name}.py")
    if path.exists() and not force:
        raise SpeedrunError(f"{path} exists (use --force to overwrite it)")
    path.write_text(render(name, track))
    return path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("new", help="write a commented starter submission NAME.py for a track")
    p.add_argument("name")
    p.add_argument("--track", default="tiny", help="track to size it for (default: tiny)")
    p.add_argument("--out", type=Path, help="file to write (default: ./NAME.py)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_cmd_new)


def _cmd_new(args) -> int:
    path = write(args.name, args.track, args.out, args.force)
    print(f"wrote {path}; run it with: speedrun run {path} --track {args.track} --nproc "
          f"{2 if args.track == 'tiny' else 8} --runs 3")
    return 0
