"""`speedrun ladder`: does a method still beat a fairly tuned baseline as the model grows?

One record answers one question at one size. A ladder runs every (method, size, budget, hyper-parameter,
seed) point of a spec through the real referee (`speedrun run`), tunes each method on its own at each size,
re-runs the chosen setting with fresh seeds, and reports per size the tuned losses, the gap and the
data-equivalent speed-up with intervals, and the trend across sizes with the crossover size where the
speed-up falls to 1.

One concept a module: `spec` (the TOML schema), `points` (enumeration, run directories, resume, reading a
point's evidence), `executors` (local processes, or Slurm through submitit), `runner` (tuning waves, then
confirmation), `estimate` (the statistics), `report` (the typed `ladder.json`), `plots` (matplotlib).
The library never prints; `speedrun.ladder_cli` is the command.
"""
