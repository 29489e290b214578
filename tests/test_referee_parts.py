"""The referee's parts without processes: the launcher-side judge fed message by message, the channel over a
real socket, pins, hardware fingerprints, the loss and probe measurement, the source scan."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speedrun.referee import agent, channel
from speedrun.referee import evaluation
from speedrun.evidence import rundir
from speedrun.evidence import hardware
from speedrun.evidence import pins
from speedrun.referee import repetition
from speedrun import tracks
from speedrun.judge import stats, verify
from speedrun.errors import SpeedrunError

TRACK = """\
name = "unit"
metric = "wallclock"
target_val_loss = 5.0
val_tokens = 4096
vocab_size = 64
bos_token = 63
hardware = "test"
[rule]
test = "ttest"
[checks]
fixed_seq_len = 0
max_seq_len = 256
[data]
source = "hub"
repo = "x/unit"
val_files = ["v.bin"]
train_pattern = "t_{:06d}.bin"
train_range = [1, 1]
"""
LOADER = {"batch_tokens": 1024, "seq_len": 128, "accum_steps": 2, "layout": "rows", "align_to_bos": False,
          "max_doc_len": None}
VAL = {"batch_tokens": 1024, "seq_len": 128, "layout": "rows"}


def unit_data(folder: Path) -> dict:
    """Shards for the unit track (train 64k tokens, val: 4096 scored + 4096 monitor + spare) and its welcome."""
    from speedrun.data import streams

    rng = np.random.default_rng(3)
    streams.write_shard(folder / "t_000001.bin", rng.integers(0, 64, 65536))
    streams.write_shard(folder / "v.bin", rng.integers(0, 64, 2 * 4096 + 100))
    return {"track_toml": TRACK, "track_path": "unit.toml", "train_files": [str(folder / "t_000001.bin")],
            "val_files": [str(folder / "v.bin")], "no_data_level": 4.0, "run_dir": ""}


def uniform(inputs):
    """Logits of a model that knows nothing (loss ln 64 = 4.159 on every token)."""
    return torch.zeros(*inputs.shape, 64)


def peeking(inputs):
    """Sees the next token: position t gets a bonus on inputs[t + 1] (not causal)."""
    return torch.zeros(*inputs.shape, 64).scatter_(-1, torch.roll(inputs, -1, dims=-1)[..., None], 8.0)


class Judge:
    """A Referee and its rank agents for 2 ranks, fed by hand as the ranks' bootstraps would:
    `say(rank, kind, t, **fields)` sends one line and returns the answer to it (requests) or None."""

    def __init__(self, tmp_path: Path, world: int = 2, seed: int = 5, track: str = TRACK):
        from speedrun.referee.shared import SharedBuffer

        self.welcome = dict(unit_data(tmp_path), track_toml=track)
        self.track = tracks.parse_track(track, "unit.toml")
        self.log = rundir.EventWriter(tmp_path / "run-1.jsonl")
        self.ref = repetition.Referee(self.track, 1, seed, world, self.log, 0.0, self.welcome)
        self.path = tmp_path / "run-1.jsonl"
        self.buffers: dict = {}
        self.mapped = SharedBuffer
        self.later: dict = {}  # answers that came for another request (a validation's loss, sent to every rank)
        for r in range(world):
            ((to, reply),) = self.ref.handle(r, {"m": "hello", "rank": r, "world_size": world, "local_rank": r,
                                                 "pid": 1, "api": 2, "harness": ""}, 0.0, None)
            assert to == r and reply["seed"] == seed
        answers = [self.ref.handle(r, {"m": "preloaded"}, 0.05, None) for r in range(world)]
        assert answers[:-1] == [[]] * (world - 1) and answers[-1] == [(r, {"go": True}) for r in range(world)]

    def say(self, rank: int, kind: str, t: float, **fields):
        answer = None
        for to, reply in self.ref.handle(rank, {"m": kind, **fields}, t, None):
            if to == rank and answer is None:
                answer = reply
            else:
                self.later[to] = reply
        return answer

    def everyone(self, kind: str, t: float, **fields) -> list:
        return [self.say(r, kind, t, **fields) for r in sorted(self.ref.ranks)]

    def buffer(self, path: str):
        if path not in self.buffers:
            self.buffers[path] = self.mapped(path)
        return self.buffers[path]

    def batch(self, answer: dict):
        """The (inputs, targets) a `next` answer handed out, read from shared memory as a rank would."""
        host = self.buffer(answer["buf"]).tensor(torch.int64, (2, answer["k"], answer["T"]), answer["offset"])
        return host[0].clone(), host[1].clone()

    def inputs(self, answer: dict):
        return self.buffer(answer["buf"]).tensor(torch.int64, tuple(answer["shape"]), answer["offset"]).clone()

    def logits(self, rank: int, t: float, logits) -> dict:
        nbytes = logits.numel() * logits.element_size()
        got = self.say(rank, "val_buffer", t, nbytes=nbytes)
        self.buffer(got["buf"]).tensor(logits.dtype, tuple(logits.shape)).copy_(logits)
        return {"buf": got["buf"], "shape": list(logits.shape), "dtype": str(logits.dtype)}

    def start(self, rank: int, t: float, fn=uniform, inductor=()) -> dict:
        a = self.say(rank, "start_check", t - 0.01, **VAL)
        meta = self.logits(rank, t - 0.01, fn(self.inputs(a)))
        return self.say(rank, "start", t, inductor=list(inductor), logits=meta, detail="ok")

    def honest_until_start(self, seed: int = 5) -> None:
        self.everyone("script", 0.1)
        self.everyone("init", 0.2, api_version=2, device="cpu", device_name="cpu", seed=seed, world_size=2)
        assert self.everyone("loader", 0.3, **LOADER) == [{"ok": True}] * 2
        self.everyone("warmup_begin", 0.4)
        self.everyone("batch", 0.5)
        self.everyone("warmup_end", 0.6, seconds=0.1, digest_before="a", digest_after="a", restored=True)

    def started(self, steps: int, t: float = 2.0) -> None:
        """Both ranks honest up to start() at t = 1.0, then `steps` training steps' batches taken at `t`."""
        self.honest_until_start()
        self.start(0, 1.0)
        self.start(1, 1.0)
        self.steps(steps, t)

    def steps(self, n: int, t: float) -> list:
        return [self.everyone("next", t) for _ in range(n * LOADER["accum_steps"])]

    def validate(self, begin: dict, end: dict, step: int, fn=uniform, shape=VAL) -> dict:
        """Every rank validates (`fn` gives the logits), the first batch asked for at begin[rank] and the last
        logits handed back at end[rank]. Returns rank -> the final answer (the loss)."""
        done = {}
        for r in sorted(begin):
            assert self.say(r, "val_begin", begin[r], step=step, **shape)["ok"]
            a = self.say(r, "val_next", begin[r], logits=None, error=None)
            while a is not None and not a.get("done"):
                meta = self.logits(r, begin[r], fn(self.inputs(a)))
                a = self.say(r, "val_next", end[r], logits=meta, error=None)
            done[r] = a
        return {r: a or self.later.pop(r, None) for r, a in done.items()}

    def finish(self, t: float, fn=uniform) -> dict:
        answers = self.everyone("finish", t, inductor=[])
        scoring = [r for r, a in zip(sorted(self.ref.ranks), answers) if a.get("score")]
        if scoring:
            shape = {k: answers[scoring[0]][k] for k in ("batch_tokens", "seq_len", "layout")}
            return self.validate({r: t for r in scoring}, {r: t + 1 for r in scoring}, None, fn, shape)
        return {}

    def close(self, code: int = 0) -> dict:
        return self.ref.close(code)

    def events(self) -> rundir.Events:
        return rundir.read_events(self.path)


