"""Code that runs inside the submission's processes: the rank bootstrap and the `Run`/`TrainLoader` behind
`speedrun.init()`. Nothing here is trusted with a verdict; it reports to the referee and the referee judges.
"""
