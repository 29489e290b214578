"""`python -m speedrun.rank.bootstrap SCRIPT [ARGS...]`: the trusted first lines of every rank.

`speedrun run` starts each rank as `torchrun ... -m speedrun.rank.bootstrap <script copy> <args>`. Before the
submission's first line runs, the bootstrap
1. connects to the launcher's referee channel (`$SPEEDRUN_REFEREE_SOCKET`) and gets the repetition's seed,
   the track (the launcher's own copy of the file's text) and the data files;
2. memory-maps every train and val shard (`speedrun.data.streams.preload`), so the referee never has to open them
   again in this process;
3. installs a Python audit hook that reports any later open (or mmap) of those files to the launcher,
   where it is a problem: only the referee reads the data;
4. takes its own references to the functions the referee relies on (device sync, barrier, all-reduce,
   socket send), so replacing them in torch or in this module later changes nothing the referee does;
5. seeds Python's, NumPy's and torch's generators with the launcher's seed, then runs the script with
   `runpy` as `__main__` and reports its exit.
`Session` is the rank's side of the referee that `speedrun.spec.Run` talks to. Without a launcher,
`unrefereed_session()` builds one whose referee runs inside rank 0's own process (marked unrefereed).
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import traceback
from pathlib import Path

from speedrun import env
from speedrun.version import API_VERSION
from speedrun.referee import channel
from speedrun.errors import SpeedrunError

_SESSION: "Session | None" = None
CHECKED_KINDS = ("start", "val_begin", "val_end", "finish", "exit")  # integrity is checked before these


def current_session() -> "Session | None":
    return _SESSION


def inductor_changes() -> list[str]:
    """Names in torch._inductor.config that are not at their defaults (env overrides count as changes).
    Only looked at when the script has imported inductor (torch.compile does); importing it costs seconds."""
    config = sys.modules.get("torch._inductor.config")
    if config is None:
        return []
    try:
        is_default = type(config)._is_default
        return sorted(name for name in config._config if not is_default(config, name))
    except Exception:  # a torch without the private API: compare with the declared defaults
        try:
            return sorted(name for name, entry in config._config.items()
                          if getattr(config, name) != entry.default)
        except Exception:
            return ["(could not read torch._inductor.config)"]


class Integrity:
    """The functions the referee's work rests on, as they were before the script ran: `replaced()` names any
    the script has replaced since (in their module, on their class, or on the `Run` instance). The referee's
    own calls go through references taken here, so a replacement changes nothing it measures; it is reported
    because no honest submission does it."""

    TIMING = (("time", ("perf_counter", "perf_counter_ns", "time", "time_ns", "monotonic", "monotonic_ns")),
              ("torch.distributed", ("barrier", "all_reduce", "init_process_group", "is_initialized")),
              ("torch.cuda", ("synchronize",)))
    HARNESS = ("speedrun.spec", "speedrun.rank.run", "speedrun.rank.bootstrap", "speedrun.referee.evaluation", "speedrun.data.streams", "speedrun.data.shards",
               "speedrun.referee.channel")

    def __init__(self):
        import importlib
        import inspect

        self.items: list[tuple[str, object, str, object]] = []
        for module_name, names in self.TIMING:
            module = importlib.import_module(module_name)
            for name in names:
                if name in vars(module):
                    self.items.append((f"{module_name}.{name}", module, name, vars(module)[name]))
        for module_name in self.HARNESS:
            module = importlib.import_module(module_name)
            for name, obj in list(vars(module).items()):
                if getattr(obj, "__module__", None) != module_name:
                    continue
                if inspect.isfunction(obj):
                    self.items.append((f"{module_name}.{name}", module, name, obj))
                elif inspect.isclass(obj):
                    self.items.append((f"{module_name}.{name}", module, name, obj))
                    for attr, value in list(vars(obj).items()):
                        if callable(value) or isinstance(value, (property, staticmethod, classmethod)):
                            self.items.append((f"{module_name}.{name}.{attr}", obj, attr, value))
        self.run = None  # the Run, once speedrun.init() made it

    def replaced(self) -> list[str]:
        names = [label for label, holder, attr, original in self.items if vars(holder).get(attr) is not original]
        if self.run is not None:
            cls = type(self.run)
            names += [f"Run.{attr} (on the instance)" for attr, value in vars(self.run).items()
                      if callable(value) and hasattr(cls, attr)]
        return names


class Session:
    """One rank's connection to the referee and the data it was given."""

    def __init__(self, client: channel.Client, welcome: dict, refereed: bool):
        from speedrun import tracks

        self.client, self.welcome, self.refereed = client, welcome, refereed
        self.track = tracks.parse_track(welcome["track_toml"], Path(welcome["track_path"]))
        self.seed = int(welcome["seed"])
        self.repetition = int(welcome["repetition"])
        self.run_dir = welcome.get("run_dir") or None
        self.train_files = [Path(p) for p in welcome["train_files"]]
        self.val_files = [Path(p) for p in welcome["val_files"]]
        self._send = client.send
        self._evaluators: dict = {}
        self._lock = threading.RLock()  # a send from inside a send (a signal handler, atexit) must not hang
        self._dist_ready = False
        self.integrity: Integrity | None = None
        self._reported: set[str] = set()

    # --- the channel ---------------------------------------------------------------------------------------
    def send(self, kind: str, **fields) -> None:
        with self._lock:
            if kind in CHECKED_KINDS:
                self._check_integrity()
            self._send(kind, **fields)

    def _check_integrity(self) -> None:
        if self.integrity is None:
            return
        new = [name for name in self.integrity.replaced() if name not in self._reported]
        if new:
            self._reported.update(new)
            self._send("tamper", names=new)

    # --- data -------------------------------------------------------------------------------------------------
    def open_data(self) -> None:
        from speedrun.data import streams

        streams.preload(self.train_files + self.val_files)

    def train_stream(self):
        from speedrun.data import streams

        return streams.TrainStream(self.train_files, self.track.bos_token, max_seq_len=self.track.checks.max_seq_len)

    def unigram(self):
        """Probabilities of each token among the track's val tokens (computed once)."""
        if getattr(self, "_unigram", None) is None:
            from speedrun.data import streams

            self._unigram = streams.val_unigram(self.val_files, self.track.val_tokens, self.track.vocab_size)
        return self._unigram

    def evaluator(self, batch_tokens: int, seq_len: int, layout: str, rank: int, world_size: int, device):
        key = (batch_tokens, seq_len, layout, rank, world_size, str(device))
        if key not in self._evaluators:
            self._evaluators[key] = Evaluator(self, batch_tokens, seq_len, layout, rank, world_size, device)
        return self._evaluators[key]

    # --- torch.distributed and the device, through references taken before the script ran ---------------------
    def capture(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch = torch
        self._cuda_sync = torch.cuda.synchronize
        self._dist_barrier, self._all_reduce = dist.barrier, dist.all_reduce
        self._dist_init, self._dist_ready_fn = dist.init_process_group, dist.is_initialized
        self._dist_destroy = dist.destroy_process_group

    def setup_distributed(self):
        """nccl on CUDA, gloo on CPU; `SPEEDRUN_DEVICE=cpu` forces the CPU on a GPU machine. Under torchrun the
        process group is set up even for one process, so the same collectives run at every world size."""
        torch = self._torch
        rank, local_rank, world_size = env.dist()
        use_cuda = torch.cuda.is_available() and not env.cpu_forced()
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        under_torchrun = env.under_torchrun() or world_size > 1
        if under_torchrun and not self._dist_ready_fn():
            self._dist_init(backend="nccl" if use_cuda else "gloo", **({"device_id": device} if use_cuda else {}))
        self._dist_ready = self._dist_ready_fn()
        self.device = device
        return rank, local_rank, world_size, device

    def close_distributed(self) -> None:
        """Tear the process group down before the interpreter exits, unless the script already did: left to
        interpreter shutdown, gloo's threads are sometimes still joinable when their C++ destructors run, and
        the rank aborts ("terminate called without an active exception") after a complete run. Skipped after
        an uncaught exception, where a peer may be gone."""
        if getattr(self, "_dist_ready_fn", None) is None or getattr(sys, "last_value", None) is not None:
            return
        try:
            if self._dist_ready_fn():
                self._dist_destroy()
        except Exception:  # the run's outcome is already reported; a teardown failure changes nothing
            pass

    def device_name(self) -> str:
        from speedrun.evidence import hardware

        if self.device.type == "cuda":
            return self._torch.cuda.get_device_name(self.device)
        return hardware.cpu_model()

    def sync(self, device) -> None:
        if device.type == "cuda":
            self._cuda_sync(device)

    def barrier(self, device) -> None:
        self.sync(device)
        if self._dist_ready:
            self._dist_barrier()

    def global_mean(self, loss_sum: float, tokens: int, device) -> float:
        torch = self._torch
        t = torch.tensor([loss_sum, float(tokens)], dtype=torch.float64, device=device)
        if self._dist_ready:
            self._all_reduce(t)
        total, count = t.tolist()
        return total / count if count else float("nan")


class Evaluator:
    """The referee's measurement at one validation shape on one rank (see `speedrun.referee.evaluation`)."""

    def __init__(self, session: Session, batch_tokens: int, seq_len: int, layout: str, rank: int, world_size: int,
                 device):
        from speedrun.data import streams

        track = session.track
        self.stream = streams.ValStream(session.val_files, track.val_tokens, batch_tokens, seq_len, rank, world_size,
                                     layout, device, bos_token=track.bos_token, max_seq_len=track.checks.max_seq_len)
        self.layout, self.device, self.track, self.seq_len = layout, device, track, seq_len
        self.session = session

    def _batch(self, pieces):
        from speedrun.data import streams
        from speedrun.referee import evaluation

        return evaluation.Batch(*streams.make_batch(pieces, self.layout, self.device, bos_token=self.track.bos_token))

    def _own(self, b: int, i: int) -> int:
        return self.stream.pieces_of(b)[i]

    def measure(self, logits_fn):
        from speedrun.referee import evaluation

        s = self.stream
        return evaluation.measure(logits_fn, len(s), s.k, self.seq_len, self.layout == "flat", self._own,
                                  s.val_piece, self._batch, self.track.vocab_size, s.num_pieces,
                                  unigram=self.session.unigram())

    def start_check(self, logits_fn) -> tuple[float, int]:
        from speedrun.referee import evaluation

        batch = self._batch([self.stream.val_piece(self._own(0, i)) for i in range(self.stream.k)])
        return evaluation.start_loss(logits_fn, batch, self.track.vocab_size)


# --- the audit hook ----------------------------------------------------------------------------------------------


def install_audit_hook(session: Session) -> None:
    """Report opens and mmaps of the data files to the referee (by device and inode, so links count too)."""
    watched = {}
    for kind, files in (("val", session.val_files), ("train", session.train_files)):
        for p in files:
            try:
                st = os.stat(p)
                watched[(st.st_dev, st.st_ino)] = kind
            except OSError:
                pass
    stat, fstat, fspath, send = os.stat, os.fstat, os.fspath, session.send
    reported: set = set()

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            target = args[0]
            if isinstance(target, int) or target is None:
                return
            try:
                st = stat(fspath(target))
            except (OSError, TypeError, ValueError):
                return
            name = str(target)
        elif event == "mmap.__new__":
            if not isinstance(args[0], int) or args[0] < 0:
                return
            try:
                st = fstat(args[0])
            except OSError:
                return
            name = f"fd {args[0]}"
        else:
            return
        kind = watched.get((st.st_dev, st.st_ino))
        if kind is not None and (kind, name) not in reported:
            reported.add((kind, name))
            try:
                send("open", path=name, what=kind)
            except Exception:
                pass

    sys.addaudithook(hook)


# --- the two ways a session starts --------------------------------------------------------------------------------


def _begin(client: channel.Client, welcome: dict, refereed: bool) -> Session:
    global _SESSION
    if "error" in welcome:
        raise SpeedrunError(f"the referee refused this rank: {welcome['error']}")
    session = Session(client, welcome, refereed)
    session.open_data()
    go = client.request("preloaded")  # every local rank maps the data before any script runs
    if not go.get("go"):
        raise SpeedrunError(f"the referee did not let this rank start: {go.get('error', go)}")
    session.capture()
    session.integrity = Integrity()  # imports the referee's modules now, before the script could edit them
    install_audit_hook(session)
    _seed_everything(session.seed)
    _SESSION = session
    return session


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _hello(client: channel.Client) -> dict:
    rank, local_rank, world_size = env.dist()
    return client.request("hello", rank=rank, world_size=world_size, local_rank=local_rank, pid=os.getpid(),
                          api=API_VERSION,
                          harness=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # speedrun/


def unrefereed_session(track_name: str, seed: int, script: Path, data_dir: str | None) -> Session:
    """Plain torchrun / python: rank 0 runs a referee in its own process (see `speedrun.referee.launcher.Standalone`)
    and every rank connects to it; the run directory is complete but marked unrefereed."""
    import torch.distributed as dist

    from speedrun.referee import launcher

    rank, _, world_size = env.dist()
    if world_size > 1 and not dist.is_initialized():
        import torch

        use_cuda = torch.cuda.is_available() and not env.cpu_forced()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    path = [None]
    if rank == 0:
        path[0] = launcher.Standalone.start(track_name, seed, script, data_dir, world_size).socket_path
    if world_size > 1:
        dist.broadcast_object_list(path, src=0)
    client = channel.Client(path[0])
    import atexit

    atexit.register(client.close)  # registered after the referee's own hook, so it runs first (LIFO)
    session = _begin(client, _hello(client), refereed=False)
    atexit.register(session.close_distributed)  # first of all at exit
    session.send("script")
    return session


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m speedrun.rank.bootstrap SCRIPT [ARGS...] (started by `speedrun run`)", file=sys.stderr)
        return 2
    path = env.referee_socket()
    if not path:
        print("speedrun.rank.bootstrap: no referee ($SPEEDRUN_REFEREE_SOCKET); start runs with `speedrun run`",
              file=sys.stderr)
        return 2
    client = channel.Client(path)
    session = _begin(client, _hello(client), refereed=True)
    script = os.path.abspath(argv[0])
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(script))  # as `python script.py` would (the harness is imported already)
    # the last word after the script goes through references taken now, not through anything it can replace
    replaced, raw_send = session.integrity.replaced, session._send
    session.send("script")
    code, error = 0, None
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)  # exit(True) is 1
        if code:
            error = f"SystemExit({exc.code!r})"
    except BaseException as exc:
        code, error = 1, "".join(traceback.format_exception_only(type(exc), exc)).strip()[-1000:]
        traceback.print_exc()
    try:
        names = replaced()
        if names:
            raw_send("tamper", names=names)
        raw_send("exit", code=code, error=error)
    except SpeedrunError:
        pass
    client.close()
    if code == 0:
        session.close_distributed()
    return code


def exit_without_teardown(code: int) -> None:
    """End the rank process the way interpreter exit would, minus the C++ static destructors.

    Even with the process group destroyed, a rank sometimes aborts in those destructors ("terminate called
    without an active exception", seen about once in a few hundred gloo runs), turning a complete run into a
    failed one after its evidence is final. So: run the atexit hooks, flush every open file (what finalising
    the modules would have done for files the script left open), then leave with `os._exit`."""
    import atexit
    import gc
    import io

    try:
        atexit._run_exitfuncs()
    finally:
        for obj in gc.get_objects():
            try:
                if isinstance(obj, io.IOBase) and not obj.closed and obj.writable():
                    obj.flush()
            except Exception:  # a broken stream cannot stop the exit
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


if __name__ == "__main__":
    # run as `python -m`, this file is `__main__`; the session must live in the `speedrun.rank.bootstrap` module
    # that `speedrun.spec` imports, so hand over to that one
    from speedrun.rank.bootstrap import exit_without_teardown, main as _main

    exit_without_teardown(_main())
