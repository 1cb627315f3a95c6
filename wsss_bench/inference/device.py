"""The compute device of a run: resolution of ``--device``, autocast, peak memory."""

from __future__ import annotations

import contextlib
import resource
import sys

import torch

from wsss_bench.errors import WsssBenchError

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise WsssBenchError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WsssBenchError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WsssBenchError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise WsssBenchError(f"unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    return dev


def check_precision(precision: str, device: torch.device | None = None) -> None:
    if precision not in PRECISIONS:
        raise WsssBenchError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device is not None and device.type != "cuda":
        raise WsssBenchError("fp16 autocast needs a CUDA device (use bf16 or fp32 on the CPU)")


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak resident memory of this process and peak device memory allocated, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 1024.0**2)
    dev = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb": round(rss, 1), "peak_device_memory_mb": None if dev is None else round(dev, 1)}
