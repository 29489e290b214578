"""The harness version and the version of the API record scripts use: a leaf every layer may import.

`API_VERSION` only ever grows: a record script written against version N keeps running under every later
harness (see `speedrun/__init__.py` for what each version added).
"""

__version__ = "0.3.0"
API_VERSION = 2