def test_an_honest_repetition_is_timed_by_the_launcher_clock(tmp_path):
    j = Judge(tmp_path)
    j.honest_until_start()
    assert j.start(0, 1.0) == {"ok": True} and j.start(1, 1.2) == {"ok": True}
    j.steps(3, 2.0)
    # rank 0 validates from 5.0 to 7.0, rank 1 from 5.5 to 6.5: the clock pauses only while both do
    losses = j.validate({0: 5.0, 1: 5.5}, {0: 7.0, 1: 6.5}, step=3)
    assert losses[0]["loss"] == losses[1]["loss"] == pytest.approx(np.log(64))
    j.say(0, "log", 7.1, step=3, scalars={"train_loss": 4.0})
    final = j.finish(8.0)  # the monitor split was measured: finish() asks for the scored validation
    assert final[0]["split"] == final[1]["split"] == "scored"
    summary = j.close()
    assert summary["problems"] == [] and summary["status"] == "ok" and summary["steps"] == 3
    assert summary["timed_s"] == pytest.approx(8.0 - 1.0 - 1.0)
    events = j.events()
    assert events.seal_ok
    monitor, scored = events.of("val")
    assert monitor["split"] == "monitor" and scored["split"] == "scored"
    assert monitor["timed_s"] == pytest.approx(5.5 - 1.0) and monitor["seconds"] == pytest.approx(1.0)
    assert monitor["untimed_s"] == pytest.approx(1.0) and monitor["charged_s"] == 0
    assert monitor["loss"] == pytest.approx(np.log(64)) and monitor["tokens"] == 4096 and monitor["batches"] == 3
    assert scored["tokens"] == 4096 and scored["timed_s"] == pytest.approx(6.0)
    assert all(r["probe"]["passed"] for v in (monitor, scored) for r in v["ranks"])
    assert events.last("start")["start_loss"] == pytest.approx(np.log(64))
    assert events.last("log")["scalars"] == {"train_loss": 4.0}
    assert events.last("finish")["tokens"] == 3 * 1024


@pytest.mark.parametrize("case, expected", [
    ("batch_before_start", "rank 1 asked for a training batch before start\\(\\) outside warmup"),
    ("batch_in_validation", "rank 0 asked for a training batch during a validation \\(refused\\)"),
    ("batch_after_finish", "rank 1 asked for a training batch after finish\\(\\) \\(refused\\)"),
    ("reported_batch", "rank 0 reported a training batch the referee did not serve"),
    ("seed", "rank 1 runs with seed 9, but the launcher chose seed 5"),
    ("forged_val_end", "rank 1 sent a garbled message on the referee channel \\(unknown message kind 'val_end'\\)"),
    ("probe", "rank 0: causality probe failed at validation step 3: outputs before the cut moved by"),
    ("canary", "rank 1: causality probe failed at validation step 3: loss .* on \\d+ tokens drawn at random"),
    ("blind", "blind probe failed at validation step \\S+: the model's loss where it could not see the next "
              "token is .* above its loss on the canonical rows at the same positions \\(\\d+ positions"),
    ("start_below", "untimed training: at start\\(\\) the model's val loss .* below the no-data level"),
    ("inductor", "torch._inductor.config differs from its defaults at start\\(\\) \\(coordinate_descent_tuning\\)"),
    ("trained_after_val", "rank 0 trained after its last validation"),
    ("open", "rank 1 opened the val file v.bin itself"),
    ("loader_rank", "ranks disagree on the train loader's shapes"),
])
def test_each_rule_break_is_a_problem_naming_it(tmp_path, case, expected):
    j = Judge(tmp_path)
    j.everyone("script", 0.1)
    for r in (0, 1):
        j.say(r, "init", 0.2, api_version=2, device="cpu", device_name="cpu",
              seed=9 if case == "seed" and r == 1 else 5, world_size=2)
    j.say(0, "loader", 0.3, **LOADER)
    j.say(1, "loader", 0.3, **(dict(LOADER, accum_steps=1) if case == "loader_rank" else LOADER))
    if case == "batch_before_start":
        assert "error" in j.say(1, "next", 0.4)
    if case == "open":
        j.say(1, "open", 0.4, path="/data/v.bin", what="val")
    j.start(0, 1.0, fn=peeking if case == "start_below" else uniform,
            inductor=["coordinate_descent_tuning"] if case == "inductor" else [])
    j.start(1, 1.0)
    j.steps(3, 2.0)
    if case == "reported_batch":
        j.say(0, "batch", 4.0)
    if case == "batch_in_validation":
        assert j.say(0, "val_begin", 5.0, step=3, **VAL)["ok"]
        j.say(0, "val_next", 5.0, logits=None, error=None)
        assert "error" in j.say(0, "next", 5.1)
        j.say(0, "val_next", 5.2, logits=None, error="given up")
    else:
        calls = [0]
        shape = dict(VAL, seq_len=16) if case == "blind" else VAL  # 256 scored rows: blind positions enough

        def fn(inputs):
            calls[0] += 1
            if case == "probe" and calls[0] > 2:  # rank 0's model changes during the validation
                return uniform(inputs) + 0.3 * calls[0] * torch.nn.functional.one_hot(inputs, 64)
            return peeking(inputs) if case == "canary" else uniform(inputs)

        for r in (0, 1):
            assert j.say(r, "val_begin", 5.0, step=3, **shape)["ok"]
            a = j.say(r, "val_next", 5.0, logits=None, error=None)
            while a is not None and not a.get("done"):
                use = fn if (case == "probe" and r == 0) or (case == "canary" and r == 1) else uniform
                a = j.say(r, "val_next", 6.0, logits=j.logits(r, 5.5, use(j.inputs(a))), error=None)
    if case == "forged_val_end":
        j.say(1, "val_end", 6.0, step=3, loss_sum=0.1, tokens=2048, batch_tokens=1024, seq_len=128,
              layout="rows", probe={}, error=None)
    if case == "trained_after_val":
        j.say(0, "next", 6.5)
    # the scored validation after finish(): a peeker that remembers every row it was shown (both ranks pooling)
    j.finish(7.0, fn=Remembers(8.0, uniform) if case == "blind" else uniform)
    if case == "batch_after_finish":
        assert "error" in j.say(1, "next", 9.5)
    problems = j.close()["problems"]
    assert any(__import__("re").search(expected, p) for p in problems), problems
    assert [e["message"] for e in j.events().of("problem")] == problems


