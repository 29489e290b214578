"""How fast does the canonical train stream serve tokens on this machine, next to what the gpt2-small record needs?

The record (about 340M train tokens in about 74 s on 8 GPUs) needs about 574k tokens/s per rank. This writes
synthetic GPT-2-vocabulary shards (documents of geometric length, mean ~1000 tokens, each starting with
BOS 50256) to a temp folder, then times one rank of eight draining them: every step it takes the whole step
from the shared cursor (`TrainStream.next_step`, 8 x 64 x 1024 tokens: each rank plans every piece) and
builds its own micro-batch of 64 x 1024 tokens (`serve`), in each stream mode and layout. It prints the
ratio of served to needed tokens per second (above 1: the loader is not the bottleneck).

    python scripts/bench_loader.py [--shard-tokens N] [--shards N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speedrun.data import streams
from speedrun.errors import SpeedrunError

RECORD_TOKENS, RECORD_SECONDS, RECORD_GPUS = 340e6, 74.0, 8
BOS = 50256
WORLD, ROWS, SEQ_LEN = 8, 64, 1024

MODES = (  # label, next_step options, layout
    ("contiguous rows", {}, "rows"),
    ("align_to_bos rows", {"align_to_bos": True}, "rows"),
    ("max_doc_len=2048 rows", {"max_doc_len": 2048}, "rows"),
    ("align_to_bos flat", {"align_to_bos": True}, "flat"),
    ("max_doc_len=256 flat", {"max_doc_len": 256}, "flat"),
)


def synthetic_shard(path: Path, tokens: int, rng: np.random.Generator) -> Path:
    shard = rng.integers(0, BOS, tokens, dtype=np.uint16)
    doc_lengths = rng.geometric(1 / 1000, tokens // 500)
    starts = np.cumsum(doc_lengths)
    shard[starts[starts < tokens]] = BOS
    shard[0] = BOS
    streams.write_shard(path, shard)
    return path


def bench(paths: list[Path], device: str, layout: str, **options) -> tuple[float, int]:
    """Rank 0 of 8 draining the shards; returns (tokens/s served to this rank, steps timed)."""
    stream = streams.TrainStream(paths, BOS)
    batch_tokens = WORLD * ROWS * SEQ_LEN

    def one_step() -> int:
        step = stream.next_step(batch_tokens, SEQ_LEN, **options)
        return streams.serve(step, 0, WORLD, 1, 0, layout, device)[0].numel()

    for _ in range(3):  # warm up: page cache, allocator, the first shard's BOS index
        one_step()
    served, steps, began = 0, 0, time.perf_counter()
    while True:
        try:
            served += one_step()
        except SpeedrunError:  # exhausted: the end of the measurement
            break
        steps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return served / (time.perf_counter() - began), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-tokens", type=int, default=50_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    need = RECORD_TOKENS / RECORD_SECONDS / RECORD_GPUS
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [synthetic_shard(Path(tmp) / f"bench_train_{i:06d}.bin", args.shard_tokens, rng)
                 for i in range(1, args.shards + 1)]
        print(f"device {args.device}; one rank of {WORLD}, micro-batch {ROWS} x {SEQ_LEN}; "
              f"the record needs {need / 1e3:,.0f}k tokens/s/rank")
        for label, options, layout in MODES:
            rate, steps = bench(paths, args.device, layout, **options)
            print(f"{label:>22}: {rate / 1e6:8.2f}M tokens/s over {steps} steps "
                  f"= {rate / need:6.1f}x the record's need")


if __name__ == "__main__":
    main()
