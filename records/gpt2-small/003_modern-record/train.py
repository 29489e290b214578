"""Record 003: the modded-nanogpt techniques of late 2024 to early 2026 that fit one readable script.

002 is the 2024 design (rotary, RMSNorm, QK-norm, ReLU², zero-initialised projections, an untied head with a
tanh logit soft-cap, Muon). This script keeps all of that and adds, each re-implemented here from the public
record descriptions (one line on why):

Data and attention
  * Flat document batches (layout "flat"): every piece starts at a BOS token and attention is document-causal,
    so no token attends to (or learns from) an unrelated document that happens to sit before it.
  * Sliding-window attention, long-short: the first, middle and last layers see a long window, the others
    half of it (after Gemma 2's local/global layers); most layers only need local context and skip most work.
  * Window warm-up: both windows grow with the training phases; early training gets little from long context.
  * FlexAttention on CUDA with a block mask built from the documents and the window, so fully masked tiles
    cost nothing; on CPU the same mask is a dense boolean mask per piece for scaled_dot_product_attention.
  * Batch-size and sequence-length schedule (`train.set` between steps): small batches of short pieces early,
    when every token's gradient is informative, larger batches of longer pieces later, when more tokens per
    step are needed and each step is cheaper per token. (gpt2-small; the tiny track runs one phase: CONFIGS.)
Architecture
  * Value embeddings: extra token embeddings mixed into the attention values of the first and last layers;
    cheap extra capacity that feeds token identity straight into attention outputs.
  * U-net skips: the first half's block outputs are added, with learned weights, to the mirrored blocks of the
    second half; later layers get early features back without going through every layer in between.
  * x0 shortcut: every block mixes the normalised embedding into its input with two learned scalars.
  * Smear: each token's embedding takes a gated fraction of the previous token's (never across documents);
    a one-token look-back that heads would otherwise spend attention on.
  * Sparse attention gate: a per-head sigmoid gate read from the first 12 channels of the block input, so a
    head can output (almost) nothing instead of parking its attention on BOS, which a window may not contain.
  * Backout: the prediction subtracts a learned fraction of the residual stream after 2/3 of the layers
    (context those layers wrote for later layers rather than for the prediction).
  * Half-truncated rotary: half of each head's rotary pairs rotate, the other half carry no position at all:
    position-free channels for matching on content.
  * Logit soft-cap 15 (tanh), vocabulary padded to a multiple of 128 in the head, zero-initialised output
    projections, attention gates and head; untied embedding and head.
Optimization
  * Muon on the hidden matrices, current variant (speedrun.optim): Polar Express coefficients, NorMuon
    (per-row second-moment normalisation), cautious weight decay (decays only where update and weight agree
    in sign; tied to the lr schedule since the decay is lr * wd); Q, K and V live in one [3, d, d] bank that
    Muon orthogonalises matrix by matrix. Muon momentum warms up from 0.85 to 0.95. (Weights stay fp32 under
    autocast, so the momentum is fp32 without asking.)
  * AdamW for the token and value embeddings, the head, and the scalars and gates; constant learning rate,
    then a linear cool-down to 10%.
  * bf16 autocast and torch.compile on CUDA, fp32 eager on CPU; the gradient all-reduce is done here (no DDP).

Measured (2-core CPU, tiny track, 24 steps of 4096 tokens, same width as 002): final val loss 4.416 against
002's 4.653, timed 21.9 s against 21.4 s (one run each on a shared, loaded CPU: timings are rough; at width 64
it was 4.601 against 4.732, 19.0 s against 11.4 s); 15 steps reach 002's 25-step loss. The dense CPU attention
and the whole model's FlexAttention path agree on CPU (forward) with a per-document reference (test_record003).
Not yet measured (no GPU in the session that wrote this): the CUDA path has never run -- torch.compile of the
FlexAttention block mask inside the model, bf16 numerics, memory at micro_tokens=65536 (a [65536 x 50304]
logit tensor per micro-batch), throughput; the gpt2-small step count, schedules and hyper-parameters are
educated guesses from the public descriptions, untuned, and its wallclock to 3.28 is unknown.

    speedrun run train.py --track tiny --nproc 2 --runs 3          # a 2-core CPU
    speedrun run train.py --track gpt2-small --nproc 8 --runs 3    # 8xH100; fewer GPUs accumulate micro-batches

`-- --steps 20 --dim 64 --batch-tokens 2048,4096` etc. override CONFIGS; comma lists give one value per phase.
The optimization track fixes the batch at 524,288 tokens of 1024-token rows: this script's flat batches and
schedules do not apply there, so it has no configuration for it.
"""

