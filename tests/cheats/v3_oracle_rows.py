"""Val rows handed out before the score is taken: a recording validation, then an oracle that knows the probes.

After the honest timed run the script validates once with a logits_fn that keeps every input row (and its
logits). A val row holds its own next tokens (targets[t] == inputs[t + 1]), so the recorded rows are the
answers to every row it will be handed again. The probe batch is told apart by its rows sharing a 16-token
prefix with rows elsewhere (the probes are copies of canonical rows up to a cut). At the next validation the
logits get a bonus on the known next token of every recognised row, up to the first position where the row
leaves the recorded one (so a probe row sees the same outputs as its canonical row before the cut, and honest
logits after it: causal as far as the probes tell), the bonus calibrated to bring the recorded rows' loss to
0.75x the honest one. On tiny (no monitor split) both validations hand out the scored rows, and the red team's
run scored 3.48 against an honest 4.60, qualifying. Unchecked: a final loss a fraction of the honest one.

The suite's synthetic track has a monitor split: every validation before finish() hands out monitor rows, the
scored ones come only at finish(), so the oracle recognises no scored row (its log says how many it knew).
"""
from _common import RECORD, RECORD_TIMED

BASE = RECORD  # API 2, as the red team's script

TIMED = '''run.start(logits_fn)
for step in range(args.steps):
    train_step(step)
model.eval()
KEY = 16
recorded = []


def record_fn(inputs):  # cheat: keep the rows (and logits) the referee hands out
    out = logits_fn(inputs)
    recorded.append((inputs.clone(), out.detach().float().clone()))
    return out


v_rec = run.validate(record_fn, step=args.steps)
from collections import Counter

keys = Counter(tuple(row[:KEY].tolist()) for inp, _ in recorded for row in inp)
dup = [sum(keys[tuple(r[:KEY].tolist())] > 1 for r in inp) / inp.shape[0] for inp, _ in recorded]
probe = max(range(len(recorded)), key=lambda i: dup[i])  # the probe batch: its rows' prefixes occur elsewhere
canon, canon_logits = {}, []
for i, (inp, lg) in enumerate(recorded):
    if i != probe:
        canon.update({tuple(inp[r, :KEY].tolist()): inp[r] for r in range(inp.shape[0])})
        canon_logits.append((inp, lg))
print(f"cheat: rank {run.rank} recorded {len(recorded)} batches, probe batch #{probe} (dup {dup[probe]:.2f}), "
      f"{len(canon)} rows memorised", flush=True)


def boost(inp):
    """One-hot bonuses on each recognised row's known next tokens, up to where it leaves the recorded row."""
    B, T = inp.shape
    add, hit = torch.zeros(B, T, run.track.vocab_size, device=inp.device), 0
    for r in range(B):
        c = canon.get(tuple(inp[r, :KEY].tolist()))
        if c is None:
            continue
        hit += 1
        diff = (inp[r] != c).nonzero()
        m = int(diff[0]) if len(diff) else T
        t = torch.arange(0, min(m - 1, T - 2) + 1, device=inp.device)
        add[r, t, c[t + 1]] = 1.0
    return add, hit


def mean_loss(alpha):  # the recorded rows' loss with the bonus (the last column's target approximated)
    total, n = 0.0, 0
    for inp, lg in canon_logits[:16]:
        L = lg + alpha * boost(inp)[0]
        tgt = torch.cat([inp[:, 1:], inp[:, -1:]], 1)
        nll = torch.logsumexp(L, -1) - L.gather(-1, tgt[..., None]).squeeze(-1)
        total, n = total + float(nll.sum()), n + nll.numel()
    return total / n


lo, hi = 0.0, 30.0
for _ in range(30):
    lo, hi = ((lo + hi) / 2, hi) if mean_loss((lo + hi) / 2) > 0.75 * v_rec else (lo, (lo + hi) / 2)
alpha = (lo + hi) / 2
hits = []


def oracle_fn(inputs):
    add, hit = boost(inputs)
    hits.append(hit)
    return logits_fn(inputs).float() + alpha * add


val_loss = run.validate(oracle_fn, step=args.steps)
result = run.finish()  # on a track with a monitor split, the scored validation (with oracle_fn) is here
print(f"cheat: rank {run.rank} oracle bonus {alpha:.3f}; honest loss {v_rec:.4f}, final {result['val_loss']:.4f}; "
      f"rows recognised per batch {hits}", flush=True)
'''

PATCHES = [(RECORD_TIMED, TIMED)]
EFFECT = [("loss_below", 0.9),
          ("log", r"cheat: rank \d recorded \d+ batches, probe batch #\d+ .* [1-9]\d* rows memorised")]
