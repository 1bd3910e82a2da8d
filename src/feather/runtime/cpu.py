"""What CPU this process runs on, as the kernels that ONNX Runtime picks see it.

ONNX Runtime's MLAS chooses its int8 kernels from CPUID at start-up: x86 with AVX-512 VNNI,
AVX-VNNI or AMX multiplies u8 x s8 with 32-bit accumulation; x86 with only AVX2 (or AVX-512
without VNNI) uses ``vpmaddubsw``, which adds pairs of u8 x s8 products in 16 bits with
saturation; aarch64 has its own dot-product kernels (``sdot``/``udot``, ``smmla`` with i8mm).
Quantized accuracy depends on which of these runs (docs/quantization.md), so the quantizer,
its report and the benchmarks say which one it was.

The features come from numpy's runtime dispatch table, which reads CPUID itself (on x86) or
the kernel's hwcaps (on aarch64): under ``qemu-x86_64 -cpu Haswell`` it reports what the
emulated CPU has, where ``/proc/cpuinfo`` would still show the host's. AMX and the VEX-encoded
AVX-VNNI are not in numpy's table; they are read from ``/proc/cpuinfo`` and only believed when
CPUID agrees on the base they need (AVX-512F for AMX, AVX2 for AVX-VNNI) and the file lists no
feature that CPUID denies (else it describes the host of an emulated CPU).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

# numpy's names -> ours, in the order a table shows them
_X86 = (("AVX2", "avx2"), ("AVX512F", "avx512f"), ("AVX512VNNI", "avx512_vnni"))
_ARM = (("ASIMD", "neon"), ("ASIMDDP", "dotprod"), ("SVE", "sve"))
_PROC_EXTRA = {"amx_int8": ("amx", "avx512f"), "avx_vnni": ("avx_vnni", "avx2"), "i8mm": ("i8mm", "neon")}
_PROC_NAMES = {"avx2": "avx2", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni",  # ours -> /proc/cpuinfo's flag
               "neon": "asimd", "dotprod": "asimddp", "sve": "sve"}


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # platform.machine(): x86_64, aarch64, ...
    model: str
    cores: int  # usable by this process (affinity)
    features: tuple[str, ...]  # the ones that decide ONNX Runtime's int8 and fp32 kernels

    @property
    def int8_kernel(self) -> str:
        """Which int8 GEMM family ONNX Runtime uses here, and whether u8 x s8 can saturate."""
        f = set(self.features)
        if self.arch in ("x86_64", "AMD64", "i686", "x86"):
            if "amx" in f:
                return "amx"
            if f & {"avx512_vnni", "avx_vnni"}:
                return "vnni"
            return "avx512-u8s8-saturating" if "avx512f" in f else "avx2-u8s8-saturating"
        if self.arch in ("aarch64", "arm64"):
            return "arm64-i8mm" if "i8mm" in f else ("arm64-dotprod" if "dotprod" in f else "arm64-neon")
        return "other"

    @property
    def u8s8_saturates(self) -> bool:
        """True where ONNX Runtime's default u8 x s8 kernel adds product pairs in 16 bits."""
        return self.int8_kernel.endswith("saturating")

    def line(self) -> str:
        feats = " ".join(self.features) or "none of avx2/avx512f/vnni/amx/neon/dotprod"
        return f"{self.model} ({self.arch}, {self.cores} cores; {feats}; int8 kernel {self.int8_kernel})"

    def to_json(self) -> dict:
        return {**asdict(self), "features": list(self.features), "int8_kernel": self.int8_kernel}


def detect() -> CpuInfo:
    arch = platform.machine()
    have = _numpy_features()
    table = _X86 if arch in ("x86_64", "AMD64", "i686", "x86") else _ARM
    features = [ours for theirs, ours in table if have.get(theirs)]
    flags = _proc_flags()
    # /proc/cpuinfo describes another CPU when it lists a feature CPUID denies (qemu -cpu Haswell
    # on an AVX-512 host): then none of its extras count, AVX-VNNI included (CPUID says AVX2 there)
    foreign = any(name in flags and ours not in features for ours, name in _PROC_NAMES.items()
                  if ours in dict(table).values())
    for flag, (ours, base) in _PROC_EXTRA.items():
        if not foreign and flag in flags and base in features and ours not in features:
            features.append(ours)
    return CpuInfo(arch, _model(), _cores(), tuple(features))


def _numpy_features() -> dict:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found
        except ImportError:
            return {}
    return dict(found)


def _proc_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return ""


def _proc_flags() -> set[str]:
    for line in _proc_cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _model() -> str:
    """x86: /proc/cpuinfo's model name. aarch64 kernels print no model name: the board's name
    from the device tree (a Jetson says which one it is), else the ARM part number."""
    fields = {}
    for line in _proc_cpuinfo().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    board = _read_text("/proc/device-tree/model").strip("\x00 \n")
    part = fields.get("CPU part")
    if board or part:
        return ", ".join(filter(None, (board, part and f"ARM CPU part {part}")))
    return platform.processor() or platform.machine() or "unknown"


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return ""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (``MemAvailable`` in /proc/meminfo: free
    plus reclaimable cache), or None where that cannot be read. The export and the capture size
    their work against it (docs/architecture.md, "Memory")."""
    for line in _read_text("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None
