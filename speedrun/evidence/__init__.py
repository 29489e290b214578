"""The run directory: every file a run leaves behind (names, schema, the event log), the pins of the files a
verdict depends on, and the hardware fingerprint. Written by the referee, read by the judge.
"""
