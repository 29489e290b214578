"""Which machine a run ran on, precisely enough that "the same hardware" means the same machine class.

A record must beat the prior one *on the same hardware*. A label such as "2-core AMD EPYC" is not enough: this
project's own CPU hosts come with and without AVX-512 (bf16 matmul ~30x slower than fp32 on one, ~4x faster on
the other), and GPUs of one name differ in memory, driver and interconnect. So the launcher records a
fingerprint: for CPUs the model, the cores this process may use and the ISA flags that change which kernels
torch picks; for GPUs the name, count, memory, driver and interconnect. `differences()` says which fields of
two fingerprints differ; `compare`, `replay` and `record add` treat any difference as different hardware.

Only the standard library is imported at module level. GPUs are described by nvidia-smi, so the launcher
never creates a CUDA context of its own; torch is asked only where nvidia-smi is missing.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess

from speedrun import env

# CPU flags (as /proc/cpuinfo names them) that change the kernels torch's CPU backends choose
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "sve", "asimd")
# fields that make two machines "different hardware" (hostname and software versions do not)
CPU_FIELDS = ("cpu_model", "cpu_count", "isa")
GPU_FIELDS = ("gpu_name", "gpu_count", "gpu_memory_gib", "driver", "interconnect")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _nvidia_smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _interconnect() -> str | None:
    """'nvlink' when `nvidia-smi topo -m` shows NVLink between GPUs, 'pcie' when it shows none, else None."""
    topo = _nvidia_smi("topo", "-m")
    if topo is None:
        return None
    cells = topo.split()
    return "nvlink" if any(c.startswith("NV") and c[2:].isdigit() for c in cells) else "pcie"


def fingerprint(use_cuda: bool | None = None) -> dict:
    """This machine's fingerprint. `use_cuda=None`: CUDA when torch sees a GPU (and SPEEDRUN_DEVICE != cpu)."""
    flags = cpu_flags()
    fp = {"kind": "cpu", "cpu_model": cpu_model(), "cpu_count": cpu_count(), "arch": platform.machine(),
          "isa": sorted(f for f in ISA_FLAGS if f in flags)}
    if use_cuda is None:
        use_cuda = not env.cpu_forced() and _cuda_available()
    if use_cuda:
        gpus = _smi_gpus()
        if gpus:
            name, mib, driver = gpus[0]
            n, memory_gib = len(gpus), round(mib / 1024)
        else:  # no nvidia-smi: ask torch (this creates a CUDA context in the calling process)
            import torch

            props = torch.cuda.get_device_properties(0)
            n, name, memory_gib, driver = torch.cuda.device_count(), props.name, round(props.total_memory / 2**30), None
        fp.update(kind="cuda", gpu_name=name, gpu_count=n, gpu_memory_gib=memory_gib, driver=driver,
                  interconnect=_interconnect() if n > 1 else "single")
    return fp


def _smi_gpus() -> list[tuple[str, float, str]]:
    """(name, memory MiB, driver) of each GPU this process may use, from nvidia-smi (no CUDA context is
    created, so the launcher can ask before its ranks take the devices); [] when nvidia-smi cannot say."""
    out = _nvidia_smi("--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits")
    if not out:
        return []
    rows = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            try:
                rows[parts[0]] = (parts[1], float(parts[2]), parts[3])
            except ValueError:
                return []
    wanted = env.cuda_visible_devices()
    if wanted is not None:
        if not all(v.isdigit() for v in wanted):  # UUIDs or MIG names: let torch answer
            return []
        return [rows[v] for v in wanted if v in rows]
    return [rows[k] for k in sorted(rows, key=int)]


def _cuda_available() -> bool:
    if not (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
        return False  # avoid importing torch just to learn there is no GPU
    import torch

    return torch.cuda.is_available()


def label(fp: dict, nproc: int | None = None, nnodes: int = 1) -> str:
    """Short human label: '8xNVIDIA H100 80GB HBM3' or '2-core AMD EPYC (avx512_bf16)'."""
    if fp.get("kind") == "cuda":
        count = (nproc or fp.get("gpu_count") or 1) * nnodes
        return f"{count}x{fp.get('gpu_name')}"
    isa = fp.get("isa") or []
    best = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "sve", "asimd") if f in isa), None)
    return f"{fp.get('cpu_count')}-core {fp.get('cpu_model')}" + (f" ({best})" if best else "")


def differences(a: dict | None, b: dict | None) -> list[str]:
    """The fields in which two fingerprints differ, as readable phrases; [] = same machine class.

    A missing fingerprint (evidence from before fingerprints, or a self-reported log) is itself a difference."""
    if not a or not b:
        return ["no hardware fingerprint on " + ("both sides" if not a and not b else "one side")]
    if a.get("kind") != b.get("kind"):
        return [f"device kind {a.get('kind')} vs {b.get('kind')}"]
    out = []
    fields = GPU_FIELDS if a.get("kind") == "cuda" else CPU_FIELDS
    for field in fields:
        x, y = a.get(field), b.get(field)
        if x == y:
            continue
        if field == "isa":
            only_a, only_b = sorted(set(x or []) - set(y or [])), sorted(set(y or []) - set(x or []))
            parts = ([f"{', '.join(only_a)} only on the first"] if only_a else []) + \
                    ([f"{', '.join(only_b)} only on the second"] if only_b else [])
            out.append(f"CPU ISA flags differ ({'; '.join(parts)})")
        else:
            out.append(f"{field} {x!r} vs {y!r}")
    return out


def software() -> dict:
    """Software versions that go into a manifest (not part of the hardware comparison)."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": version("triton") or version("pytorch-triton"), "platform": platform.platform(),
            "hostname": platform.node()}


_LABEL = re.compile(r"^\s*(\d+)\s*x\s*(.+?)\s*$", re.I)  # a track's hardware label: "8xH100"


def matches(fingerprint: dict | None, wanted: str) -> bool | None:
    """Does a run's hardware fingerprint match a track's label like "8xH100"? None when it cannot be told.

    The count must be equal and the model must appear as a word of the GPU's name ("H100" in
    "NVIDIA H100 80GB HBM3", but not in "NVIDIA GH200 120GB").
    """
    m = _LABEL.match(wanted or "")
    if not m or not fingerprint:
        return None
    count, model = int(m.group(1)), m.group(2)
    name, have = fingerprint.get("gpu_name"), fingerprint.get("gpu_count")
    if have is not None and have != count:
        return False
    if name:
        if not re.search(rf"(?<![A-Za-z0-9]){re.escape(model)}(?![A-Za-z0-9])", name, re.I):
            return False
    if have is None or not name:
        return None
    return True
