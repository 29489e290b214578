"""Evidence forgery: after finish() rank 0 rewrites run-K.jsonl (loss /2, times /10), re-seals it, leaves a daemon.

The run directory is found through $SPEEDRUN_RUN_DIR (or the newest run-*.jsonl under the runs folder).
Every val loss is halved, timed seconds, pauses and times after start() are divided by ten (so the clock stays
self-consistent), and the seal is recomputed. A detached process then keeps the forgery in place for a few
seconds after the script exits: lines appended or rewritten later are forged and re-sealed too, and the
manifest's process wallclock for this repetition is divided by ten once the launcher writes it. Unchecked:
half the honest loss in a tenth of its time.
"""
from _common import FINISH, INIT, SCRATCH

FORGER = r'''
import hashlib
import json
import os
import sys
import time


def forge(data, done, k=0.1, loss_k=0.5):
    """Forge the events in `data` that are not forged yet (`done`: lines already written by us); re-seal."""
    out, origin = [], {}
    for raw in data.splitlines(keepends=True):
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if event.get("event") == "seal":
            continue
        if event.get("event") == "start":
            origin = {key: event[key] for key in ("wall", "t") if isinstance(event.get(key), (int, float))}
        if raw not in done and event.get("event") != "start":
            for key, t0 in origin.items():
                if isinstance(event.get(key), (int, float)):
                    event[key] = t0 + (event[key] - t0) * k
            for key in ("timed_s", "seconds"):
                if isinstance(event.get(key), (int, float)) and origin:
                    event[key] = event[key] * k
            if event.get("event") == "val" and isinstance(event.get("loss"), (int, float)):
                event["loss"] = event["loss"] * loss_k
            raw = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        done.add(raw)
        out.append(raw)
    body = b"".join(out)
    seal = {"event": "seal", "lines": len(out), "sha256": hashlib.sha256(body).hexdigest()}
    return body + (json.dumps(seal) + "\n").encode()


def replace(path, data):
    tmp = f"{path}.forging"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
'''

DAEMON = r'''
def keep_forged(path, k, seconds=4.0):
    """Re-forge the events file whenever something else changes it; forge the manifest's wallclock once."""
    done = set(open(path, "rb").read().splitlines(keepends=True))
    manifest = os.path.join(os.path.dirname(path), "manifest.json")
    deadline, wall_forged = time.time() + seconds, False
    while time.time() < deadline and not os.path.exists(os.path.join(os.path.dirname(path), "verdict.json")):
        data = open(path, "rb").read()
        lines = data.splitlines(keepends=True)
        if any(line not in done for line in lines[:-1]) or (lines and b'"seal"' not in lines[-1]):
            replace(path, forge(data, done))
        if not wall_forged and os.path.exists(manifest):
            try:
                m = json.load(open(manifest))
            except ValueError:
                m = {}
            for rep in m.get("repetitions", []):
                if rep.get("k") == k and isinstance(rep.get("wall_s"), (int, float)):
                    rep["wall_s"] = rep["wall_s"] * 0.1
                    replace(manifest, (json.dumps(m, indent=2) + "\n").encode())
                    wall_forged = True
        time.sleep(0.01)


keep_forged(sys.argv[1], int(sys.argv[2]))
'''

FORGE_AFTER = '''
if run.rank == 0:  # cheat: rewrite the evidence of this repetition
    import glob as _glob
    import os as _os
    import subprocess as _subprocess
    import sys as _sys
    exec(FORGER)
    _k = int(_os.environ.get("SPEEDRUN_REPETITION") or getattr(run, "repetition", 1))
    _path = _os.path.join(_os.environ.get("SPEEDRUN_RUN_DIR") or str(getattr(run, "run_dir", "")), f"run-{_k}.jsonl")
    if not _os.path.exists(_path):
        _found = _glob.glob(_os.path.join(_os.environ.get("SPEEDRUN_RUNS_DIR", "runs"), "**", "run-*.jsonl"),
                            recursive=True)
        _path = max(_found, key=_os.path.getmtime) if _found else None
    if _path and scratch(_path):
        replace(_path, forge(open(_path, "rb").read(), set()))
        _subprocess.Popen([_sys.executable, "-c", FORGER + DAEMON, _path, str(_k)], start_new_session=True,
                          stdin=_subprocess.DEVNULL, stdout=_subprocess.DEVNULL, stderr=_subprocess.DEVNULL)
        run.print0(f"cheat: forged {_path}")
'''

PATCHES = [
    (INIT, INIT + SCRATCH + f"FORGER = {FORGER!r}\nDAEMON = {DAEMON!r}\n"),
    (FINISH, FINISH + FORGE_AFTER),
]
EFFECT = [("loss_below", 0.6), ("timed_below", 0.3)]
