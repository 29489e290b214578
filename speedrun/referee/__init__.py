"""The launcher's side of the trust boundary: `speedrun run`'s process, the channel every rank reports on, the
per-repetition referee that stamps phases on its own clock, the data watch, and the loss measurement.
"""
