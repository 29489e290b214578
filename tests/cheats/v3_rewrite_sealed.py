"""Acting on the files: repetition 2 rewrites repetition 1's sealed run-1.jsonl and recomputes its seal.

The launcher guards a repetition's events file while that repetition runs (it compares the file with its
own record before sealing), and the seal is a plain sha256 of the lines before it, keyed by nothing. Once
repetition 1 is sealed nobody watches it: in repetition 2, rank 0 halves every val loss (and every rank's
loss sum) in run-1.jsonl, recomputes the seal and puts the file back. `speedrun verify` finds the seal
intact. Unchecked: repetition 1's final loss is half the honest one.
"""
from _common import FINISH, INIT, SCRATCH

REWRITE = r'''
def rewrite_earlier(path, k=0.5):
    """Halve the val losses in a sealed events file; seal it again."""
    import hashlib
    import json
    out = []
    for raw in open(path, "rb").read().splitlines():
        event = json.loads(raw)
        if event.get("event") == "seal":
            continue
        if event.get("event") == "val":
            event["loss"] *= k
            for r in event.get("ranks", []):
                r["loss_sum"] *= k
        out.append((json.dumps(event, separators=(",", ":")) + "\n").encode())
    body = b"".join(out)
    seal = {"event": "seal", "lines": len(out), "sha256": hashlib.sha256(body).hexdigest()}
    with open(path, "wb") as f:
        f.write(body + (json.dumps(seal) + "\n").encode())

'''

AFTER = '''
if run.rank == 0 and run.repetition >= 2 and run.run_dir is not None:
    earlier = run.run_dir / "run-1.jsonl"
    if earlier.exists() and scratch(earlier):
        rewrite_earlier(earlier)  # cheat: the earlier repetition's evidence, sealed and unwatched
        print(f"cheat: rewrote {earlier.name} from repetition {run.repetition}", flush=True)
'''

PATCHES = [
    (INIT, INIT + SCRATCH + REWRITE),
    (FINISH, FINISH + AFTER),
]
RUNS = 2
EFFECT = [("run_loss_below", (1, 0.55)), ("log", r"cheat: rewrote run-1\.jsonl")]
