"""Muon baseline with a modern architecture, for every track.

Rotary position embeddings, RMSNorm, QK-norm, ReLU² MLP, zero-initialised output projections, an untied
head with a tanh logit soft-cap; Muon (speedrun.optim) on the hidden matrices, AdamW on the embedding and
the head; constant learning rate then linear cool-down to zero. The model size and schedule come from
CONFIGS by track: the same code is the tiny track's record #2 (fp32 on a CPU) and the GPT-2 small/medium
baselines (bf16 and torch.compile on CUDA). One optimizer step always sees `batch_tokens` tokens: with fewer
GPUs each rank accumulates more micro-batches in the same stream order, so the result does not depend on it.

    speedrun run train.py --track tiny --nproc 2 --runs 3          # a 2-core CPU
    speedrun run train.py --track gpt2-small --nproc 8 --runs 3    # 8xH100

`-- --muon-lr 0.05 --steps 200` etc. override CONFIGS (scripts/sweep_tiny.py does); a record runs without them.
`-- --optimizer adamw --adam-lr 3e-3` trains the same architecture with AdamW on the hidden matrices too: the
optimizer ablation of scripts/ablate_optimizer.py.
"""

import argparse
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import speedrun
from speedrun.optim import AdamW, Muon, split_params

CONFIGS = {
    # micro_rows: sequences per rank per micro-batch (memory); the step's batch is fixed by batch_tokens
    # tiny: muon_lr 0.02 and embed_lr 0.3 were the best of {0.01, 0.02, 0.04} x {0.1, 0.3} at 200 and 300 steps
    # (scripts/results/tiny_retune.md)
    "tiny": dict(dim=128, layers=4, heads=4, seq_len=128, batch_tokens=4096, micro_rows=16, steps=300,
                 muon_lr=0.02, embed_lr=0.3, head_lr=0.008, cooldown=0.5, softcap=15.0, val_every=0),
    "gpt2-small": dict(dim=768, layers=12, heads=6, seq_len=1024, batch_tokens=524288, micro_rows=32, steps=3200,
                       muon_lr=0.05, embed_lr=0.6, head_lr=0.008, cooldown=0.4, softcap=15.0, val_every=250),
    "gpt2-medium": dict(dim=1024, layers=24, heads=8, seq_len=1024, batch_tokens=524288, micro_rows=16,
                        steps=6000, muon_lr=0.025, embed_lr=0.3, head_lr=0.004, cooldown=0.4, softcap=15.0,
                        val_every=500),
}
CONFIGS["optimization"] = CONFIGS["gpt2-small"]

run = speedrun.init()
parser = argparse.ArgumentParser()
parser.add_argument("--optimizer", choices=("muon", "adamw"), default="muon")  # adamw: the ablation
parser.add_argument("--adam-lr", type=float, default=3e-3)  # hidden matrices' lr under --optimizer adamw
parser.add_argument("--config", default=run.track.name if run.track.name in CONFIGS else "tiny")
config_name = parser.parse_known_args()[0].config
for key, value in CONFIGS[config_name].items():
    parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
args, _ = parser.parse_known_args()
on_cuda = run.device.type == "cuda"


# --- model ----------------------------------------------------------------------------------------------------
def rms_norm(x):
    return F.rms_norm(x, (x.shape[-1],))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, seq_len: int, base: float = 10000.0):
        super().__init__()
        freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):  # x: [B, heads, T, head_dim]
        T = x.shape[-2]
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, seq_len: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.out = nn.Linear(4 * dim, dim, bias=False)
        self.rotary = Rotary(dim // heads, seq_len)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.out.weight)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(rms_norm(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))  # QK-norm, then rotary
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.relu(self.fc(rms_norm(x))).square())


class GPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int, layers: int, heads: int, softcap: float):
        super().__init__()
        self.softcap = softcap
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, seq_len) for _ in range(layers))
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.zeros_(self.lm_head.weight)

    def forward(self, idx):
        x = rms_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(rms_norm(x)).float()
        return self.softcap * torch.tanh(logits / self.softcap)  # logits [B, T, V]


# --- set-up ------------------------------------------------------------------------------------------------------
torch.manual_seed(run.seed)
model = GPT(run.track.vocab_size, args.seq_len, args.dim, args.layers, args.heads, args.softcap).to(run.device)
fwd = torch.compile(model) if on_cuda else model
ddp = DDP(fwd, device_ids=[run.local_rank] if on_cuda else None) if run.world_size > 1 else fwd
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
split = split_params(model, lr={"muon": args.muon_lr, "embed": args.embed_lr, "head": args.head_lr})
if args.optimizer == "muon":
    optimizers = [Muon(split.muon, momentum=0.95), AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
else:  # ablation: the hidden matrices join AdamW at their own learning rate
    hidden = [dict(group, lr=args.adam_lr) for group in split.muon]
    optimizers = [AdamW(hidden + split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
rows = min(args.micro_rows, args.batch_tokens // (run.world_size * args.seq_len))
accum = args.batch_tokens // (run.world_size * rows * args.seq_len)
train = run.train_loader(batch_tokens=args.batch_tokens, seq_len=args.seq_len, accum_steps=accum)
run.print0(f"config {config_name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
           f"{run.world_size} rank(s) x {accum} micro-batch(es) of {rows} x {args.seq_len} per step\n{split.summary()}")


def lr_scale(step: int) -> float:  # constant, then linear cool-down to zero over the last `cooldown` fraction
    progress = step / args.steps
    return 1.0 if progress < 1 - args.cooldown else (1 - progress) / args.cooldown


def train_step(step: int) -> None:
    for micro in range(accum):
        inputs, targets = next(train)
        sync = ddp.no_sync() if run.world_size > 1 and micro < accum - 1 else nullcontext()
        with sync, autocast:
            loss = F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten())
        (loss / accum).backward()
    run.log(train_loss=loss.detach())  # kept on the device; read at the next validation (no sync here)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_scale(step)
        opt.step()
    model.zero_grad(set_to_none=True)


def logits_fn(inputs):  # the referee computes the cross-entropy from these logits
    with autocast:
        return fwd(inputs)


# --- warm-up (untimed: compiles on CUDA; the referee restores the state afterwards) ---------------------------------
with run.warmup(model, optimizers):
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
