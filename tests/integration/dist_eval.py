"""``python dist_eval.py RUN OUT.json`` (under ``torchrun``, or ``main`` in process): evaluate a run on 9
synthetic tasks with each method, keeping every task's example; rank 0 writes
``{method: EvalResult.to_dict()}`` as JSON. Run by ``test_distributed.py``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from metamapper import MetaMapper, distributed
from metamapper.config import InnerLoop
from metamapper.data.synthetic import build_synthetic_tasks
from metamapper.eval.fewshot import evaluate
from metamapper.methods import get_method

SETTINGS = {  # name -> (method, adaptation steps, support fit)
    "in_context": ("in_context", 0, False),
    "maml": ("maml", 1, True),
    "standard": ("standard", 0, True),
    "always-dax": ("maml", 1, True),  # the LM answers "dax"
}
TASKS = {"split": "test", "ways": 2, "shots": 1, "n_tasks": 9, "seed": 5}


def always_dax(features: torch.Tensor, rows: list, *args: object, **kwargs: object) -> list[str]:
    """In place of ``MetaMapper.generate``: " dax" to every prompt, so that the accuracy and the
    support fit are known shares of the tasks' answers and captions."""
    return [" dax"] * len(rows)


def main(run: str, out: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    model = MetaMapper.from_pretrained(run)
    ts = build_synthetic_tasks(**TASKS)
    cache: dict[str, torch.Tensor] = {}

    def features_of(keys: list[str]) -> torch.Tensor:
        for k in keys:  # one image at a time: the same arithmetic whichever rank encodes it
            if k not in cache:
                cache[k] = model.encode_images([ts.images.load(k)])[0]
        return torch.stack([cache[k] for k in keys])

    results = {}
    for name, (method, steps, support_fit) in SETTINGS.items():
        if name == "always-dax":
            model.generate = always_dax
        results[name] = evaluate(model, ts.tasks, features_of, method=get_method(method),
                                 loop=InnerLoop(steps=steps), support_fit=support_fit, progress=False,
                                 distributed=True, n_examples=100, batch_tasks=2,
                                 max_new_tokens=4).to_dict()
    del model.generate
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    distributed.shutdown()  # as the CLI leaves its group


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
