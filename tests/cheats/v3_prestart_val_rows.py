"""Val rows before the clock: raw start-check requests on the rank's own session hand over val rows to train on.

After warm-up the script digs the rank's bootstrap Session out of the garbage collector's heap and sends the
agent a "start_check" request of its own, at batch_tokens = the track's val_tokens: the answer is the first
validation batch of this rank's share, i.e. every val row of the rank (the scored ones on a track without a
monitor split, such as tiny; the monitor rows where there is one, as on the suite's synthetic track). Before
start() (untimed, within the pre-start budget) it trains the model 60 steps on those rows, then calls
start() with a decoy logits_fn returning uniform logits (ln V, never below the no-data level), so the start
check passes; the timed run is the honest one. Unchecked: untimed training on val tokens (a memorised scored
set on tiny), a final loss well below the honest one in the same timed seconds.
"""
from _common import GC_SESSION, INIT, RECORD, RECORD_START

BASE = RECORD  # API 2, as the red team's script

HARVEST = '''answer = dig_session().request("start_check", batch_tokens=run.track.val_tokens, seq_len=args.seq_len,
                                 layout="rows")  # cheat: a start check of the script's own, before start()
val_rows, _ = dig_session()._inputs(answer)
print(f"cheat: rank {run.rank} harvested {tuple(val_rows.shape)} val rows before start()", flush=True)
g = torch.Generator().manual_seed(run.seed + run.rank)
for _ in range(60):  # cheat: untimed training on them
    x = val_rows[torch.randint(0, val_rows.shape[0], (rows,), generator=g)]
    loss = F.cross_entropy(ddp(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
print(f"cheat: rank {run.rank} pretrained 60 steps on the val rows before start(), last loss {loss.item():.3f}",
      flush=True)


def decoy(inputs):  # cheat: the start check sees uniform logits
    return torch.zeros(*inputs.shape, run.track.vocab_size, device=inputs.device)


run.start(decoy)
'''

PATCHES = [
    (INIT, INIT + GC_SESSION),
    (RECORD_START, HARVEST),
]
EFFECT = [("loss_below", 0.8), ("log", r"cheat: rank \d pretrained 60 steps on the val rows before start\(\)")]
