"""What CPU this is, without torch: its model name and instruction-set flags (for logs, bench
lines and the choice of precision, which is still measured, never assumed from the flags)."""

from __future__ import annotations

import functools
import platform


@functools.cache
def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """x86 feature flags (``avx512_bf16``, ``amx_bf16`` ...); empty where /proc/cpuinfo has none."""
    return frozenset(_cpuinfo().get("flags", "").split())


def has_native_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), which is when
    bf16 weights may run faster than fp32; whether they do is measured (`lookalike.device`)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags or "bf16" in flags  # "bf16": Arm's FEAT_BF16
