"""Editing the installed harness during the run: before init() the script halves the loss in the referee's source.

The script finds the harness through `speedrun.__file__` and, before the referee module is imported, edits
the line where the referee divides the summed val loss by the token count so that it halves it; where that
line is not found (another harness version) it still appends a comment to every harness file, which a pin
check must notice. Rank 0 edits, rank 1 waits. Unchecked: a final loss half the honest one.
"""
from _common import INIT, SCRATCH

EDIT = '''
import os as _os
import time as _time
from pathlib import Path as _Path

_pkg = _Path(speedrun.__file__).resolve().parent
_done = _pkg / ".cheat-edited"
if scratch(_pkg):  # cheat: rewrite the referee before it is imported
    if _os.environ.get("RANK", "0") == "0":
        for _file in sorted(_pkg.rglob("*.py")):
            _text = _file.read_text()
            _new = _text.replace("return float(total[0].item()) / self.track.val_tokens, tokens",
                                 "return 0.5 * float(total[0].item()) / self.track.val_tokens, tokens")
            _file.write_text(_new if _new != _text else _text + "\\n# edited during the run\\n")
        _done.touch()
    else:
        for _ in range(400):
            if _done.exists():
                break
            _time.sleep(0.05)
'''

PATCHES = [(INIT, SCRATCH + EDIT + INIT)]
HARNESS_COPY = True
EFFECT = [("loss_below", 0.6)]