import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

import speedrun
from speedrun.optim import AdamW, Muon, split_params

CONFIGS = {
    # Phases: the steps are cut into equal parts, one per entry of batch_tokens; seq_len and window give one value
    # per phase too (a single value: every phase). window: the long attention window in tokens (short = half).
    # micro_tokens: the most tokens one rank runs at once (memory); a step with more accumulates micro-batches,
    # so a step sees the same tokens on any number of ranks. val_*: the validation shape (it must tile the
    # track's val tokens: 262,144 tiny, 10,485,760 gpt2-small; val_micro_tokens shrinks until it does).
    # tiny: one phase. At 24 steps on a 2-core CPU the schedules measured worse than a constant shape (final val
    # loss 4.450 for batches 3072/4096/5120, 4.477 adding 128/256/256-token pieces, 4.416 constant; 002: 4.653).
    # 15 steps reach 4.66, 002's loss after 25 steps.
    "tiny": dict(dim=128, layers=4, heads=4, steps=15, batch_tokens=(4096,), seq_len=(128,), window=(128,),
                 micro_tokens=4096, val_seq_len=128, val_micro_tokens=8192,
                 muon_lr=0.02, muon_wd=0.5, embed_lr=0.3, head_lr=0.008, scalar_lr=0.04, cooldown=0.5,
                 min_lr=0.1, momentum_warmup=0.1, softcap=15.0, val_every=0),
    "gpt2-small": dict(dim=768, layers=12, heads=6, steps=2000, batch_tokens=(262144, 393216, 524288),
                       seq_len=(1024, 2048, 2048), window=(512, 1024, 1792), micro_tokens=65536,
                       val_seq_len=2048, val_micro_tokens=32768, muon_lr=0.05, muon_wd=0.5, embed_lr=0.6,
                       head_lr=0.008, scalar_lr=0.04, cooldown=0.45, min_lr=0.1, momentum_warmup=0.15,
                       softcap=15.0, val_every=250),
}
GATE_DIMS = 12  # residual channels read by the attention and smear gates

run = speedrun.init()
if run.track.checks.fixed_batch_tokens or run.track.checks.fixed_seq_len:
    raise SystemExit(f"track {run.track.name} fixes the batch shape; this script needs flat batches and schedules")


def ints(text):
    return tuple(int(v) for v in str(text).split(","))


parser = argparse.ArgumentParser()
parser.add_argument("--config", default=run.track.name if run.track.name in CONFIGS else "tiny")
config_name = parser.parse_known_args()[0].config
for key, value in CONFIGS[config_name].items():
    parser.add_argument(f"--{key.replace('_', '-')}", type=ints if isinstance(value, tuple) else type(value),
                        default=value)
args, _ = parser.parse_known_args()
on_cuda = run.device.type == "cuda"
PHASES = len(args.batch_tokens)
for key in ("seq_len", "window"):
    values = getattr(args, key)
    if len(values) not in (1, PHASES):
        raise SystemExit(f"--{key.replace('_', '-')} needs 1 or {PHASES} values, got {values}")
    setattr(args, key, values * PHASES if len(values) == 1 else values)


# --- attention: document-causal sliding windows ---------------------------------------------------------------------
def document_positions(cu_seqlens, n):
    """Per token of a flat batch: its document's index and its position inside that document."""
    cu = cu_seqlens.long()
    lengths = cu.diff()
    docs = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths, output_size=n)
    pos = torch.arange(n, device=cu.device) - torch.repeat_interleave(cu[:-1], lengths, output_size=n)
    return docs.int(), pos.int()


def attention_mask(docs, window, piece_len, flex):
    """Which keys a query may see: its own document, not ahead of it, fewer than `window` tokens back.

    flex: a BlockMask over the whole flat batch (tiles with no allowed pair are skipped by the kernel). Dense: a
    bool mask [pieces, 1, T, T] per piece of T = piece_len tokens; the loader starts a document at every piece
    start, so no allowed pair ever crosses pieces and attending piece by piece computes the same function."""
    if flex:
        def allowed(b, h, q, k):
            return (k <= q) & (docs[q] == docs[k]) & (q - k < window)
        return create_block_mask(allowed, None, None, docs.numel(), docs.numel(), device=docs.device)
    d = docs.view(-1, piece_len)
    i = torch.arange(piece_len, device=docs.device)
    back = i[:, None] - i[None, :]                        # query position minus key position
    return ((d[:, :, None] == d[:, None, :]) & (back >= 0) & (back < window)).unsqueeze(1)


