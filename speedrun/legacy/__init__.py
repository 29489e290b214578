"""modded-nanogpt's own record logs, parsed into self-reported run evidence (`speedrun import-log`).
"""
