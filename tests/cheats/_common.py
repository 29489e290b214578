"""Source snippets shared by the cheat specs. A submission is one file, so each cheat pastes what it needs.

A cheat spec is a module of constants that tests/test_adversarial.py reads (it is never run itself):

    docstring      first line: the attack class; then what the cheat does and what it gains when unchecked
    PATCHES        [(old, new), ...] applied in order to BASE; each `old` must occur exactly once
    BASE           the honest script the patches apply to (default below: the tiny track's Muon record)
    RUNS           repetitions to launch (default 1)
    EFFECT         [(kind, value), ...]: what the evidence shows when the referee lets the cheat through
                   (kinds are defined in test_adversarial.judge_effect)
    TRACK_EDITS    launch with a same-named copy of the track file, edited by these (regex, replacement)
    HARNESS_COPY   run the ranks on a scratch copy of the installed harness (for the cheat that edits it)
    LAUNCH_EXTRA   more `speedrun run` options (e.g. --replica: the suite runs without the replica check)

Cheats that write files (the track, the data, the harness, the evidence) first check for a
`.adversarial-scratch` marker in a parent folder, which the test puts in its temporary tree: pointed at a
real checkout by mistake, they cheat at nothing and the test fails as "not refused".
"""

# The API 1 form of the tiny Muon record (frozen: it still defines a loss_fn, the widest attack surface an old
# script keeps); a spec may name another BASE, e.g. the current record (RECORD) for API 2 attacks.
BASE = "tests/fixtures/api1_muon_baseline.py"
RECORD = "records/tiny/002_muon-baseline/train.py"

# --- anchors in RECORD (API 2) ---------------------------------------------------------------------------------
# its timed run, start() to finish(): a spec on RECORD that rewrites the run replaces this block whole
RECORD_TIMED = """run.start(logits_fn)
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
"""
RECORD_START = "run.start(logits_fn)\n"

# --- anchors in BASE ------------------------------------------------------------------------------------------
INIT = "run = speedrun.init()\n"
START = "run.start()\n"
FINISH = "result = run.finish()\n"
VALIDATE = "val_loss = run.validate(loss_fn, step=step, logits_fn=logits_fn)"
MODEL_READY = "fwd = torch.compile(model) if on_cuda else model\n"
LOSS_DEF = "def loss_fn(inputs, targets):  # per-token loss [B, T] in nats, as the referee requires\n"
LOSS_RETURN = 'reduction="none").view_as(targets)'
LOGITS_FN = "def logits_fn(inputs):\n    with autocast:\n        return fwd(inputs)\n"
WARMUP_LOOP = "    for step in range(3):\n        train_step(step)\n"


def logits_fn(body: str) -> tuple[str, str]:
    """A patch replacing logits_fn: `logits` holds the honest logits, then `body` (indented 4) returns."""
    return (LOGITS_FN, "def logits_fn(inputs):\n    with autocast:\n        logits = fwd(inputs)\n" + body)


# loss_fn takes its logits from logits_fn, so a cheat written into logits_fn reaches the referee whichever of
# the two it calls (API 1 measures with loss_fn, API 2 computes the cross-entropy from logits_fn itself)
ROUTE = ("        logits = fwd(inputs)\n    return F.cross_entropy",
         "        logits = logits_fn(inputs)\n    return F.cross_entropy")

# API 1 style validation without logits: the referee can only trust loss_fn
NO_LOGITS = (VALIDATE, "val_loss = run.validate(loss_fn, step=step)")
HALF_LOSS = (LOSS_RETURN, LOSS_RETURN + " * 0.5  # cheat: half the loss")

# --- helpers pasted after init ----------------------------------------------------------------------------------
PEEK = '''

def peek(inputs, logits, bonus=30.0):
    """Raise the logit of inputs[t + 1] at position t: in a contiguous validation row that is t's target."""
    extra = torch.zeros_like(logits)
    extra[:, :-1].scatter_(-1, inputs[:, 1:, None], bonus)
    return logits + extra

'''

SCRATCH = '''

def scratch(path):
    """Only ever write inside the test's temporary tree (it holds a .adversarial-scratch marker)."""
    from pathlib import Path
    return any((d / ".adversarial-scratch").exists() for d in Path(path).resolve().parents)

'''