def attend(q, k, v, mask):
    """Attention for q, k, v [n, heads, head_dim] under a mask from `attention_mask`; [n, heads, head_dim]."""
    n, heads, head_dim = q.shape
    if isinstance(mask, BlockMask):
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        return flex_attention(q, k, v, block_mask=mask).squeeze(0).transpose(0, 1)
    pieces, T = mask.size(0), mask.size(-1)
    q, k, v = (t.view(pieces, T, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.transpose(1, 2).reshape(n, heads, head_dim)


# --- model ----------------------------------------------------------------------------------------------------------
def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotate(x, cos, sin):  # x [n, heads, head_dim]; cos/sin [n, 1, head_dim/2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, value_embed: bool):
        super().__init__()
        self.heads = heads
        bound = dim ** -0.5  # nn.Linear's default range
        self.qkv = nn.Parameter(torch.empty(3, dim, dim).uniform_(-bound, bound))  # a bank: Q, K, V
        self.proj = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(GATE_DIMS, heads, bias=False)  # sparse attention gate, one per head
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.out = nn.Linear(4 * dim, dim, bias=False)
        for weight in (self.proj.weight, self.gate.weight, self.out.weight):
            nn.init.zeros_(weight)
        self.mix = nn.Parameter(torch.tensor([1.0, 0.0]))  # input = mix[0] * x + mix[1] * x0
        self.ve_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if value_embed else None  # v = a v + b ve

    def forward(self, x, x0, ve, cos, sin, mask):
        n, dim = x.shape
        x = self.mix[0] * x + self.mix[1] * x0
        h = rms_norm(x)
        q, k, v = F.linear(h, self.qkv.flatten(0, 1)).view(n, 3, self.heads, dim // self.heads).unbind(1)
        q, k = rotate(rms_norm(q), cos, sin), rotate(rms_norm(k), cos, sin)  # QK-norm, then rotary
        if ve is not None:
            v = self.ve_mix[0] * v + self.ve_mix[1] * ve.view_as(v).to(v.dtype)
        y = attend(q.to(v.dtype), k.to(v.dtype), v, mask)  # bf16 under autocast (norms may compute in fp32)
        y = y * torch.sigmoid(self.gate(h[:, :GATE_DIMS])).unsqueeze(-1).to(y.dtype)
        x = x + self.proj(y.flatten(1))
        return x + self.out(F.relu(self.fc(rms_norm(x))).square())


class GPT(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, softcap: float, flex: bool):
        super().__init__()
        self.softcap, self.flex = softcap, flex
        self.embed = nn.Embedding(vocab, dim)
        n_ve = min(3, layers // 2)  # tables for the first n_ve and the last n_ve layers, in the same order
        self.value_embeds = nn.ModuleList(nn.Embedding(vocab, dim) for _ in range(n_ve))
        self.ve_index = list(range(n_ve)) + [None] * (layers - 2 * n_ve) + list(range(n_ve))
        self.long_layers = {0, layers // 2, layers - 1}
        self.blocks = nn.ModuleList(Block(dim, heads, i is not None) for i in self.ve_index)
        self.skip_weights = nn.Parameter(torch.ones(layers // 2))  # U-net: block i's output -> block L-1-i
        self.smear_gate = nn.Linear(GATE_DIMS, 1, bias=False)
        nn.init.zeros_(self.smear_gate.weight)
        self.smear = nn.Parameter(torch.zeros(1))
        self.backout_at = 2 * layers // 3
        self.backout = nn.Parameter(torch.tensor([0.5]))
        self.lm_head = nn.Linear(dim, -(-vocab // 128) * 128, bias=False)  # padded columns learn to stay low
        nn.init.zeros_(self.lm_head.weight)
        head_dim = dim // heads  # half-truncated rotary: periods 2*pi ... 2*pi*1024 on half the pairs, 0 on half
        freqs = 1024.0 ** -torch.linspace(0, 1, head_dim // 4)
        self.register_buffer("freqs", torch.cat([freqs, freqs.new_zeros(head_dim // 2 - head_dim // 4)]),
                             persistent=False)

    def forward(self, inputs, docs, pos, windows, piece_len, targets=None):
        """inputs/docs/pos [n] (a flat batch, `document_positions`), windows [2] (long, short) -> logits [n, V],
        or the mean cross-entropy when targets [n] are given."""
        x = self.embed(inputs)
        previous = F.pad(x[:-1], (0, 0, 1, 0)).masked_fill((pos == 0).unsqueeze(-1), 0.0)  # none across docs
        x = x + self.smear * torch.sigmoid(self.smear_gate(x[:, :GATE_DIMS])) * previous
        x = x0 = rms_norm(x)
        ves = [table(inputs) for table in self.value_embeds]
        angles = pos.float().unsqueeze(-1) * self.freqs
        cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
        long, short = (attention_mask(docs, windows[i], piece_len, self.flex) for i in (0, 1))
        layers, half = len(self.blocks), len(self.blocks) // 2
        skips, saved = [], None
        for i, block in enumerate(self.blocks):
            if i == self.backout_at:
                saved = x
            if i >= layers - half:
                x = x + self.skip_weights[layers - 1 - i] * skips.pop()
            ve = ves[self.ve_index[i]] if self.ve_index[i] is not None else None
            x = block(x, x0, ve, cos, sin, long if i in self.long_layers else short)
            if i < half:
                skips.append(x)
        x = rms_norm(x - self.backout * saved)
        logits = self.lm_head(x).float()
        logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits if targets is None else F.cross_entropy(logits, targets)


# --- schedules ------------------------------------------------------------------------------------------------------
def phase_of(step: int) -> int:
    return min(step * PHASES // args.steps, PHASES - 1)


def accumulation(batch_tokens: int, seq_len: int) -> int:
    """Fewest micro-batches per step that divide this rank's pieces and keep each within micro_tokens."""
    if batch_tokens % (run.world_size * seq_len):
        raise SystemExit(f"batch_tokens {batch_tokens} is not a whole number of {seq_len}-token pieces per rank")
    pieces = batch_tokens // (run.world_size * seq_len)
    return next(a for a in range(1, pieces + 1) if pieces % a == 0 and pieces // a * seq_len <= args.micro_tokens
                or a == pieces)


def val_shape() -> tuple[int, int]:
    T = args.val_seq_len
    for per_rank in range(args.val_micro_tokens // T * T, 0, -T):
        if run.track.val_tokens % (run.world_size * per_rank) == 0:
            return run.world_size * per_rank, T
    raise SystemExit(f"no validation batch of {T}-token pieces tiles {run.track.val_tokens} val tokens")


def lr_scale(step: int) -> float:  # constant, then linear cool-down to min_lr over the last `cooldown` fraction
    left = 1 - step / args.steps
    return 1.0 if left >= args.cooldown else args.min_lr + (1 - args.min_lr) * left / args.cooldown


def muon_momentum(step: int) -> float:  # 0.85 -> 0.95 over the first `momentum_warmup` fraction
    return 0.85 + 0.10 * min(1.0, step / max(1.0, args.momentum_warmup * args.steps))


# --- set-up ---------------------------------------------------------------------------------------------------------
torch.manual_seed(run.seed)
model = GPT(run.track.vocab_size, args.dim, args.layers, args.heads, args.softcap, flex=on_cuda).to(run.device)
if run.world_size > 1:  # same seed, same weights; make sure of it, since no DDP broadcasts them
    for p in model.parameters():
        dist.broadcast(p.data, src=0)
fwd = torch.compile(model, dynamic=False) if on_cuda else model
autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=on_cuda)
split = split_params(model, rules=[("*gate*", "scalar")],  # gates are tiny: AdamW with the scalars
                     lr={"muon": args.muon_lr, "embed": args.embed_lr, "head": args.head_lr, "scalar": args.scalar_lr})
optimizers = [Muon(split.muon, momentum=0.95, weight_decay=args.muon_wd, ns_coefficients="polar_express_nanogpt",
                   normuon_beta2=0.95, cautious_wd=True),
              AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

# Training FLOPs per token (forward + backward). Every weight of a matrix multiply does one multiply-add per token
# forward (2 FLOPs) and two backward (input and weight gradients, 4 FLOPs): 6 per weight; embedding tables are
# lookups and cost none. Attention adds per layer the scores q.k and the weighted sum of v, 2 * dim FLOPs per
# attended key each, times 3 for the backward: 12 * dim * keys. Keys per query: a causal window w over a
# document filling a T-token piece sees min(i, w) keys at position i; averaged over the final phase's pieces.
# Real documents are shorter than a piece, so this is an upper bound on the attention term.
def mean_keys(window: int, T: int) -> float:
    w = min(window, T)
    return (w * (w + 1) / 2 + (T - w) * w) / T


embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
matmul_params = sum(p.numel() for p in model.parameters() if id(p) not in embedding_ids)
final_T, final_window = args.seq_len[-1], args.window[-1]
attention_flops = sum(12 * args.dim * mean_keys(final_window if i in model.long_layers else final_window // 2,
                                                final_T) for i in range(args.layers))
run.describe_model(model, flops_per_token=6 * matmul_params + attention_flops)

train = run.train_loader(batch_tokens=args.batch_tokens[0], seq_len=args.seq_len[0],
                         accum_steps=accumulation(args.batch_tokens[0], args.seq_len[0]), layout="flat")
VAL_BATCH, VAL_T = val_shape()
state = dict(phase=None, accum=1, seq_len=args.seq_len[0], windows=None)


def set_phase(phase: int) -> None:
    """Apply a phase's step shape (from the next step on) and attention windows."""
    batch_tokens, seq_len, window = args.batch_tokens[phase], args.seq_len[phase], args.window[phase]
    accum = accumulation(batch_tokens, seq_len)
    train.set(batch_tokens=batch_tokens, seq_len=seq_len, accum_steps=accum)
    state.update(phase=phase, accum=accum, seq_len=seq_len,
                 windows=torch.tensor([window, window // 2], dtype=torch.int32, device=run.device))


run.print0(f"config {config_name}: {sum(p.numel() for p in model.parameters()):,} parameters, {run.world_size} "
           f"rank(s); phases (batch_tokens, seq_len, window, micro-batches): "
           + ", ".join(f"({b}, {t}, {w}, {accumulation(b, t)})"
                       for b, t, w in zip(args.batch_tokens, args.seq_len, args.window))
           + f"; validation {VAL_BATCH} x {VAL_T}\n{split.summary()}")


def sync_gradients() -> None:  # average the gradients over ranks (instead of DDP: plainer under compile)
    if run.world_size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for work in [dist.all_reduce(g, async_op=True) for g in grads]:
        work.wait()
    torch._foreach_div_(grads, run.world_size)


def train_step(step: int):
    accum, total = state["accum"], torch.zeros((), device=run.device)
    for _ in range(accum):
        inputs, targets, cu_seqlens = next(train)
        docs, pos = document_positions(cu_seqlens, inputs.numel())
        with autocast:
            loss = fwd(inputs, docs, pos, state["windows"], state["seq_len"], targets)
        (loss / accum).backward()
        total += loss.detach()
    sync_gradients()
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_scale(step)
    for group in optimizers[0].param_groups:
        group["momentum"] = muon_momentum(step)
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    return total / accum


@torch.no_grad()
def logits_fn(inputs, cu_seqlens):
    docs, pos = document_positions(cu_seqlens, inputs.numel())
    with autocast:
        return fwd(inputs, docs, pos, state["windows"], VAL_T)


# --- warm-up (untimed; compiles every phase's shape on CUDA; the referee restores all state afterwards) -------------
with run.warmup(model, optimizers):
    for phase in range(PHASES):
        set_phase(phase)
        for _ in range(2 if on_cuda else 1):
            train_step(0)
set_phase(0)

# --- the timed run --------------------------------------------------------------------------------------------------
run.start(logits_fn, batch_tokens=VAL_BATCH, seq_len=VAL_T, layout="flat")
for step in range(args.steps + 1):
    last = step == args.steps
    if last or (args.val_every and step and step % args.val_every == 0):
        val_loss = run.validate(logits_fn=logits_fn, step=step, batch_tokens=VAL_BATCH, seq_len=VAL_T,
                                layout="flat")
        run.print0(f"step {step}/{args.steps} val_loss {val_loss:.4f} timed {run.clock.timed():.2f}s")
    if last:
        break
    if phase_of(step) != state["phase"]:
        set_phase(phase_of(step))
    run.log(train_loss=train_step(step))
result = run.finish()
run.print0(f"final val_loss {result['val_loss']:.4f} in {result['timed_s']:.2f}s")
