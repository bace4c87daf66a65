"""The frozen LM in float32 vs bfloat16 (``runtime.precision``) on the embedded default.

SmolLM2-135M + the default mapper on 4 EfficientNet grid2 tokens of 1280 (random features of that
shape: the time depends only on shapes), in_context method, 2-way 1-shot. Times one meta-update
(16 tasks, 4 queries per row, forward + backward) and the in-context answering of 32 test tasks,
for each dtype in the same run, and the matmul rate of each dtype. Prints one JSON line.
"""

from __future__ import annotations

import functools
import json
import time

import torch

from metamapper.config import load_config
from metamapper.eval.fewshot import answer_episodes
from metamapper.meta.episode import Episode, in_context_rows
from metamapper.meta.maml import InnerLoop, meta_loss
from metamapper.methods import get_method
from metamapper.models.factory import build_model, set_lm_dtype

WORDS = ["dax", "blicket", "wug", "toma", "zorp", "fep", "kiki", "bouba"]


def episodes(n: int, queries: int, seed: int = 0) -> list[Episode]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n):
        a, b = WORDS[t % 8], WORDS[(t + 3) % 8]
        out.append(Episode(
            features=torch.randn(2 + queries, 4, 1280, generator=g),
            captions=[f"This is a {a}.", f"This is a {b}."],
            questions=["This is a"] * queries,
            answers=[(a, b)[i % 2] for i in range(queries)],
        ))
    return out


def best_of(fn, n: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gflops(dtype: torch.dtype) -> float:
    a, b = torch.randn(384, 768, dtype=dtype), torch.randn(768, 3072, dtype=dtype)
    return 2 * 384 * 768 * 3072 / best_of(lambda: a @ b, 20) / 1e9


def main() -> None:
    train_eps, test_eps = episodes(16, 4), episodes(32, 2, seed=1)
    rows = functools.partial(in_context_rows, queries_per_row=4)
    out: dict[str, object] = {"benchmark": "lm_dtype",
                              "config": "fashion.yaml (SmolLM2-135M, grid2 features), in_context"}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(None)
        torch.manual_seed(0)
        model = build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=1280)
        set_lm_dtype(model, dtype)

        def update(model=model) -> None:
            model.train()
            loss = meta_loss(model, train_eps, [[{} for _ in train_eps]], rows)
            loss.backward()

        def answer(model=model) -> None:
            model.eval()
            answer_episodes(model, test_eps, method=get_method("in_context"), loop=InnerLoop(steps=0))

        out[dtype] = {"s_per_meta_update": round(best_of(update), 3),
                      "s_per_32_test_tasks": round(best_of(answer, 2), 3),
                      "matmul_gflops": round(matmul_gflops(getattr(torch, dtype)), 1)}
    f32, b16 = out["float32"], out["bfloat16"]
    out["speedup_meta_update"] = round(f32["s_per_meta_update"] / b16["s_per_meta_update"], 2)
    out["speedup_test"] = round(f32["s_per_32_test_tasks"] / b16["s_per_32_test_tasks"], 2)
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
