"""Float32 against bfloat16 matrix products on this machine's CPU (why ``runtime.precision: auto``
keeps the LM in float32 on CPUs without native bfloat16). Prints one JSON line.

    python benchmarks/matmul_dtype.py
"""

from __future__ import annotations

import json
import time

import torch


def gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


if __name__ == "__main__":
    f32, bf16 = gflops(torch.float32), gflops(torch.bfloat16)
    print(json.dumps({"benchmark": "matmul_dtype", "threads": torch.get_num_threads(),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                      "gflops_float32": round(f32, 1), "gflops_bfloat16": round(bf16, 1),
                      "bfloat16_slowdown": round(f32 / bf16, 1)}))
