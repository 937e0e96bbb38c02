"""Where the model runs and in what precision: resolved in one place for ingest, the service,
fine-tuning and evaluation (``DEVICE``, ``PRECISION``).

``DEVICE=auto`` takes the first CUDA device torch sees, else the CPU. Inference runs in bf16 on a
GPU (tensor cores; vectors within cosine 0.999 of fp32); on a CPU with bf16 instructions it runs
bf16 weights when they measure faster at start (`lookalike.encoder.measure_cpu_precision`), fp32
otherwise. Training precision on a CPU is *measured* too, never assumed: bf16 autocast was 2x
faster than fp32 on one 2-core machine (AMX) and slower on another (avx512_bf16 without AMX), so
`fastest_training_precision` times a few steps of each on the real model and batch. The model's
identity never depends on the device or the precision.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lookalike.cpu import cpu_model
from lookalike.errors import LookalikeError
from lookalike.settings import DEVICE_PATTERN

log = logging.getLogger(__name__)

BF16, FP32 = "bf16", "fp32"
#: A bf16 warm-up this many times fp32's is not timed again: one-time costs do not explain it.
HOPELESS = 4.0


class DeviceUnavailable(LookalikeError):
    """DEVICE names an accelerator this machine (or this torch build) does not have."""

    status = 503
    code = "device_unavailable"


@dataclass(frozen=True)
class Placement:
    """A device and the precision the encoder uses on it."""

    device: torch.device
    precision: str  # "bf16" or "fp32"

    @property
    def bf16(self) -> bool:
        return self.precision == BF16

    def autocast(self) -> torch.autocast:
        """bf16 autocast on this device when the precision says so (a no-op context otherwise)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def describe(self) -> str:
        return f"{describe_device(self.device)}, {self.precision}"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device torch can use, or `DeviceUnavailable`."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise DeviceUnavailable(f"DEVICE={name!r}: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceUnavailable(
            f"DEVICE={name} but torch sees no CUDA device (torch {torch.__version__}, {build}): "
            "set DEVICE=cpu, or DEVICE=auto to use a GPU only where there is one"
        )
    device = torch.device(name if ":" in name else "cuda:0")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"DEVICE={name} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def inference_placement(device_setting: str = "auto", precision_setting: str = "auto") -> Placement:
    """Where the encoder embeds: bf16 on a GPU, fp32 on a CPU, unless PRECISION says otherwise."""
    device = resolve_device(device_setting)
    if precision_setting == "auto":
        precision = BF16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else FP32
    else:
        precision = precision_setting
    return Placement(device, precision)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def fastest_training_precision(device: torch.device, step: Callable[[bool], None], repeats: int = 2) -> str:
    """bf16 on a GPU; on a CPU whichever of fp32 and bf16 autocast runs ``step`` faster here.

    ``step(bf16)`` runs one training step (forward, backward, no optimiser update). Each precision
    gets one warm-up and ``repeats`` timed steps; bf16 must win by 10 % to be chosen.
    """
    if device.type == "cuda":
        return BF16 if torch.cuda.is_bf16_supported() else FP32
    return fastest_precision(step, "training", repeats)


def fastest_precision(run: Callable[[bool], None], what: str, repeats: int = 2) -> str:
    """fp32 or bf16, whichever runs ``run(bf16)`` faster here: one warm-up each, then ``repeats``
    rounds of one call each, alternating, and the fastest call of each counts; bf16 must win
    by 10 % to be chosen. Logged with the CPU's model.

    Timed one block after the other, a load that started or stopped between the blocks decided
    instead of the CPU; alternating, such a load meets both, and the fastest call is the pace the
    machine gives when it is free. (A demo started beside another training job chose fp32 at 5.0 s
    against 4.7 s a step, where bf16 alone runs twice as fast on that CPU: under a load that stays,
    no order of the calls helps.) bf16 stops being timed once its best call is twice fp32's, and
    is not timed at all when its warm-up took `HOPELESS` times fp32's: on a CPU without bf16
    instructions (a Zen 3 with AVX2 alone) one bf16 training step took 34 s against 3.6 s in fp32,
    and each one more is budget lost.
    """
    best = {FP32: _seconds(run, False), BF16: _seconds(run, True)}  # the warm-ups: upper bounds
    if best[BF16] >= HOPELESS * best[FP32]:
        repeats = 0
    for _ in range(repeats):
        for precision in (FP32, BF16):
            best[precision] = min(best[precision], _seconds(run, precision == BF16))
        if best[BF16] >= 2 * best[FP32]:
            break  # cannot win
    chosen = BF16 if best[BF16] < 0.9 * best[FP32] else FP32
    log.info(
        f"{what} precision measured",
        extra={"cpu": cpu_model(), "fp32_s": round(best[FP32], 4), "bf16_s": round(best[BF16], 4), "chosen": chosen},
    )
    return chosen


def _seconds(run: Callable[[bool], None], bf16: bool) -> float:
    started = time.perf_counter()
    run(bf16)
    return time.perf_counter() - started


def default_workers(device: torch.device) -> int:
    """Data-loading processes: every core but one beside a GPU (up to 16); 2 on a CPU, where the
    model needs the cores (measured best for ingest on 2 cores, bench/b1)."""
    if device.type == "cuda":
        return max(1, min(16, (os.cpu_count() or 2) - 1))
    return 2
