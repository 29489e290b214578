"""AdamW baseline with a GPT-2-style architecture, for every track.

Learned absolute positions, pre-LayerNorm blocks, GELU MLP, embedding tied to the head, AdamW with linear
warm-up and linear decay to zero. The model size and schedule come from CONFIGS by track: the same code is
the tiny track's record #1 (fp32 on a CPU) and the GPT-2 small/medium baselines (bf16 and torch.compile on
CUDA). One optimizer step always sees `batch_tokens` tokens: with fewer GPUs each rank accumulates more
micro-batches, in the same stream order, so 1, 2, 4 or 8 GPUs give the same result.

    speedrun run train.py --track tiny --nproc 2 --runs 3          # a 2-core CPU
    speedrun run train.py --track gpt2-small --nproc 8 --runs 3    # 8xH100

`-- --lr 3e-3 --steps 250` etc. override CONFIGS (scripts/sweep_tiny.py does); a record runs without them.
"""

import argparse
import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import speedrun
from speedrun.optim import AdamW

CONFIGS = {
    # micro_rows: sequences per rank per micro-batch (memory); the step's batch is fixed by batch_tokens
    # tiny: 2 layers beat 3-4 at equal wallclock on 2 CPU cores; lr 6e-3 with a 400-step warm-up was the best of
    # lr 1.5e-3 .. 1.2e-2 x warm-up 100 .. 600 at 1000 steps (scripts/results/tiny_retune.md)
    "tiny": dict(dim=128, layers=2, heads=4, seq_len=128, batch_tokens=4096, micro_rows=16,
                 steps=1000, lr=6e-3, warmup_steps=400, weight_decay=0.1, val_every=0),
    "gpt2-small": dict(dim=768, layers=12, heads=12, seq_len=1024, batch_tokens=524288, micro_rows=64,
                       steps=9536, lr=1.8e-3, warmup_steps=700, weight_decay=0.1, val_every=500),
    "gpt2-medium": dict(dim=1024, layers=24, heads=16, seq_len=1024, batch_tokens=524288, micro_rows=16,
                        steps=19073, lr=1.2e-3, warmup_steps=700, weight_decay=0.1, val_every=1000),
}
CONFIGS["optimization"] = CONFIGS["gpt2-small"]

run = speedrun.init()
parser = argparse.ArgumentParser()
parser.add_argument("--config", default=run.track.name if run.track.name in CONFIGS else "tiny")
config_name = parser.parse_known_args()[0].config
for key, value in CONFIGS[config_name].items():
    parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
args, _ = parser.parse_known_args()
on_cuda = run.device.type == "cuda"


# --- model ----------------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            for w in (block.proj.weight, block.out.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return (self.ln_f(x) @ self.wte.weight.T).float()  # tied head: logits [B, T, V]


# --- set-up ------------------------------------------------------------------------------------------------------
torch.manual_seed(run.seed)
if on_cuda:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
model = GPT(run.track.vocab_size, args.seq_len, args.dim, args.layers, args.heads).to(run.device)
fwd = torch.compile(model) if on_cuda else model
ddp = DDP(fwd, device_ids=[run.local_rank] if on_cuda else None) if run.world_size > 1 else fwd
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
optimizer = AdamW([{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": args.weight_decay},
                   {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                  lr=args.lr, betas=(0.9, 0.95))
rows = min(args.micro_rows, args.batch_tokens // (run.world_size * args.seq_len))
accum = args.batch_tokens // (run.world_size * rows * args.seq_len)
train = run.train_loader(batch_tokens=args.batch_tokens, seq_len=args.seq_len, accum_steps=accum)
run.print0(f"config {config_name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
           f"{run.world_size} rank(s) x {accum} micro-batch(es) of {rows} x {args.seq_len} per step")


def lr_at(step: int) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    return args.lr * max(0.0, (args.steps - step) / max(1, args.steps - args.warmup_steps))


def train_step(step: int) -> None:
    for micro in range(accum):
        inputs, targets = next(train)
        sync = ddp.no_sync() if run.world_size > 1 and micro < accum - 1 else nullcontext()
        with sync, autocast:
            loss = F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten())
        (loss / accum).backward()
    run.log(train_loss=loss.detach())  # kept on the device; read at the next validation (no sync here)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def logits_fn(inputs):  # the referee computes the cross-entropy from these logits
    with autocast:
        return fwd(inputs)


# --- warm-up (untimed: compiles on CUDA; the referee restores the state afterwards) ---------------------------------
with run.warmup(model, [optimizer]):
    for step in range(3):
        train_step(step)

# --- the timed run ----------------------------------------------------------------------------------------------------
run.start(logits_fn)
for step in range(args.steps + 1):
    last = step == args.steps
    if last or (args.val_every and step and step % args.val_every == 0):
        model.eval()
        val_loss = run.validate(logits_fn, step=step)
        model.train()
        run.print0(f"step {step}/{args.steps} val_loss {val_loss:.4f} timed {run.clock.timed():.2f}s")
    if last:
        break
    train_step(step)
result = run.finish()
run.print0(f"final val_loss {result['val_loss']:.4f} in {result['timed_s']:.2f}s")
