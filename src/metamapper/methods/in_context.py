"""``in_context`` (the default): the support pairs in the LM's context before each query.

A task becomes ``[p(x_1) "This is a dax." p(x_2) "This is a blicket." p(x_q) "This is a"]``; the
mapper is meta-trained on that input with a fresh made-up word per class per task, so that it must
bind words to images rather than memorise them. No gradient steps at test time unless asked
(``--steps``: inner steps on the support captions first, the run's own if it trained with some).
"""

from __future__ import annotations

from metamapper.meta.episode import in_context_rows
from metamapper.registry import METHODS, Method
from metamapper.train import episodic

METHOD = Method(
    name="in_context",
    description="episodic meta-training with the support pairs in the language model's context "
                "(no gradient steps at test time unless asked)",
    recipe=episodic.train,
    query_rows=in_context_rows,
    default_steps=0,
    queries_per_row=True,
)
METHODS.register(METHOD.name)(METHOD)
