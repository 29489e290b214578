"""Shared memory between a rank and its referee agent: the bytes of batches and logits, never the socket's.

The referee channel (`speedrun.referee.channel`) carries small JSON requests; every tensor crosses in a
`SharedBuffer`: a file in /dev/shm (a tmpfs: memory, not disk) that the agent creates with a random name, mode
0600, and the rank maps by the path the agent names in its answer. Only the agent creates buffers, and it
only ever reads from one it created, so a rank can name nothing else.

CUDA. The rank registers each buffer it maps with `cudaHostRegister` (`pin()`), so a batch goes from the
agent's bytes to the GPU in one non-blocking copy: the same single host-to-device copy the loader made before
the agent existed, from a page-locked buffer the agent filled instead of one the rank filled. Logits on a GPU
do not come back through here at all: the rank hands the agent a CUDA IPC handle of the logits tensor
(`ipc_handle` / `from_ipc_handle`) and the agent computes the cross-entropy on the same device, with no copy.
"""

from __future__ import annotations

import base64
import mmap
import os
import pickle
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from speedrun.errors import SpeedrunError

PAGE = 4096


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


@dataclass(frozen=True)
class Place:
    """Where a repetition's buffers live: a directory of their own, the launcher's alone (mode 0700), that the
    sandbox binds in (`speedrun.referee.sandbox`) and nothing else of /dev/shm. The ranks reach it because the
    sandbox's user namespace maps their uid to the launcher's: the files stay mode 0600."""

    directory: str

    @classmethod
    def make(cls) -> "Place":
        return cls(tempfile.mkdtemp(prefix="speedrun-shm-", dir=_shm_dir()))

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


class SharedBuffer:
    """`size` bytes of shared memory. `SharedBuffer.create(size)` on the agent's side, `SharedBuffer(path)`
    on the rank's; `tensor(dtype, shape, offset)` is a torch view of the bytes (no copy)."""

    def __init__(self, path: str, size: int | None = None, owner: bool = False):
        self.path, self.owner = str(path), owner
        fd = os.open(self.path, os.O_RDWR)
        try:
            self.size = os.fstat(fd).st_size if size is None else size
            self._map = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.pinned = False

    @classmethod
    def create(cls, size: int, place: "Place | None" = None) -> "SharedBuffer":
        """A new buffer of at least `size` bytes, in `place` (default: /dev/shm, this uid's alone)."""
        size = max(PAGE, -(-int(size) // PAGE) * PAGE)
        directory = place.directory if place is not None else _shm_dir()
        path = os.path.join(directory, f"speedrun-{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return cls(path, size, owner=True)

    def tensor(self, dtype, shape, offset: int = 0):
        import torch

        count = 1
        for d in shape:
            count *= int(d)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if offset < 0 or offset + count * itemsize > self.size:
            raise SpeedrunError(f"shared buffer: {count} x {dtype} at {offset} is outside its {self.size} bytes")
        if count == 0:
            return torch.empty(tuple(shape), dtype=dtype)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).view(tuple(shape))

    def pin(self) -> None:
        """Page-lock the mapping for CUDA (one registration per buffer, undone at close)."""
        import torch

        if self.pinned or not torch.cuda.is_available():
            return
        base = self.tensor(torch.uint8, (self.size,))
        err = torch.cuda.cudart().cudaHostRegister(base.data_ptr(), self.size, 0)
        self.pinned = int(err) == 0 if not hasattr(err, "value") else err.value == 0
        self._base = base

    def close(self) -> None:
        if getattr(self, "_map", None) is None:
            return
        if self.pinned:
            import torch

            try:
                torch.cuda.cudart().cudaHostUnregister(self._base.data_ptr())
            except Exception:
                pass
            self.pinned = False
        self._base = None
        try:
            self._map.close()
        except BufferError:  # a tensor still views it: the mapping goes when the last view does
            pass
        self._map = None
        if self.owner:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def ipc_handle(tensor) -> str:
    """A CUDA tensor as text for the channel: its CUDA IPC handle (torch's own reduction), base64."""
    from torch.multiprocessing.reductions import reduce_tensor

    rebuild, args = reduce_tensor(tensor)
    return base64.b64encode(pickle.dumps((rebuild.__name__, args))).decode()


def from_ipc_handle(text: str):
    """The agent's view of a rank's CUDA tensor from `ipc_handle`'s text. Only torch's own rebuild function
    is accepted: the unpickled tuple names it, it is never called by a name the text chooses."""
    from torch.multiprocessing import reductions

    name, args = _restricted_loads(base64.b64decode(text))
    if name != "rebuild_cuda_tensor":
        raise SpeedrunError(f"a CUDA IPC handle must rebuild with rebuild_cuda_tensor, got {name!r}")
    return reductions.rebuild_cuda_tensor(*args)


def _restricted_loads(data: bytes):
    """Unpickle plain data and torch's dtypes/storage classes only (the args of rebuild_cuda_tensor)."""
    import io

    allowed = {("torch", "Size"), ("torch", "device"), ("torch", "UntypedStorage"), ("torch", "TypedStorage"),
               ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"),
               ("torch.cuda", "UntypedStorage"), ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"),
               ("torch", "float64")}

    class Loader(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in allowed:
                import importlib

                return getattr(importlib.import_module(module), name)
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CUDA IPC handle")

    return Loader(io.BytesIO(data)).load()


def exists(path: str) -> bool:
    return Path(path).exists()
