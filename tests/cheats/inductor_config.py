"""Forbidden settings: torch._inductor.config values set at run time through a module name built from pieces.

The track forbids the text `torch._inductor.config` in the source; the script imports the module with
importlib from a name assembled at run time and turns coordinate_descent_tuning and max_autotune on (on
CUDA, faster kernels the track does not allow). The source scan sees nothing. Unchecked: the log shows the
forbidden settings in force.
"""
from _common import INIT

SET = '''import importlib

_config = importlib.import_module(".".join(["torch", "_" + "inductor", "con" + "fig"]))
for _key in ("coordinate_descent_tuning", "max_autotune"):  # cheat: settings the track forbids
    setattr(_config, _key, True)
run.print0("cheat: inductor " + ", ".join(f"{k}={getattr(_config, k)}" for k in ("coordinate_descent_tuning",
                                                                                  "max_autotune")))
'''

PATCHES = [(INIT, INIT + SET)]
EFFECT = [("log", r"cheat: inductor coordinate_descent_tuning=True, max_autotune=True")]
