"""scripts/gpu_check.py, the command a lent GPU runs, kept from rotting between loans by running it on the CPU.

The whole command runs once at micro size (`--cpu-smoke`: fp32, gloo, one rank per run, the plain-text rich
stand-in the device falls back to) and every part's figures are checked for content, not just the exit status.
Then the driver's safety nets: a part that fails or runs past its cap is recorded and the summary is still
whole. The GPU profile's arithmetic (val set tiling, enough train tokens, caps within 8.5 minutes) is checked
without running it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speedrun.tracks import REPO_ROOT, parse_track

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"
PARTS = ("env", "data", "record003", "record002", "overhead", "optim", "loader")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(out: Path, *flags: str, env_extra: dict | None = None, timeout: float = 2400):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--cpu-smoke", *flags],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout)
    summary = json.loads((out / "gpu_check.json").read_text())
    return proc, summary


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    # the caps (and the budget) are sized for an idle 2-core machine; a shared one gets three times as long
    proc, summary = run_check(out, "--rich-stub", "--timeout-scale", "3")
    return out, proc, summary


def test_every_part_ran_and_reported(smoke):
    out, proc, summary = smoke
    bad = {p: (e["status"], e["error"]) for p, e in summary["parts"].items() if e["status"] != "ok"}
    assert not bad, f"{bad}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0
    assert tuple(summary["parts"]) == PARTS
    assert summary["mode"] == "cpu-smoke" and summary["finished"] and summary["wall_s"] > 0
    for part, entry in summary["parts"].items():
        assert (out / entry["log"]).stat().st_size > 0, part
        assert 0 < entry["seconds"] <= entry["timeout_s"], part
    assert any("rich" in n and "stand-in" in n for n in summary["notes"])
    assert any("4,096 tokens" in n for n in summary["notes"])      # the smaller val set is stated
    table = proc.stdout.splitlines()
    assert any(line.startswith("record003  ok") for line in table)  # the printed table


def test_env_and_data(smoke):
    _, _, summary = smoke
    env = summary["parts"]["env"]["result"]
    assert env["device"] == "cpu" and env["torch"] and env["fingerprint"]["kind"] == "cpu"
    assert env["peak_flops"] is None and "MFU is not computed" in env["peak_source"]
    assert env["modules"]["numpy"] is True and set(env["modules"]) >= {"rich", "scipy", "tiktoken"}
    data = summary["parts"]["data"]["result"]
    assert data["val_tokens"] == summary["val_tokens"] == 4096
    assert data["train_files"] == 2 and data["train_tokens"] == 100_000
    assert data["val_documents"] >= 2                       # documents, each opened by BOS
    assert 1.0 < data["val_unigram_entropy"] < math.log(data["vocab_size"])


@pytest.mark.parametrize("part", ["record003", "record002"])
def test_records_under_the_referee(smoke, part):
    out, _, summary = smoke
    r = summary["parts"][part]["result"]
    assert r["status"] == "ok" and r["exit_code"] == 0 and r["device"] == "cpu"
    assert r["problems"] == [], r["problems"]
    assert positive(r["tokens_per_s"]) and positive(r["timed_s"]) and positive(r["flops_per_token"])
    assert r["train_tokens"] == (1024 + 2048 if part == "record003" else 2 * 1024)   # 2 steps (two phases in 003)
    assert r["mfu"] is None and r["peak_flops"] is None      # no CPU peak in the table
    assert positive(r["compile_s"]) and positive(r["peak_memory_mib"]) and "getrusage" in r["memory_source"]
    assert r["val_tokens"] == 4096 and positive(r["val_s"]) and len(r["validations"]) == 1
    # the loss the referee measured: below the fresh model's, a little, and no lower than possible
    assert r["no_data_level"] < r["start_loss"] < math.log(8192) + 0.5
    assert 1.0 < r["final_val_loss"] < r["start_loss"]
    run_dir = out / r["run_dir"]
    assert (run_dir / "manifest.json").exists() and (run_dir / "verdict.json").exists()
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["throughput"]["tokens_per_s"] == r["tokens_per_s"]


def test_referee_overhead(smoke):
    _, _, summary = smoke
    r = summary["parts"]["overhead"]["result"]
    for key in ("step_referee_ms", "step_bare_ms", "val_plain_s", "val_referee_s", "startup_init_s",
                "startup_start_s"):
        assert positive(r[key]), key
    assert 0.2 < r["step_ratio"] < 5 and 0.2 < r["val_ratio"] < 5     # both sides measured, same loop


def test_optimizers(smoke):
    _, _, summary = smoke
    r = summary["parts"]["optim"]["result"]
    assert r["device"] == "cpu"
    single, theirs, adamw, group = r["single"], r["torch_muon"], r["adamw"], r["process_group"]
    assert positive(single["ours_s"]) and positive(single["ratio"])
    assert single["ours_rel_err"] < 1e-3 and 0.0 < single["ours_sv_max"] < 1.5
    assert positive(theirs["ours_s"]) and positive(theirs["torch_s"]) and theirs["max_apart"] < 0.05
    assert positive(adamw["fused_s"]) and positive(adamw["foreach_s"])
    assert group["backend"] == "gloo" and group["world"] == 1 and group["all_gather_ok"]
    assert group["max_abs_diff"] == 0.0 and positive(group["ratio"])   # the group changes nothing at one rank


def test_loader(smoke):
    _, _, summary = smoke
    r = summary["parts"]["loader"]["result"]
    assert r["device"] == "cpu" and len(r["modes"]) == 5
    for mode in r["modes"]:
        assert positive(mode["tokens_per_s"]) and mode["steps"] >= 1, mode


def test_a_failing_part_is_recorded_and_the_summary_kept(tmp_path):
    proc, summary = run_check(tmp_path, "--parts", "loader", env_extra={"GPU_CHECK_FAIL": "env"}, timeout=300)
    assert proc.returncode == 1
    parts = summary["parts"]
    assert parts["env"]["status"] == "failed" and "failure injected" in parts["env"]["error"]
    assert parts["data"]["status"] == "ok" and parts["data"]["result"]["val_tokens"] == 4096   # the next part ran
    assert parts["loader"]["status"] == "skipped" and "env" in parts["loader"]["error"]
    assert summary["finished"] and "Traceback" in (tmp_path / "logs" / "env.log").read_text()


def test_a_part_past_its_cap_is_stopped(tmp_path):
    proc, summary = run_check(tmp_path, "--parts", "loader", "--timeout-scale", "0.01", timeout=300)
    parts = summary["parts"]
    assert proc.returncode == 1
    assert parts["env"]["status"] == "timeout" and "cap" in parts["env"]["error"]
    assert parts["loader"]["status"] in ("timeout", "skipped")     # skipped when data did not finish in its cap
    assert summary["finished"] and all(e["status"] != "running" for e in parts.values())


# --- the GPU profile, checked without a GPU ---------------------------------------------------------------------


def test_track_copy_is_a_valid_gpt2_small_track():
    gc = load_script()
    source = (REPO_ROOT / "configs" / "tracks" / "gpt2-small.toml").read_text()
    original = parse_track(source, "gpt2-small.toml")
    copy = parse_track(gc.track_copy_text(source, 1 << 20, 2), f"{gc.TRACK_NAME}.toml")
    assert (copy.vocab_size, copy.bos_token) == (50257, 50256) == (gc.VOCAB, gc.BOS)
    assert copy.val_tokens == 1 << 20 and copy.data.sha256 == {}
    assert copy.data.train_files == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert copy.data.all_val_files == original.data.all_val_files
    assert (copy.target_val_loss, copy.rule, copy.checks, copy.metric) == \
           (original.target_val_loss, original.rule, original.checks, original.metric)


def test_gpu_profile_fits():
    gc = load_script()
    gpu = gc.PROFILES["gpu"]
    assert sum(gpu["timeouts"].values()) <= gpu["budget_s"] <= 510      # the whole run within 8.5 minutes
    val = gpu["val_tokens"]
    assert val % 524288 == 0                          # 002 validates in its loader's shape (524,288 tokens)
    assert val % 32768 == 0 and val % 2048 == 0       # 003: 32,768-token validation batches of 2048-token pieces
    train = gpu["train_shard_tokens"] * gpu["train_shards"]
    steps = {p: int(a[a.index("--steps") + 1]) for p, a in gpu["record_args"].items()}
    assert steps["record002"] * 524288 < train        # 002's batch
    assert steps["record003"] // 3 * (262144 + 393216 + 524288) < train   # 003's three phases
    assert steps["record003"] % 3 == 0
    assert gpu["device"] == "cuda" and gpu["vocab_size"] == 50257
