"""Record 003 (records/gpt2-small/003_modern-record/train.py): its attention mask and its runs through the launcher.

The script is one file that starts a run when executed, so the attention functions are compiled from its
source on their own (ast) and checked against a per-document reference: the dense CPU path, and FlexAttention's
forward on CPU (the CUDA path's mask) where this torch runs it; the whole model forward must give the same
logits on both paths and keep documents apart. Then the script runs for a few steps at reduced
width, 2 gloo CPU ranks through the real launcher, on a synthetic GPT-2-vocabulary track of short documents
(its gpt2-small configuration, with two schedule phases and gradient accumulation) and on the real tiny track.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch
import torch.nn.functional as F

from speedrun.data import streams
from speedrun.evidence import rundir
from speedrun.cli import main
from speedrun.tracks import REPO_ROOT

SCRIPT = REPO_ROOT / "records" / "gpt2-small" / "003_modern-record" / "train.py"
DEFINITIONS = ("GATE_DIMS", "document_positions", "attention_mask", "attend", "rms_norm", "rotate", "Block", "GPT")


def script_functions() -> dict:
    """The script's attention helpers and model, compiled from its source without running the script."""
    tree = ast.parse(SCRIPT.read_text())
    nodes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in DEFINITIONS
             or isinstance(n, ast.Assign) and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["GATE_DIMS"]]
    assert len(nodes) == len(DEFINITIONS)
    from torch.nn.attention import flex_attention as fa

    namespace = {"torch": torch, "nn": torch.nn, "F": F, "BlockMask": fa.BlockMask,
                 "create_block_mask": fa.create_block_mask, "flex_attention": fa.flex_attention}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(SCRIPT), "exec"), namespace)
    return namespace


def flat_documents(rng, pieces: int, T: int, bos_rate: float) -> torch.Tensor:
    """cu_seqlens as the loader builds them: 0, every piece start, random document starts, n."""
    n = pieces * T
    starts = set(range(0, n, T)) | set(np.flatnonzero(rng.random(n) < bos_rate).tolist()) | {n}
    return torch.tensor(sorted(starts), dtype=torch.int32)


