"""Verdicts from evidence alone: `verify` reads a run directory (refereed or self-reported) and decides,
`stats` holds every statistical rule.
"""