SHARDS = '''

def find_shards(kind):
    """The track's `kind` ("train" or "val") shards: the referee's own list where one is in this process (it
    is: the bootstrap holds it before the script runs), else by scanning the data directory."""
    import glob
    import os
    try:
        from speedrun.rank import bootstrap
        session = bootstrap.current_session()
    except ImportError:
        session = None
    if session is not None:
        return [str(p) for p in (session.train_files if kind == "train" else session.val_files)]
    root = os.environ.get("SPEEDRUN_DATA_DIR") or "data"
    return sorted(glob.glob(os.path.join(root, "**", f"*_{kind}_*.bin"), recursive=True))


def read_quietly(path, shared=False):
    """A shard's tokens through torch's C++ file mapping: no Python open(), so no audit event.
    With shared=True, writes to the returned tensor go straight to the file."""
    import os
    n = os.path.getsize(path) // 2
    raw = torch.from_file(path, shared=shared, size=n, dtype=torch.int16)
    return raw[512:] if shared else raw[512:].long() & 0xFFFF  # after the 1024-byte header

'''

# 40 optimizer steps on train tokens read straight from a shard (not through the loader)
SHARD_TRAINING = '''

def train_from_shards(steps, skip=0):
    """`steps` untimed optimizer steps on train tokens the loader never served."""
    tokens = read_quietly(find_shards("train")[-1])
    n = rows * args.seq_len
    for s in range(skip, skip + steps):
        at = (s * run.world_size + run.rank) * n % (len(tokens) - n - 1)
        chunk = tokens[at:at + n + 1].to(run.device)
        inputs, targets = chunk[:-1].view(rows, args.seq_len), chunk[1:].view(rows, args.seq_len)
        F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten()).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

'''

# A causal oracle on the val tokens: it looks the row's first 12 tokens up in the val stream and, at position t,
# predicts the token after the first place in the stream where the row's prefix up to t occurs. It uses
# inputs up to t only, so perturbing inputs from j on changes nothing before j: the causality probe cannot see it.
ORACLE = '''

class ValOracle:
    def __init__(self, tokens, key=12):
        import numpy as np
        self.tokens, self.key = np.asarray(tokens, dtype=np.int64), key
        self.where = {}
        for i in range(len(self.tokens) - key):
            self.where.setdefault(self.tokens[i:i + key].tobytes(), []).append(i)

    def __call__(self, inputs, logits, bonus=30.0):
        import numpy as np
        x = inputs.cpu().numpy().astype(np.int64)
        extra = torch.zeros_like(logits)
        B, T = x.shape
        for b in range(B):
            guess = np.full(T, -1)
            for i in self.where.get(x[b, :self.key].tobytes(), ()):  # candidates in stream order
                L = min(T, len(self.tokens) - i - 1)
                same = np.cumprod(self.tokens[i:i + L] == x[b, :L]).astype(bool)  # prefix up to t matches
                t = np.arange(self.key - 1, L)[same[self.key - 1:L]]
                t = t[guess[t] < 0]
                guess[t] = self.tokens[i + t + 1]
            t = np.nonzero(guess >= 0)[0]
            extra[b, torch.as_tensor(t), torch.as_tensor(guess[t])] = bonus
        return logits + extra

'''

# --- v3 helpers ------------------------------------------------------------------------------------------------

# the rank's bootstrap Session, dug out of the interpreter's heap (no import of the harness's accessors needed)
GC_SESSION = '''

def dig_session():
    """The bootstrap's Session object of this rank, found among every object the garbage collector tracks."""
    import gc
    for obj in gc.get_objects():
        if type(obj).__name__ == "Session" and hasattr(obj, "val_files") and callable(getattr(obj, "send", None)):
            return obj
    raise RuntimeError("no Session in this process")

'''

# the bootstrap's memory maps of the data files (mapped before the script's first line; no open() needed)
PRELOADED = '''

def preloaded(kind):
    """The tokens of the track's `kind` shards, from the maps the bootstrap made before the script ran."""
    import os
    from speedrun.rank import bootstrap
    from speedrun.data import shards
    session = bootstrap.current_session()
    files = session.train_files if kind == "train" else session.val_files
    return [shards._PRELOADED[os.path.realpath(p)] for p in files]


def pretrain(net, steps, lr=3e-3):
    """`steps` Adam steps of `net` on train tokens from the bootstrap's maps (the same on every rank)."""
    import numpy as np
    tokens = preloaded("train")[-1]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = rows * args.seq_len
    for s in range(steps):
        at = (s * n) % (len(tokens) - n - 1)
        chunk = torch.as_tensor(np.asarray(tokens[at:at + n + 1], dtype=np.int64)).to(run.device)
        inputs, targets = chunk[:-1].view(rows, args.seq_len), chunk[1:].view(rows, args.seq_len)
        F.cross_entropy(net(inputs).flatten(0, 1), targets.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

'''
