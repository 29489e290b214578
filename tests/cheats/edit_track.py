"""Editing the track file during the run: before init() the script rewrites smoke.toml (require_logits off, target 99).

The track file is found through the referee's own session (or $SPEEDRUN_TRACK / $SPEEDRUN_TRACKS_DIR) and
rewritten (atomically, by every rank) before init(); the script then validates with a loss_fn returning half the cross-entropy
and no logits. Unchecked: a final loss half the honest one, against a target that is now 99.
"""
from _common import HALF_LOSS, INIT, NO_LOGITS, SCRATCH

EDIT = '''
import glob as _glob
import os as _os
import re as _re

_files = set(_glob.glob(_os.path.join(_os.environ.get("SPEEDRUN_TRACKS_DIR", "configs/tracks"), "*.toml")))
if _os.environ.get("SPEEDRUN_TRACK", "").endswith(".toml"):
    _files.add(_os.environ["SPEEDRUN_TRACK"])
from speedrun.rank import bootstrap as _bootstrap
if _bootstrap.current_session() is not None:
    _files.add(str(_bootstrap.current_session().track.path))
for _file in sorted(_files):  # cheat: rewrite the rules before the referee reads them
    if scratch(_file):
        _text = open(_file).read()
        _text = _re.sub(r"require_logits\\s*=\\s*true", "require_logits = false", _text)
        _text = _re.sub(r"target_val_loss\\s*=\\s*[0-9.]+", "target_val_loss = 99.0", _text)
        with open(f"{_file}.{_os.getpid()}", "w") as _f:
            _f.write(_text)
        _os.replace(f"{_file}.{_os.getpid()}", _file)
'''

PATCHES = [(INIT, SCRATCH + EDIT + INIT), HALF_LOSS, NO_LOGITS]
EFFECT = [("loss_below", 0.6)]
