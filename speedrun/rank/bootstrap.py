"""`python -m speedrun.rank.bootstrap SCRIPT [ARGS...]`: the trusted first lines of every rank.

`speedrun run` starts each rank as `torchrun ... -m speedrun.rank.bootstrap <script copy> <args>`. Before the
submission's first line runs, the bootstrap
1. connects to the launcher's referee channel (`$SPEEDRUN_REFEREE_SOCKET`) and gets the repetition's seed,
   the track (the launcher's own copy of the file's text) and the data files;
2. opens no data: the rank's referee agent, in the launcher's process (`speedrun.referee.agent`), reads the
   shards and hands this rank its batches and validation inputs through shared memory;
3. installs a Python audit hook that reports any open (or mmap) of the data files to the launcher, where it
   is a problem: only the referee reads the data;
4. takes its own references to the functions the referee relies on (device sync, barrier, all-reduce,
   socket send), so replacing them in torch or in this module later changes nothing the referee does;
5. seeds Python's, NumPy's and torch's generators with the launcher's seed, then runs the script with
   `runpy` as `__main__` and reports its exit.
`Session` is the rank's side of the referee that `speedrun.spec.Run` talks to: a client that asks the agent
for batches, phases and measurements and holds nothing that decides them. Without a launcher,
`unrefereed_session()` builds one whose referee runs inside rank 0's own process (marked unrefereed); rank 0
then writes one line to stderr saying so and naming the run directory, since no `speedrun` command is there to
tell the user where the evidence went. (Like the usage lines below, these are the rank side's only words:
everything else a rank has to say goes to the referee.)
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
CHECKED_KINDS = ("start", "val_begin", "finish", "exit")  # integrity is checked before these
VAL_TIMEOUT_S = 24 * 3600.0  # a validation's loss waits for every rank's validation (a stuck rank is the launcher's)


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
    HARNESS = ("speedrun.spec", "speedrun.rank.run", "speedrun.rank.bootstrap", "speedrun.data.streams",
               "speedrun.data.shards", "speedrun.referee.channel", "speedrun.referee.shared")

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
        self.replica = welcome.get("replica")  # the replica run: the repetitions whose sealed states start() checks
        self.seals = bool(welcome.get("seal"))  # finish() hands the model's state over (the replica check is on)
        self.train_files = [Path(p) for p in welcome["train_files"]]
        self.val_files = [Path(p) for p in welcome["val_files"]]
        self._send, self._request = client.send, client.request
        self._buffers: dict = {}          # path -> shared buffer the agent named
        self._copies: list = []           # CUDA events of batch copies still reading a ring slot
        self._logits_buf = None
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

    def request(self, kind: str, timeout: float = 600.0, **fields) -> dict:
        """Ask the rank's referee agent; a refusal (`{"error": ...}`) raises."""
        with self._lock:
            if kind in CHECKED_KINDS:
                self._check_integrity()
            answer = self._request(kind, timeout=timeout, **fields)
        if "error" in answer:
            raise SpeedrunError(answer["error"])
        return answer

    def _check_integrity(self) -> None:
        if self.integrity is None:
            return
        new = [name for name in self.integrity.replaced() if name not in self._reported]
        if new:
            self._reported.update(new)
            self._send("tamper", names=new)

    # --- data, from the agent --------------------------------------------------------------------------------
    def train_stream(self):
        """The canonical train stream read in this process (benchmarks only: a refereed rank's batches come
        from its agent, and reading the shards here is reported as an open of the data)."""
        from speedrun.data import streams

        return streams.TrainStream(self.train_files, self.track.bos_token, max_seq_len=self.track.checks.max_seq_len)

    def _buffer(self, path: str):
        from speedrun.referee.shared import SharedBuffer

        buf = self._buffers.get(path)
        if buf is None:
            if len(self._buffers) >= 4:  # the agent replaced one (a larger shape): drop the oldest mapping
                for event in self._copies:  # once no copy reads from it any more
                    event.synchronize()
                self._copies = []
                self._buffers.pop(next(iter(self._buffers))).close()
            buf = self._buffers[path] = SharedBuffer(path)
            if self.device.type == "cuda":
                buf.pin()
        return buf

    def next_batch(self, layout: str):
        """The next train micro-batch from the agent, on this rank's device (one copy out of shared memory)."""
        torch = self._torch
        from speedrun.referee.agent import RING

        if self._copies and len(self._copies) >= RING - 1:
            self._copies.pop(0).synchronize()  # the slot the agent may fill next is no longer being read
        a = self.request("next")
        buf = self._buffer(a["buf"])
        k, T, offset = a["k"], a["T"], a["offset"]
        host = buf.tensor(torch.int64, (2, k, T), offset)
        cu = None if a["cu"] is None else buf.tensor(torch.int32, (a["cu"],), offset + 16 * k * T)
        if self.device.type == "cuda":
            both = host.to(self.device, non_blocking=True)
            cu = None if cu is None else cu.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._copies.append(event)
        else:
            both = host.clone()
            cu = None if cu is None else cu.clone()
        if layout == "rows":
            return both[0], both[1]
        return both[0].view(-1), both[1].view(-1), cu

    def _inputs(self, a: dict):
        torch = self._torch
        buf = self._buffer(a["buf"])
        shape = tuple(a["shape"])
        inputs = buf.tensor(torch.int64, shape, a["offset"])
        n = inputs.numel()
        cu = None if a["cu"] is None else buf.tensor(torch.int32, (a["cu"],), a["offset"] + 8 * n)
        inputs = inputs.to(self.device) if self.device.type == "cuda" else inputs.clone()
        if cu is not None:
            cu = cu.to(self.device) if self.device.type == "cuda" else cu.clone()
        return inputs, cu

    def _hand_logits(self, logits) -> dict:
        """Describe the logits for the agent: written into a shared buffer (CPU), or a CUDA IPC handle."""
        torch = self._torch
        if not isinstance(logits, torch.Tensor):
            raise SpeedrunError(f"logits_fn must return a tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise SpeedrunError(f"logits_fn must return floating-point logits, got {logits.dtype}")
        logits = logits.detach()
        if logits.is_cuda:
            from speedrun.referee import shared

            logits = logits.contiguous()
            torch.cuda.current_stream(logits.device).synchronize()
            self._held = logits  # alive until the agent has read it (the next request)
            return {"ipc": shared.ipc_handle(logits)}
        nbytes = logits.numel() * logits.element_size()
        if self._logits_buf is None or self._logits_buf.size < nbytes:
            from speedrun.referee.shared import SharedBuffer

            if self._logits_buf is not None:
                self._logits_buf.close()
            self._logits_buf = SharedBuffer(self.request("val_buffer", nbytes=max(nbytes, 1))["buf"])
        self._logits_buf.tensor(logits.dtype, tuple(logits.shape)).copy_(logits)
        return {"buf": self._logits_buf.path, "shape": list(logits.shape), "dtype": str(logits.dtype)}

    def _call(self, logits_fn, a: dict) -> dict:
        inputs, cu = self._inputs(a)
        with self._torch.no_grad():
            logits = logits_fn(inputs) if cu is None else logits_fn(inputs, cu)
        return self._hand_logits(logits)

    def validate(self, logits_fn, step, batch_tokens: int, seq_len: int, layout: str) -> float:
        """One validation, run by the agent: this rank only turns the inputs it is handed into logits."""
        self.request("val_begin", step=step, batch_tokens=batch_tokens, seq_len=seq_len, layout=layout)
        return float(self._answer("val_next", logits_fn)["loss"])

    def _answer(self, kind: str, logits_fn, **fields) -> dict:
        """Answer the agent's batches with `logits_fn` until it says done (a validation's `val_next`, the
        replica's `replica_next`); returns that last answer. A failing `logits_fn` is reported, then raised."""
        meta = None
        while True:
            a = self.request(kind, timeout=VAL_TIMEOUT_S, logits=meta, error=None, **fields)
            if a.get("done"):
                self._held = None
                return a
            try:
                meta = self._call(logits_fn, a)
            except BaseException as exc:
                text = f"{type(exc).__name__}: {exc}"[:1000]
                try:
                    self.request(kind, logits=None, error=text, **fields)
                except SpeedrunError:
                    pass
                raise

    def start_check(self, logits_fn, batch_tokens: int, seq_len: int, layout: str) -> dict:
        """The start check's logits (the agent hands the inputs and computes the loss)."""
        a = self.request("start_check", batch_tokens=batch_tokens, seq_len=seq_len, layout=layout)
        return self._call(logits_fn, a)

    # --- the replica check (speedrun.referee.replica) ------------------------------------------------------
    def seal(self, model) -> None:
        """Hand the agent the model's state: each tensor of `state_dict()` copied straight into a shared buffer
        (no pickling; one device-to-host copy), after the clock stopped and before the scored rows. The seconds
        this takes are on the clock, so it is kept to a copy."""
        from speedrun.referee.shared import SharedBuffer

        torch = self._torch
        state = model.state_dict()
        tensors, offset = [], 0
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise SpeedrunError(f"the model's state_dict() holds {name!r}, a {type(t).__name__}: the replica "
                                    f"check seals tensors only")
            tensors.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset])
            offset += -(-t.numel() * t.element_size() // 64) * 64
        buf = SharedBuffer(self.request("seal_buffer", nbytes=max(offset, 1))["buf"])
        try:
            for (_, _, shape, at), t in zip(tensors, state.values()):
                buf.tensor(t.dtype, tuple(shape), at).copy_(t.detach())
        finally:
            buf.close()
        self.request("sealed", nbytes=offset, training=bool(getattr(model, "training", False)), tensors=tensors)

    def run_replica(self, model, logits_fn, bare: bool) -> None:
        """The replica run's start(): load each repetition's sealed state into the model given to warmup() and
        answer the agent's cut copies with `logits_fn`, as a validation does. `bare`: start() was given no
        logits_fn, so `logits_fn` calls that model itself (API 1)."""
        from speedrun.referee.shared import SharedBuffer

        torch = self._torch
        for k in self.replica:
            a = self.request("replica_state", k=k, bare=bare)
            buf = SharedBuffer(a["buf"])
            try:
                state = {name: buf.tensor(getattr(torch, dtype), tuple(shape), at).to(self.device, copy=True)
                         for name, dtype, shape, at in a["tensors"]}
            finally:
                buf.close()
            model.load_state_dict(state)
            model.train(bool(a["training"]))  # the mode it was scored in
            self._answer("replica_next", logits_fn, k=k)

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
    go = client.request("preloaded")  # every local rank is ready before any script runs
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
        referee = launcher.Standalone.start(track_name, seed, script, data_dir, world_size)
        path[0] = referee.socket_path
        # the one line a plain run says for itself (no `speedrun` command is there to say it): where its evidence goes
        print(f"speedrun: unrefereed run (started without `speedrun run`, so it can never qualify for a record); "
              f"its evidence goes to {referee.run_dir}", file=sys.stderr, flush=True)
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
    code, error, where = 0, None, None
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)  # exit(True) is 1
        if code:
            error, where = f"SystemExit({exc.code!r})", script_line(exc, script)
    except BaseException as exc:
        code, error = 1, "".join(traceback.format_exception_only(type(exc), exc)).strip()[-1000:]
        where = script_line(exc, script)
        traceback.print_exc()
    try:
        names = replaced()
        if names:
            raw_send("tamper", names=names)
        raw_send("exit", code=code, error=error, where=where)
    except SpeedrunError:
        pass
    client.close()
    if code == 0:
        session.close_distributed()
    return code


def script_line(exc: BaseException, script: str) -> str | None:
    """The script's own line an exception came through last, as "train.py:164: raise ...": where a verdict
    points first (the frames below it are torch's or the harness's); None when it never passed the script."""
    try:
        mine = os.path.realpath(script)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) == mine]
    except Exception:  # a verdict's pointer is never worth a second failure
        return None
    if not frames:
        return None
    frame = frames[-1]
    return f"{os.path.basename(script)}:{frame.lineno}: {(frame.line or '').strip()}"[:500]


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
