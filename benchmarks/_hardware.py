"""Device options and the hardware figures each benchmark reports beside its timings.

Every device benchmark takes ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``),
``--precision`` (``runtime.precision``, the frozen backbones' dtype: ``auto`` is the LM in bfloat16
where the hardware computes it natively, CUDA or a CPU with AVX512-BF16/AMX, and the vision encoder
in bfloat16 on CUDA; float32 elsewhere),
``--compile`` (``torch.compile`` of the LM's transformer, to measure whether it pays) and
``--repeats`` (timed repeats after one warm-up; the best is reported, as before, and the median).
"""

from __future__ import annotations

import argparse
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from metamapper.device import resolve_device, setup_device, synchronize
from metamapper.models.metamapper import MetaMapper

# dense (no sparsity) bfloat16 tensor-core peaks in TFLOP/s, from the vendors' data sheets;
# the first pattern found in torch.cuda.get_device_name() wins (e.g. "NVIDIA H100 80GB HBM3")
DENSE_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bB200\b", 2250.0),
    (r"\bG?H200\b", 989.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100 NVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM
    (r"\bH800\b", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bA800\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL4\b", 121.0),
)

PAPER_UPDATES = 15_000  # meta-updates a paper-config run is projected for


def add_device_args(parser: argparse.ArgumentParser, *, repeats: int) -> None:
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="runtime.precision, the frozen backbones' dtype (auto: the LM in bfloat16 where "
                             "native, the vision encoder in bfloat16 on CUDA; float32 elsewhere)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the LM's transformer (measure whether it is faster)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats after a warm-up")


def setup(args: argparse.Namespace) -> torch.device:
    """The benchmark's device, made current (TF32 matmuls on CUDA)."""
    return setup_device(resolve_device(args.device))


def compile_lm(model: MetaMapper) -> None:
    """Compile the LM's transformer in place: the loss (``lm.backbone``) and generation
    (``lm.model``, which calls the same module) both go through the compiled forward."""
    model.lm.backbone.compile()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float]:
    """(best, median) seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The GPU's dense bfloat16 peak (None when it is not in the table, or not a GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for pattern, peak in DENSE_BF16_PEAK_TFLOPS if re.search(pattern, name)), None)


def hardware(device: torch.device, *, flops: float, seconds: float,
             precision: str, compiled: bool) -> dict[str, Any]:
    """The figures every benchmark line carries: device, peak memory, achieved TFLOP/s."""
    achieved = flops / seconds / 1e12
    peak = bf16_peak_tflops(device)
    if device.type == "cuda":
        memory = {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                  "peak_memory_kind": "torch.cuda.max_memory_allocated"}
    else:  # the whole process's peak resident memory (Linux reports KiB)
        memory = {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "peak_memory_kind": "max RSS of the process"}
    return {
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "compiled": compiled,
        **memory,
        "achieved_tflops": round(achieved, 4),
        "bf16_dense_peak_tflops": peak,
        "fraction_of_bf16_peak": round(achieved / peak, 4) if peak else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
