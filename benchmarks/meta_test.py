"""Seconds per meta-test episode at paper size: our path vs the pattern of the authors' code.

Random-weight CLIP ViT-B/32 + GPT-2 124M, 2-way 1-shot, 1 query, 5 adaptation steps.
Ours: features from the cache, functional adaptation of a batch of tasks at once (per-task mapper
parameters, one LM forward for all their support rows; 16 tasks here, ``evaluate`` uses 32),
batched KV-cached greedy generation. The time of one task alone is reported beside it.
Authors' pattern: a deep copy of the whole model per task, the image encoder re-run at every
step, and unbatched generation that recomputes the whole sequence per token and sorts the full
vocabulary (for a nucleus filter whose result is ignored). Prints one JSON line.
"""

from __future__ import annotations

import copy
import json
import time

import torch
from _paper_size import episodes, paper_model

from metamapper.eval.fewshot import answer_episodes
from metamapper.meta.episode import Episode, caption_rows, query_rows
from metamapper.meta.maml import InnerLoop

NEW_TOKENS = 10
BATCH = 16


def ours(model, eps: list[Episode]) -> float:
    t = time.perf_counter()
    answer_episodes(model, eps, query_format="prefix", loop=InnerLoop(steps=5, lr=0.01),
                    max_new_tokens=NEW_TOKENS)
    return (time.perf_counter() - t) / len(eps)


def authors(model, eps: list[Episode], images: list[list]) -> float:
    t = time.perf_counter()
    for ep, ims in zip(eps, images, strict=True):
        m = copy.deepcopy(model)  # the whole model, frozen backbones included, per task
        opt = torch.optim.SGD(m.mapper.parameters(), lr=0.01)
        pixels = m.vision.preprocess(ims)
        for _ in range(5):
            feats = m.vision(pixels)  # the frozen encoder re-run at every step
            sup = Episode(features=feats, captions=ep.captions, questions=[], answers=[])
            loss = m.loss(feats, m.pack(caption_rows(sup)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            feats = m.vision(pixels)
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
    return (time.perf_counter() - t) / len(eps)


def main() -> None:
    model = paper_model()
    model.eval()
    eps, images = episodes(model, tasks=BATCH, ways=2, shots=1, queries_per_class=1)
    eps = [Episode(features=e.features[:3], captions=e.captions, questions=e.questions[:1],
                   answers=e.answers[:1]) for e in eps]  # 1 query per episode
    images = [ims[:3] for ims in images]
    ours(model, eps[:1])  # warm-up
    s_ours = ours(model, eps)
    s_single = ours(model, eps[:1])
    s_auth = authors(model, eps[:2], images[:2])
    print(json.dumps({
        "benchmark": "meta_test",
        "config": "clip-vit-b32-random + gpt2-random, 2-way 1-shot, 1 query, 5 steps, "
                  f"{NEW_TOKENS} new tokens",
        "tasks_per_batch_ours": BATCH,
        "s_per_episode_ours": round(s_ours, 3),
        "s_per_episode_ours_one_task_alone": round(s_single, 3),
        "s_per_episode_authors_pattern": round(s_auth, 3),
        "speedup": round(s_auth / s_ours, 1),
        "speedup_one_task_alone": round(s_auth / s_single, 1),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
