"""``standard``: non-episodic (ClipCap-style) captioning, the paper's baseline. Plain
mini-batches of (image, caption) pairs; at test time each query is answered from
``[p(x_q); question]`` with the mapper as trained (``maml`` adapts such a run instead)."""

from __future__ import annotations

from metamapper.meta.episode import query_rows
from metamapper.registry import METHODS, Method
from metamapper.train import standard

METHOD = Method(
    name="standard",
    description="non-episodic captioning (ClipCap-style), the paper's baseline",
    recipe=standard.train,
    query_rows=query_rows,
    adapts=False,
    unit="captioned images",
)
METHODS.register(METHOD.name)(METHOD)
