"""Probe (issue #19): can the frozen LM bind words to images by token identity on any domain?

The earlier probes found that on a domain the mapper never saw, the LM fails to match a query's
prefix to its support's even when the features tell them apart. Here no trained mapper is used at
all: each image's prefix is made of real token embeddings chosen by a locality-sensitive hash of
its features, centred on its row's images (its task: the support and the query), so that images
alike get the same tokens in any domain. Prefix position ``j`` takes one of ``2**bits`` fixed
tokens, chosen by ``bits`` signs of fixed random projections. If the LM copies the word after the
support whose tokens the query repeats, the accuracy approaches that of the hash's own nearest
neighbour (printed beside it).

    python experiments/hash_prefix.py RUN_DIR [--dataset fashion-open-ended] [--split val]
                                      [--tasks 300] [--ways 2] [--bits 1 2 4]   # a JSON line each
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence

import torch
from copy_prefix import answered, slots_by_row

from metamapper.models.metamapper import MetaMapper, PackedBatch


def hashed_prefixes(bits: int, seed: int = 0):  # noqa: ANN201
    """``task_prefixes`` whose prefixes are token embeddings picked by a per-row centred LSH."""
    gen = torch.Generator().manual_seed(seed)
    cache: dict[str, torch.Tensor] = {}

    def task_prefixes(model: MetaMapper, features: torch.Tensor, batch: PackedBatch,
                      row_task: Sequence[int] | torch.Tensor, params: Sequence[Mapping[str, torch.Tensor]]
                      ) -> torch.Tensor:
        n_pos = model.mapper.prefix_len
        if not cache:
            dim = features[0].numel()
            cache["proj"] = torch.randn(dim, n_pos * bits, generator=gen)
            ids = 1000 + torch.randperm(19000, generator=gen)[: n_pos * 2 ** bits]  # ordinary tokens
            cache["tokens"] = model.lm.embed(ids).reshape(n_pos, 2 ** bits, -1)
        flat = model.mapper.standardized(features[batch.image_index].float()).reshape(len(batch.image_index), -1)
        weight = 2 ** torch.arange(bits)
        out = torch.empty(len(flat), n_pos, cache["tokens"].shape[-1], dtype=cache["tokens"].dtype)
        for slots in slots_by_row(batch):
            z = flat[slots] - flat[slots].mean(0, keepdim=True)  # centred on the row's images
            code = (z @ cache["proj"] > 0).long().reshape(len(slots), n_pos, bits)
            index = (code * weight).sum(-1)  # (k, n_pos) in 0 .. 2**bits - 1
            out[slots] = cache["tokens"][torch.arange(n_pos), index]
        return out

    return task_prefixes, cache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="any run of the default backbones (its mapper only standardises)")
    p.add_argument("--dataset", default="fashion-open-ended")
    p.add_argument("--split", default="val")
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--ways", type=int, default=2)
    p.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4])
    a = p.parse_args()
    from metamapper.data.feature_table import FeatureTable
    from metamapper.data.sources import evaluation_tasks
    from metamapper.eval.metrics import exact_match
    from metamapper.pretrained import load_run

    run = load_run(a.run_dir, with_vision=True)
    model = run.model.eval()
    ts = evaluation_tasks(a.dataset, data=None, ways=a.ways, shots=1, n_tasks=a.tasks, split=a.split)
    keys = [k for t in ts.tasks for k in t.image_keys()]
    table = FeatureTable.from_cache(model.vision, ts.images, keys, progress=False)
    for bits in a.bits:
        fn, cache = hashed_prefixes(bits)
        hits = n = nn_hits = 0
        for t, ep, preds in answered(model, ts.tasks, table, fn):
            words = [s.caption[len(t.queries[0].question):] for s in t.support]
            flat = model.mapper.standardized(ep.features.float()).reshape(len(ep.features), -1)
            k = len(words)
            for qi, (pred, answer) in enumerate(zip(preds, ep.answers, strict=True)):
                rows = torch.cat([flat[:k], flat[k + qi:k + qi + 1]])
                code = ((rows - rows.mean(0)) @ cache["proj"] > 0).float()
                agree = (code[:k] == code[k]).float().sum(-1)  # the hash's nearest neighbour
                n += 1
                hits += exact_match(pred, answer)
                nn_hits += exact_match(words[int(agree.argmax())], answer)
        print(json.dumps({"run": a.run_dir, "dataset": a.dataset, "split": a.split, "ways": a.ways,
                          "tasks": len(ts.tasks), "bits": bits, "queries": n, "accuracy": round(hits / n, 4),
                          "nn_hash": round(nn_hits / n, 4)}), flush=True)


if __name__ == "__main__":
    main()