def test_missing_ranks_garbled_messages_and_impostors(tmp_path):
    j = Judge(tmp_path, world=2)
    j.ref.handle(7, None, 0.1, "not JSON: b'\\x00garbage'")
    j.ref.handle(0, {"m": "init", "api_version": 2, "device": "cpu", "device_name": "x", "seed": "five",
                     "world_size": 2}, 0.2, None)
    ((_, reply),) = j.ref.handle(9, {"m": "hello", "rank": 0, "world_size": 2, "local_rank": 0, "pid": 2, "api": 2,
                                     "harness": ""},
                                 0.3, None)
    assert "error" in reply
    j.ref.handle(1, None, 0.4, "closed")  # rank 1's process ended before init
    problems = j.close(1)["problems"]
    assert any("garbled message" in p and "not JSON" in p for p in problems)
    assert any("rank 0 sent a garbled message" in p and "'seed' has type str" in p for p in problems)
    assert any("a second connection claims rank 0" in p for p in problems)
    assert any("rank 1 never called speedrun.init()" in p for p in problems)


def test_channel_stamps_lines_on_arrival_and_survives_bad_input(tmp_path):
    got = []

    def handler(cid, msg, t, error):
        got.append((cid, msg, error, t))
        if msg and msg.get("m") == "hello":
            server.reply(cid, {"seed": 3})

    server = channel.Server(handler)
    try:
        client = channel.Client(server.path)
        before = time.monotonic()
        assert client.request("hello", rank=0)["seed"] == 3
        client.send("batch")
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(server.path)
        raw.sendall(b"{not json}\n" + b"x" * (channel.MAX_LINE + 10))
        raw.close()
        client.close()
        deadline = time.monotonic() + 5
        while sum(1 for g in got if g[2] == "closed") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.close()
    kinds = [(g[1] or {}).get("m") or g[2] for g in got]
    assert kinds[:2] == ["hello", "batch"] and all(g[3] >= before for g in got)
    errors = [g[2] for g in got if g[2] and g[2] != "closed"]
    assert any(e.startswith("not JSON") for e in errors) and any("longer than" in e for e in errors)
    assert not os.path.exists(server.path)


def test_pins_notice_any_change_and_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shard = tmp_path / "t_000001.bin"
    shard.write_bytes(b"\x00" * 4096)
    track = tracks.parse_track(TRACK, "unit.toml")
    object.__setattr__(track, "path", tmp_path / "unit.toml")
    (tmp_path / "unit.toml").write_text(TRACK)
    pinned = pins.pin_run(track, [shard])
    assert set(pinned) == {"harness", "track", "data"} and "speedrun/referee/repetition.py" in pinned["harness"]
    assert pins.changed(pinned) == []
    hasher = pins.Hasher()
    assert hasher.sha256(shard) == pinned["data"]["t_000001.bin"]["sha256"]
    stat = os.stat(shard)
    shard.write_bytes(b"\x01" + b"\x00" * 4095)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert pins.changed(pinned) == ["data file t_000001.bin changed during the run"]
    changed = dict(pinned["harness"], **{"speedrun/spec.py": "0" * 64})
    assert pins.diff_harness(changed) == ["harness file speedrun/spec.py differs from the installed harness"]


def test_hardware_fingerprints_differ_by_named_fields():
    here = hardware.fingerprint(use_cuda=False)
    assert here["cpu_count"] >= 1 and hardware.differences(here, dict(here)) == []
    other = dict(here, isa=sorted(set(here["isa"]) ^ {"avx512_bf16"}), cpu_count=here["cpu_count"] + 6)
    diff = hardware.differences(here, other)
    assert any("avx512_bf16" in d for d in diff) and any(d.startswith("cpu_count") for d in diff)
    gpu = {"kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 8, "gpu_memory_gib": 80,
           "driver": "550.54", "interconnect": "nvlink"}
    assert hardware.differences(gpu, dict(gpu, interconnect="pcie")) == ["interconnect 'nvlink' vs 'pcie'"]
    assert hardware.label(gpu, 8) == "8xNVIDIA H100 80GB HBM3"
    assert hardware.differences(None, gpu)


