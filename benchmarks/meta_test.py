"""Seconds per meta-test episode at paper size: our path vs the pattern of the authors' code.

Random-weight CLIP ViT-B/32 + GPT-2 124M, 2-way (``--ways``) 1-shot, 1 query, 5 adaptation steps.
Ours: features from the cache (on the device), functional adaptation of a batch of tasks at once
(per-task mapper parameters, one LM forward for all their support rows; 16 tasks here, ``--batch``;
``evaluate`` uses 32), batched KV-cached greedy generation. The time of one task alone is
reported beside it. Authors' pattern (``--skip-authors`` leaves it out): a deep copy of the whole
model per task, the image encoder re-run at every step, and unbatched generation that recomputes
the whole sequence per token and sorts the full vocabulary (for a nucleus filter whose result is
ignored). Prints one JSON line.

Run::

    python benchmarks/meta_test.py [--device cuda] [--ways 5] [--precision float32] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from _hardware import add_device_args, compile_lm, hardware, reset_peak_memory, setup, timed
from _paper_size import episodes, paper_model
from torch.utils.flop_counter import FlopCounterMode

from metamapper.device import synchronize
from metamapper.eval.fewshot import answer_episodes
from metamapper.meta.episode import Episode, caption_rows, query_rows
from metamapper.meta.maml import InnerLoop
from metamapper.methods import get_method
from metamapper.models.metamapper import MetaMapper

NEW_TOKENS = 10


def ours(model: MetaMapper, eps: list[Episode]) -> None:
    answer_episodes(model, eps, method=get_method("maml"), loop=InnerLoop(steps=5, lr=0.01),
                    max_new_tokens=NEW_TOKENS)


def authors(model: MetaMapper, eps: list[Episode], images: list[list]) -> float:
    t = time.perf_counter()
    weight = next(model.vision.parameters())
    for ep, ims in zip(eps, images, strict=True):
        m = copy.deepcopy(model)  # the whole model, frozen backbones included, per task
        opt = torch.optim.SGD(m.mapper.parameters(), lr=0.01)
        pixels = m.vision.preprocess(ims).to(device=weight.device, dtype=weight.dtype)
        for _ in range(5):
            feats = m.vision(pixels).float()  # the frozen encoder re-run at every step
            sup = Episode(features=feats, captions=ep.captions, questions=[], answers=[])
            loss = m.loss(feats, m.pack(caption_rows(sup)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            feats = m.vision(pixels).float()
            rows = query_rows(Episode(features=feats, captions=ep.captions, questions=ep.questions,
                                      answers=ep.answers), with_answer=False)
            for row in rows:  # one query at a time
                batch = m.pack([row])
                emb = m.embed(feats, batch)
                for _ in range(NEW_TOKENS):  # no KV cache: the whole sequence every step
                    logits = m.lm.model(inputs_embeds=emb).logits[:, -1]
                    sorted_logits, _ = torch.sort(logits, descending=True)  # nucleus filter...
                    torch.cumsum(torch.softmax(sorted_logits, -1), -1)  # ...then ignored
                    tok = logits.argmax(-1)
                    emb = torch.cat([emb, m.lm.embed(tok)[:, None]], 1)
        del m
    synchronize(weight.device)
    return (time.perf_counter() - t) / len(eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser, repeats=1)
    parser.add_argument("--ways", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="tasks adapted and answered together")
    parser.add_argument("--skip-authors", action="store_true", help="leave out the authors' pattern")
    args = parser.parse_args()
    device = setup(args)
    model = paper_model(device, args.precision)
    model.eval()
    eps, images = episodes(model, tasks=args.batch, ways=args.ways, shots=1, queries_per_class=1)
    n_s = args.ways  # 1 shot
    eps = [Episode(features=e.features[: n_s + 1], captions=e.captions, questions=e.questions[:1],
                   answers=e.answers[:1]) for e in eps]  # 1 query per episode
    images = [ims[: n_s + 1] for ims in images]
    with FlopCounterMode(display=False) as fc:  # counted eagerly: compiling changes no FLOP
        ours(model, eps)
    flops = fc.get_total_flops()
    if args.compile:
        compile_lm(model)
    reset_peak_memory(device)
    best, median = timed(lambda: ours(model, eps), device, args.repeats)
    single, _ = timed(lambda: ours(model, eps[:1]), device, args.repeats)
    per_ep = best / len(eps)
    out = {
        "benchmark": "meta_test",
        "config": f"clip-vit-b32-random + gpt2-random, {args.ways}-way 1-shot, 1 query, 5 steps, "
                  f"{NEW_TOKENS} new tokens",
        "tasks_per_batch_ours": len(eps),
        "s_per_episode_ours": round(per_ep, 4),
        "s_per_episode_ours_median": round(median / len(eps), 4),
        "s_per_episode_ours_one_task_alone": round(single, 4),
        "repeats": args.repeats,
        "gflop_per_episode": round(flops / len(eps) / 1e9, 2),
        "projected_s_1000_episodes": round(per_ep * 1000, 1),
        **hardware(device, flops=flops, seconds=best, precision=args.precision, compiled=args.compile),
    }
    if not args.skip_authors:
        s_auth = authors(model, eps[:2], images[:2])
        out.update(s_per_episode_authors_pattern=round(s_auth, 3), speedup=round(s_auth / per_ep, 1),
                   speedup_one_task_alone=round(s_auth / single, 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
