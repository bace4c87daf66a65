"""``maml``: the paper's method. A few SGD steps of the mapper on the support captions
(``[p(x_i); caption_i]``), then each query is answered from ``[p(x_q); question]`` alone; the
outer loop meta-learns the mapper's initialisation (``train.inner``: steps, lr, first_order)."""

from __future__ import annotations

from metamapper.meta.episode import query_rows
from metamapper.registry import METHODS, Method
from metamapper.train import episodic

METHOD = Method(
    name="maml",
    description="episodic meta-training with MAML: the mapper adapts to each support set with a few "
                "gradient steps (the paper's method)",
    recipe=episodic.train,
    query_rows=query_rows,
    default_steps=5,  # the paper's
    support_fit=True,  # an inner loop that cannot write the support words shows in validation
)
METHODS.register(METHOD.name)(METHOD)