def test_gpu_fingerprint_comes_from_nvidia_smi_without_a_cuda_context(monkeypatch):
    smi = ("0, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n1, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n"
           "2, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n")
    monkeypatch.setattr(hardware, "_nvidia_smi", lambda *a: smi if a[0].startswith("--query-gpu") else "GPU0 X NV18")
    monkeypatch.setattr("torch.cuda.get_device_properties", lambda *a: pytest.fail("CUDA context created"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fp = hardware.fingerprint(use_cuda=True)
    assert (fp["gpu_name"], fp["gpu_count"], fp["gpu_memory_gib"], fp["driver"], fp["interconnect"]) == \
        ("NVIDIA H100 80GB HBM3", 3, 80, "550.54.15", "nvlink")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    fp = hardware.fingerprint(use_cuda=True)
    assert fp["gpu_count"] == 1 and fp["interconnect"] == "single"


def test_a_socket_path_too_long_is_a_one_line_error(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(SpeedrunError, match="set TMPDIR to a shorter directory"):
        channel.Server(lambda *a: None)
    assert list(deep.iterdir()) == []  # nothing left behind


def test_chunked_cross_entropy_matches_torch_in_bf16_with_fp32_accumulation(monkeypatch):
    monkeypatch.setattr(evaluation, "CHUNK_BYTES", 4 * 70 * 7)  # 7 rows per chunk: many uneven chunks
    torch.manual_seed(0)
    logits = (3 * torch.randn(5, 11, 70)).to(torch.bfloat16)
    targets = torch.randint(0, 64, (5, 11))
    nll = evaluation.token_nll(logits, targets, 64)
    wide = logits.double()  # the definition, in float64: logsumexp over every column minus the target's logit
    ref = (torch.logsumexp(wide, -1) - wide.gather(-1, targets[..., None]).squeeze(-1)).float()
    assert nll.dtype == torch.float32 and torch.allclose(nll, ref, atol=1e-5)
    with pytest.raises(Exception, match="V >= 80"):
        evaluation.token_nll(logits, targets, 80)


class Toy(torch.nn.Module):
    """A bigram model; `peek` lets position t see token t+1 (not causal)."""

    def __init__(self, peek: bool = False):
        super().__init__()
        torch.manual_seed(1)
        self.table = torch.nn.Parameter(torch.randn(64, 64))
        self.peek = peek

    def forward(self, x):
        logits = self.table[x]
        if self.peek:  # a bonus for the token that comes next
            logits = logits.scatter_add(-1, torch.roll(x, -1, dims=-1)[..., None], torch.full_like(x[..., None], 3.0,
                                                                                               dtype=logits.dtype))
        return logits


def _measure(model, tokens: np.ndarray, rows: int = 4, seq_len: int = 32, batches: int = 3, extra: int = 1,
             canaries: bool = True, flat: bool = False, surprisal=None):
    def val_piece(i):
        return tokens[i * seq_len:(i + 1) * seq_len + 1]

    def make(pieces_):
        inputs = torch.from_numpy(np.stack([p[:-1] for p in pieces_]).astype(np.int64))
        targets = torch.from_numpy(np.stack([p[1:] for p in pieces_]).astype(np.int64))
        if flat:  # one sequence per piece (the test's model looks at one token, or the next, only)
            cu = torch.arange(0, inputs.numel() + 1, seq_len, dtype=torch.int32)
            return evaluation.Batch(inputs.reshape(-1), targets.reshape(-1), cu)
        return evaluation.Batch(inputs, targets)

    fn = model if not flat else (lambda inputs, cu_seqlens: model(inputs))
    return evaluation.measure(fn, batches, rows, seq_len, flat, lambda b, i: b * rows + i, val_piece, make,
                              64, unigram=np.full(64, 1 / 64) if canaries else None, extra=extra,
                              surprisal=surprisal)


def test_probes_catch_peeking_and_models_that_change_during_validation():
    tokens = np.random.default_rng(0).integers(0, 64, 4096).astype(np.uint16)
    honest = _measure(Toy(), tokens)
    assert honest.tokens == 3 * 4 * 32 and honest.probe["rows"] == 4
    assert honest.probe["nll_diff"] == 0.0 and honest.probe["dist_diff"] == 0.0
    peeking = _measure(Toy(peek=True), tokens)
    assert max(peeking.probe["nll_diff"], peeking.probe["dist_diff"]) > 0.05
    # canaries: on tokens drawn from the unigram no model beats its entropy (ln 64 here); a peeker does
    canary = [(m.probe["canary_nll_sum"] / m.probe["canary_tokens"]) for m in (honest, peeking)
              if m.probe["canary_tokens"]]
    assert honest.probe["canary_tokens"] > 0 and canary[0] > np.log(64) - 0.3
    assert canary[1] < canary[0] - 0.1

    drifting = Toy()

    def trains_while_measured(x):
        with torch.no_grad():
            drifting.table.add_(0.01 * torch.randn_like(drifting.table))
        return drifting(x)
    moved = _measure(trains_while_measured, tokens)
    assert max(moved.probe["nll_diff"], moved.probe["dist_diff"]) > 1e-3


class Remembers:
    """A peeker that keeps every answer it gives by prefix and repeats it for any row sharing that prefix: a
    copy and its original always get the same outputs before the cut, whichever comes first, so the pairs
    pass. It boosts the next token it sees, except at the last position of a row (nothing to see there)."""

    def __init__(self, bonus: float = 3.0, model=None):
        self.model, self.kept, self.bonus = model or Toy(), {}, bonus

    def __call__(self, x):
        out = self.model(x).detach().clone().float()
        for b in range(x.shape[0]):
            row = x[b].tolist()
            for t in range(len(row)):
                key = tuple(row[:t + 1])  # the prefix: answered as it was the first time it was seen
                if key not in self.kept:
                    z = out[b, t].clone()
                    if t + 1 < len(row):
                        z[row[t + 1]] += self.bonus
                    self.kept[key] = z
                out[b, t] = self.kept[key]
        return out


def _gap(m) -> tuple[float, float]:
    """(mean blind gap, its standard error) of a measurement."""
    p = m.probe
    n = p["blind_rows"]
    mean = p["blind_gap_sum"] / n
    return mean, np.sqrt(max(0.0, p["blind_gap_sq"] / n - mean ** 2) / n)


def test_blind_positions_catch_a_peeker_that_keeps_its_pairs_consistent():
    """The copies come before their originals, so at each cut the original's next token is unseen: a causal
    model's loss there is its canonical loss (mean gap within noise); a model reading its targets scores the
    canonical rows better than it can blind, however it keeps copy and original alike."""
    tokens = np.random.default_rng(0).integers(0, 64, 16 * 8 * 32 + 64).astype(np.uint16)
    honest = _measure(Toy(), tokens, rows=8, batches=16, extra=8, canaries=False)
    # every copy is blind at its cut but a whole-row copy whose next piece was shown already
    assert honest.probe["rows"] == 64 and honest.probe["blind_rows"] >= 56
    mean, se = _gap(honest)
    assert abs(mean) < 4 * se + 1e-9
    peeker = _measure(Remembers(), tokens, rows=8, batches=16, extra=8, canaries=False)
    assert peeker.probe["nll_diff"] == 0.0 and peeker.probe["dist_diff"] == 0.0  # the pairs see nothing
    assert peeker.loss_sum < honest.loss_sum - 0.5 * honest.tokens                # it gains a lot
    mean, se = _gap(peeker)
    assert peeker.probe["blind_rows"] >= 56 and mean > 1.0 and mean > 8 * se
    # the flat layout: the same positions, read from [n, V] logits
    honest = _measure(Toy(), tokens, rows=8, batches=16, extra=8, canaries=False, flat=True)
    mean, se = _gap(honest)
    assert honest.probe["blind_rows"] >= 56 and abs(mean) < 4 * se + 1e-9
    mean, se = _gap(_measure(Toy(peek=True), tokens, rows=8, batches=16, extra=8, canaries=False, flat=True))
    assert mean > 1.0 and mean > 8 * se
    # every row copied twice (the later copy cut later, each blind at its cut): twice the positions. The extra
    # batches before the first canonical one have no shown row to splice from, and draw the rest of a row
    # copied again later from the unigram (a donor's tail would show it): all but a few whole-row copies count
    honest = _measure(Toy(), tokens, rows=8, batches=16, extra=32)
    mean, se = _gap(honest)
    assert honest.probe["rows"] == 256 and honest.probe["blind_rows"] >= 240 and abs(mean) < 4 * se + 1e-9
    assert honest.probe["nll_diff"] == 0.0 and honest.probe["dist_diff"] == 0.0
    peeker = _measure(Remembers(), tokens, rows=8, batches=16, extra=32)
    mean, se = _gap(peeker)
    assert peeker.probe["blind_rows"] >= 240 and mean > 1.0 and mean > 8 * se


def test_the_surprisal_covariates_take_the_spread_out_of_a_real_measurement():
    """Text from a Markov chain and a model that knows the chain: its loss at each blind position is the bigram
    surprisal there, so the covariates leave little spread; the peeker is refused all the same."""
    from speedrun.referee.surprisal import Surprisal

    rng = np.random.default_rng(4)
    chain = torch.softmax(torch.from_numpy(rng.normal(0.0, 2.0, (64, 64))), -1).numpy()

    def walk(n):
        out = [0]
        for u in rng.random(n - 1):
            out.append(min(63, int(np.searchsorted(np.cumsum(chain[out[-1]]), u))))
        return np.array(out, dtype=np.uint16)

    tokens, train = walk(24 * 8 * 32 + 64), walk(100_000)
    surprisal = Surprisal(train, 64).centre(tokens[:24 * 8 * 32 + 1])
    knows = Toy()
    with torch.no_grad():
        knows.table.copy_(torch.from_numpy(np.log(chain)))
    probes = [_measure(m, tokens, rows=8, batches=24, extra=12, canaries=False, surprisal=surprisal).probe
              for m in (knows, Remembers(model=knows))]
    for p in probes:
        p["tolerance"] = 1e-3
    honest, peeker = (stats.blind_gap([p]) for p in probes)
    assert honest.positions >= 84 and honest.sd < 0.3 * honest.raw_sd and not honest.reads
    assert peeker.reads and probes[1]["blind_y_sq"] > 0


def test_the_blind_gap_is_pooled_over_ranks_and_adjusted_by_its_covariate(tmp_path):
    """The launcher's arithmetic: the gaps' mean less beta x the covariate's mean, beta their regression, the bar
    4 residual standard errors; a shift of the gaps (canonical rows scored lower than the model can do blind)
    clears it while the same spread without it does not."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.5, 4000)
    g = 0.8 * x + rng.normal(0.0, 1.0, 4000)  # gaps the covariate explains in part, mean zero

    j = Judge(tmp_path)
    honest = _blind_probes(g, x, 2)
    j.ref._judge_blind(9, honest)
    beta = np.polyfit(x, g, 1)[0]
    assert honest[1]["blind_gap"] == pytest.approx(g.mean() - beta * x.mean())
    assert honest[1]["blind_sd"] == pytest.approx(np.std(g - beta * x))
    assert honest[1]["blind_bar"] == pytest.approx(4 * np.std(g - beta * x) / np.sqrt(4000))
    assert honest[1]["blind_bar"] < 0.7 * 4 * g.std() / np.sqrt(4000)  # the covariate took the spread out
    assert all(p["passed"] for p in honest) and not j.ref.problems
    peeked = _blind_probes(g + 0.15, x, 2)  # the canonical rows scored 0.15 nats better than the model can blind
    j.ref._judge_blind(9, peeked)
    assert not any(p["passed"] for p in peeked)
    assert "blind probe failed at validation step 9" in j.ref.problems[-1]


def _blind_probes(g, x, parts: int, y=None) -> list[dict]:
    """Probes as the referee leaves them (checked: a tolerance) holding the blind sums of gaps g, covariates x
    and (when given) y."""
    cov = np.stack([x, y], 1) if y is not None else x[:, None]
    return [dict(stats.blind_sums(g[h], cov[h]), tolerance=1e-3, passed=True)
            for h in np.array_split(np.arange(len(g)), parts)]


def test_the_blind_gap_regresses_on_both_covariates():
    """Two covariates (unigram and bigram surprisal) regressed together, as least squares would; evidence
    without the second (written before it) regresses on the first alone."""
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, 5000)
    y = 0.6 * x + rng.normal(0.0, 0.8, 5000)  # correlated with x, as the two surprisals are
    g = 0.3 * x + 0.7 * y + rng.normal(0.0, 0.6, 5000)
    both = stats.blind_gap(_blind_probes(g, x, 3, y))
    design = np.stack([np.ones_like(x), x, y], 1)
    coef, *_ = np.linalg.lstsq(design, g, rcond=None)
    resid = g - design @ coef
    assert both.gap == pytest.approx(g.mean() - coef[1] * x.mean() - coef[2] * y.mean())
    assert both.sd == pytest.approx(resid.std()) and both.raw_sd == pytest.approx(g.std())
    one = stats.blind_gap(_blind_probes(g, x, 3))
    beta = np.polyfit(x, g, 1)[0]
    assert one.gap == pytest.approx(g.mean() - beta * x.mean()) and one.sd == pytest.approx(np.std(g - beta * x))
    assert both.sd < 0.8 * one.sd  # the bigram explains what the unigram does not
    assert stats.blind_gap(_blind_probes(g[:60], x[:60], 1)) is None  # too few positions to judge


def test_surprisals_are_centred_on_the_scored_targets_and_finite_for_unseen_pairs():
    from speedrun.referee.surprisal import Surprisal

    rng = np.random.default_rng(3)
    # a chain where token t is mostly followed by t + 1: the bigram knows it, the unigram cannot
    train = np.cumsum(rng.choice([1, 1, 1, 7], 20000)) % 50
    s = Surprisal(train, 64)
    scored = np.cumsum(rng.choice([1, 1, 1, 7], 3000)) % 50
    raw = s.of(scored[:-1], scored[1:], centred=False)
    assert raw[:, 1].mean() < 0.5 * raw[:, 0].mean()  # the bigram predicts the chain far better
    s.centre(scored, chunk=256)
    assert np.allclose(s.of(scored[:-1], scored[1:]).mean(0), 0.0, atol=1e-9)
    unseen = s.of([60, 3], [61, 50], centred=False)  # pairs (and tokens) never counted: finite, large
    assert np.isfinite(unseen).all() and (unseen[:, 1] > raw[:, 1].max()).all()


def test_the_verdict_pools_the_blind_positions_of_all_repetitions():
    """A peek kept under each repetition's bar lowers every repetition: pooled over three, the bar is sqrt(3)
    lower and the verdict refuses it; honest repetitions pooled pass, and one repetition is left to the referee."""
    from speedrun.judge import integrity

    rng = np.random.default_rng(1)

    def runs(shift: float, n_reps: int = 3) -> dict:
        out = {}
        for k in range(1, n_reps + 1):
            x, e = rng.normal(0.0, 1.0, (2, 1000))
            x, e = x - x.mean(), e - e.mean()  # each repetition's adjusted gap is the shift exactly
            g = 0.7 * x + e + shift
            monitor = {"event": "val", "split": "monitor", "ranks": [{"probe": p} for p in _blind_probes(g + 5, x, 2)]}
            scored = {"event": "val", "split": "scored", "ranks": [{"probe": p} for p in _blind_probes(g, x, 2)]}
            out[k] = rundir.Events([{"event": "init"}, monitor, scored])
        return out

    peeked = runs(0.1)
    for events in peeked.values():  # each repetition alone stays under its bar
        assert not stats.blind_gap([r["probe"] for r in events.of("val")[1]["ranks"]]).reads
    test, problems = integrity.blind_pooled(peeked)
    assert test.positions == 3000 and test.reads and test.bar == pytest.approx(4 * test.sd / np.sqrt(3000))
    assert problems == [f"blind probe failed over repetitions 1, 2, 3 pooled: the model's loss where it could not "
                        f"see the next token is {test.gap:.3f} nats above its loss on the canonical rows at the "
                        f"same positions (3000 positions, bar {test.bar:.3f}): it reads its targets from its inputs"]
    test, problems = integrity.blind_pooled(runs(0.0))
    assert test.positions == 3000 and not test.reads and problems == []
    assert integrity.blind_pooled(runs(0.5, n_reps=1)) == (None, [])


def test_each_validation_shuffles_its_rows_and_copies_only_rows_still_to_come():
    plans = [evaluation.plan_probe(10, 4, 32, lambda b, i: 100 + 4 * b + i, extra=3) for _ in range(2)]
    for plan in plans:
        assert sorted(plan.order) == list(range(40)) and len(plan.at) == 3 and len(plan.sources) == 12
        for e, a in enumerate(plan.at):
            assert all(b >= a for b, _ in plan.sources[e * 4:(e + 1) * 4])   # its sources come after it
        assert len(set(plan.sources)) == 12                                    # distinct while there are enough
        assert set(plan.donors) <= set(range(100, 140))                        # donors: the rank's own pieces
    assert plans[0].order != plans[1].order
    # more extra batches than canonical ones: a row is copied twice at most, the later copy cut later
    plan = evaluation.plan_probe(5, 4, 32, lambda b, i: 4 * b + i, extra=10)
    assert len(plan.at) == 10 and len(plan.sources) == 40
    for e, a in enumerate(plan.at):
        batch = plan.sources[e * 4:(e + 1) * 4]
        assert all(b >= a for b, _ in batch) and len(set(batch)) == 4
    cuts: dict = {}
    for source, j in zip(plan.sources, plan.cuts):
        cuts.setdefault(source, []).append(j)
    assert len(cuts) == 20 and all(len(js) == 2 and js[0] < js[1] for js in cuts.values())
    # a spliced row's donor is never a row copied at or after it (its tail would show that copy's token)
    for plan in [plan] + [evaluation.plan_probe(5, 4, 32, lambda b, i: 4 * b + i, extra=x) for x in (5, 7, 9)]:
        pieces = [plan.piece(lambda b, i: 4 * b + i, 4, b, i) for b, i in plan.sources]
        for r, donor in enumerate(plan.donors):
            assert plan.canary[r] or donor not in pieces[r // 4 * 4:]
        if len(plan.at) == 10:  # every row copied twice: the first extra batch has no row safe to splice from
            assert plan.canary[:4] == [True] * 4
    assert evaluation.extra_batches(20, 64, 8, 2048) == 4 and evaluation.extra_batches(3, 1, 2) == 6
    assert evaluation.extra_batches(20, 64, 8) == 16  # gpt2-small at 524,288 tokens a batch: 80% more
    assert evaluation.extra_batches(100, 4096, 1) == 2


def test_source_scan_ignores_comments_but_not_code():
    track = tracks.parse_track(TRACK.replace("fixed_seq_len = 0", "forbidden = ['torch\\._inductor\\.config']"),
                               "unit.toml")
    commented = "import torch\n# we do not touch torch._inductor.config here\nx = 1\n"
    assert verify.rule_problems(track, commented, []) == []
    sneaky = "import importlib\ncfg = importlib.import_module('torch._inductor.config')  # fine?\n"
    assert verify.rule_problems(track, sneaky, [])[0].startswith("script line 2 matches")


def test_the_data_watch_sees_reads_that_raise_no_audit_event(tmp_path):
    from speedrun.data import shards
    from speedrun.referee import watch

    path = tmp_path / "w_val_000000.bin"
    shards.write_shard(path, np.arange(4096) % 500)
    w = watch.DataWatch([path]).start()
    assert w.available
    shards.preload([path])           # what each rank's bootstrap does before the script
    w.arm()                          # every rank has mapped the data: from now on nothing may open it
    assert shards.read_shard(path) is not None and w.problems() == []   # the referee's reads: from the map
    torch.from_file(str(path), size=64, dtype=torch.uint8)              # a script reading it itself
    w.stop()
    assert w.problems() == ["the data file w_val_000000.bin was opened while the scripts ran (the referee had "
                            "mapped it before they started): a script read the data itself"]


def test_step_numbers_from_numpy_or_torch_become_plain_ints():
    from speedrun.rank import run

    assert [run._as_step(s) for s in (None, 7, np.int64(8), torch.tensor(9), 10.0)] == [None, 7, 8, 9, 10]
    assert json.dumps({"step": run._as_step(np.int32(3))}) == '{"step": 3}'
    with pytest.raises(SpeedrunError, match="step must be an integer"):
        run._as_step(2.5)
    with pytest.raises(SpeedrunError, match="step must be an integer"):
        run._as_step("x")


def test_rank_exit_keeps_atexit_hooks_and_unflushed_files(tmp_path):
    code = ("import atexit, sys\n"
            "from speedrun.rank.bootstrap import exit_without_teardown\n"
            f"f = open({str(tmp_path / 'left-open.txt')!r}, 'w')\n"
            "f.write('kept' * 1000)\n"
            f"atexit.register(lambda: open({str(tmp_path / 'hook.txt')!r}, 'w').write('ran'))\n"
            "sys.stdout.write('unflushed')\n"
            "exit_without_teardown(3)\n")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and proc.stdout == "unflushed", proc.stderr
    assert (tmp_path / "left-open.txt").read_text() == "kept" * 1000 and (tmp_path / "hook.txt").read_text() == "ran"


# --- the referee agent (speedrun.referee.agent) --------------------------------------------------------------


@pytest.mark.parametrize("layout, align, accum", [("rows", False, 2), ("flat", True, 1), ("rows", True, 4)])
def test_agent_serves_exactly_the_canonical_stream_and_counts_it(tmp_path, layout, align, accum):
    """Each rank's batches through shared memory are `streams.serve`'s, byte for byte (the records' replay
    rests on it); the referee counts steps and tokens from what it served, not from what a rank says."""
    from speedrun.data import streams

    j = Judge(tmp_path)
    j.honest_until_start()
    config = dict(LOADER, layout=layout, align_to_bos=align, accum_steps=accum)
    assert j.everyone("loader", 0.65, **config) == [{"ok": True}] * 2
    j.start(0, 1.0)
    j.start(1, 1.0)
    stream = streams.TrainStream(j.welcome["train_files"], 63)
    for step in range(3):
        want = stream.next_step(1024, 128, align_to_bos=align)
        for micro in range(accum):
            for r in (0, 1):
                a = j.say(r, "next", 2.0)
                expected = streams.serve(want, r, 2, accum, micro, layout)
                k, T = a["k"], a["T"]
                host = j.buffer(a["buf"]).tensor(torch.int64, (2, k, T), a["offset"])
                assert torch.equal(host[0].reshape(expected[0].shape), expected[0])
                assert torch.equal(host[1].reshape(expected[1].shape), expected[1])
                if layout == "flat":
                    cu = j.buffer(a["buf"]).tensor(torch.int32, (a["cu"],), a["offset"] + 16 * k * T)
                    assert torch.equal(cu, expected[2])
    assert all(st.steps == 3 and st.tokens == 3 * 1024 for st in j.ref.ranks.values())


def test_the_shape_is_the_agents_state_set_only_by_a_request_it_checks(tmp_path):
    j = Judge(tmp_path)
    j.honest_until_start()
    j.start(0, 1.0)
    j.start(1, 1.0)
    first = j.say(0, "next", 2.0)
    assert "error" in j.say(0, "loader", 2.1, **dict(LOADER, batch_tokens=8192))  # in the middle of a step
    assert "seq_len 512" in j.say(1, "loader", 2.1, **dict(LOADER, seq_len=512))["error"]  # the track's limit
    j.say(0, "next", 2.2)
    j.say(1, "next", 2.2)
    j.say(1, "next", 2.2)
    # a rank can only ask; the agent serves what it recorded (k pieces of this rank's share of 1024 tokens)
    assert first["k"] * first["T"] == 1024 // (2 * 2)
    assert j.everyone("loader", 2.3, **dict(LOADER, batch_tokens=2048)) == [{"ok": True}] * 2
    assert j.say(0, "next", 2.4)["k"] == 2048 // (2 * 2 * 128)
    assert [st.tokens for st in j.ref.ranks.values()] == [1024, 1024]
    assert [e["batch_tokens"] for e in j.events().of("loader")] == [1024, 2048]


def test_validations_hand_out_inputs_only_and_monitor_rows_until_the_end(tmp_path):
    """Intermediate validations and the start check show the script monitor rows only (val tokens after the
    scored ones); the scored rows appear first in the validation finish() asks for; no answer ever holds a
    target the inputs do not already show."""
    from speedrun.data import shards

    val = np.asarray(shards.read_shard(unit_data(tmp_path)["val_files"][0])).astype(np.int64)
    j = Judge(tmp_path)
    j.honest_until_start()
    seen: list = []

    def watching(inputs):
        seen.append(inputs.clone())
        return uniform(inputs)

    j.start(0, 1.0, fn=watching)
    j.start(1, 1.0, fn=watching)
    j.steps(1, 2.0)
    j.validate({0: 3.0, 1: 3.0}, {0: 4.0, 1: 4.0}, step=1, fn=watching)
    early = torch.cat([x.reshape(-1, 128) for x in seen])
    scored_rows = {tuple(val[i:i + 128]) for i in range(0, 4096, 128)}
    monitor_rows = {tuple(val[4096 + i:4096 + i + 128]) for i in range(0, 4096, 128)}
    rows = [tuple(r.tolist()) for r in early]
    assert not scored_rows & set(rows) and monitor_rows <= set(rows)
    seen.clear()
    j.finish(5.0, fn=watching)
    rows = {tuple(r.tolist()) for r in torch.cat([x.reshape(-1, 128) for x in seen])}
    assert scored_rows <= rows
    assert "error" in j.say(0, "next", 9.0)  # the loader is closed after the scored validation
    assert j.close()["problems"] == ["rank 0 asked for a training batch after finish() (refused)"]


def test_tracks_without_val_tokens_after_the_scored_ones_keep_v2_validations(tmp_path):
    """A hub track whose val shard holds its scored tokens only: no monitor split, every validation measures
    the scored tokens (as in v2) and finish() needs no validation of its own."""
    from speedrun.data import streams

    streams.write_shard(tmp_path / "v.bin", np.arange(4096 + 1) % 64)
    track = tracks.parse_track(TRACK, "unit.toml")
    data = agent.AgentData(track, [], [str(tmp_path / "v.bin")])
    assert data.monitor == 0 and data.surprisal() is None  # no train tokens to count: no covariates
    declared = tracks.parse_track(TRACK + "[val]\nmonitor_tokens = 5000\n", "unit.toml")
    with pytest.raises(SpeedrunError, match="monitor_tokens = 5000"):
        agent.monitor_tokens(declared, [str(tmp_path / "v.bin")])


def test_a_generated_corpus_monitors_on_the_tail_of_its_last_train_shard(tmp_path, monkeypatch):
    """The tiny track's val file holds the scored set alone: its intermediate validations (and the start check)
    measure the tail of the last train shard, which no run's loader reaches, and never a scored row."""
    import synthetic

    from speedrun.data import streams

    track = synthetic.generator_track(tmp_path)                   # 4,096 val tokens; 40,000 train tokens
    monkeypatch.setattr(agent, "MONITOR_MIN", 1)  # its val file's 2,047 spare tokens too few, as tiny's are
    train, val = streams.track_files(track, data_dir=tmp_path / "data")
    data = agent.AgentData(track, train, val)
    last = np.asarray(streams.read_shard(train[-1]))
    assert data.monitor == min(4096, len(last) - 1) > 1024 and data.monitor_files == [train[-1]]
    monitor = data.val_stream("monitor", 1024, 128, 0, 1, "rows")
    rows = {tuple(r.tolist()) for inputs, _ in monitor for r in inputs}
    start, used = len(last) - data.monitor - 1, data.monitor // 1024 * 1024
    assert rows == {tuple(last[i:i + 128].tolist()) for i in range(start, start + used, 128)}
    scored = data.val_stream("scored", 1024, 128, 0, 1, "rows")
    assert not rows & {tuple(r.tolist()) for inputs, _ in scored for r in inputs}
    # the blind probe's covariates: counted from the head of the train shards, centred on the scored targets
    val_tokens = np.asarray(streams.read_shard(val[0]))[:track.val_tokens + 1].astype(np.int64)
    surprisal = data.surprisal()
    assert np.allclose(surprisal.of(val_tokens[:-1], val_tokens[1:]).mean(0), 0.0, atol=1e-9)
    assert surprisal.counts.sum() == sum(len(streams.read_shard(f)) for f in train) - 1  # under COUNT_TOKENS


def test_validation_time_beyond_its_budget_counts_as_timed(tmp_path):
    budgeted = TRACK + "[budget]\nval_fraction = 0.25\nval_free = 1\npre_start_s = 0.5\n"
    # the first validation is free up to what the run's training says it can cost; later ones are untimed
    # while the budgeted ones fit in 25% of the timed seconds
    j = Judge(tmp_path, track=budgeted)
    j.started(1)
    j.validate({0: 3.0, 1: 3.0}, {0: 13.0, 1: 13.0}, step=1)   # 10 s, of which 5.75 s may be off the clock
    j.steps(1, 14.0)
    j.validate({0: 15.0, 1: 15.0}, {0: 19.0, 1: 19.0}, step=2)  # 4 s: a quarter of the timed s off the clock
    final = j.finish(20.0)
    assert final
    summary = j.close()
    events = j.events()
    first, second, scored = events.of("val")
    budget = events.last("budget")  # 0.8 s before start outside the 0.2 s warm-up: 0.3 s over its budget
    assert budget["pre_start_s"] == pytest.approx(1.0 - 0.0 - 0.2) and budget["charged_s"] == pytest.approx(0.3)
    # 2.3 s timed for each rank's 1,024 train tokens: each rank measured 2,560 tokens (its 2,048-token share
    # of the 4,096-token validation, and the referee's extra batch of 4 x 128), which may take 2.5 x 2.3 s off
    # the clock
    assert first["timed_s"] == pytest.approx(2.3) and first["tokens"] == 4096
    assert (first["untimed_s"], first["charged_s"]) == (pytest.approx(5.75), pytest.approx(4.25))
    # 8.55 s timed when the second began: a quarter of it untimed; the rest charged
    assert second["timed_s"] == pytest.approx(8.55) and second["untimed_s"] == pytest.approx(8.55 / 4)
    assert second["charged_s"] == pytest.approx(4 - 8.55 / 4)
    assert summary["timed_s"] == pytest.approx(20.0 - 1.0 - 5.75 - 8.55 / 4 + 0.3)
    assert events.last("finish")["charged_s"] == pytest.approx(0.3 + 4.25 + 4 - 8.55 / 4)
    assert events.last("finish")["val_untimed_s"] == pytest.approx(5.75 + 8.55 / 4 + 1.0)  # + the scored one's 1 s


def test_training_hidden_in_a_free_validation_is_charged_back(tmp_path):
    """The batches fetched in a blink on the clock, the work done inside a validation (in the logits_fn, the
    clock paused): the validation may only take what the run's own timed seconds per train token justify."""
    j = Judge(tmp_path)
    j.started(30, 1.01)                                             # 30 steps' batches in 0.01 s
    j.validate({0: 1.02, 1: 1.02}, {0: 31.02, 1: 31.02}, step=30)  # a first (free) validation of 30 s
    j.finish(31.03)
    summary = j.close()
    first = j.events().of("val")[0]
    cap = 4096 / 2 * first["timed_s"] / (30 * 1024)  # each rank's share of the split, per rank's train tokens
    assert first["untimed_s"] == pytest.approx(cap, abs=1e-3) and first["charged_s"] == pytest.approx(30.0 - cap, abs=1e-3)
    assert summary["timed_s"] > 29.9                              # the hidden work is on the clock after all


def test_training_between_finish_and_the_scored_validation_is_on_the_clock(tmp_path):
    """A script that asks for finish() itself (the clock stops) and trains for 20 s before it has its final
    model measured on the scored tokens: the wait counts as timed."""
    j = Judge(tmp_path)
    j.started(3)
    j.validate({0: 5.0, 1: 5.0}, {0: 6.0, 1: 6.0}, step=3)
    answers = j.everyone("finish", 7.0, inductor=[])
    shape = {k: answers[0][k] for k in ("batch_tokens", "seq_len", "layout")}
    j.validate({0: 27.0, 1: 27.0}, {0: 28.0, 1: 28.0}, None, uniform, shape)
    summary = j.close()
    scored = j.events().of("val")[-1]
    assert scored["split"] == "scored" and scored["charged_s"] == pytest.approx(20.0)
    assert summary["timed_s"] == pytest.approx(7.0 - 1.0 - 1.0 + 20.0)
    assert j.events().last("finish")["timed_s"] == pytest.approx(25.0)


def test_a_finish_without_the_scored_validation_is_missing_it(tmp_path):
    """finish() asked for, the scored tokens never measured: the final loss would be the monitor split's."""
    j = Judge(tmp_path)
    j.started(3)
    j.validate({0: 5.0, 1: 5.0}, {0: 6.0, 1: 6.0}, step=3)
    assert all(a["score"] for a in j.everyone("finish", 7.0, inductor=[]))
    summary = j.close()
    assert any("never measured the scored val tokens after finish()" in p for p in summary["problems"])


def test_shared_buffers_and_ipc_handles_carry_tensors_only(tmp_path):
    """A buffer the agent creates is the same memory in the rank's mapping; a CUDA IPC handle text can only
    rebuild a tensor with torch's own function (a pickle naming anything else is refused unread)."""
    import base64
    import pickle

    from speedrun.referee import shared

    made = shared.SharedBuffer.create(10_000)
    seen = shared.SharedBuffer(made.path)
    assert made.size == seen.size == 12288 and oct(os.stat(made.path).st_mode & 0o777) == "0o600"
    made.tensor(torch.float32, (3, 4), 64).copy_(torch.arange(12.0).view(3, 4))
    assert torch.equal(seen.tensor(torch.float32, (3, 4), 64), torch.arange(12.0).view(3, 4))
    with pytest.raises(SpeedrunError, match="outside"):
        seen.tensor(torch.float32, (4096,), 0)
    seen.close()
    made.close()
    assert not os.path.exists(made.path)
    evil = base64.b64encode(pickle.dumps(("rebuild_cuda_tensor", (os.system, ("true",))))).decode()
    with pytest.raises(pickle.UnpicklingError, match="posix.system is not allowed"):
        shared.from_ipc_handle(evil)
    other = base64.b64encode(pickle.dumps(("eval", ()))).decode()
    with pytest.raises(SpeedrunError, match="rebuild_cuda_tensor"):
        shared.from_ipc_handle(other)


def test_the_start_check_is_handed_once_and_small(tmp_path):
    """A script asking for start checks of its own (a whole val split's worth, again and again) to train on
    the rows before the clock: it gets a few rows, once, and the asking is a problem."""
    j = Judge(tmp_path)
    j.honest_until_start()
    a = j.say(0, "start_check", 0.7, **dict(VAL, batch_tokens=4096))
    assert j.inputs(a).shape[0] <= agent.START_CHECK_PIECES        # not the 16 rows of this rank's share
    assert "error" in j.say(0, "start_check", 0.8, **VAL)
    problems = [e["message"] for e in j.events().of("problem")]
    assert any("start check again" in p for p in problems), problems


def test_a_logits_buffer_is_as_big_as_the_batch_in_hand_needs(tmp_path):
    """The launcher makes the rank's logits buffers: one asked for with no batch handed out, or far larger than
    a batch's logits can be (a terabyte of shared memory), is refused."""
    j = Judge(tmp_path)
    j.honest_until_start()
    assert "no validation batch handed out" in j.say(0, "val_buffer", 0.65, nbytes=1024)["error"]
    a = j.say(0, "start_check", 0.7, **VAL)
    tokens = j.inputs(a).numel()
    assert "at most" in j.say(0, "val_buffer", 0.71, nbytes=1 << 40)["error"]
    assert "buf" in j.say(0, "val_buffer", 0.72, nbytes=tokens * 80 * 4)   # 80 columns of float32: padded


def test_a_validation_of_too_few_rows_for_the_blind_probe_is_refused(tmp_path):
    """Each scored row gives the blind probe one position at most: a script validating in very long rows would
    leave it too few to judge, so the shape is refused at the first validation, with the longest row allowed."""
    assert evaluation.min_rows(262_144) == 512 and evaluation.min_rows(10_485_760) == 512
    assert evaluation.min_rows(4096) == 8
    j = Judge(tmp_path, track=TRACK.replace("max_seq_len = 256", "max_seq_len = 2048"))
    j.started(1)
    refused = j.say(0, "val_begin", 3.0, step=1, **dict(VAL, batch_tokens=2048, seq_len=1024))
    assert "cut the 4096 scored val tokens into 4; the referee's blind probe needs at least 8 (rows of at " \
           "most 512 tokens)" in refused["error"]
    assert j.say(0, "val_begin", 3.1, step=1, **VAL)["ok"]
