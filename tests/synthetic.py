"""A small hub-style track on random shards, for tests that exercise the launcher and referee quickly.

`make_track(root, ...)` writes `root/tracks/<name>.toml` and its shards under `root/data/<repo name>/`, and
returns the environment variables that point the harness at them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speedrun.data import streams
from speedrun import tracks

TRACK = """\
name = "{name}"
description = "synthetic test track"
metric = "{metric}"
target_val_loss = {target}
val_tokens = {val_tokens}
vocab_size = {vocab}
bos_token = {bos}
hardware = "test"

[rule]
test = "{rule}"
min_runs = 1

[checks]
require_logits = {require_logits}

[data]
source = "hub"
repo = "local/{name}-data"
val_files = ["{name}_val_000000.bin"]
train_pattern = "{name}_train_{{:06d}}.bin"
train_range = [1, 2]
"""


def make_track(root: Path, name: str = "smoke", vocab: int = 512, val_tokens: int = 16384, target: float = 7.0,
               metric: str = "wallclock", train_tokens: int = 200_000, require_logits: bool = True,
               rule: str = "ttest") -> dict:
    root = Path(root)
    (root / "tracks").mkdir(parents=True, exist_ok=True)
    (root / "tracks" / f"{name}.toml").write_text(TRACK.format(
        name=name, metric=metric, target=target, val_tokens=val_tokens, vocab=vocab, bos=vocab - 1,
        require_logits=str(require_logits).lower(), rule=rule))
    folder = root / "data" / f"{name}-data"
    rng = np.random.default_rng(0)
    # the scored val tokens, then as many again for the referee's monitor split (intermediate validations)
    streams.write_shard(folder / f"{name}_val_000000.bin", rng.integers(0, vocab, 2 * val_tokens + 1000))
    for i in (1, 2):
        streams.write_shard(folder / f"{name}_train_{i:06d}.bin", rng.integers(0, vocab, train_tokens))
    return {"SPEEDRUN_TRACKS_DIR": str(root / "tracks"), "SPEEDRUN_DATA_DIR": str(root / "data"),
            "SPEEDRUN_RUNS_DIR": str(root / "runs")}


def hub_track(tmp_path: Path, pins: dict[str, str] | None = None, val_tokens: int = 1024,
              repo: str = "someone/fw") -> tracks.Track:
    """A GPT-2-vocabulary hub track `hubby` (files fw_val_000000.bin, fw_train_00000{1,2,3}.bin), loaded."""
    pin_lines = "".join(f'"{k}" = "{v}"\n' for k, v in (pins or {}).items())
    path = Path(tmp_path) / "hubby.toml"
    path.write_text(f"""
name = "hubby"
metric = "wallclock"
target_val_loss = 3.0
val_tokens = {val_tokens}
vocab_size = 50257
bos_token = 50256
hardware = "cpu"
[rule]
test = "ttest"
[data]
source = "hub"
repo = "{repo}"
val_files = ["fw_val_000000.bin"]
train_pattern = "fw_train_{{:06d}}.bin"
train_range = [1, 3]
[data.sha256]
{pin_lines}""")
    return tracks.load_track_file(path)


def generator_track(tmp_path: Path, seed: int = 7, name: str = "mini") -> tracks.Track:
    """A small track of the tiny generator's kind (40,000 train tokens in 16,384-token shards, 4,096 val),
    loaded from its TOML in `tmp_path`."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
name = "{name}"
metric = "wallclock"
target_val_loss = 4.0
val_tokens = 4096
vocab_size = 512
bos_token = 511
hardware = "cpu"
[rule]
test = "ttest"
[data]
source = "generator"
generator = "tiny-v1"
seed = {seed}
train_tokens = 40000
val_split_tokens = 4096
shard_tokens = 16384
""")
    return tracks.load_track_file(path)
