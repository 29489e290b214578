"""One command that turns a short GPU loan into figures: the CUDA path of the harness, measured in <= 8.5 minutes.

On a lent GPU (one H100/H200; no internet, so no FineWeb) it generates a synthetic corpus with the GPT-2
tracks' shapes (vocabulary 50257, BOS 50256, Zipf-distributed tokens in documents of log-normal length, mean
~800 tokens) as FineWeb-format shards in a temp folder, writes a copy of `configs/tracks/gpt2-small.toml`
pointed at it (name `gpt2-small-gpucheck`, a local repo, no sha256 pins, a smaller val set: stated in the
output), and then measures, each part in its own process with its own timeout:

  env       torch/CUDA versions, the device, the hardware fingerprint (speedrun.evidence.hardware), the peak FLOP/s used
            for MFU (speedrun.judge.verify.PEAK_FLOPS, keyed by device name), which optional modules are importable
  data      the corpus and the track copy (validated by speedrun.tracks and speedrun.data.streams)
  record003 records/gpt2-small/003_modern-record/train.py through the real `speedrun run` (1 process, gpt2-small
  record002 size, a fixed small number of steps, one validation): tokens/s, MFU, compile (warm-up) time, peak
            device memory (nvidia-smi, sampled), validation time, the verdict's problems
  overhead  scripts/bench_overhead.py on the synthetic track: step time and validation time with and without
            the referee
  optim     scripts/bench_optim.py's pieces: speedrun.optim.Muon against a straightforward Muon and against
            torch.optim.Muon (bf16), AdamW's paths, and Muon under an initialised 1-rank process group (nccl)
  loader    scripts/bench_loader.py's pieces: the canonical stream's host-to-device path, every mode

`--cpu-smoke` runs the same parts at micro size on the CPU (fp32, gloo, one thread per process, a vocabulary of
8192 in the track copy, 4096 val tokens): tests/test_gpu_check.py runs it so the command cannot rot.

A failure or timeout of one part is recorded and the next part runs; `OUT/gpu_check.json` is rewritten after
every part, so a killed run keeps what finished. Logs go to `OUT/logs/`, run directories to `OUT/runs/`.

    PYTHONPATH=. python scripts/gpu_check.py --out $OUT               # a lent GPU: about 8.5 minutes at most
    PYTHONPATH=. python scripts/gpu_check.py --out /tmp/gc --cpu-smoke # CPU, micro size, fp32, gloo (the test)

Runtime needs: torch and numpy; `rich` (the launcher's console) is replaced by a plain-text stand-in when it is
not importable (stated in the summary); scipy, tiktoken and huggingface_hub are not needed (one repetition is
never t-tested; no tokenizer; nothing is fetched).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
TRACK_NAME = "gpt2-small-gpucheck"
REPO = "local/gpucheck-synthetic"     # the track copy's data folder is <data dir>/gpucheck-synthetic
VOCAB, BOS = 50257, 50256
SUMMARY = "gpu_check.json"
OPTIONAL_MODULES = ("numpy", "rich", "scipy", "tomli_w", "tiktoken", "huggingface_hub", "triton", "matplotlib")
PARTS = ("env", "data", "record003", "record002", "overhead", "optim", "loader")
RECORDS = {"record003": "records/gpt2-small/003_modern-record/train.py",
           "record002": "records/gpt2-small/002_muon-baseline/train.py"}

# Sizes and time caps. gpu: gpt2-small size on one device, caps summing to 8.5 minutes; cpu: micro size for the test.
PROFILES = {
    "gpu": {
        "device": "cuda", "nproc": 1, "vocab_size": VOCAB, "bos": BOS, "val_tokens": 1 << 20,
        "train_shard_tokens": 8_000_000, "train_shards": 2,
        "record_args": {
            # the three phases' batches (262,144 / 393,216 / 524,288 tokens, 4 steps each) at one piece length, so one
            # training graph is compiled (dynamic=False recompiles per seq_len; the windows are tensors)
            "record003": ["--config", "gpt2-small", "--steps", "12", "--seq-len", "2048"],
            "record002": ["--config", "gpt2-small", "--steps", "12"],
        },
        "overhead_args": ["--steps", "40", "--batch-tokens", "32768", "--seq-len", "1024"],
        "optim": {"layers": 12, "repeats": 5, "small": False},
        "loader": {"shard_tokens": 20_000_000, "rows": 64, "seq_len": 1024},
        # env pays the first (cold) import of torch on a fresh machine
        # record002 includes its replica check (one more launch: does a CUDA model repeat its scored losses?)
        "timeouts": {"env": 40, "data": 30, "record003": 165, "record002": 150, "overhead": 45, "optim": 50,
                     "loader": 30},
        "budget_s": 510,
    },
    "cpu": {
        # a smaller vocabulary than GPT-2's: on a CPU the 50,257-wide head and logits are most of the work
        "device": "cpu", "nproc": 1, "vocab_size": 8192, "bos": 8191, "val_tokens": 4096,
        "train_shard_tokens": 50_000, "train_shards": 2,
        "record_args": {
            "record003": ["--config", "gpt2-small", "--steps", "2", "--dim", "64", "--layers", "2", "--heads", "2",
                          "--batch-tokens", "1024,2048", "--seq-len", "64,128", "--window", "64,128",
                          "--micro-tokens", "1024", "--val-seq-len", "128", "--val-micro-tokens", "1024"],
            "record002": ["--config", "gpt2-small", "--steps", "2", "--dim", "64", "--layers", "2", "--heads", "2",
                          "--seq-len", "128", "--batch-tokens", "1024", "--micro-rows", "8"],
        },
        "overhead_args": ["--steps", "4", "--val-pairs", "2", "--batch-tokens", "512", "--seq-len", "64", "--device", "cpu"],
        "optim": {"layers": 1, "repeats": 1, "small": True},
        "loader": {"shard_tokens": 300_000, "rows": 2, "seq_len": 64},
        "timeouts": {"env": 60, "data": 60, "record003": 120, "record002": 120, "overhead": 120, "optim": 90,
                     "loader": 60},
        "budget_s": 600,
    },
}


# --- the driver: runs each part in its own process, with a timeout, and keeps the summary ---------------------------


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C the part's process group (the launcher then stops its ranks and seals the evidence), then kill it."""
    for sig, grace in ((signal.SIGINT, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_part(part: str, state_path: Path, env: dict, log: Path, timeout: float) -> tuple[str, float, str | None]:
    """(status, seconds, error) of one part's worker process; its result is in the work folder."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", part, "--state", str(state_path)]
    began = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return "timeout", time.monotonic() - began, f"stopped after its cap of {timeout:.0f} s"
        except BaseException:
            stop_group(proc)
            raise
    seconds = time.monotonic() - began
    if code != 0:
        return "failed", seconds, f"exit code {code}: {last_error(log)}"
    return "ok", seconds, None


def last_error(log: Path) -> str:
    """The last line of a log that looks like an error, else its last non-empty line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if re.search(r"(Error|Exception|error:|Traceback|Killed)", ln)]
    return (errors or lines or ["empty log"])[-1][:500]


RICH_STUB = {
    "__init__.py": '"""A plain-text stand-in for rich, written by scripts/gpu_check.py where rich is absent."""\n',
    "markup.py": "def escape(text):\n    return text\n",
    "table.py": '''class Table:
    def __init__(self, title=None, **kwargs):
        self.title, self.columns, self.rows = title, [], []

    def add_column(self, name, **kwargs):
        self.columns.append(str(name))

    def add_row(self, *cells, **kwargs):
        self.rows.append([str(c) for c in cells])

    def lines(self):
        return ([self.title] if self.title else []) + ["  ".join(self.columns)] + ["  ".join(r) for r in self.rows]
''',
    "console.py": '''import re
import sys


class _Status:
    def __init__(self, text):
        self.text = text

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, text):
        self.text = text


class Console:
    def __init__(self, stderr=False, **kwargs):
        self.file = sys.stderr if stderr else sys.stdout

    def print(self, *objects, markup=True, style=None, **kwargs):
        for obj in objects:
            lines = obj.lines() if hasattr(obj, "lines") else [str(obj)]
            for line in lines:
                print(re.sub(r"\\[/?[a-z ]+\\]", "", line) if markup else line, file=self.file, flush=True)

    def status(self, text, **kwargs):
        return _Status(text)


class Group:
    def __init__(self, *renderables):
        self.renderables = renderables
''',
}


def importable(*modules: str) -> bool:
    try:
        for name in modules:
            importlib.import_module(name)
    except Exception:
        return False
    return True


def write_rich_stub(folder: Path) -> Path:
    pkg = folder / "rich"
    pkg.mkdir(parents=True, exist_ok=True)
    for name, text in RICH_STUB.items():
        (pkg / name).write_text(text)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json, logs/ and runs/ (created)")
    parser.add_argument("--cpu-smoke", action="store_true", help="micro size on the CPU (fp32, gloo): the test")
    parser.add_argument("--parts", help=f"comma list of parts to run (default: all of {','.join(PARTS)}; "
                                        "env and data always run)")
    parser.add_argument("--budget-s", type=float, help="stop starting parts after this many seconds "
                                                       "(default: 510 on a GPU)")
    parser.add_argument("--timeout-scale", type=float, default=1.0,
                        help="multiply every part's cap and the default budget (a slow or shared machine)")
    parser.add_argument("--rich-stub", action="store_true", help="use the plain-text rich stand-in even where "
                                                                 "rich is installed (tests the device's fallback)")
    parser.add_argument("--keep-data", action="store_true", help="keep the temp corpus (its path is in the summary)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, json.loads(args.state.read_text()))
    if not args.out:
        parser.error("--out is required")
    return drive(args)


def drive(args: argparse.Namespace) -> int:
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    profile = PROFILES["cpu" if args.cpu_smoke else "gpu"]
    wanted = PARTS if not args.parts else tuple(p for p in PARTS if p in {"env", "data", *args.parts.split(",")})
    unknown = set((args.parts or "").split(",")) - set(PARTS) - {""}
    if unknown:
        raise SystemExit(f"gpu_check: unknown part(s) {', '.join(sorted(unknown))}; parts are {', '.join(PARTS)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))   # the corpus: never under OUT (it would be carried back)
    work = out / "work"
    work.mkdir(exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else profile["budget_s"] * args.timeout_scale
    began = time.monotonic()
    notes = [f"synthetic data, not FineWeb: Zipf tokens over {profile['vocab_size'] - 1} ids, BOS {profile['bos']}, "
             f"log-normal documents; "
             f"val set {profile['val_tokens']:,} tokens (gpt2-small uses 10,485,760), so losses are not comparable "
             f"with the track's target"]
    env = {k: v for k, v in os.environ.items()}
    pythonpath = [str(ROOT)]
    rich_ok = importable("rich.console", "rich.markup", "rich.table")
    if args.rich_stub or not rich_ok:
        pythonpath.insert(0, str(write_rich_stub(scratch / "shim")))
        notes.append("rich is " + ("importable but " if rich_ok else "not importable; ")
                     + "the launcher's console is a plain-text stand-in (scripts/gpu_check.py RICH_STUB)")
    env["PYTHONPATH"] = os.pathsep.join(pythonpath + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(SPEEDRUN_TRACKS_DIR=str(scratch / "tracks"), SPEEDRUN_DATA_DIR=str(scratch / "data"),
               SPEEDRUN_RUNS_DIR=str(out / "runs"), PYTHONUNBUFFERED="1")
    if args.cpu_smoke:
        env["SPEEDRUN_DEVICE"] = "cpu"
        # one thread per process: on a small shared CPU, OpenMP threads spinning at barriers while descheduled cost
        # tens of times the work itself (measured: 4 s instead of 0.1 s for a micro step at load 10 on 2 cores)
        env.setdefault("OMP_NUM_THREADS", "1")
    state = {"mode": mode, "profile": profile, "out": str(out), "scratch": str(scratch), "work": str(work)}
    state_path = work / "state.json"
    write_json(state_path, state)
    summary = {"tool": "scripts/gpu_check.py", "mode": mode, "started": now(), "finished": None, "wall_s": None,
               "command": [sys.executable, *sys.argv], "budget_s": budget, "track": TRACK_NAME,
               "val_tokens": profile["val_tokens"], "data_dir": str(scratch / "data"), "notes": notes, "parts": {}}
    print(f"gpu_check ({mode}): {', '.join(wanted)} -> {out / SUMMARY}", flush=True)
    try:
        for part in wanted:
            entry = summary["parts"][part] = {"status": "running", "timeout_s": None, "seconds": None,
                                              "log": f"logs/{part}.log", "error": None, "result": None}
            left = budget - (time.monotonic() - began)
            cap = min(profile["timeouts"][part] * args.timeout_scale, left)
            # no data, or a definite no from env (no CUDA device, a crash), stops the rest; env past its cap does not
            done = {p: e["status"] for p, e in summary["parts"].items()}
            blocked = "data" if done.get("data", "ok") != "ok" else "env" if done.get("env") == "failed" else None
            if part not in ("env", "data") and blocked:
                entry.update(status="skipped", error=f"part {blocked} did not succeed")
            elif part not in ("env", "data") and left < 10:
                entry.update(status="skipped", error=f"the budget of {budget:.0f} s is spent")
            else:
                entry["timeout_s"] = round(cap, 1)
                write_json(out / SUMMARY, summary)
                part_env = dict(env, GPU_CHECK_CAP_S=str(round(cap, 1)))
                cpu_before = children_cpu_s()
                (work / f"{part}.json").unlink(missing_ok=True)   # never a result left by an earlier run
                status, seconds, error = run_part(part, state_path, part_env, out / "logs" / f"{part}.log", cap)
                entry["cpu_s"] = round(children_cpu_s() - cpu_before, 1)   # the part's whole process tree
                result_path = work / f"{part}.json"
                result = json.loads(result_path.read_text()) if result_path.exists() else None
                if status == "ok" and (result is None or result.get("error")):
                    status, error = "failed", (result or {}).get("error") or "the part wrote no result"
                entry.update(status=status, seconds=round(seconds, 1), error=error, result=result)
                if part == "env" and status == "ok" and mode == "gpu" and not result.get("cuda_available"):
                    entry.update(status="failed", error="torch sees no CUDA device (run with --cpu-smoke on a CPU)")
            print(f"  {part:<10} {entry['status']:<8} {entry['seconds'] or 0:6.1f} s  "
                  f"{brief(part, entry)}", flush=True)
            write_json(out / SUMMARY, summary)
    finally:
        for entry in summary["parts"].values():
            if entry["status"] == "running":   # the driver itself was stopped (Ctrl-C, or the device tool's limit)
                entry.update(status="interrupted", error="gpu_check was stopped during this part")
        summary["finished"] = now()
        summary["wall_s"] = round(time.monotonic() - began, 1)
        write_json(out / SUMMARY, summary)
        if args.keep_data:
            summary["notes"].append(f"corpus kept in {scratch}")
            write_json(out / SUMMARY, summary)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print_table(summary)
    return 0 if all(e["status"] == "ok" for e in summary["parts"].values()) else 1


def fmt(x, spec: str = ".3g", unit: str = "") -> str:
    return f"{format(x, spec)}{unit}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def brief(part: str, entry: dict) -> str:
    r = entry.get("result") or {}
    if entry["status"] != "ok":
        return entry.get("error") or ""
    if part == "env":
        return f"{r.get('device_name')}, torch {r.get('torch')}, peak {fmt(r.get('peak_flops'))} FLOP/s"
    if part == "data":
        return (f"{r.get('train_tokens'):,} train + {r.get('val_tokens'):,} val tokens in "
                f"{fmt(r.get('seconds'), '.1f')} s")
    if part in RECORDS:
        return (f"{fmt(r.get('tokens_per_s'), ',.0f')} tok/s, MFU {fmt(r.get('mfu'), '.1%')}, compile "
                f"{fmt(r.get('compile_s'), '.1f')} s, peak mem {fmt(r.get('peak_memory_mib'), ',.0f')} MiB, "
                f"val loss {fmt(r.get('final_val_loss'), '.3f')}")
    if part == "overhead":
        return (f"step x{fmt(r.get('step_ratio'), '.4f')} ({fmt(r.get('step_referee_ms'), '.2f')} vs "
                f"{fmt(r.get('step_bare_ms'), '.2f')} ms), validation x{fmt(r.get('val_ratio'), '.3f')}")
    if part == "optim":
        return (f"Muon/straightforward {fmt(r.get('single', {}).get('ratio'), '.3f')}, Muon/torch bf16 "
                f"{fmt(r.get('torch_muon', {}).get('ratio'), '.3f')}, 1-rank group "
                f"{fmt(r.get('process_group', {}).get('ratio'), '.3f')}")
    if part == "loader":
        return ", ".join(f"{m['mode']} {fmt(m['tokens_per_s'] / 1e6, '.1f')}M/s" for m in r.get("modes", []))
    return ""


def print_table(summary: dict) -> None:
    print(f"\ngpu_check {summary['mode']}: {summary['wall_s']} s; val set {summary['val_tokens']:,} tokens "
          f"(synthetic data); summary in {SUMMARY}")
    env = (summary["parts"].get("env") or {}).get("result") or {}
    if env:
        print(f"device {env.get('device_name')}; MFU peak {fmt(env.get('peak_flops'))} FLOP/s "
              f"({env.get('peak_source')})")
    print(f"{'part':<10} {'status':<8} {'s':>6}  figures")
    for part, entry in summary["parts"].items():
        print(f"{part:<10} {entry['status']:<8} {fmt(entry['seconds'], '6.1f'):>6}  {brief(part, entry)}")


# --- the workers: one per part, each writes WORK/<part>.json -------------------------------------------------------


def worker(part: str, state: dict) -> int:
    work = Path(state["work"])
    print(f"gpu_check part {part} ({state['mode']}), pid {os.getpid()}, {now()}", flush=True)
    try:
        if part in os.environ.get("GPU_CHECK_FAIL", "").split(","):   # the test's way to break one part
            raise RuntimeError(f"failure injected into part {part} (GPU_CHECK_FAIL)")
        result = {"env": part_env, "data": part_data, "overhead": part_overhead, "optim": part_optim,
                  "loader": part_loader}.get(part, part_record)(part, state)
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        write_json(work / f"{part}.json", {"error": f"{type(exc).__name__}: {exc}"[:1000]})
        return 1
    write_json(work / f"{part}.json", result)
    print(json.dumps(result, indent=1, default=str), flush=True)
    return 0


def device_of(state: dict):
    import torch

    return torch.device("cuda" if state["profile"]["device"] == "cuda" else "cpu")


def part_env(part: str, state: dict) -> dict:
    import platform

    import torch

    from speedrun.evidence import hardware
    from speedrun.judge import verify

    cuda = torch.cuda.is_available() and state["profile"]["device"] == "cuda"
    result = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "cuda_available": torch.cuda.is_available(), "device": "cuda" if cuda else "cpu",
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              # light modules are imported (a broken install counts as absent); triton and matplotlib only looked up
              "modules": {m: importlib.util.find_spec(m) is not None if m in ("triton", "matplotlib") else importable(m)
                          for m in OPTIONAL_MODULES},
              "nvidia_smi": shutil.which("nvidia-smi") is not None}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        result.update(device_name=props.name, device_count=torch.cuda.device_count(),
                      memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                      bf16=torch.cuda.is_bf16_supported())
    else:
        result.update(device_name=hardware.cpu_model(), device_count=1)
    result["fingerprint"] = hardware.fingerprint(use_cuda=cuda)
    key = next((k for k in verify.PEAK_FLOPS if cuda and k in result["device_name"]), None)
    result["peak_flops"] = verify.PEAK_FLOPS[key] if key else None
    result["peak_source"] = (f"speedrun.judge.verify.PEAK_FLOPS[{key!r}] (dense bf16, datasheet)" if key else
                             "no peak for this device in speedrun.judge.verify.PEAK_FLOPS: MFU is not computed")
    return result


# data ---------------------------------------------------------------------------------------------------------------


def zipf_sampler(rng, vocab: int, bos: int):
    """Inverse-CDF sampler of content tokens (every id but BOS) with Zipf weights 1/(rank + 2.7)^1.07 over a random
    permutation of the ids (so frequency is not tied to the id)."""
    import numpy as np

    ids = rng.permutation(np.array([t for t in range(vocab) if t != bos], dtype=np.uint16))
    weights = 1.0 / (np.arange(len(ids)) + 2.7) ** 1.07
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return lambda n: ids[np.searchsorted(cdf, rng.random(n), side="right").clip(0, len(ids) - 1)]


def synthetic_tokens(n: int, sample, rng, bos: int):
    """n tokens: documents of log-normal length (median ~500, mean ~800, at least 16) back to back, each opened
    by BOS, as in FineWeb's shards."""
    import numpy as np

    tokens = sample(n)
    lengths = np.maximum(16, rng.lognormal(6.2, 1.0, n // 100 + 16).astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    tokens[starts[starts < n]] = bos
    return tokens


def track_copy_text(source: str, val_tokens: int, train_shards: int, vocab: int = VOCAB, bos: int = BOS) -> str:
    """configs/tracks/gpt2-small.toml with the name, the description, the val set size, the data's repo and shard
    range changed and the sha256 pins emptied (and, for the CPU smoke only, a smaller vocabulary); every other
    line (target, rule, checks) as it is."""
    edits = {
        "vocab_size": str(vocab),
        "bos_token": str(bos),
        "name": f'"{TRACK_NAME}"',
        "description": '"gpt2-small on synthetic GPT-2-vocabulary shards, for scripts/gpu_check.py (not a track)"',
        "val_tokens": str(val_tokens),
        "repo": f'"{REPO}"',
        "train_range": f"[1, {train_shards}]",
        "sha256": "{}",
    }
    text = source
    for key, value in edits.items():
        text, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text, count=1)
        if n != 1:
            raise RuntimeError(f"configs/tracks/gpt2-small.toml has no line '{key} = ...' to change")
    return text


def part_data(part: str, state: dict) -> dict:
    import numpy as np

    from speedrun import paths, tracks
    from speedrun.data import shards, streams

    began = time.perf_counter()
    profile, scratch = state["profile"], Path(state["scratch"])
    track_path = scratch / "tracks" / f"{TRACK_NAME}.toml"
    track_path.parent.mkdir(parents=True, exist_ok=True)
    source = (ROOT / "configs" / "tracks" / "gpt2-small.toml").read_text()
    vocab, bos = profile["vocab_size"], profile["bos"]
    track_path.write_text(track_copy_text(source, profile["val_tokens"], profile["train_shards"], vocab, bos))
    track = tracks.load_track_file(track_path)
    folder = paths.track_data_dir(track, scratch / "data")
    rng = np.random.default_rng(20240520)
    sample = zipf_sampler(rng, vocab, bos)
    # the val stream reads val_tokens inputs plus the last target
    shards.write_shard(folder / track.data.val_files[0], synthetic_tokens(profile["val_tokens"] + 1, sample, rng, bos))
    for name in track.data.train_files:
        shards.write_shard(folder / name, synthetic_tokens(profile["train_shard_tokens"], sample, rng, bos))
    train, val = streams.track_files(track, scratch / "data")
    tokens = np.asarray(shards.read_shard(val[0]))[:track.val_tokens]
    counts = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {"track_file": str(track_path), "data_folder": str(folder), "train_files": len(train),
            "train_tokens": sum(shards.shard_tokens(t) for t in train), "val_tokens": int(tokens.size),
            "vocab_size": track.vocab_size, "bos_token": track.bos_token,
            "val_documents": int((tokens == bos).sum()), "val_unigram_entropy": float(-(p * np.log(p)).sum()),
            "seconds": round(time.perf_counter() - began, 2),
            "track_changes": "name, description, val_tokens, data.repo, data.train_range, data.sha256 = {}"}


# the records under the real launcher --------------------------------------------------------------------------------


class MemoryWatch:
    """Peak device memory in use (MiB) from nvidia-smi every half second (the whole device: the CUDA context and
    the caching allocator's reserve included), or None where there is no nvidia-smi."""

    def __init__(self):
        self.peak, self.samples = None, 0
        self.exe = shutil.which("nvidia-smi")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run([self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout.split()
                used = max(float(v) for v in out)
                self.peak = used if self.peak is None else max(self.peak, used)
                self.samples += 1
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self.stop.wait(0.5)

    def __enter__(self):
        if self.exe:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.exe:
            self.thread.join(timeout=15)
        return False


def part_record(part: str, state: dict) -> dict:
    import resource

    from speedrun.evidence import rundir
    from speedrun.judge import verify

    profile = state["profile"]
    script = ROOT / RECORDS[part]
    run_dir = Path(state["out"]) / "runs" / part
    if run_dir.exists():
        shutil.rmtree(run_dir)
    # the launcher's own cap, inside the part's: it stops the ranks and seals the evidence itself
    cap = float(os.environ.get("GPU_CHECK_CAP_S", "0")) - 20 or None
    cmd = [sys.executable, "-m", "speedrun.cli", "run", str(script), "--track", TRACK_NAME,
           "--nproc", str(profile["nproc"]), "--runs", "1", "--out", str(run_dir), "--no-verify"]
    cmd += ["--timeout", str(round(cap))] if cap and cap > 0 else []
    # the replica check runs after record002 (where the environment leaves it on: not in the test suite), not
    # after record003, whose second compile would not fit its cap
    cmd += ["--no-replica"] if part == "record003" else []
    cmd += ["--", *profile["record_args"][part]]
    print("$", " ".join(cmd), flush=True)
    began = time.perf_counter()
    with MemoryWatch() as memory:
        code = subprocess.run(cmd, cwd=ROOT).returncode
    wall = time.perf_counter() - began
    manifest = rundir.read_json(run_dir / rundir.MANIFEST)
    rep = (manifest.get("repetitions") or [{}])[0]
    events = rundir.read_events(rundir.events_path(run_dir, 1))
    verdict = verify.verify_run_dir(run_dir)   # writes verdict.json; one repetition is never t-tested
    finish, start, warmup = events.last("finish") or {}, events.last("start") or {}, events.last("warmup") or {}
    vals = [{"step": v["step"], "loss": v["loss"], "seconds": v["seconds"], "tokens": v["tokens"]}
            for v in events.of("val")]
    tp = verdict.get("throughput") or {}
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024   # KiB on Linux: the largest process
    result = {
        "script": RECORDS[part], "args": profile["record_args"][part], "exit_code": code,
        "status": rep.get("status"), "process_wall_s": round(wall, 2), "run_dir": f"runs/{part}",
        "device": (events.last("init") or {}).get("device"), "hardware": manifest.get("hardware"),
        "fingerprint": manifest.get("hardware_fingerprint"), "software": manifest.get("env"),
        "micro_batches": finish.get("batches"), "train_tokens": finish.get("tokens"), "timed_s": finish.get("timed_s"),
        "tokens_per_s": tp.get("tokens_per_s"), "flops_per_token": tp.get("flops_per_token"),
        "peak_flops": tp.get("peak_flops"), "mfu": tp.get("mfu"),
        "compile_s": warmup.get("seconds"), "warmup_micro_batches": warmup.get("micro_batches"),
        "compile_note": "the warm-up's wallclock: torch.compile of the training step on CUDA plus the warm-up steps "
                        "(the logits_fn's graph compiles at start(), outside it)",
        "start_check_s": round(start["t"] - warmup["t"], 3) if start.get("t") and warmup.get("t") else None,
        "start_loss": start.get("start_loss"), "no_data_level": start.get("no_data_level"),
        "validations": vals, "final_val_loss": vals[-1]["loss"] if vals else None,
        "val_s": vals[-1]["seconds"] if vals else None, "val_tokens": vals[-1]["tokens"] if vals else None,
        "peak_memory_mib": memory.peak if memory.peak is not None else round(child, 1),
        "memory_source": ("nvidia-smi memory.used, whole device, sampled every 0.5 s" if memory.peak is not None
                          else "max RSS of the largest process under the launcher (getrusage, host memory)"),
        "problems": verdict.get("problems"), "warnings": verdict.get("warnings"),
        # the replica check on this device: does a CUDA model repeat its scored losses in a second process
        # (rms and largest |d|; 0 means bit for bit), and what its launch costs
        "replica": verdict.get("replica"),
    }
    if code != 0 or rep.get("status") != "ok":
        result["error"] = f"speedrun run exit {code}, repetition {rep.get('status')}: {rep.get('error')}"
    elif not vals or not finish:
        result["error"] = "the evidence has no validation or no finish event"
    return result


# the referee's overhead (scripts/bench_overhead.py) -------------------------------------------------------------------


OVERHEAD_LINES = {
    "step_referee_ms": r"step time with referee\s*:\s*([\d.]+) ms",
    "step_bare_ms": r"step time without referee\s*:\s*([\d.]+) ms",
    "step_ratio": r"ratio referee / bare\s*:\s*([\d.]+)",
    "val_plain_s": r"plain validation\s*:\s*([\d.]+) s",
    "val_referee_s": r"referee validation\s*:\s*([\d.]+) s",
    "val_ratio": r"referee validation.*ratio ([\d.]+)",
    "val_outside_forward_plain_s": r"outside the forward\s*:\s*([\d.]+) s plain",
    "val_outside_forward_referee_s": r"outside the forward\s*:.*?([\d.]+) s refereed",
    "startup_init_s": r"launch to init\(\) ([\d.]+) s",
    "startup_start_s": r"to start\(\) ([\d.]+) s",
}


def part_overhead(part: str, state: dict) -> dict:
    args = state["profile"]["overhead_args"]
    cmd = [sys.executable, str(SCRIPTS / "bench_overhead.py"), "--track", TRACK_NAME, *args]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:   # into the part's log as it comes: a part stopped at its cap keeps what it printed
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    proc.wait()
    output = "".join(lines)
    result = {"command": "scripts/bench_overhead.py " + " ".join(args), "exit_code": proc.returncode,
              "model": "bench_overhead's TinyGPT (dim 128, 4 layers) at the track copy's vocabulary, fp32"}
    for key, pattern in OVERHEAD_LINES.items():
        found = re.search(pattern, output)
        result[key] = float(found.group(1)) if found else None
    missing = [k for k, v in result.items() if v is None]
    if proc.returncode != 0 or missing:
        result["error"] = f"bench_overhead exit {proc.returncode}; missing {', '.join(missing) or 'nothing'}"
    return result


# the optimizers (scripts/bench_optim.py) ----------------------------------------------------------------------------


def part_optim(part: str, state: dict) -> dict:
    import torch

    sys.path.insert(0, str(SCRIPTS))
    import bench_optim

    cfg, device = state["profile"]["optim"], device_of(state)
    if cfg["small"]:   # micro size: narrower matrices (bf16 matmuls on a CPU without avx512_bf16 crawl)
        bench_optim.DIM, bench_optim.HIDDEN, bench_optim.VOCAB = 64, 256, 2048
    layers, repeats = cfg["layers"], cfg["repeats"]
    result = {"device": str(device), "layers": layers, "dim": bench_optim.DIM, "hidden": bench_optim.HIDDEN,
              "repeats": repeats, "torch_threads": torch.get_num_threads()}
    result["single"] = bench_optim.bench_single(device, layers, repeats)
    result["torch_muon"] = bench_optim.bench_torch_muon(device, layers, repeats)
    result["adamw"] = bench_optim.bench_adamw(device, layers, repeats)
    result["process_group"] = muon_process_group(bench_optim, device, layers, repeats, Path(state["work"]))
    return result


def muon_process_group(bench_optim, device, layers: int, repeats: int, work: Path) -> dict:
    """speedrun.optim.Muon with torch.distributed initialised as one rank (nccl on CUDA, gloo on a CPU) against
    the same steps before the group existed: same weights after the same steps, and the time ratio. One rank
    orthogonalises every matrix itself (the sharded all-gather needs two devices)."""
    import torch
    import torch.distributed as dist

    from speedrun.optim import Muon

    shapes = bench_optim.gpt2_hidden_shapes(layers)
    weights, grads = bench_optim.make_matrices(shapes, device, seed=3)
    alone_params, group_params = bench_optim.with_grads(weights, grads), bench_optim.with_grads(weights, grads)
    alone = Muon(alone_params, lr=0.02)
    alone_times = [bench_optim.timed(alone.step, device) for _ in range(1 + repeats)][1:]
    backend = "nccl" if device.type == "cuda" else "gloo"
    store_path = work / "muon-store"
    store_path.unlink(missing_ok=True)
    store = dist.FileStore(str(store_path), 1)
    bound = {"device_id": torch.device("cuda", torch.cuda.current_device())} if device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=0, world_size=1, **bound)
    try:
        grouped = Muon(group_params, lr=0.02)
        group_times = [bench_optim.timed(grouped.step, device) for _ in range(1 + repeats)][1:]
        probe = torch.arange(4.0, device=device)
        gathered = torch.empty(4, device=device)
        dist.all_gather_into_tensor(gathered, probe)
        bench_optim.sync(device)
        rank, world = dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()
    diff = max((a - b).abs().max().item() for a, b in zip(alone_params, group_params))
    a, g = sorted(alone_times)[len(alone_times) // 2], sorted(group_times)[len(group_times) // 2]
    print(f"[pg] Muon under a 1-rank {backend} group {g * 1e3:.1f} ms/step, without a group {a * 1e3:.1f} ms/step; "
          f"weights apart by {diff:.2e} after {1 + repeats} steps")
    return {"backend": backend, "world": world, "rank": rank, "group_s": g, "alone_s": a, "ratio": g / a,
            "max_abs_diff": diff, "all_gather_ok": bool(torch.equal(gathered.cpu(), probe.cpu())),
            "sharded_gather_exercised": world > 1}


# the loader's host-to-device path (scripts/bench_loader.py) -------------------------------------------------------


def part_loader(part: str, state: dict) -> dict:
    import numpy as np

    sys.path.insert(0, str(SCRIPTS))
    import bench_loader

    cfg, device = state["profile"]["loader"], device_of(state)
    bench_loader.ROWS, bench_loader.SEQ_LEN = cfg["rows"], cfg["seq_len"]
    folder = Path(state["scratch"]) / "loader"
    folder.mkdir(parents=True, exist_ok=True)
    path = bench_loader.synthetic_shard(folder / "bench_train_000001.bin", cfg["shard_tokens"],
                                        np.random.default_rng(0))
    need = bench_loader.RECORD_TOKENS / bench_loader.RECORD_SECONDS / bench_loader.RECORD_GPUS
    modes = []
    for label, options, layout in bench_loader.MODES:
        rate, steps = bench_loader.bench([path], str(device), layout, **options)
        modes.append({"mode": label, "tokens_per_s": rate, "steps": steps, "times_record_need": rate / need})
        print(f"{label:>22}: {rate / 1e6:8.2f}M tokens/s over {steps} steps = {rate / need:6.1f}x the need", flush=True)
    return {"device": str(device), "world": bench_loader.WORLD, "rows": cfg["rows"], "seq_len": cfg["seq_len"],
            "shard_tokens": cfg["shard_tokens"], "record_need_tokens_per_s": need, "modes": modes}


if __name__ == "__main__":
    sys.exit(main())
