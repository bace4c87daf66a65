"""Shared set-up of the paper-size benchmarks: random-weight CLIP ViT-B/32 + GPT-2 124M."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from metamapper.meta.episode import Episode
from metamapper.models.backbones import build_language_model, build_vision_encoder
from metamapper.models.factory import place_model
from metamapper.models.mapper import AttentionMapper
from metamapper.models.metamapper import MetaMapper

WORDS = ["dax", "blicket", "shously", "slation", "perpo"]


def paper_model(device: torch.device | None = None, precision: str = "auto") -> MetaMapper:
    """The paper's configuration: CLIP ViT-B/32 (512-d pooled) -> mapper (l=4, 8 heads) -> GPT-2,
    built on the CPU (the same weights everywhere) and moved to ``device``."""
    vision = build_vision_encoder("clip-vit-b32-random", mode="pooled")
    lm = build_language_model("gpt2-random")
    torch.manual_seed(0)
    mapper = AttentionMapper(visual_dim=512, embed_dim=768, prefix_len=4, num_heads=8)
    model = MetaMapper(vision=vision, lm=lm, mapper=mapper)
    return place_model(model, device, precision=precision) if device is not None else model


def random_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(n)]


def episodes(model: MetaMapper, *, tasks: int, ways: int, shots: int, queries_per_class: int,
             seed: int = 0) -> tuple[list[Episode], list[list[Image.Image]]]:
    """Episodes with features encoded once (the feature cache's role) and put on the model's
    device (as a run's feature table is, once), and their raw images."""
    out, images = [], []
    for t in range(tasks):
        n_s, n_q = ways * shots, ways * queries_per_class
        ims = random_images(n_s + n_q, seed=seed * 1000 + t)
        feats = model.encode_images(ims)  # (S + Q, 1, 512) on the model's device
        words = WORDS[:ways]
        out.append(Episode(
            features=feats,
            captions=[f"This is a {words[i % ways]}." for i in range(n_s)],
            questions=["This is a"] * n_q,
            answers=[words[j % ways] for j in range(n_q)],
        ))
        images.append(ims)
    return out, images


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Achieved float32 FLOP/s of a large square matmul on this CPU (the CPU's 'peak')."""
    import time

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
