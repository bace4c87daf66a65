"""Benchmark: batched KV-cached greedy decoding vs the reference implementation's decoding loop.

Random-weight GPT-2 124M (the paper's LM compute, real GPT-2 vocabulary), 10 prompts of 20-40
embedding positions (varied lengths, right-padded as the model builds batches), exactly 10 new
tokens each. The reference pattern decodes one query at a time, recomputes the whole sequence at
every step (no KV cache), and sorts the full vocabulary for a nucleus filter whose result it then
ignores (argmax). Prints one JSON line.

Run::

    python benchmarks/generation.py
"""

from __future__ import annotations

import json
import platform
import time

import torch

from metamapper.models.backbones import LanguageModel, build_language_model
from metamapper.models.generation import generate

BATCH = 10
NEW_TOKENS = 10
MIN_LEN, MAX_LEN = 20, 40


@torch.no_grad()
def reference_decode(lm: LanguageModel, prompt: torch.Tensor, n: int, top_p: float = 0.9) -> list[int]:
    """One query, the authors' way: full recompute per step, a wasted nucleus sort, argmax."""
    seq = prompt[None]  # (1, T, d)
    out: list[int] = []
    for _ in range(n):
        logits = lm.model(inputs_embeds=seq).logits[:, -1]  # all positions' logits computed
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = torch.cumsum(sorted_logits.softmax(-1), -1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        filtered = logits.clone()
        filtered[:, sorted_idx[remove]] = float("-inf")  # computed, then ignored below
        token = int(logits.argmax(-1))
        out.append(token)
        seq = torch.cat([seq, lm.embed(torch.tensor([[token]]))], 1)
    return out


def main() -> None:
    lm = build_language_model("gpt2-random", seed=0)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (BATCH,), generator=g).tolist()
    scale = lm.model.get_input_embeddings().weight.std()
    prompts = [torch.randn(n, lm.embed_dim, generator=g) * scale for n in lengths]
    embeds = torch.zeros(BATCH, max(lengths), lm.embed_dim)
    mask = torch.zeros(BATCH, max(lengths), dtype=torch.long)
    for b, p in enumerate(prompts):  # right padding
        embeds[b, : len(p)] = p
        mask[b, : len(p)] = 1
    never_stop = frozenset()

    # warm-up (allocator, first-call overheads) on a small slice
    generate(lm, embeds[:2], mask[:2], max_new_tokens=2, stop_ids=never_stop)
    reference_decode(lm, prompts[0], 2)

    t0 = time.perf_counter()
    batched = generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS, stop_ids=never_stop)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    reference = [reference_decode(lm, p, NEW_TOKENS) for p in prompts]
    t_reference = time.perf_counter() - t0

    n_tokens = sum(len(ids) for ids in batched.token_ids)
    assert n_tokens == BATCH * NEW_TOKENS
    print(json.dumps({
        "benchmark": "generation",
        "lm": "gpt2-random (124M)",
        "batch": BATCH,
        "new_tokens_per_row": NEW_TOKENS,
        "prompt_lengths": lengths,
        "batched_kv_tok_s": round(n_tokens / t_batched, 1),
        "reference_tok_s": round(n_tokens / t_reference, 1),
        "speedup": round(t_reference / t_batched, 1),
        "same_tokens": batched.token_ids == reference,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
