"""Referee tampering: monkeypatch the referee's own clock and evidence-writer classes from the script.

The script walks speedrun's modules: any class with pause() and resume() (a clock) gets a pause() that moves
the pause's start back by 90% of the timed seconds so far, and methods that write or send events (write,
send, _send, _event, emit) get the `loss` in their payload lowered by 20%. Unchecked: timed seconds about
10% of the honest run's and a final loss 20% lower.
"""
from _common import INIT

PATCH = '''
import sys as _sys

_INSIDE = [False]


def _lower(payload):
    if isinstance(payload, dict) and isinstance(payload.get("loss"), float):
        payload = dict(payload, loss=payload["loss"] * 0.8)
    return payload


def _forging(orig):
    def wrapper(self, *args, **kwargs):
        if _INSIDE[0]:  # lower the loss once, at the outermost call
            return orig(self, *args, **kwargs)
        _INSIDE[0] = True
        try:
            return orig(self, *[_lower(a) for a in args], **_lower(kwargs))
        finally:
            _INSIDE[0] = False
    return wrapper


def _slow_pause(orig):
    def pause(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        began, started = getattr(self, "_pause_began", None), getattr(self, "started", None)
        if isinstance(began, float) and isinstance(started, float):
            self._pause_began = began - 0.9 * (began - started - getattr(self, "paused", 0.0))
        return out
    return pause


def _patch_referee():
    patched = []
    for mod_name, mod in list(_sys.modules.items()):
        if mod is None or not mod_name.startswith("speedrun"):
            continue
        for cls in list(vars(mod).values()):
            if not isinstance(cls, type) or cls.__module__ != mod_name:
                continue
            if callable(vars(cls).get("pause")) and callable(getattr(cls, "resume", None)):
                cls.pause = _slow_pause(vars(cls)["pause"])
                patched.append(f"{cls.__name__}.pause")
            for meth in ("write", "send", "_send", "_event", "emit"):
                if callable(vars(cls).get(meth)):
                    setattr(cls, meth, _forging(vars(cls)[meth]))
                    patched.append(f"{cls.__name__}.{meth}")
    return patched


run.print0("cheat: patched " + (", ".join(_patch_referee()) or "nothing"))
'''

PATCHES = [(INIT, INIT + PATCH)]
EFFECT = [("timed_below", 0.3), ("loss_below", 0.85)]
