"""What CPU this is, in the terms that decide speed and numerics: SIMD flags, AVX-512, VNNI, BF16, AMX.

Torch-free: training records it in every checkpoint, the benchmarks in every report.
"""

from __future__ import annotations

import os
import platform

# Flags worth showing: they explain most of the CPU differences between backends.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")

def cpu_info() -> dict:
    """CPU model, SIMD flags present and core counts (Linux /proc/cpuinfo; best effort elsewhere)."""
    model, flags, physical = platform.processor() or platform.machine(), set(), set()
    try:
        with open("/proc/cpuinfo") as f:
            phys_id = core_id = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    model = value
                elif key == "flags":
                    flags.update(value.split())
                elif key == "physical id":
                    phys_id = value
                elif key == "core id":
                    core_id = value
                    physical.add((phys_id, core_id))
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    present = [f for f in SIMD_FLAGS if f in flags]
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "physical_cores": len(physical) or None,
        "simd": present,
        "avx512": "avx512f" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "amx": "amx_tile" in flags,
    }


# oneDNN (inside OpenVINO and PyTorch) dispatches no instruction set above this variable's value
# (https://uxlfoundation.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html); a figure taken under
# it is not this CPU's: isa_line says so.  ONNX Runtime's MLAS kernels have no such cap.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_CAP_MARK = "; oneDNN capped at "


def isa_cap(environ=None) -> str | None:
    """The oneDNN ISA cap in effect (``AVX512_CORE_VNNI``, ``AVX2`` ...), or None (``ALL`` or unset)."""
    environ = os.environ if environ is None else environ
    value = next((environ[v].strip() for v in ISA_CAP_VARIABLES if environ.get(v, "").strip()), None)
    return None if value is None or value.upper() == "ALL" else value.upper()


def isa_line(cpu: dict, environ=None) -> str:
    """One line naming what decides low-precision speed: ``AVX-512 yes, VNNI yes, BF16 yes, AMX no``,
    with ``; oneDNN capped at X (ONEDNN_MAX_CPU_ISA)`` when the environment caps oneDNN's dispatch."""
    simd = set(cpu.get("simd", []))
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    line = (f"AVX2 {yes('avx2' in simd)}, AVX-512 {yes(cpu.get('avx512'))}, VNNI {yes(cpu.get('vnni'))}, "
            f"BF16 {yes(bool({'avx512_bf16', 'amx_bf16'} & simd))}, AMX {yes(cpu.get('amx'))}")
    cap = isa_cap(environ)
    return line if cap is None else f"{line}{_CAP_MARK}{cap} (ONEDNN_MAX_CPU_ISA)"


def line_cap(line: str) -> str | None:
    """The oneDNN cap an :func:`isa_line` names (``AVX512_CORE_VNNI`` ...), or None."""
    return line.partition(_CAP_MARK)[2].split(" ")[0] or None


def cpu_kind(cpu: dict) -> str:
    """The class of CPU a quality or speed figure holds for: ``amx``, ``avx512-bf16`` (no AMX),
    ``avx512-vnni``, ``avx512``, ``avx2`` or ``other`` (the kinds the project's machines come in)."""
    simd = set(cpu.get("simd", []))
    if cpu.get("amx"):
        return "amx"
    if "avx512_bf16" in simd:
        return "avx512-bf16"
    if cpu.get("avx512"):
        return "avx512-vnni" if cpu.get("vnni") else "avx512"
    return "avx2" if "avx2" in simd else "other"
