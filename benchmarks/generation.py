"""Benchmark: batched KV-cached greedy decoding vs the reference implementation's decoding loop.

Random-weight GPT-2 124M (the paper's LM compute, real GPT-2 vocabulary), 10 prompts of 20-40
embedding positions (varied lengths, right-padded as the model builds batches), exactly 10 new
tokens each. The reference pattern decodes one query at a time, recomputes the whole sequence at
every step (no KV cache), and sorts the full vocabulary for a nucleus filter whose result it then
ignores (argmax). Prints one JSON line.

Run::

    python benchmarks/generation.py [--device cuda]
"""

from __future__ import annotations

import argparse
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
def reference_decode(
    lm: LanguageModel, prompt: torch.Tensor, n: int, top_p: float = 0.9
) -> list[int]:
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
        seq = torch.cat([seq, lm.embed(torch.tensor([[token]], device=seq.device))], 1)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    device = torch.device(parser.parse_args().device)
    lm = build_language_model("gpt2-random", seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (BATCH,), generator=g).tolist()
    scale = lm.model.get_input_embeddings().weight.std()
    prompts = [torch.randn(n, lm.embed_dim, generator=g) * scale.cpu() for n in lengths]
    embeds = torch.zeros(BATCH, max(lengths), lm.embed_dim)
    mask = torch.zeros(BATCH, max(lengths), dtype=torch.long)
    for b, p in enumerate(prompts):  # right padding
        embeds[b, : len(p)] = p
        mask[b, : len(p)] = 1
    embeds, mask = embeds.to(device), mask.to(device)
    prompts = [p.to(device) for p in prompts]
    never_stop = frozenset()

    # warm-up: one full run of each (allocator, oneDNN kernels for these shapes); the reference
    # sees every length from min(lengths) to max(lengths) + 9 over two queries
    generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS, stop_ids=never_stop)
    for p in (min(prompts, key=len), max(prompts, key=len)):
        reference_decode(lm, p, NEW_TOKENS)

    _sync(device)
    t0 = time.perf_counter()
    batched = generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS, stop_ids=never_stop)
    _sync(device)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    reference = [reference_decode(lm, p, NEW_TOKENS) for p in prompts]
    _sync(device)
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
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
