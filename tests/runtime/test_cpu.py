"""feather.runtime.cpu: which int8 kernels ONNX Runtime picks, from the CPU's features."""

from __future__ import annotations

import platform

import pytest

from feather.runtime import cpu


@pytest.mark.parametrize(("arch", "features", "kernel", "saturates"), [
    ("x86_64", ("avx2",), "avx2-u8s8-saturating", True),
    ("x86_64", ("avx2", "avx512f"), "avx512-u8s8-saturating", True),  # Skylake-SP: AVX-512 without VNNI
    ("x86_64", ("avx2", "avx512f", "avx512_vnni"), "vnni", False),
    ("x86_64", ("avx2", "avx_vnni"), "vnni", False),  # Alder Lake's VEX-encoded VNNI
    ("x86_64", ("avx2", "avx512f", "avx512_vnni", "amx"), "amx", False),
    ("aarch64", ("neon",), "arm64-neon", False),
    ("aarch64", ("neon", "dotprod"), "arm64-dotprod", False),
    ("aarch64", ("neon", "dotprod", "i8mm"), "arm64-i8mm", False),
])
def test_int8_kernel_follows_the_features(arch, features, kernel, saturates):
    info = cpu.CpuInfo(arch, "some CPU", 4, features)
    assert info.int8_kernel == kernel and info.u8s8_saturates is saturates
    assert kernel in info.line() and info.to_json()["int8_kernel"] == kernel


def test_this_host_is_described_from_cpuid():
    host = cpu.detect()
    assert host.arch == platform.machine() and host.cores >= 1 and host.model
    from numpy._core._multiarray_umath import __cpu_features__ as numpy_sees

    if host.arch == "x86_64":
        assert ("avx2" in host.features) == bool(numpy_sees["AVX2"])
        assert ("avx512_vnni" in host.features) == bool(numpy_sees["AVX512VNNI"])


def test_amx_from_proc_cpuinfo_needs_avx512_from_cpuid(monkeypatch):
    """Under qemu -cpu Haswell /proc/cpuinfo is the host's: its amx flag must not count."""
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: "model name\t: Xeon\nflags\t\t: avx2 avx512f amx_int8 amx_tile\n")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu, "_numpy_features", lambda: {"AVX2": True, "AVX512F": False})
    assert cpu.detect().features == ("avx2",) and cpu.detect().int8_kernel == "avx2-u8s8-saturating"
    monkeypatch.setattr(cpu, "_numpy_features", lambda: {"AVX2": True, "AVX512F": True, "AVX512VNNI": True})
    assert cpu.detect().int8_kernel == "amx" and cpu.detect().model == "Xeon"


def test_avx_vnni_of_the_host_does_not_count_under_an_emulated_avx2_cpu(monkeypatch):
    """A Sapphire Rapids host lists avx_vnni too, and AVX-VNNI needs only AVX2, which Haswell has:
    the file lists avx512f, which CPUID denies, so it is the host's and none of its extras count
    (ONNX Runtime picks its kernels from CPUID: the saturating AVX2 ones there)."""
    host = "model name\t: Xeon\nflags\t\t: avx2 avx512f avx512_vnni avx_vnni amx_int8\n"
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: host)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu, "_numpy_features", lambda: {"AVX2": True, "AVX512F": False, "AVX512VNNI": False})
    assert cpu.detect().features == ("avx2",) and cpu.detect().int8_kernel == "avx2-u8s8-saturating"
    # an AVX2-only CPU with AVX-VNNI (Alder Lake): the file agrees with CPUID, its avx_vnni counts
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: "model name\t: Core\nflags\t\t: avx2 avx_vnni\n")
    assert cpu.detect().features == ("avx2", "avx_vnni") and cpu.detect().int8_kernel == "vnni"


def test_aarch64_board_and_part(monkeypatch):
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n"
                                                      "CPU part\t: 0xd42\n")
    monkeypatch.setattr(cpu, "_read_text", lambda path: "NVIDIA Jetson Orin Nano Developer Kit\x00")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(cpu, "_numpy_features", lambda: {"ASIMD": True, "ASIMDDP": True})
    info = cpu.detect()
    assert info.model == "NVIDIA Jetson Orin Nano Developer Kit, ARM CPU part 0xd42"
    assert info.features == ("neon", "dotprod", "i8mm") and info.int8_kernel == "arm64-i8mm"