def reference(q, k, v, cu_seqlens, window):
    """Attention document by document, query by query: keys of the same document, at most window - 1 back."""
    out = torch.empty_like(q)
    scale = q.size(-1) ** -0.5
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        for i in range(s, e):
            lo = max(s, i - window + 1)
            scores = torch.einsum("hd,khd->hk", q[i], k[lo:i + 1]) * scale
            out[i] = torch.einsum("hk,khd->hd", scores.softmax(-1), v[lo:i + 1])
    return out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_document_causal_window_attention_matches_a_per_document_loop():
    fn = script_functions()
    rng = np.random.default_rng(0)
    pieces, T, heads, head_dim = 2, 128, 2, 8
    cu = flat_documents(rng, pieces, T, bos_rate=0.03)
    n = pieces * T
    docs, pos = fn["document_positions"](cu, n)
    bounds = cu.tolist()
    want_docs = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    want_pos = np.arange(n) - np.repeat(bounds[:-1], np.diff(bounds))
    assert docs.tolist() == want_docs.tolist() and pos.tolist() == want_pos.tolist()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, heads, head_dim, generator=g) for _ in range(3))
    try:
        fn["attend"](q, k, v, fn["attention_mask"](docs, torch.tensor(T), T, flex=True))
        flex = True
    except Exception:  # FlexAttention's CPU forward is not available in every torch build
        flex = False
    for window in (1, 5, 64, T):
        want = reference(q, k, v, cu, window)
        dense = fn["attend"](q, k, v, fn["attention_mask"](docs, torch.tensor(window), T, flex=False))
        torch.testing.assert_close(dense, want, atol=1e-5, rtol=1e-5)
        if flex:
            with torch.no_grad():
                got = fn["attend"](q, k, v, fn["attention_mask"](docs, torch.tensor(window), T, flex=True))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert flex or torch.__version__ < "2.5", "FlexAttention's CPU forward should run on this torch"


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_the_model_gives_the_same_logits_on_the_flex_and_the_dense_path():
    """The whole forward (smear, value embeddings, long and short windows, U-net, backout) on both paths, with
    every parameter randomised (zero-initialised ones would hide a path that is never used)."""
    fn = script_functions()
    torch.manual_seed(0)
    vocab, T = 300, 128
    dense = fn["GPT"](vocab, 32, 4, 2, 15.0, flex=False)
    flex = fn["GPT"](vocab, 32, 4, 2, 15.0, flex=True)
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_(0.0, 0.2)
    flex.load_state_dict(dense.state_dict())
    cu = flat_documents(np.random.default_rng(2), 2, T, bos_rate=0.03)
    inputs = torch.randint(0, vocab, (2 * T,))
    docs, pos = fn["document_positions"](cu, inputs.numel())
    windows = torch.tensor([48, 24], dtype=torch.int32)
    with torch.no_grad():
        want = dense(inputs, docs, pos, windows, T)
        got = flex(inputs, docs, pos, windows, T)
    assert want.shape == (2 * T, 384) and want.std() > 0.1
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # a document's logits do not depend on the documents before it (here: the other piece's first document)
    cut = int(cu[1])
    other = inputs.clone()
    other[:cut] = torch.randint(0, vocab, (cut,))
    with torch.no_grad():
        moved = dense(other, docs, pos, windows, T)
    torch.testing.assert_close(moved[cut:], want[cut:], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def docs_track(tmp_path_factory):
    """A GPT-2-vocabulary track of random tokens in short documents (BOS about every 100 tokens), so that BOS-
    aligned flat batches do not skip most of the stream."""
    root = tmp_path_factory.mktemp("docs")
    env = synthetic.make_track(root, name="gpt2-docs", vocab=50257, val_tokens=8192, train_tokens=60_000)
    rng = np.random.default_rng(1)
    folder = Path(env["SPEEDRUN_DATA_DIR"]) / "gpt2-docs-data"
    for path in sorted(folder.glob("*.bin")):
        count = streams.shard_tokens(path)
        tokens = rng.integers(0, 50256, count)
        tokens[rng.random(count) < 0.01] = 50256
        streams.write_shard(path, tokens)
    return env


def launch(tmp_path: Path, track: str, *script_args: str) -> dict:
    out = tmp_path / "run"
    main(["run", str(SCRIPT), "--track", track, "--nproc", "2", "--runs", "1", "--out", str(out),
          "--", *script_args])
    verdict = json.loads((out / "verdict.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["status"] for r in manifest["repetitions"]] == ["ok"], (out / "run-1.log").read_text()[-3000:]
    assert verdict["problems"] == [], verdict["problems"]
    events = rundir.read_events(out / "run-1.jsonl")
    assert all(r["probe"]["passed"] for r in events.last("val")["ranks"])
    return {"verdict": verdict, "events": events, "log": (out / "run-1.log").read_text()}


def test_gpt2_config_runs_flat_schedules_with_accumulation(docs_track, tmp_path, monkeypatch):
    for k, v in docs_track.items():
        monkeypatch.setenv(k, v)
    r = launch(tmp_path, "gpt2-docs", "--config", "gpt2-small", "--dim", "64", "--layers", "2", "--heads", "2",
               "--steps", "2", "--batch-tokens", "1024,2048", "--seq-len", "128,256", "--window", "32,256",
               "--micro-tokens", "512", "--val-seq-len", "256", "--val-micro-tokens", "1024")
    assert "phases (batch_tokens, seq_len, window, micro-batches): (1024, 128, 32, 1), (2048, 256, 256, 2)" in r["log"]
    events = r["events"]
    loaders = [(e["batch_tokens"], e["seq_len"], e["accum_steps"], e["layout"]) for e in events.of("loader")
               if e.get("rank", 0) == 0]
    assert loaders[-2:] == [(1024, 128, 1, "flat"), (2048, 256, 2, "flat")]  # step 0's shape, then step 1's
    assert events.last("finish")["tokens"] == 1024 + 2048
    val = events.last("val")
    assert val["tokens"] == 8192 and 10.0 < val["loss"] < 11.0  # ~ln(50304) after 2 steps on random tokens
    model = events.last("model")
    assert model["flops_per_token"] > 6 * (model["params"] - model["embedding_params"])
    logged = [e for e in events.of("log") if "train_loss" in e["scalars"]]
    assert len(logged) == 2 and all(math.isfinite(e["scalars"]["train_loss"]) for e in logged)


def test_tiny_track_at_reduced_width(tmp_path):
    r = launch(tmp_path, "tiny", "--dim", "64", "--layers", "2", "--heads", "2", "--steps", "6")
    assert r["events"].last("val")["tokens"] == 262144
    assert r["events"].last("val")["loss"] < 6.0  # below ln(512) = 6.24: it learns in six steps
