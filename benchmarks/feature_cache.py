"""Feature-cache fill throughput: EfficientNet-Lite0 (pooled) at batch 64 vs batch 1.

Fills two fresh temporary caches with the same Fashion-MNIST train images (256 at batch 64, the
first 64 of them at batch 1) after one warm-up call, and prints ONE JSON line with images/s of each
and their ratio. Also times the encoder's forward on 64 preprocessed images as the encoder runs it
(channels-last, one image per call on CPU) against the library's plain call on the whole batch.
Runs in well under two minutes on two CPU cores.

Usage::

    python benchmarks/feature_cache.py [--n64 256] [--n1 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import tempfile
import time

import torch

from metamapper.data.fashion import FashionImageSource
from metamapper.data.feature_cache import FeatureCache
from metamapper.models.backbones import build_vision_encoder


def rate(encoder, source, keys, batch_size: int) -> float:
    """Images per second filling a fresh cache with ``keys`` at ``batch_size``."""
    with tempfile.TemporaryDirectory() as root:
        cache = FeatureCache(root, encoder)
        start = time.perf_counter()
        report = cache.fill(source, keys, batch_size=batch_size, progress=False)
        elapsed = time.perf_counter() - start
        assert report.encoded == len(keys) and not report.skipped
    return len(keys) / elapsed


def forward_rates(encoder, pixels: torch.Tensor) -> tuple[float, float]:
    """Images/s of ``encoder(pixels)`` vs one plain ``extract_features`` call on the batch."""
    plain = copy.deepcopy(encoder.model).to(memory_format=torch.contiguous_format)
    out = []
    with torch.no_grad():
        for fn in (lambda: encoder(pixels), lambda: plain.extract_features(pixels)):
            fn()
            start = time.perf_counter()
            fn()
            out.append(len(pixels) / (time.perf_counter() - start))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n64", type=int, default=256, help="images encoded at batch 64")
    parser.add_argument("--n1", type=int, default=64, help="images encoded at batch 1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    encoder = build_vision_encoder("efficientnet-lite0", mode="pooled")
    source = FashionImageSource(split="train")
    keys = [source.key(i) for i in range(max(args.n64, args.n1))]
    encoder.encode([source.load(k) for k in keys[:8]])  # warm-up (allocator, kernels)
    batch64 = rate(encoder, source, keys[: args.n64], 64)
    batch1 = rate(encoder, source, keys[: args.n1], 1)
    ours, plain = forward_rates(encoder, encoder.preprocess([source.load(k) for k in keys[:64]]))
    print(json.dumps({
        "benchmark": "feature_cache_fill",
        "encoder": encoder.identity,
        "images_batch64": args.n64,
        "images_batch1": args.n1,
        "images_per_s_batch64": round(batch64, 2),
        "images_per_s_batch1": round(batch1, 2),
        "speedup_batch64_vs_1": round(batch64 / batch1, 2),
        "forward_images_per_s_ours": round(ours, 2),
        "forward_images_per_s_plain_batch64": round(plain, 2),
        "forward_speedup": round(ours / plain, 2),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
