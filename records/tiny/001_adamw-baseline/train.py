"""Tiny track, record #1: the AdamW baseline with a GPT-2-style architecture.

Learned absolute positions, pre-LayerNorm blocks, GELU MLP, tied embedding and head, AdamW with linear
warm-up and linear decay. fp32 (this track runs on a CPU). Run it with

    speedrun run records/tiny/001_adamw-baseline/train.py --track tiny --nproc 2 --runs 3

Hyper-parameters are the defaults below; `-- --lr 3e-3` etc. override them (used by scripts/sweep_tiny.py).
"""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import speedrun

# --- hyper-parameters -------------------------------------------------------------------------------------------
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--batch-tokens", type=int, default=4096)  # global, per step
parser.add_argument("--seq-len", type=int, default=128)
parser.add_argument("--dim", type=int, default=128)
parser.add_argument("--layers", type=int, default=4)
parser.add_argument("--heads", type=int, default=4)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--weight-decay", type=float, default=0.1)
parser.add_argument("--warmup-steps", type=int, default=20)
parser.add_argument("--val-every", type=int, default=0)  # 0: validate only at the end
args, _ = parser.parse_known_args()


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
        for block in self.blocks:  # GPT-2's scaled init of residual projections
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
        return self.ln_f(x) @ self.wte.weight.T  # tied head: logits [B, T, V]


# --- set-up ------------------------------------------------------------------------------------------------------
run = speedrun.init()
torch.manual_seed(run.seed)
model = GPT(run.track.vocab_size, args.seq_len, args.dim, args.layers, args.heads).to(run.device)
ddp = DDP(model) if run.world_size > 1 else model
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
train = run.train_loader(batch_tokens=args.batch_tokens, seq_len=args.seq_len)


def lr_at(step: int) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    return args.lr * max(0.0, (args.steps - step) / (args.steps - args.warmup_steps))


def train_step(step: int) -> torch.Tensor:
    inputs, targets = next(train)
    loss = F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten())
    loss.backward()
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def loss_fn(inputs, targets):  # per-token loss [B, T] in nats, as the referee requires
    return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def logits_fn(inputs):
    return model(inputs)


# --- warm-up (untimed; the referee restores the state afterwards) ---------------------------------------------------
with run.warmup(model, [optimizer]):
    for step in range(3):
        train_step(step)

# --- the timed run ----------------------------------------------------------------------------------------------------
run.start()
for step in range(args.steps + 1):
    last = step == args.steps
    if last or (args.val_every and step and step % args.val_every == 0):
        model.eval()
        val_loss = run.validate(loss_fn, step=step, logits_fn=logits_fn)
        model.train()
        run.print0(f"step {step}/{args.steps} val_loss {val_loss:.4f} timed {run.clock.timed():.2f}s")
    if last:
        break
    loss = train_step(step)
result = run.finish()
run.print0(f"final val_loss {result['val_loss']:.4f} in {result['timed_s']:.2f}s")
